// flash_attention_tc.cu -- fused attention on tensor cores, forward and backward: version 2.
//
// Version 1 (flash_attention.cu) computes every product on CUDA cores, lanes passing
// probabilities around with shuffles. This version does the four kinds of matrix products of
// the algorithm with warp-level matrix multiply-accumulate (nvcuda::wmma, 16 x 16 x 16 tiles,
// float16 or bfloat16 inputs, float32 accumulation); the softmax and the other elementwise
// steps stay in float32 on CUDA cores. Same algorithm, same statistics (m, l), same dropout
// hash and the same results within float16/bfloat16 rounding: the probabilities and dS are
// rounded to the input type before their products, as FlashAttention-2 does.
//
//   s = q k^T / sqrt(D) + mask,   p = softmax(s),   o = dropout(p) v
//
// Layout: q, o, do (B, N, Tq, D), k, v (B, N, Tk, D), T = __half or __nv_bfloat16; the inputs
// are read through element strides of their batch, head and row axes (the last axis
// contiguous), the outputs written contiguous. D (the head size) is 64 or 128.
//
// Kernels per (T, D), each 4 warps (128 threads); a warp owns 16 rows of its block:
//   flash_attention_tc_forward_kernel    o, m, l   grid (ceil(Tq/64), B*N), 64 query rows per block
//   flash_attention_tc_delta_kernel      D_i = rowsum(do * o)          grid ceil(B*N*Tq/4)
//   flash_attention_tc_dq_kernel         dq        grid (ceil(Tq/64), B*N), 64 query rows per block
//   flash_attention_tc_dkdv_kernel       dk, dv    grid (ceil(Tk/64), B*N), 64 keys per block
// As in version 1 the backward is split by owner, so no two blocks write the same element
// (no atomics, deterministic).
//
// Inside a warp: a product tile goes through wmma fragments into the warp's own float32
// scratch in shared memory; there lane pairs own rows (lane 2r and 2r + 1 own row r, one half
// of its 64 columns each) for the elementwise work, then the rounded result is the A operand
// of the next product. The output accumulator of the forward lives in shared memory too,
// because its rows must be rescaled as the running maximum changes, and the layout of a
// wmma accumulator fragment is not specified. This is the plain tensor-core version: no
// register-level (mma.sync) tiling, no asynchronous copies, no bank-conflict padding.
//
// Needs the CUDA toolkit's headers (mma.h) on NVRTC's include path.

#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <mma.h>

#ifndef INFINITY
#define INFINITY __int_as_float(0x7f800000)
#endif

