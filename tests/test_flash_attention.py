"""Flash attention against the naive op: values, gradients, masks, dropout, tile sizes.

The naive op (minibert/ops/attention.py) is the reference. In float64 the two must agree
to rounding for every shape, mask and tile size, including tiles that do not divide the
sequence; both backward passes are also checked against central finite differences.
"""

from functools import partial

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from minibert.gradcheck import check_op
from minibert.ops.attention import attention_backward, attention_forward
from minibert.ops.flash_attention import (
    flash_attention_backward,
    flash_attention_forward,
    flash_dropout_mask,
)

LOWEST = np.finfo(np.float64).min          # the model's additive mask value for padding


class MaskRNG:
    """Stands in for the naive op's generator: 'draws' a given keep mask (1 = keep, 0 = drop),
    so that the naive op's dropout keeps exactly where the mask says (1 >= p, 0 < p)."""

    def __init__(self, keep):
        self.keep = keep

    def random(self, shape, dtype=np.float64):
        assert tuple(shape) == self.keep.shape
        return self.keep.astype(dtype)


def random_qkv(rng, b, n, tq, tk, d, dtype=np.float64):
    q = rng.standard_normal((b, n, tq, d)).astype(dtype)
    k = rng.standard_normal((b, n, tk, d)).astype(dtype)
    v = rng.standard_normal((b, n, tk, d)).astype(dtype)
    do = rng.standard_normal((b, n, tq, d)).astype(dtype)
    return q, k, v, do


def make_mask(kind, rng, b, n, tq, tk, dtype=np.float64):
    """None, a (B, 1, 1, Tk) padding mask (one sequence fully padded when b > 1), a full
    (B, N, Tq, Tk) random mask with some rows fully masked, or a (Tq, Tk) mask to broadcast."""
    lowest = np.finfo(dtype).min
    if kind == "none":
        return None
    if kind == "padding":
        lengths = rng.integers(1, tk + 1, size=b)
        if b > 1:
            lengths[-1] = 0                            # a sequence with every key masked
        mask = np.zeros((b, 1, 1, tk), dtype)
        for i, length in enumerate(lengths):
            mask[i, ..., length:] = lowest
        return mask
    if kind == "full":
        mask = np.where(rng.random((b, n, tq, tk)) < 0.4, lowest, 0.0).astype(dtype)
        mask[..., rng.integers(tq), :] = lowest        # one query row sees no key at all
        return mask
    if kind == "bias":                                 # any additive values, broadcast over B and N
        return rng.standard_normal((tq, tk)).astype(dtype)
    raise ValueError(kind)


def naive(q, k, v, do, mask, **kwargs):
    o, cache = attention_forward(q, k, v, mask, **kwargs)
    return (o, *attention_backward(do, cache))


def flash(q, k, v, do, mask, **kwargs):
    o, cache = flash_attention_forward(q, k, v, mask, **kwargs)
    return (o, *flash_attention_backward(do, cache))


def assert_same(actual, expected, rtol=1e-10, atol=1e-12):
    for name, a, e in zip(("o", "dq", "dk", "dv"), actual, expected):
        assert np.all(np.isfinite(a)), f"{name} is not finite"
        np.testing.assert_allclose(a, e, rtol=rtol, atol=atol, err_msg=name)


# ============================================================================ equality with naive
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(b=st.integers(1, 3), n=st.integers(1, 3), tq=st.integers(1, 40), tk=st.integers(1, 40),
       d=st.sampled_from([1, 4, 8, 16]), block_q=st.integers(1, 48), block_k=st.integers(1, 48),
       mask_kind=st.sampled_from(["none", "padding", "full", "bias"]), seed=st.integers(0, 2**16))
def test_flash_equals_naive_float64(b, n, tq, tk, d, block_q, block_k, mask_kind, seed):
    rng = np.random.default_rng(seed)
    q, k, v, do = random_qkv(rng, b, n, tq, tk, d)
    mask = make_mask(mask_kind, rng, b, n, tq, tk)
    expected = naive(q, k, v, do, mask)
    actual = flash(q, k, v, do, mask, block_q=block_q, block_k=block_k)
    assert_same(actual, expected)


