"""Distillation as DistilBERT does it (Sanh et al., 2019): a smaller student learns from a
trained teacher through three losses at once.

    student = the teacher's embeddings + some of its layers (every other one by default)
    loss = a_ce * L_ce + a_mlm * L_mlm + a_cos * L_cos

    L_ce   soft-target cross-entropy between the teacher's and the student's masked-LM
           distributions at temperature T, over the M masked positions:
           T^2 * mean_m ( -sum_v p_mv log q_mv ),  p = softmax(teacher / T), q = softmax(student / T).
           It equals T^2 * mean_m KL(p_m || q_m) plus the teacher's entropy, a constant of the
           student, so the two have the same gradient; minibert.ops.distillation (the KL form,
           which reads 0 when the student matches) computes it.
    L_mlm  the student's own masked-LM cross-entropy against the true tokens (hard labels).
    L_cos  mean over the non-padding positions of 1 - cos(student hidden, teacher hidden), the
           last layers' outputs (minibert.ops.cosine_embedding): the student's hidden states
           turn to point where the teacher's point.

Shapes: B batch, T sequence, H hidden (the same for both models), V vocabulary, M masked
positions.

The student (:func:`student_from_teacher`) is a :class:`~minibert.distilbert.DistilBertForMaskedLM`
(no token types, no pooler) whose layer i is a copy of the teacher's layer ``layers[i]``.
A BERT teacher adds its token-type-0 embedding to every token of a single segment; the student
has no token types, so that row is folded into its position embeddings: the student's
embedding output equals the teacher's for any input whose token types are all 0.

:class:`DistillationTask` is the task of the one training loop (minibert.training.Trainer).
It reuses the pretraining data (sentence pairs with dynamic masking); the NSP labels and
token types are not used, and the teacher too is given token types of 0. A teacher without a
masked-LM head (a sentence-embedding BERT) gives no soft targets: then a_ce must be 0, and
the student learns from L_mlm on its own head and from L_cos.
"""

from __future__ import annotations

import json
import os
import warnings

import numpy as np

from . import ops
from .backend import get_array_module, to_numpy
from .checkpoint import load_pretrained
from .config import BertConfig, DistilBertConfig
from .distilbert import DistilBertForMaskedLM
from .heads import BertForMaskedLM
from .modeling import masked_positions_and_targets
from .nn import no_grad, op
from .training import PretrainingTask

# DistilBERT's weights of the three losses (a_ce, a_mlm, a_cos) and its temperature, as in
# the training command its authors published with the paper.
DEFAULT_ALPHAS = {"ce": 5.0, "mlm": 2.0, "cos": 1.0}
DEFAULT_TEMPERATURE = 2.0


def evenly_spaced_layers(teacher_layers: int, student_layers: int) -> list[int]:
    """The teacher layers a student of ``student_layers`` copies: ``i * L // N`` for layer i,
    which is every other layer (0, 2, 4, ...) when the student has half the teacher's layers."""
    if not 1 <= student_layers <= teacher_layers:
        raise ValueError(f"--layers must be between 1 and the teacher's {teacher_layers} layers, "
                         f"got {student_layers}")
    return [i * teacher_layers // student_layers for i in range(student_layers)]


def load_teacher(directory, device: str = "cpu"):
    """The teacher as a masked-LM model (a BERT or a DistilBERT checkpoint), in eval mode, and
    whether its checkpoint holds a masked-LM head (``cls.predictions.*`` / ``vocab_transform``)."""
    model_type = _model_type(directory)
    if model_type not in (None, "bert", "distilbert"):
        raise ValueError(f"--teacher {directory}: model_type {model_type!r}; a teacher must be a BERT "
                         "or a DistilBERT checkpoint")
    model_class = DistilBertForMaskedLM if model_type == "distilbert" else BertForMaskedLM
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)          # a missing head is reported by the caller
        teacher, info = load_pretrained(model_class, directory, device=device, output_loading_info=True)
    encoder_missing = [k for k in info.missing_keys if not k.startswith("cls.")]
    if encoder_missing:
        raise ValueError(f"--teacher {directory}: the checkpoint lacks encoder weights such as "
                         f"{encoder_missing[0]}: not a trained BERT")
    has_mlm_head = not any(k.startswith("cls.") for k in info.missing_keys)
    teacher.eval()
    return teacher, has_mlm_head


def _model_type(directory) -> str | None:
    """config.json's model_type (None when it says none or cannot be read: the loader then
    gives the clear error)."""
    try:
        with open(os.path.join(directory, "config.json"), encoding="utf-8") as f:
            values = json.load(f)
    except (OSError, ValueError):
        return None
    return values.get("model_type") if isinstance(values, dict) else None


