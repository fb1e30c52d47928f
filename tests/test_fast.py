"""The CPU speed wing (minibert/fast/cpu.py) and the registry that chooses it give the
reference's numbers: bit for bit where the speed-up is exact, to float32 rounding where
it is an inference shortcut, and the model in inference mode equals the model in training
mode at every real position.
"""

import os
import platform
import subprocess
import sys
import threading

import numpy as np
import pytest
from scipy.special import erf as scipy_erf

from minibert import ops, registry
from minibert.fast import cpu
from minibert.fast.cpu import (attention_keys_first, attention_split, cpu_pool, erf_threaded, gelu_exact_threaded,
                               gelu_fast, gelu_split, layer_norm_fast, layer_norm_split, linear_split, single_threaded)
from minibert.modeling import BertConfig, BertModel
from minibert.nn import no_grad, op
from minibert.registry import SpeedUp, implementation, reference_only


@pytest.fixture
def cores(monkeypatch):
    """``cores(n)``: the speed wing sees n available cores and gets a fresh pool of n threads."""
    made = []

    def set_cores(n):
        monkeypatch.setattr(cpu, "available_cores", lambda: n)
        monkeypatch.setattr(cpu, "_cpu_pool", None)
        made.append(True)

    yield set_cores
    if made and cpu._cpu_pool is not None:
        cpu._cpu_pool.shutdown()


def _exact_gelu(x):
    return x * 0.5 * (1.0 + scipy_erf(x / np.sqrt(2.0)))


# --------------------------------------------------------------------------- the exact erf, split
@pytest.mark.parametrize("n_cores", [2, 3])
def test_erf_split_over_the_cores_equals_one_call(rng, cores, n_cores):
    cores(n_cores)
    x = rng.standard_normal(((1 << 16) + 3, 5)).astype(np.float32) * 3   # above the split size
    assert x.size >= cpu.PARALLEL_MIN_SIZE
    y = erf_threaded(x)
    assert y.shape == x.shape and y.dtype == x.dtype
    np.testing.assert_array_equal(y, scipy_erf(x))


def test_erf_below_the_split_size_and_on_a_pool_thread_is_one_call(rng, cores):
    cores(2)
    small = rng.standard_normal(1000)
    np.testing.assert_array_equal(erf_threaded(small), scipy_erf(small))
    x = rng.standard_normal(cpu.PARALLEL_MIN_SIZE + 7)
    with single_threaded():                                 # no pool: one call on this thread
        np.testing.assert_array_equal(erf_threaded(x), scipy_erf(x))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_gelu_exact_threaded_equals_the_reference_bit_for_bit(rng, cores, dtype):
    cores(2)
    x = (rng.standard_normal((700, 500)) * 4).astype(dtype)        # above the split size
    y, (cached_x, cdf) = gelu_exact_threaded(x)
    y_ref, (ref_x, ref_cdf) = ops.gelu_forward(x)
    assert y.dtype == dtype and cdf.dtype == dtype
    np.testing.assert_array_equal(y, y_ref)
    np.testing.assert_array_equal(cached_x, ref_x)
    np.testing.assert_array_equal(cdf, ref_cdf)
    dy = rng.standard_normal(x.shape).astype(dtype)               # so the reference backward fits
    np.testing.assert_array_equal(ops.gelu_backward(dy, (cached_x, cdf)), ops.gelu_backward(dy, (ref_x, ref_cdf)))


