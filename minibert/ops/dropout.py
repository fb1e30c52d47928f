"""Inverted dropout.

Forward (training):  keep = uniform(shape) >= p,   y = x * keep / (1 - p)
    (scaling by 1/(1-p) keeps E[y] = x, so evaluation needs no rescaling)
Forward (p == 0 or evaluation): y = x, nothing cached.
Cache:     the boolean keep mask (1 byte per element) and the scale.
Backward:  dx = g * keep / (1 - p)
The random numbers come from the ``rng`` passed in (a NumPy or CuPy Generator), so a seeded
generator gives reproducible masks.
"""


def dropout_forward(x, p, rng, training=True):
    if not 0.0 <= p < 1.0:
        raise ValueError(f"dropout probability must be in [0, 1), got {p!r}")
    if not training or p == 0.0:
        return x, None
    keep = rng.random(x.shape, dtype=x.dtype) >= p
    scale = 1.0 / (1.0 - p)
    y = x * keep
    y *= scale
    return y, (keep, scale)


def dropout_backward(dy, cache):
    if cache is None:
        return dy
    keep, scale = cache
    dx = dy * keep
    dx *= scale
    return dx
