"""Fine-tuning: a pretrained encoder with a task head, trained briefly and carefully.

BERT's practical tips, each a setting here: a small learning rate with warmup and linear
decay (AdamW), few epochs, early stopping on a validation metric (restoring the best weights),
and gradient accumulation when a batch does not fit in memory.

One optimizer step, top to bottom (``FineTuner._train_step``):

    for each of the k micro-batches:                          # gradient accumulation
        out = model.forward(**batch)                          # input_ids, ..., labels
        model.backward(loss_weight=n_i / n)                   # n_i labelled items of n in the step
    clip_grad_norm(...); optimizer.lr = schedule(step); optimizer.step(); optimizer.zero_grad()

With ``teacher_logits`` (knowledge distillation, e.g. a pruned model recovering from its
unpruned self) each micro-batch's loss is ``(1 - w) * CE + w * distillation`` instead, its
gradient sent back as ``model.backward(dlogits)`` (``FineTuner._distil``).

Each head's loss is a mean over its labelled items (sequences, or tokens that are not -100),
so weighting micro-batch i by its share n_i / n sums the k gradients to exactly the gradient
of one batch of all n items.

Data sets are random-access: ``len(dataset)`` and ``dataset.get_batch(indices) -> {name:
array}`` whose names are ``forward``'s arguments (minibert.data.finetuning builds them);
epoch e visits the examples in the order ``permutation(seed, e)``. Evaluation helpers: :func:`accuracy`,
:func:`macro_f1`, :func:`confusion_matrix`; :func:`plot_finetuning_curves` draws the loss
curves with the early-stopping point.
"""

from __future__ import annotations

import json
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np

from . import ops
from .backend import get_array_module, is_int_at_least, to_device, to_numpy
from .checkpoint import save_pretrained
from .heads import BertForMaskedLM, BertForSequenceClassification, BertForTokenClassification
from .nn import no_grad
from .ops.cross_entropy import IGNORE_INDEX
from .optim import AdamW, clip_grad_norm, get_schedule
from .plots import plot_loss_curves
from .training import TrainingDiverged


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


# ============================================================================ the loop
def _lower_is_better(metric: str) -> bool:
    return metric == "loss" or metric.endswith("_loss") or metric in ("mse", "perplexity")