def test_cpu_pool_is_made_once_when_first_asked_for_from_many_threads(monkeypatch):
    monkeypatch.setattr(cpu, "_cpu_pool", None)
    start = threading.Barrier(8)
    pools = []

    def ask():
        start.wait()
        pools.append(cpu_pool())

    threads = [threading.Thread(target=ask) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    made = cpu._cpu_pool
    try:
        assert len(pools) == 8 and all(p is made for p in pools)
        assert made._max_workers == cpu.available_cores() >= 1
    finally:
        made.shutdown()


@pytest.mark.parametrize("n_cores", [1, 2, 16])
def test_default_embedding_workers_follow_the_available_cores(monkeypatch, n_cores):
    from minibert import sentence_embeddings

    monkeypatch.setattr(sentence_embeddings, "available_cores", lambda: n_cores)
    assert sentence_embeddings.default_workers() == min(4, n_cores)
    assert sentence_embeddings.default_workers("cuda") == 1


# --------------------------------------------------------------------------- GELU, float32 inference
def test_gelu_fast_matches_exact_erf():
    x = np.concatenate([np.linspace(-12, 12, 200_001), [0.0, -0.0, 1e-30, -1e-30, 40.0, -40.0]])
    exact = _exact_gelu(x)
    for dtype, tol in ((np.float64, 2e-7), (np.float32, 5e-7)):
        given = x.astype(dtype)
        before = given.copy()
        y, cache = gelu_fast(given, threaded=True)               # chunked and threaded (> one chunk)
        assert cache is None and y.dtype == dtype and y.shape == x.shape
        np.testing.assert_array_equal(given, before)             # the input is left alone
        assert np.abs(y - exact).max() <= tol * 12
        assert (np.abs(y - exact) <= tol * np.maximum(1.0, np.abs(x))).all()
    small = np.array([[-3.0, -1.0, 0.0, 0.5, 2.0]], np.float32)  # the single-chunk path
    before = small.copy()
    y, _ = gelu_fast(small)
    assert y.shape == small.shape
    np.testing.assert_allclose(y, _exact_gelu(small), atol=5e-7)
    np.testing.assert_array_equal(small, before)


def test_threaded_gelu_fast_equals_the_one_thread_gelu(rng, cores, monkeypatch):
    cores(2)
    x = rng.standard_normal((300, 1000)).astype(np.float32) * 4      # several GELU chunks
    assert x.size > 2 * cpu.CHUNK
    threaded, _ = gelu_fast(x, threaded=True)
    one_call, _ = gelu_fast(x, threaded=False)

    def no_pool():
        raise AssertionError("the pool was used inside single_threaded()")

    monkeypatch.setattr(cpu, "cpu_pool", no_pool)
    with single_threaded():
        single, _ = gelu_fast(x, threaded=True)                  # asked for, but kept on this thread
    np.testing.assert_array_equal(threaded, single)
    np.testing.assert_array_equal(one_call, single)
    np.testing.assert_allclose(single, _exact_gelu(x.astype(np.float64)), atol=5e-7 * 12)


def test_single_threaded_is_per_thread_and_nests():
    seen = []
    with single_threaded():
        with single_threaded():
            pass
        assert cpu._in_pool_worker()                            # still on after the inner block
        other = threading.Thread(target=lambda: seen.append(cpu._in_pool_worker()))
        other.start()
        other.join()
    assert seen == [False] and not cpu._in_pool_worker()


# --------------------------------------------------------------------------- the allocator
_HEAP_AFTER_FREE = """
import ctypes
import numpy as np
from minibert.fast.cpu import keep_freed_memory

class Mallinfo2(ctypes.Structure):
    _fields_ = [(name, ctypes.c_size_t) for name in ("arena", "ordblks", "smblks", "hblks", "hblkhd",
                                                     "usmblks", "fsmblks", "uordblks", "fordblks", "keepcost")]

libc = ctypes.CDLL("libc.so.6")
libc.mallinfo2.restype = Mallinfo2
print(keep_freed_memory())
before = libc.mallinfo2()
arrays = [np.ones(1 << 20) for _ in range(8)]       # 8 x 8 MiB, as a step's temporaries
made = libc.mallinfo2()
del arrays
freed = libc.mallinfo2()
print(made.arena - before.arena, made.hblkhd - before.hblkhd, freed.arena - before.arena, freed.fordblks)
"""


@pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")
def test_keep_freed_memory_keeps_a_steps_freed_arrays_in_the_heap():
    """In a fresh process: after keep_freed_memory(), 8 MiB arrays come from the heap (not
    one mapping each) and, once freed, stay there for the next step (not trimmed away)."""
    done = subprocess.run([sys.executable, "-c", _HEAP_AFTER_FREE], capture_output=True, text=True,
                          cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    if "mallinfo2" in done.stderr:
        pytest.skip("glibc older than 2.33 (no mallinfo2)")
    assert done.returncode == 0, done.stderr
    accepted, lines = done.stdout.split("\n", 1)
    grew, mapped, kept, free = (int(n) for n in lines.split())
    assert accepted == "True"
    assert grew >= 56 << 20 and mapped == 0              # from the heap, no mapping of their own
    assert kept >= 56 << 20 and free >= 56 << 20         # freed, the heap still holds them


def test_keep_freed_memory_without_glibc_says_false(monkeypatch):
    def no_libc(name):
        raise OSError(f"{name}: cannot open shared object file")

    monkeypatch.setattr(cpu.ctypes, "CDLL", no_libc)
    assert cpu.keep_freed_memory() is False


# --------------------------------------------------------------------------- LayerNorm, float32 inference
def _layer_norm_definition(x, w, b, eps):
    mu, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    return (x - mu) / np.sqrt(var + eps) * w + b


def test_layer_norm_fast_matches_definition():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((7, 12)) * 3 + 1
    w, b = rng.standard_normal(12), rng.standard_normal(12)
    before = x.copy()
    y, cache = layer_norm_fast(x, w, b, 1e-12)
    assert cache is None
    np.testing.assert_allclose(y, _layer_norm_definition(x, w, b, 1e-12), rtol=1e-12, atol=1e-12)
    np.testing.assert_array_equal(x, before)                   # the input is left alone
    x3 = rng.standard_normal((2, 5, 12)).astype(np.float32) * 3 + 1         # (B, T, H), float32
    y3, _ = layer_norm_fast(x3, w.astype(np.float32), b.astype(np.float32), 1e-12)
    assert y3.shape == x3.shape and y3.dtype == np.float32
    np.testing.assert_allclose(y3, _layer_norm_definition(x3.astype(np.float64), w, b, 1e-12), atol=2e-5)
    np.testing.assert_allclose(y3, ops.layer_norm_forward(x3, w.astype(np.float32), b.astype(np.float32))[0],
                               atol=2e-5)


def test_layer_norm_fast_eps_sits_inside_the_square_root():
    x = 0.05 * np.random.default_rng(0).standard_normal((4, 8))
    mean, var = x.mean(1, keepdims=True), x.var(1, keepdims=True)
    y, _ = layer_norm_fast(x, np.ones(8), np.zeros(8), 1e-2)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-2), rtol=1e-12)


