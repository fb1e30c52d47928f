"""Pruning: a smaller BERT that keeps (most of) its accuracy.

A fine-tuned model has more weights than its task needs. Two ways of removing some, each
followed by a short "recovery" fine-tuning that lets the remaining weights make up for the
lost ones:

1. **Magnitude pruning** (unstructured). The weights of smallest absolute value, counted
   over all the encoder's weight matrices together (a *global* threshold), are set to zero
   and kept there. :class:`MagnitudePruner` holds one 0/1 mask per matrix; wrap the
   optimizer with :meth:`MagnitudePruner.wrap` and every step re-applies the masks, so the
   zeros survive further fine-tuning. The model keeps its shapes: zeros make the file
   compress better, not the dense matrix products faster.

2. **Attention-head pruning** (structured), after Michel, Levy and Neubig (2019), "Are
   Sixteen Heads Really Better than One?". Imagine a gate ``xi_h`` multiplying the context
   of head ``h`` (its slice of the attention output, before the output projection), equal
   to 1 in the real model. A head matters when the loss is sensitive to its gate:

       importance_h = mean over examples x of | d loss(x) / d xi_h |   at xi = 1

   and since ``loss`` sees the gate only through ``xi_h * context_h``,

       d loss / d xi_h = sum over positions t and dimensions d of context_h[t, d] * dcontext_h[t, d]

   with ``dcontext`` the gradient that reaches the context in the ordinary backward pass.
   The gate is the model's ``head_mask`` (as in transformers), and the encoder's backward
   leaves this gradient, per sequence, in ``head_mask_grad``: :func:`head_gate_gradients`
   runs forward and backward with a mask of ones and reads it. Scores are normalised per
   layer (L2 norm, as in the paper) so layers compare, the least important heads over the
   whole model go (:func:`prune_heads_by_importance`, keeping at least one head per layer),
   and ``BertModel.prune_heads`` removes their rows of Q/K/V and columns of the output
   projection: the model really gets smaller and faster.

3. **Reports** (:func:`measure`): parameters, encoder sparsity, heads, the size of the saved
   ``model.safetensors`` (and of it compressed), time per batch, accuracy and macro-F1.

Shapes: B batch, T sequence length, H hidden size, N heads of a layer, D head size, L layers.
"""

from __future__ import annotations

import os
import re
import tempfile
import time
import zlib
from dataclasses import asdict, dataclass

import numpy as np

from .backend import get_array_module, is_int_at_least, to_numpy
from .nn import no_grad

def encoder(model):
    """The BertModel inside ``model`` (a head model's ``model.bert``, or the model itself)."""
    return model.bert if hasattr(model, "bert") else model


# ============================================================================ magnitude pruning
def encoder_weight_names(model) -> list[str]:
    """Names of the encoder's weight matrices, the ones magnitude pruning considers.

    Those are the 2-D parameters inside ``encoder.layer.*``: the query, key, value,
    attention output, intermediate and output projections of every layer. Embeddings,
    LayerNorm weights and biases (1-D) are left alone.
    """
    return [name for name, p in model.named_parameters()
            if p.data.ndim == 2 and re.search(r"(^|\.)encoder\.layer\.\d+\.", name)]


def check_sparsity(sparsity) -> float:
    if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float, np.floating, np.integer)):
        raise TypeError(f"sparsity must be a number in [0, 1), got {sparsity!r}")
    if not 0.0 <= float(sparsity) < 1.0:
        raise ValueError(f"sparsity must be in [0, 1) (the fraction of weights set to zero; 1 would remove "
                         f"them all), got {sparsity!r}")
    return float(sparsity)