namespace minibert_tc {

using namespace nvcuda;

constexpr unsigned FULL_MASK = 0xffffffffu;
constexpr int WARP = 32;
constexpr int THREADS = 128;               // 4 warps
constexpr int WARP_ROWS = 16;              // rows (queries, or keys in dk/dv) per warp
constexpr int BLOCK_ROWS = 64;             // rows per block
constexpr int TILE = 64;                   // the streamed tile: 64 keys (forward, dq) or queries (dk/dv)
constexpr float LOWEST = -3.402823466e+38f;

__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ __half from_float<__half>(float x) { return __float2half_rn(x); }
template <> __device__ __forceinline__ __nv_bfloat16 from_float<__nv_bfloat16>(float x) {
    return __float2bfloat16_rn(x);
}

// ---------------------------------------------------------------- dropout hash (as version 1)
__device__ __forceinline__ unsigned long long mix64(unsigned long long x) {
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    x ^= x >> 31;
    return x;
}

__device__ __forceinline__ unsigned int mix32(unsigned int x) {
    x ^= x >> 16;
    x *= 0x7FEB352Du;
    x ^= x >> 15;
    x *= 0x846CA68Bu;
    x ^= x >> 16;
    return x;
}

__device__ __forceinline__ unsigned int dropout_row_key(unsigned long long seed, int b, int h, int i) {
    const unsigned long long G = 0x9E3779B97F4A7C15ull;
    unsigned long long key = mix64(seed + (unsigned long long)(b + 1) * G);
    key = mix64(key + (unsigned long long)(h + 1) * G);
    key = mix64(key + (unsigned long long)(i + 1) * G);
    return (unsigned int)(key >> 32);
}

__device__ __forceinline__ bool dropout_keep(unsigned int row_key, int j, unsigned int threshold) {
    return mix32(row_key ^ ((unsigned int)j * 0x9E3779B9u)) >= threshold;
}

// ---------------------------------------------------------------- arguments (as version 1)
struct Layout {
    long long batch, head, row;
};

struct AttentionArgs {
    Layout q, k, v, dout;
    int heads, n_queries, n_keys;
    float scale;
    const float* mask;
    long long mask_sb, mask_sh, mask_si, mask_sj;
    int has_dropout;
    unsigned long long seed;
    unsigned int threshold;
    float keep_scale;
};

#define TC_ATTENTION_PARAMS                                                                      \
    long long q_sb, long long q_sh, long long q_si, long long k_sb, long long k_sh, long long k_si, \
    long long v_sb, long long v_sh, long long v_si, long long do_sb, long long do_sh, long long do_si, \
    int heads, int n_queries, int n_keys, float scale, const float* __restrict__ mask, int has_mask, \
    long long mask_sb, long long mask_sh, long long mask_si, long long mask_sj,                  \
    int has_dropout, unsigned long long seed, unsigned int threshold, float keep_scale
#define TC_ATTENTION_ARGS                                                                        \
    AttentionArgs{{q_sb, q_sh, q_si}, {k_sb, k_sh, k_si}, {v_sb, v_sh, v_si}, {do_sb, do_sh, do_si}, \
                  heads, n_queries, n_keys, scale, has_mask ? mask : nullptr,                    \
                  mask_sb, mask_sh, mask_si, mask_sj, has_dropout, seed, threshold, keep_scale}

__device__ __forceinline__ float mask_value(const AttentionArgs& a, int b, int h, int i, int j) {
    return a.mask == nullptr ? 0.0f
        : a.mask[b * a.mask_sb + h * a.mask_sh + (long long)i * a.mask_si + (long long)j * a.mask_sj];
}

template <typename T>
__device__ __forceinline__ const T* head_of(const T* x, const Layout& layout, int b, int h) {
    return x + b * layout.batch + h * layout.head;
}

// Copy rows [first, first + count) of a (rows_total, D) matrix (rows `row_stride` elements
// apart) into shared memory, zeros past the end; all threads of the block take part.
template <typename T, int D>
__device__ __forceinline__ void load_tile(T* dst, const T* src, long long row_stride, int first, int count,
                                          int rows_total) {
    for (int idx = threadIdx.x; idx < count * D; idx += blockDim.x) {
        const int r = idx / D, d = idx % D;
        const int row = first + r;
        dst[r * D + d] = row < rows_total ? src[row * row_stride + d] : from_float<T>(0.0f);
    }
}

// out (16 x 64 float, row-major) = a_rows (16 x D) times b_rows^T, b_rows (64 x D): both
// row-major in shared memory with leading dimension D.
template <typename T, int D>
__device__ __forceinline__ void product_rows_by_rows(float* out, const T* a_rows, const T* b_rows) {
    for (int n = 0; n < TILE / 16; ++n) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int kk = 0; kk < D / 16; ++kk) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bt;   // b^T: column-major view
            wmma::load_matrix_sync(a, a_rows + kk * 16, D);
            wmma::load_matrix_sync(bt, b_rows + n * 16 * D + kk * 16, D);
            wmma::mma_sync(acc, a, bt, acc);
        }
        wmma::store_matrix_sync(out + n * 16, acc, TILE, wmma::mem_row_major);
    }
}

