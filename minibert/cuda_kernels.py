"""Fused CUDA kernels for CuPy arrays, with the NumPy/CuPy ops as reference and fallback.

Each kernel lives in its own source file in ``kernels/`` (installed as the package
``minibert.kernels``) and is compiled at first use with ``cupy.RawModule`` (NVRTC); CuPy
caches the binary on disk, this module keeps the loaded modules for the process.

Every function here has the signature of the op it replaces, so choosing the kernel is a
drop-in change made in one place:

==========================================  ==============================================
kernel (this module)                        reference (minibert.ops)
==========================================  ==============================================
flash_attention_forward / _backward         ops.flash_attention (same dropout hash)
layer_norm_forward / _backward              ops.layer_norm
bias_gelu_forward / _backward               ops.gelu applied to x + bias
cross_entropy_forward / _backward           ops.cross_entropy (forward and backward fused)
adamw_update                                optim.AdamW's update rule
==========================================  ==============================================

Before a launch the inputs are checked: arrays that are not CuPy arrays go to the
reference silently (that is the CPU path); CuPy arrays of a dtype or head size a kernel
does not handle go to the reference with a one-time warning; shapes that are simply
wrong raise ``ValueError``/``TypeError`` as the reference ops do. The kernels were written
without a GPU to run them on: tests/test_kernels.py holds the GPU tests that compare each
one with its reference (see docs/attention.md for their status).

The model chooses through :func:`pick` / :func:`use_kernel` (end of this file): kernels for
CuPy arrays, each only after a first-use check against its reference op.
"""

from __future__ import annotations

import math
import warnings
from pathlib import Path

import numpy as np

from .backend import get_array_module
from .ops import flash_attention as _flash
from .ops.activations import gelu_backward as _gelu_backward
from .ops.activations import gelu_forward as _gelu_forward
from .ops.cross_entropy import IGNORE_INDEX
from .ops.cross_entropy import cross_entropy_backward as _ce_backward
from .ops.cross_entropy import cross_entropy_forward as _ce_forward
from .ops.layer_norm import layer_norm_backward as _ln_backward
from .ops.layer_norm import layer_norm_forward as _ln_forward

KERNEL_FILES = ("flash_attention.cu", "layer_norm.cu", "bias_gelu.cu", "softmax_cross_entropy.cu", "adamw.cu")
COMPILE_OPTIONS = ("-std=c++17",)        # no fast-math: results must not depend on it
FLASH_HEAD_SIZES = (32, 64, 128)
FLASH_DTYPES = {"float32": "float", "float16": "minibert::half_t"}   # numpy name -> CUDA type
DEFAULT_SHARED_MEMORY = 48 * 1024        # above this a kernel must ask for more explicitly

_modules: dict = {}
_warned: set = set()


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
    path = Path(__file__).resolve().parent.parent / "kernels" / filename
    if not path.is_file():
        raise FileNotFoundError(f"kernel source {filename} not found (looked in minibert.kernels and {path.parent})")
    return path.read_text(encoding="utf-8")


def _cupy():
    import cupy

    return cupy


def _function(filename: str, name: str, name_expressions=()):
    """A compiled kernel: module compiled at first use (per file and set of templates), cached."""
    key = (filename, tuple(name_expressions))
    if key not in _modules:
        cp = _cupy()
        _modules[key] = cp.RawModule(code=kernel_source(filename), options=COMPILE_OPTIONS,
                                     name_expressions=tuple(name_expressions) or None)
    return _modules[key].get_function(name)


def _launch(kernel, grid, block, args, shared_mem=0):
    if shared_mem > DEFAULT_SHARED_MEMORY and kernel.max_dynamic_shared_size_bytes < shared_mem:
        kernel.max_dynamic_shared_size_bytes = shared_mem
    kernel(grid, block, args, shared_mem=shared_mem)


def _warn_once(key, message):
    if key not in _warned:
        _warned.add(key)
        warnings.warn(message, RuntimeWarning, stacklevel=3)


def _on_gpu(*arrays) -> bool:
    """True when every given array is a CuPy array (None entries are skipped)."""
    import numpy

    present = [a for a in arrays if a is not None]
    return bool(present) and all(get_array_module(a) is not numpy for a in present)


