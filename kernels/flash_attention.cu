// flash_attention.cu -- fused attention, forward and backward, for minibert.
//
// The CUDA version of minibert/ops/flash_attention.py (read its docstring for the
// algorithm); that NumPy op is the reference these kernels are tested against.
//
//   s = q k^T / sqrt(D) + mask,   p = softmax(s),   o = dropout(p) v
//
// Layout: q, o, do are (B, N, Tq, D), k, v are (B, N, Tk, D), float32 or float16 (T below);
// every sum is accumulated in float32. The inputs q, k, v and do are read through element
// strides for their batch, head and row axes (the last axis contiguous), so the transposed
// (B, T, N, D) -> (B, N, T, D) views the model passes are read in place, without copies; the
// outputs o, dq, dk, dv are written contiguous. D (the head size) is a template
// parameter, instantiated for 32, 64 and 128. The mask is additive float32 with one stride
// per axis (0 on broadcast axes), so (B, 1, 1, Tk) padding masks are read in place. Per-row
// statistics m (row max) and l (row sum) are float32 (B, N, Tq), the same cache as the
// NumPy op, and the dropout keep/drop decision is the same counter-based hash of
// (seed, b, h, i, j), so the GPU drops exactly the probabilities the NumPy op drops.
//
// Three kernels per (T, D):
//   flash_attention_forward_kernel        o, m, l               grid (ceil(Tq/64), B*N), 128 threads
//   flash_attention_backward_dq_kernel    dq                    grid (ceil(Tq/64), B*N), 128 threads
//   flash_attention_backward_dkdv_kernel  dk, dv                grid (ceil(Tk/32), B*N), 128 threads
// plus flash_attention_backward_delta_kernel for D_i = rowsum(do * o).
// The backward is split by owner (query tiles own dq, key tiles own dk and dv) so that no
// two blocks ever write the same element: no atomics, and the result is deterministic.
// The price is computing s and dp twice in the backward.
//
// Work split inside a block (all kernels): a warp is 32 lanes; for the score of one row
// against a tile of 32 columns, lane j owns column j and computes a full dot product from
// shared memory (the row is read by all lanes at once, a broadcast; the column rows are
// padded to D + 1 floats so that the 32 lanes hit 32 different banks). Products of the
// probabilities with a (32, D) tile (p v, ds k, ...) are done with lanes owning head
// dimensions d = lane, lane + 32, ...: the 32 probabilities are passed around with
// __shfl_sync, a register-to-register exchange inside the warp. Row max and row sum are
// warp reductions (five __shfl_xor_sync steps). Global loads of tiles are coalesced:
// consecutive threads read consecutive elements of a row.
//
// This is a first, plain version on CUDA cores (no tensor-core mma), written to be read
// and checked against the NumPy op; see docs/attention.md for its status.

#ifndef INFINITY                      // NVRTC compiles without the C headers that define it
#define INFINITY __int_as_float(0x7f800000)
#endif