# --------------------------------------------------------------------------- attention, keys first
def _qkv(rng, dtype, batch=3, heads=2, n_queries=6, n_keys=6, head_size=4):
    q = rng.standard_normal((batch, heads, n_queries, head_size)).astype(dtype)
    k = rng.standard_normal((batch, heads, n_keys, head_size)).astype(dtype)
    v = rng.standard_normal((batch, heads, n_keys, head_size)).astype(dtype)
    return q, k, v


def _padding_mask(lengths, n_keys, dtype):
    real = np.arange(n_keys)[None, :] < np.asarray(lengths)[:, None]          # (B, Tk)
    return ((1.0 - real.astype(dtype)) * np.finfo(dtype).min)[:, None, None, :].astype(dtype)   # (B, 1, 1, Tk)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-6), (np.float64, 1e-13)])
def test_attention_keys_first_with_zero_queries_at_padding_equals_the_reference(rng, dtype, tol):
    """BertModel's packed rows leave the queries of padded positions at zero: those attend
    evenly over the real keys, and the shortcut gives them the mean of the values."""
    q, k, v = _qkv(rng, dtype, batch=4)
    lengths = [6, 2, 4, 2]                                                  # two groups of one length
    for b, n in enumerate(lengths):
        q[b, :, n:] = 0.0
    mask = _padding_mask(lengths, 6, dtype)
    out, _ = attention_keys_first(q, k, v, mask, 0.0, None, False)
    expected, _ = ops.attention_forward(q, k, v, mask, 0.0, None, False)
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
    np.testing.assert_allclose(out[1, :, 2:], np.broadcast_to(v[1, :, :2].mean(axis=1)[:, None], (2, 4, 4)),
                               rtol=tol, atol=tol)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-6), (np.float64, 1e-13)])
