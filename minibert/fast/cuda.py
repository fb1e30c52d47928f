"""CUDA kernels for CuPy arrays. Not the reference: ``minibert/ops/`` defines what each op computes.

Each kernel lives in its own source file in ``kernels/`` (installed as the package
``minibert.kernels``) and is compiled at first use with ``cupy.RawModule`` (NVRTC); CuPy
caches the binary on disk, this module keeps the loaded modules for the process. Each
wrapper has the signature of the reference op it replaces, and its backward takes the cache
of its own forward (the caches differ from the references'):

================  =========================  ======================================  ===========================
registry op       kernel file (kernels/)     wrappers (here)                         reference (minibert.ops)
================  =========================  ======================================  ===========================
flash_attention   flash_attention.cu         flash_attention_forward / _backward     flash_attention.py (the
                                                                                     same dropout hash)
flash_attention   flash_attention_tc.cu      flash_attention_tc_forward / _backward  the same (version 2:
                                                                                     tensor cores)
layer_norm        layer_norm.cu              layer_norm_forward / _backward          layer_norm.py
gelu              bias_gelu.cu (zero bias)   gelu_forward / gelu_backward            activations.py, exact erf
(none)            bias_gelu.cu               bias_gelu_forward / _backward           gelu of x + bias
cross_entropy     softmax_cross_entropy.cu   cross_entropy_forward / _backward       cross_entropy.py
adamw_update      adamw.cu                   adamw_update                            adamw.py
================  =========================  ======================================  ===========================

Where each applies is declared in ``SPEED_UPS`` (end of this file) and decided by the
registry (``minibert/registry.py``): CuPy arrays of the listed dtypes, and for flash
attention head sizes 32, 64 or 128 with at most 65535 (batch x heads): version 2 for float16
and bfloat16 at head sizes 64 and 128, version 1 for float32 and the other float16 head
sizes. Everything else runs the reference op. A wrapper called with arrays it cannot take (a
NumPy array, a second array of another dtype, a wrong shape) raises ``TypeError`` or
``ValueError``; it never falls back.

A launch costs no driver query after a kernel's first: its function and the dynamic shared
memory it has been allowed are kept in ``_kernels``. Flash attention reads q, k, v and do
through their strides (no contiguous copies of the model's transposed views). Column sums
(dgamma, dbeta, the bias gradient) are added in a fixed order, so gradients are the same bits
on every run.

``tests/test_kernels.py`` compares each kernel with its reference op, on a GPU and on the CPU
under the CUDA emulator of ``tests/cuda_emulator/``.
"""

from __future__ import annotations

import functools
import math
from pathlib import Path

import numpy as np

from ..backend import device_of
from ..ops import flash_attention as _flash
from ..ops.cross_entropy import IGNORE_INDEX

KERNEL_FILES = ("flash_attention.cu", "flash_attention_tc.cu", "layer_norm.cu", "bias_gelu.cu",
                "softmax_cross_entropy.cu", "adamw.cu")
COMPILE_OPTIONS = ("-std=c++17",)        # no fast-math: results must not depend on it
FLASH_HEAD_SIZES = (32, 64, 128)
FLASH_DTYPES = {"float32": "float", "float16": "minibert::half_t"}   # numpy name -> CUDA type
MAX_GRID_Y = 65535                       # flash attention launches one grid row per (batch, head)
DEFAULT_SHARED_MEMORY = 48 * 1024        # above this a kernel must ask for more explicitly

_modules: dict = {}                      # (file, name expressions) -> RawModule
_kernels: dict = {}                      # ((file, name expressions), kernel name) -> _Kernel


# ============================================================================ loading
def kernel_source(filename: str) -> str:
    """The text of a kernel source file, from the installed package or the source tree."""
    if filename not in KERNEL_FILES:
        raise ValueError(f"unknown kernel file {filename!r}; expected one of {KERNEL_FILES}")
    try:
        from importlib.resources import files

        path = files("minibert.kernels") / filename
        if path.is_file():
            return path.read_text(encoding="utf-8")
    except ModuleNotFoundError:          # a source checkout that was not installed
        pass
    path = Path(__file__).resolve().parents[2] / "kernels" / filename
    if not path.is_file():
        raise FileNotFoundError(f"kernel source {filename} not found (looked in minibert.kernels and {path.parent})")
    return path.read_text(encoding="utf-8")


def _cupy():
    import cupy

    return cupy


class _Kernel:
    """A compiled kernel function and the dynamic shared memory it may use (raised on demand,
    remembered so that no launch queries the driver for it)."""

    __slots__ = ("function", "shared_limit")

    def __init__(self, function):
        self.function = function
        self.shared_limit = DEFAULT_SHARED_MEMORY


