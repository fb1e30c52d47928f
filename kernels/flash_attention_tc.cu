// flash_attention_tc.cu -- fused attention on tensor cores, forward and backward: version 2.
//
// Version 1 (flash_attention.cu) computes every product on CUDA cores, lanes passing
// probabilities around with shuffles. This version does the matrix products of the
// algorithm with warp-level matrix multiply-accumulate (nvcuda::wmma, 16 x 16 x 16 tiles,
// float16 or bfloat16 inputs, float32 accumulation) and partitions the work as
// FlashAttention-2 does; the softmax and the other elementwise steps stay in float32 on CUDA
// cores. Same algorithm, same statistics (m, l), same dropout hash and the same results
// within float16/bfloat16 rounding: the probabilities and dS are rounded to the input type
// before their products, as FlashAttention-2 does.
//
//   s = q k^T / sqrt(D) + mask,   p = softmax(s),   o = dropout(p) v
//
// Layout: q, o, do (B, N, Tq, D), k, v (B, N, Tk, D), T = __half or __nv_bfloat16; the inputs
// are read through element strides of their batch, head and row axes (the last axis
// contiguous), the outputs written contiguous. D (the head size) is 64 or 128.
//
// Kernels per (T, D), each 4 warps (128 threads):
//   flash_attention_tc_forward_kernel    o, m, l   grid (ceil(Tq/64), B*N), 64 query rows per block
//   flash_attention_tc_delta_kernel      D_i = rowsum(do * o)          grid ceil(B*N*Tq/4)
//   flash_attention_tc_dq_kernel         dq        grid (ceil(Tq/64), B*N), 64 query rows per block
//   flash_attention_tc_dkdv_kernel       dk, dv    grid (ceil(Tk/64), B*N), 64 keys per block
//
// Work partitioning (FlashAttention-2). The grid runs over (query tiles x batch*heads), so
// one block owns 64 query rows of one head and walks all of its keys. Inside the block each
// warp owns a slab of 16 query rows: warps never split the keys of a row between them, so
// the row statistics and the output need no reduction across warps, and the only
// block-wide barriers are the ones around the shared key/value tiles. The warp's q rows are
// loaded once into wmma matrix_a fragments (registers) and reused for every key tile.
//
// Thread/element mapping of the forward. wmma fragments spread their elements over the lanes
// in an unspecified way, so a product goes through wmma into a warp-private float tile in
// shared memory and is read back under a mapping of our own:
//   lane = 2 r + h  (r = 0..15, h = 0..1) owns row r of the warp's 16-row slab, that is query
//   row  first_row + 16 warp + r;
//   of a 64-key score tile it owns the columns  j = 2 c + h,  c = 0..31;
//   of the output it owns the columns           d = 2 c + h,  c = 0..D/2-1,
// in registers: acc[c] = sum_j exp(s_j - m) v_j[2 c + h] over the keys so far, and the row's
// running maximum m and sum l (the same values in both lanes of the pair, combined with one
// __shfl_xor_sync(.., 1)). Each key tile: S = q k^T by wmma into the warp's tile, the pair
// rescales and exponentiates its row, writes p (rounded to T) for the next product, then
// P V by wmma (fresh accumulators) into the warp's tile, and every lane adds its own
// elements to acc after scaling acc by alpha = exp(m_old - m_new). The division by l waits
// until after the last key tile (one multiply per output element, as in FlashAttention-2).
//
// Backward. delta = rowsum(do * o) first. dk and dv are computed as FlashAttention-2 does:
// a block owns 64 keys (a warp 16 of them), keeps dk, dv in wmma accumulator fragments
// (registers, no rescaling is needed there) and makes one pass over all query tiles. dq
// is not accumulated with atomics across key blocks (FlashAttention-2's choice): float
// atomics add in an order that changes from run to run, and this project keeps gradients
// bit-for-bit reproducible. A separate kernel, whose blocks own 64 query rows each, walks
// all keys once more and sums dq in registers. No two blocks write the same element, so
// the results are deterministic, at the price of recomputing q k^T and do v^T once more.
// In the backward kernels lane 2 r + h owns row r of the warp's slab (a query in dq, a key
// in dk/dv) and the columns 2 c + h of each 64-wide score tile.
//
// Shared-memory tiles are padded (rows of D + 8 inputs, score rows of 64 + 4 floats,
// probability rows of 64 + 8 inputs, output rows of D + 4 floats) so that wmma's row loads
// and the lane pairs' column accesses spread over the banks (at most 2-way conflicts for
// the elementwise accesses), while every wmma pointer stays 32-byte aligned and every
// leading dimension a multiple of 16 bytes. No asynchronous copies (cp.async) and no
// double buffering: the tiles are loaded by all threads between two __syncthreads.
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
constexpr int WARPS = THREADS / WARP;
constexpr int WARP_ROWS = 16;              // rows (queries, or keys in dk/dv) per warp
constexpr int BLOCK_ROWS = 64;             // rows per block
constexpr int TILE = 64;                   // the streamed tile: 64 keys (forward, dq) or queries (dk/dv)
constexpr int SCORE_LD = TILE + 4;         // floats per row of a warp's score tile
constexpr int PROB_LD = TILE + 8;          // inputs (2 bytes) per row of a warp's probability tile
constexpr float LOWEST = -3.402823466e+38f;

