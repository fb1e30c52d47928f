// bias_gelu.cu -- bias add fused with the exact (erf) GELU, forward and backward, float32.
//
// In BERT's feed-forward block the intermediate dense layer is followed by GELU; fusing the
// bias add with the activation reads and writes the (R, I) activation once instead of
// twice. The reference is minibert/ops/activations.py (gelu_forward / gelu_backward)
// applied to x + bias:
//
//   z = x + bias                    x: (R, I)  bias: (I,)
//   y = z * Phi(z),                 Phi(z) = 0.5 * (1 + erf(z / sqrt(2)))     the normal CDF
//   dz = g * (Phi(z) + z * phi(z)), phi(z) = exp(-z^2 / 2) / sqrt(2 pi)       the normal density
//   dx = dz,   dbias = sum over rows of dz   (in a fixed order: deterministic)
//
// The forward keeps nothing but its inputs: the backward recomputes z and Phi(z).
// erff is the exact error function of CUDA's math library (a few ulp), not the tanh form.

constexpr float SQRT_HALF = 0.70710678118654752f;
constexpr float INV_SQRT_2PI = 0.39894228040143268f;

// Launch: grid min(ceil(n / 256), 65535 * 4), block 256, grid-stride loop over the n = R * I
// elements (consecutive threads, consecutive elements: coalesced).
extern "C" __global__ void __launch_bounds__(256)
bias_gelu_forward(const float* __restrict__ x, const float* __restrict__ bias, float* __restrict__ y,
                  long long n, int cols) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float z = x[i] + bias[i % cols];
        y[i] = z * 0.5f * (1.0f + erff(z * SQRT_HALF));
    }
}

// Launch: grid (ceil(I / 32), K) with K = min(ceil(R / 8), 256), block (32, 8).
// threadIdx.x runs along a row (coalesced), threadIdx.y and the grid's y over rows
// (grid-stride). Each thread sums dz of its column over its rows; the block adds its 8 sums
// of a column in shared memory in a fixed order and writes them to row blockIdx.y of
// partial (K, I), without atomics; bias_gelu_sum_partials then adds the K rows in order,
// so dbias is the same bit for bit from run to run.
extern "C" __global__ void __launch_bounds__(256)
bias_gelu_backward(const float* __restrict__ dy, const float* __restrict__ x, const float* __restrict__ bias,
                   float* __restrict__ dx, float* __restrict__ partial, int rows, int cols) {
    __shared__ float sums[8][32];
    const int col = blockIdx.x * 32 + threadIdx.x;
    float column_sum = 0.0f;
    if (col < cols) {
        const float b = bias[col];
        for (int row = blockIdx.y * blockDim.y + threadIdx.y; row < rows; row += gridDim.y * blockDim.y) {
            const long long i = (long long)row * cols + col;
            const float z = x[i] + b;
            const float cdf = 0.5f * (1.0f + erff(z * SQRT_HALF));
            const float pdf = expf(-0.5f * z * z) * INV_SQRT_2PI;
            const float dz = dy[i] * fmaf(z, pdf, cdf);
            dx[i] = dz;
            column_sum += dz;
        }
    }
    sums[threadIdx.y][threadIdx.x] = column_sum;
    __syncthreads();
    if (threadIdx.y == 0 && col < cols) {
        float total = 0.0f;
        for (int r = 0; r < 8; ++r) total += sums[r][threadIdx.x];
        partial[(long long)blockIdx.y * cols + col] = total;
    }
}

// dbias[c] = sum over k of partial[k, c], k in order 0, 1, ..., K - 1 (deterministic).
// Launch: grid ceil(I / 256), block 256 threads, one column each.
extern "C" __global__ void __launch_bounds__(256)
bias_gelu_sum_partials(const float* __restrict__ partial, float* __restrict__ dbias, int parts, int cols) {
    const int col = blockIdx.x * blockDim.x + threadIdx.x;
    if (col >= cols) return;
    float sum = 0.0f;
    for (int k = 0; k < parts; ++k) sum += partial[(long long)k * cols + col];
    dbias[col] = sum;
}
