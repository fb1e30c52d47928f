"""The training loop, one for pretraining and fine-tuning: a task supplies the batches and
the loss, the loop does everything else.

One optimizer step, top to bottom (``Trainer._train_step``):

    batches = task.next_batches()                        # the k micro-batches of this step
    n = the items each loss averages over, in all k      # e.g. masked tokens, sequences
    for each micro-batch i:                              # gradient accumulation
        task.forward_backward(model, batch_i, n_i / n)   # backward of (n_i / n) * loss_i
    clip_grad_norm(...)                                  # global norm <= max_grad_norm
    optimizer.lr = schedule(step); optimizer.step(); optimizer.zero_grad()

Each loss is a mean over its items (masked tokens, sequences, labelled tokens), so weighting
micro-batch i by its share n_i / n sums the k gradients to exactly the gradient of one batch
of all n items (``Trainer.accumulate``).

Around the step: a progress bar (loss, learning rate, tokens/s), a validation every
``eval_every`` steps, early stopping on ``args.metric``, the best weights kept (saved in
``best_model/``, and without checkpoints also held in memory to be put back), a JSON-lines
metrics log, a loss-curve plot, and the divergence stop: a NaN or infinite loss, gradient,
validation loss or weight stops the run before anything is saved. With ``checkpoints`` each
validation also writes an atomic checkpoint holding everything needed to continue bit for
bit: the model, the optimizer's buffers, the step, the task's place in its data and the
dropout generator's state.

A task (:class:`Task`) is small: ``next_batches()``, ``loss_items(batch)``,
``forward_backward(model, batch, weights)`` and ``validate(model)``. Two ship with the
library: :class:`PretrainingTask` (masked LM + next-sentence prediction, below;
``Trainer(model, args, train_dataset, eval_dataset, masking=...)`` builds it), its variant
:class:`MaskedLMTask` (masked LM alone, RoBERTa's recipe) and
:class:`minibert.finetune.FineTuner` (a head on an encoder, with distillation).

``TrainingArguments(fp16=True)``: mixed precision. The dense layers multiply in float16
(``model.set_matmul_dtype``), the weights and the update stay float32, and backward starts
from ``scale * loss`` (the weights passed to ``forward_backward`` are multiplied by the
scale); the gradients are divided by the scale before clipping, and a step whose gradients
overflowed is skipped with a smaller scale next time (``optim.DynamicLossScaler``; the scale
is checkpointed too).

Data parallel (``mpiexec -n N``, see ``minibert/distributed.py`` and ``docs/distributed.md``):
the task's batches are global batches, the same on every rank; each rank trains on its rows
of them, the item counts and the losses are summed over the ranks, and the gradients are
summed before clipping, so N processes take the steps of one process with the whole batch.
Only rank 0 prints and writes files; a checkpoint holds the full optimizer state (gathered
under ZeRO), so a run resumes with any number of processes.
"""

from __future__ import annotations

import json
import math
import os
import shutil
import time
import warnings
from contextlib import nullcontext
from dataclasses import asdict, dataclass

import numpy as np

from . import safetensors as st
from .backend import get_array_module, is_int_at_least, to_numpy
from .checkpoint import save_pretrained
from .distributed import (
    BUCKET_BYTES,
    Communicator,
    DataParallel,
    ZeroAdamW,
    broadcast_parameters,
    check_same_everywhere,
    check_same_weights,
    rank_seed,
    shard_rows,
    world,
)
from .fast.cpu import keep_freed_memory
from .nn import no_grad
from .noise_scale import GradientNoiseScale
from .optim import AdamW, DynamicLossScaler, get_schedule
from .plots import plot_loss_curves

CHECKPOINT_POINTER = "latest_checkpoint.txt"   # names the newest complete checkpoint folder


class TrainingDiverged(RuntimeError):
    """The loss, the gradients, the validation loss or the weights became NaN or infinite."""


