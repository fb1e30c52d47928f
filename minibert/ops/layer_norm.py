"""Layer normalisation over the last axis (biased variance, as BERT).

Forward:   mu = mean(x),  var = mean((x - mu)^2),  rstd = 1 / sqrt(var + eps)
           xhat = (x - mu) * rstd,   y = xhat * gamma + beta
    x, y: (..., H)   gamma, beta: (H,)
Cache:     xhat, rstd (..., 1), gamma.
Backward:  with g = dL/dy and gx = g * gamma,
    dgamma = sum over positions of g * xhat,   dbeta = sum over positions of g
    dx = rstd * (gx - mean(gx) - xhat * mean(gx * xhat))
    (the two means remove the components that normalisation made invisible:
     a shift of x, and a rescaling of x - mu)
"""


def layer_norm_forward(x, gamma, beta, eps=1e-12):
    mu = x.mean(axis=-1, keepdims=True)                 # (..., 1)
    xhat = x - mu                                       # (..., H)
    var = (xhat * xhat).mean(axis=-1, keepdims=True)    # (..., 1)
    rstd = 1.0 / (var + eps) ** 0.5
    xhat *= rstd
    y = xhat * gamma
    y += beta
    return y, (xhat, rstd, gamma)


def layer_norm_backward(dy, cache):
    xhat, rstd, gamma = cache
    hidden = xhat.shape[-1]
    lead = tuple(range(dy.ndim - 1))
    dgamma = (dy * xhat).sum(axis=lead)                 # (H,)
    dbeta = dy.sum(axis=lead)                           # (H,)
    gx = dy * gamma                                     # (..., H)
    mean_gx = gx.mean(axis=-1, keepdims=True)
    mean_gx_xhat = (gx * xhat).sum(axis=-1, keepdims=True) / hidden
    dx = gx
    dx -= mean_gx
    dx -= xhat * mean_gx_xhat
    dx *= rstd
    return dx, dgamma, dbeta