def _function(filename: str, name: str, name_expressions=()) -> _Kernel:
    """A compiled kernel: module compiled at first use (per file and set of templates), cached,
    and the function looked up once."""
    key = (filename, tuple(name_expressions))
    if (key, name) not in _kernels:
        if key not in _modules:
            cp = _cupy()
            _modules[key] = cp.RawModule(code=kernel_source(filename), options=COMPILE_OPTIONS,
                                         name_expressions=tuple(name_expressions) or None)
        _kernels[key, name] = _Kernel(_modules[key].get_function(name))
    return _kernels[key, name]


def _launch(kernel: _Kernel, grid, block, args, shared_mem=0):
    """Launch, unless the grid has no blocks (CuPy would raise a 0 to 1 and run one block)."""
    if 0 in grid:
        return
    if shared_mem > kernel.shared_limit:
        kernel.function.max_dynamic_shared_size_bytes = shared_mem
        kernel.shared_limit = shared_mem
    kernel.function(grid, block, args, shared_mem=shared_mem)


@functools.lru_cache(maxsize=None)
def _multiprocessors(device_id: int) -> int:
    return _cupy().cuda.Device(device_id).attributes["MultiProcessorCount"]


def _blocks_for(n, threads=256, per_sm=8):
    """A grid size for a grid-stride loop: enough blocks to fill the GPU, no more than needed."""
    sms = _multiprocessors(_cupy().cuda.Device().id)
    return max(1, min(math.ceil(n / threads), sms * per_sm))


def _check_arrays(op: str, dtypes, **arrays):
    """Raise unless every array is a CuPy array of one dtype, a dtype of ``dtypes``.

    The registry checks the first array of a call; this checks the others, for callers that
    reach a wrapper some other way too.
    """
    (first_name, first), *_ = arrays.items()
    for name, a in arrays.items():
        if device_of(a) != "cuda":
            raise TypeError(f"{op}: the CUDA kernel takes CuPy arrays, got {name} of type {type(a).__name__}")
        if a.dtype != first.dtype:
            raise TypeError(f"{op}: the CUDA kernel needs {', '.join(arrays)} of one dtype, "
                            f"got {first_name} {first.dtype} and {name} {a.dtype}")
    if first.dtype.name not in dtypes:
        raise TypeError(f"{op}: the CUDA kernel takes {', '.join(dtypes)}, got {first.dtype}")


def _non_empty(x) -> bool:
    return x.ndim >= 1 and x.size > 0


# ============================================================================ flash attention
FORWARD_ROWS = 64          # query rows per block (forward and dq kernels), see flash_attention.cu
TILE = 32                  # keys per streamed tile; keys per block of the dk/dv kernel
THREADS = 128


def flash_accepts(q) -> bool:
    """The shapes the flash attention kernel takes: (B, N, Tq, D) with D in FLASH_HEAD_SIZES and
    B * N within one launch's grid."""
    return (q.ndim == 4 and q.size > 0 and q.shape[-1] in FLASH_HEAD_SIZES
            and q.shape[0] * q.shape[1] <= MAX_GRID_Y)


def _flash_names(dtype_name, head_size):
    t = FLASH_DTYPES[dtype_name]
    return {kind: f"minibert::flash_attention_{kind}_kernel<{t}, {head_size}>"
            for kind in ("forward", "backward_delta", "backward_dq", "backward_dkdv")}


def _readable(x):
    """x itself when the kernels can read it in place (the last axis contiguous, as in the
    transposed (B, T, N, D) -> (B, N, T, D) views the model passes), else a contiguous copy."""
    item = x.dtype.itemsize
    if (x.shape[-1] == 1 or x.strides[-1] == item) and all(st % item == 0 for st in x.strides):
        return x
    return _cupy().ascontiguousarray(x)


