"""Properties that must hold for any input (hypothesis)."""

import numpy as np
from hypothesis import given, settings
from hypothesis import strategies as st

from minibert import ops
from minibert.modeling import BertForPreTraining, BertModel

from conftest import tiny_config

_MODEL = BertModel(tiny_config(), seed=0, dtype=np.float64).eval()
_PRETRAIN = BertForPreTraining(tiny_config(), seed=0, dtype=np.float64)


@settings(max_examples=40, deadline=None)
@given(st.integers(1, 4), st.integers(1, 9), st.floats(0.1, 30), st.integers(0, 2**31))
def test_softmax_rows_sum_to_one(rows, cols, scale, seed):
    s = np.random.default_rng(seed).standard_normal((rows, cols)) * scale
    p, _ = ops.softmax_forward(s)
    np.testing.assert_allclose(p.sum(-1), 1.0, rtol=1e-12)
    assert (p >= 0).all()


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(1, 8), st.integers(0, 7), st.integers(0, 2**31))
def test_padding_does_not_change_outputs_at_real_positions(batch, length, extra, seed):
    rng = np.random.default_rng(seed)
    ids = rng.integers(1, 31, (batch, length))
    types = rng.integers(0, 2, (batch, length))
    seq, pooled = _MODEL.forward(ids, types, np.ones((batch, length)))
    padded_ids = np.concatenate([ids, rng.integers(0, 31, (batch, extra))], axis=1)
    padded_types = np.concatenate([types, rng.integers(0, 2, (batch, extra))], axis=1)
    mask = np.zeros_like(padded_ids)
    mask[:, :length] = 1
    seq_padded, pooled_padded = _MODEL.forward(padded_ids, padded_types, mask)
    np.testing.assert_allclose(seq_padded[:, :length], seq, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(pooled_padded, pooled, rtol=1e-10, atol=1e-12)


@settings(max_examples=10, deadline=None)
@given(st.integers(0, 2**31))
def test_eval_mode_is_deterministic_and_training_mode_is_not(seed):
    model = BertModel(tiny_config(hidden_dropout_prob=0.3, attention_probs_dropout_prob=0.3), seed=seed % 7)
    ids = np.random.default_rng(seed).integers(0, 31, (2, 6))
    model.eval()
    a, _ = model.forward(ids)
    b, _ = model.forward(ids)
    np.testing.assert_array_equal(a, b)
    model.train()
    c, _ = model.forward(ids)
    assert not np.array_equal(a, c)


def test_dropout_is_reproducible_from_the_seed():
    config = tiny_config(hidden_dropout_prob=0.2, attention_probs_dropout_prob=0.2)
    ids = np.arange(12).reshape(2, 6)
    first = BertModel(config, seed=3).forward(ids)[0]
    second = BertModel(config, seed=3).forward(ids)[0]
    np.testing.assert_array_equal(first, second)


@settings(max_examples=15, deadline=None)
@given(st.integers(0, 2**31), st.floats(0.0, 1.0))
def test_loss_ignores_unlabelled_positions(seed, fraction):
    rng = np.random.default_rng(seed)
    ids = rng.integers(0, 31, (2, 7))
    labels = np.where(rng.random((2, 7)) < fraction, rng.integers(0, 31, (2, 7)), -100)
    other = ids.copy()
    # changing the *labels* of ignored positions (they stay -100) and nothing else: same loss
    out = _PRETRAIN.forward(ids, labels=labels)
    counted = int((labels != -100).sum())
    assert out.prediction_logits.shape == (counted, 31)
    assert np.isfinite(out.loss)
    if counted == 0:
        assert out.loss == 0.0
    _PRETRAIN.clear_caches()
    del other
