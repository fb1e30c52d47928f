"""CPU speed-ups. Not the reference: ``minibert/ops/`` defines what each op computes.

Shapes: B batch, N heads, T sequence (Tq queries, Tk keys), D head size, H hidden.

* ``gelu_exact_threaded``: the reference GELU with SciPy's exact erf split over the cores
  (NumPy runs a ufunc on one core but releases the GIL, so threads give a real speed-up);
  the same numbers as the reference, bit for bit, for training too.
* Float32 inference, forward only (no cache, so no backward):
  ``gelu_fast`` (erf from Abramowitz & Stegun 7.1.26, worked through cache-sized chunks:
  1.7e-7 max(1, |x|) from the exact GELU, 3.4e-7 at most), ``layer_norm_fast``
  (fewer full-size temporaries), and ``attention_keys_first`` (each sequence over its real
  keys only, the scores stored keys first so the softmax reduces along long rows).
* One batch on every core (float32 inference): ``linear_split``, ``layer_norm_split``,
  ``gelu_split`` and ``attention_split`` cut each op's rows into one block per core, every
  block on single-threaded BLAS. These are what the registry gives the model under
  ``no_grad``; the functions above are their per-block work.

All pool work goes through one thread pool, :func:`cpu_pool`, one thread per available core.

:func:`keep_freed_memory` sets glibc's allocator, once per process, to keep the memory of
freed arrays for the next step instead of returning it to the system and mapping it again.
"""

from __future__ import annotations

import ctypes
import math
import threading
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from .. import ops
from ..backend import available_cores

_cpu_pool = None
_cpu_pool_lock = threading.Lock()


def cpu_pool() -> ThreadPoolExecutor:
    """The one thread pool, one thread per available core, that splits elementwise CPU work.

    Made on first use. Its tasks must not wait on other tasks of the pool.
    """
    global _cpu_pool
    with _cpu_pool_lock:
        if _cpu_pool is None:
            _cpu_pool = ThreadPoolExecutor(available_cores(), thread_name_prefix="minibert-elementwise")
        return _cpu_pool


# ============================================================================ the allocator
GLIBC_M_TRIM_THRESHOLD, GLIBC_M_MMAP_THRESHOLD = -1, -3          # mallopt's parameter numbers
MMAP_THRESHOLD = 32 << 20            # glibc's largest: arrays up to 32 MiB come from the reusable heap
TRIM_THRESHOLD = 1 << 30             # free memory kept before the heap is trimmed back


def keep_freed_memory() -> bool:
    """Keep freed arrays' memory in the process for reuse (glibc's ``mallopt``); False elsewhere.

    By default glibc gives every block above a moving threshold its own fresh mapping and
    returns it to the system when freed, so a training step that makes and frees the same
    large temporaries each time pays a page fault per 4 kB touched, every step. Fixing both
    thresholds keeps those blocks in the heap and reuses them. Results do not change.
    """
    try:
        libc = ctypes.CDLL("libc.so.6")
        return bool(libc.mallopt(GLIBC_M_MMAP_THRESHOLD, MMAP_THRESHOLD)
                    and libc.mallopt(GLIBC_M_TRIM_THRESHOLD, TRIM_THRESHOLD))
    except (OSError, AttributeError):          # not glibc (macOS, Windows, musl)
        return False


# ============================================================================ exact GELU, threaded
PARALLEL_MIN_SIZE = 1 << 18           # smaller arrays: one call (thread hand-off costs more)


def parallel_unary(function, x):
    """``function(x)`` computed in blocks on all cores; identical to one call."""
    workers = available_cores()
    if workers == 1 or x.size < PARALLEL_MIN_SIZE or not x.flags.c_contiguous or _in_pool_worker():
        return function(x)
    flat_in = x.reshape(-1)
    out = np.empty_like(x)
    flat_out = out.reshape(-1)
    bounds = np.linspace(0, x.size, workers + 1).astype(int)
    blocks = [slice(a, b) for a, b in zip(bounds[:-1], bounds[1:])]
    list(cpu_pool().map(lambda s: function(flat_in[s], out=flat_out[s]), blocks))
    return out


def erf_threaded(x):
    from scipy.special import erf

    return parallel_unary(erf, x)


def gelu_exact_threaded(x):
    """ops.gelu_forward with its erf split over the cores: the same numbers and cache."""
    cdf = erf_threaded(x * ops.activations.SQRT_HALF)
    cdf += 1.0
    cdf *= 0.5
    return x * cdf, (x, cdf)


