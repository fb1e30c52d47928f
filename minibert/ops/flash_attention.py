"""Flash-style attention: the same result as ``attention.py`` without the (T x T) matrices.

Shapes: B batch, N heads, Tq queries, Tk keys, D head size; bq, bk the tile sizes.

The naive op computes every score s = q k^T / sqrt(D) of a head at once, (Tq, Tk) numbers,
and keeps the softmax p for the backward pass. At T = 2048 with B = 8 and N = 12 that is
1.6 GB per float32 matrix, and the backward needs three of them. This op walks over the
scores one tile of (bq queries x bk keys) at a time and never holds more than a few tiles:

    for each query tile i (bq rows):                     <- outer loop
        for each key tile j (bk columns):                <- inner loop
            s_ij = q_i k_j^T / sqrt(D) + mask_ij         (B, N, bq, bk)
            fold s_ij into a running softmax of the rows of tile i
        o_i = (running weighted sum of v) / (running sum)

Every tile is batched over (B, N): one NumPy call handles all heads of all sequences, the
Python loops run only over tiles, (Tq / bq) x (Tk / bk) iterations.

The online softmax (forward)
----------------------------
For one query row, softmax and output over all keys are

    p_j = exp(s_j - M) / L,   L = sum_j exp(s_j - M),   o = sum_j p_j v_j,

for any constant M (the row maximum keeps exp from overflowing). The keys arrive in tiles,
so we keep three running quantities over the tiles seen so far: the maximum m, the sum
l = sum exp(s_j - m) and the unnormalised output acc = sum exp(s_j - m) v_j. When a new
tile J arrives, the maximum may grow to m' = max(m, max_{j in J} s_j); everything summed
so far was relative to the old m, and multiplying by alpha = exp(m - m') moves it to m':

    m'   = max(m, max_J s_j)
    l'   = alpha * l   + sum_J exp(s_j - m')
    acc' = alpha * acc + sum_J exp(s_j - m') v_j          alpha = exp(m - m')

After the last tile, o = acc / l, exactly the softmax-weighted sum. For the backward pass
the forward keeps two numbers per row, m and l, since any probability can be recomputed
from its score alone:

    p_j = exp(s_j - m) / l        (= exp(s_j - lse) with the log-sum-exp lse = m + log l)

The cache therefore holds o, m and l, (B, N, Tq, D) and 2 x (B, N, Tq), instead of the
(B, N, Tq, Tk) matrix p. (FlashAttention-2 keeps the single number lse = m + log l. Here m
and l stay separate because of the padding mask: a row whose keys are all masked has
m = finfo.min, and finfo.min + log l rounds back to finfo.min, losing l.)

The backward (FlashAttention-2 style)
-------------------------------------
With g = dL/do, the gradients are those of the naive op (see attention.py):

    dv = p^T g,     dp = g v^T,     ds = p * (dp - D),     dq = ds k / sqrt(D),   dk = ds^T q / sqrt(D)

where D is the row sum of dp * p. That row sum does not need the matrices:
sum_j p_ij dp_ij = sum_j p_ij (g_i . v_j) = g_i . (sum_j p_ij v_j) = g_i . o_i, so

    D_i = rowsum(g * o)                                   (B, N, Tq), one number per row.

The backward loops over the same tiles, recomputes s_ij and e_ij = exp(s_ij - m_i) from q,
k and the cached m, and adds each tile's share to dq_i (summed over j) and to dk_j, dv_j
(summed over i). Since p = e / l and every use of p above is multiplied by a quantity of
its row, the row's 1/l is moved onto g and D (a (bq, D) division instead of a (bq, bk) one):

    dv_j += e^T (g_i / l_i)           dp / l = (g_i / l_i) v_j^T
    ds    = e * (dp / l - D_i / l_i)  dq_i  += ds k_j / sqrt(D)       dk_j += ds^T q_i / sqrt(D)

The price is one more q k^T product than the naive op; the gain is memory that grows with
T, not T^2. (The GPU kernel runs the key tiles in parallel instead, each block owning its
dk_j and dv_j; in NumPy the loop order is free, and this one mirrors the forward.)

Padding masks and rows with no visible key
------------------------------------------
The mask is additive, as in the naive op: 0 for visible keys, a large negative number
(``finfo(dtype).min`` in the model) for padding, broadcastable to (B, N, Tq, Tk), so
(B, 1, 1, Tk) padding masks and full (B, N, Tq, Tk) masks both work; tiles are cut
from it, never expanded to full size. The running maximum starts at finfo(dtype).min,
not -inf, so a tile whose keys are all masked never computes (-inf) - (-inf): a row whose
keys are all masked by finfo.min gets equal scores, hence uniform weights and the mean of
v, exactly like the naive op. (With a mask of -inf such a row has no weight at all: the
naive op returns NaN there; this one returns 0 and zero gradients.)

Attention dropout from a seed
-----------------------------
The naive op stores the dropout mask, (B, N, Tq, Tk) booleans. Here each keep/drop
decision is a pure function of (seed, b, h, i, j), a counter-based random number, so the
backward regenerates the mask of each tile instead of storing it:

    row key    r(b, h, i) = top 32 bits of mix64(mix64(mix64(seed + (b+1)G) + (h+1)G) + (i+1)G)
    element    u(b, h, i, j) = mix32(r(b, h, i) XOR (j * 0x9E3779B9 mod 2^32))
    keep       u >= round(p * 2^32)          (probability 1 - p)

mix64 is the SplitMix64 finaliser and mix32 the "lowbias32" integer hash (both xor-shift /
multiply bijections), G = 0x9E3779B97F4A7C15. The 64-bit work is done once per row, the
per-element work is five uint32 operations on the tile. A kept probability is scaled by
1 / (1 - p) as in ordinary inverted dropout; the scale is applied once to o. The softmax
sum l counts every key (dropout acts on the normalised probabilities, as in the naive op).
The seed is drawn from ``rng`` once per call (or passed as ``dropout_seed``) and stored in
the cache; :func:`flash_dropout_mask` materialises the same mask as a full matrix, which
lets a test run the naive op with it and compare.

Cache: q, k, v, the mask, o, m, l, the dropout seed and rate, the tile sizes.
"""