class MagnitudePruner:
    """Zero the ``sparsity`` fraction of smallest-magnitude encoder weights, and keep them zero.

    >>> pruner = MagnitudePruner(model, sparsity=0.5)       # prunes at once
    >>> tuner = FineTuner(model, args, train, val, optimizer=pruner.wrap(AdamW(model.named_parameters())))

    The threshold is global: all chosen matrices are ranked together, so a layer whose
    weights are small loses more of them. Exactly ``round(sparsity * total)`` weights are
    masked (ties at the threshold are broken by position), ``total`` being the number of
    entries of the chosen matrices. ``names``: which parameters to prune (default
    :func:`encoder_weight_names`). Weights that are already zero are the smallest, so a
    second pruner with a higher sparsity extends the first one's mask.

    ``ramp_steps`` > 0 prunes gradually (Zhu and Gupta, 2017, "To prune, or not to prune"):
    the sparsity starts at 0 and, after optimizer step t, is

        s_t = sparsity * (1 - (1 - t / ramp_steps)^3)          (t <= ramp_steps; then sparsity)

    with the masks recomputed each time (:meth:`advance`, called by the wrapped optimizer).
    The cubic removes many weights early, while plenty are redundant, and few at the end;
    the training in between lets the remaining weights take over from the ones about to go,
    and the steps after the ramp recover at the final sparsity. One-shot pruning to the same
    sparsity loses more accuracy at high sparsities.

    Prune heads *before* creating a pruner (removing heads changes the matrices' shapes).
    """

    def __init__(self, model, sparsity: float, names=None, *, ramp_steps: int = 0):
        self.sparsity = check_sparsity(sparsity)
        if not is_int_at_least(ramp_steps, 0):
            raise ValueError(f"ramp_steps must be a non-negative integer, got {ramp_steps!r}")
        self.ramp_steps = int(ramp_steps)
        self.steps = 0                                       # optimizer steps seen (advance calls)
        self.current_sparsity = 0.0 if self.ramp_steps else self.sparsity
        params = dict(model.named_parameters())
        names = encoder_weight_names(model) if names is None else list(names)
        unknown = [name for name in names if name not in params]
        if unknown:
            raise KeyError(f"no parameter(s) {unknown[:5]} in the model")
        if not names:
            raise ValueError("no weight matrices to prune (the model has no encoder Linear weights)")
        self.params = {name: params[name] for name in names}
        self.masks = self._global_masks(self.current_sparsity)
        self.apply()

    def sparsity_after(self, step: int) -> float:
        """The sparsity the schedule asks for after ``step`` optimizer steps."""
        if not self.ramp_steps:
            return self.sparsity
        done = min(step, self.ramp_steps) / self.ramp_steps
        return self.sparsity * (1.0 - (1.0 - done) ** 3)

    def advance(self) -> None:
        """One optimizer step more: raise the sparsity along the ramp (new masks) and re-apply them."""
        self.steps += 1
        level = self.sparsity_after(self.steps)
        if level != self.current_sparsity:
            self.current_sparsity = level
            self.masks = self._global_masks(level)
        self.apply()

    def _global_masks(self, sparsity: float) -> dict:
        sizes = [p.data.size for p in self.params.values()]
        xp = get_array_module(next(iter(self.params.values())).data)
        magnitudes = xp.concatenate([xp.abs(p.data).reshape(-1) for p in self.params.values()])  # all weights
        keep = xp.ones(magnitudes.size, dtype=bool)
        count = min(int(round(sparsity * magnitudes.size)), magnitudes.size - 1)   # never every weight
        if count > 0:
            smallest = xp.argpartition(magnitudes, count - 1)[:count]     # exactly `count` indices
            keep[smallest] = False
        masks, start = {}, 0
        for (name, p), size in zip(self.params.items(), sizes):
            masks[name] = keep[start:start + size].reshape(p.data.shape).astype(p.data.dtype)   # 1 keep, 0 pruned
            start += size
        return masks

    def apply(self) -> None:
        """Set the pruned weights to zero again (call after every optimizer step)."""
        for name, p in self.params.items():
            mask = self.masks[name]
            if p.data.shape != mask.shape:
                raise RuntimeError(f"{name} has shape {tuple(p.data.shape)} but its mask {tuple(mask.shape)}: "
                                   "prune heads before magnitude pruning, not after")
            p.data *= mask

    def mask_gradients(self) -> None:
        """Zero the gradients of pruned weights (so optimizer moments never build up for them)."""
        for name, p in self.params.items():
            p.grad *= self.masks[name]

    def wrap(self, optimizer) -> "MaskedOptimizer":
        """An optimizer whose every step keeps this pruner's zeros (pass it to FineTuner)."""
        return MaskedOptimizer(optimizer, self)

    @property
    def pruned(self) -> int:
        """How many weights the masks hold at zero."""
        return int(sum(m.size - int(m.sum()) for m in self.masks.values()))

    @property
    def total(self) -> int:
        return int(sum(m.size for m in self.masks.values()))

    def measured_sparsity(self) -> float:
        """The fraction of the chosen matrices' entries that are zero now."""
        zeros = sum(int((p.data == 0).sum()) for p in self.params.values())
        return zeros / self.total