// Inputs per row of a (rows, D) tile, and floats per row of a (16, D) float tile.
__host__ __device__ constexpr int tile_ld(int d) { return d + 8; }
__host__ __device__ constexpr int out_ld(int d) { return d + 4; }
__host__ __device__ constexpr int max_of(int a, int b) { return a > b ? a : b; }

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
// apart) into shared memory with `ld` elements per row, zeros past the end; all threads of
// the block take part.
template <typename T, int D>
__device__ __forceinline__ void load_tile(T* dst, int ld, const T* src, long long row_stride, int first, int count,
                                          int rows_total) {
    for (int idx = threadIdx.x; idx < count * D; idx += blockDim.x) {
        const int r = idx / D, d = idx % D;
        const int row = first + r;
        dst[r * ld + d] = row < rows_total ? src[row * row_stride + d] : from_float<T>(0.0f);
    }
}

// out (16 x 64 float, row-major, SCORE_LD) = a_rows (16 x D) times b_rows^T, b_rows (64 x D):
// both row-major in shared memory, leading dimensions a_ld and b_ld.
template <typename T, int D>
__device__ __forceinline__ void product_rows_by_rows(float* out, const T* a_rows, int a_ld, const T* b_rows,
                                                     int b_ld) {
    for (int n = 0; n < TILE / 16; ++n) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int kk = 0; kk < D / 16; ++kk) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bt;   // b^T: column-major view
            wmma::load_matrix_sync(a, a_rows + kk * 16, a_ld);
            wmma::load_matrix_sync(bt, b_rows + n * 16 * b_ld + kk * 16, b_ld);
            wmma::mma_sync(acc, a, bt, acc);
        }
        wmma::store_matrix_sync(out + n * 16, acc, SCORE_LD, wmma::mem_row_major);
    }
}

// The same product with the 16 x D left operand already in registers (D / 16 fragments).
template <typename T, int D>
__device__ __forceinline__ void product_fragments_by_rows(
    float* out, const wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major>* a, const T* b_rows, int b_ld) {
    for (int n = 0; n < TILE / 16; ++n) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int kk = 0; kk < D / 16; ++kk) {
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::col_major> bt;
            wmma::load_matrix_sync(bt, b_rows + n * 16 * b_ld + kk * 16, b_ld);
            wmma::mma_sync(acc, a[kk], bt, acc);
        }
        wmma::store_matrix_sync(out + n * 16, acc, SCORE_LD, wmma::mem_row_major);
    }
}

