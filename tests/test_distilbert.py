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


# ---------------------------------------------------------------------------- fine-tuning heads
from minibert.distilbert import (DistilBertForQuestionAnswering, DistilBertForSequenceClassification,  # noqa: E402
                                 DistilBertForTokenClassification)

# head name -> (class, keyword arguments, the labels of a (B, T) batch as forward's keywords)
HEADS = {
    "sequence": (DistilBertForSequenceClassification, {"num_labels": 3},
                 lambda rng, b, t: {"labels": rng.integers(0, 3, b)}),
    "regression": (DistilBertForSequenceClassification, {"num_labels": 1},
                   lambda rng, b, t: {"labels": rng.standard_normal(b)}),
    "token": (DistilBertForTokenClassification, {"num_labels": 4},
              lambda rng, b, t: {"labels": np.where(rng.random((b, t)) < 0.7, rng.integers(0, 4, (b, t)), -100)}),
    "question": (DistilBertForQuestionAnswering, {},
                 lambda rng, b, t: {"start_positions": rng.integers(0, 8, b), "end_positions": rng.integers(0, 8, b)}),
}
NO_HEAD_DROPOUT = {"seq_classif_dropout": 0.0, "qa_dropout": 0.0}


def _head(name, config, **kwargs):
    cls, extra, _ = HEADS[name]
    return cls(config, **extra, **kwargs)


def _head_labels(name, rng, ids):
    return HEADS[name][2](rng, *ids.shape)


def test_the_classification_head_is_pre_classifier_relu_classifier_on_the_first_position():
    model = _head("sequence", _config(), seed=4, dtype=np.float64)
    names = [name for name, _ in model.named_parameters()]
    assert names[-4:] == ["pre_classifier.weight", "pre_classifier.bias", "classifier.weight", "classifier.bias"]
    assert model.dropout.p == 0.2                                        # seq_classif_dropout's default
    assert _head("question", _config()).dropout.p == 0.1                 # qa_dropout's default
    assert _head("token", _config(hidden_dropout_prob=0.3, extra={"classifier_dropout": 0.5})).dropout.p == 0.3
    ids, mask, _ = _batch(np.random.default_rng(2))
    model.eval()
    seq, _ = model.distilbert.forward(ids, mask)
    hidden = np.maximum(seq[:, 0] @ model.pre_classifier.weight.data.T + model.pre_classifier.bias.data, 0)
    expected = hidden @ model.classifier.weight.data.T + model.classifier.bias.data
    np.testing.assert_allclose(model.forward(ids, mask).logits, expected, rtol=1e-12)
    with pytest.raises(ValueError, match=r"seq_classif_dropout must be a number in \[0, 1\), got 1.5"):
        _head("sequence", _config(extra={"seq_classif_dropout": 1.5}))


@pytest.mark.parametrize("name", list(HEADS))
def test_every_gradient_of_each_head_by_finite_differences(name):
    model = _head(name, _config(vocab_size=23, hidden_size=8, num_attention_heads=2, intermediate_size=12,
                                extra=NO_HEAD_DROPOUT), seed=1, dtype=np.float64)
    rng = np.random.default_rng(0)
    for _, p in model.named_parameters():
        p.data += rng.standard_normal(p.data.shape) * 0.05
    ids, mask, _ = _batch(rng, vocab=23)
    labels = _head_labels(name, rng, ids)
    model.zero_grad()
    model.forward(ids, mask, **labels)
    model.backward()
    params = dict(model.named_parameters())
    gradcheck(lambda: model.forward(ids, mask, **labels).loss, {n: p.data for n, p in params.items()},
              {n: p.grad.copy() for n, p in params.items()}, samples=4).raise_if_failed()