from __future__ import annotations

import math

import numpy as np

from ..backend import get_array_module

# Tile sizes chosen by measurement on the project's 2-core CPU (B=8, N=12, D=64, T=2048,
# float32, forward + backward, best of several runs): 128x128 tiles took 8.6 s, 128x256,
# 256x256, 256x512 and 512x512 all 7.2-7.6 s. Bigger tiles mean fewer, larger matrix
# products (NumPy makes one BLAS call per head and tile); smaller ones less memory.
# 128x256 is the smallest tile at full speed: 12.6 MB per (B, N, bq, bk) float32 array,
# 0.25 GB peak extra memory in all, outputs included (the naive op: 4.9 GB).
DEFAULT_BLOCK_Q = 128
DEFAULT_BLOCK_K = 256


# ============================================================================ dropout hash
_GOLDEN64 = np.uint64(0x9E3779B97F4A7C15)   # 2^64 / golden ratio, odd: a Weyl-sequence step
_GOLDEN32 = np.uint32(0x9E3779B9)           # the same for 32 bits


def _mix64(x):
    """SplitMix64 finaliser, in place on a uint64 array: a bijection that scatters every bit."""
    x ^= x >> np.uint64(30)
    x *= np.uint64(0xBF58476D1CE4E5B9)
    x ^= x >> np.uint64(27)
    x *= np.uint64(0x94D049BB133111EB)
    x ^= x >> np.uint64(31)
    return x


def _mix32(x):
    """'lowbias32' integer hash, in place on a uint32 array (also a bijection)."""
    x ^= x >> np.uint32(16)
    x *= np.uint32(0x7FEB352D)
    x ^= x >> np.uint32(15)
    x *= np.uint32(0x846CA68B)
    x ^= x >> np.uint32(16)
    return x


def _dropout_row_keys(seed, batch, heads, rows, xp):
    """One uint32 key per (b, h, i): (B, N, Tq). O(T) work, recomputed by the backward."""
    b = xp.arange(1, batch + 1, dtype=xp.uint64).reshape(batch, 1, 1)
    h = xp.arange(1, heads + 1, dtype=xp.uint64).reshape(1, heads, 1)
    i = xp.arange(1, rows + 1, dtype=xp.uint64).reshape(1, 1, rows)
    key = _mix64(xp.asarray(seed, dtype=xp.uint64) + b * _GOLDEN64)     # (B, 1, 1)
    key = _mix64(key + h * _GOLDEN64)                                   # (B, N, 1)
    key = _mix64(key + i * _GOLDEN64)                                   # (B, N, Tq)
    return (key >> np.uint64(32)).astype(xp.uint32)


