"""The main job, ``minibert pretrain``, end to end on a small synthetic corpus (seconds)."""

import json
import os
import re
import warnings

import numpy as np
import pytest

from minibert.cli import main
from minibert.training import latest_checkpoint

WORDS = ("the value of a function returns data string number file object list in with for to "
         "this that is an").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    """30 documents of 8 sentences, blank lines between documents."""
    rng = np.random.default_rng(0)
    documents = []
    for _ in range(30):
        sentences = [" ".join(rng.choice(WORDS, size=rng.integers(4, 12))).capitalize() + "."
                     for _ in range(8)]
        documents.append("\n".join(sentences))
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return str(path)


def _pretrain(corpus, root, *extra):
    return main(["pretrain", "--corpus", corpus, "--vocab-size", "120", "--max-seq-length", "32",
                 "--batch-size", "4", "--eval-batches", "1", "--output-root", str(root), "--no-progress",
                 *extra])


def test_a_short_run_then_resume(corpus, tmp_path, capsys):
    assert _pretrain(corpus, tmp_path, "--steps", "2", "--eval-every", "2") == 0
    run = tmp_path / "pretrain"
    printed = capsys.readouterr().out
    assert "validation at step 2, the last and the best: loss" in printed and "(MLM" in printed
    assert "answer" in printed                                                  # the fill-mask demo ran
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 2 and np.isfinite(results["validation"]["mlm_loss"])
    assert latest_checkpoint(str(run)).endswith("checkpoint-2")
    assert main(["fill-mask", str(run / "best_model"), "the [MASK] of a function"]) == 0

    assert _pretrain(corpus, tmp_path, "--steps", "4") == 2                  # the run exists: refused
    assert "already holds a run" in capsys.readouterr().err
    assert _pretrain(corpus, tmp_path, "--steps", "4", "--eval-every", "2", "--resume") == 0
    assert "resumed at step 2 from" in capsys.readouterr().out
    assert json.loads((run / "results.json").read_text())["steps"] == 4
    assert latest_checkpoint(str(run)).endswith("checkpoint-4")
    assert _pretrain(corpus, tmp_path, "--steps", "6", "--resume", "--max-seq-length", "24") == 2
    assert "--max-seq-length 32 -> 24" in capsys.readouterr().err              # other examples: refused

    # resuming a finished run only redraws its curve: no warning, results.json untouched
    results = (run / "results.json").read_bytes()
    (run / "loss_curve.png").unlink()
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _pretrain(corpus, tmp_path, "--steps", "3", "--resume") == 0
    assert "is finished: its checkpoint is at step 4 and --steps is 3" in capsys.readouterr().out
    assert (run / "results.json").read_bytes() == results
    assert (run / "loss_curve.png").is_file()


def test_a_resumed_run_logs_each_step_once(corpus, tmp_path, monkeypatch, capsys):
    from minibert.training import Trainer

    assert _pretrain(corpus, tmp_path, "--steps", "4", "--eval-every", "2") == 0
    run = tmp_path / "pretrain"
    steps = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    state = json.loads((run / "checkpoint-4" / "trainer_state.json").read_text())
    state_path = run / "checkpoint-4" / "trainer_state.json"
    # a run stopped at step 3, whose last checkpoint is step 2: records 3 and 4 are redone
    (run / "latest_checkpoint.txt").write_text('"checkpoint-2"')
    os.rename(run / "checkpoint-4", run / "checkpoint-2")
    state["step"] = 2
    state["history"] = [r for r in state["history"] if r["step"] <= 2]
    state["data_position"] = state["data_position"]
    (run / "checkpoint-2" / "trainer_state.json").write_text(json.dumps(state))
    assert not state_path.exists()
    (run / "results.json").unlink()
    assert _pretrain(corpus, tmp_path, "--steps", "4", "--eval-every", "2", "--resume") == 0
    again = [json.loads(line)["step"] for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert again == steps                                   # no duplicate records of steps 3 and 4


def test_an_interrupted_run_says_what_survived_and_how_to_continue(corpus, tmp_path, monkeypatch, capsys):
    from minibert.training import Trainer

    train_step = Trainer._train_step

    def interrupted_at_step_3(self):
        if self.step == 2:
            raise KeyboardInterrupt
        return train_step(self)

    monkeypatch.setattr(Trainer, "_train_step", interrupted_at_step_3)
    assert _pretrain(corpus, tmp_path, "--steps", "4", "--eval-every", "2") == 130
    err = capsys.readouterr().err
    assert "interrupted at step 2; the checkpoint" in err and "checkpoint-2 (step 2) is kept" in err
    assert "minibert pretrain --corpus" in err and err.rstrip().endswith("--resume")
    monkeypatch.undo()
    assert _pretrain(corpus, tmp_path, "--steps", "4", "--eval-every", "2", "--resume") == 0


@pytest.mark.parametrize("extra, message", [
    (["--steps", "0"], "--steps must be a positive integer, got 0"),
    (["--lr", "nan"], "--lr must be a positive number, got nan"),
    (["--batch-size", "-1"], "--batch-size must be a positive integer, got -1"),
])
def test_a_failed_start_does_not_block_the_corrected_command(corpus, tmp_path, capsys, extra, message):
    assert _pretrain(corpus, tmp_path, *extra) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "pretrain")                        # refused before anything
    assert _pretrain(corpus, tmp_path, "--steps", "1") == 0


