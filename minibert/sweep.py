"""Finding the sweet spot: the learning-rate range test, sweeps of one knob at a time, and
the report that reads them.

**The range test** (:func:`lr_find`): train from the starting weights while the learning
rate grows exponentially, ``lr_i = start · (end / start)^(i / (n − 1))``, one step each, and
record the loss. Too low a rate and the loss barely moves; in the useful range it falls
quickly; too high and it turns up and blows up. The suggestion is the rate where the
smoothed loss falls fastest against log(lr) (the steepest descent), with the common
alternative, a tenth of the rate of the lowest loss, reported beside it.

**A sweep** (:func:`plan_runs`, :func:`run_sweep`): a baseline ``minibert pretrain`` (or
``minibert finetune --task``) command and knobs with several values each. By default one
knob changes at a time around the baseline ("one parameter change per test"); ``grid=True``
runs every combination. Each run is a separate process with one BLAS thread, as many at once
as there are cores, and keeps its own ``metrics.jsonl``; a sweep started again skips the
finished runs and resumes the interrupted ones (pretraining from its last checkpoint;
fine-tuning, which keeps no checkpoints, from the start). With :func:`same_compute`
(``--same-compute``) every pretraining run gets the baseline's tokens: a larger batch or a
longer sequence runs fewer steps.

**The report** (:func:`label_run`, :func:`write_report`): each run is *diverged* (a
non-finite loss, or a training loss that ends above where it began), *stagnant* (the
training loss fell by less than 5%, or a pretraining run's masked-LM accuracy ended at the
level of always guessing the most frequent token), *overfitting* (the validation loss rose
by more than 2% after its lowest point while the training loss kept falling) or *healthy*;
the best run is the one with the lowest validation loss; and the best learning rate of each
batch size is compared with the linear and the square-root scaling rules.
"""

from __future__ import annotations

import itertools
import json
import math
import os
import subprocess
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .optim import clip_grad_norm
from .plots import pyplot

KNOBS = {"lr": float, "batch_size": int, "warmup": float, "weight_decay": float,     # what a sweep may vary
         "max_seq_length": int}
JOBS = ("pretrain", "finetune")                 # the command each run of a sweep is
# each knob's option in the commands: the warm-up is a fraction or a number of steps in
# pretraining, and always a share of the steps in fine-tuning
OPTION_NAMES = {
    "pretrain": {"lr": "--lr", "batch_size": "--batch-size", "warmup": "--warmup", "weight_decay": "--weight-decay",
                 "max_seq_length": "--max-seq-length"},
    "finetune": {"lr": "--lr", "batch_size": "--batch-size", "warmup": "--warmup-ratio",
                 "weight_decay": "--weight-decay", "max_seq_length": "--max-length"},
}
SWEEP_FILE = "sweep.json"


# ---------------------------------------------------------------------------- the range test
@dataclass
class RangeTest:
    learning_rates: list
    losses: list                 # the training loss of each step
    smoothed: list               # its exponential moving average (bias-corrected)
    suggested_lr: float          # the steepest descent of the smoothed loss against log(lr)
    lowest_loss_lr: float        # the rate of the lowest smoothed loss
    reason: str

    def to_dict(self) -> dict:
        return dict(self.__dict__)


def exponential_ramp(start: float, end: float, steps: int):
    """The learning rate of step ``i`` (0-based) in a range test of ``steps`` steps."""
    if not (0 < start < end and math.isfinite(end)):
        raise ValueError(f"the range test needs 0 < start_lr < end_lr, got {start} and {end}")
    if steps < 2:
        raise ValueError(f"the range test needs at least 2 steps, got {steps}")
    return lambda i: start * (end / start) ** (i / (steps - 1))


