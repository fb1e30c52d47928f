"""Softmax cross-entropy with an ignore index, averaged over the counted rows.

Forward:   logp = log_softmax(z) = z - max(z) - log(sum(exp(z - max(z))))
           loss = -(1/M) * sum over rows i with y_i != ignore_index of logp[i, y_i]
    z: (R, C) logits   y: (R,) integer labels   M = number of counted rows
    (M == 0 gives loss 0 and a zero gradient rather than 0/0.)
Cache:     softmax probabilities p = exp(logp) (R, C), labels, the counted-row mask, M.
Backward:  dz = dL * (p - onehot(y)) / M on counted rows, 0 on ignored rows.
"""

from ..backend import get_array_module

IGNORE_INDEX = -100


def cross_entropy_forward(logits, labels, ignore_index=IGNORE_INDEX):
    xp = get_array_module(logits)
    if logits.ndim != 2 or getattr(labels, "shape", None) != logits.shape[:1]:
        raise ValueError(f"cross_entropy_forward needs logits (R, C) and labels (R,), got {logits.shape} "
                         f"and {getattr(labels, 'shape', type(labels).__name__)}")
    counted = labels != ignore_index                    # (R,)
    count = int(counted.sum())
    safe_labels = xp.where(counted, labels, 0)          # any valid class for ignored rows
    shifted = logits - logits.max(axis=-1, keepdims=True)            # (R, C)
    probs = xp.exp(shifted)
    sum_exp = probs.sum(axis=-1, keepdims=True)
    probs /= sum_exp
    rows = xp.arange(logits.shape[0])
    logp_label = shifted[rows, safe_labels] - xp.log(sum_exp[:, 0])  # (R,)
    loss = -float((logp_label * counted).sum()) / max(count, 1)
    return loss, (probs, safe_labels, counted, count)


def cross_entropy_backward(dloss, cache):
    probs, safe_labels, counted, count = cache
    xp = get_array_module(probs)
    dlogits = probs.copy()                              # (R, C)
    dlogits[xp.arange(probs.shape[0]), safe_labels] -= 1.0
    dlogits *= (counted * (dloss / max(count, 1)))[:, None].astype(probs.dtype)
    return dlogits