// acc[dn] += p (16 x 64, row-major, ldm 64) times m (64 x D, row-major, ldm D), for the
// D / 16 column blocks dn of the result.
template <typename T, int D>
__device__ __forceinline__ void accumulate_product(wmma::fragment<wmma::accumulator, 16, 16, 16, float>* acc,
                                                   const T* p, const T* m) {
    for (int dn = 0; dn < D / 16; ++dn)
        for (int kk = 0; kk < TILE / 16; ++kk) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bm;
            wmma::load_matrix_sync(a, p + kk * 16, TILE);
            wmma::load_matrix_sync(bm, m + kk * 16 * D + dn * 16, D);
            wmma::mma_sync(acc[dn], a, bm, acc[dn]);
        }
}

// ============================================================================ forward
// Online softmax over key tiles of 64 (see version 1 and the NumPy op).
// Launch: grid (ceil(Tq / 64), B * N), block 128 threads, dynamic shared memory
//   3 * 64 * D * 2 + 4 * (16 * 64 * 4 + 16 * 64 * 2 + 16 * D * 4) bytes: the q, k, v tiles
//   (64 x D each) and per warp the scores (16 x 64 float), the probabilities (16 x 64) and
//   the output accumulator (16 x D float). Every piece is a multiple of 32 bytes (wmma's
//   alignment).
template <typename T, int D>
__global__ void __launch_bounds__(THREADS)
flash_attention_tc_forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                  T* __restrict__ o, float* __restrict__ row_max, float* __restrict__ row_sum,
                                  TC_ATTENTION_PARAMS) {
    const AttentionArgs a = TC_ATTENTION_ARGS;
    extern __shared__ __align__(32) unsigned char shared_bytes[];
    constexpr int TILES = 3 * BLOCK_ROWS * D * (int)sizeof(T);          // bytes of the q, k, v tiles
    constexpr int SCORES = 4 * 16 * TILE * 4, PROBS = 4 * 16 * TILE * (int)sizeof(T);
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    T* qs = reinterpret_cast<T*>(shared_bytes);                          // (64, D)
    T* ks = qs + BLOCK_ROWS * D;                                         // (64, D)
    T* vs = ks + TILE * D;                                               // (64, D)
    float* scores = reinterpret_cast<float*>(shared_bytes + TILES) + warp * 16 * TILE;          // (16, 64)
    T* probs = reinterpret_cast<T*>(shared_bytes + TILES + SCORES) + warp * 16 * TILE;          // (16, 64)
    float* out = reinterpret_cast<float*>(shared_bytes + TILES + SCORES + PROBS) + warp * 16 * D;   // (16, D)

    const int bh = blockIdx.y, b = bh / a.heads, h = bh % a.heads;
    const int first_row = blockIdx.x * BLOCK_ROWS;
    const int r = lane / 2, half = lane % 2;                             // lane pair 2r, 2r + 1: row r
    const int row = first_row + warp * WARP_ROWS + r;
    const bool valid_row = row < a.n_queries;
    const unsigned int row_key = (a.has_dropout && valid_row) ? dropout_row_key(a.seed, b, h, row) : 0u;

    load_tile<T, D>(qs, head_of(q, a.q, b, h), a.q.row, first_row, BLOCK_ROWS, a.n_queries);
    for (int d = half * (D / 2); d < (half + 1) * (D / 2); ++d) out[r * D + d] = 0.0f;
    float m = LOWEST, l = 0.0f;

    for (int j0 = 0; j0 < a.n_keys; j0 += TILE) {
        __syncthreads();                                                 // done with the previous tile
        load_tile<T, D>(ks, head_of(k, a.k, b, h), a.k.row, j0, TILE, a.n_keys);
        load_tile<T, D>(vs, head_of(v, a.v, b, h), a.v.row, j0, TILE, a.n_keys);
        __syncthreads();

        product_rows_by_rows<T, D>(scores, qs + warp * WARP_ROWS * D, ks);      // q k^T
        __syncwarp();
        float tile_max = LOWEST;
        for (int jj = half * 32; jj < half * 32 + 32; ++jj) {
            const int key = j0 + jj;
            float s = -INFINITY;
            if (key < a.n_keys) s = scores[r * TILE + jj] * a.scale + (valid_row ? mask_value(a, b, h, row, key) : 0.0f);
            scores[r * TILE + jj] = s;
            tile_max = fmaxf(tile_max, s);
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(FULL_MASK, tile_max, 1));
        const float m_new = fmaxf(m, tile_max);
        const float alpha = expf(m - m_new);
        float sum = 0.0f;
        for (int jj = half * 32; jj < half * 32 + 32; ++jj) {
            const int key = j0 + jj;
            float p = key < a.n_keys ? expf(scores[r * TILE + jj] - m_new) : 0.0f;
            sum += p;                                                    // counts every key, dropped or not
            if (a.has_dropout && !dropout_keep(row_key, key, a.threshold)) p = 0.0f;
            probs[r * TILE + jj] = from_float<T>(p);
        }
        sum += __shfl_xor_sync(FULL_MASK, sum, 1);
        l = l * alpha + sum;
        m = m_new;
        for (int d = half * (D / 2); d < (half + 1) * (D / 2); ++d) out[r * D + d] *= alpha;
        __syncwarp();

        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[D / 16];          // out += p v
        for (int dn = 0; dn < D / 16; ++dn) wmma::load_matrix_sync(acc[dn], out + dn * 16, D, wmma::mem_row_major);
        accumulate_product<T, D>(acc, probs, vs);
        for (int dn = 0; dn < D / 16; ++dn) wmma::store_matrix_sync(out + dn * 16, acc[dn], D, wmma::mem_row_major);
        __syncwarp();
    }

    if (valid_row) {
        const float sum = l == 0.0f ? 1.0f : l;                          // 0 only when every key was -inf
        const float factor = a.keep_scale / sum;
        T* orow = o + ((long long)bh * a.n_queries + row) * D;
        for (int d = half * (D / 2); d < (half + 1) * (D / 2); ++d) orow[d] = from_float<T>(out[r * D + d] * factor);
        if (half == 0) {
            row_max[(long long)bh * a.n_queries + row] = m;
            row_sum[(long long)bh * a.n_queries + row] = sum;
        }
    }
}