@dataclass
class TrainingArguments:
    """Settings of the training loop (defaults: the original pretraining recipe, scaled down)."""

    output_dir: str | None = "runs/pretrain"   # metrics.jsonl, loss_curve.png, best_model/, checkpoints
    gradient_accumulation_steps: int = 1    # micro-batches per optimizer step (the pretraining task's)
    max_steps: int = 1000                   # optimizer steps
    learning_rate: float = 1e-4
    warmup_steps: int = 100
    schedule: str = "linear"                # "linear" | "cosine" | "constant"
    weight_decay: float = 0.01
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-6
    bias_correction: bool = True
    max_grad_norm: float | None = 1.0
    eval_every: int = 100                   # steps between validations (and checkpoints)
    eval_batches: int | None = None         # pretraining: validation batches; None: all of them
    metric: str = "loss"                    # the validation metric of early stopping and the best weights
    patience: int | None = None             # validations without improvement before stopping
    restore_best: bool = False              # end with the best weights (a run without checkpoints)
    checkpoints: bool = True                # write a resumable checkpoint at every validation
    log_every: int = 10
    seed: int = 0
    progress: bool = True                   # show a tqdm progress bar
    fp16: bool = False                      # float16 matrix products, float32 weights, dynamic loss scale
    # data parallel (several processes under mpiexec; no effect in one process)
    zero: int = 0                           # 1: shard AdamW's moments over the processes (ZeRO stage 1)
    check_weights_every: int | None = None  # steps between checks that every process holds the same weights
    overlap_communication: bool = True      # all-reduce each gradient bucket while backward goes on
    bucket_bytes: int = BUCKET_BYTES        # size of a gradient bucket
    noise_scale: bool = False               # estimate the gradient noise scale (needs accumulation >= 2)

    def __post_init__(self):
        positive = ("gradient_accumulation_steps", "max_steps", "eval_every", "log_every")
        for name in positive:
            value = getattr(self, name)
            if not is_int_at_least(value, 1):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not (isinstance(self.learning_rate, (int, float)) and self.learning_rate > 0
                and math.isfinite(self.learning_rate)):
            raise ValueError(f"learning_rate must be a positive number, got {self.learning_rate!r}")
        if self.warmup_steps < 0:
            raise ValueError(f"warmup_steps must be >= 0, got {self.warmup_steps!r}")
        if self.patience is not None and self.patience <= 0:
            raise ValueError(f"patience must be a positive integer or None, got {self.patience!r}")
        if self.max_grad_norm is not None and self.max_grad_norm <= 0:
            raise ValueError(f"max_grad_norm must be positive or None, got {self.max_grad_norm!r}")
        if self.eval_batches is not None and self.eval_batches <= 0:
            raise ValueError(f"eval_batches must be positive or None, got {self.eval_batches!r}")
        if not (isinstance(self.metric, str) and self.metric):
            raise ValueError(f"metric must name a validation metric such as 'loss', got {self.metric!r}")
        if self.zero not in (0, 1):
            raise ValueError(f"zero must be 0 (plain data parallel) or 1 (sharded optimizer state), got {self.zero!r}")
        if self.check_weights_every is not None and not is_int_at_least(self.check_weights_every, 1):
            raise ValueError(f"check_weights_every must be a positive integer or None, "
                             f"got {self.check_weights_every!r}")
        if not is_int_at_least(self.bucket_bytes, 1):
            raise ValueError(f"bucket_bytes must be a positive integer, got {self.bucket_bytes!r}")
        if self.noise_scale and self.gradient_accumulation_steps < 2:
            raise ValueError("noise_scale needs gradient_accumulation_steps >= 2: it compares the gradient of "
                             "one micro-batch with the gradient of the whole batch")
        if self.checkpoints and not self.output_dir:
            raise ValueError("checkpoints need an output_dir (or give checkpoints=False)")
        if self.checkpoints and self.restore_best:
            raise ValueError("restore_best is for runs without checkpoints: a checkpointed run keeps its "
                             "best weights in output_dir/best_model")
        self.adam_betas = tuple(self.adam_betas)


class Task:
    """What the loop asks of a task: its batches, its loss and its validation.

    A subclass fills in the first three methods; the others have defaults.
    """

    name = "training"        # the progress bar's label
    epoch = 0                # the epoch the latest batches came from (logged with the losses)
    communicator = Communicator()   # the processes that share the work (the Trainer sets it)

    def next_batches(self) -> list:
        """The micro-batches (dicts of arrays, with ``attention_mask``) of the next optimizer step."""
        raise NotImplementedError

    def loss_items(self, batch) -> dict:
        """How many items each loss of the task averages over in ``batch``, by the loss's name:
        ``{"loss": labelled tokens}``, or ``{"mlm_loss": masked tokens, "nsp_loss": sequences}``."""
        raise NotImplementedError

    def forward_backward(self, model, batch, weights: dict) -> dict:
        """Run ``batch`` forward, then backward from ``sum(weights[name] * loss[name])``; returns
        the value of each loss (by the names of :meth:`loss_items`)."""
        raise NotImplementedError

    def validate(self, model) -> dict:
        """Validation metrics, ``"loss"`` among them; ``{}`` when there is nothing to validate on."""
        return {}

    def state_dict(self) -> dict:
        """Where the task stands in its data (JSON values), for a checkpoint."""
        return {}

    def load_state_dict(self, state: dict) -> None:
        """Go back to where a checkpoint's ``state`` says the task stood."""