def student_config(teacher_config: BertConfig, num_layers: int) -> DistilBertConfig:
    """The teacher's configuration with ``num_layers`` layers, as a DistilBERT (no token types)."""
    values = {k: v for k, v in teacher_config.to_dict().items()
              if k in DistilBertConfig.__dataclass_fields__ and k not in ("model_type", "type_vocab_size")}
    values = {DistilBertConfig.NAMES.get(k, k): v for k, v in values.items()}
    for ours, theirs in DistilBertConfig.NAMES.items():      # from_dict takes either spelling
        if theirs in values:
            values[ours] = values.pop(theirs)
    values["n_layers"] = num_layers
    return DistilBertConfig.from_dict(values)


def student_from_teacher(teacher, layers: list[int], seed: int = 0) -> DistilBertForMaskedLM:
    """A DistilBERT student: the teacher's embeddings, its layers ``layers`` (student layer i is
    teacher layer ``layers[i]``) and its masked-LM head, copied; the token-type-0 embedding of a
    BERT teacher is folded into the position embeddings (see the module docstring)."""
    count = teacher.config.num_hidden_layers
    if not layers or any(not 0 <= j < count for j in layers):
        raise ValueError(f"student layers must be chosen among the teacher's layers 0..{count - 1}, got {layers}")
    student = DistilBertForMaskedLM(student_config(teacher.config, len(layers)), seed=seed,
                                    dtype=teacher.dtype)
    teacher_params = dict(teacher.named_parameters())
    prefix = teacher.base_model_prefix + "."
    for name, param in student.named_parameters():
        source = name
        if name.startswith("distilbert."):
            rest = name[len("distilbert."):]
            if rest.startswith("encoder.layer."):
                index, tail = rest[len("encoder.layer."):].split(".", 1)
                rest = f"encoder.layer.{layers[int(index)]}.{tail}"
            source = prefix + rest
        value = to_numpy(teacher_params[source].data).copy()
        if name == "distilbert.embeddings.position_embeddings.weight":
            token_types = teacher_params.get(prefix + "embeddings.token_type_embeddings.weight")
            if token_types is not None:
                value += to_numpy(token_types.data)[0]      # every student token is of type 0
        param.data[...] = get_array_module(param.data).asarray(value)
    return student