// ============================================================================ backward
// delta_i = rowsum(do_i * o_i), float32 (B*N*Tq); o contiguous, do strided.
// Launch: grid ceil(B*N*Tq / 4), block 128 threads: one warp per row, lanes over D.
template <typename T, int D>
__global__ void __launch_bounds__(THREADS)
flash_attention_tc_delta_kernel(const T* __restrict__ o, const T* __restrict__ dout, float* __restrict__ delta,
                                long long total_rows, int heads, int n_queries, long long do_sb, long long do_sh,
                                long long do_si) {
    const long long row = (long long)blockIdx.x * (THREADS / WARP) + threadIdx.x / WARP;
    const int lane = threadIdx.x % WARP;
    if (row >= total_rows) return;
    const long long bh = row / n_queries, i = row % n_queries;
    const T* do_row = dout + (bh / heads) * do_sb + (bh % heads) * do_sh + i * do_si;
    float sum = 0.0f;
    for (int d = lane; d < D; d += WARP) sum = fmaf(to_float(o[row * D + d]), to_float(do_row[d]), sum);
    for (int offset = WARP / 2; offset > 0; offset >>= 1) sum += __shfl_xor_sync(FULL_MASK, sum, offset);
    if (lane == 0) delta[row] = sum;
}

// dq_i = sum_j ds_ij k_j / sqrt(D),  ds = p (dp z - delta),  dp = do v^T.
// Launch: grid (ceil(Tq / 64), B * N), block 128 threads, dynamic shared memory
//   4 * 64 * D * 2 + 4 * (max(2 * 16 * 64, 16 * D) * 4 + 16 * 64 * 2) bytes: the q, do, k, v
//   tiles (64 x D each); per warp s and dp (16 x 64 float each, later the dq result, 16 x D
//   float, in the same place) and ds (16 x 64).
template <typename T, int D>
__global__ void __launch_bounds__(THREADS)
flash_attention_tc_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                             const T* __restrict__ dout, const float* __restrict__ row_max,
                             const float* __restrict__ row_sum, const float* __restrict__ delta,
                             T* __restrict__ dq, TC_ATTENTION_PARAMS) {
    const AttentionArgs a = TC_ATTENTION_ARGS;
    extern __shared__ __align__(32) unsigned char shared_bytes[];
    constexpr int SCRATCH = 2 * 16 * TILE > 16 * D ? 2 * 16 * TILE : 16 * D;   // floats per warp
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    T* qs = reinterpret_cast<T*>(shared_bytes);                          // (64, D)
    T* dos = qs + BLOCK_ROWS * D;                                        // (64, D)
    T* ks = dos + BLOCK_ROWS * D;                                        // (64, D)
    T* vs = ks + TILE * D;                                               // (64, D)
    float* scratch = reinterpret_cast<float*>(vs + TILE * D) + warp * SCRATCH;
    float* scores = scratch;                                             // (16, 64)
    float* dprobs = scratch + 16 * TILE;                                 // (16, 64)
    T* dscores = reinterpret_cast<T*>(reinterpret_cast<float*>(vs + TILE * D) + 4 * SCRATCH) + warp * 16 * TILE;

    const int bh = blockIdx.y, b = bh / a.heads, h = bh % a.heads;
    const int first_row = blockIdx.x * BLOCK_ROWS;
    const int r = lane / 2, half = lane % 2;
    const int row = first_row + warp * WARP_ROWS + r;
    const bool valid_row = row < a.n_queries;                            // rows past the end read nothing
    const long long stat = (long long)bh * a.n_queries + row;
    const float m_i = valid_row ? row_max[stat] : 0.0f, l_i = valid_row ? row_sum[stat] : 1.0f;
    const float delta_i = valid_row ? delta[stat] : 0.0f;
    const unsigned int row_key = (a.has_dropout && valid_row) ? dropout_row_key(a.seed, b, h, row) : 0u;

    load_tile<T, D>(qs, head_of(q, a.q, b, h), a.q.row, first_row, BLOCK_ROWS, a.n_queries);
    load_tile<T, D>(dos, head_of(dout, a.dout, b, h), a.dout.row, first_row, BLOCK_ROWS, a.n_queries);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[D / 16];
    for (int dn = 0; dn < D / 16; ++dn) wmma::fill_fragment(acc[dn], 0.0f);

    for (int j0 = 0; j0 < a.n_keys; j0 += TILE) {
        __syncthreads();
        load_tile<T, D>(ks, head_of(k, a.k, b, h), a.k.row, j0, TILE, a.n_keys);
        load_tile<T, D>(vs, head_of(v, a.v, b, h), a.v.row, j0, TILE, a.n_keys);
        __syncthreads();

        product_rows_by_rows<T, D>(scores, qs + warp * WARP_ROWS * D, ks);      // q k^T
        product_rows_by_rows<T, D>(dprobs, dos + warp * WARP_ROWS * D, vs);     // do v^T
        __syncwarp();
        for (int jj = half * 32; jj < half * 32 + 32; ++jj) {
            const int key = j0 + jj;
            float ds = 0.0f;
            if (valid_row && key < a.n_keys) {
                const float s = scores[r * TILE + jj] * a.scale + mask_value(a, b, h, row, key);
                const float p = expf(s - m_i) / l_i;
                const bool keep = !a.has_dropout || dropout_keep(row_key, key, a.threshold);
                ds = p * (dprobs[r * TILE + jj] * (keep ? a.keep_scale : 0.0f) - delta_i);
            }
            dscores[r * TILE + jj] = from_float<T>(ds);
        }
        __syncwarp();
        accumulate_product<T, D>(acc, dscores, ks);                             // dq += ds k
    }

    for (int dn = 0; dn < D / 16; ++dn) wmma::store_matrix_sync(scratch + dn * 16, acc[dn], D, wmma::mem_row_major);
    __syncwarp();
    if (valid_row) {
        T* dqrow = dq + ((long long)bh * a.n_queries + row) * D;
        for (int d = half * (D / 2); d < (half + 1) * (D / 2); ++d) dqrow[d] = from_float<T>(scratch[r * D + d] * a.scale);
    }
}