namespace minibert {

constexpr unsigned FULL_MASK = 0xffffffffu;
constexpr int WARP = 32;
constexpr int THREADS = 128;          // 4 warps per block
constexpr int ROWS_PER_WARP = 16;     // forward and dq: a block owns 4 * 16 = 64 query rows
constexpr int BLOCK_ROWS = (THREADS / WARP) * ROWS_PER_WARP;
constexpr int KEYS_PER_WARP = 8;      // dk/dv: a block owns 4 * 8 = 32 keys
constexpr int BLOCK_KEYS = (THREADS / WARP) * KEYS_PER_WARP;
constexpr int TILE = 32;              // the streamed tile: 32 keys (forward, dq) or 32 queries (dk/dv)
constexpr float LOWEST = -3.402823466e+38f;   // the lowest finite float, finfo(float32).min

// float16 storage: the 16 bits of an IEEE half. On the GPU the conversions are the
// hardware's cvt instructions (written out rather than taken from cuda_fp16.h so that the
// file compiles with NVRTC even where the CUDA headers are not on its include path). Host
// compilers (the tests' CPU emulator) take the portable equivalents below them, which the
// tests check bit for bit against NumPy's conversions.
struct half_t {
    unsigned short bits;
};

__device__ __forceinline__ float to_float(float x) { return x; }
template <typename T> __device__ __forceinline__ T from_float(float x);
template <> __device__ __forceinline__ float from_float<float>(float x) { return x; }

#ifdef __CUDA_ARCH__
__device__ __forceinline__ float to_float(half_t x) {
    float f;
    asm("cvt.f32.f16 %0, %1;" : "=f"(f) : "h"(x.bits));
    return f;
}
template <> __device__ __forceinline__ half_t from_float<half_t>(float x) {
    half_t h;
    asm("cvt.rn.f16.f32 %0, %1;" : "=h"(h.bits) : "f"(x));     // round to nearest even
    return h;
}
#else
__device__ __forceinline__ float to_float(half_t x) {
    const unsigned sign = (unsigned)(x.bits & 0x8000u) << 16;
    const unsigned exponent = (x.bits >> 10) & 0x1Fu, mantissa = x.bits & 0x3FFu;
    if (exponent == 0x1F) return __uint_as_float(sign | 0x7F800000u | (mantissa << 13));    // inf, NaN
    if (exponent != 0) return __uint_as_float(sign | ((exponent + 112u) << 23) | (mantissa << 13));
    return __uint_as_float(sign | __float_as_uint((float)mantissa * 5.9604644775390625e-8f));   // m * 2^-24
}
template <> __device__ __forceinline__ half_t from_float<half_t>(float x) {
    const unsigned bits = __float_as_uint(x);
    const unsigned short sign = (unsigned short)((bits >> 16) & 0x8000u);
    const unsigned magnitude = bits & 0x7FFFFFFFu;
    if (magnitude > 0x7F800000u) return half_t{(unsigned short)(sign | 0x7E00u)};           // NaN
    if (magnitude >= 0x477FF000u) return half_t{(unsigned short)(sign | 0x7C00u)};          // rounds to inf
    if (magnitude < 0x38800000u) {                    // below 2^-14: a subnormal half, units of 2^-24
        const float units = __uint_as_float(magnitude) * 16777216.0f;                      // exact
        const unsigned whole = (unsigned)units;
        const float rest = units - (float)whole;
        const unsigned rounded = whole + (rest > 0.5f || (rest == 0.5f && (whole & 1u)));   // ties to even
        return half_t{(unsigned short)(sign | rounded)};
    }
    const unsigned rebiased = magnitude - (112u << 23);   // exponent bias 127 -> 15
    const unsigned kept = rebiased >> 13, dropped = rebiased & 0x1FFFu;
    const unsigned rounded = kept + (dropped > 0x1000u || (dropped == 0x1000u && (kept & 1u)));
    return half_t{(unsigned short)(sign | rounded)};
}
#endif

__device__ __forceinline__ float warp_max(float x) {
    for (int offset = WARP / 2; offset > 0; offset >>= 1)
        x = fmaxf(x, __shfl_xor_sync(FULL_MASK, x, offset));
    return x;
}

__device__ __forceinline__ float warp_sum(float x) {
    for (int offset = WARP / 2; offset > 0; offset >>= 1)
        x += __shfl_xor_sync(FULL_MASK, x, offset);
    return x;
}

// ---------------------------------------------------------------- dropout hash
// Identical to minibert/ops/flash_attention.py:
//   row key r(b, h, i) = top 32 bits of mix64(mix64(mix64(seed + (b+1)G) + (h+1)G) + (i+1)G)
//   u(b, h, i, j)      = mix32(r XOR (j * 0x9E3779B9 mod 2^32)),   keep when u >= threshold
__device__ __forceinline__ unsigned long long mix64(unsigned long long x) {   // SplitMix64 finaliser
    x ^= x >> 30;
    x *= 0xBF58476D1CE4E5B9ull;
    x ^= x >> 27;
    x *= 0x94D049BB133111EBull;
    x ^= x >> 31;
    return x;
}

__device__ __forceinline__ unsigned int mix32(unsigned int x) {               // "lowbias32"
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

// The scalar arguments every attention kernel takes, gathered into one struct inside the
// kernel. (They are passed one by one: a launch from Python passes scalars and pointers.)
struct Layout {                                      // element strides of a (B, N, T, D) input
    long long batch, head, row;                      // (the last axis is contiguous)
};

struct AttentionArgs {
    Layout q, k, v, dout;
    int heads, n_queries, n_keys;
    float scale;                                     // 1 / sqrt(D)
    const float* mask;                               // additive, or nullptr
    long long mask_sb, mask_sh, mask_si, mask_sj;    // element strides, 0 on broadcast axes
    int has_dropout;
    unsigned long long seed;
    unsigned int threshold;                          // keep when hash >= threshold
    float keep_scale;                                // 1 / (1 - p), or 1 without dropout
};

#define ATTENTION_PARAMS                                                                         \
    long long q_sb, long long q_sh, long long q_si, long long k_sb, long long k_sh, long long k_si,  \
    long long v_sb, long long v_sh, long long v_si, long long do_sb, long long do_sh, long long do_si, \
    int heads, int n_queries, int n_keys, float scale, const float* __restrict__ mask, int has_mask, \
    long long mask_sb, long long mask_sh, long long mask_si, long long mask_sj,                  \
    int has_dropout, unsigned long long seed, unsigned int threshold, float keep_scale
#define ATTENTION_ARGS                                                                           \
    AttentionArgs{{q_sb, q_sh, q_si}, {k_sb, k_sh, k_si}, {v_sb, v_sh, v_si}, {do_sb, do_sh, do_si},    \
                  heads, n_queries, n_keys, scale, has_mask ? mask : nullptr,                    \
                  mask_sb, mask_sh, mask_si, mask_sj, has_dropout, seed, threshold, keep_scale}

__device__ __forceinline__ float mask_value(const AttentionArgs& a, int b, int h, int i, int j) {
    return a.mask == nullptr ? 0.0f
        : a.mask[b * a.mask_sb + h * a.mask_sh + (long long)i * a.mask_si + (long long)j * a.mask_sj];
}

// The (T, D) matrix of batch b, head h of an input.
template <typename T>
__device__ __forceinline__ const T* head_of(const T* x, const Layout& layout, int b, int h) {
    return x + b * layout.batch + h * layout.head;
}

// Copy rows [first, first + count) of a (rows_total, D) matrix whose rows are `row_stride`
// elements apart into shared memory as float, rows padded to `pitch` floats, zeros past the
// end; all threads of the block take part, consecutive threads reading consecutive elements
// (coalesced).
template <typename T, int D>
__device__ __forceinline__ void load_tile(float* dst, int pitch, const T* src, long long row_stride, int first,
                                          int count, int rows_total, float factor) {
    for (int idx = threadIdx.x; idx < count * D; idx += blockDim.x) {
        const int r = idx / D, d = idx % D;
        const int row = first + r;
        dst[r * pitch + d] = row < rows_total ? to_float(src[row * row_stride + d]) * factor : 0.0f;
    }
}

// ============================================================================ forward
// Online softmax over key tiles of 32 (see the NumPy op):
//   m' = max(m, max_J s),  alpha = exp(m - m'),  l' = alpha l + sum_J exp(s - m'),
//   acc' = alpha acc + dropout(exp(s - m')) v_J,          finally o = acc / l * keep_scale.
// Launch: grid (ceil(Tq / 64), B * N), block 128 threads, dynamic shared memory
//   (64 * D + 32 * (D + 1) + 32 * D) * 4 bytes: the q tile (pre-scaled), the k tile, the v tile.
// Warp w owns query rows 16w .. 16w + 15 of the block; its running m, l, acc live in registers.
template <typename T, int D>
__global__ void __launch_bounds__(THREADS)
flash_attention_forward_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                               T* __restrict__ o, float* __restrict__ row_max, float* __restrict__ row_sum,
                               ATTENTION_PARAMS) {
    const AttentionArgs a = ATTENTION_ARGS;
    extern __shared__ float shared[];
    float* qs = shared;                         // (64, D)     q * scale
    float* ks = qs + BLOCK_ROWS * D;            // (32, D + 1) keys, padded against bank conflicts
    float* vs = ks + TILE * (D + 1);            // (32, D)     values
    constexpr int C = D / WARP;                 // head dimensions per lane

    const int bh = blockIdx.y, b = bh / a.heads, h = bh % a.heads;
    const int first_row = blockIdx.x * BLOCK_ROWS;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const T* qh = head_of(q, a.q, b, h);
    const T* kh = head_of(k, a.k, b, h);
    const T* vh = head_of(v, a.v, b, h);

    load_tile<T, D>(qs, D, qh, a.q.row, first_row, BLOCK_ROWS, a.n_queries, a.scale);

    float m[ROWS_PER_WARP], l[ROWS_PER_WARP], acc[ROWS_PER_WARP][C];
    unsigned int row_key[ROWS_PER_WARP];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
        m[r] = LOWEST;                          // not -inf: m - m' is never (-inf) - (-inf)
        l[r] = 0.0f;
#pragma unroll
        for (int c = 0; c < C; ++c) acc[r][c] = 0.0f;
        row_key[r] = a.has_dropout ? dropout_row_key(a.seed, b, h, first_row + warp * ROWS_PER_WARP + r) : 0u;
    }