def test_a_head_loads_the_encoder_of_a_masked_lm_folder_and_refuses_other_families(tmp_path):
    DistilBertForMaskedLM(_config(), seed=2).save_pretrained(tmp_path / "mlm")
    with pytest.warns(UserWarning, match="vocab_"):
        model = DistilBertForSequenceClassification.from_pretrained(tmp_path / "mlm", num_labels=2)
    assert sorted(model.loading_info.missing_keys) == ["classifier.bias", "classifier.weight",
                                                       "pre_classifier.bias", "pre_classifier.weight"]
    model.save_pretrained(tmp_path / "head")
    from minibert import safetensors

    keys = set(safetensors.load_file(str(tmp_path / "head" / "model.safetensors")))
    assert "distilbert.transformer.layer.0.attention.q_lin.weight" in keys and "pre_classifier.weight" in keys
    loaded = DistilBertForSequenceClassification.from_pretrained(tmp_path / "head")
    assert loaded.num_labels == 2 and not loaded.loading_info.missing_keys
    from minibert.heads import BertForSequenceClassification
    from minibert.modeling import BertForPreTraining

    BertForPreTraining(BertConfig(vocab_size=97, hidden_size=48, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=96)).save_pretrained(tmp_path / "bert")
    for cls in (DistilBertForSequenceClassification, DistilBertForTokenClassification,
                DistilBertForQuestionAnswering):
        with pytest.raises(ValueError, match="model_type is 'bert'; this model class loads model_type 'distilbert'"):
            cls.from_pretrained(tmp_path / "bert")
    with pytest.raises(ValueError, match="model_type is 'distilbert'; this model class loads model_type 'bert'"):
        BertForSequenceClassification.from_pretrained(tmp_path / "head")
    with pytest.raises(TypeError, match="DistilBertForQuestionAnswering needs a DistilBertConfig, got a BertConfig"):
        DistilBertForQuestionAnswering(BertConfig())