// dv_j = sum_i p_ij z_ij do_i,   dk_j = sum_i ds_ij q_i / sqrt(D). A warp owns 16 keys.
// Launch: grid (ceil(Tk / 64), B * N), block 128 threads, dynamic shared memory
//   4 * 64 * D * 2 + 3 * 64 * 4 + 4 * (max(2 * 16 * 64, 2 * 16 * D) * 4 + 2 * 16 * 64 * 2)
//   bytes: the block's k, v and the q, do tiles (64 x D each), the tile's m, l, delta
//   (3 x 64 float); per warp s^T and dp^T (16 x 64 float each, later the dk and dv results,
//   16 x D float each, in the same place) and p z, ds (16 x 64 each).
template <typename T, int D>
__global__ void __launch_bounds__(THREADS)
flash_attention_tc_dkdv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                               const T* __restrict__ dout, const float* __restrict__ row_max,
                               const float* __restrict__ row_sum, const float* __restrict__ delta,
                               T* __restrict__ dk, T* __restrict__ dv, TC_ATTENTION_PARAMS) {
    const AttentionArgs a = TC_ATTENTION_ARGS;
    extern __shared__ __align__(32) unsigned char shared_bytes[];
    constexpr int SCRATCH = 2 * 16 * TILE > 2 * 16 * D ? 2 * 16 * TILE : 2 * 16 * D;   // floats per warp
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    T* kb = reinterpret_cast<T*>(shared_bytes);                          // (64, D) the block's keys
    T* vb = kb + BLOCK_ROWS * D;                                         // (64, D)
    T* qs = vb + BLOCK_ROWS * D;                                         // (64, D) query tile
    T* dos = qs + TILE * D;                                              // (64, D)
    float* stats = reinterpret_cast<float*>(dos + TILE * D);            // (3, 64) m, l, delta
    float* scratch = stats + 3 * TILE + warp * SCRATCH;
    float* scores_t = scratch;                                           // (16 keys, 64 queries)
    float* dprobs_t = scratch + 16 * TILE;                               // (16, 64)
    T* pz_t = reinterpret_cast<T*>(stats + 3 * TILE + 4 * SCRATCH) + warp * 2 * 16 * TILE;   // (16, 64)
    T* ds_t = pz_t + 16 * TILE;                                          // (16, 64)

    const int bh = blockIdx.y, b = bh / a.heads, h = bh % a.heads;
    const int first_key = blockIdx.x * BLOCK_ROWS;
    const int r = lane / 2, half = lane % 2;                             // lane pair: key r of the warp
    const int key = first_key + warp * WARP_ROWS + r;
    const bool valid_key = key < a.n_keys;
    const T* qh = head_of(q, a.q, b, h);
    const T* doh = head_of(dout, a.dout, b, h);
    load_tile<T, D>(kb, head_of(k, a.k, b, h), a.k.row, first_key, BLOCK_ROWS, a.n_keys);
    load_tile<T, D>(vb, head_of(v, a.v, b, h), a.v.row, first_key, BLOCK_ROWS, a.n_keys);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> dk_acc[D / 16], dv_acc[D / 16];
    for (int dn = 0; dn < D / 16; ++dn) {
        wmma::fill_fragment(dk_acc[dn], 0.0f);
        wmma::fill_fragment(dv_acc[dn], 0.0f);
    }

    for (int i0 = 0; i0 < a.n_queries; i0 += TILE) {
        __syncthreads();
        load_tile<T, D>(qs, qh, a.q.row, i0, TILE, a.n_queries);
        load_tile<T, D>(dos, doh, a.dout.row, i0, TILE, a.n_queries);
        if (threadIdx.x < TILE) {
            const int row = i0 + threadIdx.x;
            const bool valid_row = row < a.n_queries;
            const long long stat = (long long)bh * a.n_queries + row;
            stats[threadIdx.x] = valid_row ? row_max[stat] : 0.0f;
            stats[TILE + threadIdx.x] = valid_row ? row_sum[stat] : 1.0f;
            stats[2 * TILE + threadIdx.x] = valid_row ? delta[stat] : 0.0f;
        }
        __syncthreads();

        product_rows_by_rows<T, D>(scores_t, kb + warp * WARP_ROWS * D, qs);     // k q^T
        product_rows_by_rows<T, D>(dprobs_t, vb + warp * WARP_ROWS * D, dos);    // v do^T
        __syncwarp();
        for (int ii = half * 32; ii < half * 32 + 32; ++ii) {
            const int row = i0 + ii;
            float pz = 0.0f, ds = 0.0f;
            if (valid_key && row < a.n_queries) {
                const float s = scores_t[r * TILE + ii] * a.scale + mask_value(a, b, h, row, key);
                const float p = expf(s - stats[ii]) / stats[TILE + ii];
                const bool keep = !a.has_dropout || dropout_keep(dropout_row_key(a.seed, b, h, row), key, a.threshold);
                const float z = keep ? a.keep_scale : 0.0f;
                pz = p * z;
                ds = p * (dprobs_t[r * TILE + ii] * z - stats[2 * TILE + ii]);
            }
            pz_t[r * TILE + ii] = from_float<T>(pz);
            ds_t[r * TILE + ii] = from_float<T>(ds);
        }
        __syncwarp();
        accumulate_product<T, D>(dv_acc, pz_t, dos);                            // dv += (p z)^T do
        accumulate_product<T, D>(dk_acc, ds_t, qs);                             // dk += ds^T q
    }

    for (int dn = 0; dn < D / 16; ++dn) {
        wmma::store_matrix_sync(scratch + dn * 16, dk_acc[dn], D, wmma::mem_row_major);
        wmma::store_matrix_sync(scratch + 16 * D + dn * 16, dv_acc[dn], D, wmma::mem_row_major);
    }
    __syncwarp();
    if (valid_key) {
        const long long idx = ((long long)bh * a.n_keys + key) * D;
        for (int d = half * (D / 2); d < (half + 1) * (D / 2); ++d) {
            dk[idx + d] = from_float<T>(scratch[r * D + d] * a.scale);
            dv[idx + d] = from_float<T>(scratch[16 * D + r * D + d]);
        }
    }
}

}  // namespace minibert_tc