class DistillationTask(PretrainingTask):
    """The triple loss over the pretraining batches (see the module docstring).

    ``alphas``: ``{"ce": a_ce, "mlm": a_mlm, "cos": a_cos}``; a loss whose weight is 0 is not
    computed. The loop weighs each micro-batch's losses by its share of their items (masked
    tokens for L_ce and L_mlm, real tokens for L_cos). The values returned and logged are the
    weighted terms a * L, so the logged total is the objective itself.
    """

    name = "distillation"

    def __init__(self, teacher, train_dataset, eval_dataset=None, masking=None, *, alphas=None,
                 temperature: float = DEFAULT_TEMPERATURE, accumulation: int = 1, eval_batches: int | None = None,
                 teacher_has_mlm_head: bool = True):
        super().__init__(train_dataset, eval_dataset, masking, accumulation, eval_batches)
        self.alphas = dict(DEFAULT_ALPHAS if alphas is None else alphas)
        if set(self.alphas) != set(DEFAULT_ALPHAS):
            raise ValueError(f"alphas must give the weights of {sorted(DEFAULT_ALPHAS)}, got {sorted(self.alphas)}")
        for key, value in self.alphas.items():
            if not (isinstance(value, (int, float)) and value >= 0 and np.isfinite(value)):
                raise ValueError(f"--alpha-{key} must be a number >= 0, got {value!r}")
        if not any(self.alphas.values()):
            raise ValueError("at least one of --alpha-ce, --alpha-mlm, --alpha-cos must be positive")
        if not temperature > 0:
            raise ValueError(f"--temperature must be > 0, got {temperature!r}")
        if self.alphas["ce"] and not teacher_has_mlm_head:
            raise ValueError("the teacher has no masked-LM head, so it gives no soft targets: "
                             "--alpha-ce must be 0")
        self.teacher = teacher.eval()          # the targets are fixed: no dropout in the teacher
        self.temperature = float(temperature)
        self.active = [key for key in ("ce", "mlm", "cos") if self.alphas[key]]

    def loss_items(self, batch) -> dict:
        items = {"ce": int((batch["labels"] != -100).sum()), "mlm": int((batch["labels"] != -100).sum()),
                 "cos": int(batch["attention_mask"].sum())}
        return {f"{key}_loss": items[key] for key in self.active}

    def _teacher_outputs(self, ids, mask, positions):
        """The teacher's last hidden states (B, T, H) and, for L_ce, its logits (M, V)."""
        with no_grad():
            hidden, _ = self.teacher.base_model.forward(ids, token_type_ids=ids * 0, attention_mask=mask)
            logits = None
            if self.alphas["ce"]:
                logits = self.teacher.mlm_head.forward(hidden.reshape(-1, hidden.shape[-1])[positions])
        return hidden, logits

    def _losses(self, model, batch):
        """Forward of teacher and student; the three losses' values and backward closures."""
        ids, mask = batch["input_ids"], batch["attention_mask"]
        xp = get_array_module(model.base_model.embeddings.word_embeddings.weight.data)
        ids, mask, labels = xp.asarray(ids), xp.asarray(mask), xp.asarray(batch["labels"])
        positions, targets = masked_positions_and_targets(labels, ids.shape, model.config.vocab_size, xp)
        teacher_hidden, teacher_logits = self._teacher_outputs(ids, mask, positions)
        hidden, _ = model.base_model.forward(ids, attention_mask=mask)                # (B, T, H)
        size = hidden.shape[-1]
        flat = hidden.reshape(-1, size)                                                # (B*T, H)
        values, caches, logits = {}, {}, None
        if self.alphas["ce"] or self.alphas["mlm"]:
            logits = model.mlm_head.forward(flat[positions])                           # (M, V)
            if self.alphas["mlm"]:
                ce_forward, ce_backward = op("cross_entropy", logits)
                values["mlm"], cache = ce_forward(logits, targets)
                caches["mlm"] = (ce_backward, cache)
            if self.alphas["ce"]:
                values["ce"], cache = ops.distillation_forward(logits, teacher_logits, self.temperature)
                caches["ce"] = (ops.distillation_backward, cache)
        if self.alphas["cos"]:
            values["cos"], cache = ops.cosine_embedding_forward(
                flat, teacher_hidden.reshape(-1, size).astype(flat.dtype), mask.reshape(-1))
            caches["cos"] = (ops.cosine_embedding_backward, cache)
        return values, caches, (hidden.shape, positions, logits)

    def forward_backward(self, model, batch, weights: dict) -> dict:
        values, caches, (shape, positions, _) = self._losses(model, batch)
        xp = get_array_module(positions)
        head = [key for key in ("ce", "mlm") if key in caches]
        dflat = None
        if "cos" in caches:                                   # d(a_cos L_cos) / d hidden, every row
            backward, cache = caches["cos"]
            dflat = backward(self.alphas["cos"] * weights["cos_loss"], cache)         # (B*T, H)
        if head:
            dlogits = sum(caches[key][0](self.alphas[key] * weights[f"{key}_loss"], caches[key][1])
                          for key in head)                                             # (M, V)
            dmasked = model.mlm_head.backward(dlogits)                                 # (M, H)
            if dflat is None:
                dflat = xp.zeros((shape[0] * shape[1], shape[2]), dtype=dmasked.dtype)
            dflat[positions] += dmasked
        model.base_model.backward(dflat.reshape(shape), None)
        return {f"{key}_loss": self.alphas[key] * values[key] for key in self.active}

    def validate(self, model) -> dict:
        """The three losses (weighted, as in training, and their sum ``loss``) and the student's
        masked-LM accuracy, on the validation batches (statically masked, the same each time)."""
        if self.eval_dataset is None or len(self.eval_dataset) == 0:
            return {}
        model.eval()
        self.eval_dataset.position = {"epoch": 0, "example": 0}
        sums, counts = {key: 0.0 for key in self.active}, {key: 0 for key in self.active}
        correct = masked = 0
        with no_grad():
            for i, batch in enumerate(self.eval_dataset):
                if self.eval_batches is not None and i >= self.eval_batches:
                    break
                items = self.loss_items(batch)
                values, _, (_, positions, logits) = self._losses(model, batch)
                for key in self.active:
                    sums[key] += values[key] * items[f"{key}_loss"]
                    counts[key] += items[f"{key}_loss"]
                if logits is not None:                     # the student's masked-LM guesses
                    labels = np.asarray(batch["labels"]).reshape(-1)[to_numpy(positions)]
                    correct += int((to_numpy(logits).argmax(-1) == labels).sum())
                    masked += len(labels)
        metrics = {f"{key}_loss": self.alphas[key] * sums[key] / max(counts[key], 1) for key in self.active}
        metrics = {"loss": sum(metrics.values()), **metrics}
        if masked:
            metrics["mlm_accuracy"] = correct / masked
        return metrics
