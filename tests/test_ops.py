"""Finite-difference checks of every op's backward (float64, random upstream gradient).

Ops checked here, by name: linear, embedding, layer_norm, gelu, gelu_tanh, tanh, softmax,
dropout, attention, cross_entropy, distillation (flash attention: tests/test_flash_attention.py; mse:
tests/test_heads.py).
"""

import numpy as np
import pytest

from minibert import ops
from minibert.gradcheck import check_op, gradcheck


def test_linear(rng):
    x, w, b = rng.standard_normal((2, 5, 7)), rng.standard_normal((4, 7)), rng.standard_normal(4)
    check_op(ops.linear_forward, ops.linear_backward, [x, w, b], names=["x", "weight", "bias"]).raise_if_failed()


def test_linear_without_bias(rng):
    x, w = rng.standard_normal((6, 3)), rng.standard_normal((5, 3))
    report = check_op(lambda x, w: ops.linear_forward(x, w, None), ops.linear_backward, [x, w])
    report.raise_if_failed()


def test_linear_in_mixed_precision_matches_float64_to_float16_rounding(rng):
    """compute_dtype=float16: products of float16-rounded inputs, results in the weight's dtype."""
    x, w, b = (rng.standard_normal(s).astype(np.float32) for s in ((3, 6, 32), (16, 32), (16,)))
    y, cache = ops.linear_forward(x, w, b, compute_dtype=np.float16)
    assert y.dtype == np.float32 and cache[0].dtype == cache[1].dtype == np.float16
    exact = x.astype(np.float64) @ w.T.astype(np.float64) + b
    # float16 keeps 11 significant bits: each input is off by at most 2^-11 relatively
    tolerance = 2 * 2.0 ** -11 * (np.abs(x).astype(np.float64) @ np.abs(w.T).astype(np.float64))
    assert (np.abs(y - exact) <= tolerance + 1e-6).all()
    assert not np.array_equal(y, ops.linear_forward(x, w, b)[0])         # it really rounded
    dy = rng.standard_normal(y.shape).astype(np.float32)
    dx, dw, db = ops.linear_backward(dy, cache)
    assert dx.dtype == dw.dtype == db.dtype == np.float32
    dx64, dw64, db64 = ops.linear_backward(dy.astype(np.float64), ops.linear_forward(
        x.astype(np.float64), w.astype(np.float64), b.astype(np.float64))[1])
    np.testing.assert_allclose(dx, dx64, rtol=0, atol=np.abs(dx64).max() * 1e-2)
    np.testing.assert_allclose(dw, dw64, rtol=0, atol=np.abs(dw64).max() * 1e-2)
    np.testing.assert_allclose(db, db64, rtol=1e-5)                        # the bias sum stays float32


def test_linear_backward_in_mixed_precision_rounds_dy_to_float16(rng):
    # the backward products run on float16 operands: dy is rounded too, not only the cached x and W
    x, w = rng.standard_normal((5, 8)).astype(np.float32), rng.standard_normal((4, 8)).astype(np.float32)
    _, cache = ops.linear_forward(x, w, None, compute_dtype=np.float16)
    dy = rng.standard_normal((5, 4)).astype(np.float32)
    dx, dw, _ = ops.linear_backward(dy, cache)
    dy16 = dy.astype(np.float16)
    np.testing.assert_array_equal(dx, (dy16 @ w.astype(np.float16)).astype(np.float32))
    np.testing.assert_array_equal(dw, (dy16.T @ x.astype(np.float16)).astype(np.float32))


def test_embedding_sums_repeated_ids(rng):
    table = rng.standard_normal((9, 4))
    ids = np.array([[1, 3, 1], [8, 1, 0]])                    # id 1 appears three times
    y, cache = ops.embedding_forward(ids, table)
    g = rng.standard_normal(y.shape)
    rows, drows = ops.embedding_backward(g, cache)
    dense = np.zeros_like(table)
    dense[rows] = drows

    def loss():
        return float((ops.embedding_forward(ids, table)[0] * g).sum())

    gradcheck(loss, {"table": table}, {"table": dense}, samples=None).raise_if_failed()
    np.testing.assert_array_equal(rows, [0, 1, 3, 8])


