"""Finite-difference checks of every module, both heads and the whole pretraining loss."""

import numpy as np
import pytest

from minibert.gradcheck import check_module, gradcheck
from minibert.layers import Activation, Dropout, Embedding, LayerNorm, Linear
from minibert.backend import RandomSource
from minibert.modeling import (
    BertAddNorm,
    BertEmbeddings,
    BertForPreTraining,
    BertIntermediate,
    BertLayer,
    BertLMPredictionHead,
    BertModel,
    BertPooler,
    BertSelfAttention,
)

from conftest import tiny_config

F64 = np.float64


def _init(seed=0):
    return np.random.default_rng(seed), RandomSource(seed)


def test_linear_module(rng):
    layer = Linear(5, 4, 0.5, rng, F64)
    layer.bias.data[:] = rng.standard_normal(4)
    check_module(layer, rng.standard_normal((3, 2, 5)), wrt=(0,)).raise_if_failed()


def test_layer_norm_module(rng):
    layer = LayerNorm(6, 1e-12, F64)
    layer.weight.data[:] = rng.standard_normal(6)
    check_module(layer, rng.standard_normal((4, 6)), wrt=(0,)).raise_if_failed()


def test_embedding_module_and_padding_row(rng):
    layer = Embedding(7, 3, 1.0, rng, F64, padding_idx=0)
    ids = np.array([[0, 2, 2, 6], [1, 0, 5, 2]])
    assert not layer.weight.data[0].any()
    g = rng.standard_normal((2, 4, 3))
    layer.forward(ids)
    layer.backward(g)
    expected = np.zeros((7, 3))
    np.add.at(expected, ids.reshape(-1), g.reshape(-1, 3))
    expected[0] = 0                                   # the padding row gets no gradient
    np.testing.assert_allclose(layer.weight.grad, expected)


def test_activation_and_dropout_modules(rng):
    check_module(Activation("gelu"), rng.standard_normal((3, 4)), wrt=(0,)).raise_if_failed()
    dropout = Dropout(0.5, RandomSource(0)).eval()
    x = rng.standard_normal((3, 4))
    assert dropout.forward(x) is x


def test_self_attention_module_with_mask(rng):
    config = tiny_config()
    module = BertSelfAttention(config, *_init(), F64)
    h = rng.standard_normal((2, 5, config.hidden_size))
    mask = np.zeros((2, 1, 1, 5))
    mask[0, ..., 4:] = np.finfo(F64).min
    check_module(module, h, mask, wrt=(0,)).raise_if_failed()


def test_add_norm_module(rng):
    config = tiny_config()
    module = BertAddNorm(config.intermediate_size, config, *_init(), F64)
    x = rng.standard_normal((2, 3, config.intermediate_size))
    residual = rng.standard_normal((2, 3, config.hidden_size))

    def forward(x, residual):
        return module.forward(x, residual)

    y = module.forward(x, residual)
    g = rng.standard_normal(y.shape)
    module.zero_grad()
    dx, dresidual = module.backward(g)
    grads = {"x": dx, "residual": dresidual}
    grads.update({n: p.grad.copy() for n, p in module.named_parameters()})
    arrays = {"x": x, "residual": residual}
    arrays.update({n: p.data for n, p in module.named_parameters()})
    gradcheck(lambda: float((module.forward(x, residual) * g).sum()), arrays, grads).raise_if_failed()


def test_intermediate_module(rng):
    config = tiny_config()
    module = BertIntermediate(config, np.random.default_rng(0), F64)
    check_module(module, rng.standard_normal((2, 3, config.hidden_size)), wrt=(0,)).raise_if_failed()


def test_encoder_layer(rng):
    config = tiny_config()
    layer = BertLayer(config, *_init(), F64)
    mask = np.zeros((2, 1, 1, 6))
    mask[1, ..., 4:] = np.finfo(F64).min
    check_module(layer, rng.standard_normal((2, 6, config.hidden_size)), mask, wrt=(0,)).raise_if_failed()


def test_embeddings_module(rng):
    config = tiny_config()
    module = BertEmbeddings(config, *_init(), F64)
    ids = rng.integers(0, config.vocab_size, (2, 7))
    types = rng.integers(0, 2, (2, 7))
    check_module(module, ids, types).raise_if_failed()


def test_pooler(rng):
    config = tiny_config()
    check_module(BertPooler(config, np.random.default_rng(0), F64),
                 rng.standard_normal((3, 4, config.hidden_size)), wrt=(0,)).raise_if_failed()


