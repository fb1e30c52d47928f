"""Mean squared error: the regression loss of a sequence-classification head with real-valued labels.

Forward:   d = pred - target,   loss = (1/K) * sum(d^2)
    pred: any shape   target: the same shape   K = number of elements
    (K == 0 gives loss 0 and a zero gradient rather than 0/0.)
Cache:     the difference d and K.
Backward:  dpred = dL * 2 d / K
"""

from ..backend import get_array_module


def mse_forward(pred, target):
    if tuple(pred.shape) != tuple(target.shape):
        raise ValueError(f"mse: prediction shape {tuple(pred.shape)} differs from target shape "
                         f"{tuple(target.shape)}")
    xp = get_array_module(pred)
    diff = pred - xp.asarray(target, dtype=pred.dtype)
    count = diff.size
    loss = float((diff * diff).sum()) / max(count, 1)
    return loss, (diff, count)


def mse_backward(dloss, cache):
    diff, count = cache
    return diff * (2.0 * dloss / max(count, 1))