class MaskedOptimizer:
    """An optimizer wrapper: each ``step`` masks the gradients, steps, and re-applies the masks.

    With the gradients of pruned weights at zero from the first step, AdamW's moments for
    them stay zero and so does their update (weight decay of a zero weight is zero too);
    the final ``apply`` makes sure of it whatever the optimizer does. Everything else
    (``lr``, ``zero_grad``, ``state_dict``, ...) is the wrapped optimizer's.
    """

    def __init__(self, optimizer, pruner: MagnitudePruner):
        self.optimizer, self.pruner = optimizer, pruner

    @property
    def lr(self):
        return self.optimizer.lr

    @lr.setter
    def lr(self, value):
        self.optimizer.lr = value

    def step(self) -> None:
        self.pruner.mask_gradients()
        self.optimizer.step()
        self.pruner.advance()              # re-applies the masks (new ones on a gradual ramp)

    def zero_grad(self) -> None:
        self.optimizer.zero_grad()

    def __getattr__(self, name):
        return getattr(self.optimizer, name)


def encoder_sparsity(model) -> float:
    """The fraction of zeros among the encoder's Linear weights."""
    params = dict(model.named_parameters())
    names = encoder_weight_names(model)
    zeros = sum(int((params[n].data == 0).sum()) for n in names)
    return zeros / max(1, sum(params[n].data.size for n in names))


# ============================================================================ head importance
def original_head_numbers(bert) -> list[list[int]]:
    """For each layer, the original numbers of the heads it still has (``config.kept_heads``)."""
    return [bert.config.kept_heads(layer) for layer in range(bert.config.num_hidden_layers)]


def head_gate_gradients(model, batch: dict) -> np.ndarray:
    """d(batch loss)/d(gate of each head), per sequence: (B, L, N) in float64, NaN for pruned heads.

    ``batch`` holds a head model's ``forward`` arguments with labels (e.g. from
    ``dataset.get_batch``). Heads are numbered as in the original model. The gates are the
    model's ``head_mask``, all ones (the model itself); its gradient comes back per sequence
    in ``head_mask_grad``. The parameters' ``.grad`` receive this batch's gradients as a side
    effect (zero them before training).
    """
    bert = encoder(model)
    numbers = original_head_numbers(bert)
    batch_size = len(batch["input_ids"])
    ones = [np.ones((batch_size, len(heads))) for heads in numbers]          # (B, N_l) per layer
    model.forward(**batch, head_mask=ones)
    model.backward()
    gates = np.full((batch_size, bert.config.num_hidden_layers, bert.config.num_attention_heads), np.nan)
    for layer, heads in enumerate(numbers):
        gates[:, layer, heads] = to_numpy(bert.head_mask_grad[layer])      # (B, N_l)
    return gates


