"""The speed wing: faster implementations of some ops. NOT the reference.

Nothing here is needed to understand BERT: the reference ops in ``minibert/ops/`` define
what every op computes, and the model runs them unless a speed-up below applies to its
arrays. The registry (``minibert/registry.py``) is the one place that chooses; each entry
says which op it replaces, on which device and dtypes, and whether only for inference (a
forward pass that keeps no cache). Every speed-up is tested against its reference:
``tests/test_fast.py`` (CPU) and ``tests/test_kernels.py`` (CUDA).

    cpu.py    the CPU: exact erf split over the cores; float32 inference shortcuts (GELU,
              LayerNorm, attention with its scores stored keys first)
    cuda.py   CUDA kernels (``kernels/*.cu``) for CuPy arrays: flash attention, LayerNorm,
              GELU, softmax cross-entropy, the AdamW update
"""

from . import cpu, cuda

# Each entry: the keyword arguments of a ``registry.SpeedUp``. Later entries are tried first.
SPEED_UPS = cpu.SPEED_UPS + cuda.SPEED_UPS
