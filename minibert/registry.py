"""Which implementation of an op runs: the one place that chooses.

The layers, heads and optimizer call ops by name and never know which implementation ran::

    forward, backward = implementation("layer_norm", x)
    y, cache = forward(x, gamma, beta, eps)
    ...
    dx, dgamma, dbeta = backward(dy, cache)

The answer is the reference op of ``minibert/ops/`` (the definition, the code to read)
unless a speed-up of the speed wing, ``minibert/fast/``, declares that it applies to these
arrays: a CUDA kernel for CuPy arrays, or a CPU shortcut for float32 inference (a forward
pass that keeps no cache, under ``minibert.nn.no_grad``). Each speed-up is tested equal to
its reference (``tests/test_fast.py``, ``tests/test_kernels.py``).

``reference_only()`` turns every speed-up off for a block: the reference ops everywhere,
on the GPU too (for comparisons and tests).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass
from typing import Callable

import numpy as np

from . import fast, ops
from .backend import device_of

# name -> (forward, backward): the reference implementations, the ones the docs derive.
REFERENCE = {
    "linear": (ops.linear_forward, ops.linear_backward),
    "embedding": (ops.embedding_forward, ops.embedding_backward),
    "layer_norm": (ops.layer_norm_forward, ops.layer_norm_backward),
    **ops.ACTIVATIONS,                              # "gelu", "gelu_new", "gelu_pytorch_tanh"
    "tanh": (ops.tanh_forward, ops.tanh_backward),
    "relu": (ops.relu_forward, ops.relu_backward),
    "dropout": (ops.dropout_forward, ops.dropout_backward),
    "attention": (ops.attention_forward, ops.attention_backward),
    "flash_attention": (ops.flash_attention_forward, ops.flash_attention_backward),
    "cross_entropy": (ops.cross_entropy_forward, ops.cross_entropy_backward),
    "adamw_update": (ops.adamw_update, None),
}


@dataclass(frozen=True)
class SpeedUp:
    """An implementation of ``op`` that replaces the reference where it applies.

    device          "cpu" or "cuda": the device of the arrays it takes
    dtypes          the array dtypes it takes (by name)
    inference_only  True: only for forward passes that keep no cache (``backward`` is None)
    accepts         optional further condition on the first array (a head size, a size limit)
    """

    op: str
    forward: Callable
    backward: Callable | None
    device: str
    dtypes: tuple = ("float32",)
    inference_only: bool = False
    accepts: Callable | None = None

    def applies(self, x, inference: bool) -> bool:
        """True for arrays like ``x`` (already known to be on ``self.device``)."""
        return ((inference or not self.inference_only) and x.dtype.name in self.dtypes
                and (self.accepts is None or self.accepts(x)))


_speed_ups: dict[tuple, list[SpeedUp]] = {}       # (op, device) -> speed-ups, latest first
_enabled = True


def register(speed_up: SpeedUp) -> None:
    """Add a speed-up; the latest registered for an op and device is tried first."""
    if speed_up.op not in REFERENCE:
        raise ValueError(f"unknown op {speed_up.op!r}; expected one of {sorted(REFERENCE)}")
    _speed_ups.setdefault((speed_up.op, speed_up.device), []).insert(0, speed_up)


def implementation(op: str, x, inference: bool = False):
    """(forward, backward) to run ``op`` on arrays like ``x``.

    ``inference``: the caller keeps no cache (backward will not be called), so forward-only
    speed-ups may be used.
    """
    if _enabled:
        for speed_up in _speed_ups.get((op, array_device(x)), ()):
            if speed_up.applies(x, inference):
                return speed_up.forward, speed_up.backward
    return REFERENCE[op]


def array_device(x) -> str:
    """"cpu" for a NumPy array (the common case, answered here), else the backend's answer."""
    return "cpu" if type(x) is np.ndarray else device_of(x)


@contextlib.contextmanager
def reference_only():
    """Run every op's reference implementation inside the block (speed-ups off)."""
    global _enabled
    previous, _enabled = _enabled, False
    try:
        yield
    finally:
        _enabled = previous


for _entry in fast.SPEED_UPS:
    register(SpeedUp(**_entry))