@pytest.mark.parametrize("blocks", [(1, 1), (5, 7), (16, 16), (64, 64), (128, 256)])
def test_tile_sizes_around_the_sequence_length(rng, blocks):
    q, k, v, do = random_qkv(rng, 2, 2, 64, 48, 8)
    mask = make_mask("padding", rng, 2, 2, 64, 48)
    assert_same(flash(q, k, v, do, mask, block_q=blocks[0], block_k=blocks[1]), naive(q, k, v, do, mask))


def test_float32_close_to_naive(rng):
    q, k, v, do = random_qkv(rng, 2, 3, 70, 70, 16, np.float32)
    mask = make_mask("padding", rng, 2, 3, 70, 70, np.float32)
    actual = flash(q, k, v, do, mask, block_q=32, block_k=16)
    expected = naive(q, k, v, do, mask)
    for a, e in zip(actual, expected):
        assert a.dtype == np.float32
    assert_same(actual, expected, rtol=1e-4, atol=1e-5)


def test_fully_masked_rows_equal_naive_and_are_finite(rng):
    """A padded-out sequence (all keys masked with finfo.min): uniform weights, like naive."""
    q, k, v, do = random_qkv(rng, 2, 2, 9, 11, 4)
    mask = np.zeros((2, 1, 1, 11))
    mask[1] = LOWEST
    actual = flash(q, k, v, do, mask, block_q=4, block_k=3)
    assert_same(actual, naive(q, k, v, do, mask))
    np.testing.assert_allclose(actual[0][1], np.broadcast_to(v[1].mean(axis=1, keepdims=True), (2, 9, 4)))


def test_minus_infinity_mask_gives_zeros_not_nan(rng):
    q, k, v, do = random_qkv(rng, 1, 2, 6, 5, 4)
    mask = np.zeros((1, 1, 6, 5))
    mask[..., 2, :] = -np.inf                          # row 2 sees no key
    mask[..., 4, 1:] = -np.inf                         # row 4 sees key 0 only
    o, dq, dk, dv = flash(q, k, v, do, mask, block_q=2, block_k=2)
    for x in (o, dq, dk, dv):
        assert np.all(np.isfinite(x))
    np.testing.assert_array_equal(o[..., 2, :], 0.0)
    np.testing.assert_allclose(o[..., 4, :], v[..., 0, :])
    visible = [0, 1, 3, 5]                             # the other rows equal the naive op
    expected = naive(q[:, :, visible], k, v, do[:, :, visible], mask[:, :, visible])
    np.testing.assert_allclose(o[:, :, visible], expected[0], rtol=1e-12)


def test_cross_attention_shapes_and_value_size(rng):
    q = rng.standard_normal((2, 3, 7, 8))
    k = rng.standard_normal((2, 3, 13, 8))
    v = rng.standard_normal((2, 3, 13, 5))             # value size may differ from head size
    do = rng.standard_normal((2, 3, 7, 5))
    assert_same(flash(q, k, v, do, None, block_q=3, block_k=4), naive(q, k, v, do, None))


def test_non_contiguous_inputs(rng):
    """The model passes (B, T, N, D) -> (B, N, T, D) transposed views."""
    x = rng.standard_normal((3, 2, 20, 3, 8))          # (3 tensors, B, T, N, D)
    q, k, v = (t.transpose(0, 2, 1, 3) for t in x)
    do = rng.standard_normal(q.shape)
    assert_same(flash(q, k, v, do, None, block_q=6, block_k=7), naive(q, k, v, do, None))


