"""examples/pretraining_matters.py on a tiny model and tiny data: both starts, the same budget,
one plot per task."""

import json
import os

import numpy as np
import pytest

from minibert.data.finetuning import ClassificationData
from minibert.modeling import BertConfig, BertForPreTraining
from minibert.tokenization import BertTokenizer

from conftest import load_script

WORDS = {"good": "good great fine nice happy", "bad": "bad awful sad poor ugly"}


def _example():
    return load_script("examples", "pretraining_matters.py")


def _data(n, seed):
    rng = np.random.default_rng(seed)
    labels = [int(i % 2) for i in range(n)]
    texts = [" ".join(rng.choice(WORDS["good" if y == 0 else "bad"].split(), size=4)) for y in labels]
    return ClassificationData(texts, labels, ["good", "bad"], list(range(n)), "tiny")


@pytest.fixture(scope="module")
def run_folder(tmp_path_factory):
    """A ``minibert pretrain``-like run folder whose best_model/ is a tiny random BERT."""
    folder = tmp_path_factory.mktemp("pretrain")
    words = sorted(set(" ".join(WORDS.values()).split()))
    tokenizer = BertTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + words)
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=16)
    BertForPreTraining(config, seed=5).save_pretrained(folder / "best_model", tokenizer=tokenizer)
    return str(folder)


def test_the_two_starts_differ_only_in_the_encoder(run_folder):
    example = _example()
    folder = example.model_folder(run_folder)
    assert folder.endswith("best_model")
    pretrained = example.build_classifier(folder, ["good", "bad"], pretrained=True, seed=1)
    random = example.build_classifier(folder, ["good", "bad"], pretrained=False, seed=1)
    saved = BertForPreTraining.from_pretrained(folder)
    name = "bert.embeddings.word_embeddings.weight"
    weights = lambda model: dict(model.named_parameters())[name].data        # noqa: E731
    np.testing.assert_array_equal(weights(pretrained), weights(saved))
    assert not np.allclose(weights(random), weights(saved))
    assert weights(random).shape == weights(saved).shape
    np.testing.assert_array_equal(dict(pretrained.named_parameters())["classifier.weight"].data,
                                  dict(random.named_parameters())["classifier.weight"].data)
    with pytest.raises(FileNotFoundError, match="neither it nor its best_model/"):
        example.model_folder(os.path.dirname(run_folder))


def test_the_example_end_to_end_on_tiny_data(run_folder, tmp_path, monkeypatch, capsys):
    example = _example()
    monkeypatch.setattr(example, "load_task", lambda task: _data(60, seed=len(task)))
    results = example.main([run_folder, "--train-size", "12", "--val-size", "6", "--test-size", "6",
                            "--steps", "6", "--batch-size", "4", "--eval-every", "2", "--max-length", "8",
                            "--output", str(tmp_path / "out"), "--images", str(tmp_path / "images"),
                            "--no-progress"])
    for task in ("bbc-news", "sentiment"):
        result = results[task]
        assert result["pretrained"]["steps"] == result["random"]["steps"] == [0, 2, 4, 6]    # the same budget
        for start in ("pretrained", "random"):
            assert all(0.0 <= a <= 1.0 for a in result[start]["accuracy"])
            assert 0.0 <= result[start]["test_accuracy"] <= 1.0
        assert os.path.getsize(tmp_path / "images" / f"pretraining_matters_{task}.png") > 0
    saved = json.loads((tmp_path / "out" / "results.json").read_text())
    assert saved["sentiment"]["settings"]["steps"] == 6 and saved["sentiment"]["settings"]["epochs_at_most"] == 2
    assert saved["wall_seconds"] > 0 and saved["bbc-news"]["majority_validation_accuracy"] >= 0.5
    assert "majority class: test accuracy" in capsys.readouterr().out


@pytest.mark.parametrize("argv, message", [
    (["--tasks", "imdb"], "--tasks: unknown task(s) imdb"),
    (["--steps", "0"], "--steps must be positive"),
])
def test_bad_arguments_are_one_line(run_folder, argv, message, capsys):
    with pytest.raises(SystemExit):
        _example().parse_args([run_folder, *argv])
    assert message in capsys.readouterr().err


def test_sizes_larger_than_a_part_are_refused():
    with pytest.raises(ValueError, match="--train-size must be between 1 and 48"):
        _example().split_task(_data(60, 0), 100, 1, 1)