#ifdef MINIBERT_INSTANTIATE_ALL
// For compile checks with nvcc (tests/test_kernels.py): every variant the loader asks for.
#define MINIBERT_TC_ATTENTION_TYPES                                                                  \
    long long, long long, long long, long long, long long, long long,                                \
    long long, long long, long long, long long, long long, long long,                                \
    int, int, int, float, const float*, int, long long, long long, long long, long long, int,        \
    unsigned long long, unsigned int, float
#define MINIBERT_TC_VARIANTS(T, D)                                                                   \
    template __global__ void minibert_tc::flash_attention_tc_forward_kernel<T, D>(                   \
        const T*, const T*, const T*, T*, float*, float*, MINIBERT_TC_ATTENTION_TYPES);             \
    template __global__ void minibert_tc::flash_attention_tc_delta_kernel<T, D>(                     \
        const T*, const T*, float*, long long, int, int, long long, long long, long long);          \
    template __global__ void minibert_tc::flash_attention_tc_dq_kernel<T, D>(                        \
        const T*, const T*, const T*, const T*, const float*, const float*, const float*, T*,        \
        MINIBERT_TC_ATTENTION_TYPES);                                                                \
    template __global__ void minibert_tc::flash_attention_tc_dkdv_kernel<T, D>(                      \
        const T*, const T*, const T*, const T*, const float*, const float*, const float*, T*, T*,    \
        MINIBERT_TC_ATTENTION_TYPES);
MINIBERT_TC_VARIANTS(__half, 64)
MINIBERT_TC_VARIANTS(__half, 128)
MINIBERT_TC_VARIANTS(__nv_bfloat16, 64)
MINIBERT_TC_VARIANTS(__nv_bfloat16, 128)
#endif
