"""The AdamW update of one parameter, in place (the rule of ``torch.optim.AdamW``).

With g the gradient, t the update number counted from 1, and m, v starting at zero:
    p = p * (1 - lr * wd)                               decoupled weight decay, from the old p
    m = beta1 * m + (1 - beta1) * g                     running mean of gradients
    v = beta2 * v + (1 - beta2) * g^2                   running mean of squared gradients
    p = p - lr * m_hat / (sqrt(v_hat) + eps)            m_hat = m / (1 - beta1^t),
                                                        v_hat = v / (1 - beta2^t)
``bias_correction=False`` (original BERT's AdamWeightDecayOptimizer) leaves out the two
divisions by 1 - beta^t. p, g, m, v share one shape; ``scratch``, an array of that shape,
is the one temporary (made when not given).
"""

import math

from ..backend import get_array_module


def adamw_update(p, g, m, v, *, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, step=1,
                 bias_correction=True, scratch=None):
    xp = get_array_module(p)
    beta1, beta2 = betas
    tmp = xp.empty_like(p) if scratch is None else scratch

    # Decoupled weight decay, from the parameter before this step: p = p - lr * wd * p
    if weight_decay:
        p *= 1.0 - lr * weight_decay

    # m = beta1 * m + (1 - beta1) * g
    m *= beta1
    xp.multiply(g, 1.0 - beta1, out=tmp)
    m += tmp
    # v = beta2 * v + (1 - beta2) * g^2
    v *= beta2
    xp.multiply(g, g, out=tmp)
    tmp *= 1.0 - beta2
    v += tmp

    if bias_correction:
        # m_hat / (sqrt(v_hat) + eps) = (m / c1) / (sqrt(v) / sqrt(c2) + eps)
        c1 = 1.0 - beta1 ** step
        c2 = 1.0 - beta2 ** step
        step_size = lr / c1
        xp.sqrt(v, out=tmp)
        tmp /= math.sqrt(c2)
    else:
        step_size = lr
        xp.sqrt(v, out=tmp)
    tmp += eps                                          # tmp = denominator
    xp.divide(m, tmp, out=tmp)                          # tmp = update direction
    tmp *= step_size
    p -= tmp
