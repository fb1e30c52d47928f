"""Parameters and modules: the bookkeeping around the ops.

A :class:`Parameter` is an array (``.data``) plus its gradient (``.grad``, same shape,
accumulated with ``+=`` by every backward pass that uses it). A :class:`Module` owns
parameters and sub-modules; its ``forward`` calls ops and keeps their caches for the step
it is in, its ``backward`` takes the gradient of its output and returns the gradient of
its input, adding into its parameters' ``.grad`` on the way.

Names are built from attribute names, so ``BertModel().encoder.layer[0].attention.self.query``
owns ``encoder.layer.0.attention.self.query.weight``: exactly the Hugging Face state-dict
keys, which is what loading, saving and weight-decay rules are driven by.
"""

from __future__ import annotations

import contextlib
from typing import Iterator

import numpy as np

from .backend import check_device, check_dtype, device_of, get_array_module, to_device
from .registry import implementation

_grad_enabled = True


def grad_enabled() -> bool:
    """Whether modules keep the caches that backward needs (see :func:`no_grad`)."""
    return _grad_enabled


def op(name: str, x):
    """(forward, backward) of the op ``name`` for arrays like ``x``: the reference op of
    ``minibert/ops/`` unless a speed-up applies (``minibert/registry.py`` chooses). Under
    :func:`no_grad` no cache is kept, so forward-only speed-ups may run."""
    return implementation(name, x, inference=not _grad_enabled)


@contextlib.contextmanager
def no_grad():
    """Run forward passes without keeping caches: inference that holds no activations.

    >>> with no_grad():
    ...     seq, pooled = model.forward(ids)      # nothing is kept for backward
    """
    global _grad_enabled
    previous, _grad_enabled = _grad_enabled, False
    try:
        yield
    finally:
        _grad_enabled = previous


class Parameter:
    """A trainable array and the gradient that backward passes accumulate into it."""

    __slots__ = ("data", "grad")

    def __init__(self, data):
        self.data = data
        self.grad = get_array_module(data).zeros_like(data)

    @property
    def shape(self):
        return self.data.shape

    def __repr__(self):
        return f"Parameter(shape={tuple(self.data.shape)}, dtype={self.data.dtype}, device={device_of(self.data)})"