def head_importance(model, dataset, batch_size: int = 32, max_examples: int | None = None,
                    normalize_layers: bool = True) -> np.ndarray:
    """Michel et al.'s importance of every head: (L, N), NaN for heads already pruned.

    importance[l, h] = mean over examples of |d loss(example) / d gate_{l,h}|: each batch's
    loss is a mean over its ``n`` labelled items, so an example's own gradient is ``n``
    times its share of the batch gradient. With ``normalize_layers`` each layer's scores
    are divided by their L2 norm (the paper's choice: raw scores are not comparable between
    layers). Runs in evaluation mode (no dropout) and leaves every ``.grad`` at zero.
    """
    from .finetune import loss_items

    count = len(dataset) if max_examples is None else min(len(dataset), max_examples)
    if count == 0:
        raise ValueError("head_importance needs at least one example")
    was_training = model.training
    model.eval()
    total, seen = None, 0
    try:
        model.zero_grad()
        for start in range(0, count, batch_size):
            batch = dataset.get_batch(np.arange(start, min(start + batch_size, count)))
            gates = head_gate_gradients(model, batch) * loss_items(model, batch)     # (B, L, N)
            summed = np.abs(gates).sum(axis=0)
            total = summed if total is None else total + summed
            seen += gates.shape[0]
            model.zero_grad()
    finally:
        model.train(was_training)
    importance = total / seen                                                        # (L, N)
    if normalize_layers:
        norms = np.sqrt(np.nansum(importance ** 2, axis=1, keepdims=True))
        importance = importance / np.maximum(norms, 1e-20)
    return importance


def select_heads_to_prune(importance, count: int) -> dict[int, list[int]]:
    """The ``count`` lowest-scored heads over all layers, never the last head of a layer.

    ``importance``: (L, N), NaN for heads already gone. Heads are taken in order of
    increasing score (ties: lower layer, then lower head first); a head whose layer has only
    one head left is passed over. Returns ``{layer: [heads]}`` for ``BertModel.prune_heads``.
    """
    importance = np.asarray(importance, dtype=np.float64)
    if importance.ndim != 2:
        raise ValueError(f"importance must be a (layers, heads) array, got shape {importance.shape}")
    alive = ~np.isnan(importance)
    left = alive.sum(axis=1)                                     # heads remaining per layer
    removable = int((left - 1).clip(min=0).sum())
    if not is_int_at_least(count, 0):
        raise ValueError(f"count must be a non-negative integer, got {count!r}")
    if count > removable:
        raise ValueError(f"cannot prune {count} heads: keeping at least one head in each of the "
                         f"{importance.shape[0]} layers allows at most {removable} more")
    layers, heads = np.nonzero(alive)
    order = np.lexsort((heads, layers, importance[layers, heads]))   # by score, then layer, then head
    chosen: dict[int, list[int]] = {}
    for k in order:
        if count == 0:
            break
        layer, head = int(layers[k]), int(heads[k])
        if left[layer] > 1:
            chosen.setdefault(layer, []).append(head)
            left[layer] -= 1
            count -= 1
    return {layer: sorted(h) for layer, h in sorted(chosen.items())}