    for (int j0 = 0; j0 < a.n_keys; j0 += TILE) {
        __syncthreads();                        // everyone is done with the previous tile
        load_tile<T, D>(ks, D + 1, kh, a.k.row, j0, TILE, a.n_keys, 1.0f);
        load_tile<T, D>(vs, D, vh, a.v.row, j0, TILE, a.n_keys, 1.0f);
        __syncthreads();

        const int key = j0 + lane;              // lane j owns key j of the tile
        const bool valid = key < a.n_keys;
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; ++r) {
            const int local = warp * ROWS_PER_WARP + r, row = first_row + local;
            if (row >= a.n_queries) break;      // the same for the whole warp
            const float* qrow = qs + local * D;
            const float* krow = ks + lane * (D + 1);
            float s = 0.0f;
#pragma unroll 16
            for (int d = 0; d < D; ++d) s = fmaf(qrow[d], krow[d], s);
            s = valid ? s + mask_value(a, b, h, row, key) : -INFINITY;

            const float m_new = fmaxf(m[r], warp_max(s));
            float p = valid ? expf(s - m_new) : 0.0f;
            const float alpha = expf(m[r] - m_new);
            l[r] = l[r] * alpha + warp_sum(p);  // the sum counts every key, dropped or not
            if (a.has_dropout && !dropout_keep(row_key[r], key, a.threshold)) p = 0.0f;
#pragma unroll
            for (int c = 0; c < C; ++c) acc[r][c] *= alpha;
            for (int jj = 0; jj < TILE; ++jj) {  // acc += p_jj * v_jj, p_jj fetched from lane jj
                const float pj = __shfl_sync(FULL_MASK, p, jj);
#pragma unroll
                for (int c = 0; c < C; ++c) acc[r][c] = fmaf(pj, vs[jj * D + lane + WARP * c], acc[r][c]);
            }
            m[r] = m_new;
        }
    }

    T* oh = o + (long long)bh * a.n_queries * D;
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
        const int row = first_row + warp * ROWS_PER_WARP + r;
        if (row >= a.n_queries) break;
        const float sum = l[r] == 0.0f ? 1.0f : l[r];   // 0 only when every key was masked with -inf
        const float factor = a.keep_scale / sum;