def test_layer_norm(rng):
    x = rng.standard_normal((3, 4, 6)) * 3 + 1
    gamma, beta = rng.standard_normal(6), rng.standard_normal(6)
    check_op(lambda x, g, b: ops.layer_norm_forward(x, g, b, 1e-12), ops.layer_norm_backward,
             [x, gamma, beta], names=["x", "gamma", "beta"]).raise_if_failed()


def test_layer_norm_output_is_normalised(rng):
    x = rng.standard_normal((5, 32)) * 4 - 2
    y, _ = ops.layer_norm_forward(x, np.ones(32), np.zeros(32), 1e-12)
    np.testing.assert_allclose(y.mean(-1), 0, atol=1e-12)
    np.testing.assert_allclose(y.var(-1), 1, rtol=1e-9)          # biased variance, as BERT


@pytest.mark.parametrize("name", ["gelu", "gelu_new"])
def test_gelu(rng, name):
    forward, backward = ops.ACTIVATIONS[name]
    x = rng.standard_normal((4, 9)) * 3
    check_op(forward, backward, [x], samples=None).raise_if_failed()


def test_exact_gelu_values():
    from scipy.stats import norm

    x = np.linspace(-6, 6, 101)
    np.testing.assert_allclose(ops.gelu_forward(x)[0], x * norm.cdf(x), rtol=1e-13, atol=1e-15)


def test_tanh(rng):
    check_op(ops.tanh_forward, ops.tanh_backward, [rng.standard_normal((3, 5))], samples=None).raise_if_failed()


def test_relu(rng):
    x = rng.standard_normal((4, 7))
    x[np.abs(x) < 1e-3] = 0.5                                            # away from the kink at 0
    check_op(ops.relu_forward, ops.relu_backward, [x], samples=None).raise_if_failed()
    y, cache = ops.relu_forward(np.array([-1.0, 0.0, 2.0]))
    assert y.tolist() == [0, 0, 2] and ops.relu_backward(np.ones(3), cache).tolist() == [0, 0, 1]   # 0 at 0


def test_softmax(rng):
    check_op(ops.softmax_forward, ops.softmax_backward, [rng.standard_normal((2, 3, 7)) * 4]).raise_if_failed()


def test_softmax_of_large_scores_does_not_overflow():
    p, _ = ops.softmax_forward(np.array([[1000.0, 1001.0], [-1000.0, -1001.0]], dtype=np.float32))
    e = np.exp(-1.0)
    np.testing.assert_allclose(p, [[e / (1 + e), 1 / (1 + e)], [1 / (1 + e), e / (1 + e)]], rtol=1e-6)


def test_dropout_backward_uses_the_cached_mask(rng):
    x = rng.standard_normal((6, 8))
    seed = 7

    def forward(x):
        return ops.dropout_forward(x, 0.3, np.random.default_rng(seed))   # the same mask every call

    check_op(forward, ops.dropout_backward, [x], samples=None).raise_if_failed()


def test_dropout_scales_kept_values_and_is_off_in_eval(rng):
    x = np.ones((200, 200))
    y, (keep, _) = ops.dropout_forward(x, 0.25, np.random.default_rng(0))
    assert set(np.unique(y)) == {0.0, 1 / 0.75}
    assert abs(keep.mean() - 0.75) < 0.01
    y_eval, cache = ops.dropout_forward(x, 0.25, None, training=False)
    assert y_eval is x and cache is None


def test_attention_with_padding_mask(rng):
    q, k, v = (rng.standard_normal((2, 3, 5, 4)) for _ in range(3))
    mask = np.zeros((2, 1, 1, 5))
    mask[1, ..., 3:] = np.finfo(np.float64).min
    check_op(lambda q, k, v: ops.attention_forward(q, k, v, mask), ops.attention_backward,
             [q, k, v], names=["q", "k", "v"]).raise_if_failed()


def test_attention_with_dropout(rng):
    q, k, v = (rng.standard_normal((1, 2, 6, 3)) for _ in range(3))

    def forward(q, k, v):
        return ops.attention_forward(q, k, v, None, 0.2, np.random.default_rng(3))

    check_op(forward, ops.attention_backward, [q, k, v], names=["q", "k", "v"]).raise_if_failed()