@pytest.mark.parametrize("mask_kind", ["padding", "padding_and_empty", "not_trailing", "full", "none"])
def test_attention_keys_first_equals_the_reference(rng, dtype, tol, mask_kind):
    q, k, v = _qkv(rng, dtype)
    if mask_kind == "padding":
        mask = _padding_mask([6, 2, 4], 6, dtype)                            # (B, 1, 1, T)
    elif mask_kind == "padding_and_empty":                                  # the middle sequence is all padding
        mask = _padding_mask([6, 0, 3], 6, dtype)
    elif mask_kind == "not_trailing":                                       # (B, 1, 1, T), hidden keys not at the end
        real = np.array([[1, 1, 1, 1, 1, 1], [0, 0, 1, 1, 1, 1], [1, 0, 1, 1, 0, 1]], bool)
        mask = np.where(real, 0.0, np.finfo(dtype).min).astype(dtype)[:, None, None, :]
        assert cpu.padding_lengths(mask, 6) is None                         # not read as lengths
    elif mask_kind == "full":                                               # (B, N, T, T): causal and random
        allowed = np.tril(np.ones((6, 6), bool)) & (rng.random((3, 2, 6, 6)) < 0.7)
        allowed[..., 0] = True
        mask = np.where(allowed, 0.0, np.finfo(dtype).min).astype(dtype)
    else:
        mask = None
    given = [a.copy() for a in (q, k, v)]
    out, cache = attention_keys_first(q, k, v, mask, 0.0, None, False)
    expected, _ = ops.attention_forward(q, k, v, mask, 0.0, None, False)
    assert cache is None and out.shape == expected.shape and out.dtype == dtype
    np.testing.assert_allclose(out, expected, rtol=tol, atol=tol)
    for before, after in zip(given, (q, k, v)):
        np.testing.assert_array_equal(before, after)


def test_attention_keys_first_with_other_query_and_key_counts_and_a_2d_mask(rng):
    q, k, v = _qkv(rng, np.float64, n_queries=5, n_keys=7)
    for mask in (_padding_mask([7, 3, 5], 7, np.float64),
                 np.where(rng.random((5, 7)) < 0.5, 0.0, -1e4)):            # (Tq, Tk), broadcast
        np.testing.assert_allclose(attention_keys_first(q, k, v, mask, 0.0, None, False)[0],
                                   ops.attention_forward(q, k, v, mask, 0.0, None, False)[0], atol=1e-13)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_attention_keys_first_fully_masked_row_behaves_as_the_reference(rng, dtype):
    q, k, v = _qkv(rng, dtype)
    mask = np.zeros((3, 2, 6, 6), dtype)
    mask[1, 0, 2, :] = np.finfo(dtype).min                                  # one query sees no key
    mask[2, :, :, :] = np.finfo(dtype).min                                  # a sequence that is all padding
    out, _ = attention_keys_first(q, k, v, mask, 0.0, None, False)
    expected, _ = ops.attention_forward(q, k, v, mask, 0.0, None, False)
    assert np.isfinite(out).all()
    np.testing.assert_allclose(out, expected, atol=2e-6 if dtype == np.float32 else 1e-13)
    np.testing.assert_allclose(out[2], np.broadcast_to(v[2].mean(axis=1, keepdims=True), out[2].shape),
                               atol=2e-6 if dtype == np.float32 else 1e-13)   # uniform over the keys


def test_attention_keys_first_with_dropout_active_gives_the_reference_numbers(rng):
    q, k, v = _qkv(rng, np.float32)
    mask = _padding_mask([6, 2, 4], 6, np.float32)
    out, cache = attention_keys_first(q, k, v, mask, 0.3, np.random.default_rng(5), True)
    expected, _ = ops.attention_forward(q, k, v, mask, 0.3, np.random.default_rng(5), True)
    assert cache is None
    np.testing.assert_array_equal(out, expected)
    without, _ = ops.attention_forward(q, k, v, mask, 0.0, None, False)
    assert not np.allclose(out, without)                                    # dropout did act


# --------------------------------------------------------------------------- the registry's choice
def _x(dtype):
    return np.ones((2, 3, 4, 4), dtype)