def test_a_start_that_failed_on_its_data_leaves_nothing_in_the_way(corpus, tmp_path, capsys):
    bad = tmp_path / "bad.txt"
    bad.write_bytes(open(corpus, "rb").read() + b"\nan invalid \xff byte.\n")
    assert _pretrain(corpus, tmp_path, "--steps", "1", "--corpus", str(bad)) == 2
    assert "invalid UTF-8" in capsys.readouterr().err
    # a start that failed later (here: simulated) leaves files, but no checkpoint: it is taken over
    run = tmp_path / "pretrain"
    (run / "tokenizer").mkdir(parents=True, exist_ok=True)
    (run / "run_shape.json").write_text(json.dumps({"corpus": str(bad)}))
    assert _pretrain(corpus, tmp_path, "--steps", "1") == 0
    assert "never reached a checkpoint: starting afresh" in capsys.readouterr().out
    assert json.loads((run / "run_shape.json").read_text())["corpus"] == corpus
    # with --resume too, and a folder holding someone else's files is left alone
    other = tmp_path / "other"
    other.mkdir()
    (other / "notes.txt").write_text("mine")
    assert _pretrain(corpus, tmp_path, "--steps", "1", "--name", "other", "--resume") == 2
    assert "holds files that are not a run's (notes.txt)" in capsys.readouterr().err


