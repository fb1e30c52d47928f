"""Elementwise activations: GELU (exact erf form and tanh form) and tanh.

GELU, exact ("gelu", the form BERT checkpoints were trained with):
    y = x * Phi(x),  Phi(x) = 0.5 * (1 + erf(x / sqrt(2)))       (the normal CDF)
    dy/dx = Phi(x) + x * phi(x),  phi(x) = exp(-x^2 / 2) / sqrt(2 pi)  (the normal density)
    Cache: x and Phi(x) (keeping Phi saves a second erf, the costly part, in backward).

GELU, tanh approximation ("gelu_new"):
    y = 0.5 x (1 + tanh(u)),  u = sqrt(2/pi) (x + 0.044715 x^3)
    dy/dx = 0.5 (1 + tanh(u)) + 0.5 x (1 - tanh(u)^2) sqrt(2/pi) (1 + 3 * 0.044715 x^2)
    Cache: x and tanh(u).

tanh (the pooler):  y = tanh(x),  dy/dx = 1 - y^2.   Cache: y.

ReLU (DistilBERT's classifier):  y = max(x, 0),  dy/dx = 1 where x > 0, else 0 (0 at x = 0,
    as PyTorch).   Cache: the boolean mask x > 0.
"""

import math

from ..backend import erf, get_array_module

SQRT_HALF = 1.0 / math.sqrt(2.0)
INV_SQRT_2PI = 1.0 / math.sqrt(2.0 * math.pi)
SQRT_2_OVER_PI = math.sqrt(2.0 / math.pi)
GELU_TANH_COEF = 0.044715


def gelu_forward(x):
    cdf = erf(x * SQRT_HALF)                            # Phi(x) = 0.5 (1 + erf(x / sqrt 2))
    cdf += 1.0
    cdf *= 0.5
    return x * cdf, (x, cdf)


def gelu_backward(dy, cache):
    x, cdf = cache
    xp = get_array_module(x)
    pdf = x * x                                         # phi(x) = exp(-x^2 / 2) / sqrt(2 pi)
    pdf *= -0.5
    xp.exp(pdf, out=pdf)
    pdf *= INV_SQRT_2PI
    pdf *= x                                            # x * phi(x)
    pdf += cdf                                          # Phi(x) + x * phi(x)
    pdf *= dy
    return pdf


def gelu_tanh_forward(x):
    xp = get_array_module(x)
    t = xp.tanh(SQRT_2_OVER_PI * (x + GELU_TANH_COEF * x * x * x))
    return 0.5 * x * (1.0 + t), (x, t)


def gelu_tanh_backward(dy, cache):
    x, t = cache
    du_dx = SQRT_2_OVER_PI * (1.0 + 3.0 * GELU_TANH_COEF * x * x)
    return dy * (0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * du_dx)


def tanh_forward(x):
    y = get_array_module(x).tanh(x)
    return y, y


def tanh_backward(dy, cache):
    y = cache
    return dy * (1.0 - y * y)


def relu_forward(x):
    positive = x > 0
    return x * positive, positive


def relu_backward(dy, cache):
    positive = cache
    return dy * positive


# hidden_act name (as in config.json) -> (forward, backward)
ACTIVATIONS = {
    "gelu": (gelu_forward, gelu_backward),
    "gelu_new": (gelu_tanh_forward, gelu_tanh_backward),
    "gelu_pytorch_tanh": (gelu_tanh_forward, gelu_tanh_backward),
}