def test_mlm_head_with_tied_decoder(rng):
    config = tiny_config()
    embedding = Embedding(config.vocab_size, config.hidden_size, 0.5, rng, F64)
    head = BertLMPredictionHead(config, embedding, np.random.default_rng(1), F64)
    head.bias.data[:] = rng.standard_normal(config.vocab_size)
    # the decoder weight is the embedding's Parameter: it is listed once, under the head's name here
    names = [n for n, _ in head.named_parameters()]
    assert "decoder.weight" in names and "decoder.bias" not in names
    check_module(head, rng.standard_normal((5, config.hidden_size)), wrt=(0,)).raise_if_failed()


def _batch(config, rng, batch=3, length=8):
    ids = rng.integers(0, config.vocab_size, (batch, length))
    types = np.zeros_like(ids)
    types[:, length // 2:] = 1
    mask = np.ones((batch, length), dtype=np.int64)
    mask[1, 6:] = 0
    mask[2, 3:] = 0
    labels = np.full((batch, length), -100)
    labels[0, [1, 5]] = [3, 7]
    labels[1, 2] = 11
    labels[2, 1] = 0
    return ids, types, mask, labels, np.array([0, 1, 1])


def test_bert_model_sequence_and_pooled_outputs(rng):
    config = tiny_config()
    model = BertModel(config, seed=2, dtype=F64)
    ids, types, mask, _, _ = _batch(config, rng)
    seq, pooled = model.forward(ids, types, mask)
    gseq, gpooled = rng.standard_normal(seq.shape), rng.standard_normal(pooled.shape)
    model.zero_grad()
    model.backward(gseq, gpooled)

    def loss():
        s, p = model.forward(ids, types, mask)
        return float((s * gseq).sum() + (p * gpooled).sum())

    params = dict(model.named_parameters())
    gradcheck(loss, {n: p.data for n, p in params.items()}, {n: p.grad.copy() for n, p in params.items()},
              samples=8).raise_if_failed()


@pytest.mark.parametrize("add_pooling_layer", [True, False])
def test_output_positions_equal_the_full_output_at_those_rows(rng, add_pooling_layer):
    """The last layer computing only some rows gives those rows of the full output, and the
    same gradients as the full output with zeros elsewhere (here [CLS] of sequence 1 is one
    of the positions, so the pooler's row and a wanted row coincide)."""
    config = tiny_config()
    model = BertModel(config, seed=2, dtype=F64, add_pooling_layer=add_pooling_layer)
    for _, p in model.named_parameters():
        p.data += rng.standard_normal(p.data.shape) * 0.05
    ids, types, mask, _, _ = _batch(config, rng)
    batch, length = ids.shape
    positions = np.array([length + 0, 3, 2 * length - 1, 5])           # any order, distinct
    seq, pooled = model.forward(ids, types, mask)
    rows, rows_pooled = model.forward(ids, types, mask, output_positions=positions)
    np.testing.assert_allclose(rows, seq.reshape(-1, config.hidden_size)[positions], rtol=1e-12, atol=1e-13)
    if add_pooling_layer:
        np.testing.assert_allclose(rows_pooled, pooled, rtol=1e-12, atol=1e-13)
    else:
        assert rows_pooled is None

    gseq = rng.standard_normal(rows.shape)
    gpooled = rng.standard_normal(pooled.shape) if add_pooling_layer else None
    model.zero_grad()
    model.backward(gseq, gpooled)
    selected = {n: p.grad.copy() for n, p in model.named_parameters()}
    full_gseq = np.zeros((batch * length, config.hidden_size))
    full_gseq[positions] = gseq
    model.forward(ids, types, mask)
    model.zero_grad()
    model.backward(full_gseq.reshape(seq.shape), gpooled)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(selected[name], p.grad, rtol=1e-10, atol=1e-13, err_msg=name)

    with pytest.raises(ValueError, match="repeat"):
        model.forward(ids, types, mask, output_positions=[3, 3])
    with pytest.raises(ValueError, match="output_positions contains"):
        model.forward(ids, types, mask, output_positions=[batch * length])


@pytest.mark.parametrize("attn_implementation", ["naive", "flash"])
def test_whole_pretraining_loss_with_padding_and_ignored_labels(rng, attn_implementation):
    from minibert.config import ATTENTION_IMPLEMENTATIONS

    if attn_implementation not in ATTENTION_IMPLEMENTATIONS:
        pytest.skip("flash attention op not available")
    config = tiny_config(attn_implementation=attn_implementation)
    model = BertForPreTraining(config, seed=4, dtype=F64)
    for _, p in model.named_parameters():              # move biases/LayerNorms off their init values
        p.data += rng.standard_normal(p.data.shape) * 0.05
    ids, types, mask, labels, nsp = _batch(config, rng)
    model.forward(ids, types, mask, labels=labels, next_sentence_label=nsp)
    model.zero_grad()
    model.backward()

    def loss():
        return model.forward(ids, types, mask, labels=labels, next_sentence_label=nsp).loss

    params = dict(model.named_parameters())
    gradcheck(loss, {n: p.data for n, p in params.items()}, {n: p.grad.copy() for n, p in params.items()},
              samples=6).raise_if_failed()


@pytest.mark.parametrize("attn_implementation", ["naive", "flash"])
def test_whole_pretraining_loss_in_training_mode_with_dropout(rng, attn_implementation):
    """Dropout on (hidden and attention): the backward pass must use the forward pass's masks,
    the last layer's included (it draws them for the rows it computes). Replaying the dropout
    random state before each forward makes the loss a deterministic function of the weights."""
    config = tiny_config(attn_implementation=attn_implementation, hidden_dropout_prob=0.2,
                         attention_probs_dropout_prob=0.2)
    model = BertForPreTraining(config, seed=4, dtype=F64).train()
    for _, p in model.named_parameters():
        p.data += rng.standard_normal(p.data.shape) * 0.05
    ids, types, mask, labels, nsp = _batch(config, rng)
    state = model.random.get_state()

    def loss():
        model.random.set_state(state)                 # the same dropout masks every time
        return model.forward(ids, types, mask, labels=labels, next_sentence_label=nsp).loss

    first = loss()
    model.zero_grad()
    model.backward()
    assert loss() == first                            # replayed masks: the same loss
    model.random.set_state({**state, "numpy": np.random.default_rng(99).bit_generator.state})
    assert model.forward(ids, types, mask, labels=labels, next_sentence_label=nsp).loss != first
    params = dict(model.named_parameters())
    gradcheck(loss, {n: p.data for n, p in params.items()}, {n: p.grad.copy() for n, p in params.items()},
              samples=6, atol=1e-7, rtol=1e-5).raise_if_failed()


def test_gathered_mlm_head_equals_scoring_every_position(rng):
    config = tiny_config()
    model = BertForPreTraining(config, seed=7, dtype=F64)
    ids, types, mask, labels, nsp = _batch(config, rng)
    out = model.forward(ids, types, mask, labels=labels, next_sentence_label=nsp)
    model.zero_grad()
    model.backward()
    gathered = {n: p.grad.copy() for n, p in model.named_parameters()}

    # the same loss computed by scoring every position and passing our own logits gradient
    full = model.forward(ids, types, mask)
    logits = full.prediction_logits.reshape(-1, config.vocab_size)
    flat = labels.reshape(-1)
    counted = flat != -100
    logp = logits - np.log(np.exp(logits - logits.max(-1, keepdims=True)).sum(-1, keepdims=True)) \
        - logits.max(-1, keepdims=True)
    mlm = -logp[counted, flat[counted]].mean()
    assert mlm == pytest.approx(out.mlm_loss, rel=1e-12)
    dlogits = np.exp(logp)
    dlogits[np.flatnonzero(counted), flat[counted]] -= 1
    dlogits[~counted] = 0
    dlogits /= counted.sum()
    nsp_logits = full.seq_relationship_logits
    nsp_p = np.exp(nsp_logits - nsp_logits.max(-1, keepdims=True))
    nsp_p /= nsp_p.sum(-1, keepdims=True)
    nsp_p[np.arange(3), nsp] -= 1
    model.zero_grad()
    model.backward(dlogits.reshape(full.prediction_logits.shape), nsp_p / 3)
    for name, p in model.named_parameters():
        np.testing.assert_allclose(p.grad, gathered[name], rtol=1e-10, atol=1e-13, err_msg=name)


def test_tied_embedding_receives_both_contributions(rng):
    config = tiny_config()
    model = BertForPreTraining(config, seed=1, dtype=F64)
    ids, types, mask, labels, nsp = _batch(config, rng)
    emb = model.bert.embeddings.word_embeddings

    model.forward(ids, types, mask, labels=labels, next_sentence_label=nsp)
    model.zero_grad()
    model.backward()
    total = emb.weight.grad.copy()

    # the decoder's share alone: d(logits)/dE = dlogits^T @ transformed hidden states
    model.forward(ids, types, mask, labels=labels, next_sentence_label=nsp)
    model.zero_grad()
    shape, positions, losses = model._pop_cache()
    ce_backward, cache = losses["mlm"]                     # the loss's backward and its cache
    dlogits = ce_backward(1.0, cache)
    decoder_share = model.cls.predictions.decoder.backward(dlogits)  # adds dlogits^T @ x into E.grad
    decoder_grad = emb.weight.grad.copy()
    assert np.abs(decoder_grad).sum() > 0
    lookup_share = total - decoder_grad
    assert np.abs(decoder_grad).min(axis=1).all() or np.abs(decoder_grad).sum(axis=1).all()  # every row
    used = np.zeros(config.vocab_size, bool)
    used[ids[mask.astype(bool)]] = True               # ids at padded positions influence nothing
    used[config.pad_token_id] = False                 # the padding row gets nothing from the lookup
    assert np.abs(lookup_share[used]).sum(axis=1).all()          # the lookup added to the rows it read
    np.testing.assert_allclose(lookup_share[~used], 0, atol=1e-15)
    model.clear_caches()
    del decoder_share


def test_pruned_heads_equal_masked_heads_and_survive_a_rebuild(rng):
    config = tiny_config(num_attention_heads=3)
    model = BertModel(config, seed=3, dtype=F64).eval()
    ids = rng.integers(0, config.vocab_size, (2, 6))
    mask = np.ones((2, 6))
    mask[1, 4:] = 0
    # masking a head: zero value projection rows => that head's context is 0
    masked = BertModel(config, seed=3, dtype=F64).eval()
    d = config.head_size
    for layer, heads in {0: [1], 1: [0, 2]}.items():
        value = masked.encoder.layer[layer].attention.self.value
        for h in heads:
            value.weight.data[h * d:(h + 1) * d] = 0
            value.bias.data[h * d:(h + 1) * d] = 0
    expected, _ = masked.forward(ids, None, mask)
    model.prune_heads({0: [1], 1: [0, 2]})
    assert model.encoder.layer[1].attention.self.query.weight.shape == (d, config.hidden_size)
    assert model.encoder.layer[1].attention.output.dense.weight.shape == (config.hidden_size, d)
    np.testing.assert_allclose(model.forward(ids, None, mask)[0], expected, rtol=1e-12, atol=1e-12)
    # gradients still check out on the smaller model
    check_module(model.encoder.layer[1], rng.standard_normal((2, 6, config.hidden_size)),
                 np.zeros((2, 1, 1, 6)), wrt=(0,)).raise_if_failed()
    # the config records the pruning, in the original numbering, so a rebuilt model has the same shapes
    model.prune_heads({0: [0]})
    assert model.config.extra["pruned_heads"] == {"0": [0, 1], "1": [0, 2]}
    rebuilt = BertModel(model.config, seed=9, dtype=F64).eval()
    rebuilt.load_state_dict(model.state_dict())
    np.testing.assert_array_equal(rebuilt.forward(ids)[0], model.forward(ids)[0])
    with pytest.raises(ValueError, match="cannot prune every head of layer 0"):
        model.prune_heads({0: [2]})


def test_head_mask_gates_each_heads_context_and_its_gradients_check_out(rng):
    config = tiny_config()
    d, heads = config.head_size, config.num_attention_heads
    model = BertModel(config, seed=4, dtype=F64).eval()
    ids = rng.integers(0, config.vocab_size, (2, 6))
    mask = np.ones((2, 6))
    mask[1, 4:] = 0
    # a gate g on a head scales its context P V, as scaling its value rows and bias by g does
    per_layer = [np.array([0.0, 1.5, 0.7]), np.array([1.2, 0.3, 2.0])]            # (N,) per layer
    scaled = BertModel(config, seed=4, dtype=F64).eval()
    for layer, gates in enumerate(per_layer):
        value = scaled.encoder.layer[layer].attention.self.value
        for h in range(heads):
            value.weight.data[h * d:(h + 1) * d] *= gates[h]
            value.bias.data[h * d:(h + 1) * d] *= gates[h]
    expected, _ = scaled.forward(ids, None, mask)
    np.testing.assert_allclose(model.forward(ids, None, mask, head_mask=per_layer)[0], expected, rtol=1e-12,
                               atol=1e-12)
    model.clear_caches()
    # per-sequence gates (B, N), one head silenced: parameter gradients and d(loss)/d(gate)
    head_mask = [rng.uniform(0.2, 1.8, (2, heads)) for _ in range(2)]
    head_mask[0][1, 2] = 0.0
    dseq, dpooled = rng.standard_normal((2, 6, config.hidden_size)), rng.standard_normal((2, config.hidden_size))
    model.zero_grad()
    model.forward(ids, None, mask, head_mask=head_mask)
    model.backward(dseq, dpooled)
    attention = {n: p for n, p in model.named_parameters() if ".attention.self." in n}
    arrays = {**{n: p.data for n, p in attention.items()}, **{f"gate{i}": g for i, g in enumerate(head_mask)}}
    grads = {**{n: p.grad.copy() for n, p in attention.items()},
             **{f"gate{i}": g.copy() for i, g in enumerate(model.head_mask_grad)}}

    def loss():
        seq, pooled = model.forward(ids, None, mask, head_mask=head_mask)
        model.clear_caches()
        return float((seq * dseq).sum() + (pooled * dpooled).sum())

    gradcheck(loss, arrays, grads).raise_if_failed()