class Trainer:
    """The training loop (see the module docstring): ``Trainer(model, args, task=task).train()``.

    ``Trainer(model, args, train_dataset, eval_dataset, tokenizer, masking=...)`` pretrains a
    :class:`minibert.modeling.BertForPreTraining`: it builds the :class:`PretrainingTask`.
    ``tokenizer``, when given, is saved with the model.

    ``communicator``: the processes training together (default: found from the launcher by
    :func:`minibert.distributed.world`; one process when not started by mpiexec).
    """

    def __init__(self, model, args: TrainingArguments, train_dataset=None, eval_dataset=None, tokenizer=None,
                 optimizer=None, masking=None, *, task: Task | None = None, communicator=None):
        if task is None:
            if train_dataset is None:
                raise TypeError("Trainer needs a train_dataset (to pretrain) or a task")
            task = PretrainingTask(train_dataset, eval_dataset, masking, args.gradient_accumulation_steps,
                                   args.eval_batches)
        self.model = model
        self.args = args
        self.task = task
        self.tokenizer = tokenizer
        # data parallel: every rank starts alike (checked) from rank 0's weights
        self.comm = communicator if communicator is not None else world(model.device)
        task.communicator = self.comm
        check_same_everywhere(self.comm, {
            "training arguments": json.dumps(_jsonable({k: v for k, v in asdict(args).items() if k != "progress"}),
                                             sort_keys=True),
            "model configuration": json.dumps(_jsonable(model.config.to_dict()), sort_keys=True)})
        broadcast_parameters(self.comm, model.named_parameters())
        self.data_parallel = DataParallel(self.comm, model, args.bucket_bytes, args.overlap_communication, args.zero)
        if args.zero and optimizer is not None:
            raise ValueError("zero=1 shards the AdamW that the Trainer makes: give no optimizer")
        if args.zero:
            optimizer = ZeroAdamW(self.data_parallel, lr=args.learning_rate, betas=args.adam_betas,
                                  eps=args.adam_eps, weight_decay=args.weight_decay,
                                  bias_correction=args.bias_correction)
        self.optimizer = optimizer or AdamW(model.named_parameters(), lr=args.learning_rate,
                                            betas=args.adam_betas, eps=args.adam_eps,
                                            weight_decay=args.weight_decay,
                                            bias_correction=args.bias_correction)
        self.schedule = get_schedule(args.schedule, args.learning_rate, args.warmup_steps, args.max_steps)
        self.scaler = None
        self.noise_scale = None             # the gradient noise scale's estimator (args.noise_scale)
        if args.noise_scale:
            if self.comm.size > 1:
                raise ValueError("noise_scale is measured in one process (each rank sees only its part "
                                 "of the first micro-batch)")
            self.noise_scale = GradientNoiseScale()
        if args.fp16:                       # mixed precision: see DynamicLossScaler
            model.set_matmul_dtype(np.float16)
            self.scaler = DynamicLossScaler()
        # the state that a checkpoint saves and a resume restores (with the task's place in its data)
        self.step = 0                      # optimizer steps done
        self.best_value = None             # the best validation value of args.metric so far
        self.best_step = None
        self.best_metrics = {}             # the validation record of the best step
        self.best_weights = None           # without checkpoints: a copy of the best step's weights
        self.evals_without_improvement = 0
        self.stopped_early = False
        self.history = []                  # metrics records, also written to metrics.jsonl

    # ------------------------------------------------------------------ one step
    def _train_step(self) -> dict:
        """One optimizer step over the task's micro-batches."""
        batches = self.task.next_batches()                # global batches: the same on every rank
        tokens = sum(int(batch["attention_mask"].sum()) for batch in batches)
        comm = self.comm
        if comm.size > 1:
            batches = [shard_rows(batch, comm.rank, comm.size) for batch in batches]   # this rank's rows
            # dropout streams keyed by (seed, rank, step): reproducible for a fixed number of ranks
            seed = rank_seed(self.args.seed, comm.rank, self.step)
            self.model.random.set_state({"seed": seed, "numpy": np.random.default_rng(seed).bit_generator.state})
        scale = self.scaler.scale if self.scaler is not None else 1.0   # the loss scale (fp16)
        # fp16: an overflow to inf is an expected event (the scaler handles it), not a warning
        with np.errstate(over="ignore", invalid="ignore") if self.scaler is not None else nullcontext():
            losses = self.accumulate(batches, scale)
            self.data_parallel.synchronize()              # the ranks' gradients summed (alone: nothing to do)
        loss = sum(losses.values())
        record = {"loss": loss, "losses": losses, "tokens": tokens, "loss_scale": scale}
        if self.scaler is not None and math.isfinite(loss):
            finite = self.data_parallel.everywhere(self.scaler.unscale(self.data_parallel.owned_gradients()))
            self.scaler.found_overflow = not finite
            if not finite:                                                # float16 overflow in backward
                if scale <= self.scaler.min_scale:
                    raise TrainingDiverged(
                        f"step {self.step + 1}: the gradients overflow even at loss scale {scale:g} "
                        "(lower the learning rate, or train without fp16)")
                self.scaler.update()                                      # a smaller scale next time
                self.optimizer.zero_grad()
                self.step += 1                                            # a step without an update
                return {**record, "lr": self.optimizer.lr, "grad_norm": math.nan, "skipped": True}
            self.scaler.update()
        grad_norm = self.data_parallel.clip_grad_norm(self.args.max_grad_norm)   # None: the norm only
        if self.noise_scale is not None:
            small_sq, small = self._first_micro_batch
            record["noise_scale"] = self.noise_scale.update(small_sq, grad_norm ** 2, small,
                                                            sum(len(b["input_ids"]) for b in batches))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise TrainingDiverged(f"step {self.step + 1}: loss {loss} / gradient norm {grad_norm} is not "
                                   "finite (lower the learning rate or check the data)")
        self.optimizer.lr = self.schedule(self.step)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.step += 1
        if self.args.check_weights_every and self.step % self.args.check_weights_every == 0:
            check_same_weights(self.comm, self.model.named_parameters(), self.step)
        return {**record, "lr": self.optimizer.lr, "grad_norm": grad_norm, "skipped": False}

    def accumulate(self, batches, scale: float = 1.0) -> dict:
        """Forward and backward of micro-batches, their gradients summed as one batch's; returns
        each loss of the whole batch. ``scale`` multiplies the gradients (fp16's loss scale)."""
        counts = [self.task.loss_items(batch) for batch in batches]            # {loss: items}, per batch
        totals = {name: sum(count[name] for count in counts) for name in counts[0]}
        totals = {name: int(n) for name, n in self._sum_over_ranks(totals).items()}   # the global batch's
        losses = dict.fromkeys(totals, 0.0)
        if not any(totals.values()):
            return losses                                                    # nothing labelled in this step
        for i, (batch, count) in enumerate(zip(batches, counts)):
            shares = {name: count[name] / max(totals[name], 1) for name in totals}
            self.data_parallel.begin_backward(last=i == len(batches) - 1)
            values = self.task.forward_backward(self.model, batch,
                                                {name: share * scale for name, share in shares.items()})
            for name in losses:
                losses[name] += values[name] * shares[name]
            if i == 0 and self.noise_scale is not None:   # the small-batch gradient: see minibert/noise_scale.py
                share = len(batch["input_ids"]) / sum(len(b["input_ids"]) for b in batches)
                self._first_micro_batch = (_squared_norm(self.model) / (share * scale) ** 2, len(batch["input_ids"]))
        return self._sum_over_ranks(losses)      # each rank holds its items' part of each loss

    def _sum_over_ranks(self, values: dict) -> dict:
        """``{name: number}`` summed over the ranks (one small all-reduce; alone: unchanged).
        A NaN on any rank reaches every rank, so all of them stop together."""
        if self.comm.size == 1:
            return values
        summed = self.comm.all_reduce(np.array([float(v) for v in values.values()], dtype=np.float64))
        return {name: float(v) for name, v in zip(values, summed)}

    # ------------------------------------------------------------------ the loop
    def train(self, resume_from: str | None = None) -> dict:
        """Train until ``max_steps`` or early stopping; returns a summary dict."""
        from tqdm.auto import tqdm

        args = self.args
        if args.output_dir:
            os.makedirs(args.output_dir, exist_ok=True)
        if resume_from is not None:
            self.load_checkpoint(resume_from)
            self._say(f"resumed at step {self.step} from {resume_from}")
            if args.output_dir and self.comm.is_main:
                self._rewrite_metrics()
            if self.step >= args.max_steps and self.comm.is_main:
                warnings.warn(f"the checkpoint is at step {self.step} and max_steps is {args.max_steps}: "
                              "nothing to train (raise max_steps to continue)", UserWarning, stacklevel=2)
        keep_freed_memory()          # every step makes the same large temporaries: reuse their memory
        self.model.train()
        self.stopped_early = False
        start = time.perf_counter()
        window, window_start = [], time.perf_counter()      # the steps since the last training record
        bar = tqdm(total=args.max_steps, initial=self.step, disable=not (args.progress and self.comm.is_main),
                   desc=self.task.name, unit="step", dynamic_ncols=True)
        try:
            while self.step < args.max_steps and not self.stopped_early:
                window.append(self._train_step())
                bar.update(1)
                last = self.step == args.max_steps
                if self.step % args.log_every == 0 or last:
                    self._log_training(window, time.perf_counter() - window_start, bar)
                    window, window_start = [], time.perf_counter()
                if self.step % args.eval_every == 0 or last:
                    self.stopped_early = self._validate(bar)
                    window_start = time.perf_counter()          # validation is not training time
        except TrainingDiverged as error:
            raise self._diverged(error) from None
        finally:
            bar.close()
        seconds = time.perf_counter() - start
        if args.restore_best and self.best_weights is not None and self.best_step != self.step:
            self._load_weights(self.best_weights)
        self.model.eval()
        best = os.path.join(args.output_dir, "best_model") if args.output_dir else None
        return {"steps": self.step, "stopped_early": self.stopped_early, "metric": args.metric,
                "best_value": self.best_value, "best_step": self.best_step, "best_metrics": self.best_metrics,
                "best_eval_loss": min((r["loss"] for r in self.history if r["split"] == "eval"), default=math.inf),
                "model_dir": best if best and os.path.isdir(best) else self.latest_checkpoint(),
                "history": self.history, "train_seconds": seconds,
                "plot": self.plot() if args.output_dir and self.comm.is_main else None}

    def _validate(self, bar) -> bool:
        """Validate, keep the best weights, write a checkpoint; True when early stopping ends the run."""
        args = self.args
        metrics = self.evaluate()
        self.model.train()
        if metrics:
            self._log({"step": self.step, "split": "eval", "epoch": self.task.epoch, **metrics})
            if args.metric not in metrics:
                raise ValueError(f"metric {args.metric!r} is not among the validation metrics {sorted(metrics)}")
            value = metrics[args.metric]
            if not (math.isfinite(metrics["loss"]) and math.isfinite(value)):     # the weights have diverged
                raise TrainingDiverged(f"step {self.step}: the validation loss is {metrics['loss']}"
                                       + ("" if args.metric == "loss" else f" and {args.metric} {value}"))
            improved = self.best_value is None or (value < self.best_value if _lower_is_better(args.metric)
                                                   else value > self.best_value)
            self._say(f"step {self.step}: validation " + ", ".join(
                f"{k} {v:.4f}" for k, v in metrics.items() if isinstance(v, float)) + (" (best)" if improved else ""))
            if improved:
                self._keep_best(value, metrics)
            else:
                self.evals_without_improvement += 1
        if args.checkpoints:
            self._check_parameters_finite()
            self.save_checkpoint()
        if args.patience is not None and self.evals_without_improvement >= args.patience:
            self._say(f"early stopping at step {self.step}: {args.metric} did not improve in {args.patience} "
                      f"validations (best {self.best_value:.4f} at step {self.best_step})")
            return True
        return False

    def evaluate(self) -> dict:
        """The task's validation metrics (``{}`` without a validation set)."""
        return self.task.validate(self.model)

    # ------------------------------------------------------------------ the best weights
    def _keep_best(self, value: float, metrics: dict) -> None:
        self.best_value, self.best_step, self.best_metrics = value, self.step, metrics
        self.evals_without_improvement = 0
        if not self.args.checkpoints:       # nothing to resume from: keep them in memory
            self.best_weights = {n: p.data.copy() for n, p in self.model.named_parameters()}
        if self.args.output_dir and self.comm.is_main:
            save_pretrained(self.model, os.path.join(self.args.output_dir, "best_model"), self.tokenizer)

    def _load_weights(self, weights: dict) -> None:
        for name, p in self.model.named_parameters():
            p.data[...] = weights[name]

    def _diverged(self, error: TrainingDiverged) -> TrainingDiverged:
        """The error, saying what the run leaves: its last checkpoint, or its best weights put back."""
        if self.args.checkpoints:
            kept = (f"training stopped without saving, and the last checkpoint "
                    f"({self.latest_checkpoint() or 'none yet'}) was kept, to resume from")
        elif self.best_weights is None:
            kept = "no validation had passed yet, so there are no weights to keep"
        else:
            self._load_weights(self.best_weights)
            self.model.eval()
            kept = f"the weights of the best validation (step {self.best_step}) were kept: the model holds them again"
            if self.args.output_dir:
                kept += f" and they are saved in {os.path.join(self.args.output_dir, 'best_model')}"
        return TrainingDiverged(f"{error}; {kept}.")

    # ------------------------------------------------------------------ logging and plots
    def _log_training(self, window: list, seconds: float, bar) -> None:
        """A training record: the mean loss of the steps in ``window``, the other values of the last."""
        last = window[-1]
        record = {"step": self.step, "split": "train", "epoch": self.task.epoch,
                  "loss": float(np.mean([step["loss"] for step in window])),
                  **{name: value for name, value in last["losses"].items() if name != "loss"},
                  "lr": last["lr"], "grad_norm": None if last["skipped"] else last["grad_norm"],
                  "tokens_per_s": sum(step["tokens"] for step in window) / seconds, "world_size": self.comm.size}
        if self.scaler is not None:               # fp16: the loss scale and the overflowed steps
            record.update(loss_scale=last["loss_scale"], skipped_steps=sum(step["skipped"] for step in window))
        if "noise_scale" in last:                 # the gradient noise scale: the critical batch size
            record["noise_scale"] = last["noise_scale"]
        self._log(record)
        bar.set_postfix(loss=f"{record['loss']:.4f}", lr=f"{last['lr']:.2e}", tok_s=f"{record['tokens_per_s']:.0f}")

    def _say(self, message: str) -> None:
        """Print a line above the progress bar (rank 0 only)."""
        from tqdm.auto import tqdm

        if self.comm.is_main:
            tqdm.write(message)

    def _log(self, record: dict) -> None:
        self.history.append(record)
        if self.args.output_dir and self.comm.is_main:
            with open(os.path.join(self.args.output_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
                f.write(json.dumps(record) + "\n")

    def _rewrite_metrics(self) -> None:
        """metrics.jsonl as of the restored checkpoint: the records of the steps a resumed run
        does again are dropped, so each step is logged once."""
        lines = "".join(json.dumps(record) + "\n" for record in self.history)
        path = os.path.join(self.args.output_dir, "metrics.jsonl")
        with open(f"{path}.tmp", "w", encoding="utf-8") as f:
            f.write(lines)
        os.replace(f"{path}.tmp", path)

    def plot(self, path: str | None = None, early_stop_step: int | None = None,
             best_step: int | None = None) -> str | None:
        """Save the training and validation loss curves as a PNG (None before the first training record),
        with the best step and the early stop (by default this run's) marked."""
        if path is None:
            if not self.args.output_dir:
                raise ValueError("plot() needs a path when args.output_dir is not set")
            path = os.path.join(self.args.output_dir, "loss_curve.png")
        return plot_loss_curves(self.history, path, best_step=best_step or self.best_step,
                                best_label=f"best validation {self.args.metric} (weights kept)",
                                early_stop_step=early_stop_step or (self.step if self.stopped_early else None))

    # ------------------------------------------------------------------ checkpoints
    def latest_checkpoint(self) -> str | None:
        return latest_checkpoint(self.args.output_dir) if self.args.output_dir else None

    def _check_parameters_finite(self) -> None:
        """Raise TrainingDiverged, before anything is saved, if a parameter holds inf or NaN."""
        for name, param in self.model.named_parameters():
            if not bool(get_array_module(param.data).isfinite(param.data).all()):
                raise TrainingDiverged(f"step {self.step}: parameter {name} holds inf or NaN")

    def save_checkpoint(self) -> str:
        """Write ``checkpoint-<step>/`` completely, then point ``latest_checkpoint.txt`` at it.

        The folder is first written under a temporary name and renamed when whole, and the
        pointer file is replaced atomically, so an interruption at any moment leaves the
        previous checkpoint loadable. Older checkpoints are removed afterwards.
        """
        out = self.args.output_dir
        final = os.path.join(out, f"checkpoint-{self.step}")
        opt_state = self.optimizer.state_dict()        # under ZeRO every rank takes part (gathered)
        if not self.comm.is_main:                      # rank 0 writes
            return final
        tmp = os.path.join(out, f".tmp-checkpoint-{self.step}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        save_pretrained(self.model, tmp, self.tokenizer)
        arrays = {k: v for k, v in opt_state.items() if isinstance(v, np.ndarray)}
        scalars = {k: v for k, v in opt_state.items() if not isinstance(v, np.ndarray)}
        st.save_file(arrays, os.path.join(tmp, "optimizer.safetensors"))
        state = {"step": self.step, **self.task.state_dict(),
                 "best_eval_loss": self.best_value,      # the best value of args.metric (the validation loss)
                 "best_step": self.best_step, "evals_without_improvement": self.evals_without_improvement,
                 "optimizer": scalars, "dropout_rng": self.model.random.get_state(),
                 "loss_scaler": self.scaler.state_dict() if self.scaler is not None else None,
                 "args": _jsonable(asdict(self.args)), "history": self.history}
        _write_json(os.path.join(tmp, "trainer_state.json"), state)
        if os.path.exists(final):
            shutil.rmtree(final)
        os.replace(tmp, final)
        _write_json_atomic(os.path.join(out, CHECKPOINT_POINTER), os.path.basename(final))
        for name in os.listdir(out):                    # keep only the newest checkpoint
            if name.startswith("checkpoint-") and name != os.path.basename(final):
                shutil.rmtree(os.path.join(out, name), ignore_errors=True)
        return final

    def load_checkpoint(self, path: str) -> None:
        """Restore a checkpoint folder (or a run folder: its latest checkpoint)."""
        if os.path.isfile(os.path.join(path, CHECKPOINT_POINTER)):
            path = latest_checkpoint(path)
        state_file = os.path.join(path, "trainer_state.json")
        if not os.path.isfile(state_file):
            raise FileNotFoundError(f"{path} is not a training checkpoint (no trainer_state.json)")
        try:
            with open(state_file, encoding="utf-8") as f:
                state = json.load(f)
        except json.JSONDecodeError as exc:
            raise ValueError(f"{state_file} is corrupt: {exc}") from exc
        from .checkpoint import read_config, read_weights

        # read and check everything first, so that a damaged file leaves the trainer untouched
        needed = ("step", "optimizer", "dropout_rng", *self.task.state_dict(), "best_eval_loss",
                  "evals_without_improvement")
        absent = [key for key in needed if not isinstance(state, dict) or key not in state]
        if absent:
            raise ValueError(f"{state_file} is incomplete: no {', '.join(absent)}")
        tensors, _, _ = read_weights(path)
        saved_config = read_config(path)
        for field_name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads"):
            if getattr(saved_config, field_name) != getattr(self.model.config, field_name):
                raise ValueError(f"checkpoint {path} has {field_name}={getattr(saved_config, field_name)}, "
                                 f"the model has {getattr(self.model.config, field_name)}: not the same model")
        opt = dict(state["optimizer"])
        opt.update(st.load_file(os.path.join(path, "optimizer.safetensors")))
        self.model.load_state_dict(tensors, strict=False)
        self.optimizer.load_state_dict(opt)
        self.model.random.set_state(state["dropout_rng"])
        if self.scaler is not None and state.get("loss_scaler") is not None:
            self.scaler.load_state_dict(state["loss_scaler"])
        self.task.load_state_dict(state)
        self.step = state["step"]
        self.best_value, self.best_step = state["best_eval_loss"], state.get("best_step")
        self.evals_without_improvement = state["evals_without_improvement"]
        self.history = state.get("history", [])
        best = [r for r in self.history if r.get("split") == "eval" and r["step"] == self.best_step]
        self.best_metrics = {k: v for k, v in best[-1].items() if k not in ("step", "split", "epoch")} if best else {}


# ---------------------------------------------------------------------------- pretraining
class PretrainingTask(Task):
    """Masked LM + next-sentence prediction; ``accumulation`` batches make one optimizer step.

    Its two losses are means over different items: the MLM loss over the masked tokens, the
    NSP loss over the sequences.

    The data sets are streams of batches (``minibert.data.pretraining.ArrayDataset`` or
    ``ShardDataset``): iterating gives one epoch of batches, dicts of NumPy arrays
    (``input_ids``, ``token_type_ids``, ``attention_mask``, ``labels``,
    ``next_sentence_label``), and ``dataset.position`` says where the stream is. With dynamic
    masking the examples come unmasked and ``masking`` (a ``DynamicMasking``) corrupts each
    batch and adds its labels. A checkpoint saves the position and the masking generator's
    state, so a resumed run sees the same batches with the same masks.
    """

    name = "pretraining"

    def __init__(self, train_dataset, eval_dataset=None, masking=None, accumulation: int = 1,
                 eval_batches: int | None = None):
        if len(train_dataset) == 0:
            raise ValueError("the training set holds no batch: use a larger corpus or a smaller batch")
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.masking = masking                    # None: the examples carry their labels (static masks)
        self.accumulation = accumulation
        self.eval_batches = eval_batches          # None: the whole validation set
        self._batches = None                      # the iterator over the current epoch

    @property
    def epoch(self) -> int:
        return self.train_dataset.position["epoch"]

    def next_batches(self) -> list:
        return [self._next_batch() for _ in range(self.accumulation)]

    def _next_batch(self) -> dict:
        """The next training batch, starting a new epoch when one ends."""
        for _ in range(2):
            if self._batches is None:
                self._batches = iter(self.train_dataset)
            batch = next(self._batches, None)
            if batch is not None:
                return self.masking(batch) if self.masking is not None else batch
            self._batches = None               # the epoch is over; the dataset moved to the next
        raise RuntimeError("the training set yielded no batch in a whole epoch")

    def loss_items(self, batch) -> dict:
        return {"mlm_loss": int((batch["labels"] != -100).sum()), "nsp_loss": len(batch["input_ids"])}

    def forward_backward(self, model, batch, weights: dict) -> dict:
        out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                            labels=batch["labels"], next_sentence_label=batch["next_sentence_label"])
        model.backward(mlm_weight=weights["mlm_loss"], nsp_weight=weights["nsp_loss"])
        return {"mlm_loss": out.mlm_loss, "nsp_loss": out.nsp_loss}

    def validate(self, model) -> dict:
        """MLM loss and accuracy over the masked tokens, NSP accuracy, on the validation set."""
        if self.eval_dataset is None or len(self.eval_dataset) == 0:
            return {}
        return evaluate_pretraining(model, self.eval_dataset, self.eval_batches, self.communicator)

    def state_dict(self) -> dict:
        return {"data_position": self.train_dataset.position,
                "masking": self.masking.state_dict() if self.masking is not None else None}

    def load_state_dict(self, state: dict) -> None:
        if self.masking is not None and state["masking"] is None:
            raise ValueError("the checkpoint was saved without dynamic masking; resume it the same way")
        self.train_dataset.position = state["data_position"]
        self._batches = None
        if self.masking is not None:
            self.masking.load_state_dict(state["masking"])


class MaskedLMTask(PretrainingTask):
    """Masked LM alone (RoBERTa's recipe, no next-sentence prediction), on a model with one
    loss: :class:`minibert.heads.BertForMaskedLM` (or ``RobertaForMaskedLM``).

    The batches, the dynamic masking, the accumulation and the checkpointed position are
    :class:`PretrainingTask`'s; the batches need no ``next_sentence_label``. Its one loss is the
    mean over the masked tokens, so a micro-batch's weight is its share of the masked tokens.
    """

    def loss_items(self, batch) -> dict:
        return {"mlm_loss": int((batch["labels"] != -100).sum())}

    def forward_backward(self, model, batch, weights: dict) -> dict:
        out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                            labels=batch["labels"])
        model.backward(loss_weight=weights["mlm_loss"])
        return {"mlm_loss": out.loss}

    def validate(self, model) -> dict:
        """MLM loss and accuracy over the masked tokens of the validation set."""
        if self.eval_dataset is None or len(self.eval_dataset) == 0:
            return {}
        return evaluate_pretraining(model, self.eval_dataset, self.eval_batches, self.communicator, nsp=False)


def evaluate_pretraining(model, dataset, max_batches: int | None = None, communicator=None, nsp: bool = True) -> dict:
    """MLM loss (mean over masked tokens) and accuracy, and with ``nsp`` the NSP loss and
    accuracy, without caches. ``nsp=False`` scores any masked-LM model on its MLM head alone
    (``BertForMaskedLM``, or a ``BertForPreTraining`` whose ``next_sentence_label`` goes unused):
    the validation of :class:`MaskedLMTask`, and a common yardstick for both recipes.

    ``dataset`` holds statically masked examples (labels included) and is read from its start
    each time, so every evaluation of a run (and of a resumed run) scores the same predictions.
    With a ``communicator`` of N ranks each rank scores its rows of every batch and the sums
    and counts are added over the ranks: the metrics of one process, each rank doing 1/N of the work.
    """
    comm = communicator if communicator is not None else Communicator()
    model.eval()
    dataset.position = {"epoch": 0, "example": 0}
    mlm_loss_sum = nsp_loss_sum = 0.0
    masked = correct = nsp_correct = sequences = 0
    with no_grad():
        for i, batch in enumerate(dataset):
            if max_batches is not None and i >= max_batches:
                break
            batch = shard_rows(batch, comm.rank, comm.size, exact=False)       # this rank's rows
            if len(batch["input_ids"]) == 0:
                continue
            nsp_labels = {"next_sentence_label": batch["next_sentence_label"]} if nsp else {}
            out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                                labels=batch["labels"], **nsp_labels)
            logits = out.prediction_logits if hasattr(out, "prediction_logits") else out.logits   # (M, V)
            targets = batch["labels"].reshape(-1)[to_numpy(out.masked_positions)]               # (M,)
            count = len(targets)
            mlm_loss_sum += (out.mlm_loss if hasattr(out, "mlm_loss") else out.loss) * count
            masked += count
            correct += int((to_numpy(logits).argmax(-1) == targets).sum())
            sequences += len(batch["input_ids"])
            if nsp:
                labels = batch["next_sentence_label"]
                nsp_loss_sum += out.nsp_loss * len(labels)
                nsp_correct += int((to_numpy(out.seq_relationship_logits).argmax(-1) == labels).sum())
    if comm.size > 1:
        sums = comm.all_reduce(np.array([mlm_loss_sum, nsp_loss_sum, masked, correct, nsp_correct, sequences],
                                        dtype=np.float64))
        mlm_loss_sum, nsp_loss_sum = float(sums[0]), float(sums[1])
        masked, correct, nsp_correct, sequences = (int(v) for v in sums[2:])
    mlm_loss = mlm_loss_sum / max(masked, 1)
    metrics = {"loss": mlm_loss, "mlm_loss": mlm_loss, "mlm_accuracy": correct / max(masked, 1)}
    if nsp:
        nsp_loss = nsp_loss_sum / max(sequences, 1)
        metrics.update(loss=mlm_loss + nsp_loss, nsp_loss=nsp_loss, nsp_accuracy=nsp_correct / max(sequences, 1))
    return {**metrics, "masked_tokens": masked, "sequences": sequences}