def test_the_reported_metrics_are_those_of_the_saved_model(corpus, tmp_path, capsys):
    from minibert import pretrain as job
    from minibert.data.corpus import split_documents
    from minibert.modeling import BertForPreTraining
    from minibert.training import evaluate_pretraining

    loaded = []
    from_pretrained = BertForPreTraining.from_pretrained.__func__

    def recorded(cls, folder, **kwargs):
        loaded.append(str(folder))
        return from_pretrained(cls, folder, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(BertForPreTraining, "from_pretrained", classmethod(recorded))
        assert _pretrain(corpus, tmp_path, "--steps", "6", "--eval-every", "2", "--lr", "3e-3") == 0
    run = tmp_path / "pretrain"
    results = json.loads((run / "results.json").read_text())
    evals = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    evals = [r for r in evals if r["split"] == "eval"]
    best = min(evals, key=lambda r: r["loss"])
    assert results["best_step"] == best["step"] and results["saved_model"].endswith("best_model")
    assert f"saved: {results['saved_model']} (the model of step {best['step']})" in capsys.readouterr().out
    assert loaded == [results["saved_model"]]                 # the fill-mask demo queries the saved model

    documents = job.load_documents(corpus)
    train_docs, val_docs = split_documents(documents, job.DEFAULTS["validation_fraction"], 0)
    tokenizer = job.build_tokenizer(train_docs, str(tmp_path), vocab=str(run / "tokenizer"))
    data = job.build_datasets(train_docs, val_docs, tokenizer, max_seq_length=32, batch_size=4)
    saved = BertForPreTraining.from_pretrained(results["saved_model"])
    metrics = evaluate_pretraining(saved, data.validation, max_batches=1)
    assert metrics["loss"] == pytest.approx(results["best_validation"]["loss"], rel=1e-6)
    assert metrics["mlm_accuracy"] == results["best_validation"]["mlm_accuracy"]


def test_options_work_between_positionals_and_warnings_are_one_line(corpus, tmp_path, capsys, monkeypatch):
    assert _pretrain(corpus, tmp_path, "--steps", "1") == 0
    model = str(tmp_path / "pretrain" / "best_model")
    capsys.readouterr()
    assert main(["fill-mask", model, "--top-k", "2", "the [MASK] of a function", "--device", "cpu"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0] == "the [MASK] of a function" and out[1].count("(") == 2     # two quoted candidates

    import minibert.cli_embed

    def warns(args):
        warnings.warn("something to know", UserWarning)
        return 0

    monkeypatch.setattr(minibert.cli_embed, "_fill_mask_command", warns)
    assert main(["fill-mask", model, "x"]) == 0
    assert capsys.readouterr().err == "warning: something to know\n"


def test_help_shows_each_default_once(capsys):
    for command in ("pretrain", "finetune"):
        with pytest.raises(SystemExit):
            main([command, "--help"])
        text = " ".join(capsys.readouterr().out.split())
        assert "(default: None)" not in text and not re.search(r"\(default:[^)]*\) \(default:", text)
    assert "passes over the training examples (default: 3)" in text         # finetune --epochs


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_divergence_keeps_the_last_good_checkpoint(corpus, tmp_path, capsys):
    assert _pretrain(corpus, tmp_path, "--steps", "2", "--eval-every", "2") == 0
    run = str(tmp_path / "pretrain")
    good = latest_checkpoint(run)
    weights = open(os.path.join(good, "model.safetensors"), "rb").read()
    capsys.readouterr()
    code = _pretrain(corpus, tmp_path, "--steps", "6", "--eval-every", "1", "--resume", "--lr", "1e30",
                     "--warmup", "0")
    assert code == 2
    assert "was kept" in capsys.readouterr().err
    assert latest_checkpoint(run) == good
    assert open(os.path.join(good, "model.safetensors"), "rb").read() == weights


def test_a_vocabulary_that_does_not_fit_the_corpus_is_pointed_out(corpus, tmp_path, capsys):
    vocab = tmp_path / "vocab.txt"
    vocab.write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nzebra\n")
    assert _pretrain(corpus, tmp_path, "--vocab", str(vocab), "--steps", "1") == 0
    assert "100% of the training tokens are [UNK]" in capsys.readouterr().out


@pytest.mark.parametrize("extra, message", [
    (["--validation-fraction", "0"], "--validation-fraction must be between 0 and 1"),
    (["--config", "no-such-config.json"], "--config no-such-config.json: no such file"),
    (["--warmup", "nan"], "--warmup must be a fraction of the steps"),
])
def test_bad_arguments_fail_before_any_work(corpus, tmp_path, capsys, extra, message):
    assert _pretrain(corpus, tmp_path, *extra) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "pretrain")


def test_an_output_root_that_is_a_file_is_one_line_of_error(corpus, tmp_path, capsys):
    (tmp_path / "file").write_text("x")
    assert _pretrain(corpus, tmp_path / "file", "--steps", "1") == 2
    err = capsys.readouterr().err
    assert err.startswith("minibert pretrain: error:") and "Traceback" not in err


# --------------------------------------------------------------------------- the steps, one by one
def test_the_job_steps_one_by_one(corpus, tmp_path):
    from collections import Counter

    from minibert import pretrain as job
    from minibert.data.corpus import split_documents
    from minibert.data.pretraining import tokenize_documents

    documents = job.load_documents(corpus)
    train_docs, val_docs = split_documents(documents, 0.2, 0)
    tokenizer = job.build_tokenizer(train_docs, str(tmp_path), vocab_size=120)
    assert (tmp_path / "tokenizer" / "vocab.txt").is_file()
    data = job.build_datasets(train_docs, val_docs, tokenizer, max_seq_length=32, batch_size=4)

    # token counts are the training text's, and the baseline is the most frequent training
    # token's share of the validation labels (ignored positions not counted)
    expected = Counter(t for doc in tokenize_documents(train_docs, tokenizer) for s in doc for t in s)
    assert data.token_counts == expected
    top, _ = expected.most_common(1)[0]
    labels = data.validation.arrays["labels"]
    labels = labels[labels != -100]
    assert job.unigram_baseline(data) == pytest.approx(np.mean(labels == top))

    # validation batches: every example once, in the same order at every evaluation
    first = [b["input_ids"] for b in data.validation]
    second = [b["input_ids"] for b in data.validation]
    assert all(np.array_equal(a, b) for a, b in zip(first, second)) and len(first) == len(second)
    np.testing.assert_array_equal(np.concatenate(first), data.validation.arrays["input_ids"])

    # fill-mask examples: one [MASK] where a word of one word piece was
    examples = job.held_out_fill_mask_examples(val_docs, tokenizer, count=5, seed=0)
    assert examples
    for text, answer in examples:
        assert text.split().count(tokenizer.mask_token) == 1
        assert len(tokenizer.tokenize(answer)) == 1

    # a word of several pieces is never the answer: one [MASK] stands for one token
    from minibert.tokenization import BertTokenizer

    pieces = tmp_path / "pieces.txt"
    pieces.write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "a", "is", "in", "of",
                                 "to", "it", "run", "func", "##tion"]) + "\n")
    split_words = BertTokenizer(str(pieces))
    assert split_words.tokenize("function") == ["func", "##tion"]
    sentences = [["a function is in a function of a function to it",      # no one-piece word
                  "a function is in a function of a run to it"]]          # one: "run"
    assert job.held_out_fill_mask_examples(sentences, split_words, count=5) == [
        ("a function is in a function of a [MASK] to it", "run")]

    # a given vocabulary is used as it is, and no other is trained
    given = tmp_path / "given"
    given.mkdir()
    (given / "vocab.txt").write_text("[PAD]\n[UNK]\n[CLS]\n[SEP]\n[MASK]\nthe\nvalue\n")
    assert len(job.build_tokenizer(train_docs, str(given), vocab=str(given / "vocab.txt"))) == 7
    assert sorted(os.listdir(given)) == ["vocab.txt"]


