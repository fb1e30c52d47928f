"""Prune the fine-tuned sentiment model: accuracy against sparsity, for weights and for heads.

    python examples/finetune_sentiment.py    # first: fine-tunes and saves runs/sentiment/best_model
    python examples/prune.py                 # about 15 minutes on two CPU cores
    python examples/prune.py --quick         # a smoke run (starts from the --quick fine-tuning)

Starting from the fine-tuned all-MiniLM-L6-v2 (6 layers x 12 heads; if the saved model is
missing, a short fine-tuning is run first), each row of the table is a fresh copy of it:

  * magnitude pruning: 30%, 50%, 70% of the encoder's weight-matrix entries (the smallest in
    absolute value over all 36 matrices) set to zero, gradually: the sparsity rises along a
    cubic ramp over the first half of the recovery steps, then the masks stay fixed;
  * head pruning: 20%, 40%, 60% of the 72 attention heads removed, the least important
    first (Michel et al.'s gradient-based importance, computed once on 256 training tweets
    with the unpruned model, normalised per layer, at least one head kept per layer);
  * the unpruned model, with and without the same recovery, as the reference;

each followed by the same short recovery fine-tuning (1,024 training tweets, two epochs, peak
learning rate 1e-4, as the fine-tuning) with knowledge distillation: the loss is half
cross-entropy on the labels, half the distance to the unpruned model's own predictions (its
logits on those tweets, softened at temperature 2), so the pruned model learns to answer as
the full one did. The unpruned model gets the same recovery as a control: the fine-tuning
stopped early on a small validation set, so more training alone moves its accuracy too. Accuracy and macro-F1 are measured on the same 2,000 test tweets as
finetune_sentiment.py reports on, before and after recovery, and each accuracy loss comes with
its paired standard error (the noise of a difference on these tweets); parameters,
the saved file size (and its zlib-compressed size), and the inference time per batch of 32
tweets: at the end all the models take turns over the same 4 test batches, 5 rounds, and
each keeps its best time, so a busy moment of the shared machine does not fall on one model.

The table goes to the terminal and to runs/prune/table.md, the figures to results.json and
the trade-off plot to pruning_tradeoff.png.
"""

import argparse
import json
import os
import sys
import time
import warnings

import numpy as np

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import finetune_sentiment  # noqa: E402  (the same data split as the fine-tuning example)

from minibert.data.finetuning import encode_classification  # noqa: E402
from minibert.finetune import FineTuner, FineTuningArguments, accuracy, macro_f1, predict  # noqa: E402
from minibert.heads import BertForSequenceClassification  # noqa: E402
from minibert.optim import AdamW  # noqa: E402
from minibert.plots import pyplot  # noqa: E402
from minibert.prune import (MagnitudePruner, compare_speed, format_reports, head_importance,  # noqa: E402
                            heads_for_fraction, measure, prune_heads_by_importance)
from minibert.tokenization import BertTokenizer  # noqa: E402

parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
parser.add_argument("--model", default=None, metavar="DIR",
                    help="fine-tuned classifier (default: runs/sentiment/best_model from finetune_sentiment.py)")
parser.add_argument("--output", default="runs/prune", metavar="DIR")
parser.add_argument("--sparsities", default="0.3,0.5,0.7", help="magnitude pruning levels")
parser.add_argument("--head-fractions", default="0.2,0.4,0.6", help="fractions of all heads removed")
parser.add_argument("--recovery-size", type=int, default=1024, help="training tweets for the recovery fine-tuning")
parser.add_argument("--distillation-weight", type=float, default=0.5,
                    help="share of the distillation loss in the recovery (0: labels only)")
parser.add_argument("--temperature", type=float, default=2.0, help="distillation temperature")
parser.add_argument("--test-size", type=int, default=2000)
parser.add_argument("--importance-size", type=int, default=256, help="training tweets for head importance")
parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate of the recovery")
parser.add_argument("--recovery-epochs", type=int, default=2)
parser.add_argument("--ramp", type=float, default=0.5,
                    help="magnitude pruning: fraction of the recovery steps over which the sparsity rises "
                         "(gradual pruning; 0: all at once before the recovery)")
parser.add_argument("--max-length", type=int, default=64)
parser.add_argument("--seed", type=int, default=0)
parser.add_argument("--quick", action="store_true", help="smoke run: 64 recovery, 64 test, 32 importance tweets")
args = parser.parse_args()
if args.quick:
    args.recovery_size, args.test_size, args.importance_size = 64, 64, 32
    args.output = "runs/prune-quick" if args.output == "runs/prune" else args.output
start = time.perf_counter()
os.makedirs(args.output, exist_ok=True)

# 1. The fine-tuned model (fine-tune one first if there is none).
model_dir = args.model or ("runs/sentiment-quick/best_model" if args.quick else "runs/sentiment/best_model")
if not os.path.isfile(os.path.join(model_dir, "config.json")):
    if args.model:
        sys.exit(f"{model_dir}: no config.json (give the folder of a fine-tuned classifier)")
    print(f"{model_dir} is missing: fine-tuning one first")
    finetune_sentiment.main(["--quick"] if args.quick else
                            ["--train-size", "1000", "--val-size", "200", "--epochs", "1", "--no-progress"])