class Module:
    """Base class: parameters, sub-modules, train/eval, state dicts, devices.

    Sub-classes assign ``Parameter`` and ``Module`` attributes in ``__init__`` (lists of
    modules go in a :class:`ModuleList`) and define ``forward`` and ``backward``.
    """

    training: bool = True
    _cache = None

    # ----------------------------------------------------------------- caches
    def _save_cache(self, cache) -> None:
        """Keep what backward needs, unless running under :func:`no_grad`."""
        self._cache = cache if _grad_enabled else None

    def _pop_cache(self):
        """Hand the cache to backward and forget it (its memory is freed after the step)."""
        cache, self._cache = self._cache, None
        if cache is None:
            raise RuntimeError(
                f"{type(self).__name__}.backward() was called without a forward pass that kept "
                "its cache: run forward first (not under no_grad()), and call backward once per forward"
            )
        return cache

    def clear_caches(self) -> None:
        """Forget the caches of this module and its sub-modules (a branch that gets no gradient)."""
        for _, module in self.named_modules():
            module._cache = None

    # ----------------------------------------------------------------- traversal
    def named_modules(self, prefix: str = "") -> Iterator[tuple[str, "Module"]]:
        yield prefix, self
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield from value.named_modules(f"{prefix}.{name}" if prefix else name)

    def _own_parameters(self):
        for name, value in vars(self).items():
            if isinstance(value, Parameter):
                yield name, value

    def named_parameters(self, prefix: str = "") -> Iterator[tuple[str, Parameter]]:
        """(name, Parameter) for every parameter, each shared parameter once (first name wins)."""
        seen = set()
        for name, param in self._all_named_parameters(prefix):
            if id(param) not in seen:
                seen.add(id(param))
                yield name, param

    def _all_named_parameters(self, prefix: str):
        for name, param in self._own_parameters():
            yield prefix + name, param
        for name, value in vars(self).items():
            if isinstance(value, Module):
                yield from value._all_named_parameters(f"{prefix}{name}.")

    def parameters(self) -> list[Parameter]:
        return [p for _, p in self.named_parameters()]

    def num_parameters(self) -> int:
        return int(sum(p.data.size for p in self.parameters()))

    # ----------------------------------------------------------------- modes
    def train(self, mode: bool = True) -> "Module":
        """Training mode: dropout is active."""
        for _, module in self.named_modules():
            module.training = mode
        return self

    def eval(self) -> "Module":
        """Evaluation mode: dropout is off, outputs are deterministic."""
        return self.train(False)

    def set_matmul_dtype(self, dtype) -> None:
        """Mixed precision: ``np.float16`` runs the matrix products of every layer that has a
        ``compute_dtype`` (the dense layers) in float16; the parameters stay float32 "master"
        weights, and outputs and gradients come back in float32. ``None`` goes back to full
        precision. Train with a loss scale (:class:`minibert.optim.DynamicLossScaler`,
        ``TrainingArguments(fp16=True)``), or small gradients underflow to zero in float16.
        """
        if dtype is not None:
            dtype = np.dtype(dtype)
            if dtype != np.float16:
                raise ValueError(f"the matmul dtype must be float16 or None, got {dtype}")
            if self.dtype != np.float32:
                raise ValueError(f"mixed precision needs float32 master weights; this model is {self.dtype}")
        for _, module in self.named_modules():
            if hasattr(module, "compute_dtype"):
                module.compute_dtype = dtype

    def zero_grad(self) -> None:
        """Set every parameter's gradient to zero (in place, no new memory)."""
        for p in self.parameters():
            p.grad[...] = 0

    # ----------------------------------------------------------------- devices
    @property
    def device(self) -> str:
        first = next(self.named_parameters(), None)          # the first parameter: no full walk
        return "cpu" if first is None else device_of(first[1].data)

    @property
    def dtype(self):
        first = next(self.named_parameters(), None)
        return np.dtype(np.float32) if first is None else first[1].data.dtype

    def to(self, device: str | None = None, dtype=None) -> "Module":
        """Move every parameter (and gradient) to ``device`` and/or cast it to ``dtype``, in place."""
        device = check_device(device) if device is not None else self.device
        dtype = check_dtype(dtype) if dtype is not None else None
        for p in self.parameters():      # shared parameters appear once, so ties survive
            data = to_device(p.data, device)
            p.data = data.astype(dtype, copy=False) if dtype is not None else data
            p.grad = get_array_module(p.data).zeros_like(p.data)
        return self

    # ----------------------------------------------------------------- state dicts
    def state_dict(self) -> dict:
        """{Hugging Face name: array} for every parameter (shared ones once), on the model's device."""
        return {name: p.data for name, p in self.named_parameters()}

    def load_state_dict(self, state: dict, strict: bool = True):
        """Copy arrays into the parameters by name; returns (missing_keys, unexpected_keys).

        Arrays are copied into the existing parameter arrays (keeping device, dtype and any
        tied parameter shared). A tensor of the wrong shape is always an error; with
        ``strict`` missing or unexpected keys are errors too. Nothing is copied unless the
        whole state dict passes these checks.
        """
        params = dict(self.named_parameters())
        aliases = self.state_dict_aliases()
        missing = [name for name in params if name not in state
                   and not any(alias in state for alias, target in aliases.items() if target == name)]
        unexpected, to_copy = [], []
        for key, value in state.items():             # check everything before changing anything
            name = key if key in params else aliases.get(key)
            if name is None or name not in params:
                unexpected.append(key)
                continue
            param = params[name]
            if tuple(value.shape) != tuple(param.data.shape):
                raise ValueError(
                    f"state dict entry {key!r} has shape {tuple(value.shape)}, "
                    f"but the model's parameter {name!r} has shape {tuple(param.data.shape)}"
                )
            to_copy.append((param, value))
        if strict and (missing or unexpected):
            raise KeyError(
                "state dict does not match the model: "
                f"missing keys {missing[:10]}{' ...' if len(missing) > 10 else ''}, "
                f"unexpected keys {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}"
            )
        for param, value in to_copy:
            xp = get_array_module(param.data)
            param.data[...] = xp.asarray(value, dtype=param.data.dtype)
        return missing, unexpected

    def state_dict_aliases(self) -> dict:
        """Other names a checkpoint may use for a parameter: {alias: name}.

        A parameter reachable under two names (the MLM decoder weight is the word-embedding
        matrix) is listed by its first name; the others are aliases. The old LayerNorm names
        ``gamma`` / ``beta`` are aliases of ``weight`` / ``bias``.
        """
        first = {}
        aliases = {}
        for name, param in self._all_named_parameters(""):
            if id(param) in first:
                aliases[name] = first[id(param)]
            else:
                first[id(param)] = name
        for name in list(first.values()):
            if name.endswith("LayerNorm.weight"):
                aliases[name[: -len("weight")] + "gamma"] = name
            elif name.endswith("LayerNorm.bias"):
                aliases[name[: -len("bias")] + "beta"] = name
        return aliases

    def __call__(self, *args, **kwargs):
        return self.forward(*args, **kwargs)


class ModuleList(Module):
    """A list of modules named 0, 1, 2, ... (``encoder.layer.0...``)."""

    def __init__(self, modules):
        for i, module in enumerate(modules):
            setattr(self, str(i), module)
        self._length = len(modules)

    def __len__(self):
        return self._length

    def __getitem__(self, i):
        if isinstance(i, slice):
            return [self[j] for j in range(*i.indices(len(self)))]
        if i < 0:
            i += len(self)
        return getattr(self, str(i))

    def __iter__(self):
        return (self[i] for i in range(len(self)))
