"""RoBERTa: its positions, gradient checks, checkpoints, and parity with transformers
(the last when torch and transformers are installed)."""

import json

import numpy as np
import pytest

from minibert.config import BertConfig, RobertaConfig
from minibert.gradcheck import gradcheck
from minibert.modeling import BertForPreTraining
from minibert.roberta import RobertaForMaskedLM, RobertaModel

PAD = 1


def _config(**overrides):
    values = dict(vocab_size=97, hidden_size=48, num_hidden_layers=2, num_attention_heads=4,
                  intermediate_size=96, max_position_embeddings=40, hidden_dropout_prob=0.0,
                  attention_probs_dropout_prob=0.0)
    values.update(overrides)
    return RobertaConfig(**values)


def _batch(rng, batch=3, length=17, vocab=97):
    ids = rng.integers(5, vocab, (batch, length))
    ids[:, 0], ids[:, -1] = 0, 2                              # <s> ... </s>
    ids[1, 12:] = PAD                                         # padded sequences
    ids[2, 9:] = PAD
    mask = (ids != PAD).astype(np.int64)
    labels = np.full((batch, length), -100)
    chosen = (rng.random((batch, length)) < 0.3) & mask.astype(bool)
    labels[chosen] = rng.integers(0, vocab, chosen.sum())
    return ids, mask, labels


def test_positions_count_real_tokens_after_the_padding_id():
    model = RobertaModel(_config())
    ids = np.array([[0, 7, 8, 2, PAD, PAD], [0, 9, 2, PAD, PAD, PAD]])
    assert model.embeddings.position_ids(ids).tolist() == [[2, 3, 4, 5, 1, 1], [2, 3, 4, 1, 1, 1]]
    assert not model.embeddings.position_embeddings.weight.data[PAD].any()
    config = _config(max_position_embeddings=10)
    assert config.max_sequence_length == 8                    # rows 0 and 1 are never a real position
    with pytest.raises(ValueError, match=r"exceeds max_position_embeddings \(10\): 8 tokens"):
        RobertaModel(config).forward(np.full((1, 9), 5))


def test_the_config_round_trips_and_refuses_another_model_type():
    config = _config()
    values = config.to_dict()
    assert values["model_type"] == "roberta" and RobertaConfig.from_dict(values) == config
    with pytest.raises(ValueError, match="model_type 'roberta', not 'bert'"):
        BertConfig.from_dict(values)
    with pytest.raises(ValueError, match="model_type 'bert', not 'roberta'"):
        RobertaConfig.from_dict(BertConfig().to_dict())
    defaults = RobertaConfig()
    assert (defaults.vocab_size, defaults.max_position_embeddings, defaults.type_vocab_size,
            defaults.pad_token_id, defaults.layer_norm_eps) == (50265, 514, 1, 1, 1e-5)


def test_every_gradient_by_finite_differences():
    model = RobertaForMaskedLM(_config(vocab_size=23, hidden_size=8, num_attention_heads=2, intermediate_size=12,
                                       max_position_embeddings=20), seed=1, dtype=np.float64)
    rng = np.random.default_rng(0)
    for _, p in model.named_parameters():                   # move biases and LayerNorms off their init values
        p.data += rng.standard_normal(p.data.shape) * 0.05
    ids, mask, labels = _batch(rng, vocab=23)
    model.zero_grad()
    model.forward(ids, attention_mask=mask, labels=labels)
    model.backward()
    params = dict(model.named_parameters())
    assert params["roberta.embeddings.position_embeddings.weight"].grad[PAD].sum() == 0    # padding: no gradient
    gradcheck(lambda: model.forward(ids, attention_mask=mask, labels=labels).loss,
              {n: p.data for n, p in params.items()}, {n: p.grad.copy() for n, p in params.items()},
              samples=5).raise_if_failed()


def test_a_saved_model_loads_back_and_a_bert_checkpoint_is_refused(tmp_path):
    model = RobertaForMaskedLM(_config(), seed=2)
    model.save_pretrained(tmp_path / "roberta")
    saved = json.loads((tmp_path / "roberta" / "config.json").read_text())
    assert saved["model_type"] == "roberta" and saved["architectures"] == ["RobertaForMaskedLM"]
    loaded = RobertaForMaskedLM.from_pretrained(tmp_path / "roberta")
    assert not loaded.loading_info.missing_keys and not loaded.loading_info.unexpected_keys
    ids, mask, _ = _batch(np.random.default_rng(1))
    model.eval()
    np.testing.assert_array_equal(loaded.forward(ids, attention_mask=mask).logits,
                                  model.forward(ids, attention_mask=mask).logits)
    BertForPreTraining(BertConfig(vocab_size=97, hidden_size=48, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=96)).save_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="model_type is 'bert'; this model class loads model_type 'roberta'"):
        RobertaForMaskedLM.from_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="model_type is 'roberta'; this model class loads model_type 'bert'"):
        BertForPreTraining.from_pretrained(tmp_path / "roberta")


# ---------------------------------------------------------------------------- transformers
@pytest.mark.reference
def test_logits_loss_and_every_gradient_match_transformers_and_folders_load_both_ways(tmp_path):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    config = _config()
    ours = RobertaForMaskedLM(config, seed=3, dtype=np.float64)
    ours.save_pretrained(tmp_path / "ours")
    theirs = transformers.RobertaForMaskedLM.from_pretrained(tmp_path / "ours", attn_implementation="eager",
                                                            torch_dtype=torch.float64).eval()
    ids, mask, labels = _batch(np.random.default_rng(0))

    out = ours.forward(ids, attention_mask=mask, labels=labels)
    ours.backward()
    ref = theirs(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 labels=torch.from_numpy(labels))
    ref.loss.backward()
    np.testing.assert_allclose(out.loss, ref.loss.item(), rtol=1e-10)
    selected = labels.reshape(-1) != -100
    np.testing.assert_allclose(out.logits, ref.logits.detach().numpy().reshape(-1, config.vocab_size)[selected],
                               rtol=1e-9, atol=1e-10)
    ref_grads = {name: p.grad.numpy() for name, p in theirs.named_parameters() if p.grad is not None}
    for name, param in ours.named_parameters():
        np.testing.assert_allclose(param.grad, ref_grads[name], rtol=1e-7, atol=1e-10, err_msg=name)
    assert {name for name, _ in ours.named_parameters()} == set(ref_grads)

    theirs.save_pretrained(tmp_path / "theirs")                              # and back
    loaded = RobertaForMaskedLM.from_pretrained(tmp_path / "theirs", dtype=np.float64)
    assert not loaded.loading_info.missing_keys
    np.testing.assert_allclose(loaded.forward(ids, attention_mask=mask).logits,
                               ref.logits.detach().numpy(), rtol=1e-9, atol=1e-10)
