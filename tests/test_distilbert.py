"""DistilBERT: BERT's modules without token types and pooler, checkpoints with DistilBERT's
names both ways, and parity with transformers (when torch and transformers are installed)."""

import json

import numpy as np
import pytest

from minibert.config import BertConfig, DistilBertConfig
from minibert.distilbert import DistilBertForMaskedLM, DistilBertModel, rename
from minibert.gradcheck import gradcheck


def _config(**overrides):
    values = dict(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=96, max_position_embeddings=40, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    values.update(overrides)
    return DistilBertConfig(**values)


def _batch(rng, vocab=97, batch=3, length=17):
    ids = rng.integers(5, vocab, (batch, length))
    mask = np.ones((batch, length), dtype=np.int64)
    mask[1, 12:] = 0
    mask[2, 9:] = 0
    ids[mask == 0] = 0
    labels = np.full((batch, length), -100)
    chosen = (rng.random((batch, length)) < 0.3) & mask.astype(bool)
    labels[chosen] = rng.integers(0, vocab, chosen.sum())
    return ids, mask, labels


def test_config_fields_use_distilberts_names_in_config_json():
    values = _config().to_dict()
    assert values["model_type"] == "distilbert"
    assert (values["dim"], values["n_layers"], values["n_heads"], values["hidden_dim"]) == (48, 2, 4, 96)
    assert "hidden_size" not in values and "type_vocab_size" not in values
    assert DistilBertConfig.from_dict(values) == _config()
    with pytest.raises(ValueError, match="sinusoidal_pos_embds"):
        DistilBertConfig.from_dict(dict(values, sinusoidal_pos_embds=True))
    with pytest.raises(ValueError, match="not 'bert'"):
        BertConfig.from_dict(values)


def test_names_translate_both_ways():
    assert rename("distilbert.encoder.layer.11.attention.output.LayerNorm.weight", True) == \
        "distilbert.transformer.layer.11.sa_layer_norm.weight"
    assert rename("cls.predictions.transform.dense.bias", True) == "vocab_transform.bias"
    model = DistilBertForMaskedLM(_config(num_hidden_layers=12))
    names = [name for name, _ in model.named_parameters()]
    assert all(rename(rename(n, True), False) == n for n in names)
    assert not any("token_type" in n or "pooler" in n for n in names)


def test_every_gradient_by_finite_differences():
    model = DistilBertForMaskedLM(_config(vocab_size=23, hidden_size=8, num_attention_heads=2, intermediate_size=12),
                                  seed=1, dtype=np.float64)
    rng = np.random.default_rng(0)
    for _, p in model.named_parameters():
        p.data += rng.standard_normal(p.data.shape) * 0.05
    ids, mask, labels = _batch(rng, vocab=23)
    model.zero_grad()
    model.forward(ids, mask, labels)
    model.backward()
    params = dict(model.named_parameters())
    gradcheck(lambda: model.forward(ids, mask, labels).loss, {n: p.data for n, p in params.items()},
              {n: p.grad.copy() for n, p in params.items()}, samples=5).raise_if_failed()


def test_saved_with_distilberts_names_and_loaded_back(tmp_path):
    model = DistilBertForMaskedLM(_config(), seed=2)
    model.save_pretrained(tmp_path)
    config = json.loads((tmp_path / "config.json").read_text())
    assert config["architectures"] == ["DistilBertForMaskedLM"] and config["dim"] == 48
    from minibert import safetensors

    keys = set(safetensors.load_file(str(tmp_path / "model.safetensors")))
    assert "distilbert.transformer.layer.1.ffn.lin2.weight" in keys and "vocab_projector.bias" in keys
    loaded = DistilBertForMaskedLM.from_pretrained(tmp_path)
    assert not loaded.loading_info.missing_keys and not loaded.loading_info.unexpected_keys
    ids, mask, _ = _batch(np.random.default_rng(1))
    model.eval()
    np.testing.assert_array_equal(loaded.forward(ids, mask).logits, model.forward(ids, mask).logits)
    with pytest.warns(UserWarning, match="5 tensor.* were not used by DistilBertModel: vocab_layer_norm"):
        encoder = DistilBertModel.from_pretrained(tmp_path)            # the encoder alone: the head is left
    assert not encoder.loading_info.missing_keys
    seq, pooled = encoder.forward(ids, mask)
    assert seq.shape == (3, 17, 48) and pooled is None


@pytest.mark.reference
def test_logits_loss_and_every_gradient_match_transformers_and_folders_load_both_ways(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ours = DistilBertForMaskedLM(_config(), seed=3, dtype=np.float64)
    ours.save_pretrained(tmp_path / "ours")
    theirs = transformers.DistilBertForMaskedLM.from_pretrained(tmp_path / "ours", attn_implementation="eager",
                                                               torch_dtype=torch.float64).eval()
    ids, mask, labels = _batch(np.random.default_rng(0))
    out = ours.forward(ids, mask, labels)
    ours.backward()
    ref = theirs(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 labels=torch.from_numpy(labels))
    ref.loss.backward()
    np.testing.assert_allclose(out.loss, ref.loss.item(), rtol=1e-10)
    selected = labels.reshape(-1) != -100
    np.testing.assert_allclose(out.logits, ref.logits.detach().numpy().reshape(-1, 97)[selected],
                               rtol=1e-9, atol=1e-10)
    ref_grads = {name: p.grad.numpy() for name, p in theirs.named_parameters() if p.grad is not None}
    ours_grads = {rename(name, True): p.grad for name, p in ours.named_parameters()}
    assert set(ours_grads) == set(ref_grads), set(ours_grads) ^ set(ref_grads)
    for name, grad in ours_grads.items():
        np.testing.assert_allclose(grad, ref_grads[name], rtol=1e-7, atol=1e-10, err_msg=name)

    theirs.save_pretrained(tmp_path / "theirs")
    loaded = DistilBertForMaskedLM.from_pretrained(tmp_path / "theirs", dtype=np.float64)
    assert not loaded.loading_info.missing_keys
    np.testing.assert_allclose(loaded.forward(ids, mask).logits, ref.logits.detach().numpy(), rtol=1e-9, atol=1e-10)