def _dropout_threshold(p):
    """The uint32 t with P(u >= t) = 1 - p for u uniform on [0, 2^32)."""
    return np.uint32(min(int(round(p * 2.0**32)), 2**32 - 1))


def _dropout_keep_tile(row_keys, j0, j1, threshold, xp):
    """Keep mask of keys j0..j1-1 for the rows whose keys are given: (B, N, bq, bk) bool."""
    columns = xp.arange(j0, j1, dtype=xp.uint32) * _GOLDEN32            # (bk,), wraps mod 2^32
    u = row_keys[..., None] ^ columns                                   # (B, N, bq, bk) uint32
    return _mix32(u) >= threshold


def flash_dropout_mask(seed, shape, p, xp=np):
    """The keep mask that flash attention uses for a seed, as a full (B, N, Tq, Tk) bool matrix.

    Entry (b, h, i, j) is True where the probability p_ij survives dropout. Meant for tests
    and teaching (the op itself never builds it): ``attention_forward`` with this mask gives
    the same output as ``flash_attention_forward(..., dropout_seed=seed)``.
    """
    batch, heads, queries, keys = shape
    row_keys = _dropout_row_keys(int(seed), batch, heads, queries, xp)
    return _dropout_keep_tile(row_keys, 0, keys, _dropout_threshold(p), xp)


# ============================================================================ checks
def dropout_setting(dropout_p, rng, training, dropout_seed=None):
    """(seed, p) when attention dropout is active, else None; the seed drawn from ``rng`` if not given."""
    if not (training and dropout_p > 0.0):
        return None
    if dropout_seed is None:
        if rng is None:
            raise ValueError("attention dropout needs a random generator (rng) or a dropout_seed")
        dropout_seed = int(rng.integers(0, 2**62))
    return int(dropout_seed), float(dropout_p)


def _check_inputs(q, k, v, mask, dropout_p, block_q, block_k):
    for name, x in (("q", q), ("k", k), ("v", v)):
        if getattr(x, "ndim", None) != 4:
            raise ValueError(f"flash attention expects {name} of shape (B, N, T, D), got "
                             f"{getattr(x, 'shape', type(x).__name__)}")
        if x.dtype.kind != "f":
            raise TypeError(f"flash attention expects floating-point {name}, got {x.dtype}")
    if not (q.dtype == k.dtype == v.dtype):
        raise TypeError(f"q, k, v must share one dtype, got {q.dtype}, {k.dtype}, {v.dtype}")
    batch, heads, _, head_size = q.shape
    if k.shape[:2] != (batch, heads) or k.shape[3] != head_size:
        raise ValueError(f"k must be (B, N, Tk, D) = ({batch}, {heads}, Tk, {head_size}), got {k.shape}")
    if v.shape[:3] != k.shape[:3]:
        raise ValueError(f"v must be (B, N, Tk, Dv) with the (B, N, Tk) of k {k.shape[:3]}, got {v.shape}")
    if mask is not None:
        if getattr(mask, "dtype", None) is None or mask.dtype.kind != "f":
            raise TypeError("the attention mask must be an additive floating-point array "
                            "(0 = visible, a large negative number = masked), got "
                            f"{getattr(mask, 'dtype', type(mask).__name__)}")
        full = (batch, heads, q.shape[2], k.shape[2])
        if mask.ndim > 4 or any(m not in (1, f) for m, f in zip(mask.shape[::-1], full[::-1])):
            raise ValueError(f"the attention mask must broadcast to (B, N, Tq, Tk) = {full}, got {mask.shape}")
    if not 0.0 <= dropout_p < 1.0:
        raise ValueError(f"dropout_p must be in [0, 1), got {dropout_p}")
    for name, size in (("block_q", block_q), ("block_k", block_k)):
        if not isinstance(size, (int, np.integer)) or size < 1:
            raise ValueError(f"{name} must be a positive integer, got {size!r}")


