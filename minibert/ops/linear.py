"""Linear (fully connected) layer.

Forward:   y = x @ W.T + b
    x: (..., in)   W: (out, in)  [Hugging Face layout]   b: (out,)   y: (..., out)
Cache:     x and W (the inputs are all backward needs).
Backward:  with g = dL/dy,
    dx = g @ W                     (..., in)
    dW = g.T @ x  (summed over every leading position)   (out, in)
    db = g summed over every leading position            (out,)
"""


def linear_forward(x, weight, bias=None):
    out_features, in_features = weight.shape
    # one 2-D matrix product over all leading positions: (M, in) @ (in, out), M = x.size / in.
    # (A 3-D @ 2-D product would loop over the batch in small products; one large GEMM is faster.)
    y = x.reshape(-1, in_features) @ weight.T          # (M, out); W.T is a view, no copy
    if bias is not None:
        y += bias
    return y.reshape(*x.shape[:-1], out_features), (x, weight, bias is not None)


def linear_backward(dy, cache):
    x, weight, has_bias = cache
    out_features, in_features = weight.shape
    dy2 = dy.reshape(-1, out_features)                 # (M, out), M = all leading positions
    x2 = x.reshape(-1, in_features)                    # (M, in)
    dx = (dy2 @ weight).reshape(x.shape)               # (..., in)
    dweight = dy2.T @ x2                               # (out, in)
    dbias = dy2.sum(axis=0) if has_bias else None      # (out,)
    return dx, dweight, dbias