def _layout(x):
    """The element strides (batch, head, row) of a (B, N, T, D) input, as the kernels take them."""
    return tuple(np.int64(st // x.dtype.itemsize) for st in x.strides[:3])


_NO_LAYOUT = (np.int64(0),) * 3          # the forward reads no do


def _mask_arguments(mask, dummy):
    """(pointer array, has_mask, strides in elements with 0 on broadcast axes) for the kernels."""
    if mask is None:
        return dummy, np.int32(0), (np.int64(0),) * 4
    cp = _cupy()
    mask = cp.asarray(mask, dtype=cp.float32)
    mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)
    strides = tuple(np.int64(s // 4 if n > 1 else 0) for s, n in zip(mask.strides, mask.shape))
    return mask, np.int32(1), strides


def flash_attention_forward(q, k, v, mask=None, dropout_p=0.0, rng=None, training=True,
                            block_q=_flash.DEFAULT_BLOCK_Q, block_k=_flash.DEFAULT_BLOCK_K, dropout_seed=None):
    """Fused attention on the GPU; the signature (and the dropout masks) of ops.flash_attention.

    block_q and block_k are checked as the reference does but not used (the kernel's tiles
    are fixed).
    """
    _flash._check_inputs(q, k, v, mask, dropout_p, block_q, block_k)
    if not flash_accepts(q):
        raise ValueError(f"flash attention: the CUDA kernel takes (B, N, Tq, D) with D in {FLASH_HEAD_SIZES} "
                         f"and B * N <= {MAX_GRID_Y}, got q of shape {q.shape}")
    if v.shape[-1] != q.shape[-1] or k.shape[2] == 0:
        raise ValueError(f"flash attention: the CUDA kernel needs v's head size equal to q's and at least "
                         f"one key, got q {q.shape}, k {k.shape}, v {v.shape}")
    _check_arrays("flash attention", tuple(FLASH_DTYPES), q=q, k=k, v=v)

    cp = _cupy()
    batch, heads, n_queries, head_size = q.shape
    n_keys = k.shape[2]
    q, k, v = (_readable(x) for x in (q, k, v))                       # no copies of strided views
    layouts = tuple(_layout(x) for x in (q, k, v))
    dropout = _flash.dropout_setting(dropout_p, rng, training, dropout_seed)   # (seed, p) or None

    o = cp.empty(q.shape, dtype=q.dtype)                               # (B, N, Tq, D)
    row_max = cp.empty((batch, heads, n_queries), dtype=cp.float32)    # m
    row_sum = cp.empty((batch, heads, n_queries), dtype=cp.float32)    # l
    mask_array, has_mask, mask_strides = _mask_arguments(mask, row_max)
    scalars = _flash_scalars(heads, n_queries, n_keys, head_size, mask_array, has_mask, mask_strides, dropout)
    names = _flash_names(q.dtype.name, head_size)
    kernel = _function("flash_attention.cu", names["forward"], tuple(names.values()))
    shared = (FORWARD_ROWS * head_size + TILE * (head_size + 1) + TILE * head_size) * 4
    _launch(kernel, (math.ceil(n_queries / FORWARD_ROWS), batch * heads), (THREADS,),
            (q, k, v, o, row_max, row_sum, *layouts[0], *layouts[1], *layouts[2], *_NO_LAYOUT, *scalars), shared)
    return o, (q, k, v, o, row_max, row_sum, layouts, scalars)


def _flash_scalars(heads, n_queries, n_keys, head_size, mask_array, has_mask, mask_strides, dropout):
    seed, p = dropout if dropout is not None else (0, 0.0)
    return (np.int32(heads), np.int32(n_queries), np.int32(n_keys), np.float32(1.0 / math.sqrt(head_size)),
            mask_array, has_mask, *mask_strides,
            np.int32(dropout is not None), np.uint64(seed), _flash._dropout_threshold(p),
            np.float32(1.0 / (1.0 - p)))


def flash_attention_backward(do, cache):
    """dq, dk, dv of the fused attention (three kernels: delta, dq, dk/dv; no atomics)."""
    cp = _cupy()
    q, k, v, o, row_max, row_sum, layouts, scalars = cache
    if do.shape != o.shape:
        raise ValueError(f"do must have the shape of the output {o.shape}, got {do.shape}")
    do = _readable(do if do.dtype == o.dtype else do.astype(o.dtype))
    strides = (*layouts[0], *layouts[1], *layouts[2], *_layout(do))
    batch, heads, n_queries, head_size = q.shape
    n_keys = k.shape[2]
    names = _flash_names(q.dtype.name, head_size)
    every = tuple(names.values())

    delta = cp.empty((batch, heads, n_queries), dtype=cp.float32)     # rowsum(do * o)
    rows = batch * heads * n_queries
    _launch(_function("flash_attention.cu", names["backward_delta"], every),
            (math.ceil(rows / (THREADS // 32)),), (THREADS,),
            (o, do, delta, np.int64(rows), np.int32(heads), np.int32(n_queries), *_layout(do)))

    dq, dk, dv = cp.empty_like(q), cp.empty_like(k), cp.empty_like(v)
    shared_dq = (2 * FORWARD_ROWS * head_size + 2 * TILE * (head_size + 1)) * 4
    _launch(_function("flash_attention.cu", names["backward_dq"], every),
            (math.ceil(n_queries / FORWARD_ROWS), batch * heads), (THREADS,),
            (q, k, v, do, row_max, row_sum, delta, dq, *strides, *scalars), shared_dq)
    shared_dkdv = (2 * TILE * head_size + 2 * TILE * (head_size + 1) + 3 * TILE) * 4
    _launch(_function("flash_attention.cu", names["backward_dkdv"], every),
            (math.ceil(n_keys / TILE), batch * heads), (THREADS,),
            (q, k, v, do, row_max, row_sum, delta, dk, dv, *strides, *scalars), shared_dkdv)
    return dq, dk, dv


# ============================================================================ flash attention, version 2
# kernels/flash_attention_tc.cu: the same algorithm with its matrix products on tensor cores
# (nvcuda::wmma) and FlashAttention-2's work partitioning, float16 or bfloat16 inputs, head
# sizes 64 and 128, float32 accumulation. The registry gives it float16 and bfloat16 arrays
# of those head sizes (version 1 keeps float32 and the other float16 head sizes). Its source
# includes the CUDA toolkit's mma.h.
FLASH_TC_HEAD_SIZES = (64, 128)
FLASH_TC_TYPES = {"float16": "__half", "bfloat16": "__nv_bfloat16"}   # input type -> CUDA type
# array dtype -> input type: CuPy has no bfloat16 dtype of its own, so bfloat16 values also
# come as uint16 arrays of their bits; a bfloat16 dtype (ml_dtypes) is read through such a view
FLASH_TC_DTYPES = {"float16": "float16", "bfloat16": "bfloat16", "uint16": "bfloat16"}
TC_ROWS = 64               # query rows (forward, dq) or keys (dk/dv) per block, and per streamed tile


def _flash_tc_names(type_name, head_size):
    t = FLASH_TC_TYPES[type_name]
    return {kind: f"minibert_tc::flash_attention_tc_{kind}_kernel<{t}, {head_size}>"
            for kind in ("forward", "delta", "dq", "dkdv")}


def _flash_tc_shared_bytes(kind, head_size):
    """The dynamic shared memory of a version-2 kernel (its Launch: comment in the source), 2-byte inputs."""
    t, warps = 2, THREADS // 32
    tile = TC_ROWS * (head_size + 8) * t                       # a (64, D) tile, rows padded to D + 8
    score_row, prob_row, out_row = (TC_ROWS + 4) * 4, (TC_ROWS + 8) * t, (head_size + 4) * 4
    if kind == "forward":
        return 2 * tile + warps * (16 * max(score_row, out_row) + 16 * prob_row)
    if kind == "dq":
        return 4 * tile + warps * (max(2 * 16 * score_row, 16 * out_row) + 16 * prob_row)
    return 4 * tile + 3 * TC_ROWS * 4 + warps * (max(2 * 16 * score_row, 2 * 16 * out_row) + 2 * 16 * prob_row)


def flash_tc_accepts(q) -> bool:
    """The shapes version 2 takes: (B, N, Tq, D) with D in FLASH_TC_HEAD_SIZES and B * N within
    one launch's grid (the registry has already checked the dtype)."""
    return (q.ndim == 4 and q.size > 0 and q.shape[-1] in FLASH_TC_HEAD_SIZES
            and q.shape[0] * q.shape[1] <= MAX_GRID_Y)


def _bits(x):
    """A 2-byte array as the kernel reads it: float16 itself, bfloat16 as a uint16 view of its bits."""
    return x.view(np.uint16) if x.dtype.name == "bfloat16" else x


def _check_tc_inputs(q, k, v, mask):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if device_of(x) != "cuda":
            raise TypeError(f"flash attention (tensor cores): the CUDA kernel takes CuPy arrays, got {name} of "
                            f"type {type(x).__name__}")
    if q.dtype.name not in FLASH_TC_DTYPES:
        raise TypeError(f"flash attention (tensor cores): q must be float16, bfloat16 or uint16 (bfloat16 bits), "
                        f"got {q.dtype}")
    if not q.dtype == k.dtype == v.dtype:
        raise TypeError(f"flash attention (tensor cores): q, k and v must have one dtype, got {q.dtype}, "
                        f"{k.dtype}, {v.dtype}")
    if (q.ndim != 4 or k.shape != v.shape or k.ndim != 4 or q.shape[:2] != k.shape[:2] or q.shape[3] != k.shape[3]
            or q.shape[3] not in FLASH_TC_HEAD_SIZES or k.shape[2] == 0 or q.shape[0] * q.shape[1] > MAX_GRID_Y):
        raise ValueError(f"flash attention (tensor cores): needs q (B, N, Tq, D) and k, v (B, N, Tk, D) with D in "
                         f"{FLASH_TC_HEAD_SIZES}, Tk >= 1 and B * N <= {MAX_GRID_Y}, got q {q.shape}, k {k.shape}, "
                         f"v {v.shape}")
    if mask is not None and (mask.ndim > 4 or mask.shape[-1] != k.shape[2]):
        raise ValueError(f"flash attention (tensor cores): the mask must broadcast to (B, N, Tq, {k.shape[2]}), "
                         f"got {mask.shape}")


def flash_attention_tc_forward(q, k, v, mask=None, dropout_p=0.0, rng=None, training=True,
                               block_q=_flash.DEFAULT_BLOCK_Q, block_k=_flash.DEFAULT_BLOCK_K, dropout_seed=None):
    """Version 2 of the fused attention, on tensor cores: o and the cache of its backward.

    q, k, v: (B, N, T, D) CuPy arrays with D 64 or 128, of float16, of bfloat16 or of uint16
    holding bfloat16 bits (CuPy has no bfloat16 dtype of its own); o has their dtype. mask
    and dropout as in flash_attention_forward (the same dropout masks). block_q and block_k
    are taken for the reference op's signature: the kernel's tiles are 64 x 64.
    """
    _check_tc_inputs(q, k, v, mask)
    cp = _cupy()
    batch, heads, n_queries, head_size = q.shape
    n_keys = k.shape[2]
    o = cp.empty(q.shape, dtype=q.dtype)                                   # (B, N, Tq, D)
    type_name = FLASH_TC_DTYPES[q.dtype.name]
    q, k, v = (_readable(_bits(x)) for x in (q, k, v))
    layouts = tuple(_layout(x) for x in (q, k, v))
    dropout = _flash.dropout_setting(dropout_p, rng, training, dropout_seed)
    row_max = cp.empty((batch, heads, n_queries), dtype=cp.float32)
    row_sum = cp.empty((batch, heads, n_queries), dtype=cp.float32)
    mask_array, has_mask, mask_strides = _mask_arguments(mask, row_max)
    scalars = _flash_scalars(heads, n_queries, n_keys, head_size, mask_array, has_mask, mask_strides, dropout)
    names = _flash_tc_names(type_name, head_size)
    kernel = _function("flash_attention_tc.cu", names["forward"], tuple(names.values()))
    _launch(kernel, (math.ceil(n_queries / TC_ROWS), batch * heads), (THREADS,),
            (q, k, v, _bits(o), row_max, row_sum, *layouts[0], *layouts[1], *layouts[2], *_NO_LAYOUT, *scalars),
            _flash_tc_shared_bytes("forward", head_size))
    return o, (q, k, v, o, row_max, row_sum, layouts, scalars, names)          # q, k, v as the kernel reads them


def flash_attention_tc_backward(do, cache):
    """dq, dk, dv of flash_attention_tc_forward (delta, dq and dk/dv kernels; no atomics)."""
    cp = _cupy()
    q, k, v, o, row_max, row_sum, layouts, scalars, names = cache
    if do.shape != o.shape or (do.dtype != o.dtype and o.dtype.name == "uint16"):
        raise ValueError(f"do must have the shape and dtype of the output {o.shape} {o.dtype}, "
                         f"got {do.shape} {do.dtype}")
    do = _readable(_bits(do if do.dtype == o.dtype else do.astype(o.dtype)))
    strides = (*layouts[0], *layouts[1], *layouts[2], *_layout(do))
    batch, heads, n_queries, head_size = q.shape
    n_keys = k.shape[2]
    every = tuple(names.values())
    delta = cp.empty((batch, heads, n_queries), dtype=cp.float32)
    rows = batch * heads * n_queries
    _launch(_function("flash_attention_tc.cu", names["delta"], every), (math.ceil(rows / (THREADS // 32)),),
            (THREADS,), (_bits(o), do, delta, np.int64(rows), np.int32(heads), np.int32(n_queries), *_layout(do)))
    dq, dk, dv = (cp.empty(x.shape, dtype=o.dtype) for x in (q, k, v))   # contiguous, the dtype of o
    _launch(_function("flash_attention_tc.cu", names["dq"], every), (math.ceil(n_queries / TC_ROWS), batch * heads),
            (THREADS,), (q, k, v, do, row_max, row_sum, delta, _bits(dq), *strides, *scalars),
            _flash_tc_shared_bytes("dq", head_size))
    _launch(_function("flash_attention_tc.cu", names["dkdv"], every), (math.ceil(n_keys / TC_ROWS), batch * heads),
            (THREADS,), (q, k, v, do, row_max, row_sum, delta, _bits(dk), _bits(dv), *strides, *scalars),
            _flash_tc_shared_bytes("dkdv", head_size))
    return dq, dk, dv


# ============================================================================ LayerNorm
def layer_norm_forward(x, gamma, beta, eps=1e-12):
    """LayerNorm over the last axis; the signature of ops.layer_norm_forward."""
    hidden = x.shape[-1] if x.ndim else None
    if gamma.shape != (hidden,) or beta.shape != (hidden,):
        raise ValueError(f"gamma and beta must have shape ({hidden},) for x of shape {x.shape}, "
                         f"got {gamma.shape} and {beta.shape}")
    _check_arrays("layer_norm", ("float32",), x=x, gamma=gamma, beta=beta)
    cp = _cupy()
    x2 = cp.ascontiguousarray(x).reshape(-1, hidden)                  # (R, H)
    rows = x2.shape[0]
    y = cp.empty_like(x2)
    mean = cp.empty(rows, dtype=cp.float32)
    rstd = cp.empty(rows, dtype=cp.float32)
    gamma, beta = cp.ascontiguousarray(gamma), cp.ascontiguousarray(beta)
    _launch(_function("layer_norm.cu", "layer_norm_forward"), (math.ceil(rows / 8),), (256,),
            (x2, gamma, beta, y, mean, rstd, np.int32(rows), np.int32(hidden), np.float32(eps)))
    return y.reshape(x.shape), (x2, mean, rstd, gamma, x.shape)


def layer_norm_backward(dy, cache):
    """dx, dgamma, dbeta; the signature of ops.layer_norm_backward.

    dgamma and dbeta are summed per block, then over blocks in a fixed order: the same bits
    on every run (no atomics).
    """
    cp = _cupy()
    x2, mean, rstd, gamma, shape = cache
    if dy.shape != shape:
        raise ValueError(f"dy must have the shape of the output {shape}, got {dy.shape}")
    rows, hidden = x2.shape
    dy2 = cp.ascontiguousarray(dy, dtype=cp.float32).reshape(rows, hidden)
    dx = cp.empty_like(x2)
    _launch(_function("layer_norm.cu", "layer_norm_backward_dx"), (math.ceil(rows / 8),), (256,),
            (dy2, x2, mean, rstd, gamma, dx, np.int32(rows), np.int32(hidden)))
    parts = _partial_sums_for(rows, math.ceil(hidden / 32))
    partial = cp.empty((parts, 2 * hidden), dtype=cp.float32)        # (K, 2H): dgamma | dbeta
    _launch(_function("layer_norm.cu", "layer_norm_backward_dgamma_dbeta"), (math.ceil(hidden / 32), parts),
            (32, 8), (dy2, x2, mean, rstd, partial, np.int32(rows), np.int32(hidden)))
    sums = cp.empty(2 * hidden, dtype=cp.float32)
    _launch(_function("layer_norm.cu", "layer_norm_sum_partials"), (math.ceil(2 * hidden / 256),), (256,),
            (partial, sums, np.int32(parts), np.int32(2 * hidden)))
    return dx.reshape(shape), sums[:hidden], sums[hidden:]


def _partial_sums_for(rows, column_blocks, rows_per_block=64):
    """How many partial sums per column a column reduction keeps (its grid's y): enough blocks
    to fill the GPU, at least ``rows_per_block`` rows each, at most 256."""
    sms = _multiprocessors(_cupy().cuda.Device().id)
    wanted = math.ceil(4 * sms / max(1, column_blocks))
    return max(1, min(math.ceil(rows / rows_per_block), wanted, 256))


# ============================================================================ GELU
# bias_gelu.cu computes gelu(x + bias) (its bias add serves a fused dense + GELU); the op is a
# plain GELU, so it gets a zero bias, one per width and GPU, kept for the process.
_zero_biases: dict = {}


def _zero_bias(cols: int):
    cp = _cupy()
    key = (cols, cp.cuda.Device().id)
    if key not in _zero_biases:
        _zero_biases[key] = cp.zeros(cols, dtype=cp.float32)
    return _zero_biases[key]


def bias_gelu_forward(x, bias):
    """y = gelu(x + bias) over the last axis (the fused dense + GELU). Cache: (x, bias)."""
    if x.ndim == 0 or bias.shape != (x.shape[-1],):
        raise ValueError(f"bias_gelu: x needs at least one axis and bias the shape of its last, got x {x.shape} "
                         f"and bias {bias.shape}")
    _check_arrays("bias_gelu", ("float32",), x=x, bias=bias)
    cp = _cupy()
    x, bias = cp.ascontiguousarray(x), cp.ascontiguousarray(bias)
    y = cp.empty_like(x)
    n, cols = x.size, x.shape[-1]
    _launch(_function("bias_gelu.cu", "bias_gelu_forward"), (_blocks_for(n),), (256,),
            (x, bias, y, np.int64(n), np.int32(cols)))
    return y, (x, bias)


def bias_gelu_backward(dy, cache, want_dbias=True):
    """(dx, dbias) of bias_gelu_forward; dbias summed in a fixed order (deterministic), or
    None when not wanted."""
    cp = _cupy()
    x, bias = cache
    if dy.shape != x.shape:
        raise ValueError(f"dy must have the shape of the output {x.shape}, got {dy.shape}")
    cols = x.shape[-1]
    rows = x.size // cols
    dy = cp.ascontiguousarray(dy, dtype=cp.float32)
    dx = cp.empty_like(x)
    parts = max(1, min(math.ceil(rows / 8), 256))
    partial = cp.empty((parts, cols), dtype=cp.float32)              # (K, I) per-block column sums
    _launch(_function("bias_gelu.cu", "bias_gelu_backward"), (math.ceil(cols / 32), parts), (32, 8),
            (dy, x, bias, dx, partial, np.int32(rows), np.int32(cols)))
    if not want_dbias:
        return dx, None
    dbias = cp.empty(cols, dtype=cp.float32)
    _launch(_function("bias_gelu.cu", "bias_gelu_sum_partials"), (math.ceil(cols / 256),), (256,),
            (partial, dbias, np.int32(parts), np.int32(cols)))
    return dx, dbias


def gelu_forward(x):
    """y = x * Phi(x), the exact erf GELU; the signature of ops.gelu_forward. Cache: x."""
    if x.ndim == 0:
        raise ValueError("gelu: the CUDA kernel needs an array of at least one axis, got a 0-d array")
    _check_arrays("gelu", ("float32",), x=x)
    y, (x, _) = bias_gelu_forward(x, _zero_bias(x.shape[-1]))
    return y, x


def gelu_backward(dy, cache):
    """dx = dy * (Phi(x) + x phi(x)); the signature of ops.gelu_backward (the kernel's column
    sums, a bias gradient, are not added up)."""
    x = cache
    dx, _ = bias_gelu_backward(dy, (x, _zero_bias(x.shape[-1])), want_dbias=False)
    return dx


# ============================================================================ cross-entropy
def cross_entropy_forward(logits, labels, ignore_index=IGNORE_INDEX):
    """Mean softmax cross-entropy over counted rows; the signature of ops.cross_entropy_forward.

    The kernel computes the gradient (for dL = 1) in the same pass, so the cache holds it
    instead of the probabilities; the backward only scales it by dL.
    """
    if logits.ndim != 2 or getattr(labels, "shape", None) != (logits.shape[0],):
        raise ValueError(f"logits must be (R, C) and labels (R,), got {logits.shape} and "
                         f"{getattr(labels, 'shape', type(labels).__name__)}")
    _check_arrays("cross_entropy", ("float32",), logits=logits)
    if device_of(labels) != "cuda":
        raise TypeError(f"cross_entropy: the CUDA kernel takes the labels as a CuPy array, got {type(labels).__name__}")
    cp = _cupy()
    rows, classes = logits.shape
    labels = cp.ascontiguousarray(labels, dtype=cp.int64)
    counted = labels != ignore_index
    # one small device-to-host copy: the number of counted rows and of out-of-range labels
    count, bad = (int(x) for x in cp.stack([counted.sum(), (counted & ((labels < 0) | (labels >= classes))).sum()]).get())
    if bad:
        raise ValueError(f"{bad} labels are outside [0, {classes}) and are not the ignore index {ignore_index}")
    logits = cp.ascontiguousarray(logits)
    dlogits = cp.empty_like(logits)
    row_loss = cp.empty(rows, dtype=cp.float32)
    _launch(_function("softmax_cross_entropy.cu", "softmax_cross_entropy_forward_backward"), (rows,), (256,),
            (logits, labels, row_loss, dlogits, np.int32(classes), np.int64(ignore_index),
             np.float32(1.0 / max(count, 1))))
    loss = float(row_loss.sum()) / max(count, 1)
    return loss, dlogits


def cross_entropy_backward(dloss, cache):
    """dL/dlogits; the signature of ops.cross_entropy_backward."""
    dlogits = cache
    return dlogits if dloss == 1.0 else dlogits * dlogits.dtype.type(dloss)


# ============================================================================ AdamW
def adamw_update(p, g, m, v, *, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, step=1,
                 bias_correction=True, scratch=None):
    """One AdamW step in place on p, m, v; the signature of ops.adamw_update.

    step is the update number t, counted from 1. The kernel needs no temporary, so
    ``scratch`` is accepted and not used.
    """
    for name, a in (("g", g), ("m", m), ("v", v)):
        if a.shape != p.shape:
            raise ValueError(f"{name} must have the shape of the parameter {p.shape}, got {a.shape}")
    _check_arrays("adamw_update", ("float32",), p=p, g=g, m=m, v=v)
    if not all(a.flags.c_contiguous for a in (p, g, m, v)):
        raise ValueError("adamw_update: the CUDA kernel needs C-contiguous p, g, m and v")
    beta1, beta2 = betas
    if bias_correction:
        step_size, inv_sqrt_c2 = lr / (1.0 - beta1 ** step), 1.0 / math.sqrt(1.0 - beta2 ** step)
    else:
        step_size, inv_sqrt_c2 = lr, 1.0
    decay = 1.0 - lr * weight_decay
    _launch(_function("adamw.cu", "adamw_update"), (_blocks_for(p.size),), (256,),
            (p, g, m, v, np.int64(p.size), np.float32(beta1), np.float32(beta2),
             np.float32(1.0 - beta1), np.float32(1.0 - beta2),           # in double precision, then rounded
             np.float32(eps), np.float32(decay), np.float32(step_size), np.float32(inv_sqrt_c2)))


# ============================================================================ warm-up
def compile_all():
    """Compile every kernel variant now (a warm-up; also a check that NVRTC accepts them all)."""
    for dtype_name in FLASH_DTYPES:
        for head_size in FLASH_HEAD_SIZES:
            names = _flash_names(dtype_name, head_size)
            for name in names.values():
                _function("flash_attention.cu", name, tuple(names.values()))
    for type_name in FLASH_TC_TYPES:
        for head_size in FLASH_TC_HEAD_SIZES:
            names = _flash_tc_names(type_name, head_size)
            for name in names.values():
                _function("flash_attention_tc.cu", name, tuple(names.values()))
    for filename, name in (("layer_norm.cu", "layer_norm_forward"), ("layer_norm.cu", "layer_norm_backward_dx"),
                           ("layer_norm.cu", "layer_norm_backward_dgamma_dbeta"),
                           ("layer_norm.cu", "layer_norm_sum_partials"),
                           ("bias_gelu.cu", "bias_gelu_forward"), ("bias_gelu.cu", "bias_gelu_backward"),
                           ("bias_gelu.cu", "bias_gelu_sum_partials"),
                           ("softmax_cross_entropy.cu", "softmax_cross_entropy_forward_backward"),
                           ("adamw.cu", "adamw_update")):
        _function(filename, name)


# ============================================================================ registry entries
# The keyword arguments of a registry.SpeedUp each; the registry checks device, dtype and
# ``accepts`` on the first array of a call.
SPEED_UPS = [
    dict(op="flash_attention", forward=flash_attention_forward, backward=flash_attention_backward,
         device="cuda", dtypes=tuple(FLASH_DTYPES), accepts=flash_accepts),
    # registered after version 1, so tried before it: float16 at head sizes 64 and 128 runs
    # version 2, float16 at head size 32 version 1, bfloat16 elsewhere the reference op
    dict(op="flash_attention", forward=flash_attention_tc_forward, backward=flash_attention_tc_backward,
         device="cuda", dtypes=("float16", "bfloat16"), accepts=flash_tc_accepts),
    dict(op="layer_norm", forward=layer_norm_forward, backward=layer_norm_backward,
         device="cuda", dtypes=("float32",), accepts=_non_empty),
    dict(op="gelu", forward=gelu_forward, backward=gelu_backward,
         device="cuda", dtypes=("float32",), accepts=_non_empty),
    dict(op="cross_entropy", forward=cross_entropy_forward, backward=cross_entropy_backward,
         device="cuda", dtypes=("float32",), accepts=lambda logits: logits.ndim == 2 and logits.size > 0),
    dict(op="adamw_update", forward=adamw_update, backward=None,
         device="cuda", dtypes=("float32",), accepts=lambda p: p.flags.c_contiguous),
]
