"""Optimizers, schedules and clipping against values computed by hand.

The references here are plain Python loops over scalars, written from the formulas and
independent of minibert.optim; PyTorch is a second reference when installed.
"""

import math

import numpy as np
import pytest

from minibert.nn import Parameter
from minibert.optim import (
    SGD,
    AdamW,
    DynamicLossScaler,
    clip_grad_norm,
    constant,
    get_schedule,
    linear_warmup_linear_decay,
    warmup_cosine,
)

NAMES = ("bert.encoder.layer.0.attention.self.query.weight",
         "bert.encoder.layer.0.attention.self.query.bias",
         "bert.encoder.layer.0.attention.output.LayerNorm.weight",
         "bert.encoder.layer.0.attention.output.LayerNorm.bias")
SHAPES = ((3, 4), (3,), (4,), (4,))


def make_params(seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    return [(name, Parameter(rng.standard_normal(shape).astype(dtype))) for name, shape in zip(NAMES, SHAPES)]


def gradient_sequence(steps, seed=1):
    """steps x {name: gradient array}, fixed in advance so every optimizer sees the same ones."""
    rng = np.random.default_rng(seed)
    return [{name: rng.standard_normal(shape) for name, shape in zip(NAMES, SHAPES)} for _ in range(steps)]


def run(opt, params, grads):
    for step_grads in grads:
        for name, p in params:
            p.grad[...] = step_grads[name]
        opt.step()
        opt.zero_grad()


def decays(name):
    return not ("bias" in name or "LayerNorm" in name)


# --------------------------------------------------------------------------- hand references
def adamw_by_hand(p0, grads, lr, beta1, beta2, eps, wd, bias_correction):
    """Scalar-by-scalar AdamW: lists of floats in, list of floats out."""
    p = list(p0)
    m = [0.0] * len(p)
    v = [0.0] * len(p)
    for t, g in enumerate(grads, start=1):
        for i in range(len(p)):
            m[i] = beta1 * m[i] + (1 - beta1) * g[i]
            v[i] = beta2 * v[i] + (1 - beta2) * g[i] ** 2
            if bias_correction:
                m_hat = m[i] / (1 - beta1 ** t)
                v_hat = v[i] / (1 - beta2 ** t)
                p[i] = p[i] - lr * wd * p[i]
                p[i] = p[i] - lr * m_hat / (math.sqrt(v_hat) + eps)
            else:
                p[i] = p[i] - lr * (m[i] / (math.sqrt(v[i]) + eps) + wd * p[i])
    return p


def sgd_by_hand(p0, grads, lr, momentum, wd):
    p = list(p0)
    buf = [0.0] * len(p)
    for g in grads:
        for i in range(len(p)):
            buf[i] = momentum * buf[i] + g[i] + wd * p[i]
            p[i] = p[i] - lr * buf[i]
    return p


@pytest.mark.parametrize("bias_correction", [True, False])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_adamw_matches_hand_computation(bias_correction, weight_decay):
    lr, betas, eps, steps = 0.05, (0.8, 0.95), 1e-6, 7
    params = make_params()
    start = {name: p.data.copy() for name, p in params}
    grads = gradient_sequence(steps)
    opt = AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                bias_correction=bias_correction)
    run(opt, params, grads)
    for name, p in params:
        wd = weight_decay if decays(name) else 0.0
        expected = adamw_by_hand(start[name].ravel().tolist(), [g[name].ravel().tolist() for g in grads],
                                 lr, *betas, eps, wd, bias_correction)
        np.testing.assert_allclose(p.data.ravel(), expected, rtol=1e-12, atol=1e-14, err_msg=name)
    assert opt.step_count == steps


def test_bias_correction_changes_first_step():
    """With bias correction the first step moves every coordinate by about lr (m_hat/sqrt(v_hat)=sign g)."""
    params = make_params()
    start = {name: p.data.copy() for name, p in params}
    grads = gradient_sequence(1)
    run(AdamW(params, lr=0.01, eps=1e-12, weight_decay=0.0, bias_correction=True), params, grads)
    for name, p in params:
        np.testing.assert_allclose(start[name] - p.data, 0.01 * np.sign(grads[0][name]), rtol=1e-9)


