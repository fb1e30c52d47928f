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
    """GELU for float32 inference: a new array, worked through cache-sized chunks (on the
    pool's threads when ``threaded``). Returns (y, None): no cache.

    The model runs it on the calling thread: at about 4 ns an element it is too short to
    gain from the pool while OpenBLAS's own threads spin between the matrix products
    (measured one batch at a time with two BLAS threads: 4.42-4.47 s on one thread against
    4.73-4.94 s on the pool, for the 1,000 sentences of benchmarks/embed.py).
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
    if threaded and flat.size > CHUNK and not _in_pool_worker():
        list(cpu_pool().map(work, starts))
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
    y = x - x.mean(axis=-1, keepdims=True)             # (..., H)
    y2 = y.reshape(-1, y.shape[-1])                    # (R, H) view
    var = np.einsum("ij,ij->i", y2, y2)                # (R,) sum of squares, no (R, H) temporary
    var *= 1.0 / y2.shape[1]
    var += eps
    np.sqrt(var, out=var)
    np.reciprocal(var, out=var)
    y2 *= var[:, None]
    y2 *= gamma
    y2 += beta
    return y, None


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


SPEED_UPS = [
    dict(op="gelu", forward=gelu_exact_threaded, backward=ops.gelu_backward, device="cpu",
         dtypes=("float32", "float64")),
    dict(op="gelu", forward=gelu_fast, backward=None, device="cpu", inference_only=True),
    dict(op="layer_norm", forward=layer_norm_fast, backward=None, device="cpu", inference_only=True),
    dict(op="attention", forward=attention_keys_first, backward=None, device="cpu", inference_only=True),
]