# ============================================================================ dropout
def test_dropout_equals_naive_with_the_materialised_mask(rng):
    b, n, tq, tk, p, seed = 2, 3, 19, 23, 0.3, 12345
    q, k, v, do = random_qkv(rng, b, n, tq, tk, 8)
    mask = make_mask("padding", rng, b, n, tq, tk)
    keep = flash_dropout_mask(seed, (b, n, tq, tk), p)
    assert keep.shape == (b, n, tq, tk) and keep.dtype == bool
    expected = naive(q, k, v, do, mask, dropout_p=p, rng=MaskRNG(keep))
    actual = flash(q, k, v, do, mask, dropout_p=p, dropout_seed=seed, block_q=4, block_k=6)
    assert_same(actual, expected)


def test_dropout_is_reproducible_from_the_seed(rng):
    q, k, v, do = random_qkv(rng, 2, 2, 17, 17, 4)
    run = partial(flash, q, k, v, do, None, dropout_p=0.2)
    first = run(rng=np.random.default_rng(7), block_q=5, block_k=3)
    again = run(rng=np.random.default_rng(7), block_q=8, block_k=17)   # other tiles, same mask
    other = run(rng=np.random.default_rng(8), block_q=5, block_k=3)
    for a, b in zip(first, again):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)
    assert not np.allclose(first[0], other[0])


def test_dropout_seed_is_drawn_once_and_cached(rng):
    q, k, v, _ = random_qkv(rng, 1, 2, 8, 8, 4)
    generator = np.random.default_rng(3)
    _, cache = flash_attention_forward(q, k, v, None, 0.5, generator)
    seed, p = cache[7]
    assert p == 0.5
    assert seed == np.random.default_rng(3).integers(0, 2**62)
    _, cache = flash_attention_forward(q, k, v, None, 0.5, generator)
    assert cache[7][0] != seed                         # the generator moved on: a new mask


def test_no_dropout_in_evaluation_or_at_zero_rate(rng):
    q, k, v, do = random_qkv(rng, 1, 2, 8, 8, 4)
    plain = flash(q, k, v, do, None)
    for kwargs in ({"dropout_p": 0.5, "rng": rng, "training": False}, {"dropout_p": 0.0, "rng": rng}):
        for a, b in zip(flash(q, k, v, do, None, **kwargs), plain):
            np.testing.assert_array_equal(a, b)


def test_dropout_mask_statistics():
    p = 0.1
    keep = flash_dropout_mask(2024, (4, 12, 128, 128), p)
    assert abs(keep.mean() - (1 - p)) < 0.005          # 786k draws: sd of the mean ~ 0.0003
    for axis in range(4):                              # no batch, head, row or column pattern
        means = keep.mean(axis=tuple(a for a in range(4) if a != axis))
        assert np.all(np.abs(means - (1 - p)) < 0.05)
    # neighbouring decisions are uncorrelated
    drop = (~keep).astype(np.float64) - p
    for shifted, base in ((drop[..., 1:], drop[..., :-1]), (drop[..., 1:, :], drop[..., :-1, :]),
                          (drop[:, 1:], drop[:, :-1]), (drop[1:], drop[:-1])):
        corr = (shifted * base).mean() / (p * (1 - p))
        assert abs(corr) < 0.01
    # an entry depends on (seed, b, h, i, j) only, not on the shape it was drawn in
    small = flash_dropout_mask(2024, (2, 3, 10, 20), p)
    np.testing.assert_array_equal(small, keep[:2, :3, :10, :20])


# ============================================================================ finite differences
def _gradcheck(forward, backward, q, k, v, mask):
    report = check_op(lambda q, k, v: forward(q, k, v, mask), backward, [q, k, v],
                      names=["q", "k", "v"], samples=25, atol=1e-7, rtol=1e-5)
    report.raise_if_failed()


@pytest.mark.parametrize("mask_kind", ["none", "padding", "bias"])
def test_gradcheck_naive(rng, mask_kind):
    q, k, v, _ = random_qkv(rng, 2, 2, 7, 9, 4)
    mask = make_mask(mask_kind, rng, 2, 2, 7, 9)
    if mask_kind == "padding":
        mask[-1, ..., :3] = 0.0                        # every row keeps a visible key: a smooth function
    _gradcheck(attention_forward, attention_backward, q, k, v, mask)