def test_no_decay_by_name():
    """With zero gradients only weight decay moves parameters: weights shrink, biases and LayerNorm stay."""
    params = make_params()
    start = {name: p.data.copy() for name, p in params}
    opt = AdamW(params, lr=0.1, weight_decay=0.5)
    assert opt.decays == {name: decays(name) for name in NAMES}
    opt.step()
    for name, p in params:
        if decays(name):
            np.testing.assert_allclose(p.data, start[name] * (1 - 0.1 * 0.5))
        else:
            np.testing.assert_array_equal(p.data, start[name])
    # custom patterns: decay everything
    params = make_params()
    assert all(AdamW(params, no_decay=()).decays.values())


@pytest.mark.parametrize("momentum,weight_decay", [(0.0, 0.0), (0.9, 0.0), (0.9, 0.01)])
def test_sgd_matches_hand_computation(momentum, weight_decay):
    lr, steps = 0.1, 5
    params = make_params()
    start = {name: p.data.copy() for name, p in params}
    grads = gradient_sequence(steps)
    run(SGD(params, lr=lr, momentum=momentum, weight_decay=weight_decay), params, grads)
    for name, p in params:
        wd = weight_decay if decays(name) else 0.0
        expected = sgd_by_hand(start[name].ravel().tolist(), [g[name].ravel().tolist() for g in grads],
                               lr, momentum, wd)
        np.testing.assert_allclose(p.data.ravel(), expected, rtol=1e-12, atol=1e-14, err_msg=name)


@pytest.mark.parametrize("make_opt", [lambda ps: AdamW(ps, lr=0.01), lambda ps: SGD(ps, lr=0.01, momentum=0.9)])
def test_updates_are_in_place_and_keep_dtype(make_opt):
    params = make_params(dtype=np.float32)
    views = {name: p.data[...] for name, p in params}      # other code may hold views
    opt = make_opt(params)
    run(opt, params, gradient_sequence(2))
    for name, p in params:
        assert p.data.dtype == np.float32
        assert np.shares_memory(views[name], p.data)
        assert not p.grad.any()                        # zero_grad cleared it in place


def test_state_dict_round_trip_is_bit_identical():
    grads32 = [{k: v.astype(np.float32) for k, v in g.items()} for g in gradient_sequence(10)]
    # uninterrupted: 10 steps
    params = make_params(dtype=np.float32)
    run(AdamW(params, lr=0.01, weight_decay=0.1), params, grads32)
    # interrupted after 4 steps, state saved, restored into fresh objects, 6 more steps
    first = make_params(dtype=np.float32)
    opt = AdamW(first, lr=0.01, weight_decay=0.1)
    run(opt, first, grads32[:4])
    saved_state = opt.state_dict()
    saved_params = {name: p.data.copy() for name, p in first}
    run(opt, first, grads32[4:5])                       # later steps must not alter the saved state
    for key, value in saved_state.items():
        assert isinstance(value, (int, float, str, np.ndarray)), key
    second = make_params(seed=99, dtype=np.float32)
    for name, p in second:
        p.data[...] = saved_params[name]
    resumed = AdamW(second, lr=0.01, weight_decay=0.1)
    resumed.load_state_dict(saved_state)
    assert resumed.step_count == 4
    run(resumed, second, grads32[4:])
    for (name, a), (_, b) in zip(params, second):
        np.testing.assert_array_equal(a.data, b.data, err_msg=name)


def test_load_state_dict_rejects_mismatch():
    opt = AdamW(make_params(), lr=0.01)
    state = opt.state_dict()
    with pytest.raises(ValueError, match="AdamW state"):
        SGD(make_params(), lr=0.01).load_state_dict(state)
    del state[f"m.{NAMES[0]}"]
    with pytest.raises(KeyError, match="missing"):
        opt.load_state_dict(state)


# --------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,fragment", [
    (dict(lr=-1e-3), "lr must be >= 0, got -0.001"),
    (dict(betas=(1.0, 0.999)), "betas[0] must be < 1, got 1.0"),
    (dict(betas=(0.9, -0.1)), "betas[1] must be >= 0, got -0.1"),
    (dict(eps=0.0), "eps must be > 0, got 0.0"),
    (dict(weight_decay=-0.01), "weight_decay must be >= 0, got -0.01"),
])
def test_adamw_bad_hyperparameters(kwargs, fragment):
    with pytest.raises(ValueError) as info:
        AdamW(make_params(), **kwargs)
    assert fragment in str(info.value)