# ============================================================================ float32 inference
# erf(a) ~ 1 - (c1 t + c2 t^2 + c3 t^3 + c4 t^4 + c5 t^5) exp(-a^2),  t = 1 / (1 + p a),  a >= 0
# (Abramowitz & Stegun 7.1.26; absolute error below 1.5e-7 for every a).
_ERF_P = 0.3275911
_ERF_C = (0.254829592, -0.284496736, 1.421413741, -1.453152027, 1.061405429)
_HALF_C = tuple(0.5 * c for c in _ERF_C)
_SQRT_HALF = 1.0 / math.sqrt(2.0)
CHUNK = 1 << 16                       # elements per GELU chunk: temporaries stay in L2 cache


def _gelu_chunk(x, y, a, t, e):
    """y <- x * Phi(x) on the 1-D chunk x, the exact (erf) GELU to ~2e-7 max(1, |x|).

    With a = |x|:  x Phi(x) = 0.5 (x + |x| erf(a / sqrt 2)) = 0.5 (x + |x|) - 0.5 |x| q(t) exp(-x^2 / 2),
    where q(t) exp(-x^2 / 2) = 1 - erf(|x| / sqrt 2) comes straight from the A&S formula (no
    cancellation for negative x); the 0.5 is folded into q's coefficients. a, t, e are
    scratch buffers of x's size. About twenty light passes and one exp per element.
    """
    np.abs(x, out=a)                                   # a = |x|
    np.multiply(a, _ERF_P * _SQRT_HALF, out=t)
    t += 1.0
    np.reciprocal(t, out=t)                            # t = 1 / (1 + p |x| / sqrt 2)
    np.multiply(t, _HALF_C[4], out=e)                  # Horner: 0.5 q(t) = t (c1 + t (c2 + ...)) / 2
    for c in _HALF_C[3::-1]:
        e += c
        e *= t
    np.multiply(a, a, out=t)
    t *= -0.5
    np.exp(t, out=t)                                   # exp(-x^2 / 2)
    e *= t
    e *= a                                             # 0.5 |x| (1 - erf(|x| / sqrt 2))
    np.add(x, a, out=y)
    y *= 0.5                                           # 0.5 (x + |x|) = max(x, 0)
    y -= e


def gelu_fast(x, threaded: bool = False):
    """GELU for float32 inference: a new array, worked through cache-sized chunks (shared by
    the cores when ``threaded``, see :func:`gelu_split`). Returns (y, None): no cache.
    """
    flat_in = x.reshape(-1)
    y = np.empty(x.shape, dtype=x.dtype)
    flat = y.reshape(-1)
    local = threading.local()

    def work(start):
        if not hasattr(local, "buffers"):
            local.buffers = [np.empty(CHUNK, flat.dtype) for _ in range(3)]
        piece = flat_in[start:start + CHUNK]
        _gelu_chunk(piece, flat[start:start + CHUNK], *(b[:piece.size] for b in local.buffers))

    starts = range(0, flat.size, CHUNK)
    parts = min(len(starts), split_parts(flat.size, CHUNK + 1)) if threaded else 1
    if parts > 1:
        run_parts(lambda i: [work(start) for start in starts[i::parts]], parts)
    else:
        for start in starts:
            work(start)
    return y, None


_local = threading.local()          # .single: this thread keeps its work off the pool


def _in_pool_worker() -> bool:
    """True on a thread that may not use the pool (a pool thread, or a caller that runs
    several batches at once and keeps each on its own thread: see :func:`single_threaded`)."""
    return threading.current_thread().name.startswith("minibert-elementwise") or getattr(_local, "single", False)



class single_threaded:
    """Inside the block, this thread's elementwise work stays on this thread (no pool)."""

    def __enter__(self):
        self.previous = getattr(_local, "single", False)
        _local.single = True

    def __exit__(self, *exc):
        _local.single = self.previous


def layer_norm_fast(x, gamma, beta, eps=1e-12):
    """LayerNorm for float32 inference: one full-size temporary instead of three."""
    y = np.empty_like(x)
    _layer_norm_rows(x.reshape(-1, x.shape[-1]), gamma, beta, eps, y.reshape(-1, x.shape[-1]))
    return y, None


def _layer_norm_rows(x, gamma, beta, eps, out):
    """out <- LayerNorm of the rows of x (R, H)."""
    np.subtract(x, x.mean(axis=-1, keepdims=True), out=out)     # (R, H) centred
    var = np.einsum("ij,ij->i", out, out)              # (R,) sum of squares, no (R, H) temporary
    var *= 1.0 / out.shape[1]
    var += eps
    np.sqrt(var, out=var)
    np.reciprocal(var, out=var)
    out *= var[:, None]
    out *= gamma
    out += beta


