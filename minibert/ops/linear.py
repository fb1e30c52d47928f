"""Linear (fully connected) layer.

Forward:   y = x @ W.T + b
    x: (..., in)   W: (out, in)  [Hugging Face layout]   b: (out,)   y: (..., out)
Cache:     x and W (the inputs are all backward needs).
Backward:  with g = dL/dy,
    dx = g @ W                     (..., in)
    dW = g.T @ x  (summed over every leading position)   (out, in)
    db = g summed over every leading position            (out,)

Mixed precision (``compute_dtype=float16``): the two matrix-product inputs are rounded to
float16 and the products run in float16 (on a GPU: tensor cores, float32 accumulation);
y, dx, dW and db come back in the weight's own dtype (float32 "master" weights), and the
bias is added in that dtype. The cache then holds the float16 copies of x and W. Gradients
in float16 can underflow to zero or overflow to inf: scale the loss (optim.DynamicLossScaler).
"""


def linear_forward(x, weight, bias=None, compute_dtype=None):
    out_features, in_features = weight.shape
    dtype = weight.dtype
    if compute_dtype is not None and compute_dtype != dtype:
        x, weight = x.astype(compute_dtype), weight.astype(compute_dtype)
    # one 2-D matrix product over all leading positions: (M, in) @ (in, out), M = x.size / in.
    # (A 3-D @ 2-D product would loop over the batch in small products; one large GEMM is faster.)
    y = x.reshape(-1, in_features) @ weight.T          # (M, out); W.T is a view, no copy
    if y.dtype != dtype:
        y = y.astype(dtype)
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], out_features), (x, weight, bias is not None, dtype)


def linear_backward(dy, cache):
    x, weight, has_bias, dtype = cache
    out_features, in_features = weight.shape
    dy2 = dy.reshape(-1, out_features)                 # (M, out), M = all leading positions
    dbias = dy2.sum(axis=0) if has_bias else None      # (out,), in the master dtype
    dy2 = dy2.astype(weight.dtype, copy=False)         # float16 under mixed precision
    x2 = x.reshape(-1, in_features)                    # (M, in)
    dx = (dy2 @ weight).reshape(x.shape)               # (..., in)
    dweight = dy2.T @ x2                               # (out, in)
    if weight.dtype != dtype:
        dx, dweight = dx.astype(dtype), dweight.astype(dtype)
    return dx, dweight, dbias
