"""Attention maps: the probabilities from ``output_attentions=True``, and the pictures."""

import numpy as np
import pytest

from minibert.attention_maps import attention_probabilities, plot_attention_map
from minibert.modeling import BertModel
from minibert.tokenization import BertTokenizer

from conftest import tiny_config

VOCAB = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "the", "cat", "sat", "on", "mat", "."]


def _model(**overrides):
    return BertModel(tiny_config(vocab_size=len(VOCAB), **overrides), seed=2, dtype=np.float64)


def _softmax_attention_of_first_layer(model, ids):
    """p of layer 0 computed by hand: softmax(q k^T / sqrt(D)) per head."""
    model.eval()
    h = model.embeddings.forward(ids, np.zeros_like(ids))                     # (1, T, H)
    attention = model.encoder.layer[0].attention.self
    n, d = attention.num_heads, attention.head_size
    split = lambda x: x.reshape(ids.shape[1], n, d).transpose(1, 0, 2)        # noqa: E731  (T, H) -> (N, T, D)
    q = split(h[0] @ attention.query.weight.data.T + attention.query.bias.data)
    k = split(h[0] @ attention.key.weight.data.T + attention.key.bias.data)
    s = q @ k.transpose(0, 2, 1) / np.sqrt(d)
    p = np.exp(s - s.max(axis=-1, keepdims=True))
    model.clear_caches()
    return p / p.sum(axis=-1, keepdims=True)


def test_probabilities_are_the_softmax_of_each_head_and_rows_sum_to_one():
    model, tokenizer = _model(), BertTokenizer(VOCAB)
    tokens, maps = attention_probabilities(model, tokenizer, "The cat sat on the mat.")
    assert tokens == ["[CLS]", "the", "cat", "sat", "on", "the", "mat", ".", "[SEP]"]
    assert len(maps) == 2 and all(p.shape == (3, 9, 9) for p in maps)
    for p in maps:
        np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-12)
    ids = np.array([tokenizer.convert_tokens_to_ids(tokens)])
    np.testing.assert_allclose(maps[0], _softmax_attention_of_first_layer(model, ids), rtol=1e-10)


def test_the_model_is_left_as_it_was():
    model = _model(attn_implementation="flash", attention_probs_dropout_prob=0.1).train()
    _, maps = attention_probabilities(model, BertTokenizer(VOCAB), "the cat")
    naive = _model(attention_probs_dropout_prob=0.1)
    _, expected = attention_probabilities(naive, BertTokenizer(VOCAB), "the cat")
    np.testing.assert_allclose(maps[1], expected[1], rtol=1e-12)     # dropout off, naive op used for this pass
    assert model.training
    assert all(layer.attention.self.implementation == "flash" for layer in model.encoder.layer)
    assert all(module._cache is None for _, module in model.named_modules())


def test_plots_are_written_for_one_layer_and_for_all(tmp_path):
    model, tokenizer = _model(), BertTokenizer(VOCAB)
    model.prune_heads({1: [0]})                                   # a pruned head leaves an empty cell
    one = plot_attention_map(model, tokenizer, "the cat sat", str(tmp_path / "one.png"), layer=1)
    every = plot_attention_map(model, tokenizer, "the cat sat", str(tmp_path / "all.png"), layer=None)
    for path in (one, every):
        with open(path, "rb") as f:
            assert f.read(8) == b"\x89PNG\r\n\x1a\n"
    with pytest.raises(ValueError, match="layer 5 does not exist"):
        plot_attention_map(model, tokenizer, "the cat", str(tmp_path / "x.png"), layer=5)


def test_under_no_grad_the_maps_are_the_same():
    from minibert.nn import no_grad

    model, tokenizer = _model(), BertTokenizer(VOCAB)
    _, maps = attention_probabilities(model, tokenizer, "the cat sat")
    with no_grad():
        _, again = attention_probabilities(model, tokenizer, "the cat sat")
    for p, q in zip(maps, again):
        np.testing.assert_array_equal(p, q)


def test_output_attentions_returns_every_layer_and_keeps_backward_working(rng):
    model = _model(attention_probs_dropout_prob=0.0, hidden_dropout_prob=0.0)
    ids = rng.integers(5, len(VOCAB), (2, 6))
    mask = np.ones_like(ids)
    mask[1, 4:] = 0
    seq, pooled = model.forward(ids, attention_mask=mask)
    seq2, pooled2, attentions = model.forward(ids, attention_mask=mask, output_attentions=True)
    np.testing.assert_allclose(seq2, seq, rtol=1e-12)
    assert [p.shape for p in attentions] == [(2, 3, 6, 6)] * 2
    np.testing.assert_allclose(attentions[0].sum(axis=-1), 1.0, rtol=1e-12)
    assert np.all(attentions[1][1, :, :, 4:] == 0)                  # padded keys get no attention
    dseq = rng.standard_normal(seq.shape)
    model.zero_grad()
    model.backward(dseq, None)
    grads = {n: p.grad.copy() for n, p in model.named_parameters()}
    model.forward(ids, attention_mask=mask)
    model.zero_grad()
    model.backward(dseq, None)
    for name, param in model.named_parameters():
        np.testing.assert_allclose(grads[name], param.grad, rtol=1e-10, atol=1e-14, err_msg=name)


def test_output_attentions_in_training_gives_the_probabilities_before_dropout(rng):
    model = _model(attention_probs_dropout_prob=0.5).train()         # attention dropout acts
    ids = rng.integers(5, len(VOCAB), (2, 6))
    _, _, attentions = model.forward(ids, output_attentions=True)
    model.clear_caches()
    _, _, evaluated = model.eval().forward(ids, output_attentions=True)
    for p in attentions:
        np.testing.assert_allclose(p.sum(axis=-1), 1.0, rtol=1e-12)  # p itself, not the dropped p
    np.testing.assert_allclose(attentions[0], evaluated[0], rtol=1e-12)   # layer 0 sees the same input