def test_with_grad_enabled_no_inference_only_speed_up_is_chosen():
    for dtype in (np.float32, np.float64):
        x = _x(dtype)
        assert implementation("gelu", x) == (gelu_exact_threaded, ops.gelu_backward)
        assert op("gelu", x) == (gelu_exact_threaded, ops.gelu_backward)
        for name in ("layer_norm", "attention", "gelu_new", "linear", "tanh"):
            assert implementation(name, x) == registry.REFERENCE[name]
            assert op(name, x) == registry.REFERENCE[name]
            assert implementation(name, x)[1] is not None              # a backward to call


def test_float32_inference_gets_the_shortcuts():
    x = _x(np.float32)
    with no_grad():
        assert op("gelu", x) == (gelu_split, None)
        assert op("layer_norm", x) == (layer_norm_split, None)
        assert op("attention", x) == (attention_split, None)
        assert op("linear", x) == (linear_split, None)
        assert op("gelu_new", x) == registry.REFERENCE["gelu_new"]
    assert implementation("attention", x, inference=True) == (attention_split, None)


def test_float64_inference_gets_the_reference_but_the_exact_threaded_gelu():
    x = _x(np.float64)
    with no_grad():
        assert op("gelu", x) == (gelu_exact_threaded, ops.gelu_backward)
        for name in ("layer_norm", "attention", "linear"):
            assert op(name, x) == registry.REFERENCE[name]
    assert implementation("layer_norm", x, inference=True) == registry.REFERENCE["layer_norm"]


def test_reference_only_turns_every_speed_up_off():
    for dtype in (np.float32, np.float64):
        x = _x(dtype)
        with reference_only():
            for inference in (False, True):
                for name in ("gelu", "layer_norm", "attention"):
                    assert implementation(name, x, inference) == registry.REFERENCE[name]
            with no_grad():
                assert op("gelu", x) == registry.REFERENCE["gelu"]
        assert implementation("gelu", x) == (gelu_exact_threaded, ops.gelu_backward)   # on again after
    with reference_only():
        with reference_only():
            pass
        assert implementation("gelu", _x(np.float32), True) == registry.REFERENCE["gelu"]   # still off: nested
    with pytest.raises(RuntimeError), reference_only():
        raise RuntimeError("the block fails")
    assert implementation("gelu", _x(np.float32), True) == (gelu_split, None)         # restored after an error


def test_register_refuses_an_unknown_op():
    with pytest.raises(ValueError, match="unknown op 'softplus'"):
        registry.register(SpeedUp(op="softplus", forward=np.abs, backward=None, device="cpu"))
    assert not any(op == "softplus" for op, _ in registry._speed_ups)


# --------------------------------------------------------------------------- one batch on every core
@pytest.fixture
def split_everything(cores, monkeypatch):
    """Two cores, and every size worth splitting, so the small test arrays take the split path."""
    cores(2)
    monkeypatch.setattr(cpu, "blas_threads", lambda: 2)
    monkeypatch.setattr(cpu, "SPLIT_MIN_MULTIPLY_ADDS", 0)
    monkeypatch.setattr(cpu, "SPLIT_MIN_SIZE", 0)
    calls = []
    real_run_parts = cpu.run_parts

    def counting_run_parts(work, parts):
        calls.append(parts)
        return real_run_parts(work, parts)

    monkeypatch.setattr(cpu, "run_parts", counting_run_parts)
    return calls


def _blas_threads():
    return [lib.num_threads for lib in cpu._blas_libraries()]


@pytest.mark.parametrize("shape", [(7, 12), (3, 5, 12), (1, 12)])
@pytest.mark.parametrize("bias", [True, False])
def test_linear_split_equals_the_reference(rng, split_everything, shape, bias):
    x = rng.standard_normal(shape).astype(np.float32)
    w = rng.standard_normal((9, 12)).astype(np.float32)
    b = rng.standard_normal(9).astype(np.float32) if bias else None
    threads = _blas_threads()
    y, cache = linear_split(x, w, b)
    expected, _ = ops.linear_forward(x, w, b)
    assert cache is None and y.shape == expected.shape and y.dtype == np.float32
    np.testing.assert_allclose(y, expected, rtol=1e-6, atol=1e-6)
    assert split_everything == [2]
    assert _blas_threads() == threads                             # BLAS's own threads are given back