def lr_find(trainer, start_lr: float = 1e-6, end_lr: float = 1.0, steps: int = 200,
            smoothing: float = 0.9, stop_factor: float = 4.0, progress: bool = True) -> RangeTest:
    """Run the learning-rate range test with ``trainer``'s model, optimizer and task.

    Each step is the loop's own step (``trainer.accumulate``, clipping, the optimizer) with the
    learning rate of the ramp. The test stops early once the smoothed loss exceeds
    ``stop_factor`` times its lowest value, or the loss is no longer finite. The model is
    changed by the test: build a fresh one for training.
    """
    from tqdm.auto import tqdm

    ramp = exponential_ramp(start_lr, end_lr, steps)
    rates, losses, smoothed = [], [], []
    average = 0.0
    trainer.model.train()
    for i in tqdm(range(steps), desc="lr-find", disable=not progress, dynamic_ncols=True):
        lr = ramp(i)
        loss = sum(trainer.accumulate(trainer.task.next_batches()).values())
        if not math.isfinite(loss):
            break
        if trainer.args.max_grad_norm is not None:
            clip_grad_norm(trainer.model.named_parameters(), trainer.args.max_grad_norm)
        trainer.optimizer.lr = lr
        trainer.optimizer.step()
        trainer.optimizer.zero_grad()
        average = smoothing * average + (1 - smoothing) * loss
        rates.append(lr)
        losses.append(loss)
        smoothed.append(average / (1 - smoothing ** (i + 1)))
        if smoothed[-1] > stop_factor * min(smoothed):
            break
    return _suggest(rates, losses, smoothed)