class FineTuner:
    """Fine-tunes a model of minibert.heads on an encoded data set (see the module docstring).

    ``compute_metrics(model, dataset) -> dict``, when given, adds metrics to every validation
    (e.g. exact match and F1 of question answering); its keys may be used as ``args.metric``.

    ``teacher_logits`` (N, C), one row per training example (e.g. ``predict(teacher,
    train_set)``), turns on knowledge distillation for a sequence classifier: each
    micro-batch's loss becomes ``(1 - w) * cross-entropy(labels) + w * T^2 * KL(teacher ||
    student)`` at temperature T (``args.distillation_weight``, ``distillation_temperature``;
    minibert.ops.distillation). A pruned model recovers this way from its unpruned self.
    """

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
        self.lower_is_better = _lower_is_better(self.metric)
        if args.patience is not None and val_set is None:
            raise ValueError("early stopping (patience) needs a validation set")
        batches = math.ceil(len(train_set) / args.batch_size)             # the last one may be smaller
        self.steps_per_epoch = math.ceil(batches / args.gradient_accumulation_steps)
        self.total_steps = args.epochs * self.steps_per_epoch
        if args.max_steps is not None:
            self.total_steps = min(self.total_steps, args.max_steps)
        self.optimizer = optimizer or AdamW(model.named_parameters(), lr=args.learning_rate,
                                            weight_decay=args.weight_decay)
        warmup = int(round(args.warmup_ratio * self.total_steps))
        self.schedule = get_schedule("linear", args.learning_rate, warmup, self.total_steps)
        self.step = 0
        self.history = []

    # ------------------------------------------------------------------ one step
    def _micro_batches(self, epoch: int):
        """The micro-batches of an epoch, grouped into optimizer steps."""
        order = np.random.default_rng([self.args.seed, epoch]).permutation(len(self.train_set))
        size, k = self.args.batch_size, self.args.gradient_accumulation_steps
        chunks = [order[i:i + size] for i in range(0, len(order), size)]
        return [chunks[i:i + k] for i in range(0, len(chunks), k)]

    def accumulate(self, batches, teacher_logits=None) -> float:
        """Forward and backward of several micro-batches, gradients summed as one batch; returns its loss.

        ``teacher_logits``: one (B_i, C) array per micro-batch, to distil from (see the class).
        """
        counts = [loss_items(self.model, batch) for batch in batches]
        total = sum(counts)
        if total == 0:
            return 0.0                                 # nothing labelled in this step
        loss = 0.0
        for i, (batch, count) in enumerate(zip(batches, counts)):
            share = count / total
            if teacher_logits is None:
                out = self.model.forward(**batch)
                self.model.backward(loss_weight=share)
                loss += out.loss * share
            else:
                loss += self._distil(batch, teacher_logits[i], share) * share
        return loss

    def _distil(self, batch, teacher_logits, weight: float) -> float:
        """One micro-batch of (1 - w) cross-entropy + w distillation; backpropagates ``weight`` times it."""
        w, temperature = self.args.distillation_weight, self.args.distillation_temperature
        logits = self.model.forward(**batch).logits                               # (B, C)
        xp = get_array_module(logits)
        labels = xp.asarray(to_device(batch["labels"], self.model.device)).reshape(-1)
        hard_loss, hard_cache = ops.cross_entropy_forward(logits, labels)
        soft_loss, soft_cache = ops.distillation_forward(logits, xp.asarray(teacher_logits), temperature)
        dlogits = (ops.cross_entropy_backward((1.0 - w) * weight, hard_cache)
                   + ops.distillation_backward(w * weight, soft_cache))
        self.model.backward(dlogits)
        return (1.0 - w) * hard_loss + w * soft_loss

    def _train_step(self, index_groups) -> dict:
        batches = [self.train_set.get_batch(indices) for indices in index_groups]
        teacher = None if self.teacher_logits is None else [self.teacher_logits[i] for i in index_groups]
        loss = self.accumulate(batches, teacher)
        params = self.model.named_parameters()
        grad_norm = (clip_grad_norm(params, self.args.max_grad_norm) if self.args.max_grad_norm is not None
                     else math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for _, p in params)))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise TrainingDiverged(f"step {self.step + 1}: loss {loss} / gradient norm {grad_norm} is not "
                                   "finite; lower the learning rate or check the data")
        self.optimizer.lr = self.schedule(self.step)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.step += 1
        return {"loss": loss, "grad_norm": grad_norm, "lr": self.optimizer.lr,
                "sequences": sum(len(b["input_ids"]) for b in batches)}

    # ------------------------------------------------------------------ evaluation
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

    # ------------------------------------------------------------------ the loop
    def train(self) -> FineTuningResult:
        """Train for ``epochs`` (or ``max_steps``), validating and early-stopping; returns a summary."""
        from tqdm.auto import tqdm

        args = self.args
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
        log_every = args.log_every or max(1, self.steps_per_epoch // 20)
        eval_every = args.eval_every or self.steps_per_epoch
        best_value, best_step, best_metrics, best_state = None, None, {}, None
        bad_evals, stopped_early = 0, False
        window, start = [], time.perf_counter()
        self.model.train()
        bar = tqdm(total=self.total_steps, disable=not args.progress, desc="fine-tuning", unit="step",
                   dynamic_ncols=True)
        try:
            for epoch in range(args.epochs):
                for groups in self._micro_batches(epoch):
                    if self.step >= self.total_steps:
                        break
                    record = self._train_step(groups)
                    window.append(record["loss"])
                    bar.update(1)
                    last = self.step == self.total_steps
                    if self.step % log_every == 0 or last:
                        self._log({"step": self.step, "split": "train", "epoch": epoch,
                                   "loss": float(np.mean(window)), "lr": record["lr"],
                                   "grad_norm": record["grad_norm"]})
                        bar.set_postfix(loss=f"{np.mean(window):.4f}", lr=f"{record['lr']:.1e}")
                        window = []
                    if self.val_set is not None and (self.step % eval_every == 0 or last):
                        metrics = self.evaluate()
                        self.model.train()
                        self._log({"step": self.step, "split": "eval", "epoch": epoch, **metrics})
                        if self.metric not in metrics:
                            raise ValueError(f"metric {self.metric!r} is not among the validation "
                                             f"metrics {sorted(metrics)}")
                        value = metrics[self.metric]
                        if not (math.isfinite(metrics["loss"]) and math.isfinite(value)):
                            raise TrainingDiverged(f"step {self.step}: the validation loss is {metrics['loss']} "
                                                   f"and {self.metric} {value}: the weights have diverged")
                        improved = best_value is None or (value < best_value if self.lower_is_better
                                                          else value > best_value)
                        bar.write(f"step {self.step}: validation " + ", ".join(
                            f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float))
                            + (" (best)" if improved else ""))
                        if improved:
                            best_value, best_step, best_metrics, bad_evals = value, self.step, metrics, 0
                            best_state = {n: p.data.copy() for n, p in self.model.named_parameters()}
                        else:
                            bad_evals += 1
                            if args.patience is not None and bad_evals >= args.patience:
                                stopped_early = True
                                bar.write(f"early stopping at step {self.step}: {self.metric} did not improve "
                                          f"in {args.patience} validations (best {best_value:.4f} at step "
                                          f"{best_step})")
                                break
                if stopped_early or self.step >= self.total_steps:
                    break
        except TrainingDiverged as error:
            raise self._keep_the_best(error, best_state, best_step) from None
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        if args.restore_best and best_state is not None and best_step != self.step:
            self._load_weights(best_state)
        self.model.eval()
        result = FineTuningResult(self.step, stopped_early, self.metric, best_value, best_step, best_metrics,
                                  self.history, seconds)
        if args.output_dir:
            result.plot = self.plot(early_stop_step=self.step if stopped_early else None, best_step=best_step)
            save_pretrained(self.model, os.path.join(args.output_dir, "best_model" if args.restore_best
                                                     else "final_model"), self.tokenizer)
        return result

    def _load_weights(self, state: dict) -> None:
        for name, p in self.model.named_parameters():
            p.data[...] = state[name]

    def _keep_the_best(self, error: TrainingDiverged, best_state, best_step) -> TrainingDiverged:
        """After divergence: put the best validated weights back (and save them), say where they are."""
        if best_state is None:
            return TrainingDiverged(f"{error}; no validation had passed yet, so there are no weights to keep.")
        self._load_weights(best_state)
        self.model.eval()
        where = "the model holds them again"
        if self.args.output_dir:
            path = os.path.join(self.args.output_dir, "best_model")
            save_pretrained(self.model, path, self.tokenizer)
            where += f" and they are saved in {path}"
        return TrainingDiverged(f"{error}. The weights of the best validation (step {best_step}) were kept: {where}.")

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.args.output_dir:
            with open(os.path.join(self.args.output_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def plot(self, path: str | None = None, early_stop_step: int | None = None,
             best_step: int | None = None) -> str | None:
        if path is None:
            if not self.args.output_dir:
                raise ValueError("plot() needs a path when args.output_dir is not set")
            path = os.path.join(self.args.output_dir, "loss_curve.png")
        return plot_finetuning_curves(self.history, path, early_stop_step, best_step, self.metric)


def finetune(model, train_set, val_set=None, compute_metrics=None, tokenizer=None, **kwargs) -> FineTuningResult:
    """``FineTuner(model, FineTuningArguments(**kwargs), train_set, val_set).train()``."""
    return FineTuner(model, FineTuningArguments(**kwargs), train_set, val_set, compute_metrics, tokenizer).train()


def plot_finetuning_curves(history: list, path: str, early_stop_step: int | None = None,
                           best_step: int | None = None, metric: str = "loss") -> str | None:
    """Training and validation loss with the best step (whose weights early stopping keeps)
    and the early stop marked; see :func:`minibert.plots.plot_loss_curves`."""
    return plot_loss_curves(history, path, best_step=best_step, early_stop_step=early_stop_step,
                            best_label=f"best validation {metric} (weights kept)")


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
           "plot_finetuning_curves", "loss_items", "squad_compute_metrics"]
