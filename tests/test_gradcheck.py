"""The checker itself: it must fail when a backward pass is wrong, and say where."""

import numpy as np
import pytest

from minibert import ops
from minibert.backend import RandomSource
from minibert.gradcheck import check_module, check_op, gradcheck
from minibert.modeling import BertLayer

from conftest import tiny_config


def test_a_wrong_backward_is_caught_and_reported(rng):
    def transposed_weight_backward(dy, cache):        # a classic bug: dW from the wrong side
        dx, dw, db = ops.linear_backward(dy, cache)
        return dx, dw * 1.01, db

    x, w, b = rng.standard_normal((4, 3)), rng.standard_normal((3, 3)), rng.standard_normal(3)
    report = check_op(ops.linear_forward, transposed_weight_backward, [x, w, b], names=["x", "weight", "bias"])
    assert not report.ok
    assert [c.name for c in report.failures] == ["weight"]
    text = str(report)
    assert "FAIL weight" in text and "analytic" in text and "numeric" in text
    with pytest.raises(AssertionError, match="weight"):
        report.raise_if_failed()


def test_layer_norm_backward_missing_a_term_is_caught(rng):
    def incomplete_backward(dy, cache):               # forgets the mean(gx * xhat) term
        xhat, rstd, gamma = cache
        gx = dy * gamma
        dx = rstd * (gx - gx.mean(-1, keepdims=True))
        return dx, (dy * xhat).sum(0), dy.sum(0)

    x = rng.standard_normal((3, 6))
    report = check_op(lambda x, g, b: ops.layer_norm_forward(x, g, b), incomplete_backward,
                      [x, np.ones(6), np.zeros(6)], names=["x", "gamma", "beta"])
    assert [c.name for c in report.failures] == ["x"]


def test_an_all_ones_upstream_gradient_would_hide_this_bug_but_ours_does_not(rng):
    # softmax's gradient with g = ones is exactly zero, so "return zeros" would pass with ones
    def zero_backward(dp, cache):
        return np.zeros_like(cache)

    report = check_op(ops.softmax_forward, zero_backward, [rng.standard_normal((2, 5))])
    assert not report.ok


def test_gradcheck_needs_float64(rng):
    x = rng.standard_normal(3).astype(np.float32)
    with pytest.raises(TypeError, match="float64"):
        gradcheck(lambda: float(x.sum()), {"x": x}, {"x": np.ones(3)})


def test_samples_limit_the_coordinates(rng):
    x = rng.standard_normal((50, 40))
    report = gradcheck(lambda: float((x ** 2).sum()), {"x": x}, {"x": 2 * x}, samples=25)
    assert report.ok and len(report.checks[0].indices) == 25


def test_arrays_of_any_layout_are_perturbed_in_place(rng):
    x = rng.standard_normal((3, 4)).T                      # not contiguous: a flat copy would hide errors
    right = gradcheck(lambda: float((x ** 3).sum()), {"x": x}, {"x": 3 * x ** 2})
    wrong = gradcheck(lambda: float((x ** 3).sum()), {"x": x}, {"x": np.zeros_like(x)})
    assert right.ok and not wrong.ok


def test_mistakes_in_calling_the_checker_are_refused(rng):
    x = rng.standard_normal((2, 3))
    with pytest.raises(ValueError, match=r"gradient for 'x' has shape \(3, 2\), the array \(2, 3\)"):
        gradcheck(lambda: float(x.sum()), {"x": x}, {"x": np.ones((3, 2))})
    with pytest.raises(TypeError, match=r"loss_fn must return a scalar, got an array of shape \(2, 3\)"):
        gradcheck(lambda: x * 2, {"x": x}, {"x": np.ones((2, 3))})
    with pytest.raises(ValueError, match="samples must be a positive integer"):
        gradcheck(lambda: float(x.sum()), {"x": x}, {"x": np.ones((2, 3))}, samples=0)
    a, b = rng.standard_normal(3), rng.standard_normal(3)
    product = (lambda a, b: (a * b, (a, b)), lambda g, cache: (g * cache[1], g * cache[0]))
    with pytest.raises(ValueError, match="1 names for 2 checked inputs"):
        check_op(*product, [a, b], names=["a"])              # would have left b unchecked
    with pytest.raises(ValueError, match="no float array among the inputs"):
        check_op(*product, [[1.0, 2.0], [3.0, 4.0]])


def test_sampled_coordinates_cover_the_whole_array():
    x = np.random.default_rng(0).standard_normal(100)
    wrong = 2 * x
    wrong[50:] = 0                                              # wrong in the second half only
    assert not gradcheck(lambda: float((x ** 2).sum()), {"x": x}, {"x": wrong}, samples=50).ok


def test_one_wrong_coordinate_fails_the_check():
    x = np.random.default_rng(0).standard_normal(20)
    wrong = 2 * x
    wrong[7] += 1.0
    assert not gradcheck(lambda: float((x ** 2).sum()), {"x": x}, {"x": wrong}, samples=None).ok


def test_check_module_twice_on_the_same_module():
    # the second call must not add its gradients to the first call's
    config = tiny_config()
    layer = BertLayer(config, np.random.default_rng(0), RandomSource(0), np.float64)
    hidden = np.random.default_rng(1).standard_normal((2, 4, config.hidden_size))
    check_module(layer, hidden, None, wrt=(0,), samples=5).raise_if_failed()
    check_module(layer, hidden, None, wrt=(0,), samples=5).raise_if_failed()