def _suggest(rates, losses, smoothed) -> RangeTest:
    if len(rates) < 3:
        raise ValueError(f"the range test stopped after {len(rates)} step(s): the loss was not finite "
                         "from the start; lower start_lr")
    lowest = int(np.argmin(smoothed))
    log_rates = np.log(rates)
    slopes = np.gradient(np.asarray(smoothed), log_rates)        # d(loss) / d(log lr)
    # the steepest fall before the lowest point, skipping the first steps (the average warms up)
    first = min(len(rates) // 10, max(lowest - 1, 0))
    steepest = first + int(np.argmin(slopes[first:lowest + 1]))
    suggested = rates[steepest]
    reason = (f"the smoothed loss falls fastest at lr {suggested:.2g} ({slopes[steepest]:.3f} per unit of "
              f"log lr), well before its lowest point at lr {rates[lowest]:.2g}, past which it turns up; "
              f"a tenth of that, {rates[lowest] / 10:.2g}, is the other common choice")
    return RangeTest(list(map(float, rates)), list(map(float, losses)), list(map(float, smoothed)),
                     float(suggested), float(rates[lowest]), reason)


def plot_range_test(result: RangeTest, path: str) -> str:
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    ax.plot(result.learning_rates, result.losses, lw=0.8, alpha=0.4, label="training loss")
    ax.plot(result.learning_rates, result.smoothed, lw=1.6, label="smoothed")
    ax.axvline(result.suggested_lr, color="green", ls="--", lw=1,
               label=f"suggested {result.suggested_lr:.2g} (steepest fall)")
    ax.axvline(result.lowest_loss_lr, color="gray", ls=":", lw=1, label=f"lowest loss {result.lowest_loss_lr:.2g}")
    ax.set_xscale("log")
    ax.set_xlabel("learning rate")
    ax.set_ylabel("loss")
    low, high = min(result.losses + result.smoothed), result.smoothed[0]
    ax.set_ylim(low - 0.1 * (high - low + 1e-9), high + 0.5 * (high - low + 1e-9))
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


# ---------------------------------------------------------------------------- planning a sweep
def parse_values(text: str, name: str) -> list:
    """``"1e-4,3e-4"`` -> ``[1e-4, 3e-4]`` for knob ``name``: numbers of its type, positive
    (warm-up and weight decay may be 0)."""
    flag, kind = "--" + name.replace("_", "-"), KNOBS[name]
    if not text.strip():
        raise ValueError(f"{flag}: no values given (comma-separated numbers, such as 1e-4,1e-3)")
    values = []
    for part in text.split(","):
        try:
            value = kind(part.strip())
        except ValueError:
            raise ValueError(f"{flag}: {part.strip()!r} is not {'an integer' if kind is int else 'a number'}") from None
        smallest_ok = 0 if name in ("warmup", "weight_decay") else None
        if not math.isfinite(value) or value < 0 or (value == 0 and smallest_ok is None):
            raise ValueError(f"{flag}: {part.strip()} must be {'0 or more' if smallest_ok == 0 else 'positive'}")
        values.append(value)
    return values


def run_name(values: dict) -> str:
    """A run's folder name from the knob values that differ from the baseline: ``lr=0.0003``."""
    return ",".join(f"{name}={value:g}" for name, value in sorted(values.items())) or "baseline"


def plan_runs(baseline: dict, knobs: dict, grid: bool = False) -> list[dict]:
    """The knob settings of each run: ``{knob: value}`` overrides of the baseline.

    One at a time (default): the baseline, then each knob's other values with everything else
    at the baseline. ``grid``: every combination.
    """
    if not knobs:
        raise ValueError("a sweep needs at least one knob with values, such as --lr 1e-4,1e-3")
    if grid:
        names = sorted(knobs)
        runs = [dict(zip(names, combination)) for combination in itertools.product(*(knobs[n] for n in names))]
    else:
        runs = [{}]
        for name in sorted(knobs):
            runs += [{name: value} for value in knobs[name] if value != baseline[name]]
    unique, seen = [], set()
    for run in runs:
        overrides = {n: v for n, v in run.items() if v != baseline[n]}
        if run_name(overrides) not in seen:
            seen.add(run_name(overrides))
            unique.append(overrides)
    return unique


def same_compute(baseline: dict, overrides: dict, steps: int, eval_every: int) -> dict:
    """The options that give a pretraining run as many tokens as the baseline's ``steps``
    (tokens = steps × batch size × sequence length, padding included: the compute): twice the
    batch or the sequence length, half the steps. The evaluation interval, and a warm-up given
    in steps, scale with them; a warm-up given as a fraction of the steps needs nothing."""
    run = {**baseline, **overrides}
    ratio = (baseline["batch_size"] * baseline["max_seq_length"]) / (run["batch_size"] * run["max_seq_length"])
    options = {"--steps": max(1, round(steps * ratio)), "--eval-every": max(1, round(eval_every * ratio))}
    if run["warmup"] >= 1:
        options["--warmup"] = max(1, round(run["warmup"] * ratio))
    return options


# ---------------------------------------------------------------------------- running a sweep
@dataclass
class Run:
    name: str
    overrides: dict
    settings: dict                     # the baseline with the overrides applied
    folder: str
    derived: dict = field(default_factory=dict)   # options that follow from the knobs: {"--steps": 1000}
    status: str = "pending"            # pending | finished | failed
    message: str = ""
    history: list = field(default_factory=list)


def run_arguments(job: str, output: str, name: str) -> list[str]:
    """The options that put one run of ``job`` in ``output/<name>/``, without a progress bar.

    An interrupted pretraining run continues from its last checkpoint; an interrupted
    fine-tuning run starts again, so the records of its first try are removed.
    """
    folder = os.path.join(output, name)
    if job == "pretrain":
        resume = ["--resume"] if os.path.isfile(os.path.join(folder, "latest_checkpoint.txt")) else []
        return ["--output-root", output, "--name", name, "--no-progress", *resume]
    if job == "finetune":
        if os.path.isfile(os.path.join(folder, "metrics.jsonl")):
            os.remove(os.path.join(folder, "metrics.jsonl"))          # the loop appends to it
        return ["--output", folder, "--no-progress"]
    raise ValueError(f"unknown job {job!r}; the jobs are {', '.join(JOBS)}")


def run_sweep(plan: list[dict], baseline: dict, command: list[str], output: str, jobs: int = 1,
              option_names: dict | None = None, log=print, job: str = "pretrain", derived=None) -> list[Run]:
    """Run ``command`` (``[python, -m, minibert.cli, pretrain, ...baseline options]``, or
    ``finetune`` with ``job="finetune"``) once per plan entry, ``jobs`` at a time, each with
    one BLAS thread, into ``output/<run name>/``.

    A finished run (``results.json``) is skipped; an interrupted one is resumed (see
    :func:`run_arguments`). A run that fails (divergence included) is recorded as failed with
    its last error line; the sweep goes on. ``derived(overrides)``, if given, returns more
    options for each run (:func:`same_compute`).
    """
    option_names = option_names or OPTION_NAMES[job]
    runs = [Run(run_name(o), o, {**baseline, **o}, os.path.join(output, run_name(o)),
                derived=derived(o) if derived else {}) for o in plan]
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", MKL_NUM_THREADS="1")
    waiting = [r for r in runs if not os.path.isfile(os.path.join(r.folder, "results.json"))]
    for r in runs:
        if r not in waiting:
            r.status = "finished"
            log(f"{r.name}: finished before, kept")
    active = []
    while waiting or active:
        while waiting and len(active) < jobs:
            r = waiting.pop(0)
            arguments = [*command, *run_arguments(job, output, r.name)]
            for name, value in r.overrides.items():
                arguments += [option_names[name], repr(value) if isinstance(value, float) else str(value)]
            for flag, value in r.derived.items():
                arguments += [flag, str(value)]
            os.makedirs(output, exist_ok=True)
            logfile = open(os.path.join(output, f"{r.name}.log"), "w", encoding="utf-8")
            active.append((r, subprocess.Popen(arguments, stdout=logfile, stderr=subprocess.STDOUT, env=env),
                           logfile, time.perf_counter()))
            log(f"{r.name}: started")
        time.sleep(0.2)
        for entry in list(active):
            r, process, logfile, started = entry
            if process.poll() is None:
                continue
            logfile.close()
            active.remove(entry)
            r.status = "finished" if process.returncode == 0 else "failed"
            if process.returncode != 0:
                lines = open(logfile.name, encoding="utf-8").read().strip().splitlines()
                r.message = (lines[-1].split(": error: ", 1)[-1] if lines
                             else f"exit status {process.returncode}")
            log(f"{r.name}: {r.status} in {time.perf_counter() - started:.0f} s" +
                (f" ({r.message})" if r.message else ""))
    for r in runs:
        r.history = read_metrics(r.folder)
    return runs


def read_metrics(folder: str) -> list:
    path = os.path.join(folder, "metrics.jsonl")
    if not os.path.isfile(path):
        return []
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def check_sweep_folder(output: str, description: dict) -> None:
    """Write ``sweep.json`` in a new sweep folder; refuse one that holds another sweep."""
    path = os.path.join(output, SWEEP_FILE)
    if os.path.isfile(path):
        with open(path, encoding="utf-8") as f:
            before = json.load(f)
        if before != description:
            raise ValueError(f"{output} holds another sweep (its {SWEEP_FILE} differs: other knobs or baseline); "
                             "give another --output, or the same options to resume it")
        return
    if os.path.isdir(output) and os.listdir(output):
        raise ValueError(f"{output} is not empty and holds no {SWEEP_FILE}: give another --output")
    os.makedirs(output, exist_ok=True)
    with open(path, "w", encoding="utf-8") as f:
        json.dump(description, f, indent=2)


# ---------------------------------------------------------------------------- reading a sweep
def label_run(history: list, failed_message: str = "", unigram_accuracy: float | None = None) -> tuple[str, str]:
    """``(label, why)`` for one run's metrics records (see the module docstring). A pretraining
    run whose last held-out masked-LM accuracy is within 10% of ``unigram_accuracy`` (always
    guessing the most frequent token) is stagnant however far its loss fell."""
    train = [r["loss"] for r in history if r.get("split") == "train"]
    evals = [(r["step"], r["loss"]) for r in history if r.get("split") == "eval"]
    if "diverged" in failed_message or "not finite" in failed_message or any(
            not math.isfinite(x) for x in train + [loss for _, loss in evals]):
        return "diverged", failed_message or "a non-finite loss"
    accuracies = [r["mlm_accuracy"] for r in history if r.get("split") == "eval" and "mlm_accuracy" in r]
    if unigram_accuracy and accuracies and accuracies[-1] <= 1.1 * unigram_accuracy:
        return "stagnant", (f"its held-out masked-LM accuracy ended at {accuracies[-1]:.3f}, the level of always "
                            f"guessing the most frequent token ({unigram_accuracy:.3f})")
    if len(train) < 3:                       # a short run: judge by its validations instead
        train = [loss for _, loss in evals]
    if len(train) < 2:
        return ("failed", failed_message) if failed_message else ("stagnant", "too few records to tell")
    window = max(1, len(train) // 5)
    first, last = float(np.mean(train[:window])), float(np.mean(train[-window:]))
    if last > first:
        return "diverged", f"the training loss rose from {first:.3f} to {last:.3f}"
    if last > 0.95 * first:
        return "stagnant", f"the training loss fell only from {first:.3f} to {last:.3f}"
    if len(evals) >= 2:
        best_step, best = min(evals, key=lambda e: e[1])
        final_step, final = evals[-1]
        at_best = [r["loss"] for r in history if r.get("split") == "train" and r["step"] <= best_step]
        if final > 1.02 * best and at_best and last < at_best[-1]:
            return "overfitting", (f"the validation loss turned up after step {best_step} ({best:.3f} -> {final:.3f} "
                                   f"at step {final_step}) while the training loss kept falling")
    if failed_message:
        return "failed", failed_message
    return "healthy", f"the training loss fell from {first:.3f} to {last:.3f}"


def unigram_accuracy(folder: str) -> float | None:
    """The accuracy of always guessing the most frequent token, as a finished pretraining run
    reports it in ``results.json`` (None for other runs)."""
    path = os.path.join(folder, "results.json")
    if not os.path.isfile(path):
        return None
    with open(path, encoding="utf-8") as f:
        return json.load(f).get("unigram_baseline_accuracy")


def best_validation(history: list) -> float:
    evals = [r["loss"] for r in history if r.get("split") == "eval" and math.isfinite(r["loss"])]
    return min(evals) if evals else math.inf


def scaling_check(runs: list[Run]) -> list[str]:
    """Does the best learning rate grow with the batch size? Compared with lr ∝ B and lr ∝ √B."""
    by_batch = {}
    for r in runs:
        value = best_validation(r.history)
        if math.isfinite(value):
            batch = r.settings["batch_size"]
            if batch not in by_batch or value < by_batch[batch][1]:
                by_batch[batch] = (r.settings["lr"], value)
    if len(by_batch) < 2 or len({lr for lr, _ in by_batch.values()}) < 1:
        return ["(needs runs at two or more batch sizes, each with several learning rates: use --grid)"]
    batches = sorted(by_batch)
    b0, (lr0, _) = batches[0], by_batch[batches[0]]
    lines = ["| batch size | best lr | linear rule (lr ∝ B) | square-root rule (lr ∝ √B) |", "|---|---|---|---|"]
    for b in batches:
        lines.append(f"| {b} | {by_batch[b][0]:.2g} | {lr0 * b / b0:.2g} | {lr0 * math.sqrt(b / b0):.2g} |")
    return lines


def best_score(history: list, metric: str) -> float | None:
    """The highest validation ``metric`` (accuracy, F1: higher is better) of a run, or None."""
    values = [r[metric] for r in history if r.get("split") == "eval" and isinstance(r.get(metric), (int, float))
              and math.isfinite(r[metric])]
    return max(values) if values else None


def write_report(runs: list[Run], baseline: dict, output: str, metric: str | None = None,
                 option_names: dict | None = None) -> tuple[str, list[dict]]:
    """``sweep_report.md`` (a table of the runs, the best one, the scaling check and the plots)
    and ``sweep_results.json``; returns the report's path and the results, one dict per run.

    The best run has the lowest validation loss; with ``metric`` (a fine-tuning sweep's
    ``accuracy`` or ``entity_f1``, higher is better) its best value gets a column and chooses the
    best run instead. ``option_names`` spell the baseline's knobs as the swept command does.
    """
    option_names = option_names or OPTION_NAMES["pretrain"]
    results = []
    for r in runs:
        label, why = label_run(r.history, r.message, unigram_accuracy(r.folder))
        results.append({"name": r.name, "settings": r.settings, "label": label, "why": why, "derived": r.derived,
                        "best_validation_loss": best_validation(r.history)})
        if metric:
            results[-1][f"best_validation_{metric}"] = best_score(r.history, metric)

    def score(row) -> str:
        value = row[f"best_validation_{metric}"]
        return " — |" if value is None else f" {value:.4f} |"

    def knobs(row) -> str:
        return ", ".join([f"{k} {v:g}" for k, v in sorted(row["settings"].items()) if k in KNOBS]
                         + [f"{flag[2:]} {value}" for flag, value in row["derived"].items()])

    rows = [f"| {row['name']} | {knobs(row)} | "
            f"{row['best_validation_loss']:.4f} |" + (score(row) if metric else "")
            + f" **{row['label']}** | {row['why']} |" for row in results]
    scored = [row for row in results if metric and row[f"best_validation_{metric}"] is not None]
    if scored:
        best = max(scored, key=lambda row: row[f"best_validation_{metric}"])
    else:
        best = min(results, key=lambda row: row["best_validation_loss"], default=None)
    plots = [plot_sweep_curves(runs, output), plot_sweet_spot(runs, output)]
    header = "| run | knobs | best validation loss |" + (f" best validation {metric} |" if metric else "")
    text = ["# Sweep report", "",
            "Baseline: " + ", ".join(f"`{option_names[k]} {v}`" for k, v in sorted(baseline.items())), "",
            header + " label | why |", "|---|---|---|" + ("---|" if metric else "") + "---|---|", *rows, ""]
    if scored:
        text += [f"Best: **{best['name']}** (validation {metric} {best[f'best_validation_{metric}']:.4f}, "
                 f"loss {best['best_validation_loss']:.4f}).", ""]
    elif best is not None and math.isfinite(best["best_validation_loss"]):
        text += [f"Best: **{best['name']}** (validation loss {best['best_validation_loss']:.4f}).", ""]
    if len({r.settings.get("max_seq_length") for r in runs}) > 1:
        text += ["Runs of different sequence lengths validate on different held-out sequences, so their "
                 "losses differ in kind: score them on one held-out set with "
                 "`python benchmarks/compare_recipes.py --max-seq-length N RUN...`.", ""]
    text += ["Learning rate against batch size:", "", *scaling_check(runs), ""]
    text += [f"![{os.path.basename(p)}]({os.path.basename(p)})" for p in plots if p]
    path = os.path.join(output, "sweep_report.md")
    with open(path, "w", encoding="utf-8") as f:
        f.write("\n".join(text) + "\n")
    with open(os.path.join(output, "sweep_results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    return path, results


def plot_sweep_curves(runs: list[Run], output: str) -> str | None:
    """The loss curves of all runs overlaid: training (thin) and validation (dots)."""
    if not any(r.history for r in runs):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(8, 4.8))
    for index, r in enumerate(runs):
        color = f"C{index % 10}"
        train = [(x["step"], x["loss"]) for x in r.history if x.get("split") == "train"]
        evals = [(x["step"], x["loss"]) for x in r.history if x.get("split") == "eval"]
        if train:
            ax.plot(*zip(*train), lw=0.9, alpha=0.6, color=color)
        if evals:
            ax.plot(*zip(*evals), "o-", ms=3, lw=1.4, color=color, label=r.name)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("loss (lines: training, dots: validation)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    fig.tight_layout()
    path = os.path.join(output, "sweep_curves.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def plot_sweet_spot(runs: list[Run], output: str) -> str | None:
    """Best validation loss against the learning rate (log axis), one line per batch size."""
    lines = {}
    for r in runs:
        value = best_validation(r.history)
        if math.isfinite(value):
            lines.setdefault(r.settings["batch_size"], []).append((r.settings["lr"], value))
    if not any(len(points) >= 2 for points in lines.values()):
        return None
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(7, 4.2))
    for batch, points in sorted(lines.items()):
        ax.plot(*zip(*sorted(points)), "o-", label=f"batch {batch}")
    ax.set_xscale("log")
    ax.set_xlabel("peak learning rate")
    ax.set_ylabel("best validation loss")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(output, "sweet_spot.png")
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
