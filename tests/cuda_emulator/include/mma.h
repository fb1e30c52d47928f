// mma.h for the CUDA emulator: the warp matrix multiply-accumulate API (nvcuda::wmma) for
// 16 x 16 x 16 tiles of __half or __nv_bfloat16 with float accumulators.
//
// On the GPU a fragment is spread over the 32 lanes of a warp in an unspecified way; here
// every lane holds the whole 16 x 16 tile (num_elements = 256), which a kernel cannot tell
// apart as long as it only uses elementwise operations on x[] (the API's rule). Every call
// is a warp-wide operation: all 32 lanes must make it at the same call site (checked through
// the warp exchange, like a shuffle), and pointers must be 32-byte aligned with ldm a
// multiple of 16 bytes, as the GPU requires.
#pragma once
#include "cuda_bf16.h"
#include "cuda_emulator.h"

namespace nvcuda {
namespace wmma {

struct matrix_a {};
struct matrix_b {};
struct accumulator {};
struct row_major {};
struct col_major {};
enum layout_t { mem_row_major, mem_col_major };

template <typename Use, int M, int N, int K, typename T, typename Layout = void>
struct fragment {
    static_assert(M == 16 && N == 16 && K == 16, "the emulator implements 16 x 16 x 16 tiles");
    static constexpr int num_elements = 256;
    T x[256];                                          // row-major (i, j) -> x[16 i + j]
};

namespace detail {
inline float to_float(float v) { return v; }
inline float to_float(__half v) { return __half2float(v); }
inline float to_float(__nv_bfloat16 v) { return __bfloat162float(v); }

inline void check(const char* what, const void* pointer, unsigned ldm, std::size_t element_size,
                  std::source_location where) {
    emu::vote_at(what, 0xffffffffu, 1, where);         // all 32 lanes, one call site
    if (reinterpret_cast<std::uintptr_t>(pointer) % 32 != 0)
        emu::fail(std::string(what) + " at " + emu::describe(where) + ": pointer not 32-byte aligned");
    if (ldm * element_size % 16 != 0)
        emu::fail(std::string(what) + " at " + emu::describe(where) + ": ldm " + std::to_string(ldm) +
                  " is not a multiple of 16 bytes");
}

// Element (i, j) of a 16 x 16 tile stored row- or column-major with leading dimension ldm.
template <typename T>
inline T at(const T* p, unsigned ldm, int i, int j, bool row_major) {
    return row_major ? p[i * ldm + j] : p[j * ldm + i];
}
}  // namespace detail

template <typename Use, typename T, typename Layout>
__forceinline__ void fill_fragment(fragment<Use, 16, 16, 16, T, Layout>& f, T value) {
    for (auto& v : f.x) v = value;
}

template <typename Use, typename T, typename Layout>
__forceinline__ void load_matrix_sync(fragment<Use, 16, 16, 16, T, Layout>& f, const T* p, unsigned ldm,
                                      std::source_location where = std::source_location::current()) {
    detail::check("wmma::load_matrix_sync", p, ldm, sizeof(T), where);
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) f.x[16 * i + j] = detail::at(p, ldm, i, j, std::is_same_v<Layout, row_major>);
}

__forceinline__ void load_matrix_sync(fragment<accumulator, 16, 16, 16, float>& f, const float* p, unsigned ldm,
                                      layout_t layout,
                                      std::source_location where = std::source_location::current()) {
    detail::check("wmma::load_matrix_sync", p, ldm, sizeof(float), where);
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) f.x[16 * i + j] = detail::at(p, ldm, i, j, layout == mem_row_major);
}

__forceinline__ void store_matrix_sync(float* p, const fragment<accumulator, 16, 16, 16, float>& f, unsigned ldm,
                                       layout_t layout,
                                       std::source_location where = std::source_location::current()) {
    detail::check("wmma::store_matrix_sync", p, ldm, sizeof(float), where);
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) {
            float& out = layout == mem_row_major ? p[i * ldm + j] : p[j * ldm + i];
            out = f.x[16 * i + j];
        }
}

// d = a b + c, products and sums in float.
template <typename T, typename LayoutA, typename LayoutB>
__forceinline__ void mma_sync(fragment<accumulator, 16, 16, 16, float>& d,
                              const fragment<matrix_a, 16, 16, 16, T, LayoutA>& a,
                              const fragment<matrix_b, 16, 16, 16, T, LayoutB>& b,
                              const fragment<accumulator, 16, 16, 16, float>& c,
                              std::source_location where = std::source_location::current()) {
    emu::vote_at("wmma::mma_sync", 0xffffffffu, 1, where);
    float result[256];
    for (int i = 0; i < 16; ++i)
        for (int j = 0; j < 16; ++j) {
            float sum = c.x[16 * i + j];
            for (int k = 0; k < 16; ++k)
                sum = fmaf(detail::to_float(a.x[16 * i + k]), detail::to_float(b.x[16 * k + j]), sum);
            result[16 * i + j] = sum;
        }
    for (int e = 0; e < 256; ++e) d.x[e] = result[e];
}

}  // namespace wmma
}  // namespace nvcuda
