"""Softmax over the last axis.

Forward:   p = exp(s - max(s)) / sum(exp(s - max(s)))     (subtracting the max avoids overflow)
Cache:     p.
Backward:  ds = p * (g - sum(g * p))     (the Jacobian diag(p) - p p^T applied to g)
"""

from ..backend import get_array_module


def softmax_forward(s):
    xp = get_array_module(s)
    p = s - s.max(axis=-1, keepdims=True)
    xp.exp(p, out=p)
    p /= p.sum(axis=-1, keepdims=True)
    return p, p


def softmax_backward(dp, cache):
    p = cache
    ds = dp - (dp * p).sum(axis=-1, keepdims=True)
    ds *= p
    return ds