def test_bad_lr_and_params():
    opt = SGD(make_params(), lr=0.1)
    with pytest.raises(ValueError, match="lr must be >= 0"):
        opt.lr = -1
    with pytest.raises(ValueError, match="momentum"):
        SGD(make_params(), lr=0.1, momentum=-0.5)
    with pytest.raises(ValueError, match="momentum must be < 1"):
        SGD(make_params(), lr=0.1, momentum=1.5)
    from minibert.modeling import BertConfig, BertModel

    with pytest.raises(TypeError, match=r"BertModel.named_parameters\(\), not the model itself"):
        AdamW(BertModel(BertConfig(vocab_size=10, hidden_size=4, num_hidden_layers=1, num_attention_heads=1,
                                   intermediate_size=8, max_position_embeddings=8)), lr=0.1)
    with pytest.raises(TypeError, match="no_decay must be a list"):
        AdamW(make_params(), lr=0.1, no_decay="bias")           # would be the patterns 'b', 'i', 'a', 's'
    with pytest.raises(ValueError, match="no parameters"):
        AdamW([])
    with pytest.raises(TypeError, match="named_parameters"):
        AdamW([np.zeros(3)])


# --------------------------------------------------------------------------- schedules
def test_linear_schedule_key_steps():
    f = lambda s: linear_warmup_linear_decay(s, 1.0, warmup_steps=10, total_steps=110)  # noqa: E731
    assert f(0) == 0.0
    assert f(5) == pytest.approx(0.5)
    assert f(10) == pytest.approx(1.0)
    assert f(60) == pytest.approx(0.5)
    assert f(110) == 0.0 and f(500) == 0.0


def test_cosine_schedule_key_steps():
    f = lambda s: warmup_cosine(s, 2.0, warmup_steps=10, total_steps=110, min_lr=0.2)  # noqa: E731
    assert f(0) == 0.0
    assert f(5) == pytest.approx(1.0)
    assert f(10) == pytest.approx(2.0)
    assert f(60) == pytest.approx(1.1)              # half way: the mean of 2.0 and 0.2
    assert f(110) == pytest.approx(0.2) and f(1000) == pytest.approx(0.2)


def test_schedules_without_warm_up_start_at_the_full_rate():
    assert linear_warmup_linear_decay(0, 1.0, warmup_steps=0, total_steps=10) == 1.0
    assert warmup_cosine(0, 2.0, warmup_steps=0, total_steps=10, min_lr=0.2) == pytest.approx(2.0)


def test_constant_and_get_schedule():
    assert constant(0, 0.3) == 0.3 and constant(10**6, 0.3) == 0.3
    assert constant(2, 0.3, warmup_steps=4) == pytest.approx(0.15)
    f = get_schedule("linear", 1.0, warmup_steps=10, total_steps=110)
    assert [f(s) for s in (0, 10, 60)] == [linear_warmup_linear_decay(s, 1.0, 10, 110) for s in (0, 10, 60)]
    with pytest.raises(ValueError, match="unknown schedule"):
        get_schedule("exponential", 1.0)
    with pytest.raises(ValueError, match="warmup_steps"):
        get_schedule("linear", 1.0, warmup_steps=20, total_steps=10)
    with pytest.raises(ValueError, match="needs total_steps"):
        get_schedule("cosine", 1.0)


# --------------------------------------------------------------------------- clipping
def test_clip_grad_norm():
    params = make_params()
    grads = gradient_sequence(1)[0]
    for name, p in params:
        p.grad[...] = grads[name]
    expected_norm = math.sqrt(sum(float((g ** 2).sum()) for g in grads.values()))
    # above the norm: nothing changes
    assert clip_grad_norm(params, expected_norm * 2) == pytest.approx(expected_norm)
    for name, p in params:
        np.testing.assert_array_equal(p.grad, grads[name])
    # below: all gradients scaled by the same factor, to norm max_norm
    assert clip_grad_norm([p for _, p in params], 1.0) == pytest.approx(expected_norm)
    new_norm = math.sqrt(sum(float((p.grad ** 2).sum()) for _, p in params))
    assert new_norm == pytest.approx(1.0, rel=1e-5)
    for name, p in params:
        np.testing.assert_allclose(p.grad, grads[name] / expected_norm, rtol=1e-5)
    # non-finite gradients are reported, not hidden
    params[0][1].grad[0, 0] = np.nan
    assert math.isnan(clip_grad_norm(params, 1.0))
    with pytest.raises(ValueError, match="max_norm"):
        clip_grad_norm(params, 0.0)


