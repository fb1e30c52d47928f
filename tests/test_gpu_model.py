"""The whole model on the GPU (CuPy, with the CUDA kernels): the same numbers as on the CPU,
no hidden host<->device copies in a training step, and a loss that falls.

Every test here is marked ``gpu`` and skipped without CuPy and a CUDA GPU:

    python -m pytest tests/test_gpu_model.py tests/test_kernels.py -m gpu -v
"""

import numpy as np
import pytest

from minibert import cuda_kernels
from minibert.backend import cuda_available, to_numpy
from minibert.modeling import BertConfig, BertForPreTraining
from minibert.optim import AdamW, clip_grad_norm

pytestmark = [pytest.mark.gpu, pytest.mark.skipif(not cuda_available(), reason="needs CuPy and a CUDA GPU")]


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


def _loss_and_grads(model, batch):
    out = model.forward(**batch)
    model.backward()
    grads = {n: to_numpy(p.grad).astype(np.float64) for n, p in model.named_parameters()}
    model.zero_grad()
    return out.loss, grads


@pytest.mark.parametrize("implementation", ["flash", "naive"])
def test_loss_and_gradients_on_the_gpu_match_numpy(implementation):
    batch = _batch()
    cpu = BertForPreTraining(_config(implementation), seed=3)
    gpu = BertForPreTraining(_config(implementation), seed=3, device="cuda")
    loss_cpu, grads_cpu = _loss_and_grads(cpu, batch)
    loss_gpu, grads_gpu = _loss_and_grads(gpu, batch)
    assert loss_gpu == pytest.approx(loss_cpu, rel=1e-4)
    for name, g in grads_cpu.items():
        np.testing.assert_allclose(grads_gpu[name], g, rtol=1e-3, atol=1e-3 * np.abs(g).max() + 1e-7, err_msg=name)
    # the kernels really ran: every first-use check passed (a failed one would fall back silently)
    failed = [key for key, passed in cuda_kernels._checked.items() if not passed]
    assert not failed, f"kernels that failed their first-use check: {failed}"
    assert {key[0] for key in cuda_kernels._checked} >= {"layer_norm", "bias_gelu", "cross_entropy"}


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

    step()                                                 # compiles the kernels, runs their checks
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
