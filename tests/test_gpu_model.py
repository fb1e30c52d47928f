"""The whole model on the GPU (CuPy): with the CUDA kernels of ``minibert/fast/cuda.py`` it
gives the numbers of the CPU and of the reference ops on the GPU, a training step makes no
hidden host<->device copies, and the loss falls.

Every test here is marked ``gpu``; the module is skipped without CuPy and a CUDA GPU:

    python -m pytest tests/test_gpu_model.py tests/test_kernels.py -m gpu -v
"""

import numpy as np
import pytest

from minibert import registry
from minibert.backend import cuda_available, to_numpy
from minibert.fast import cuda
from minibert.modeling import BertConfig, BertForPreTraining
from minibert.optim import AdamW, clip_grad_norm

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a CUDA GPU")]

# the kernels (by launch name) one training step of the model runs
STEP_KERNELS = {"layer_norm_forward", "layer_norm_backward_dx", "layer_norm_backward_dgamma_dbeta",
                "layer_norm_sum_partials", "bias_gelu_forward", "bias_gelu_backward",
                "softmax_cross_entropy_forward_backward"}
FLASH_KERNELS = {f"minibert::flash_attention_{kind}_kernel<float, 64>"
                 for kind in ("forward", "backward_delta", "backward_dq", "backward_dkdv")}


def _config(implementation="flash", dropout=0.0):
    return BertConfig(vocab_size=300, hidden_size=128, num_hidden_layers=2, num_attention_heads=2,
                      intermediate_size=256, max_position_embeddings=64, attn_implementation=implementation,
                      hidden_dropout_prob=dropout, attention_probs_dropout_prob=dropout)


def _batch(seed=0, batch=4, length=50):
    rng = np.random.default_rng(seed)
    ids = rng.integers(5, 300, (batch, length))
    mask = np.ones_like(ids)
    mask[1, 31:] = 0                                              # a padded sequence
    labels = np.where(rng.random(ids.shape) < 0.15, ids, -100)
    labels[:, 0] = ids[:, 0]
    return dict(input_ids=ids, attention_mask=mask, labels=labels,
                next_sentence_label=rng.integers(0, 2, batch))


@pytest.fixture
def launched(monkeypatch):
    """The names of the CUDA kernels launched during the test (every launch looks its kernel up)."""
    names = set()
    lookup = cuda._function

    def recording(filename, name, name_expressions=()):
        names.add(name)
        return lookup(filename, name, name_expressions)

    monkeypatch.setattr(cuda, "_function", recording)
    return names


def _loss_and_grads(model, batch):
    out = model.forward(**batch)
    model.backward()
    grads = {n: to_numpy(p.grad).astype(np.float64) for n, p in model.named_parameters()}
    model.zero_grad()
    return out.loss, grads


def _assert_grads_close(actual, expected):
    for name, g in expected.items():
        np.testing.assert_allclose(actual[name], g, rtol=1e-3, atol=1e-3 * np.abs(g).max() + 1e-7, err_msg=name)


@pytest.mark.parametrize("implementation", ["flash", "naive"])
def test_loss_and_gradients_on_the_gpu_match_numpy(implementation, launched):
    batch = _batch()
    cpu = BertForPreTraining(_config(implementation), seed=3)
    gpu = BertForPreTraining(_config(implementation), seed=3, device="cuda")
    loss_cpu, grads_cpu = _loss_and_grads(cpu, batch)
    loss_gpu, grads_gpu = _loss_and_grads(gpu, batch)
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-4)
    _assert_grads_close(grads_gpu, grads_cpu)
    # the kernels really ran (the registry chose them, not the reference ops)
    expected = STEP_KERNELS | (FLASH_KERNELS if implementation == "flash" else set())
    assert expected <= launched, f"kernels that did not run: {sorted(expected - launched)}"


def test_the_kernels_give_the_numbers_of_the_reference_ops_on_the_gpu(launched):
    """One training step with the speed-ups and one under registry.reference_only() (the ops of
    minibert/ops/ on CuPy arrays): the same loss, gradients and parameters after AdamW."""
    batch = _batch()
    lr = 1e-3

    def one_step():
        model = BertForPreTraining(_config("flash"), seed=3, device="cuda")
        optimizer = AdamW(model.named_parameters(), lr=lr, weight_decay=0.01)
        out = model.forward(**batch)
        model.backward()
        grads = {n: to_numpy(p.grad).astype(np.float64) for n, p in model.named_parameters()}
        optimizer.step()
        return out.loss, grads, {n: to_numpy(p.data).astype(np.float64) for n, p in model.named_parameters()}

    loss, grads, params = one_step()
    assert STEP_KERNELS | FLASH_KERNELS | {"adamw_update"} <= launched
    launched.clear()
    with registry.reference_only():
        loss_ref, grads_ref, params_ref = one_step()
    assert not launched, f"kernels ran under reference_only(): {sorted(launched)}"
    assert loss == pytest.approx(loss_ref, rel=1e-4)
    _assert_grads_close(grads, grads_ref)
    for name, p in params_ref.items():        # AdamW moves each parameter by about lr at most
        np.testing.assert_allclose(params[name], p, rtol=1e-5, atol=1e-2 * lr, err_msg=name)


def test_a_training_step_copies_only_its_batch_to_the_gpu(monkeypatch):
    """Host->device copies go through cupy.asarray/array, device->host ones through cupy.asnumpy
    (CuPy refuses implicit conversions); count those of more than one element during a step."""
    import cupy

    model = BertForPreTraining(_config(dropout=0.1), seed=0, device="cuda")
    optimizer = AdamW(model.named_parameters(), lr=1e-3)
    batch = _batch()

    def step():
        model.train()
        out = model.forward(**batch)
        model.backward()
        clip_grad_norm(model.named_parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        return out.loss

    step()                                                 # compiles the kernels
    copies = []

    def counting(real, direction):
        def wrapper(a, *args, **kwargs):
            if direction == "to host" or isinstance(a, np.ndarray):
                if np.size(a) > 1:
                    copies.append((direction, tuple(np.shape(a))))
            return real(a, *args, **kwargs)
        return wrapper

    monkeypatch.setattr(cupy, "asarray", counting(cupy.asarray, "to GPU"))
    monkeypatch.setattr(cupy, "array", counting(cupy.array, "to GPU"))
    monkeypatch.setattr(cupy, "asnumpy", counting(cupy.asnumpy, "to host"))
    step()
    batch_shapes = {tuple(v.shape) for v in batch.values()}
    unexpected = [c for c in copies if not (c[0] == "to GPU" and c[1] in batch_shapes)]
    assert not unexpected, f"copies inside a training step besides the batch: {unexpected}"


def test_a_few_hundred_steps_on_the_gpu_lower_the_loss():
    model = BertForPreTraining(_config(dropout=0.1), seed=0, device="cuda")
    optimizer = AdamW(model.named_parameters(), lr=1e-3)
    batches = [_batch(seed) for seed in range(4)]
    losses = []
    for step in range(300):
        model.train()
        out = model.forward(**batches[step % 4])
        model.backward()
        clip_grad_norm(model.named_parameters(), 1.0)
        optimizer.step()
        optimizer.zero_grad()
        losses.append(out.loss)
    assert np.isfinite(losses).all()
    assert np.mean(losses[-20:]) < 0.5 * np.mean(losses[:20]), (losses[:3], losses[-3:])
