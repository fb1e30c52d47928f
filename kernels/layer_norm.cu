// layer_norm.cu -- LayerNorm over the last axis, forward and backward, float32.
//
// The CUDA version of minibert/ops/layer_norm.py (the reference it is tested against):
//
//   mu = mean(x),  var = mean((x - mu)^2)  (biased, as BERT),  rstd = 1 / sqrt(var + eps)
//   xhat = (x - mu) * rstd,   y = xhat * gamma + beta                x, y: (R, H)
//
//   with g = dL/dy and gx = g * gamma:
//   dx     = rstd * ((gx - mean(gx)) - xhat * mean(gx * xhat))
//   dgamma = sum over rows of g * xhat,     dbeta = sum over rows of g
//
// The forward keeps mu and rstd (one float each per row) instead of xhat: the backward
// recomputes xhat from x, which costs a few flops and saves an (R, H) array.
// One warp per row: lanes stride over the H columns (coalesced), and the row sums are
// warp reductions (__shfl_xor_sync), so no shared memory is needed for the statistics.
//
// Fused multiply-add: the CUDA compiler contracts a * b - c into one fma by default, which
// skips the rounding of a * b that the same product got on its way into a sum. At H = 1,
// gx - mean(gx) must be exactly 0 while rstd = 1 / sqrt(eps) = 1e6 (the variance is 0), so
// an fma there would return 1e6 times the rounding error of g * gamma. Hence gx is rounded
// once with __fmul_rn (never contracted), and that same value goes into the sum and into the
// difference: dx is exactly 0 at H = 1, and elsewhere as accurate as the unfused formula.
//
// The backward's column sums (dgamma, dbeta) are deterministic: each block writes its partial
// sums to its own row of a (K, 2H) array, and a second kernel adds the K rows in order.

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

// dx. Launch: grid ceil(R / 8), block 256 threads (8 warps, one row each).
extern "C" __global__ void __launch_bounds__(256)
layer_norm_backward_dx(const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ mean,
                       const float* __restrict__ rstd, const float* __restrict__ gamma, float* __restrict__ dx,
                       int rows, int hidden) {
    const int row = blockIdx.x * (blockDim.x / 32) + threadIdx.x / 32;
    const int lane = threadIdx.x % 32;
    if (row >= rows) return;                                 // a whole warp leaves together
    const float* xr = x + (long long)row * hidden;
    const float* gr = dy + (long long)row * hidden;
    const float mu = mean[row], rs = rstd[row];

    float sum_gx = 0.0f, sum_gx_xhat = 0.0f;
    for (int c = lane; c < hidden; c += 32) {
        const float gx = __fmul_rn(gr[c], gamma[c]);        // rounded once: see the top of the file
        sum_gx += gx;
        sum_gx_xhat = fmaf(gx, (xr[c] - mu) * rs, sum_gx_xhat);
    }
    const float mean_gx = warp_sum(sum_gx) / hidden;
    const float mean_gx_xhat = warp_sum(sum_gx_xhat) / hidden;

    float* dxr = dx + (long long)row * hidden;
    for (int c = lane; c < hidden; c += 32) {
        const float gx = __fmul_rn(gr[c], gamma[c]);
        const float xhat = (xr[c] - mu) * rs;
        dxr[c] = rs * ((gx - mean_gx) - xhat * mean_gx_xhat);
    }
}

// Partial dgamma and dbeta. Launch: grid (ceil(H / 32), K), block (32, 8), K >= 1 partial
// sums per column. threadIdx.x runs along a row (coalesced); thread (tx, ty) of block
// (bx, by) sums column 32 bx + tx over rows 8 by + ty, stepping by 8 K; the block's 8 sums
// of a column are added in shared memory in a fixed order and written to row by of
// partial (K, 2H): dgamma in columns [0, H), dbeta in [H, 2H).
extern "C" __global__ void __launch_bounds__(256)
layer_norm_backward_dgamma_dbeta(const float* __restrict__ dy, const float* __restrict__ x,
                                 const float* __restrict__ mean, const float* __restrict__ rstd,
                                 float* __restrict__ partial, int rows, int hidden) {
    __shared__ float sums[2][8][32];                         // dgamma, dbeta of each thread
    const int col = blockIdx.x * 32 + threadIdx.x;
    float dgamma = 0.0f, dbeta = 0.0f;
    if (col < hidden) {
        for (int row = blockIdx.y * 8 + threadIdx.y; row < rows; row += gridDim.y * 8) {
            const long long i = (long long)row * hidden + col;
            const float g = dy[i];
            dgamma = fmaf(g, (x[i] - mean[row]) * rstd[row], dgamma);
            dbeta += g;
        }
    }
    sums[0][threadIdx.y][threadIdx.x] = dgamma;
    sums[1][threadIdx.y][threadIdx.x] = dbeta;
    __syncthreads();
    if (threadIdx.y == 0 && col < hidden) {
        float total_dgamma = 0.0f, total_dbeta = 0.0f;
        for (int r = 0; r < 8; ++r) {
            total_dgamma += sums[0][r][threadIdx.x];
            total_dbeta += sums[1][r][threadIdx.x];
        }
        partial[(long long)blockIdx.y * 2 * hidden + col] = total_dgamma;
        partial[(long long)blockIdx.y * 2 * hidden + hidden + col] = total_dbeta;
    }
}

// total[c] = sum over k of partial[k, c], k in order 0, 1, ..., K - 1 (deterministic).
// Launch: grid ceil(C / 256), block 256 threads, one column each (coalesced along k rows).
extern "C" __global__ void __launch_bounds__(256)
layer_norm_sum_partials(const float* __restrict__ partial, float* __restrict__ total, int parts, int cols) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= cols) return;
    float sum = 0.0f;
    for (int k = 0; k < parts; ++k) sum += partial[(long long)k * cols + col];
    total[col] = sum;
}