#pragma unroll
        for (int c = 0; c < C; ++c) oh[(long long)row * D + lane + WARP * c] = from_float<T>(acc[r][c] * factor);
        if (lane == 0) {
            row_max[(long long)bh * a.n_queries + row] = m[r];
            row_sum[(long long)bh * a.n_queries + row] = sum;
        }
    }
}

// ============================================================================ backward
// delta_i = rowsum(do_i * o_i)  (= rowsum(dp_i * p_i), see the NumPy op), float32 (B*N*Tq).
// o is contiguous, do strided (do_sb, do_sh, do_si).
// Launch: grid ceil(B*N*Tq / 4), block 128 threads: one warp per row, lanes over D.
template <typename T, int D>
__global__ void __launch_bounds__(THREADS)
flash_attention_backward_delta_kernel(const T* __restrict__ o, const T* __restrict__ dout,
                                      float* __restrict__ delta, long long total_rows, int heads, int n_queries,
                                      long long do_sb, long long do_sh, long long do_si) {
    const long long row = (long long)blockIdx.x * (THREADS / WARP) + threadIdx.x / WARP;
    const int lane = threadIdx.x % WARP;
    if (row >= total_rows) return;
    const long long bh = row / n_queries, i = row % n_queries;
    const T* do_row = dout + (bh / heads) * do_sb + (bh % heads) * do_sh + i * do_si;
    float sum = 0.0f;
#pragma unroll
    for (int c = 0; c < D / WARP; ++c) {
        const int d = lane + WARP * c;
        sum = fmaf(to_float(o[row * D + d]), to_float(do_row[d]), sum);
    }
    sum = warp_sum(sum);
    if (lane == 0) delta[row] = sum;
}