@pytest.mark.reference
@pytest.mark.parametrize("name", list(HEADS))
def test_each_head_matches_transformers_and_folders_load_both_ways(tmp_path, name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ours = _head(name, _config(), seed=3, dtype=np.float64)
    ours.save_pretrained(tmp_path / "ours")
    theirs = getattr(transformers, type(ours).__name__).from_pretrained(
        tmp_path / "ours", attn_implementation="eager", torch_dtype=torch.float64).eval()
    rng = np.random.default_rng(0)
    ids, mask, _ = _batch(rng)
    labels = _head_labels(name, rng, ids)
    ours.eval()                                      # dropout off on both sides (transformers: .eval())

    out = ours.forward(ids, mask, **labels)
    ours.backward()
    ref = theirs(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 **{k: torch.from_numpy(v) for k, v in labels.items()})
    ref.loss.backward()
    ref_logits = (torch.stack([ref.start_logits, ref.end_logits], dim=-1) if name == "question"
                  else ref.logits).detach().numpy()
    np.testing.assert_allclose(out.loss, ref.loss.item(), rtol=1e-10)
    np.testing.assert_allclose(out.logits, ref_logits, rtol=1e-9, atol=1e-10)
    ref_grads = {n: p.grad.numpy() for n, p in theirs.named_parameters() if p.grad is not None}
    ours_grads = {rename(n, True): p.grad for n, p in ours.named_parameters()}
    assert set(ours_grads) == set(ref_grads), set(ours_grads) ^ set(ref_grads)
    for n, grad in ours_grads.items():
        np.testing.assert_allclose(grad, ref_grads[n], rtol=1e-7, atol=1e-10, err_msg=n)

    theirs.save_pretrained(tmp_path / "theirs")
    loaded = type(ours).from_pretrained(tmp_path / "theirs", dtype=np.float64)
    assert not loaded.loading_info.missing_keys
    np.testing.assert_allclose(loaded.forward(ids, mask).logits, ref_logits, rtol=1e-9, atol=1e-10)


def test_resizing_the_vocabulary_resizes_the_tied_vocab_projector_bias(tmp_path):
    model = DistilBertForMaskedLM(_config(), seed=5)
    model.resize_token_embeddings(99)
    assert model.cls.predictions.bias.data.shape == (99,) and model.config.vocab_size == 99
    model.save_pretrained(tmp_path)
    from minibert import safetensors

    assert safetensors.load_file(str(tmp_path / "model.safetensors"))["vocab_projector.bias"].shape == (99,)


# ---------------------------------------------------------------------------- minibert finetune
def _tiny_distilbert_folder(path, texts):
    from test_finetuning_data import make_tokenizer

    tokenizer = make_tokenizer(texts)
    config = _config(vocab_size=tokenizer.vocab_size, hidden_size=16, num_attention_heads=2, intermediate_size=32,
                     max_position_embeddings=32)
    DistilBertForMaskedLM(config, seed=0).save_pretrained(path, tokenizer=tokenizer)
    return str(path)


def test_finetune_command_builds_distilberts_classifier_from_config_json(tmp_path, capsys):
    from minibert.cli import main as cli_main
    from test_finetuning_data import SENTIMENT

    model = _tiny_distilbert_folder(tmp_path / "distilbert", [open(SENTIMENT, encoding="utf-8").read()])
    output = tmp_path / "run"
    code = cli_main(["finetune", "--model", model, "--train", SENTIMENT, "--label-column", "sentiment",
                     "--validation", SENTIMENT, "--text-pair-column", "text", "--epochs", "2", "--batch-size", "8",
                     "--lr", "1e-3", "--max-length", "24", "--no-progress", "--output", str(output)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "DistilBertForSequenceClassification: initialised 4 new parameter(s)" in printed
    assert "validation accuracy" in printed
    saved = json.loads((output / "best_model" / "config.json").read_text())
    assert saved["model_type"] == "distilbert" and saved["architectures"] == ["DistilBertForSequenceClassification"]
    loaded = DistilBertForSequenceClassification.from_pretrained(output / "best_model")
    assert loaded.id2label == {0: "negative", 1: "neutral", 2: "positive"}
    assert not loaded.loading_info.missing_keys and (output / "best_model" / "vocab.txt").is_file()


def test_finetune_command_tags_words_with_distilbert(tmp_path, capsys, monkeypatch):
    from minibert.cli import main as cli_main
    from minibert.data import tasks

    words = [["Anna", "lives", "in", "Zurich"], ["Bob", "met", "Anna"], ["snow", "in", "Zurich"]] * 10
    tags = [["B-person", "O", "O", "B-location"], ["B-person", "O", "B-person"], ["O", "O", "B-location"]] * 10
    names = ["O", "B-location", "B-person"]
    data = tasks.TokenData(words, [[names.index(t) for t in row] for row in tags], names, list(range(30)), "tiny")
    monkeypatch.setattr(tasks, "load_wnut16", lambda: data)
    model = _tiny_distilbert_folder(tmp_path / "distilbert", [" ".join(s) for s in words])
    output = tmp_path / "run"
    assert cli_main(["finetune", "--task", "wnut16", "--model", model, "--epochs", "1", "--batch-size", "8",
                     "--max-length", "16", "--no-progress", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "fine-tuned: test entity F1" in printed
    saved = json.loads((output / "best_model" / "config.json").read_text())
    assert saved["architectures"] == ["DistilBertForTokenClassification"]


def test_finetune_command_refuses_unknown_families_in_one_line(tmp_path, capsys):
    from minibert.cli import main as cli_main
    from test_finetuning_data import SENTIMENT

    model = _tiny_distilbert_folder(tmp_path / "model", ["a b c"])
    config = json.loads((tmp_path / "model" / "config.json").read_text())
    (tmp_path / "model" / "config.json").write_text(json.dumps(dict(config, model_type="gpt2")))
    assert cli_main(["finetune", "--model", model, "--train", SENTIMENT, "--label-column", "sentiment"]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and error[0].endswith("model_type 'gpt2' cannot be fine-tuned here; expected one of "
                                                 "bert, distilbert, roberta"), error
    (tmp_path / "model" / "vocab.txt").unlink()
    (tmp_path / "model" / "config.json").write_text(json.dumps(config))
    assert cli_main(["finetune", "--model", model, "--train", SENTIMENT, "--label-column", "sentiment"]) == 2
    assert "no vocab.txt there (a distilbert checkpoint folder" in capsys.readouterr().err


def test_a_missing_tensor_is_named_as_the_file_names_it(tmp_path):
    from minibert import safetensors

    DistilBertForTokenClassification(_config(), num_labels=3, seed=1).save_pretrained(tmp_path)
    tensors = safetensors.load_file(str(tmp_path / "model.safetensors"))
    del tensors["distilbert.transformer.layer.1.ffn.lin1.weight"]
    safetensors.save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.warns(UserWarning) as caught:
        model = DistilBertForTokenClassification.from_pretrained(tmp_path)
    assert [str(w.message) for w in caught] == [
        f"1 parameter(s) of DistilBertForTokenClassification were not in {tmp_path} and keep their fresh random "
        "initialisation: distilbert.transformer.layer.1.ffn.lin1.weight. Train them before use (expected for a "
        "task head on a pretrained encoder)."]
    assert model.loading_info.missing_keys == ["distilbert.encoder.layer.1.intermediate.dense.weight"]
    with pytest.raises(ValueError, match="strict"):
        DistilBertForTokenClassification.from_pretrained(tmp_path, strict=True)