def test_warmup_in_steps_and_resume_keeps_the_runs_vocabulary(corpus, tmp_path):
    from minibert.optim import get_schedule

    assert _pretrain(corpus, tmp_path, "--steps", "4", "--warmup", "2", "--lr", "1e-3",
                     "--eval-every", "4") == 0
    run = tmp_path / "pretrain"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    train = [r for r in logged if r["split"] == "train"]            # logged at the last step
    schedule = get_schedule("linear", 1e-3, 2, 4)                  # --warmup 2 is two steps, not 2 x 4
    assert [r["step"] for r in train] == [4]
    assert train[0]["lr"] == pytest.approx(schedule(3)) and schedule(3) == pytest.approx(5e-4)

    vocab = run / "tokenizer" / "vocab.txt"
    tokens = vocab.read_text().splitlines()
    tokens[-1] = tokens[-1] + "x"                                   # mark the run's own vocabulary
    vocab.write_text("\n".join(tokens) + "\n")
    assert _pretrain(corpus, tmp_path, "--steps", "5", "--resume", "--eval-every", "5") == 0
    assert vocab.read_text().splitlines()[-1] == tokens[-1]         # used again, not trained anew


@pytest.mark.parametrize("change, message", [
    ({"max_position_embeddings": 16}, "--max-seq-length 32 exceeds the model's max_position_embeddings (16)"),
    ({"vocab_size": 999}, "but the model's vocab_size is 999"),
])
def test_a_config_that_does_not_fit_the_data_is_refused(corpus, tmp_path, capsys, change, message):
    from minibert.modeling import BertConfig

    assert _pretrain(corpus, tmp_path, "--steps", "1", "--name", "first") == 0
    vocab_size = len((tmp_path / "first" / "tokenizer" / "vocab.txt").read_text().splitlines())
    values = BertConfig.preset("tiny", vocab_size=vocab_size, max_position_embeddings=64).to_dict()
    values.update(change)
    config = tmp_path / "config.json"
    config.write_text(json.dumps(values))
    capsys.readouterr()
    assert _pretrain(corpus, tmp_path, "--steps", "1", "--config", str(config)) == 2
    assert message in capsys.readouterr().err
