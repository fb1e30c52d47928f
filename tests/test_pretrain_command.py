"""The main job, ``minibert pretrain``, end to end on a small synthetic corpus (seconds)."""

import json
import os

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
    assert "validation: MLM loss" in printed and "answer" in printed          # the fill-mask demo ran
    results = json.loads((run / "results.json").read_text())
    assert results["steps"] == 2 and np.isfinite(results["validation"]["mlm_loss"])
    assert latest_checkpoint(str(run)).endswith("checkpoint-2")
    assert main(["fill-mask", str(run / "best_model"), "the [MASK] of a function"]) == 0

    assert _pretrain(corpus, tmp_path, "--steps", "4") == 2                  # the run exists: refused
    assert "already holds a run" in capsys.readouterr().err
    assert _pretrain(corpus, tmp_path, "--steps", "4", "--eval-every", "2", "--resume") == 0
    assert json.loads((run / "results.json").read_text())["steps"] == 4
    assert latest_checkpoint(str(run)).endswith("checkpoint-4")
    capsys.readouterr()
    assert _pretrain(corpus, tmp_path, "--steps", "6", "--resume", "--max-seq-length", "24") == 2
    assert "--max-seq-length 32 -> 24" in capsys.readouterr().err              # other examples: refused
    with pytest.warns(UserWarning, match="checkpoint is at step 4 and max_steps is 3: nothing to train"):
        assert _pretrain(corpus, tmp_path, "--steps", "3", "--resume") == 0


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