// The probability, its dropout factor and ds for one (row i, key j), shared by both kernels:
//   p = exp(s - m_i) / l_i,   z = keep / (1 - p_drop),   ds = p * (dp * z - delta_i)
struct ProbabilityGrad {
    float p_dropped;                            // p * z, the weight o used
    float ds;                                   // dL/ds
};

__device__ __forceinline__ ProbabilityGrad probability_grad(float s, float dp, float m_i, float l_i,
                                                            float delta_i, bool keep, float keep_scale) {
    const float p = expf(s - m_i) / l_i;
    const float z = keep ? keep_scale : 0.0f;
    return {p * z, p * (dp * z - delta_i)};
}

// dq_i = sum_j ds_ij k_j / sqrt(D). A block owns 64 query rows and streams key tiles of 32.
// Launch: grid (ceil(Tq / 64), B * N), block 128 threads, dynamic shared memory
//   (2 * 64 * D + 2 * 32 * (D + 1)) * 4 bytes: q (pre-scaled) and do tiles, k and v tiles.
template <typename T, int D>
__global__ void __launch_bounds__(THREADS)
flash_attention_backward_dq_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                   const T* __restrict__ dout, const float* __restrict__ row_max,
                                   const float* __restrict__ row_sum, const float* __restrict__ delta,
                                   T* __restrict__ dq, ATTENTION_PARAMS) {
    const AttentionArgs a = ATTENTION_ARGS;
    extern __shared__ float shared[];
    float* qs = shared;                         // (64, D)
    float* dos = qs + BLOCK_ROWS * D;           // (64, D)
    float* ks = dos + BLOCK_ROWS * D;           // (32, D + 1)
    float* vs = ks + TILE * (D + 1);            // (32, D + 1)
    constexpr int C = D / WARP;

    const int bh = blockIdx.y, b = bh / a.heads, h = bh % a.heads;
    const int first_row = blockIdx.x * BLOCK_ROWS;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const T* qh = head_of(q, a.q, b, h);
    const T* kh = head_of(k, a.k, b, h);
    const T* vh = head_of(v, a.v, b, h);
    const T* doh = head_of(dout, a.dout, b, h);
    load_tile<T, D>(qs, D, qh, a.q.row, first_row, BLOCK_ROWS, a.n_queries, a.scale);
    load_tile<T, D>(dos, D, doh, a.dout.row, first_row, BLOCK_ROWS, a.n_queries, 1.0f);

    float acc[ROWS_PER_WARP][C], m_i[ROWS_PER_WARP], l_i[ROWS_PER_WARP], delta_i[ROWS_PER_WARP];
    unsigned int row_key[ROWS_PER_WARP];
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
        const int row = first_row + warp * ROWS_PER_WARP + r;
        const bool valid_row = row < a.n_queries;           // rows past the end read nothing
        const long long stat = (long long)bh * a.n_queries + row;
        m_i[r] = valid_row ? row_max[stat] : 0.0f;
        l_i[r] = valid_row ? row_sum[stat] : 1.0f;
        delta_i[r] = valid_row ? delta[stat] : 0.0f;
        row_key[r] = a.has_dropout ? dropout_row_key(a.seed, b, h, row) : 0u;
#pragma unroll
        for (int c = 0; c < C; ++c) acc[r][c] = 0.0f;
    }

    for (int j0 = 0; j0 < a.n_keys; j0 += TILE) {
        __syncthreads();
        load_tile<T, D>(ks, D + 1, kh, a.k.row, j0, TILE, a.n_keys, 1.0f);
        load_tile<T, D>(vs, D + 1, vh, a.v.row, j0, TILE, a.n_keys, 1.0f);
        __syncthreads();

        const int key = j0 + lane;
        const bool valid = key < a.n_keys;
#pragma unroll
        for (int r = 0; r < ROWS_PER_WARP; ++r) {
            const int local = warp * ROWS_PER_WARP + r, row = first_row + local;
            if (row >= a.n_queries) break;
            const float* qrow = qs + local * D;
            const float* dorow = dos + local * D;
            const float* krow = ks + lane * (D + 1);
            const float* vrow = vs + lane * (D + 1);
            float s = 0.0f, dp = 0.0f;          // s = q_i . k_j / sqrt(D),  dp = do_i . v_j
#pragma unroll 16
            for (int d = 0; d < D; ++d) {
                s = fmaf(qrow[d], krow[d], s);
                dp = fmaf(dorow[d], vrow[d], dp);
            }
            float ds = 0.0f;
            if (valid) {
                s += mask_value(a, b, h, row, key);
                const bool keep = !a.has_dropout || dropout_keep(row_key[r], key, a.threshold);
                ds = probability_grad(s, dp, m_i[r], l_i[r], delta_i[r], keep, a.keep_scale).ds;
            }
            for (int jj = 0; jj < TILE; ++jj) {  // dq_i += ds_ij k_j
                const float dsj = __shfl_sync(FULL_MASK, ds, jj);
#pragma unroll
                for (int c = 0; c < C; ++c) acc[r][c] = fmaf(dsj, ks[jj * (D + 1) + lane + WARP * c], acc[r][c]);
            }
        }
    }

    T* dqh = dq + (long long)bh * a.n_queries * D;                  // contiguous