def _mask_tile(mask, i0, i1, j0, j1):
    """The (.., bq, bk) part of a 4-d additive mask whose query/key axes may be broadcast (size 1)."""
    rows = slice(i0, i1) if mask.shape[2] > 1 else slice(None)
    cols = slice(j0, j1) if mask.shape[3] > 1 else slice(None)
    return mask[:, :, rows, cols]


# ============================================================================ forward
def flash_attention_forward(q, k, v, mask=None, dropout_p=0.0, rng=None, training=True,
                            block_q=DEFAULT_BLOCK_Q, block_k=DEFAULT_BLOCK_K, dropout_seed=None):
    """Tiled attention: o = dropout(softmax(q k^T / sqrt(D) + mask)) v, without (Tq, Tk) matrices.

    q: (B, N, Tq, D), k: (B, N, Tk, D), v: (B, N, Tk, Dv); mask additive, broadcastable to
    (B, N, Tq, Tk). Dropout (training and dropout_p > 0) uses a seed drawn once from ``rng``
    (``rng.integers``) unless ``dropout_seed`` is given. Returns o (B, N, Tq, Dv) and the cache
    (q, k, v, mask, o, m, l, dropout, block_q, block_k).
    """
    xp = get_array_module(q)
    _check_inputs(q, k, v, mask, dropout_p, block_q, block_k)
    batch, heads, n_queries, head_size = q.shape
    n_keys, value_size = k.shape[2], v.shape[3]
    dtype = q.dtype
    scale = 1.0 / math.sqrt(head_size)
    if mask is not None:
        mask = mask.reshape((1,) * (4 - mask.ndim) + mask.shape)        # 4-d, still broadcastable

    dropout = dropout_setting(dropout_p, rng, training, dropout_seed)   # (seed, p) or None
    if dropout is not None:
        row_keys = _dropout_row_keys(dropout[0], batch, heads, n_queries, xp)   # (B, N, Tq)
        threshold = _dropout_threshold(dropout_p)

    o = xp.empty((batch, heads, n_queries, value_size), dtype=dtype)    # (B, N, Tq, Dv)
    m = xp.empty((batch, heads, n_queries), dtype=dtype)                # row maxima    (B, N, Tq)
    l = xp.empty((batch, heads, n_queries), dtype=dtype)                # row sums      (B, N, Tq)

    for i0 in range(0, n_queries, block_q):
        i1 = min(i0 + block_q, n_queries)
        q_i = q[:, :, i0:i1] * scale                                    # (B, N, bq, D)
        # running max, sum and weighted sum of the rows of this query tile; the max starts at
        # the lowest finite number, not -inf, so that (m - m') is never (-inf) - (-inf)
        m_i = xp.full((batch, heads, i1 - i0), np.finfo(dtype).min, dtype=dtype)  # (B, N, bq)
        l_i = xp.zeros((batch, heads, i1 - i0), dtype=dtype)                      # (B, N, bq)
        acc = xp.zeros((batch, heads, i1 - i0, value_size), dtype=dtype)          # (B, N, bq, Dv)

        for j0 in range(0, n_keys, block_k):
            j1 = min(j0 + block_k, n_keys)
            s = q_i @ k[:, :, j0:j1].swapaxes(-1, -2)                   # (B, N, bq, bk)
            if mask is not None:
                s += _mask_tile(mask, i0, i1, j0, j1)
            m_new = xp.maximum(m_i, s.max(axis=-1))                     # m' = max(m, max_J s)
            s -= m_new[..., None]
            p = xp.exp(s, out=s)                     # exp(s - m'), in place  (B, N, bq, bk)
            alpha = xp.exp(m_i - m_new)              # rescales what was summed relative to m
            l_i *= alpha
            l_i += p.sum(axis=-1)                    # l' = alpha l + sum_J exp(s - m')
            if dropout is not None:                  # dropout acts after the sum: l counts every key
                p *= _dropout_keep_tile(row_keys[:, :, i0:i1], j0, j1, threshold, xp)
            acc *= alpha[..., None]
            acc += p @ v[:, :, j0:j1]                # acc' = alpha acc + exp(s - m') v_J  (B, N, bq, Dv)
            m_i = m_new

        # l == 0 only when every key of a row was masked with -inf: output 0 rather than 0/0
        l_i = xp.where(l_i == 0, 1, l_i)
        acc /= l_i[..., None]                        # o = acc / l
        if dropout is not None:
            acc *= 1.0 / (1.0 - dropout_p)           # inverted dropout's scale, once per output
        o[:, :, i0:i1] = acc
        m[:, :, i0:i1] = m_i
        l[:, :, i0:i1] = l_i

    cache = (q, k, v, mask, o, m, l, dropout, block_q, block_k)
    return o, cache