def attention_keys_first(q, k, v, mask=None, dropout_p=0.0, rng=None, training=True):
    """ops.attention_forward for inference, each sequence attending over its real keys only.

    With a padding mask of shape (B, 1, 1, T) whose real tokens come first (what the
    tokenizer makes), sequences with the same number of real tokens are attended together
    over just those keys, with no mask: a long sequence no longer makes every other one in
    the batch attend over its padding. Other masks: every key, as the reference. With
    dropout active it runs the reference.
    """
    if training and dropout_p > 0.0:
        o, _ = ops.attention_forward(q, k, v, mask, dropout_p, rng, training)
        return o, None
    lengths = padding_lengths(mask, k.shape[2])                        # (B,) or None
    if lengths is None or lengths.min() == k.shape[2] or lengths.min() == 0:
        return _attend_keys_first(q, k, v, mask), None
    n_queries = q.shape[2]
    o = np.empty(q.shape[:3] + v.shape[3:], dtype=q.dtype)             # (B, N, Tq, D)
    order = np.argsort(-lengths, kind="stable")
    for group in np.split(order, np.flatnonzero(np.diff(lengths[order])) + 1):
        n = int(lengths[group[0]])                                     # real keys of these sequences
        if group[-1] - group[0] == group.size - 1:                     # neighbours (sorted batches): views
            group = slice(group[0], group[-1] + 1)
        k_g, v_g = k[group, :, :n], v[group, :, :n]                    # (b, N, n, D)
        # Queries at padded positions that are all zero (BertModel's packed rows) score 0
        # against every key: they attend evenly, and their output is the mean of the values.
        zero = n < n_queries and not q[group, :, n:].any()
        queries = n if zero else n_queries
        o[group, :, :queries] = _attend_keys_first(q[group, :, :queries], k_g, v_g, None)
        if zero:
            o[group, :, n:] = v_g.mean(axis=2, keepdims=True)           # (b, N, 1, D) broadcast
    return o, None


def padding_lengths(mask, n_keys):
    """The real keys of each sequence when ``mask`` (B, 1, 1, Tk) hides only trailing
    padding (0, then the large negative value); None for any other mask."""
    if mask is None or mask.ndim != 4 or mask.shape[1:3] != (1, 1):
        return None
    real = mask[:, 0, 0, :] == 0                                       # (B, Tk)
    lengths = real.sum(axis=1)                                         # (B,)
    if not (real == (np.arange(n_keys) < lengths[:, None])).all():
        return None
    return lengths


def _attend_keys_first(q, k, v, mask):
    """softmax(q k^T / sqrt(D) + mask) v with the scores stored keys first.

    The scores are laid out (Tk, B, N, Tq), so the softmax over the keys reduces along the
    first axis: whole-array passes over rows of B*N*Tq numbers, where the (B, N, Tq, Tk)
    layout reduces ~20 numbers at a time for short sentences. Both matrix products read
    and write that layout through strides.
    """
    batch, heads, n_queries, head_size = q.shape
    n_keys = k.shape[2]
    q_t = q.swapaxes(-1, -2) * (1.0 / math.sqrt(head_size))            # (B, N, D, Tq)
    scores = np.empty((n_keys, batch, heads, n_queries), dtype=q.dtype)  # (Tk, B, N, Tq)
    np.matmul(k, q_t, out=scores.transpose(1, 2, 0, 3))                # k_j . q_i
    if mask is not None:
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)       # (B|1, N|1, Tq|1, Tk)
        scores += np.moveaxis(mask, -1, 0)                             # (Tk, B|1, N|1, Tq|1)
    s = scores.reshape(n_keys, -1)                                     # softmax over axis 0
    s -= s.max(axis=0)
    np.exp(s, out=s)
    s *= np.reciprocal(s.sum(axis=0))
    probabilities = scores.transpose(1, 2, 3, 0)                       # (B, N, Tq, Tk) view
    return probabilities @ v                                           # (B, N, Tq, D)


# ============================================================================ one batch on every core
# Inference one batch at a time: each op's rows are split into one block per core, and every
# block runs its matrix products on single-threaded BLAS. Left to itself, multi-threaded
# BLAS keeps its extra threads spinning after each product, on the very cores that the
# elementwise work between the products needs; split this way, the elementwise work is
# shared by the cores too.
SPLIT_MIN_MULTIPLY_ADDS = 1 << 21     # smaller products: one call (the hand-off costs more)
SPLIT_MIN_SIZE = 1 << 15              # smaller elementwise work: one call

_blas = None


def _blas_libraries():
    """threadpoolctl's handles on the BLAS libraries NumPy loaded (found once)."""
    global _blas
    if _blas is None:
        from threadpoolctl import ThreadpoolController

        _blas = ThreadpoolController().select(user_api="blas").lib_controllers
    return _blas


class single_threaded_blas:
    """Inside the block, BLAS runs each call on the calling thread (process-wide setting)."""

    def __enter__(self):
        self.previous = [(lib, lib.num_threads) for lib in _blas_libraries()]
        for lib, _ in self.previous:
            lib.set_num_threads(1)

    def __exit__(self, *exc):
        for lib, threads in self.previous:
            lib.set_num_threads(threads)


