"""Generic layers: modules that own parameters and wrap one op each.

Each layer's ``forward`` runs an op and keeps its cache; ``backward`` takes the gradient of
the output, adds the parameter gradients into ``.grad`` (``+=``, so a parameter used twice
gets both contributions) and returns the gradient of the input. ``op(name, x)`` gives the
op's (forward, backward): the reference op of ``minibert/ops/`` unless a speed-up applies
(``minibert/registry.py``); the layer keeps the backward beside the cache, so the pair always
matches.
"""

from __future__ import annotations

import numpy as np

from .backend import get_array_module
from .config import HIDDEN_ACTIVATIONS
from .nn import Module, Parameter, op


class Linear(Module):
    """y = x @ W.T + b, with W stored as (out, in) like Hugging Face checkpoints."""

    compute_dtype = None        # np.float16: mixed precision (Module.set_matmul_dtype)

    def __init__(self, in_features: int, out_features: int, init_std: float, rng, dtype, bias=True):
        self.weight = Parameter(rng.normal(0.0, init_std, (out_features, in_features)).astype(dtype))
        self.bias = Parameter(np.zeros(out_features, dtype=dtype)) if bias else None

    @classmethod
    def from_parameters(cls, weight: Parameter, bias: Parameter | None = None) -> "Linear":
        """A Linear layer using existing parameters (weight tying: the MLM decoder)."""
        layer = cls.__new__(cls)
        layer.weight, layer.bias = weight, bias
        return layer

    def forward(self, x):
        forward, backward = op("linear", x)
        y, cache = forward(x, self.weight.data, None if self.bias is None else self.bias.data, self.compute_dtype)
        self._save_cache((backward, cache))
        return y

    def backward(self, dy):
        backward, cache = self._pop_cache()
        dx, dweight, dbias = backward(dy, cache)
        self.weight.grad += dweight
        if self.bias is not None:
            self.bias.grad += dbias
        return dx


class Embedding(Module):
    """A (V, H) table looked up by integer ids.

    ``padding_idx`` behaves as in PyTorch: that row starts at zero and the lookup sends it
    no gradient (it may still get gradient from elsewhere, e.g. a tied output layer).
    """

    def __init__(self, num_embeddings: int, dim: int, init_std: float, rng, dtype, padding_idx=None):
        table = rng.normal(0.0, init_std, (num_embeddings, dim)).astype(dtype)
        if padding_idx is not None:
            table[padding_idx] = 0.0
        self.weight = Parameter(table)
        self.padding_idx = padding_idx

    def forward(self, ids):
        forward, backward = op("embedding", self.weight.data)
        y, cache = forward(ids, self.weight.data)
        self._save_cache((backward, cache))
        return y

    def backward(self, dy):
        backward, cache = self._pop_cache()
        rows, drows = backward(dy, cache)
        if self.padding_idx is not None:
            keep = rows != self.padding_idx
            rows, drows = rows[keep], drows[keep]
        self.weight.grad[rows] += drows                # rows are distinct, so += is safe
        return None                                     # ids have no gradient


class LayerNorm(Module):
    """LayerNorm over the last axis with learned scale (``weight``) and shift (``bias``)."""

    def __init__(self, dim: int, eps: float, dtype):
        self.weight = Parameter(np.ones(dim, dtype=dtype))
        self.bias = Parameter(np.zeros(dim, dtype=dtype))
        self.eps = eps

    def forward(self, x):
        forward, backward = op("layer_norm", x)
        y, cache = forward(x, self.weight.data, self.bias.data, self.eps)
        self._save_cache((backward, cache))
        return y

    def backward(self, dy):
        backward, cache = self._pop_cache()
        dx, dgamma, dbeta = backward(dy, cache)
        self.weight.grad += dgamma
        self.bias.grad += dbeta
        return dx


class Dropout(Module):
    """Inverted dropout with probability ``p``; active only in training mode."""

    def __init__(self, p: float, random_source):
        self.p = p
        self.random = random_source

    def forward(self, x):
        active = self.training and self.p > 0.0
        rng = self.random.generator(get_array_module(x)) if active else None
        forward, backward = op("dropout", x)
        y, cache = forward(x, self.p, rng, active)
        self._save_cache((backward, cache))
        return y

    def backward(self, dy):
        backward, cache = self._pop_cache()
        return backward(dy, cache)


class Activation(Module):
    """An elementwise activation chosen by name: "gelu" (exact erf), "gelu_new" (tanh form), "tanh", "relu"."""

    def __init__(self, name: str):
        if name not in HIDDEN_ACTIVATIONS:
            raise ValueError(f"unknown activation {name!r}; expected one of {sorted(HIDDEN_ACTIVATIONS)}")
        self.name = name

    def forward(self, x):
        forward, backward = op(self.name, x)
        y, cache = forward(x)
        self._save_cache((backward, cache))
        return y

    def backward(self, dy):
        backward, cache = self._pop_cache()
        return backward(dy, cache)