# ============================================================================ backward
def flash_attention_backward(do, cache):
    """Gradients of the tiled attention, recomputing the probabilities tile by tile from (m, l).

    do: (B, N, Tq, Dv). Returns dq (B, N, Tq, D), dk (B, N, Tk, D), dv (B, N, Tk, Dv).
    """
    q, k, v, mask, o, m, l, dropout, block_q, block_k = cache
    xp = get_array_module(q)
    batch, heads, n_queries, head_size = q.shape
    n_keys = k.shape[2]
    scale = 1.0 / math.sqrt(head_size)
    if dropout is not None:
        seed, dropout_p = dropout
        row_keys = _dropout_row_keys(seed, batch, heads, n_queries, xp)     # (B, N, Tq)
        threshold = _dropout_threshold(dropout_p)
        keep_scale = 1.0 / (1.0 - dropout_p)

    dq = xp.empty(q.shape, dtype=q.dtype)                               # (B, N, Tq, D)
    dk = xp.zeros(k.shape, dtype=k.dtype)                               # (B, N, Tk, D)
    dv = xp.zeros(v.shape, dtype=v.dtype)                               # (B, N, Tk, Dv)

    for i0 in range(0, n_queries, block_q):
        i1 = min(i0 + block_q, n_queries)
        q_i = q[:, :, i0:i1] * scale                                    # (B, N, bq, D)
        m_i = m[:, :, i0:i1, None]                                      # (B, N, bq, 1)
        # p = e / l with e = exp(s - m): move each row's 1/l onto do (and so onto D)
        do_i = do[:, :, i0:i1] / l[:, :, i0:i1, None]                   # do / l     (B, N, bq, Dv)
        d_i = (do_i * o[:, :, i0:i1]).sum(axis=-1)[..., None]           # D / l      (B, N, bq, 1)
        dq_i = xp.zeros(q_i.shape, dtype=q.dtype)                       # (B, N, bq, D)

        for j0 in range(0, n_keys, block_k):
            j1 = min(j0 + block_k, n_keys)
            k_j, v_j = k[:, :, j0:j1], v[:, :, j0:j1]                   # (B, N, bk, D), (B, N, bk, Dv)
            # recompute the scores and e = exp(s - m) = p * l
            s = q_i @ k_j.swapaxes(-1, -2)                              # (B, N, bq, bk)
            if mask is not None:
                s += _mask_tile(mask, i0, i1, j0, j1)
            s -= m_i
            e = xp.exp(s, out=s)                                        # (B, N, bq, bk)

            dp = do_i @ v_j.swapaxes(-1, -2)         # dp / l, dp = gradient of p  (B, N, bq, bk)
            if dropout is None:
                dv[:, :, j0:j1] += e.swapaxes(-1, -2) @ do_i           # dv += p^T do  (B, N, bk, Dv)
            else:
                z = _dropout_keep_tile(row_keys[:, :, i0:i1], j0, j1, threshold, xp).astype(e.dtype)
                z *= keep_scale                      # z = keep / (1 - p_drop): dropped p = p z
                dv[:, :, j0:j1] += (e * z).swapaxes(-1, -2) @ do_i     # dv += (p z)^T do
                dp *= z                              # gradient through the dropout

            ds = dp                                  # ds = p (dp - D) = e (dp/l - D/l), in place
            ds -= d_i
            ds *= e                                                     # (B, N, bq, bk)
            dq_i += ds @ k_j                         # dq = ds k / sqrt(D)      (B, N, bq, D)
            dk[:, :, j0:j1] += ds.swapaxes(-1, -2) @ q_i   # dk = ds^T q / sqrt(D)  (B, N, bk, D)

        dq_i *= scale
        dq[:, :, i0:i1] = dq_i
    return dq, dk, dv