# ---------------------------------------------------------------------------- helpers
def latest_checkpoint(output_dir: str) -> str | None:
    pointer = os.path.join(output_dir, CHECKPOINT_POINTER)
    if not os.path.isfile(pointer):
        return None
    with open(pointer, encoding="utf-8") as f:
        try:
            name = json.load(f)
        except ValueError:
            name = None
    if not isinstance(name, str):
        raise ValueError(f"{pointer} is damaged: it should hold the checkpoint folder's name as a JSON "
                         "string, such as \"checkpoint-500\"; write the latest good one there")
    path = os.path.join(output_dir, name)
    if not os.path.isdir(path):
        raise FileNotFoundError(f"{pointer} names {name}, which does not exist")
    return path


def _squared_norm(model) -> float:
    """The squared global norm of the gradients, in float64."""
    return sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in model.parameters())


def _lower_is_better(metric: str) -> bool:
    return metric == "loss" or metric.endswith("_loss") or metric in ("mse", "perplexity")


def _jsonable(value):
    if isinstance(value, dict):
        return {k: _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, (np.integer,)):
        return int(value)
    if isinstance(value, (np.floating,)):
        return float(value)
    return value


def _write_json(path: str, value) -> None:
    with open(path, "w", encoding="utf-8") as f:
        json.dump(_jsonable(value), f)
        f.flush()
        os.fsync(f.fileno())


def _write_json_atomic(path: str, value) -> None:
    tmp = f"{path}.{os.getpid()}.tmp"
    _write_json(tmp, value)
    os.replace(tmp, path)