def blas_threads() -> int:
    """The threads BLAS may use now (OPENBLAS_NUM_THREADS, threadpoolctl): the split uses as many."""
    return max([lib.num_threads for lib in _blas_libraries()], default=available_cores())


def split_parts(size: int, min_size: int) -> int:
    """Blocks to split work of ``size`` into: one per core BLAS may use, or 1 where splitting
    does not pay (small work, one core, or a thread that must keep its work to itself)."""
    if size < min_size or _in_pool_worker():
        return 1
    return max(1, min(available_cores(), blas_threads()))


def run_parts(work, parts: int) -> None:
    """work(0), ..., work(parts - 1) at the same time: part 0 on the calling thread, the others
    on the pool, all with single-threaded BLAS."""
    with single_threaded_blas():
        pending = [cpu_pool().submit(work, i) for i in range(1, parts)]
        work(0)
        for future in pending:
            future.result()


def _bounds(n: int, parts: int, weights=None):
    """parts + 1 cut points splitting range(n) into blocks of about equal weight (default 1 each)."""
    if weights is None:
        return np.linspace(0, n, parts + 1).astype(int)
    total = np.concatenate([[0], np.cumsum(weights)])
    return np.searchsorted(total, np.linspace(0, total[-1], parts + 1)).clip(0, n)


def linear_split(x, weight, bias=None, compute_dtype=None):
    """ops.linear_forward for float32 inference, rows split over the cores. Returns (y, None)."""
    out_features, in_features = weight.shape
    x2 = x.reshape(-1, in_features)                                     # (M, in)
    parts = split_parts(x2.shape[0] * in_features * out_features, SPLIT_MIN_MULTIPLY_ADDS)
    if parts == 1 or compute_dtype not in (None, weight.dtype):
        return ops.linear_forward(x, weight, bias, compute_dtype)[0], None
    y = np.empty((x2.shape[0], out_features), dtype=weight.dtype)       # (M, out)
    cuts = _bounds(x2.shape[0], parts)

    def work(i):
        rows = slice(cuts[i], cuts[i + 1])
        np.matmul(x2[rows], weight.T, out=y[rows])
        if bias is not None:
            y[rows] += bias

    run_parts(work, parts)
    return y.reshape(*x.shape[:-1], out_features), None


def layer_norm_split(x, gamma, beta, eps=1e-12):
    """layer_norm_fast with its rows split over the cores."""
    parts = split_parts(x.size, SPLIT_MIN_SIZE)
    if parts == 1:
        return layer_norm_fast(x, gamma, beta, eps)
    x2 = x.reshape(-1, x.shape[-1])                                     # (R, H)
    y = np.empty_like(x)
    y2 = y.reshape(x2.shape)
    cuts = _bounds(x2.shape[0], parts)

    def work(i):
        rows = slice(cuts[i], cuts[i + 1])
        _layer_norm_rows(x2[rows], gamma, beta, eps, y2[rows])

    run_parts(work, parts)
    return y, None


def gelu_split(x):
    """gelu_fast with its chunks shared by the cores."""
    return gelu_fast(x, threaded=True)


def attention_split(q, k, v, mask=None, dropout_p=0.0, rng=None, training=True):
    """attention_keys_first with the batch's sequences split over the cores (about equal
    work: a sequence of n real keys costs about n^2)."""
    batch = q.shape[0]
    parts = min(batch, split_parts(q.size, SPLIT_MIN_SIZE))
    if parts == 1 or (training and dropout_p > 0.0) or (mask is not None and mask.shape[0] != batch):
        return attention_keys_first(q, k, v, mask, dropout_p, rng, training)
    lengths = padding_lengths(mask, k.shape[2])                         # (B,) or None
    cuts = _bounds(batch, parts, None if lengths is None else lengths.astype(np.int64) ** 2 + 1)
    o = np.empty(q.shape[:3] + v.shape[3:], dtype=q.dtype)              # (B, N, Tq, D)

    def work(i):
        s = slice(cuts[i], cuts[i + 1])
        if s.start < s.stop:
            o[s] = attention_keys_first(q[s], k[s], v[s], None if mask is None else mask[s])[0]

    run_parts(work, parts)
    return o, None


SPEED_UPS = [
    dict(op="gelu", forward=gelu_exact_threaded, backward=ops.gelu_backward, device="cpu",
         dtypes=("float32", "float64")),
    dict(op="gelu", forward=gelu_split, backward=None, device="cpu", inference_only=True),
    dict(op="layer_norm", forward=layer_norm_split, backward=None, device="cpu", inference_only=True),
    dict(op="attention", forward=attention_split, backward=None, device="cpu", inference_only=True),
    dict(op="linear", forward=linear_split, backward=None, device="cpu", inference_only=True),
]