// acc[dn] += p (16 x 64, row-major, PROB_LD) times m (64 x D, row-major, leading dimension
// m_ld), for the D / 16 column blocks dn of the result.
template <typename T, int D>
__device__ __forceinline__ void accumulate_product(wmma::fragment<wmma::accumulator, 16, 16, 16, float>* acc,
                                                   const T* p, const T* m, int m_ld) {
    for (int dn = 0; dn < D / 16; ++dn)
        for (int kk = 0; kk < TILE / 16; ++kk) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bm;
            wmma::load_matrix_sync(a, p + kk * 16, PROB_LD);
            wmma::load_matrix_sync(bm, m + kk * 16 * m_ld + dn * 16, m_ld);
            wmma::mma_sync(acc[dn], a, bm, acc[dn]);
        }
}

// out (16 x D float, row-major, out_ld(D)) = p (16 x 64, PROB_LD) times m (64 x D, m_ld):
// one fresh accumulator fragment per 16 columns, stored as soon as it is complete.
template <typename T, int D>
__device__ __forceinline__ void product_to_tile(float* out, const T* p, const T* m, int m_ld) {
    for (int dn = 0; dn < D / 16; ++dn) {
        wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc;
        wmma::fill_fragment(acc, 0.0f);
        for (int kk = 0; kk < TILE / 16; ++kk) {
            wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> a;
            wmma::fragment<wmma::matrix_b, 16, 16, 16, T, wmma::row_major> bm;
            wmma::load_matrix_sync(a, p + kk * 16, PROB_LD);
            wmma::load_matrix_sync(bm, m + kk * 16 * m_ld + dn * 16, m_ld);
            wmma::mma_sync(acc, a, bm, acc);
        }
        wmma::store_matrix_sync(out + dn * 16, acc, out_ld(D), wmma::mem_row_major);
    }
}