def _fits_kernel(op: str, arrays, dtypes=("float32",)):
    """None when the kernel can take these arrays; else why not (empty string: CPU arrays)."""
    if not _on_gpu(*arrays):
        return ""
    dtype = np.dtype(arrays[0].dtype)
    if dtype.name not in dtypes:
        return f"{op}: the CUDA kernel takes {', '.join(dtypes)}, got {dtype}; using the CuPy reference"
    return None


def _blocks_for(n, threads=256, per_sm=8):
    """A grid size for a grid-stride loop: enough blocks to fill the GPU, no more than needed."""
    cp = _cupy()
    sms = cp.cuda.Device().attributes["MultiProcessorCount"]
    return max(1, min(math.ceil(n / threads), sms * per_sm))


# ============================================================================ flash attention
FORWARD_ROWS = 64          # query rows per block (forward and dq kernels), see flash_attention.cu
TILE = 32                  # keys per streamed tile; keys per block of the dk/dv kernel
THREADS = 128


def _flash_names(dtype_name, head_size):
    t = FLASH_DTYPES[dtype_name]
    return {kind: f"minibert::flash_attention_{kind}_kernel<{t}, {head_size}>"
            for kind in ("forward", "backward_delta", "backward_dq", "backward_dkdv")}


def _flash_reason(q, k, v):
    reason = _fits_kernel("flash attention", (q, k, v), tuple(FLASH_DTYPES))
    if reason is None and q.shape[-1] not in FLASH_HEAD_SIZES:
        reason = (f"flash attention: the CUDA kernel takes head sizes {FLASH_HEAD_SIZES}, "
                  f"got {q.shape[-1]}; using the CuPy reference")
    if reason is None and v.shape[-1] != q.shape[-1]:
        reason = "flash attention: the CUDA kernel needs v's head size equal to q's; using the CuPy reference"
    if reason is None and q.shape[0] * q.shape[1] > 65535:
        reason = "flash attention: more than 65535 (batch x heads) for one launch; using the CuPy reference"
    return reason


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

    block_q and block_k only matter for the reference path (the kernel's tiles are fixed).
    """
    _flash._check_inputs(q, k, v, mask, dropout_p, block_q, block_k)
    reason = _flash_reason(q, k, v)
    if reason is not None:
        if reason:
            _warn_once(("flash", reason), reason)
        o, cache = _flash.flash_attention_forward(q, k, v, mask, dropout_p, rng, training,
                                                  block_q, block_k, dropout_seed)
        return o, ("reference", cache)

    cp = _cupy()
    batch, heads, n_queries, head_size = q.shape
    n_keys = k.shape[2]
    q, k, v = (cp.ascontiguousarray(x) for x in (q, k, v))
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
            (q, k, v, o, row_max, row_sum, *scalars), shared)
    return o, ("cuda", (q, k, v, o, row_max, row_sum, scalars))


def _flash_scalars(heads, n_queries, n_keys, head_size, mask_array, has_mask, mask_strides, dropout):
    seed, p = dropout if dropout is not None else (0, 0.0)
    return (np.int32(heads), np.int32(n_queries), np.int32(n_keys), np.float32(1.0 / math.sqrt(head_size)),
            mask_array, has_mask, *mask_strides,
            np.int32(dropout is not None), np.uint64(seed), _flash._dropout_threshold(p),
            np.float32(1.0 / (1.0 - p)))


def flash_attention_backward(do, cache):
    """dq, dk, dv of the fused attention (three kernels: delta, dq, dk/dv; no atomics)."""
    kind, inner = cache
    if kind == "reference":
        return _flash.flash_attention_backward(do, inner)
    cp = _cupy()
    q, k, v, o, row_max, row_sum, scalars = inner
    if do.shape != o.shape:
        raise ValueError(f"do must have the shape of the output {o.shape}, got {do.shape}")
    do = cp.ascontiguousarray(do, dtype=o.dtype)
    batch, heads, n_queries, head_size = q.shape
    n_keys = k.shape[2]
    names = _flash_names(q.dtype.name, head_size)
    every = tuple(names.values())

    delta = cp.empty((batch, heads, n_queries), dtype=cp.float32)     # rowsum(do * o)
    rows = batch * heads * n_queries
    _launch(_function("flash_attention.cu", names["backward_delta"], every),
            (math.ceil(rows / (THREADS // 32)),), (THREADS,), (o, do, delta, np.int64(rows)))

    dq, dk, dv = cp.empty_like(q), cp.empty_like(k), cp.empty_like(v)
    shared_dq = (2 * FORWARD_ROWS * head_size + 2 * TILE * (head_size + 1)) * 4
    _launch(_function("flash_attention.cu", names["backward_dq"], every),
            (math.ceil(n_queries / FORWARD_ROWS), batch * heads), (THREADS,),
            (q, k, v, do, row_max, row_sum, delta, dq, *scalars), shared_dq)
    shared_dkdv = (2 * TILE * head_size + 2 * TILE * (head_size + 1) + 3 * TILE) * 4
    _launch(_function("flash_attention.cu", names["backward_dkdv"], every),
            (math.ceil(n_keys / TILE), batch * heads), (THREADS,),
            (q, k, v, do, row_max, row_sum, delta, dk, dv, *scalars), shared_dkdv)
    return dq, dk, dv


# ============================================================================ LayerNorm
def _check_layer_norm(x, gamma, beta):
    hidden = x.shape[-1]
    if gamma.shape != (hidden,) or beta.shape != (hidden,):
        raise ValueError(f"gamma and beta must have shape ({hidden},) for x of shape {x.shape}, "
                         f"got {gamma.shape} and {beta.shape}")


def layer_norm_forward(x, gamma, beta, eps=1e-12):
    """LayerNorm over the last axis; the signature of ops.layer_norm_forward."""
    _check_layer_norm(x, gamma, beta)
    reason = _fits_kernel("layer_norm", (x, gamma, beta))
    if reason is not None or any(a.dtype != x.dtype for a in (gamma, beta)):
        if reason:
            _warn_once(("layer_norm", reason), reason)
        y, cache = _ln_forward(x, gamma, beta, eps)
        return y, ("reference", cache)
    cp = _cupy()
    hidden = x.shape[-1]
    x2 = cp.ascontiguousarray(x).reshape(-1, hidden)                  # (R, H)
    rows = x2.shape[0]
    y = cp.empty_like(x2)
    mean = cp.empty(rows, dtype=cp.float32)
    rstd = cp.empty(rows, dtype=cp.float32)
    gamma, beta = cp.ascontiguousarray(gamma), cp.ascontiguousarray(beta)
    _launch(_function("layer_norm.cu", "layer_norm_forward"), (math.ceil(rows / 8),), (256,),
            (x2, gamma, beta, y, mean, rstd, np.int32(rows), np.int32(hidden), np.float32(eps)))
    return y.reshape(x.shape), ("cuda", (x2, mean, rstd, gamma, x.shape))


def layer_norm_backward(dy, cache):
    """dx, dgamma, dbeta; the signature of ops.layer_norm_backward."""
    kind, inner = cache
    if kind == "reference":
        return _ln_backward(dy, inner)
    cp = _cupy()
    x2, mean, rstd, gamma, shape = inner
    if dy.shape != shape:
        raise ValueError(f"dy must have the shape of the output {shape}, got {dy.shape}")
    rows, hidden = x2.shape
    dy2 = cp.ascontiguousarray(dy, dtype=cp.float32).reshape(rows, hidden)
    dx = cp.empty_like(x2)
    dgamma = cp.zeros(hidden, dtype=cp.float32)
    dbeta = cp.zeros(hidden, dtype=cp.float32)
    _launch(_function("layer_norm.cu", "layer_norm_backward"), (_blocks_for(rows, threads=8, per_sm=4),), (256,),
            (dy2, x2, mean, rstd, gamma, dx, dgamma, dbeta, np.int32(rows), np.int32(hidden)),
            2 * hidden * 4)
    return dx.reshape(shape), dgamma, dbeta


# ============================================================================ bias + GELU
def bias_gelu_forward(x, bias):
    """y = gelu(x + bias), exact erf GELU; x (..., I), bias (I,). Returns y and the cache."""
    if bias.shape != (x.shape[-1],):
        raise ValueError(f"bias must have shape ({x.shape[-1]},) for x of shape {x.shape}, got {bias.shape}")
    reason = _fits_kernel("bias_gelu", (x, bias))
    if reason is not None or bias.dtype != x.dtype:
        if reason:
            _warn_once(("bias_gelu", reason), reason)
        y, cache = _gelu_forward(x + bias)
        return y, ("reference", cache)
    cp = _cupy()
    x = cp.ascontiguousarray(x)
    bias = cp.ascontiguousarray(bias)
    y = cp.empty_like(x)
    n, cols = x.size, x.shape[-1]
    _launch(_function("bias_gelu.cu", "bias_gelu_forward"), (_blocks_for(n),), (256,),
            (x, bias, y, np.int64(n), np.int32(cols)))
    return y, ("cuda", (x, bias))


def bias_gelu_backward(dy, cache):
    """dx and dbias of y = gelu(x + bias)."""
    kind, inner = cache
    if kind == "reference":
        dz = _gelu_backward(dy, inner)
        return dz, dz.reshape(-1, dz.shape[-1]).sum(axis=0)
    cp = _cupy()
    x, bias = inner
    if dy.shape != x.shape:
        raise ValueError(f"dy must have the shape of the output {x.shape}, got {dy.shape}")
    cols = x.shape[-1]
    rows = x.size // cols
    dy = cp.ascontiguousarray(dy, dtype=cp.float32)
    dx = cp.empty_like(x)
    dbias = cp.zeros(cols, dtype=cp.float32)
    grid = (math.ceil(cols / 32), max(1, min(math.ceil(rows / 8), 256)))
    _launch(_function("bias_gelu.cu", "bias_gelu_backward"), grid, (32, 8),
            (dy, x, bias, dx, dbias, np.int32(rows), np.int32(cols)))
    return dx, dbias


# ============================================================================ cross-entropy
def cross_entropy_forward(logits, labels, ignore_index=IGNORE_INDEX):
    """Mean softmax cross-entropy over counted rows; the signature of ops.cross_entropy_forward.

    The kernel computes the gradient (for dL = 1) in the same pass, so the cache holds it
    instead of the probabilities; the backward only scales it by dL.
    """
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise ValueError(f"logits must be (R, C) and labels (R,), got {logits.shape} and {labels.shape}")
    reason = _fits_kernel("cross_entropy", (logits, labels))
    if reason is not None:
        if reason:
            _warn_once(("cross_entropy", reason), reason)
        loss, cache = _ce_forward(logits, labels, ignore_index)
        return loss, ("reference", cache)
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
    return loss, ("cuda", dlogits)


def cross_entropy_backward(dloss, cache):
    """dL/dlogits; the signature of ops.cross_entropy_backward."""
    kind, inner = cache
    if kind == "reference":
        return _ce_backward(dloss, inner)
    return inner if dloss == 1.0 else inner * inner.dtype.type(dloss)


# ============================================================================ AdamW
def adamw_update(p, g, m, v, *, lr, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.0, step=1,
                 bias_correction=True):
    """One AdamW step in place on p, m, v (the update rule of minibert.optim.AdamW).

    step is the update number t, counted from 1.
    """
    for name, a in (("g", g), ("m", m), ("v", v)):
        if a.shape != p.shape:
            raise ValueError(f"{name} must have the shape of the parameter {p.shape}, got {a.shape}")
    beta1, beta2 = betas
    if bias_correction:
        step_size, inv_sqrt_c2 = lr / (1.0 - beta1 ** step), 1.0 / math.sqrt(1.0 - beta2 ** step)
    else:
        step_size, inv_sqrt_c2 = lr, 1.0
    decay = 1.0 - lr * weight_decay
    reason = _fits_kernel("adamw", (p, g, m, v))
    contiguous = all(getattr(a, "flags", None) is not None and a.flags.c_contiguous for a in (p, g, m, v))
    if reason is not None or not contiguous or any(a.dtype != p.dtype for a in (g, m, v)):
        if reason:
            _warn_once(("adamw", reason), reason)
        _adamw_reference(p, g, m, v, beta1, beta2, eps, decay, step_size, inv_sqrt_c2)
        return
    _launch(_function("adamw.cu", "adamw_update"), (_blocks_for(p.size),), (256,),
            (p, g, m, v, np.int64(p.size), np.float32(beta1), np.float32(beta2), np.float32(eps),
             np.float32(decay), np.float32(step_size), np.float32(inv_sqrt_c2)))


def _adamw_reference(p, g, m, v, beta1, beta2, eps, decay, step_size, inv_sqrt_c2):
    """The same update with array operations (any array module, any float dtype)."""
    p *= decay
    m *= beta1
    m += (1.0 - beta1) * g
    v *= beta2
    v += (1.0 - beta2) * g * g
    p -= step_size * m / (get_array_module(v).sqrt(v) * inv_sqrt_c2 + eps)


# ============================================================================ choosing kernels for the model
# The model's modules ask ``pick(op, x)`` for the (forward, backward) pair to call: the NumPy/CuPy
# reference ops for NumPy arrays, this module's kernels for CuPy arrays. A kernel is first run
# once per process (and dtype, and head size) on small random inputs of awkward sizes and
# compared with its reference; a kernel that fails to compile, raises or disagrees is not used
# again, with a one-time warning that names it. A faulty kernel costs speed, never wrong numbers.

USE_KERNELS = True        # False: the reference ops everywhere, also on the GPU (for comparisons)

REFERENCE_OPS = {
    "flash_attention": (_flash.flash_attention_forward, _flash.flash_attention_backward),
    "layer_norm": (_ln_forward, _ln_backward),
    "cross_entropy": (_ce_forward, _ce_backward),
}
KERNEL_OPS = {
    "flash_attention": (flash_attention_forward, flash_attention_backward),
    "layer_norm": (layer_norm_forward, layer_norm_backward),
    "cross_entropy": (cross_entropy_forward, cross_entropy_backward),
    "bias_gelu": (bias_gelu_forward, bias_gelu_backward),
    "adamw": (adamw_update, None),
}
_checked: dict = {}        # (op, dtype name, variant) -> passed its first-use check


def use_kernel(op: str, x, variant=()) -> bool:
    """True when the model should run ``op``'s kernel on ``x``: a CuPy array, kernels on
    (``USE_KERNELS``), and the kernel passed its first-use check for x's dtype and ``variant``
    (flash attention: the head size)."""
    if op not in KERNEL_OPS:
        raise ValueError(f"unknown kernel op {op!r}; expected one of {sorted(KERNEL_OPS)}")
    if not (USE_KERNELS and _is_gpu_array(x)):
        return False
    key = (op, np.dtype(x.dtype).name, tuple(variant))
    if key not in _checked:
        _checked[key] = _first_use_check(op, get_array_module(x), key[1], key[2])
    return _checked[key]


def _is_gpu_array(x) -> bool:
    return _on_gpu(x)


def pick(op: str, x, variant=()):
    """The (forward, backward) pair the model calls for ``op`` on ``x`` (see :func:`use_kernel`)."""
    return KERNEL_OPS[op] if use_kernel(op, x, variant) else REFERENCE_OPS[op]


def _first_use_check(op, xp, dtype_name, variant) -> bool:
    try:
        problem = SELF_CHECKS[op](xp, np.dtype(dtype_name), *variant)
    except Exception as error:                       # compilation or launch failure
        problem = f"{type(error).__name__}: {error}"
    if problem:
        label = f"{op} ({dtype_name}{', ' + ', '.join(map(str, variant)) if variant else ''})"
        _warn_once(("check", op, dtype_name, variant),
                   f"the CUDA kernel for {label} failed its first-use check against the reference op "
                   f"({problem}); using the reference op instead")
    return not problem


def _difference(name, got, expected, dtype) -> str:
    """'' when got matches expected within the tolerance of dtype, else what differs."""
    xp = get_array_module(expected)
    got = xp.asarray(got, dtype=xp.float64)
    expected = xp.asarray(expected, dtype=xp.float64)
    if got.shape != expected.shape:
        return f"{name}: shape {got.shape} instead of {expected.shape}"
    relative = 2e-2 if dtype == np.float16 else 1e-4       # of the largest expected magnitude
    scale = float(xp.abs(expected).max()) if expected.size else 0.0
    error = float(xp.abs(got - expected).max()) if expected.size else 0.0
    if not error <= relative * max(scale, 1e-6):           # also catches NaN
        return f"{name}: max difference {error:.3g} for values up to {scale:.3g}"
    return ""


def _first_problem(pairs, dtype) -> str:
    return next((p for p in (_difference(n, g, e, dtype) for n, g, e in pairs) if p), "")


def _selfcheck_inputs(xp, dtype, *shapes):
    rng = np.random.default_rng(1234)
    return [xp.asarray(rng.standard_normal(shape).astype(dtype)) for shape in shapes]


def _selfcheck_flash_attention(xp, dtype, head_size):
    q, k, v, do = _selfcheck_inputs(xp, dtype, *[(2, 3, 77, head_size)] * 4)   # 77: not a tile multiple
    keep = np.ones((2, 1, 1, 77), dtype=np.float32)
    keep[1, ..., 60:] = 0.0                                                        # a padded sequence
    mask = xp.asarray((1.0 - keep) * np.finfo(np.float32).min)
    forward, backward = KERNEL_OPS["flash_attention"]
    o, cache = forward(q, k, v, mask, 0.1, None, True, dropout_seed=99)
    grads = backward(do, cache)
    wide = [a.astype(xp.float32) for a in (q, k, v, do)]                          # reference in float32
    o_ref, cache_ref = _flash.flash_attention_forward(*wide[:3], mask, 0.1, None, True, dropout_seed=99)
    grads_ref = _flash.flash_attention_backward(wide[3], cache_ref)
    return _first_problem([("output", o, o_ref)] + list(zip(("dq", "dk", "dv"), grads, grads_ref)), dtype)


def _selfcheck_layer_norm(xp, dtype):
    x, dy = _selfcheck_inputs(xp, dtype, (2, 37, 96), (2, 37, 96))
    gamma, beta = _selfcheck_inputs(xp, dtype, (96,), (96,))
    forward, backward = KERNEL_OPS["layer_norm"]
    y, cache = forward(x, gamma, beta, 1e-12)
    y_ref, cache_ref = _ln_forward(x, gamma, beta, 1e-12)
    names = ("output", "dx", "dgamma", "dbeta")
    return _first_problem(zip(names, (y, *backward(dy, cache)), (y_ref, *_ln_backward(dy, cache_ref))), dtype)


def _selfcheck_bias_gelu(xp, dtype):
    x, dy = _selfcheck_inputs(xp, dtype, (5, 7, 200), (5, 7, 200))
    (bias,) = _selfcheck_inputs(xp, dtype, (200,))
    forward, backward = KERNEL_OPS["bias_gelu"]
    y, cache = forward(x, bias)
    y_ref, cache_ref = _gelu_forward(x + bias)
    dz = _gelu_backward(dy, cache_ref)
    return _first_problem(zip(("output", "dx", "dbias"), (y, *backward(dy, cache)), (y_ref, dz, dz.sum(axis=(0, 1)))),
                          dtype)


def _selfcheck_cross_entropy(xp, dtype):
    (logits,) = _selfcheck_inputs(xp, dtype, (37, 1003))
    labels = np.random.default_rng(5).integers(0, 1003, 37)
    labels[::4] = IGNORE_INDEX
    labels = xp.asarray(labels)
    forward, backward = KERNEL_OPS["cross_entropy"]
    loss, cache = forward(logits, labels)
    loss_ref, cache_ref = _ce_forward(logits, labels)
    return _first_problem([("loss", xp.asarray(loss), xp.asarray(loss_ref)),
                           ("dlogits", backward(0.5, cache), _ce_backward(0.5, cache_ref))], dtype)


def _selfcheck_adamw(xp, dtype):
    p, g, m, v = _selfcheck_inputs(xp, dtype, *[(1031,)] * 4)
    v = v * v                                                   # a second moment is not negative
    expected = [a.copy() for a in (p, g, m, v)]
    for step in (1, 2, 3):
        KERNEL_OPS["adamw"][0](p, g, m, v, lr=1e-2, weight_decay=0.1, step=step)
        c1, c2 = 1.0 - 0.9 ** step, 1.0 - 0.999 ** step
        _adamw_reference(*expected, 0.9, 0.999, 1e-6, 1.0 - 1e-2 * 0.1, 1e-2 / c1, 1.0 / math.sqrt(c2))
    return _first_problem(zip(("parameter", "m", "v"), (p, m, v), (expected[0], expected[2], expected[3])), dtype)


SELF_CHECKS = {"flash_attention": _selfcheck_flash_attention, "layer_norm": _selfcheck_layer_norm,
               "bias_gelu": _selfcheck_bias_gelu, "cross_entropy": _selfcheck_cross_entropy, "adamw": _selfcheck_adamw}


def compile_all():
    """Compile every kernel variant now (a warm-up; also a check that NVRTC accepts them all)."""
    for dtype_name in FLASH_DTYPES:
        for head_size in FLASH_HEAD_SIZES:
            names = _flash_names(dtype_name, head_size)
            for name in names.values():
                _function("flash_attention.cu", name, tuple(names.values()))
    for filename, name in (("layer_norm.cu", "layer_norm_forward"), ("layer_norm.cu", "layer_norm_backward"),
                           ("bias_gelu.cu", "bias_gelu_forward"), ("bias_gelu.cu", "bias_gelu_backward"),
                           ("softmax_cross_entropy.cu", "softmax_cross_entropy_forward_backward"),
                           ("adamw.cu", "adamw_update")):
        _function(filename, name)