# --------------------------------------------------------------------------- PyTorch reference
@pytest.mark.reference
@pytest.mark.parametrize("weight_decay", [0.0, 0.05])
def test_adamw_matches_torch(weight_decay):
    torch = pytest.importorskip("torch")
    lr, betas, eps, steps = 0.03, (0.9, 0.999), 1e-6, 8
    params = make_params()
    grads = gradient_sequence(steps)
    tensors = {name: torch.tensor(p.data.copy(), dtype=torch.float64, requires_grad=True) for name, p in params}
    groups = [
        {"params": [tensors[n] for n in NAMES if decays(n)], "weight_decay": weight_decay},
        {"params": [tensors[n] for n in NAMES if not decays(n)], "weight_decay": 0.0},
    ]
    torch_opt = torch.optim.AdamW(groups, lr=lr, betas=betas, eps=eps)
    ours = AdamW(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay, bias_correction=True)
    for step_grads in grads:
        for name, t in tensors.items():
            t.grad = torch.tensor(step_grads[name], dtype=torch.float64)
        torch_opt.step()
    run(ours, params, grads)
    for name, p in params:
        np.testing.assert_allclose(p.data, tensors[name].detach().numpy(), rtol=1e-12, atol=1e-14, err_msg=name)


# --------------------------------------------------------------------------- loss scaling
def _grads(*values):
    return [(f"p{i}", _param_with_grad(np.asarray(v, dtype=np.float32))) for i, v in enumerate(values)]


def _param_with_grad(grad):
    p = Parameter(np.zeros_like(grad))
    p.grad[...] = grad
    return p


def test_loss_scaler_unscales_and_detects_overflow():
    scaler = DynamicLossScaler(init_scale=8.0)
    params = _grads([8.0, -16.0], [4.0])
    assert scaler.unscale(params)
    np.testing.assert_array_equal(params[0][1].grad, [1.0, -2.0])
    np.testing.assert_array_equal(params[1][1].grad, [0.5])
    for bad in (np.inf, -np.inf, np.nan):
        assert not scaler.unscale(_grads([1.0, bad], [2.0])) and scaler.found_overflow


def test_loss_scaler_backs_off_on_overflow_and_grows_after_a_quiet_interval():
    scaler = DynamicLossScaler(init_scale=1024.0, growth_interval=3, min_scale=256.0)
    scaler.unscale(_grads([np.inf]))
    scaler.update()
    assert scaler.scale == 512.0 and scaler.good_steps == 0
    for expected in (512.0, 512.0, 1024.0):                      # grows after 3 finite steps in a row
        scaler.unscale(_grads([1.0]))
        scaler.update()
        assert scaler.scale == expected
    for _ in range(5):                                            # never below min_scale
        scaler.unscale(_grads([np.nan]))
        scaler.update()
    assert scaler.scale == 256.0
    state = scaler.state_dict()
    other = DynamicLossScaler()
    other.load_state_dict(state)
    assert other.state_dict() == state


@pytest.mark.parametrize("kwargs, fragment", [
    (dict(init_scale=0), "init_scale"), (dict(growth_factor=1.0), "growth_factor"),
    (dict(backoff_factor=1.5), "backoff_factor"), (dict(growth_interval=0), "growth_interval"),
    (dict(init_scale=float("inf")), "init_scale"),
])
def test_loss_scaler_bad_hyperparameters(kwargs, fragment):
    with pytest.raises(ValueError, match=fragment):
        DynamicLossScaler(**kwargs)


def test_set_matmul_dtype_refuses_what_it_cannot_do():
    from minibert.modeling import BertForPreTraining

    from conftest import tiny_config

    with pytest.raises(ValueError, match="float32 master weights"):
        BertForPreTraining(tiny_config(), dtype=np.float64).set_matmul_dtype(np.float16)
    with pytest.raises(ValueError, match="float16 or None"):
        BertForPreTraining(tiny_config()).set_matmul_dtype(np.float32)


def test_loss_scaler_overflow_restarts_the_growth_interval():
    scaler = DynamicLossScaler(init_scale=8.0, growth_interval=2)
    for overflow in (False, True, False):                       # good, overflow (halve), good
        scaler.found_overflow = overflow
        scaler.update()
    assert scaler.scale == 4.0 and scaler.good_steps == 1