// ============================================================================ forward
// Online softmax over key tiles of 64 (see version 1 and the NumPy op), the mapping above.
// Launch: grid (ceil(Tq / 64), B * N), block 128 threads, dynamic shared memory
//   2 * 64 * (D + 8) * 2 + 4 * (16 * max(64 + 4, D + 4) * 4 + 16 * (64 + 8) * 2) bytes:
//   the k, v tiles (64 x D each, padded rows) and per warp a float tile (16 rows: first the
//   staged q rows, then in turn the scores and the P V product) and the probabilities
//   (16 x 64). Every piece is a multiple of 32 bytes (wmma's alignment).
template <typename T, int D>
__global__ void __launch_bounds__(THREADS)
flash_attention_tc_forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                  T* __restrict__ o, float* __restrict__ row_max, float* __restrict__ row_sum,
                                  TC_ATTENTION_PARAMS) {
    const AttentionArgs a = TC_ATTENTION_ARGS;
    extern __shared__ __align__(32) unsigned char shared_bytes[];
    constexpr int KV = TILE * tile_ld(D);                               // inputs per k or v tile
    constexpr int WARP_FLOATS = 16 * max_of(SCORE_LD, out_ld(D));       // floats per warp tile
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    T* ks = reinterpret_cast<T*>(shared_bytes);                          // (64, D + 8)
    T* vs = ks + KV;                                                     // (64, D + 8)
    float* warp_tile = reinterpret_cast<float*>(vs + KV) + warp * WARP_FLOATS;
    float* scores = warp_tile;                                           // (16, SCORE_LD) then
    float* pv = warp_tile;                                               // (16, out_ld(D)): P V
    T* probs = reinterpret_cast<T*>(reinterpret_cast<float*>(vs + KV) + WARPS * WARP_FLOATS)
               + warp * 16 * PROB_LD;                                    // (16, PROB_LD)

    const int bh = blockIdx.y, b = bh / a.heads, h = bh % a.heads;
    const int slab = blockIdx.x * BLOCK_ROWS + warp * WARP_ROWS;         // the warp's first query row
    const int r = lane / 2, half = lane % 2;                             // lane 2r + half: row r
    const int row = slab + r;
    const bool valid_row = row < a.n_queries;
    const unsigned int row_key = (a.has_dropout && valid_row) ? dropout_row_key(a.seed, b, h, row) : 0u;

    // The warp's 16 q rows: staged through its own tile, then held in registers.
    T* q_stage = reinterpret_cast<T*>(warp_tile);                        // (16, D + 8)
    const T* qh = head_of(q, a.q, b, h);
    for (int idx = lane; idx < WARP_ROWS * D; idx += WARP) {
        const int rr = idx / D, d = idx % D;
        q_stage[rr * tile_ld(D) + d] = slab + rr < a.n_queries ? qh[(slab + rr) * a.q.row + d] : from_float<T>(0.0f);
    }
    __syncwarp();
    wmma::fragment<wmma::matrix_a, 16, 16, 16, T, wmma::row_major> q_frag[D / 16];
    for (int kk = 0; kk < D / 16; ++kk) wmma::load_matrix_sync(q_frag[kk], q_stage + kk * 16, tile_ld(D));

    float acc[D / 2];                                                    // columns 2c + half of the row
    for (int c = 0; c < D / 2; ++c) acc[c] = 0.0f;
    float m = LOWEST, l = 0.0f;

    for (int j0 = 0; j0 < a.n_keys; j0 += TILE) {
        __syncthreads();                                                 // every warp is done with the previous tile
        load_tile<T, D>(ks, tile_ld(D), head_of(k, a.k, b, h), a.k.row, j0, TILE, a.n_keys);
        load_tile<T, D>(vs, tile_ld(D), head_of(v, a.v, b, h), a.v.row, j0, TILE, a.n_keys);
        __syncthreads();

        product_fragments_by_rows<T, D>(scores, q_frag, ks, tile_ld(D));   // s = q k^T (unscaled)
        __syncwarp();
        float s[TILE / 2];                                               // this lane's 32 scores
        float tile_max = LOWEST;
        for (int c = 0; c < TILE / 2; ++c) {
            const int key = j0 + 2 * c + half;
            s[c] = -INFINITY;
            if (key < a.n_keys)
                s[c] = scores[r * SCORE_LD + 2 * c + half] * a.scale
                       + (valid_row ? mask_value(a, b, h, row, key) : 0.0f);
            tile_max = fmaxf(tile_max, s[c]);
        }
        tile_max = fmaxf(tile_max, __shfl_xor_sync(FULL_MASK, tile_max, 1));
        const float m_new = fmaxf(m, tile_max);
        const float alpha = expf(m - m_new);
        float sum = 0.0f;
        for (int c = 0; c < TILE / 2; ++c) {
            const int key = j0 + 2 * c + half;
            float p = key < a.n_keys ? expf(s[c] - m_new) : 0.0f;
            sum += p;                                                    // counts every key, dropped or not
            if (a.has_dropout && !dropout_keep(row_key, key, a.threshold)) p = 0.0f;
            probs[r * PROB_LD + 2 * c + half] = from_float<T>(p);
        }
        sum += __shfl_xor_sync(FULL_MASK, sum, 1);
        l = l * alpha + sum;
        m = m_new;
        __syncwarp();                                                    // probs written, scores read

        product_to_tile<T, D>(pv, probs, vs, tile_ld(D));                 // P V of this tile
        __syncwarp();
        for (int c = 0; c < D / 2; ++c) acc[c] = acc[c] * alpha + pv[r * out_ld(D) + 2 * c + half];
    }

    if (valid_row) {
        const float sum = l == 0.0f ? 1.0f : l;                          // 0 only when every key was -inf
        const float factor = a.keep_scale / sum;                         // the deferred 1 / l
        T* orow = o + ((long long)bh * a.n_queries + row) * D;
        for (int c = 0; c < D / 2; ++c) orow[2 * c + half] = from_float<T>(acc[c] * factor);
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
//   4 * 64 * (D + 8) * 2 + 4 * (max(2 * 16 * (64 + 4), 16 * (D + 4)) * 4 + 16 * (64 + 8) * 2)
//   bytes: the q, do, k, v tiles (64 x D each, padded rows); per warp s and dp (16 x 64 float
//   each, later the dq result, 16 x D float, in the same place) and ds (16 x 64).
template <typename T, int D>
__global__ void __launch_bounds__(THREADS)
flash_attention_tc_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                             const T* __restrict__ dout, const float* __restrict__ row_max,
                             const float* __restrict__ row_sum, const float* __restrict__ delta,
                             T* __restrict__ dq, TC_ATTENTION_PARAMS) {
    const AttentionArgs a = TC_ATTENTION_ARGS;
    extern __shared__ __align__(32) unsigned char shared_bytes[];
    constexpr int LD = tile_ld(D), ROWS = BLOCK_ROWS * tile_ld(D);
    constexpr int SCRATCH = max_of(2 * 16 * SCORE_LD, 16 * out_ld(D));   // floats per warp
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    T* qs = reinterpret_cast<T*>(shared_bytes);                          // (64, D + 8)
    T* dos = qs + ROWS;                                                  // (64, D + 8)
    T* ks = dos + ROWS;                                                  // (64, D + 8)
    T* vs = ks + ROWS;                                                   // (64, D + 8)
    float* scratch = reinterpret_cast<float*>(vs + ROWS) + warp * SCRATCH;
    float* scores = scratch;                                             // (16, SCORE_LD)
    float* dprobs = scratch + 16 * SCORE_LD;                             // (16, SCORE_LD)
    T* dscores = reinterpret_cast<T*>(reinterpret_cast<float*>(vs + ROWS) + WARPS * SCRATCH) + warp * 16 * PROB_LD;

    const int bh = blockIdx.y, b = bh / a.heads, h = bh % a.heads;
    const int first_row = blockIdx.x * BLOCK_ROWS;
    const int r = lane / 2, half = lane % 2;                             // lane 2r + half: row r, columns 2c + half
    const int row = first_row + warp * WARP_ROWS + r;
    const bool valid_row = row < a.n_queries;                            // rows past the end read nothing
    const long long stat = (long long)bh * a.n_queries + row;
    const float m_i = valid_row ? row_max[stat] : 0.0f, l_i = valid_row ? row_sum[stat] : 1.0f;
    const float delta_i = valid_row ? delta[stat] : 0.0f;
    const unsigned int row_key = (a.has_dropout && valid_row) ? dropout_row_key(a.seed, b, h, row) : 0u;

    load_tile<T, D>(qs, LD, head_of(q, a.q, b, h), a.q.row, first_row, BLOCK_ROWS, a.n_queries);
    load_tile<T, D>(dos, LD, head_of(dout, a.dout, b, h), a.dout.row, first_row, BLOCK_ROWS, a.n_queries);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> acc[D / 16];
    for (int dn = 0; dn < D / 16; ++dn) wmma::fill_fragment(acc[dn], 0.0f);

    for (int j0 = 0; j0 < a.n_keys; j0 += TILE) {
        __syncthreads();
        load_tile<T, D>(ks, LD, head_of(k, a.k, b, h), a.k.row, j0, TILE, a.n_keys);
        load_tile<T, D>(vs, LD, head_of(v, a.v, b, h), a.v.row, j0, TILE, a.n_keys);
        __syncthreads();

        product_rows_by_rows<T, D>(scores, qs + warp * WARP_ROWS * LD, LD, ks, LD);     // q k^T
        product_rows_by_rows<T, D>(dprobs, dos + warp * WARP_ROWS * LD, LD, vs, LD);    // do v^T
        __syncwarp();
        for (int c = 0; c < TILE / 2; ++c) {
            const int jj = 2 * c + half, key = j0 + jj;
            float ds = 0.0f;
            if (valid_row && key < a.n_keys) {
                const float s = scores[r * SCORE_LD + jj] * a.scale + mask_value(a, b, h, row, key);
                const float p = expf(s - m_i) / l_i;
                const bool keep = !a.has_dropout || dropout_keep(row_key, key, a.threshold);
                ds = p * (dprobs[r * SCORE_LD + jj] * (keep ? a.keep_scale : 0.0f) - delta_i);
            }
            dscores[r * PROB_LD + jj] = from_float<T>(ds);
        }
        __syncwarp();
        accumulate_product<T, D>(acc, dscores, ks, LD);                         // dq += ds k
    }

    __syncwarp();                                                        // the scores are read: reuse the scratch
    for (int dn = 0; dn < D / 16; ++dn)
        wmma::store_matrix_sync(scratch + dn * 16, acc[dn], out_ld(D), wmma::mem_row_major);
    __syncwarp();
    if (valid_row) {
        T* dqrow = dq + ((long long)bh * a.n_queries + row) * D;
        for (int c = 0; c < D / 2; ++c)
            dqrow[2 * c + half] = from_float<T>(scratch[r * out_ld(D) + 2 * c + half] * a.scale);
    }
}

// dv_j = sum_i p_ij z_ij do_i,   dk_j = sum_i ds_ij q_i / sqrt(D). A warp owns 16 keys.
// Launch: grid (ceil(Tk / 64), B * N), block 128 threads, dynamic shared memory
//   4 * 64 * (D + 8) * 2 + 3 * 64 * 4
//     + 4 * (max(2 * 16 * (64 + 4), 2 * 16 * (D + 4)) * 4 + 2 * 16 * (64 + 8) * 2)
//   bytes: the block's k, v and the q, do tiles (64 x D each, padded rows), the tile's m, l,
//   delta (3 x 64 float); per warp s^T and dp^T (16 x 64 float each, later the dk and dv
//   results, 16 x D float each, in the same place) and p z, ds (16 x 64 each).
template <typename T, int D>
__global__ void __launch_bounds__(THREADS)
flash_attention_tc_dkdv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                               const T* __restrict__ dout, const float* __restrict__ row_max,
                               const float* __restrict__ row_sum, const float* __restrict__ delta,
                               T* __restrict__ dk, T* __restrict__ dv, TC_ATTENTION_PARAMS) {
    const AttentionArgs a = TC_ATTENTION_ARGS;
    extern __shared__ __align__(32) unsigned char shared_bytes[];
    constexpr int LD = tile_ld(D), ROWS = BLOCK_ROWS * tile_ld(D);
    constexpr int SCRATCH = max_of(2 * 16 * SCORE_LD, 2 * 16 * out_ld(D));   // floats per warp
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    T* kb = reinterpret_cast<T*>(shared_bytes);                          // (64, D + 8) the block's keys
    T* vb = kb + ROWS;                                                   // (64, D + 8)
    T* qs = vb + ROWS;                                                   // (64, D + 8) query tile
    T* dos = qs + ROWS;                                                  // (64, D + 8)
    float* stats = reinterpret_cast<float*>(dos + ROWS);                 // (3, 64) m, l, delta
    float* scratch = stats + 3 * TILE + warp * SCRATCH;
    float* scores_t = scratch;                                           // (16 keys, SCORE_LD queries)
    float* dprobs_t = scratch + 16 * SCORE_LD;                           // (16, SCORE_LD)
    T* pz_t = reinterpret_cast<T*>(stats + 3 * TILE + WARPS * SCRATCH) + warp * 2 * 16 * PROB_LD;   // (16, PROB_LD)
    T* ds_t = pz_t + 16 * PROB_LD;                                       // (16, PROB_LD)

    const int bh = blockIdx.y, b = bh / a.heads, h = bh % a.heads;
    const int first_key = blockIdx.x * BLOCK_ROWS;
    const int r = lane / 2, half = lane % 2;                             // lane 2r + half: key r, queries 2c + half
    const int key = first_key + warp * WARP_ROWS + r;
    const bool valid_key = key < a.n_keys;
    const T* qh = head_of(q, a.q, b, h);
    const T* doh = head_of(dout, a.dout, b, h);
    load_tile<T, D>(kb, LD, head_of(k, a.k, b, h), a.k.row, first_key, BLOCK_ROWS, a.n_keys);
    load_tile<T, D>(vb, LD, head_of(v, a.v, b, h), a.v.row, first_key, BLOCK_ROWS, a.n_keys);
    wmma::fragment<wmma::accumulator, 16, 16, 16, float> dk_acc[D / 16], dv_acc[D / 16];
    for (int dn = 0; dn < D / 16; ++dn) {
        wmma::fill_fragment(dk_acc[dn], 0.0f);
        wmma::fill_fragment(dv_acc[dn], 0.0f);
    }

    for (int i0 = 0; i0 < a.n_queries; i0 += TILE) {
        __syncthreads();
        load_tile<T, D>(qs, LD, qh, a.q.row, i0, TILE, a.n_queries);
        load_tile<T, D>(dos, LD, doh, a.dout.row, i0, TILE, a.n_queries);
        if (threadIdx.x < TILE) {
            const int row = i0 + threadIdx.x;
            const bool valid_row = row < a.n_queries;
            const long long stat = (long long)bh * a.n_queries + row;
            stats[threadIdx.x] = valid_row ? row_max[stat] : 0.0f;
            stats[TILE + threadIdx.x] = valid_row ? row_sum[stat] : 1.0f;
            stats[2 * TILE + threadIdx.x] = valid_row ? delta[stat] : 0.0f;
        }
        __syncthreads();

        product_rows_by_rows<T, D>(scores_t, kb + warp * WARP_ROWS * LD, LD, qs, LD);     // k q^T
        product_rows_by_rows<T, D>(dprobs_t, vb + warp * WARP_ROWS * LD, LD, dos, LD);    // v do^T
        __syncwarp();
        for (int c = 0; c < TILE / 2; ++c) {
            const int ii = 2 * c + half, row = i0 + ii;
            float pz = 0.0f, ds = 0.0f;
            if (valid_key && row < a.n_queries) {
                const float s = scores_t[r * SCORE_LD + ii] * a.scale + mask_value(a, b, h, row, key);
                const float p = expf(s - stats[ii]) / stats[TILE + ii];
                const bool keep = !a.has_dropout || dropout_keep(dropout_row_key(a.seed, b, h, row), key, a.threshold);
                const float z = keep ? a.keep_scale : 0.0f;
                pz = p * z;
                ds = p * (dprobs_t[r * SCORE_LD + ii] * z - stats[2 * TILE + ii]);
            }
            pz_t[r * PROB_LD + ii] = from_float<T>(pz);
            ds_t[r * PROB_LD + ii] = from_float<T>(ds);
        }
        __syncwarp();
        accumulate_product<T, D>(dv_acc, pz_t, dos, LD);                        // dv += (p z)^T do
        accumulate_product<T, D>(dk_acc, ds_t, qs, LD);                         // dk += ds^T q
    }

    __syncwarp();                                                        // the scores are read: reuse the scratch
    for (int dn = 0; dn < D / 16; ++dn) {
        wmma::store_matrix_sync(scratch + dn * 16, dk_acc[dn], out_ld(D), wmma::mem_row_major);
        wmma::store_matrix_sync(scratch + 16 * out_ld(D) + dn * 16, dv_acc[dn], out_ld(D), wmma::mem_row_major);
    }
    __syncwarp();
    if (valid_key) {
        const long long idx = ((long long)bh * a.n_keys + key) * D;
        for (int c = 0; c < D / 2; ++c) {
            const int d = 2 * c + half;
            dk[idx + d] = from_float<T>(scratch[r * out_ld(D) + d] * a.scale);
            dv[idx + d] = from_float<T>(scratch[16 * out_ld(D) + r * out_ld(D) + d]);
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
