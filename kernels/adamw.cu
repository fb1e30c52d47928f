// adamw.cu -- the AdamW update of one parameter in a single pass, float32.
//
// Reference: minibert/ops/adamw.py (adamw_update), the same rule with array operations.
//
//   p = p * (1 - lr * wd)                         decoupled weight decay, from the old p
//   m = beta1 * m + (1 - beta1) * g
//   v = beta2 * v + (1 - beta2) * g^2
//   p = p - step_size * m / (sqrt(v) * inv_sqrt_c2 + eps)
//
// with, for update number t (from 1), c1 = 1 - beta1^t, c2 = 1 - beta2^t:
//   bias correction on  (torch.optim.AdamW):        step_size = lr / c1, inv_sqrt_c2 = 1 / sqrt(c2)
//   bias correction off (BERT's original optimizer): step_size = lr,      inv_sqrt_c2 = 1
// The host computes step_size, inv_sqrt_c2 and decay = 1 - lr * wd once per step, and
// 1 - beta1, 1 - beta2 in double precision: 1 - beta2 computed here in float32 from
// beta2 = 0.999 (itself rounded) would be off by 1.3e-5 relative, and so would every v.
//
// The NumPy version makes six passes over memory with a temporary; this kernel reads p, g,
// m, v once and writes p, m, v once: the update is bound by memory bandwidth, so fewer
// passes is what makes it fast.

// Launch: grid min(ceil(n / 256), a few blocks per SM), block 256, grid-stride loop over the
// n elements (coalesced).
extern "C" __global__ void __launch_bounds__(256)
adamw_update(float* __restrict__ p, const float* __restrict__ g, float* __restrict__ m, float* __restrict__ v,
             long long n, float beta1, float beta2, float one_minus_beta1, float one_minus_beta2, float eps,
             float decay, float step_size, float inv_sqrt_c2) {
    for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; i < n; i += (long long)gridDim.x * blockDim.x) {
        const float grad = g[i];
        const float m_new = beta1 * m[i] + one_minus_beta1 * grad;
        const float v_new = beta2 * v[i] + one_minus_beta2 * grad * grad;
        m[i] = m_new;
        v[i] = v_new;
        p[i] = p[i] * decay - step_size * m_new / (sqrtf(v_new) * inv_sqrt_c2 + eps);
    }
}