@pytest.mark.parametrize("mask_kind", ["none", "padding", "bias"])
def test_gradcheck_flash(rng, mask_kind):
    q, k, v, _ = random_qkv(rng, 2, 2, 7, 9, 4)
    mask = make_mask(mask_kind, rng, 2, 2, 7, 9)
    if mask_kind == "padding":
        mask[-1, ..., :3] = 0.0
    forward = partial(flash_attention_forward, block_q=3, block_k=4)
    _gradcheck(forward, flash_attention_backward, q, k, v, mask)


def test_gradcheck_flash_with_dropout(rng):
    """With a fixed seed the dropout mask is fixed, so the op is a smooth function again."""
    q, k, v, _ = random_qkv(rng, 2, 2, 7, 9, 4)
    forward = partial(flash_attention_forward, dropout_p=0.3, dropout_seed=99, block_q=2, block_k=5)
    _gradcheck(forward, flash_attention_backward, q, k, v, None)


def test_gradcheck_naive_with_dropout(rng):
    q, k, v, _ = random_qkv(rng, 2, 2, 7, 9, 4)
    keep = flash_dropout_mask(99, (2, 2, 7, 9), 0.3)
    forward = partial(attention_forward, dropout_p=0.3, rng=MaskRNG(keep))
    _gradcheck(forward, attention_backward, q, k, v, None)


# ============================================================================ bad input
@pytest.mark.parametrize("change, error", [
    (lambda a: dict(a, q=a["q"][0]), ValueError),                              # 3-d q
    (lambda a: dict(a, k=a["k"][:, :, :, :3]), ValueError),                    # head sizes differ
    (lambda a: dict(a, v=a["v"][:, :, :4]), ValueError),                       # v and k lengths differ
    (lambda a: dict(a, v=a["v"].astype(np.float32)), TypeError),               # mixed dtypes
    (lambda a: dict(a, q=a["q"].astype(np.int64)), TypeError),
    (lambda a: dict(a, mask=np.zeros((2, 1, 1, 6), dtype=bool)), TypeError),   # boolean mask
    (lambda a: dict(a, mask=np.zeros((2, 1, 1, 5))), ValueError),              # wrong key length
    (lambda a: dict(a, block_q=0), ValueError),
    (lambda a: dict(a, block_k=2.5), ValueError),
    (lambda a: dict(a, dropout_p=1.0), ValueError),
    (lambda a: dict(a, dropout_p=0.1), ValueError),                            # dropout without rng
])
def test_bad_input_is_refused(rng, change, error):
    q, k, v, _ = random_qkv(rng, 2, 3, 5, 6, 4)
    args = change(dict(q=q, k=k, v=v, mask=None))
    with pytest.raises(error):
        flash_attention_forward(**args)


# ============================================================================ in the model
def test_model_with_flash_attention_equals_naive(rng):
    """attn_implementation="flash" changes nothing but the op: same outputs, same gradients."""
    from conftest import tiny_config

    from minibert.modeling import BertModel

    ids = rng.integers(0, 31, (3, 11))
    attention_mask = np.ones((3, 11), dtype=np.int64)
    attention_mask[1, 7:] = 0                            # a padded sequence
    results = {}
    for name in ("naive", "flash"):
        model = BertModel(tiny_config(attn_implementation=name), seed=3, dtype=np.float64)
        seq, pooled = model.forward(ids, None, attention_mask)
        grad_rng = np.random.default_rng(0)
        model.backward(grad_rng.standard_normal(seq.shape), grad_rng.standard_normal(pooled.shape))
        results[name] = (seq, pooled, {n: p.grad.copy() for n, p in model.named_parameters()})
    (seq, pooled, grads), (seq_f, pooled_f, grads_f) = results["naive"], results["flash"]
    np.testing.assert_allclose(seq_f, seq, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pooled_f, pooled, rtol=1e-10, atol=1e-12)
    assert grads.keys() == grads_f.keys()
    for name in grads:
        np.testing.assert_allclose(grads_f[name], grads[name], rtol=1e-9, atol=1e-11, err_msg=name)