#pragma unroll
    for (int r = 0; r < ROWS_PER_WARP; ++r) {
        const int row = first_row + warp * ROWS_PER_WARP + r;
        if (row >= a.n_queries) break;
#pragma unroll
        for (int c = 0; c < C; ++c) dqh[(long long)row * D + lane + WARP * c] = from_float<T>(acc[r][c] * a.scale);
    }
}

// dv_j = sum_i p_ij z_ij do_i,   dk_j = sum_i ds_ij q_i / sqrt(D).
// A block owns 32 keys (8 per warp) and streams query tiles of 32; lane i owns query i of
// the tile. Launch: grid (ceil(Tk / 32), B * N), block 128 threads, dynamic shared memory
//   (2 * 32 * D + 2 * 32 * (D + 1) + 3 * 32) * 4 bytes: k and v of the block's keys,
//   the q (pre-scaled) and do tiles, and the tile's m, l, delta.
template <typename T, int D>
__global__ void __launch_bounds__(THREADS)
flash_attention_backward_dkdv_kernel(const T* __restrict__ q, const T* __restrict__ k, const T* __restrict__ v,
                                     const T* __restrict__ dout, const float* __restrict__ row_max,
                                     const float* __restrict__ row_sum, const float* __restrict__ delta,
                                     T* __restrict__ dk, T* __restrict__ dv, ATTENTION_PARAMS) {
    const AttentionArgs a = ATTENTION_ARGS;
    extern __shared__ float shared[];
    float* kb = shared;                         // (32, D) the block's keys
    float* vb = kb + BLOCK_KEYS * D;            // (32, D) the block's values
    float* qs = vb + BLOCK_KEYS * D;            // (32, D + 1) query tile, pre-scaled
    float* dos = qs + TILE * (D + 1);           // (32, D + 1) do tile
    float* stats = dos + TILE * (D + 1);        // (3, 32) m, l, delta of the query tile
    constexpr int C = D / WARP;

    const int bh = blockIdx.y, b = bh / a.heads, h = bh % a.heads;
    const int first_key = blockIdx.x * BLOCK_KEYS;
    const int warp = threadIdx.x / WARP, lane = threadIdx.x % WARP;
    const T* qh = head_of(q, a.q, b, h);
    const T* doh = head_of(dout, a.dout, b, h);
    const long long k_offset = (long long)bh * a.n_keys * D;        // of the contiguous dk, dv
    load_tile<T, D>(kb, D, head_of(k, a.k, b, h), a.k.row, first_key, BLOCK_KEYS, a.n_keys, 1.0f);
    load_tile<T, D>(vb, D, head_of(v, a.v, b, h), a.v.row, first_key, BLOCK_KEYS, a.n_keys, 1.0f);

    float dk_acc[KEYS_PER_WARP][C], dv_acc[KEYS_PER_WARP][C];
#pragma unroll
    for (int r = 0; r < KEYS_PER_WARP; ++r)
#pragma unroll
        for (int c = 0; c < C; ++c) dk_acc[r][c] = dv_acc[r][c] = 0.0f;

    for (int i0 = 0; i0 < a.n_queries; i0 += TILE) {
        __syncthreads();
        load_tile<T, D>(qs, D + 1, qh, a.q.row, i0, TILE, a.n_queries, a.scale);
        load_tile<T, D>(dos, D + 1, doh, a.dout.row, i0, TILE, a.n_queries, 1.0f);
        if (threadIdx.x < TILE) {
            const int row = i0 + threadIdx.x;
            const bool valid_row = row < a.n_queries;
            const long long stat = (long long)bh * a.n_queries + row;
            stats[threadIdx.x] = valid_row ? row_max[stat] : 0.0f;
            stats[TILE + threadIdx.x] = valid_row ? row_sum[stat] : 1.0f;
            stats[2 * TILE + threadIdx.x] = valid_row ? delta[stat] : 0.0f;
        }
        __syncthreads();

        const int row = i0 + lane;              // lane i owns query i of the tile
        const bool valid_row = row < a.n_queries;
        const unsigned int row_key = (a.has_dropout && valid_row) ? dropout_row_key(a.seed, b, h, row) : 0u;
        const float* qrow = qs + lane * (D + 1);
        const float* dorow = dos + lane * (D + 1);
#pragma unroll
        for (int r = 0; r < KEYS_PER_WARP; ++r) {
            const int local = warp * KEYS_PER_WARP + r, key = first_key + local;
            if (key >= a.n_keys) break;         // the same for the whole warp
            const float* krow = kb + local * D;
            const float* vrow = vb + local * D;
            float s = 0.0f, dp = 0.0f;
#pragma unroll 16
            for (int d = 0; d < D; ++d) {
                s = fmaf(qrow[d], krow[d], s);
                dp = fmaf(dorow[d], vrow[d], dp);
            }
            ProbabilityGrad g = {0.0f, 0.0f};
            if (valid_row) {
                s += mask_value(a, b, h, row, key);
                const bool keep = !a.has_dropout || dropout_keep(row_key, key, a.threshold);
                g = probability_grad(s, dp, stats[lane], stats[TILE + lane], stats[2 * TILE + lane],
                                     keep, a.keep_scale);
            }
            for (int ii = 0; ii < TILE; ++ii) {  // dv_j += p_ij z_ij do_i,  dk_j += ds_ij q_i
                const float pz = __shfl_sync(FULL_MASK, g.p_dropped, ii);
                const float ds = __shfl_sync(FULL_MASK, g.ds, ii);
#pragma unroll
                for (int c = 0; c < C; ++c) {
                    dv_acc[r][c] = fmaf(pz, dos[ii * (D + 1) + lane + WARP * c], dv_acc[r][c]);
                    dk_acc[r][c] = fmaf(ds, qs[ii * (D + 1) + lane + WARP * c], dk_acc[r][c]);
                }
            }
        }
    }

#pragma unroll
    for (int r = 0; r < KEYS_PER_WARP; ++r) {
        const int key = first_key + warp * KEYS_PER_WARP + r;
        if (key >= a.n_keys) break;
#pragma unroll
        for (int c = 0; c < C; ++c) {
            const long long idx = k_offset + (long long)key * D + lane + WARP * c;
            dk[idx] = from_float<T>(dk_acc[r][c]);      // q was pre-scaled: this is ds^T q / sqrt(D)
            dv[idx] = from_float<T>(dv_acc[r][c]);
        }
    }
}

}  // namespace minibert

