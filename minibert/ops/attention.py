"""Scaled dot-product attention, the straightforward ("naive") way.

Shapes: B batch, N heads, T sequence length (queries Tq, keys Tk), D head size.

Forward:
    s = (q / sqrt(D)) @ k^T + mask         (B, N, Tq, Tk)   mask: additive, broadcastable,
                                                           0 where a key may be seen and a
                                                           large negative value where not
    p = softmax(s)                          (B, N, Tq, Tk)
    p' = dropout(p)                         (attention dropout, training only)
    o = p' @ v                              (B, N, Tq, D)
Cache: the scaled q, k, v, p and the dropout mask: the (T x T) matrix p is what makes this
       op's memory grow with the square of the sequence (see flash_attention.py for the
       tiled version that keeps only o and one number per row).
Backward, with g = dL/do:
    dv  = p'^T @ g                          (B, N, Tk, D)
    dp' = g @ v^T                           (B, N, Tq, Tk)
    dp  = dropout_backward(dp')
    ds  = p * (dp - sum(dp * p))            (softmax backward)
    dq  = ds @ k / sqrt(D)
    dk  = ds^T @ (q / sqrt(D))
"""

import math
from typing import NamedTuple

from .dropout import dropout_backward, dropout_forward
from .softmax import softmax_backward, softmax_forward


class AttentionCache(NamedTuple):
    q_scaled: object          # (B, N, Tq, D)
    k: object                 # (B, N, Tk, D)
    v: object                 # (B, N, Tk, D)
    p: object                 # (B, N, Tq, Tk) the attention probabilities
    p_dropped: object         # p after dropout (p itself when dropout is off)
    dropout_cache: object
    scale: float              # 1 / sqrt(D)


def attention_forward(q, k, v, mask=None, dropout_p=0.0, rng=None, training=True):
    scale = 1.0 / math.sqrt(q.shape[-1])
    q_scaled = q * scale                                # (B, N, Tq, D)
    s = q_scaled @ k.swapaxes(-1, -2)                   # (B, N, Tq, Tk)
    if mask is not None:
        s += mask
    p, _ = softmax_forward(s)                           # (B, N, Tq, Tk)
    p_dropped, dropout_cache = dropout_forward(p, dropout_p, rng, training)
    o = p_dropped @ v                                   # (B, N, Tq, D)
    return o, AttentionCache(q_scaled, k, v, p, p_dropped, dropout_cache, scale)


def attention_backward(do, cache):
    q_scaled, k, v, p, p_dropped, dropout_cache, scale = cache
    dv = p_dropped.swapaxes(-1, -2) @ do                # (B, N, Tk, D)
    dp = do @ v.swapaxes(-1, -2)                        # (B, N, Tq, Tk)
    dp = dropout_backward(dp, dropout_cache)
    ds = softmax_backward(dp, p)                        # (B, N, Tq, Tk)
    dq = ds @ k                                         # (B, N, Tq, D)
    dq *= scale
    dk = ds.swapaxes(-1, -2) @ q_scaled                 # (B, N, Tk, D)
    return dq, dk, dv