def test_linear_split_leaves_mixed_precision_and_pool_threads_to_the_reference(rng, split_everything):
    x = rng.standard_normal((8, 12)).astype(np.float32)
    w = rng.standard_normal((9, 12)).astype(np.float32)
    y16, _ = linear_split(x, w, None, np.float16)
    np.testing.assert_array_equal(y16, ops.linear_forward(x, w, None, np.float16)[0])
    with single_threaded():
        y, _ = linear_split(x, w)
    np.testing.assert_array_equal(y, ops.linear_forward(x, w)[0])
    assert split_everything == []


def test_layer_norm_split_equals_the_one_call_bit_for_bit(rng, split_everything):
    x = rng.standard_normal((5, 7, 16)).astype(np.float32) * 3 + 1
    g, b = (rng.standard_normal(16).astype(np.float32) for _ in range(2))
    y, cache = layer_norm_split(x, g, b, 1e-12)
    assert cache is None and split_everything == [2]
    np.testing.assert_array_equal(y, layer_norm_fast(x, g, b, 1e-12)[0])


def test_gelu_split_equals_the_one_thread_gelu_bit_for_bit(rng, split_everything):
    x = rng.standard_normal((300, 1000)).astype(np.float32) * 4      # several GELU chunks
    y, cache = gelu_split(x)
    assert cache is None and split_everything == [2]
    np.testing.assert_array_equal(y, gelu_fast(x)[0])


@pytest.mark.parametrize("mask_kind", ["padding", "none", "full"])
def test_attention_split_equals_the_reference(rng, split_everything, mask_kind):
    q, k, v = _qkv(rng, np.float32, batch=5)
    if mask_kind == "padding":
        mask = _padding_mask([6, 2, 4, 1, 6], 6, np.float32)
    elif mask_kind == "full":
        mask = np.where(rng.random((5, 2, 6, 6)) < 0.7, 0.0, np.finfo(np.float32).min).astype(np.float32)
        mask[..., 0] = 0.0
    else:
        mask = None
    out, cache = attention_split(q, k, v, mask, 0.0, None, False)
    expected, _ = ops.attention_forward(q, k, v, mask, 0.0, None, False)
    assert cache is None and split_everything == [2]
    np.testing.assert_allclose(out, expected, rtol=2e-6, atol=2e-6)


def test_attention_split_balances_the_work_of_long_and_short_sequences():
    lengths = np.array([30, 4, 4, 4, 4, 4, 4, 4])
    cuts = cpu._bounds(8, 2, lengths ** 2 + 1)
    assert cuts.tolist() == [0, 1, 8]                                 # the long one alone
    assert cpu._bounds(10, 3).tolist() == [0, 3, 6, 10]


def test_the_split_uses_as_many_cores_as_blas_may(cores, monkeypatch):
    cores(4)
    for allowed, parts in ((1, 1), (2, 2), (8, 4)):
        monkeypatch.setattr(cpu, "blas_threads", lambda: allowed)
        assert cpu.split_parts(100, 10) == parts
    assert cpu.split_parts(5, 10) == 1                                # too small to pay
    with single_threaded():
        assert cpu.split_parts(100, 10) == 1                          # a thread that keeps its work


@pytest.mark.parametrize("threads", [2, 3])
def test_single_threaded_blas_gives_the_threads_back_also_after_an_error(threads):
    from threadpoolctl import threadpool_limits

    with threadpool_limits(limits=threads, user_api="blas"):
        assert all(n == threads for n in _blas_threads())
        with cpu.single_threaded_blas():
            assert all(n == 1 for n in _blas_threads())
        assert all(n == threads for n in _blas_threads())
        with pytest.raises(RuntimeError):
            with cpu.single_threaded_blas():
                raise RuntimeError("inside")
        assert all(n == threads for n in _blas_threads())