def test_cross_entropy_with_ignored_rows(rng):
    logits = rng.standard_normal((6, 5)) * 2
    labels = np.array([1, -100, 4, 0, -100, 2])

    def forward(z):
        loss, cache = ops.cross_entropy_forward(z, labels)
        return np.array(loss), cache

    report = check_op(forward, lambda g, cache: ops.cross_entropy_backward(float(g), cache), [logits],
                      samples=None)
    report.raise_if_failed()
    # ignored rows get exactly zero gradient, and the loss is the mean over counted rows
    dz = ops.cross_entropy_backward(1.0, ops.cross_entropy_forward(logits, labels)[1])
    assert not dz[[1, 4]].any()
    logp = logits - np.log(np.exp(logits).sum(-1, keepdims=True))
    expected = -np.mean([logp[i, labels[i]] for i in (0, 2, 3, 5)])
    assert ops.cross_entropy_forward(logits, labels)[0] == pytest.approx(expected, rel=1e-12)


def test_cross_entropy_all_ignored_is_zero_not_nan(rng):
    loss, cache = ops.cross_entropy_forward(rng.standard_normal((3, 4)), np.full(3, -100))
    assert loss == 0.0
    assert not ops.cross_entropy_backward(1.0, cache).any()


@pytest.mark.parametrize("temperature", [1.0, 2.5])
def test_distillation(rng, temperature):
    student, teacher = rng.standard_normal((5, 3)) * 2, rng.standard_normal((5, 3)) * 2

    def forward(z):
        loss, cache = ops.distillation_forward(z, teacher, temperature)
        return np.array(loss), cache

    report = check_op(forward, lambda g, cache: ops.distillation_backward(float(g), cache), [student],
                      samples=None)
    report.raise_if_failed()
    # the loss is T^2 times the mean KL divergence, and zero when the student equals the teacher
    p = np.exp(teacher / temperature) / np.exp(teacher / temperature).sum(-1, keepdims=True)
    q = np.exp(student / temperature) / np.exp(student / temperature).sum(-1, keepdims=True)
    expected = temperature ** 2 * np.mean((p * np.log(p / q)).sum(-1))
    assert ops.distillation_forward(student, teacher, temperature)[0] == pytest.approx(expected, rel=1e-12)
    loss, cache = ops.distillation_forward(teacher + 7.0, teacher, temperature)  # a shift changes no softmax
    assert loss == pytest.approx(0.0, abs=1e-12)
    assert np.abs(ops.distillation_backward(1.0, cache)).max() < 1e-12


def test_distillation_rejects_bad_input(rng):
    with pytest.raises(ValueError, match="same"):
        ops.distillation_forward(rng.standard_normal((4, 3)), rng.standard_normal((4, 2)))
    with pytest.raises(ValueError, match="temperature"):
        ops.distillation_forward(rng.standard_normal((4, 3)), rng.standard_normal((4, 3)), 0.0)


def test_ops_keep_float32(rng):
    x = rng.standard_normal((2, 3, 8)).astype(np.float32)
    w = rng.standard_normal((8, 8)).astype(np.float32)
    gamma, beta = np.ones(8, np.float32), np.zeros(8, np.float32)
    assert ops.linear_forward(x, w, None)[0].dtype == np.float32
    assert ops.layer_norm_forward(x, gamma, beta)[0].dtype == np.float32
    assert ops.gelu_forward(x)[0].dtype == np.float32
    assert ops.gelu_backward(x, ops.gelu_forward(x)[1]).dtype == np.float32
    assert ops.softmax_forward(x)[0].dtype == np.float32


def test_shapes_and_probabilities_the_ops_cannot_use(rng):
    logits = rng.standard_normal((4, 3))
    with pytest.raises(ValueError, match=r"logits \(R, C\) and labels \(R,\), got \(4, 3\) and \(4, 1\)"):
        ops.cross_entropy_forward(logits, np.zeros((4, 1), dtype=np.int64))   # would broadcast to (4, 4)
    for p in (1.0, 1.5, -0.5):
        with pytest.raises(ValueError, match="dropout probability must be in"):
            ops.dropout_forward(logits, p, np.random.default_rng(0))


def test_layer_norm_eps_sits_inside_the_square_root():
    # eps = 1e-12 elsewhere hides where it goes; with a small variance and eps = 1e-2 it shows
    x = 0.05 * np.random.default_rng(0).standard_normal((4, 8))
    y, _ = ops.layer_norm_forward(x, np.ones(8), np.zeros(8), 1e-2)
    mean, var = x.mean(-1, keepdims=True), x.var(-1, keepdims=True)
    np.testing.assert_allclose(y, (x - mean) / np.sqrt(var + 1e-2), rtol=1e-12)
