"""Generic layers: modules that own parameters and wrap one op each.

Each layer's ``forward`` calls an op and keeps its cache; ``backward`` takes the gradient of
the output, adds the parameter gradients into ``.grad`` (``+=``, so a parameter used twice
gets both contributions) and returns the gradient of the input. On CuPy arrays LayerNorm runs
its fused CUDA kernel (``cuda_kernels.pick``), on NumPy arrays the op of ``minibert.ops``.
"""

from __future__ import annotations

import numpy as np

from . import ops
from .backend import get_array_module
from .cuda_kernels import pick
from .nn import Module, Parameter


class Linear(Module):
    """y = x @ W.T + b, with W stored as (out, in) like Hugging Face checkpoints."""

    def __init__(self, in_features: int, out_features: int, init_std: float, rng, dtype, bias=True):
        self.weight = Parameter(rng.normal(0.0, init_std, (out_features, in_features)).astype(dtype))
        if bias:
            self.bias = Parameter(np.zeros(out_features, dtype=dtype))
        else:
            self.bias = None

    @classmethod
    def from_parameters(cls, weight: Parameter, bias: Parameter | None = None) -> "Linear":
        """A Linear layer using existing parameters (weight tying: the MLM decoder)."""
        layer = cls.__new__(cls)
        layer.weight, layer.bias = weight, bias
        return layer

    def keep_outputs(self, rows) -> None:
        """Keep only these output features (rows of W and entries of b): structured pruning."""
        self.weight.data, self.weight.grad = self.weight.data[rows].copy(), self.weight.grad[rows].copy()
        if self.bias is not None:
            self.bias.data, self.bias.grad = self.bias.data[rows].copy(), self.bias.grad[rows].copy()

    def keep_inputs(self, columns) -> None:
        """Keep only these input features (columns of W)."""
        self.weight.data = self.weight.data[:, columns].copy()
        self.weight.grad = self.weight.grad[:, columns].copy()

    compute_dtype = None        # float16: mixed precision (BertPreTrainedModel.set_matmul_dtype)

    def forward(self, x):
        y, cache = ops.linear_forward(x, self.weight.data, None if self.bias is None else self.bias.data,
                                      self.compute_dtype)
        self._save_cache(cache)
        return y

    def backward(self, dy):
        dx, dweight, dbias = ops.linear_backward(dy, self._pop_cache())
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
        y, cache = ops.embedding_forward(ids, self.weight.data)
        self._save_cache(cache)
        return y

    def backward(self, dy):
        rows, drows = ops.embedding_backward(dy, self._pop_cache())
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
        forward, backward = pick("layer_norm", x)     # ops.layer_norm_*, or the kernel on the GPU
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
        y, cache = ops.dropout_forward(x, self.p, rng, active)
        self._save_cache(("dropout", cache))
        return y

    def backward(self, dy):
        _, cache = self._pop_cache()
        return ops.dropout_backward(dy, cache)


class Activation(Module):
    """An elementwise activation chosen by name: "gelu" (exact erf), "gelu_new" (tanh form), "tanh"."""

    FUNCTIONS = dict(ops.ACTIVATIONS, tanh=(ops.tanh_forward, ops.tanh_backward))

    def __init__(self, name: str):
        if name not in self.FUNCTIONS:
            raise ValueError(f"unknown activation {name!r}; expected one of {sorted(self.FUNCTIONS)}")
        self.name = name
        self._forward, self._backward = self.FUNCTIONS[name]

    def forward(self, x):
        y, cache = self._forward(x)
        self._save_cache(cache)
        return y

    def backward(self, dy):
        return self._backward(dy, self._pop_cache())
