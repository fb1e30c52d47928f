// layer_norm.cu -- LayerNorm over the last axis, forward and backward, float32.
//
// The CUDA version of minibert/ops/layer_norm.py (the reference it is tested against):
//
//   mu = mean(x),  var = mean((x - mu)^2)  (biased, as BERT),  rstd = 1 / sqrt(var + eps)
//   xhat = (x - mu) * rstd,   y = xhat * gamma + beta                x, y: (R, H)
//
//   with g = dL/dy and gx = g * gamma:
//   dx     = rstd * (gx - mean(gx) - xhat * mean(gx * xhat))
//   dgamma = sum over rows of g * xhat,     dbeta = sum over rows of g
//
// The forward keeps mu and rstd (one float each per row) instead of xhat: the backward
// recomputes xhat from x, which costs a few flops and saves an (R, H) array.
// One warp per row: lanes stride over the H columns (coalesced), and the row sums are
// warp reductions (__shfl_xor_sync), so no shared memory is needed for the statistics.

constexpr unsigned FULL_MASK = 0xffffffffu;

__device__ __forceinline__ float warp_sum(float x) {
    for (int offset = 16; offset > 0; offset >>= 1) x += __shfl_xor_sync(FULL_MASK, x, offset);
    return x;
}

// Launch: grid ceil(R / 8), block 256 threads (8 warps, one row each).
// Two passes over the row for the mean and the variance (more accurate in float32 than
// the one-pass E[x^2] - E[x]^2), a third to write y; the row stays in L1/L2 between them.
extern "C" __global__ void __launch_bounds__(256)
layer_norm_forward(const float* __restrict__ x, const float* __restrict__ gamma, const float* __restrict__ beta,
                   float* __restrict__ y, float* __restrict__ mean_out, float* __restrict__ rstd_out,
                   int rows, int hidden, float eps) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;                                 // a whole warp leaves together
    const float* xr = x + (long long)row * hidden;

    float sum = 0.0f;
    for (int c = lane; c < hidden; c += 32) sum += xr[c];
    const float mu = warp_sum(sum) / hidden;

    float sq = 0.0f;
    for (int c = lane; c < hidden; c += 32) {
        const float centred = xr[c] - mu;
        sq = fmaf(centred, centred, sq);
    }
    const float rstd = 1.0f / sqrtf(warp_sum(sq) / hidden + eps);

    float* yr = y + (long long)row * hidden;
    for (int c = lane; c < hidden; c += 32) yr[c] = fmaf((xr[c] - mu) * rstd, gamma[c], beta[c]);
    if (lane == 0) {
        mean_out[row] = mu;
        rstd_out[row] = rstd;
    }
}

// Launch: grid min(ceil(R / 8), a few blocks per SM), block 256 threads, dynamic shared
// memory 2 * H * 4 bytes. Each warp takes rows grid-stride; dgamma and dbeta are summed
// first per block in shared memory (shared-memory atomics, cheap), then added to the global
// dgamma, dbeta (which the caller zeroes) with one atomicAdd per column per block.
extern "C" __global__ void __launch_bounds__(256)
layer_norm_backward(const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ mean,
                    const float* __restrict__ rstd, const float* __restrict__ gamma, float* __restrict__ dx,
                    float* __restrict__ dgamma, float* __restrict__ dbeta, int rows, int hidden) {
    extern __shared__ float partial[];                       // (2, H): dgamma, dbeta of this block
    for (int c = threadIdx.x; c < 2 * hidden; c += blockDim.x) partial[c] = 0.0f;
    __syncthreads();

    const int warps_per_block = blockDim.x / 32;
    const int lane = threadIdx.x % 32;
    for (int row = blockIdx.x * warps_per_block + threadIdx.x / 32; row < rows; row += gridDim.x * warps_per_block) {
        const float* xr = x + (long long)row * hidden;
        const float* gr = dy + (long long)row * hidden;
        const float mu = mean[row], rs = rstd[row];

        float sum_gx = 0.0f, sum_gx_xhat = 0.0f;
        for (int c = lane; c < hidden; c += 32) {
            const float xhat = (xr[c] - mu) * rs;
            const float gx = gr[c] * gamma[c];
            sum_gx += gx;
            sum_gx_xhat = fmaf(gx, xhat, sum_gx_xhat);
            atomicAdd(&partial[c], gr[c] * xhat);            // dgamma
            atomicAdd(&partial[hidden + c], gr[c]);          // dbeta
        }
        const float mean_gx = warp_sum(sum_gx) / hidden;
        const float mean_gx_xhat = warp_sum(sum_gx_xhat) / hidden;

        float* dxr = dx + (long long)row * hidden;
        for (int c = lane; c < hidden; c += 32) {
            const float xhat = (xr[c] - mu) * rs;
            dxr[c] = rs * (gr[c] * gamma[c] - mean_gx - xhat * mean_gx_xhat);
        }
    }

    __syncthreads();
    for (int c = threadIdx.x; c < hidden; c += blockDim.x) {
        atomicAdd(&dgamma[c], partial[c]);
        atomicAdd(&dbeta[c], partial[hidden + c]);
    }
}
