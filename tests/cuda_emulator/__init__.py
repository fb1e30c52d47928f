"""A CUDA emulator for the tests: the kernels in ``kernels/`` run on the CPU, unchanged.

* ``cuda_emulator.h`` supplies the CUDA built-ins (thread and block indices, ``__shared__``,
  ``__syncthreads``, warp shuffles and votes, atomics, ``__half``, math intrinsics) so that
  a ``.cu`` file compiles with g++ as C++20; ``cuda_emulator_runtime.h`` runs a launch: one
  OS thread per CUDA thread, one block at a time, one thread running at a time, with the
  checks listed at the top of ``cuda_emulator.h``; ``include/`` holds the CUDA headers a
  kernel may include (``mma.h``: the warp matrix multiply-accumulate API, ``cuda_fp16.h``,
  ``cuda_bf16.h``);
* ``build.py`` compiles a source into a shared library, cached by a hash of its inputs;
* ``cupy_standin.py`` is a small stand-in for CuPy (arrays on the host, ``RawModule``,
  kernel launches checked against each kernel's signature), so that the real launchers in
  ``minibert/fast/cuda.py`` and the real kernel tests run against it unchanged.

``use_emulator(monkeypatch)`` swaps the stand-in in for CuPy for one test. It proves the
kernels' logic, not their speed: see the README section "CUDA kernels without a GPU".
"""

from __future__ import annotations

import functools
import sys

from . import build, cupy_standin

compiler = build.compiler
MISSING_TOOLCHAIN = "no C++ toolchain for the CUDA emulator (g++ and binutils on Linux): kernels not emulated"


def use_emulator(monkeypatch):
    """Make ``import cupy`` give the stand-in for the rest of the test; return it."""
    from minibert import backend
    from minibert.fast import cuda

    standin = cupy_standin.module()
    monkeypatch.setitem(sys.modules, "cupy", standin)
    monkeypatch.setattr(backend, "_cupy", standin)
    # the launchers keep compiled kernels and per-device values for the process: start afresh
    # (and leave the real GPU's untouched)
    monkeypatch.setattr(cuda, "_modules", {})
    monkeypatch.setattr(cuda, "_kernels", {})
    monkeypatch.setattr(cuda, "_zero_biases", {})
    monkeypatch.setattr(cuda, "_multiprocessors", functools.lru_cache(maxsize=None)(cuda._multiprocessors.__wrapped__))
    return standin
