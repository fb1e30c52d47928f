"""The array backend: NumPy on the CPU, CuPy on the GPU, one code path for both.

Every op takes its array module from its inputs::

    xp = get_array_module(x)      # numpy or cupy
    y = xp.tanh(x)

so the same function runs on either device. Model code never asks "is this CuPy?";
the only places that know about devices are this file and the speed wing (``minibert/fast/``).
"""

from __future__ import annotations

import os
import sys

import numpy as np

_cupy = None          # the cupy module once imported successfully

DEVICES = ("cpu", "cuda")


def _import_cupy():
    """Import CuPy and check that a GPU is visible; raise a readable error otherwise."""
    global _cupy
    if _cupy is not None:
        return _cupy
    try:
        import cupy  # noqa: WPS433 (optional dependency)
    except ImportError as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            "device='cuda' needs CuPy, which is not installed. "
            "Install the GPU extra: pip install 'minibert[gpu]' (CuPy for CUDA 12), "
            "or use device='cpu'."
        ) from exc
    try:
        count = cupy.cuda.runtime.getDeviceCount()
    except Exception as exc:  # pragma: no cover - depends on the machine
        raise RuntimeError(
            f"device='cuda' was asked for, but CuPy cannot see a CUDA GPU ({exc}). "
            "Check the driver (nvidia-smi) or use device='cpu'."
        ) from exc
    if count == 0:  # pragma: no cover - depends on the machine
        raise RuntimeError("device='cuda' was asked for, but no CUDA GPU is visible; use device='cpu'.")
    _cupy = cupy
    return cupy


def cuda_available() -> bool:
    """True when CuPy imports and sees at least one GPU."""
    try:
        _import_cupy()
    except RuntimeError:
        return False
    return True


def check_device(device: str) -> str:
    """Normalise a device name ('cpu', 'cuda', 'cuda:0', 'gpu') and validate it."""
    if not isinstance(device, str):
        raise TypeError(f"device must be a string such as 'cpu' or 'cuda', got {type(device).__name__}")
    name = device.lower()
    if name in ("gpu",) or name.startswith("cuda"):
        return "cuda"
    if name == "cpu":
        return "cpu"
    raise ValueError(f"unknown device {device!r}: expected one of {DEVICES}")


def xp_for_device(device: str):
    """The array module (numpy or cupy) for a device name."""
    return _import_cupy() if check_device(device) == "cuda" else np


def get_array_module(*arrays):
    """numpy or cupy, whichever the given arrays live in (numpy when none is a CuPy array)."""
    cupy = _cupy or sys.modules.get("cupy")          # CuPy arrays exist only once CuPy is imported
    if cupy is not None:
        for a in arrays:
            if isinstance(a, cupy.ndarray):
                return cupy
    return np


def device_of(array) -> str:
    """'cuda' for a CuPy array, 'cpu' otherwise."""
    return "cuda" if get_array_module(array) is not np else "cpu"


def to_device(array, device: str):
    """Copy an array to a device (no copy when it is already there)."""
    xp = xp_for_device(device)
    if xp is np:
        return to_numpy(array)
    return xp.asarray(array)


def to_numpy(array) -> np.ndarray:
    """A NumPy array on the host, whatever the input (CuPy array, NumPy array, list, scalar)."""
    if _cupy is not None and isinstance(array, _cupy.ndarray):
        return _cupy.asnumpy(array)
    return np.asarray(array)


def available_cores() -> int:
    """CPU cores this process may run on (its affinity mask where the OS has one)."""
    cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return max(1, cores or 1)


def erf(x):
    """The error function, elementwise, on either device (scipy / cupyx.scipy)."""
    if get_array_module(x) is np:
        from scipy.special import erf as _erf
    else:  # pragma: no cover - GPU only
        from cupyx.scipy.special import erf as _erf
    return _erf(x)


def is_int_at_least(value, minimum: int) -> bool:
    """True for an integer (a Python or NumPy int, never a bool) of at least ``minimum``."""
    return isinstance(value, (int, np.integer)) and not isinstance(value, bool) and value >= minimum


def check_dtype(dtype):
    """float32 (default) or float64 (gradient checks); anything else is refused."""
    dtype = np.dtype(dtype)
    if dtype not in (np.dtype(np.float32), np.dtype(np.float64)):
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    return dtype


class RandomSource:
    """A seeded source of random numbers for dropout, one generator per array module.

    The model owns one and hands it to every dropout layer, so a seed reproduces every mask.
    ``get_state`` / ``set_state`` save and restore the NumPy generator (plain JSON-able data)
    so a resumed training run draws the same masks as an uninterrupted one.
    """

    def __init__(self, seed: int = 0):
        self.seed = int(seed)
        self._generators = {}

    def generator(self, xp):
        if xp not in self._generators:
            self._generators[xp] = xp.random.default_rng(self.seed)
        return self._generators[xp]

    def get_state(self) -> dict:
        return {"seed": self.seed, "numpy": self.generator(np).bit_generator.state}

    def set_state(self, state: dict) -> None:
        self.seed = int(state["seed"])
        self._generators = {}
        self.generator(np).bit_generator.state = state["numpy"]
