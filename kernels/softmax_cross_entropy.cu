// softmax_cross_entropy.cu -- softmax cross-entropy over the vocabulary, forward and
// backward in one kernel, float32 logits, int64 labels, an ignore index.
//
// The reference is minibert/ops/cross_entropy.py:
//
//   lse_i  = log(sum_c exp(z_ic))                   (computed as max + log sum exp(z - max))
//   loss_i = lse_i - z_i,y_i                        rows with y_i == ignore_index: 0
//   loss   = sum_i loss_i / M                       M = number of counted rows (the caller)
//   dz_ic  = (exp(z_ic - lse_i) - [c == y_i]) * grad_scale     (grad_scale = dL / M; 0 if ignored)
//
// The gradient is written during the forward pass, so no (R, V) probability matrix is
// kept besides it; dz may be the logits buffer itself (in place), since each element is
// read before it is overwritten by the same thread.

#ifndef INFINITY                      // NVRTC compiles without the C headers that define it
#define INFINITY __int_as_float(0x7f800000)
#endif

constexpr unsigned FULL_MASK = 0xffffffffu;
constexpr int THREADS = 256;

__device__ __forceinline__ float warp_max(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) x = fmaxf(x, __shfl_xor_sync(FULL_MASK, x, offset));
    return x;
}

__device__ __forceinline__ float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(FULL_MASK, x, offset);
    return x;
}

// Reduce one value per thread to one value for the block (every thread gets it).
template <bool IS_MAX>
__device__ __forceinline__ float block_reduce(float value, float* scratch) {
    const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
    value = IS_MAX ? warp_max(value) : warp_sum(value);
    __syncthreads();                                      // scratch may still be read from last time
    if (lane == 0) scratch[warp] = value;
    __syncthreads();
    value = lane < THREADS / 32 ? scratch[lane] : (IS_MAX ? -INFINITY : 0.0f);
    return IS_MAX ? warp_max(value) : warp_sum(value);
}

// Launch: grid R (one block per row), block 256 threads. Three passes over the row, each
// strided by 256 (coalesced): the max, the sum of exp(z - max), then loss and gradient.
// Block reductions: a warp reduction (__shfl_xor_sync), one value per warp in shared
// memory, then a warp reduction of those.
extern "C" __global__ void __launch_bounds__(THREADS)
softmax_cross_entropy_forward_backward(const float* __restrict__ logits, const long long* __restrict__ labels,
                                       float* __restrict__ row_loss, float* dlogits,
                                       int classes, long long ignore_index, float grad_scale) {
    __shared__ float scratch[THREADS / 32];
    const long long row = blockIdx.x;
    const float* z = logits + row * classes;
    float* dz = dlogits + row * classes;                  // may alias z (not __restrict__)
    const long long label = labels[row];
    const bool counted = label != ignore_index;

    float m = -INFINITY;
    for (int c = threadIdx.x; c < classes; c += THREADS) m = fmaxf(m, z[c]);
    m = block_reduce<true>(m, scratch);

    float sum = 0.0f;
    for (int c = threadIdx.x; c < classes; c += THREADS) sum += expf(z[c] - m);
    const float lse = m + logf(block_reduce<false>(sum, scratch));

    if (threadIdx.x == 0) row_loss[row] = counted ? lse - z[label] : 0.0f;
    __syncthreads();                                      // z[label] is read before dz overwrites it
    const float scale = counted ? grad_scale : 0.0f;
    for (int c = threadIdx.x; c < classes; c += THREADS) {
        const float p = expf(z[c] - lse);
        dz[c] = (p - (c == label ? 1.0f : 0.0f)) * scale;
    }
}