#ifdef MINIBERT_INSTANTIATE_ALL
// For compile checks with nvcc (tests/test_kernels.py): every variant the loader asks for.
#define MINIBERT_ATTENTION_TYPES                                                                     \
    long long, long long, long long, long long, long long, long long,                                \
    long long, long long, long long, long long, long long, long long,                                \
    int, int, int, float, const float*, int, long long, long long, long long, long long, int,        \
    unsigned long long, unsigned int, float
#define MINIBERT_FLASH_VARIANTS(T, D)                                                                \
    template __global__ void minibert::flash_attention_forward_kernel<T, D>(                         \
        const T*, const T*, const T*, T*, float*, float*, MINIBERT_ATTENTION_TYPES);                \
    template __global__ void minibert::flash_attention_backward_delta_kernel<T, D>(                  \
        const T*, const T*, float*, long long, int, int, long long, long long, long long);          \
    template __global__ void minibert::flash_attention_backward_dq_kernel<T, D>(                     \
        const T*, const T*, const T*, const T*, const float*, const float*, const float*, T*,        \
        MINIBERT_ATTENTION_TYPES);                                                                   \
    template __global__ void minibert::flash_attention_backward_dkdv_kernel<T, D>(                   \
        const T*, const T*, const T*, const T*, const float*, const float*, const float*, T*, T*,    \
        MINIBERT_ATTENTION_TYPES);
MINIBERT_FLASH_VARIANTS(float, 32)
MINIBERT_FLASH_VARIANTS(float, 64)
MINIBERT_FLASH_VARIANTS(float, 128)
MINIBERT_FLASH_VARIANTS(minibert::half_t, 32)
MINIBERT_FLASH_VARIANTS(minibert::half_t, 64)
MINIBERT_FLASH_VARIANTS(minibert::half_t, 128)
#endif
