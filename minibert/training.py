"""The pretraining loop: batches in, optimizer steps out, with evaluation and checkpoints.

One optimizer step, top to bottom (``Trainer._train_step``):

    for each of the k micro-batches:                      # gradient accumulation
        out = model.forward(ids, types, mask, labels=..., next_sentence_label=...)
        model.backward(mlm_weight=M_i / M, nsp_weight=B_i / B)   # sums to the big batch's gradient
    clip_grad_norm(...)                                   # global norm <= max_grad_norm
    optimizer.lr = schedule(step); optimizer.step(); optimizer.zero_grad()

Around it: a progress bar (loss, learning rate, tokens/s), evaluation every ``eval_every``
steps (MLM loss and accuracy, NSP accuracy), early stopping on the validation loss, a
JSON-lines metrics log, a loss-curve plot, NaN/inf detection, and atomic checkpoints that
hold everything needed to continue bit for bit: the model, the optimizer's buffers, the step,
the position in the data and the dropout generator's state.

``TrainingArguments(fp16=True)``: mixed precision. The dense layers multiply in float16
(``model.set_matmul_dtype``), the weights and the update stay float32, and backward starts
from ``scale * loss`` (``model.backward(mlm_weight=M_i / M * scale, ...)``); the gradients
are divided by the scale before clipping, and a step whose gradients overflowed is skipped
with a smaller scale next time (``optim.DynamicLossScaler``; the scale is checkpointed too).

The data sets are streams of batches (``minibert.data.pretraining.ArrayDataset`` or
``ShardDataset``): iterating gives one epoch of batches, dicts of NumPy arrays
(``input_ids``, ``token_type_ids``, ``attention_mask``, ``labels``,
``next_sentence_label``), and ``dataset.position`` says where the stream is. With dynamic
masking the examples come unmasked and ``masking`` (a ``DynamicMasking``) corrupts each batch
and adds its labels. A checkpoint saves the position and the masking generator's state, so a
resumed run sees the same batches with the same masks.
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
from .nn import no_grad
from .optim import AdamW, DynamicLossScaler, clip_grad_norm, get_schedule
from .plots import plot_loss_curves

CHECKPOINT_POINTER = "latest_checkpoint.txt"   # names the newest complete checkpoint folder


class TrainingDiverged(RuntimeError):
    """The loss or the gradients became NaN or infinite."""


@dataclass
class TrainingArguments:
    """Hyperparameters of a pretraining run (defaults follow the original recipe, scaled down)."""

    output_dir: str = "runs/pretrain"
    gradient_accumulation_steps: int = 1    # micro-batches per optimizer step
    max_steps: int = 1000                   # optimizer steps
    learning_rate: float = 1e-4
    warmup_steps: int = 100
    schedule: str = "linear"                # "linear" | "cosine" | "constant"
    weight_decay: float = 0.01
    adam_betas: tuple = (0.9, 0.999)
    adam_eps: float = 1e-6
    bias_correction: bool = True
    max_grad_norm: float | None = 1.0
    eval_every: int = 100                   # steps between evaluations (and checkpoints)
    eval_batches: int | None = None         # None: the whole validation set (statically masked)
    patience: int | None = None             # evaluations without improvement before stopping
    log_every: int = 10
    seed: int = 0
    progress: bool = True                   # show a tqdm progress bar
    fp16: bool = False                      # float16 matrix products, float32 weights, dynamic loss scale

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
        self.adam_betas = tuple(self.adam_betas)


class Trainer:
    """Pretrains a :class:`minibert.modeling.BertForPreTraining` (see the module docstring)."""

    def __init__(self, model, args: TrainingArguments, train_dataset, eval_dataset=None, tokenizer=None,
                 optimizer=None, masking=None):
        if len(train_dataset) == 0:
            raise ValueError("the training set holds no batch: use a larger corpus or a smaller batch")
        self.model = model
        self.args = args
        self.train_dataset = train_dataset
        self.eval_dataset = eval_dataset
        self.tokenizer = tokenizer
        self.masking = masking                    # None: the examples carry their labels (static masks)
        self.optimizer = optimizer or AdamW(model.named_parameters(), lr=args.learning_rate,
                                            betas=args.adam_betas, eps=args.adam_eps,
                                            weight_decay=args.weight_decay,
                                            bias_correction=args.bias_correction)
        self.schedule = get_schedule(args.schedule, args.learning_rate, args.warmup_steps, args.max_steps)
        self.scaler = None
        if args.fp16:                       # mixed precision: see DynamicLossScaler
            model.set_matmul_dtype(np.float16)
            self.scaler = DynamicLossScaler()
        # the state that a checkpoint saves and a resume restores (with the data position)
        self.step = 0                      # optimizer steps done
        self.best_eval_loss = math.inf
        self.evals_without_improvement = 0
        self.history = []                  # metrics records, also written to metrics.jsonl
        self._batches = None               # the iterator over the current epoch

    # ------------------------------------------------------------------ data
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

    # ------------------------------------------------------------------ one step
    def _train_step(self) -> dict:
        """One optimizer step over ``gradient_accumulation_steps`` micro-batches."""
        model, args = self.model, self.args
        batches = [self._next_batch() for _ in range(args.gradient_accumulation_steps)]
        total_masked = sum(int((b["labels"] != -100).sum()) for b in batches)
        total_sequences = sum(len(b["input_ids"]) for b in batches)
        mlm_loss = nsp_loss = 0.0
        tokens = 0
        scale = self.scaler.scale if self.scaler is not None else 1.0   # the loss scale (fp16)
        for batch in batches:
            # fp16: an overflow to inf is an expected event (the scaler handles it), not a warning
            with np.errstate(over="ignore", invalid="ignore") if self.scaler is not None else nullcontext():
                out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                                    labels=batch["labels"], next_sentence_label=batch["next_sentence_label"])
                masked = int((batch["labels"] != -100).sum())
                mlm_share = masked / max(total_masked, 1)
                nsp_share = len(batch["input_ids"]) / total_sequences
                model.backward(mlm_weight=mlm_share * scale, nsp_weight=nsp_share * scale)
            mlm_loss += out.mlm_loss * mlm_share
            nsp_loss += out.nsp_loss * nsp_share
            tokens += int(batch["attention_mask"].sum())
        loss = mlm_loss + nsp_loss
        if self.scaler is not None and math.isfinite(loss):
            if not self.scaler.unscale(model.named_parameters()):    # float16 overflow in backward
                if scale <= self.scaler.min_scale:
                    raise TrainingDiverged(
                        f"step {self.step + 1}: the gradients overflow even at loss scale {scale:g}; "
                        "training stopped and the last checkpoint was kept. Lower the learning "
                        "rate, or train without fp16.")
                self.scaler.update()                                  # a smaller scale next time
                self.optimizer.zero_grad()
                self.step += 1                                        # a step without an update
                return {"loss": loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss, "grad_norm": math.nan,
                        "lr": self.optimizer.lr, "tokens": tokens, "skipped": True, "loss_scale": scale}
            self.scaler.update()
        grad_norm = (clip_grad_norm(model.named_parameters(), args.max_grad_norm)
                     if args.max_grad_norm is not None else _global_norm(model))
        if not (math.isfinite(loss) and math.isfinite(grad_norm)):
            raise TrainingDiverged(
                f"step {self.step + 1}: loss {loss} / gradient norm {grad_norm} is not finite; "
                "training stopped and the last checkpoint was kept. Lower the learning rate "
                "or check the data, then resume from the checkpoint.")
        self.optimizer.lr = self.schedule(self.step)
        self.optimizer.step()
        self.optimizer.zero_grad()
        self.step += 1
        return {"loss": loss, "mlm_loss": mlm_loss, "nsp_loss": nsp_loss, "grad_norm": grad_norm,
                "lr": self.optimizer.lr, "tokens": tokens, "skipped": False, "loss_scale": scale}

    # ------------------------------------------------------------------ evaluation
    def evaluate(self) -> dict:
        """MLM loss and accuracy over the masked tokens, NSP accuracy, on the validation set."""
        if self.eval_dataset is None or len(self.eval_dataset) == 0:
            return {}
        return evaluate_pretraining(self.model, self.eval_dataset, self.args.eval_batches)

    # ------------------------------------------------------------------ the loop
    def train(self, resume_from: str | None = None) -> dict:
        """Train until ``max_steps`` or early stopping; returns a summary dict."""
        from tqdm.auto import tqdm

        args = self.args
        os.makedirs(args.output_dir, exist_ok=True)
        if resume_from is not None:
            self.load_checkpoint(resume_from)
            if self.step >= args.max_steps:
                warnings.warn(f"the checkpoint is at step {self.step} and max_steps is {args.max_steps}: "
                              "nothing to train (raise max_steps to continue)", UserWarning, stacklevel=2)
        self.model.train()
        stopped_early = False
        window_loss, window_tokens, window_skipped, window_start = [], 0, 0, time.perf_counter()
        bar = tqdm(total=args.max_steps, initial=self.step, disable=not args.progress,
                   desc="pretraining", unit="step", dynamic_ncols=True)
        try:
            while self.step < args.max_steps:
                record = self._train_step()
                window_loss.append(record["loss"])
                window_tokens += record["tokens"]
                window_skipped += record["skipped"]
                bar.update(1)
                if self.step % args.log_every == 0 or self.step == args.max_steps:
                    elapsed = time.perf_counter() - window_start
                    train_record = {"step": self.step, "split": "train",
                                    "epoch": self.train_dataset.position["epoch"],
                                    "loss": float(np.mean(window_loss)), "mlm_loss": record["mlm_loss"],
                                    "nsp_loss": record["nsp_loss"], "lr": record["lr"],
                                    "grad_norm": None if record["skipped"] else record["grad_norm"],
                                    "tokens_per_s": window_tokens / elapsed}
                    if self.scaler is not None:     # fp16: the loss scale and the overflowed steps
                        train_record.update(loss_scale=record["loss_scale"], skipped_steps=window_skipped)
                    self._log(train_record)
                    bar.set_postfix(loss=f"{train_record['loss']:.3f}", lr=f"{record['lr']:.2e}",
                                    tok_s=f"{train_record['tokens_per_s']:.0f}")
                    window_loss, window_tokens, window_skipped, window_start = [], 0, 0, time.perf_counter()
                if self.step % args.eval_every == 0 or self.step == args.max_steps:
                    stopped_early = self._evaluate_and_checkpoint(bar)
                    window_start = time.perf_counter()          # evaluation is not training time
                    if stopped_early:
                        break
        finally:
            bar.close()
        self.plot()
        best = os.path.join(args.output_dir, "best_model")
        return {"steps": self.step, "stopped_early": stopped_early, "best_eval_loss": self.best_eval_loss,
                "model_dir": best if os.path.isdir(best) else self.latest_checkpoint(),
                "history": self.history}

    def _evaluate_and_checkpoint(self, bar) -> bool:
        metrics = self.evaluate()
        self.model.train()
        if metrics:
            self._log({"step": self.step, "split": "eval", **metrics})
            bar.write(f"step {self.step}: validation MLM loss {metrics['mlm_loss']:.3f}, "
                      f"MLM accuracy {metrics['mlm_accuracy']:.3f}, NSP accuracy {metrics['nsp_accuracy']:.3f}")
            loss = metrics["loss"]
            if not math.isfinite(loss):            # weights gone bad: keep the last checkpoint as it is
                raise TrainingDiverged(
                    f"step {self.step}: the validation loss is {loss}; training stopped without saving, "
                    f"and the last checkpoint ({self.latest_checkpoint() or 'none yet'}) was kept. Lower "
                    "the learning rate or check the data, then resume from the checkpoint.")
            if loss < self.best_eval_loss:
                self.best_eval_loss = loss
                self.evals_without_improvement = 0
                save_pretrained(self.model, os.path.join(self.args.output_dir, "best_model"), self.tokenizer)
            else:
                self.evals_without_improvement += 1
        self._check_parameters_finite()
        self.save_checkpoint()
        patience = self.args.patience
        if patience is not None and self.evals_without_improvement >= patience:
            bar.write(f"early stopping at step {self.step}: no improvement of the validation loss "
                      f"in {patience} evaluations (best {self.best_eval_loss:.4f})")
            return True
        return False

    # ------------------------------------------------------------------ logging and plots
    def _log(self, record: dict) -> None:
        self.history.append(record)
        with open(os.path.join(self.args.output_dir, "metrics.jsonl"), "a", encoding="utf-8") as f:
            f.write(json.dumps(record) + "\n")

    def plot(self, path: str | None = None) -> str | None:
        """Save the train/validation loss curves as a PNG (when matplotlib is installed)."""
        stopped = self.step if self.evals_without_improvement and self.args.patience is not None \
            and self.evals_without_improvement >= self.args.patience else None
        return plot_loss_curves(self.history, path or os.path.join(self.args.output_dir, "loss_curve.png"),
                                train_label="training loss (MLM + NSP)", early_stop_step=stopped)

    # ------------------------------------------------------------------ checkpoints
    def latest_checkpoint(self) -> str | None:
        return latest_checkpoint(self.args.output_dir)

    def _check_parameters_finite(self) -> None:
        """Raise TrainingDiverged, before anything is saved, if a parameter holds inf or NaN."""
        for name, param in self.model.named_parameters():
            if not bool(get_array_module(param.data).isfinite(param.data).all()):
                raise TrainingDiverged(
                    f"step {self.step}: parameter {name} holds inf or NaN; training stopped without "
                    f"saving, and the last checkpoint ({self.latest_checkpoint() or 'none yet'}) was kept.")

    def save_checkpoint(self) -> str:
        """Write ``checkpoint-<step>/`` completely, then point ``latest_checkpoint.txt`` at it.

        The folder is first written under a temporary name and renamed when whole, and the
        pointer file is replaced atomically, so an interruption at any moment leaves the
        previous checkpoint loadable. Older checkpoints are removed afterwards.
        """
        out = self.args.output_dir
        final = os.path.join(out, f"checkpoint-{self.step}")
        tmp = os.path.join(out, f".tmp-checkpoint-{self.step}-{os.getpid()}")
        shutil.rmtree(tmp, ignore_errors=True)
        save_pretrained(self.model, tmp, self.tokenizer)
        opt_state = self.optimizer.state_dict()
        arrays = {k: v for k, v in opt_state.items() if isinstance(v, np.ndarray)}
        scalars = {k: v for k, v in opt_state.items() if not isinstance(v, np.ndarray)}
        st.save_file(arrays, os.path.join(tmp, "optimizer.safetensors"))
        state = {"step": self.step, "data_position": self.train_dataset.position,
                 "masking": self.masking.state_dict() if self.masking is not None else None,
                 "best_eval_loss": self.best_eval_loss if math.isfinite(self.best_eval_loss) else None,
                 "evals_without_improvement": self.evals_without_improvement,
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
        needed = ("step", "optimizer", "dropout_rng", "data_position", "best_eval_loss",
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
        self.step = state["step"]
        self.train_dataset.position = state["data_position"]
        self._batches = None
        if self.masking is not None:
            if state.get("masking") is None:
                raise ValueError(f"checkpoint {path} was saved without dynamic masking; resume it the same way")
            self.masking.load_state_dict(state["masking"])
        best = state["best_eval_loss"]
        self.best_eval_loss = math.inf if best is None else best
        self.evals_without_improvement = state["evals_without_improvement"]
        self.history = state.get("history", [])


# ---------------------------------------------------------------------------- helpers
def evaluate_pretraining(model, dataset, max_batches: int | None = None) -> dict:
    """MLM loss (mean over masked tokens), MLM accuracy, NSP loss and accuracy, without caches.

    ``dataset`` holds statically masked examples (labels included) and is read from its start
    each time, so every evaluation of a run (and of a resumed run) scores the same predictions.
    """
    model.eval()
    dataset.position = {"epoch": 0, "example": 0}
    mlm_loss_sum = nsp_loss_sum = 0.0
    masked = correct = nsp_correct = sequences = 0
    with no_grad():
        for i, batch in enumerate(dataset):
            if max_batches is not None and i >= max_batches:
                break
            out = model.forward(batch["input_ids"], batch["token_type_ids"], batch["attention_mask"],
                                labels=batch["labels"], next_sentence_label=batch["next_sentence_label"])
            targets = batch["labels"].reshape(-1)[to_numpy(out.masked_positions)]
            count = len(targets)
            mlm_loss_sum += out.mlm_loss * count
            masked += count
            correct += int((to_numpy(out.prediction_logits).argmax(-1) == targets).sum())
            nsp = batch["next_sentence_label"]
            nsp_loss_sum += out.nsp_loss * len(nsp)
            nsp_correct += int((to_numpy(out.seq_relationship_logits).argmax(-1) == nsp).sum())
            sequences += len(nsp)
    mlm_loss = mlm_loss_sum / max(masked, 1)
    nsp_loss = nsp_loss_sum / max(sequences, 1)
    return {"loss": mlm_loss + nsp_loss, "mlm_loss": mlm_loss, "mlm_accuracy": correct / max(masked, 1),
            "nsp_loss": nsp_loss, "nsp_accuracy": nsp_correct / max(sequences, 1),
            "masked_tokens": masked, "sequences": sequences}


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


def _global_norm(model) -> float:
    return math.sqrt(sum(float((p.grad.astype(np.float64) ** 2).sum()) for p in model.parameters()))


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