def heads_for_fraction(model, fraction: float) -> int:
    """How many heads make ``fraction`` of the original model's heads (rounded)."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"fraction of heads must be in [0, 1), got {fraction!r}")
    config = encoder(model).config
    return int(round(fraction * config.num_hidden_layers * config.num_attention_heads))


def prune_heads_by_importance(model, importance, count: int) -> dict[int, list[int]]:
    """Remove the ``count`` least important heads (see :func:`select_heads_to_prune`) for good.

    Returns the heads removed, ``{layer: [heads]}`` in the original numbering; the model's
    config records them (``config.extra["pruned_heads"]``), so it saves and loads back.
    Create the optimizer afterwards: the parameters have new shapes.
    """
    config = encoder(model).config
    expected = (config.num_hidden_layers, config.num_attention_heads)
    if np.shape(importance) != expected:
        raise ValueError(f"importance must have shape (layers, heads) = {expected} for this model, "
                         f"got {np.shape(importance)}")
    heads = select_heads_to_prune(importance, count)
    if heads:
        encoder(model).prune_heads(heads)
    return heads


def head_counts(model) -> list[int]:
    """Heads left in each layer."""
    return [layer.attention.self.num_heads for layer in encoder(model).encoder.layer]


# ============================================================================ reports
@dataclass
class PruningReport:
    """One row of a before/after table."""

    name: str
    parameters: int
    encoder_sparsity: float
    heads: int
    file_bytes: int
    compressed_bytes: int
    seconds_per_batch: float | None = None
    accuracy: float | None = None
    macro_f1: float | None = None

    def as_dict(self) -> dict:
        return asdict(self)


def saved_size(model, directory: str | None = None) -> tuple[int, int]:
    """(bytes of model.safetensors, bytes of it compressed with zlib level 1) of the saved model.

    The safetensors file stores every matrix densely, so zeros do not shrink it; they do
    make it compress better (what a sparse format or an archive would gain).
    """
    from .checkpoint import save_pretrained

    with tempfile.TemporaryDirectory() as scratch:
        folder = save_pretrained(model, directory or os.path.join(scratch, "model"))
        path = os.path.join(folder, "model.safetensors")
        size = os.path.getsize(path)
        compressor, compressed = zlib.compressobj(1), 0
        with open(path, "rb") as f:
            for chunk in iter(lambda: f.read(1 << 22), b""):
                compressed += len(compressor.compress(chunk))
        compressed += len(compressor.flush())
    return size, compressed


def time_per_batch(model, batches, repeats: int = 3) -> float:
    """Seconds per batch of inference (forward, evaluation mode, no caches), best of ``repeats``.

    The best of several passes over the same batches is the least disturbed by other
    programs sharing the processor; the batches should be the same for models compared.
    """
    return min(_one_pass(model, batches) for _ in range(repeats))


def _one_pass(model, batches) -> float:
    model.eval()
    with no_grad():
        start = time.perf_counter()
        for batch in batches:
            model.forward(**{k: batch[k] for k in ("input_ids", "token_type_ids", "attention_mask") if k in batch})
        return (time.perf_counter() - start) / len(batches)


def compare_speed(models, batches, rounds: int = 5) -> list[float]:
    """Seconds per batch of each model, measured in turns (model 1, 2, ..., 1, 2, ...), best of ``rounds``.

    Taking turns spreads any slow period of a shared machine over all the models instead of
    penalising the one that happened to run during it, so their ratios can be trusted.
    """
    best = [float("inf")] * len(models)
    for _ in range(rounds):
        for i, model in enumerate(models):
            best[i] = min(best[i], _one_pass(model, batches))
    return best


def measure(model, name: str, timing_batches=None, eval_set=None, batch_size: int = 32,
            repeats: int = 3) -> PruningReport:
    """Parameters, encoder sparsity, heads, file sizes, and (when given the data) time per batch and accuracy.

    To compare the speed of several models, prefer :func:`compare_speed` (it takes turns).
    """
    from .finetune import classification_report

    size, compressed = saved_size(model)
    report = PruningReport(name=name, parameters=model.num_parameters(), encoder_sparsity=encoder_sparsity(model),
                           heads=sum(head_counts(model)), file_bytes=size, compressed_bytes=compressed)
    if timing_batches is not None:
        report.seconds_per_batch = time_per_batch(model, timing_batches, repeats)
    if eval_set is not None:
        scores = classification_report(model, eval_set, batch_size)
        report.accuracy, report.macro_f1 = scores["accuracy"], scores["macro_f1"]
    return report


def format_reports(reports) -> str:
    """A Markdown table of :class:`PruningReport` rows (accuracy and F1 in %, sizes in MB)."""
    lines = ["| model | accuracy | macro-F1 | parameters | encoder zeros | heads | file MB | zlib MB | ms / batch |",
             "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in reports:
        pct = lambda v: "-" if v is None else f"{100 * v:.2f}"        # noqa: E731
        ms = lambda v: "-" if v is None else f"{1000 * v:.0f}"        # noqa: E731
        lines.append(f"| {r.name} | {pct(r.accuracy)} | {pct(r.macro_f1)} | {r.parameters:,} | "
                     f"{100 * r.encoder_sparsity:.0f}% | {r.heads} | {r.file_bytes / 1e6:.1f} | "
                     f"{r.compressed_bytes / 1e6:.1f} | {ms(r.seconds_per_batch)} |")
    return "\n".join(lines)


__all__ = [
    "encoder", "encoder_weight_names", "MagnitudePruner", "MaskedOptimizer", "encoder_sparsity",
    "head_gate_gradients", "head_importance", "select_heads_to_prune",
    "heads_for_fraction", "prune_heads_by_importance", "head_counts", "original_head_numbers",
    "PruningReport", "saved_size", "time_per_batch", "compare_speed", "measure", "format_reports",
]
