"""Fine-tuning: a pretrained encoder with a task head, trained briefly and carefully.

BERT's practical tips, each a setting here: a small learning rate with warmup and linear
decay (AdamW), few epochs, early stopping on a validation metric (restoring the best weights),
and gradient accumulation when a batch does not fit in memory.

:class:`FineTuner` is the fine-tuning task of the one training loop
(:class:`minibert.training.Trainer`, which does the accumulation, clipping, schedule,
validation, early stopping, best weights, divergence stop, logging and plot). It supplies:

    next_batches()                  # the step's micro-batches: epoch e visits the examples
                                    # in the order permutation(seed, e)
    loss_items(batch)               # {"loss": n_i}, the labelled items the head's loss averages over
    forward_backward(model, batch, weights)
        out = model.forward(**batch)                    # input_ids, ..., labels
        model.backward(loss_weight=weights["loss"])     # n_i / n: the loop's exact accumulation
    validate(model)                 # evaluate() on the validation set, plus compute_metrics

With ``teacher_logits`` (knowledge distillation, e.g. a pruned model recovering from its
unpruned self) each micro-batch's loss is ``(1 - w) * CE + w * distillation`` instead, its
gradient sent back as ``model.backward(dlogits)`` (``FineTuner._distil``).

Data sets are random-access: ``len(dataset)`` and ``dataset.get_batch(indices) -> {name:
array}`` whose names are ``forward``'s arguments (minibert.data.finetuning builds them).
Evaluation helpers: :func:`evaluate`, :func:`predict`, :func:`accuracy`, :func:`macro_f1`,
:func:`confusion_matrix`; :func:`plot_finetuning_curves` draws the loss curves with the
early-stopping point.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

import numpy as np

from . import ops
from .backend import get_array_module, is_int_at_least, to_device, to_numpy
from .checkpoint import save_pretrained
from .heads import BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification
from .nn import no_grad
from .ops.cross_entropy import IGNORE_INDEX
from .plots import plot_loss_curves
from .training import Task, Trainer, TrainingArguments


# ============================================================================ metrics
def accuracy(predictions, labels) -> float:
    """Fraction of predictions equal to the label (labels of -100 are not counted)."""
    predictions, labels = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    counted = labels != IGNORE_INDEX
    return float((predictions[counted] == labels[counted]).mean()) if counted.any() else 0.0


def confusion_matrix(predictions, labels, num_labels: int) -> np.ndarray:
    """(C, C) counts: row = true label, column = predicted label (labels of -100 are not counted)."""
    predictions, labels = np.asarray(predictions).reshape(-1), np.asarray(labels).reshape(-1)
    counted = labels != IGNORE_INDEX
    matrix = np.zeros((num_labels, num_labels), dtype=np.int64)
    np.add.at(matrix, (labels[counted], predictions[counted]), 1)
    return matrix


def macro_f1(predictions, labels, num_labels: int) -> float:
    """Mean over classes of F1_c = 2 TP_c / (2 TP_c + FP_c + FN_c).

    Every class counts equally however rare it is (accuracy favours the frequent ones). A
    class that occurs neither among the labels nor among the predictions is left out of the
    mean (its F1 is 0/0).
    """
    matrix = confusion_matrix(predictions, labels, num_labels)
    tp = np.diag(matrix).astype(np.float64)
    fp = matrix.sum(axis=0) - tp                     # predicted c, was something else
    fn = matrix.sum(axis=1) - tp                     # was c, predicted something else
    denominator = 2 * tp + fp + fn
    present = denominator > 0
    return float((2 * tp[present] / denominator[present]).mean()) if present.any() else 0.0


def entity_spans(tags) -> list[tuple[str, int, int]]:
    """The entities of one sequence of BIO tags: [(type, first, last)], positions inclusive.

    As seqeval's default (conlleval's rules): an entity starts at ``B-x``, or at ``I-x`` not
    continuing an entity of type x (after ``O`` or another type); it runs over the ``I-x``
    that follow. ``O`` is outside every entity.
        ["B-PER", "I-PER", "O", "I-LOC", "B-LOC"] -> [("PER", 0, 1), ("LOC", 3, 3), ("LOC", 4, 4)]
    """
    spans, kind, first = [], None, 0
    for i, tag in enumerate(list(tags) + ["O"]):                # "O" at the end closes the last one
        prefix, _, name = tag.partition("-")
        if tag != "O" and (prefix not in ("B", "I") or not name):
            raise ValueError(f"tag {tag!r} at position {i} is not BIO: expected 'O', 'B-type' or 'I-type'")
        continues = prefix == "I" and name == kind
        if kind is not None and not continues:
            spans.append((kind, first, i - 1))
            kind = None
        if tag != "O" and not continues:
            kind, first = name, i
    return spans


def entity_f1(true_tags, predicted_tags) -> dict:
    """Entity-level precision, recall and F1 over a corpus of BIO-tagged sequences (seqeval's
    micro average): an entity counts as found only when its type and both ends are right.

        precision = correct / predicted entities, recall = correct / true entities
    """
    if len(true_tags) != len(predicted_tags):
        raise ValueError(f"got {len(true_tags)} true and {len(predicted_tags)} predicted sequences")
    correct = n_true = n_predicted = 0
    for k, (truth, guess) in enumerate(zip(true_tags, predicted_tags)):
        if len(truth) != len(guess):
            raise ValueError(f"sequence {k}: {len(truth)} true tags but {len(guess)} predicted")
        true_spans, predicted_spans = set(entity_spans(truth)), set(entity_spans(guess))
        correct += len(true_spans & predicted_spans)
        n_true += len(true_spans)
        n_predicted += len(predicted_spans)
    precision = correct / n_predicted if n_predicted else 0.0
    recall = correct / n_true if n_true else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return {"precision": precision, "recall": recall, "f1": f1, "true_entities": n_true,
            "predicted_entities": n_predicted}


def format_confusion_matrix(matrix, names=None) -> str:
    """The matrix as an aligned text table, true labels down, predictions across."""
    matrix = np.asarray(matrix)
    names = [str(n) for n in (names if names is not None else range(len(matrix)))]
    width = max(max(map(len, names)), len(str(int(matrix.max(initial=0)))), 4)
    lines = [" " * (width + 2) + "predicted ->",
             f"{'true':>{width}}  " + " ".join(f"{n:>{width}}" for n in names)]
    for name, row in zip(names, matrix):
        lines.append(f"{name:>{width}}  " + " ".join(f"{int(v):>{width}}" for v in row))
    return "\n".join(lines)


# ============================================================================ configuration
@dataclass
class FineTuningArguments:
    """Hyperparameters of a fine-tuning run (defaults follow BERT's fine-tuning recipe)."""

    epochs: int = 3
    batch_size: int = 32                     # sequences per micro-batch
    gradient_accumulation_steps: int = 1     # micro-batches per optimizer step
    learning_rate: float = 5e-5              # BERT's paper: one of 5e-5, 3e-5, 2e-5
    warmup_ratio: float = 0.1                # fraction of the steps with a rising learning rate
    weight_decay: float = 0.01
    max_grad_norm: float | None = 1.0
    max_steps: int | None = None             # stop after this many optimizer steps (before the epochs end)
    eval_every: int | None = None            # optimizer steps between validations; None: every epoch
    eval_batch_size: int | None = None       # None: batch_size
    metric: str | None = None                # early-stopping metric; None: accuracy for classifiers, else loss
    patience: int | None = None              # validations without improvement before stopping
    restore_best: bool = True                # end with the weights of the best validation
    log_every: int | None = None             # steps between training-loss records; None: ~20 per epoch
    seed: int = 0
    progress: bool = True                    # tqdm progress bar
    output_dir: str | None = None            # when set: best_model/, metrics.jsonl, loss_curve.png
    distillation_weight: float = 0.5         # with teacher logits: loss = (1 - w) CE + w distillation
    distillation_temperature: float = 2.0    # softening of both distributions in the distillation loss
    fp16: bool = False                       # float16 matrix products, float32 weights, dynamic loss scale

    def __post_init__(self):
        for name in ("epochs", "batch_size", "gradient_accumulation_steps"):
            value = getattr(self, name)
            if not is_int_at_least(value, 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("max_steps", "eval_every", "eval_batch_size", "patience", "log_every"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, (int, np.integer)) or value <= 0):
                raise ValueError(f"{name} must be a positive integer or None, got {value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0
                and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate!r}")
        if not 0.0 <= self.warmup_ratio < 1.0:
            raise ValueError(f"warmup_ratio must be in [0, 1), got {self.warmup_ratio!r}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {self.max_grad_norm!r}")
        if not 0.0 <= self.distillation_weight <= 1.0:
            raise ValueError(f"distillation_weight must be in [0, 1], got {self.distillation_weight!r}")
        if not self.distillation_temperature > 0:
            raise ValueError(f"distillation_temperature must be > 0, got {self.distillation_temperature!r}")


@dataclass
class FineTuningResult:
    """What :meth:`FineTuner.train` returns."""

    steps: int
    stopped_early: bool
    metric: str
    best_value: float | None
    best_step: int | None
    best_metrics: dict = field(default_factory=dict)      # the validation record of the best step
    history: list = field(default_factory=list)          # train and eval records, as in metrics.jsonl
    train_seconds: float = 0.0
    plot: str | None = None


# ============================================================================ the task
class FineTuner(Task):
    """Fine-tunes a model of minibert.heads on an encoded data set: the fine-tuning task of
    the training loop (:class:`minibert.training.Trainer`, which it builds and runs).

    ``compute_metrics(model, dataset) -> dict``, when given, adds metrics to every validation
    (e.g. exact match and F1 of question answering); its keys may be used as ``args.metric``.

    ``teacher_logits`` (N, C), one row per training example (e.g. ``predict(teacher,
    train_set)``), turns on knowledge distillation for a sequence classifier: each
    micro-batch's loss becomes ``(1 - w) * cross-entropy(labels) + w * T^2 * KL(teacher ||
    student)`` at temperature T (``args.distillation_weight``, ``distillation_temperature``;
    minibert.ops.distillation). A pruned model recovers this way from its unpruned self.
    """

    name = "fine-tuning"

    def __init__(self, model, args: FineTuningArguments, train_set, val_set=None, compute_metrics=None,
                 tokenizer=None, optimizer=None, teacher_logits=None):
        if len(train_set) == 0:
            raise ValueError("the training set is empty")
        if val_set is not None and len(val_set) == 0:
            raise ValueError("the validation set is empty (give None to train without validation)")
        if teacher_logits is not None:
            if not (isinstance(model, BertForSequenceClassification) and model.problem_type != "regression"):
                raise TypeError("distillation (teacher_logits) is for sequence classifiers, got "
                                f"{type(model).__name__}")
            teacher_logits = np.asarray(teacher_logits, dtype=np.float64)
            if teacher_logits.shape != (len(train_set), model.num_labels):
                raise ValueError(f"teacher_logits must have shape (training examples, labels) = "
                                 f"{(len(train_set), model.num_labels)}, got {teacher_logits.shape}")
        self.teacher_logits = teacher_logits
        self.model, self.args = model, args
        self.train_set, self.val_set = train_set, val_set
        self.compute_metrics = compute_metrics
        self.tokenizer = tokenizer
        self.metric = args.metric or ("accuracy" if _is_classifier(model) else "loss")
        if compute_metrics is None:                    # then evaluate() gives all there is
            available = ["loss"] + (["accuracy", "macro_f1"] if _is_classifier(model) else
                                    ["accuracy"] if isinstance(model, BertForMaskedLM) else [])
            if self.metric not in available:
                raise ValueError(f"metric {self.metric!r} is not measured for {type(model).__name__}; "
                                 f"expected one of {available} (or give compute_metrics)")
        if args.patience is not None and val_set is None:
            raise ValueError("early stopping (patience) needs a validation set")
        batches = math.ceil(len(train_set) / args.batch_size)             # the last one may be smaller
        self.steps_per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
        self.total_steps = args.epochs * self.steps_per_epoch
        if args.max_steps is not None:
            self.total_steps = min(self.total_steps, args.max_steps)
        self._steps = self._optimizer_steps()
        self.trainer = Trainer(model, TrainingArguments(
            output_dir=args.output_dir, checkpoints=False, max_steps=self.total_steps,
            gradient_accumulation_steps=args.gradient_accumulation_steps, learning_rate=args.learning_rate,
            warmup_steps=int(round(args.warmup_ratio * self.total_steps)), schedule="linear",
            weight_decay=args.weight_decay, max_grad_norm=args.max_grad_norm,
            eval_every=args.eval_every or self.steps_per_epoch,
            log_every=args.log_every or max(1, self.steps_per_epoch // 20),
            metric=self.metric, patience=args.patience, restore_best=args.restore_best, seed=args.seed,
            progress=args.progress, fp16=args.fp16), task=self, optimizer=optimizer, tokenizer=tokenizer)

    # the trainer's state, read here as well
    optimizer = property(lambda self: self.trainer.optimizer)
    schedule = property(lambda self: self.trainer.schedule)
    step = property(lambda self: self.trainer.step)
    history = property(lambda self: self.trainer.history)

    def train(self) -> FineTuningResult:
        """Train for ``epochs`` (or ``max_steps``), validating and early-stopping; returns a summary."""
        summary = self.trainer.train()
        if self.args.output_dir and not self.args.restore_best:
            save_pretrained(self.model, os.path.join(self.args.output_dir, "final_model"), self.tokenizer)
        return FineTuningResult(summary["steps"], summary["stopped_early"], self.metric, summary["best_value"],
                                summary["best_step"], summary["best_metrics"], summary["history"],
                                summary["train_seconds"], summary["plot"])

    # ------------------------------------------------------------------ batches and loss
    def _optimizer_steps(self):
        """The micro-batches' indices, grouped into optimizer steps, epoch after epoch."""
        size, k = self.args.batch_size, self.args.gradient_accumulation_steps
        for epoch in range(self.args.epochs):
            self.epoch = epoch
            order = np.random.default_rng([self.args.seed, epoch]).permutation(len(self.train_set))
            chunks = [order[i:i + size] for i in range(0, len(order), size)]
            yield from (chunks[i:i + k] for i in range(0, len(chunks), k))

    def next_batches(self) -> list:
        batches = []
        for indices in next(self._steps):
            batch = self.train_set.get_batch(indices)
            if self.teacher_logits is not None:
                batch["teacher_logits"] = self.teacher_logits[indices]
            batches.append(batch)
        return batches

    def loss_items(self, batch) -> dict:
        return {"loss": loss_items(self.model, batch)}

    def forward_backward(self, model, batch, weights: dict) -> dict:
        if "teacher_logits" in batch:
            return {"loss": self._distil(model, batch, weights["loss"])}
        out = model.forward(**batch)
        model.backward(loss_weight=weights["loss"])
        return {"loss": out.loss}

    def _distil(self, model, batch, weight: float) -> float:
        """One micro-batch of (1 - w) cross-entropy + w distillation; backpropagates ``weight`` times it."""
        w, temperature = self.args.distillation_weight, self.args.distillation_temperature
        inputs = {name: array for name, array in batch.items() if name != "teacher_logits"}
        logits = model.forward(**inputs).logits                                   # (B, C)
        xp = get_array_module(logits)
        labels = xp.asarray(to_device(batch["labels"], model.device)).reshape(-1)
        hard_loss, hard_cache = ops.cross_entropy_forward(logits, labels)
        soft_loss, soft_cache = ops.distillation_forward(logits, xp.asarray(batch["teacher_logits"]), temperature)
        dlogits = (ops.cross_entropy_backward((1.0 - w) * weight, hard_cache)
                   + ops.distillation_backward(w * weight, soft_cache))
        model.backward(dlogits)
        return (1.0 - w) * hard_loss + w * soft_loss

    def accumulate(self, batches, teacher_logits=None) -> float:
        """Forward and backward of several micro-batches, gradients summed as one batch; returns its loss.

        ``teacher_logits``: one (B_i, C) array per micro-batch, to distil from (see the class).
        """
        if teacher_logits is not None:
            batches = [dict(batch, teacher_logits=t) for batch, t in zip(batches, teacher_logits)]
        return sum(self.trainer.accumulate(batches).values())

    # ------------------------------------------------------------------ evaluation
    def validate(self, model) -> dict:
        return self.evaluate() if self.val_set is not None else {}

    def predict(self, dataset, batch_size: int | None = None) -> np.ndarray:
        """Logits of every example, in order, without labels: (N, C), or (N, T, C) padded with 0."""
        return predict(self.model, dataset, batch_size or self.args.eval_batch_size or self.args.batch_size)

    def evaluate(self, dataset=None) -> dict:
        """Loss (and accuracy / macro-F1 for classifiers, plus ``compute_metrics``) on a data set."""
        dataset = self.val_set if dataset is None else dataset
        metrics = evaluate(self.model, dataset, self.args.eval_batch_size or self.args.batch_size)
        if self.compute_metrics is not None:
            metrics.update(self.compute_metrics(self.model, dataset))
        return metrics

    def plot(self, path: str | None = None, early_stop_step: int | None = None,
             best_step: int | None = None) -> str | None:
        """The loss curves of the run (see :meth:`minibert.training.Trainer.plot`)."""
        return self.trainer.plot(path, early_stop_step, best_step)


def finetune(model, train_set, val_set=None, compute_metrics=None, tokenizer=None, **kwargs) -> FineTuningResult:
    """``FineTuner(model, FineTuningArguments(**kwargs), train_set, val_set).train()``."""
    return FineTuner(model, FineTuningArguments(**kwargs), train_set, val_set, compute_metrics, tokenizer).train()


def plot_finetuning_curves(history: list, path: str, early_stop_step: int | None = None,
                           best_step: int | None = None, metric: str = "loss") -> str | None:
    """Training and validation loss with the best step (whose weights early stopping keeps)
    and the early stop marked; see :func:`minibert.plots.plot_loss_curves`."""
    return plot_loss_curves(history, path, best_step=best_step, early_stop_step=early_stop_step,
                            best_label=f"best validation {metric} (weights kept)")


# ============================================================================ baselines
class BagOfWordsClassifier:
    """Multinomial naive Bayes over word counts: the baseline a fine-tuned classifier must beat.

        log P(c | text) = log P(c) + sum over words w of count(w) log P(w | c) + const
        P(w | c) = (count of w in class c + 1) / (words in class c + vocabulary size)

    ``words`` turns a text into its words (e.g. a tokenizer's ``basic.tokenize``).
    """

    def __init__(self, words):
        self.words = words

    def fit(self, texts, labels, num_labels: int) -> "BagOfWordsClassifier":
        index, rows = {}, []
        for text in texts:
            rows.append([index.setdefault(w, len(index)) for w in self.words(text)])
        counts = np.ones((num_labels, len(index)))                   # (C, W), Laplace smoothing
        for row, label in zip(rows, labels):
            np.add.at(counts[label], row, 1)
        self.index = index
        self.log_word = np.log(counts / counts.sum(axis=1, keepdims=True))          # (C, W)
        prior = np.bincount(np.asarray(labels), minlength=num_labels) + 1.0
        self.log_prior = np.log(prior / prior.sum())                                 # (C,)
        return self

    def predict(self, texts) -> np.ndarray:
        scores = []
        for text in texts:
            seen = [self.index[w] for w in self.words(text) if w in self.index]     # unseen words: no evidence
            scores.append(self.log_prior + self.log_word[:, seen].sum(axis=1))
        return np.argmax(scores, axis=1)


class DictionaryTagger:
    """Each word gets the tag it had most often in the training data; an unseen word gets the
    most frequent tag overall (``O``). A tag ``I-x`` that cannot continue an entity is read
    as the start of one (``entity_spans``), so the dictionary's tags need no repair."""

    def fit(self, sentences, tags) -> "DictionaryTagger":
        counts, overall = {}, {}
        for words, row in zip(sentences, tags):
            for word, tag in zip(words, row):
                per_word = counts.setdefault(word, {})
                per_word[tag] = per_word.get(tag, 0) + 1
                overall[tag] = overall.get(tag, 0) + 1
        self.default = max(overall, key=overall.get)
        self.table = {word: max(seen, key=seen.get) for word, seen in counts.items()}
        return self

    def predict(self, sentences) -> list[list]:
        return [[self.table.get(word, self.default) for word in words] for words in sentences]


# ============================================================================ helpers
def _is_classifier(model) -> bool:
    return isinstance(model, BertForTokenClassification) or (
        isinstance(model, BertForSequenceClassification) and model.problem_type != "regression")


def loss_items(model, batch) -> int:
    """How many items the head's mean loss averages over in ``batch`` (its weight in a step).

    Classification: labels that are not -100 (sequences or tokens); regression: the values;
    question answering: the sequences (exact unless some positions are -100); masked LM: the
    labelled tokens.
    """
    if "labels" in batch:
        labels = np.asarray(batch["labels"])
        if getattr(model, "problem_type", None) == "regression":
            return int(labels.size)
        return int((labels != IGNORE_INDEX).sum())
    if "start_positions" in batch:
        return int(len(batch["start_positions"]))
    raise ValueError("a training batch needs labels (or start_positions / end_positions); "
                     f"got keys {sorted(batch)}")


def _batches(dataset, batch_size):
    for start in range(0, len(dataset), batch_size):
        yield dataset.get_batch(np.arange(start, min(start + batch_size, len(dataset))))


def _pad_to(array, width):
    if array.ndim < 3 or array.shape[1] == width:
        return array
    pad = [(0, 0), (0, width - array.shape[1])] + [(0, 0)] * (array.ndim - 2)
    return np.pad(array, pad)


def predict(model, dataset, batch_size: int = 32) -> np.ndarray:
    """Logits for every example (no labels, no caches, evaluation mode).

    (N, C) per sequence, or (N, T, C) per token with the rows padded with zeros to the data
    set's longest sequence (question answering: C = 2, [..., 0] start and [..., 1] end).
    """
    model.eval()
    width = getattr(dataset, "max_length", None)
    outputs = []
    with no_grad():
        for batch in _batches(dataset, batch_size):
            inputs = {k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in batch}
            logits = to_numpy(model.forward(**inputs).logits)
            outputs.append(logits)
    if outputs[0].ndim == 3:
        width = width or max(o.shape[1] for o in outputs)
        outputs = [_pad_to(o, width) for o in outputs]
    return np.concatenate(outputs)


def evaluate(model, dataset, batch_size: int = 32) -> dict:
    """Mean loss over the data set's labelled items, plus accuracy and macro-F1 for classifiers.

    (The mean of the per-batch losses weighted by their item counts: the loss of the whole set.)
    """
    if len(dataset) == 0:
        raise ValueError("the evaluation data set is empty")
    model.eval()
    loss_sum, items = 0.0, 0
    predictions, labels = [], []
    correct_masked = 0
    with no_grad():
        for batch in _batches(dataset, batch_size):
            out = model.forward(**batch)
            count = loss_items(model, batch)
            loss_sum += out.loss * count
            items += count
            if _is_classifier(model):
                predictions.append(to_numpy(out.logits).argmax(-1).reshape(-1))
                labels.append(np.asarray(batch["labels"]).reshape(-1))
            elif isinstance(model, BertForMaskedLM):
                targets = np.asarray(batch["labels"]).reshape(-1)[to_numpy(out.masked_positions)]
                correct_masked += int((to_numpy(out.logits).argmax(-1) == targets).sum())
    metrics = {"loss": loss_sum / max(items, 1)}
    if predictions:
        predictions, labels = np.concatenate(predictions), np.concatenate(labels)
        metrics["accuracy"] = accuracy(predictions, labels)
        metrics["macro_f1"] = macro_f1(predictions, labels, model.num_labels)
    elif isinstance(model, BertForMaskedLM):
        metrics["accuracy"] = correct_masked / max(items, 1)
    return metrics


def classification_report(model, dataset, batch_size: int = 32) -> dict:
    """accuracy, macro_f1 and the confusion matrix (as a list of rows) of a classifier on a data set."""
    if not _is_classifier(model):
        raise TypeError(f"classification_report needs a classifier, got {type(model).__name__}")
    logits = predict(model, dataset, batch_size)
    labels = dataset.arrays["labels"]
    predictions = logits.argmax(-1)[:, :labels.shape[1]] if logits.ndim == 3 else logits.argmax(-1)
    matrix = confusion_matrix(predictions, labels, model.num_labels)
    return {"accuracy": accuracy(predictions, labels), "macro_f1": macro_f1(predictions, labels, model.num_labels),
            "confusion_matrix": matrix.tolist(), "examples": int(len(labels))}


def squad_compute_metrics(examples, max_answer_length: int = 30):
    """A ``compute_metrics`` for question answering: exact match and F1 of the predicted answers.

    ``examples`` are the SquadExamples the validation features were prepared from
    (minibert.data.finetuning.prepare_squad_features); early-stop on ``metric="f1"``.
    """
    from .data.finetuning import postprocess_squad
    from .data.squad_metric import squad_evaluate

    def compute(model, features) -> dict:
        logits = predict(model, features)                                  # (F, T, 2)
        answers = postprocess_squad(examples, features, logits[..., 0], logits[..., 1], max_answer_length)
        scores = squad_evaluate(examples, answers)
        return {"exact_match": scores["exact_match"], "f1": scores["f1"]}

    return compute


__all__ = ["FineTuningArguments", "FineTuningResult", "FineTuner", "finetune", "evaluate", "predict",
           "classification_report", "accuracy", "macro_f1", "confusion_matrix", "format_confusion_matrix",
           "entity_spans", "entity_f1", "BagOfWordsClassifier", "DictionaryTagger",
           "plot_finetuning_curves", "loss_items", "squad_compute_metrics"]