tokenizer = BertTokenizer.from_pretrained(model_dir)


def load():
    """A fresh copy of the fine-tuned model for each experiment."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)
        return BertForSequenceClassification.from_pretrained(model_dir)


# 2. Data: the same split as the fine-tuning; recovery and importance from the training part.
(train, _, test, _), summary = finetune_sentiment.load_splits(
    max(args.recovery_size, args.importance_size), 1, args.test_size, args.seed)
recovery_set = encode_classification(train.subset(range(args.recovery_size)), tokenizer, args.max_length)
importance_set = encode_classification(train.subset(range(args.importance_size)), tokenizer, args.max_length)
test_set = encode_classification(test, tokenizer, args.max_length)
timing_batches = [test_set.get_batch(np.arange(i, i + 32)) for i in range(0, min(128, len(test_set)), 32)]
# Scoring does not depend on the order: sorted by length, batches hold less padding (faster).
test_set = test_set.subset(np.argsort(test_set.arrays["attention_mask"].sum(axis=1), kind="stable"))
print(f"{summary}\nrecovery on {args.recovery_size} training tweets, evaluation on {len(test_set)} test tweets")


def recover(model, pruner=None):
    """The short recovery fine-tuning, distilled from the unpruned model (magnitude masks kept
    through every step)."""
    settings = FineTuningArguments(epochs=args.recovery_epochs, batch_size=16, gradient_accumulation_steps=2, learning_rate=args.lr,
                                   warmup_ratio=0.1, progress=False, seed=args.seed,
                                   distillation_weight=args.distillation_weight,
                                   distillation_temperature=args.temperature)
    optimizer = AdamW(model.named_parameters(), lr=args.lr, weight_decay=0.01)
    FineTuner(model, settings, recovery_set, optimizer=pruner.wrap(optimizer) if pruner else optimizer,
              teacher_logits=teacher_logits if args.distillation_weight > 0 else None).train()


def scores(model):
    """(accuracy, macro-F1, which test tweets it gets right) on the test tweets."""
    predictions = predict(model, test_set, batch_size=64).argmax(axis=-1)
    labels = test_set.arrays["labels"]
    return accuracy(predictions, labels), macro_f1(predictions, labels, model.num_labels), predictions == labels


correct = {}                       # model name -> (N,) right or wrong, for paired comparisons


recovery_steps = args.recovery_epochs * -(-len(recovery_set) // 32)      # micro-batches of 16, two per step
ramp_steps = int(round(args.ramp * recovery_steps))


def experiment(name, kind, level, prune):
    """Prune a fresh copy, score it, recover, score and measure it again (speed comes later).

    "Before recovery" is the accuracy right after pruning all at once (for gradual magnitude
    pruning, measured on a separate copy pruned in one shot)."""
    t = time.perf_counter()
    if kind == "magnitude" and ramp_steps:
        one_shot = load()
        MagnitudePruner(one_shot, level)
        before = scores(one_shot)[:2]
    model = load()
    pruner = prune(model)
    if kind == "none+recovery":
        before = (reference.accuracy, reference.macro_f1)
    elif not (kind == "magnitude" and ramp_steps):
        before = scores(model)[:2]
    recover(model, pruner)
    report = measure(model, name)
    report.accuracy, report.macro_f1, correct[name] = scores(model)
    row = {"kind": kind, "level": level, "accuracy_before_recovery": before[0], "macro_f1_before_recovery": before[1]}
    print(f"{name:<24} accuracy {100 * before[0]:.2f}% -> {100 * report.accuracy:.2f}% after recovery, "
          f"{report.parameters:,} parameters ({time.perf_counter() - t:.0f} s)")
    return model, report, row


# 3. The reference: the fine-tuned model as it is.
dense = load()
reference = measure(dense, "fine-tuned (no pruning)")
reference.accuracy, reference.macro_f1, correct[reference.name] = scores(dense)
print(f"fine-tuned model: accuracy {100 * reference.accuracy:.2f}%, macro-F1 {100 * reference.macro_f1:.2f}%, "
      f"{reference.parameters:,} parameters")
teacher_logits = predict(dense, recovery_set, batch_size=64)     # what every recovery distils from

# 4. Head importance, once, on the unpruned model.
t = time.perf_counter()
importance = head_importance(dense, importance_set, batch_size=32)
print(f"head importance on {len(importance_set)} tweets ({time.perf_counter() - t:.0f} s); per layer, "
      "least important head: " + ", ".join(str(int(np.nanargmin(row))) for row in importance))

models, reports = [dense], [reference]
rows = [{"kind": "none", "level": 0.0, "accuracy_before_recovery": reference.accuracy,
         "macro_f1_before_recovery": reference.macro_f1}]
experiments = [("no pruning + recovery", "none+recovery", 0.0, lambda m: None)]
for s in (float(v) for v in args.sparsities.split(",")):
    experiments.append((f"{100 * s:.0f}% weights zeroed", "magnitude", s,
                        lambda m, s=s: MagnitudePruner(m, s, ramp_steps=ramp_steps)))
for f in (float(v) for v in args.head_fractions.split(",")):
    def prune_heads(m, f=f):
        prune_heads_by_importance(m, importance, heads_for_fraction(m, f))
    experiments.append((f"{100 * f:.0f}% heads removed", "heads", f, prune_heads))
for name, kind, level, prune in experiments:
    model, report, row = experiment(name, kind, level, prune)
    models.append(model)
    reports.append(report)
    rows.append(row)

# 5. Speed: every model in turn over the same batches, 5 rounds, the best time of each.
t = time.perf_counter()
for report, row, seconds in zip(reports, rows, compare_speed(models, timing_batches, rounds=5)):
    report.seconds_per_batch = seconds
    row.update(report.as_dict())
print(f"timed {len(models)} models in turns ({time.perf_counter() - t:.0f} s)")

# 6. The table, the targets and the plot.
table = format_reports(reports)
print("\n" + table)
control = next(r for r in rows if r["kind"] == "none+recovery")
lines = []
for row in rows:
    if row["kind"] in ("magnitude", "heads"):
        # Both models answer the same tweets, so the noise of the difference is the spread of the
        # per-tweet differences (right/wrong of one minus the other): one paired standard error.
        difference = correct[reference.name].astype(float) - correct[row["name"]]
        lost = 100 * difference.mean()
        error = 100 * difference.std(ddof=1) / np.sqrt(len(difference))
        lost_vs_control = 100 * (control["accuracy"] - row["accuracy"])
        speed = reference.seconds_per_batch / row["seconds_per_batch"]
        row.update(accuracy_lost=lost / 100, accuracy_lost_standard_error=error / 100, speedup=speed)
        lines.append(f"{row['name']:<22} accuracy lost {lost:+.2f} ± {error:.2f} points (vs the unpruned model "
                     f"recovered the same way: {lost_vs_control:+.2f}); inference {speed:.2f}x the unpruned speed")
print("\n".join(lines) + "\n(± one paired standard error over the test tweets)")
wall = time.perf_counter() - start
with open(os.path.join(args.output, "table.md"), "w", encoding="utf-8") as f:
    f.write(table + "\n\n" + "\n".join(lines) + "\n")
with open(os.path.join(args.output, "results.json"), "w", encoding="utf-8") as fh:
    json.dump({"model": model_dir, "data": summary, "recovery_size": args.recovery_size,
               "distillation_weight": args.distillation_weight, "temperature": args.temperature,
               "test_size": len(test_set),
               "importance_size": len(importance_set), "importance": importance.tolist(), "rows": rows,
               "wall_seconds": wall}, fh, indent=2)

plt = pyplot()
fig, (left, right) = plt.subplots(1, 2, figsize=(11, 4.2))
for kind, label, color in (("magnitude", "encoder weights zeroed", "tab:blue"),
                           ("heads", "attention heads removed", "tab:orange")):
    points = [(0.0, control["accuracy"], reference.accuracy)] + \
             [(r["level"], r["accuracy"], r["accuracy_before_recovery"]) for r in rows if r["kind"] == kind]
    x, after, before = (np.array(v) for v in zip(*points))
    left.plot(100 * x, 100 * after, "o-", color=color, label=f"{label}, after recovery")
    left.plot(100 * x, 100 * before, "x--", color=color, alpha=0.6, label=f"{label}, before recovery")
left.axhline(100 * reference.accuracy, color="gray", lw=1, label="fine-tuned, unpruned")
left.axhspan(100 * reference.accuracy - 1, 100 * reference.accuracy, color="gray", alpha=0.15,
             label="within 1 point")
left.set_xlabel("% pruned")
left.set_ylabel(f"test accuracy (%), {len(test_set)} tweets")
left.legend(fontsize=7)
left.grid(alpha=0.3)
heads = [r for r in rows if r["kind"] in ("none", "heads")]
x = [100 * r["level"] for r in heads]
right.bar([str(int(v)) for v in x], [1000 * r["seconds_per_batch"] for r in heads], color="tab:orange")
right.set_xlabel("% attention heads removed")
right.set_ylabel("ms per batch of 32 tweets (inference)")
for i, r in enumerate(heads):
    right.text(i, 1000 * r["seconds_per_batch"], f"{r['parameters'] / 1e6:.1f}M params", ha="center",
               va="bottom", fontsize=7)
fig.suptitle("Pruning the fine-tuned all-MiniLM-L6-v2 (sentiment of tweets)")
fig.tight_layout()
fig.savefig(os.path.join(args.output, "pruning_tradeoff.png"), dpi=90)
plt.close(fig)
written = "table.md, results.json and pruning_tradeoff.png"
print(f"\nwall time {wall / 60:.1f} min; {written} in {args.output}")