# --------------------------------------------------------------------------- the model, inference mode
def _model_and_batch(act, dtype):
    config = BertConfig(vocab_size=50, hidden_size=24, num_hidden_layers=2, num_attention_heads=3,
                        intermediate_size=40, max_position_embeddings=40, hidden_act=act)
    model = BertModel(config, seed=1, dtype=dtype).eval()
    rng = np.random.default_rng(3)
    for p in model.parameters():                                # non-trivial LayerNorms and biases
        p.data += (0.05 * rng.standard_normal(p.data.shape)).astype(dtype)
    lengths = [9, 3, 17, 1, 9, 12]
    ids = np.zeros((len(lengths), max(lengths)), np.int64)
    mask = np.zeros_like(ids)
    for j, n in enumerate(lengths):
        ids[j, :n], mask[j, :n] = rng.integers(1, 50, size=n), 1
    return model, ids, mask


@pytest.mark.parametrize("act", ["gelu", "gelu_new"])
@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-6), (np.float64, 1e-12)])
def test_model_inference_equals_the_reference_forward(act, dtype, tol):
    model, ids, mask = _model_and_batch(act, dtype)
    with no_grad():                                             # speed-ups (float32) and packing
        hidden, pooled = model.forward(ids, attention_mask=mask)
    with reference_only():                                      # grad on: the reference, padded
        ref_hidden, ref_pooled = model.forward(ids, attention_mask=mask)
    assert hidden.dtype == dtype and hidden.shape == ref_hidden.shape == (6, 17, 24)
    real = mask.astype(bool)
    np.testing.assert_allclose(hidden[real], ref_hidden[real], atol=tol)
    np.testing.assert_allclose(pooled, ref_pooled, atol=tol)
    assert (hidden[~real] == 0).all()                           # padded positions read exactly 0
    assert (ref_hidden[~real] != 0).any()                       # (the padded reference computes them)


@pytest.mark.parametrize("dtype, tol", [(np.float32, 2e-6), (np.float64, 1e-12)])
def test_model_inference_with_output_positions_gives_the_rows_of_the_reference(dtype, tol):
    model, ids, mask = _model_and_batch("gelu", dtype)
    length = ids.shape[1]
    # real positions, a padded one (asked for, so computed) and a [CLS]; in no particular order
    positions = np.array([2 * length + 16, 0 * length + 4, 1 * length + 10, 3 * length + 0, 5 * length + 11])
    assert mask.reshape(-1)[positions].tolist() == [1, 1, 0, 1, 1]
    with no_grad():
        rows, pooled = model.forward(ids, attention_mask=mask, output_positions=positions)
    with reference_only():
        ref_rows, ref_pooled = model.forward(ids, attention_mask=mask, output_positions=positions)
        full, _ = model.forward(ids, attention_mask=mask)
    assert rows.shape == ref_rows.shape == (5, 24)
    np.testing.assert_allclose(rows, ref_rows, atol=tol)
    np.testing.assert_allclose(rows, full.reshape(-1, 24)[positions], atol=tol)
    np.testing.assert_allclose(pooled, ref_pooled, atol=tol)


def test_model_inference_split_over_two_cores_equals_the_reference(split_everything):
    model, ids, mask = _model_and_batch("gelu", np.float32)
    with no_grad():
        hidden, pooled = model.forward(ids, attention_mask=mask)
    with reference_only():
        ref_hidden, ref_pooled = model.forward(ids, attention_mask=mask)
    real = mask.astype(bool)
    np.testing.assert_allclose(hidden[real], ref_hidden[real], atol=2e-6)
    np.testing.assert_allclose(pooled, ref_pooled, atol=2e-6)
    assert len(split_everything) >= 2 * 8                           # each layer: 6 products, attention, 2 LayerNorms


def test_model_inference_without_padding_or_mask_equals_the_reference():
    model, ids, _ = _model_and_batch("gelu", np.float64)
    ids = ids[:, :9]
    for mask in (None, np.ones_like(ids)):
        with no_grad():
            hidden, pooled = model.forward(ids, attention_mask=mask)
        with reference_only():
            ref_hidden, ref_pooled = model.forward(ids, attention_mask=mask)
        np.testing.assert_allclose(hidden, ref_hidden, atol=1e-12)
        np.testing.assert_allclose(pooled, ref_pooled, atol=1e-12)
