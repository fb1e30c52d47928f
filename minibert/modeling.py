"""BERT: the configuration, the encoder and the pretraining heads.

Shapes (one legend for the whole file):
    B batch   T sequence length   H hidden size   N attention heads   D = H / N head size
    I intermediate (feed-forward) size   V vocabulary size   M labelled (masked) positions

Data flows top to bottom through ``forward`` and bottom to top through ``backward``:

    ids --BertEmbeddings--> (B,T,H) --BertLayer x L--> (B,T,H) --BertPooler--> (B,H)
    BertLayer:  h -> self-attention -> dense -> dropout -> +h -> LayerNorm -> a      (post-LN)
                a -> dense (H->I) -> gelu -> dense (I->H) -> dropout -> +a -> LayerNorm

When only some positions of the sequence output are needed (the masked-LM labels, [CLS] for
the pooler), ``BertModel.forward(..., output_positions=...)`` lets the last layer compute only
those rows after its attention (see ``BertAttention.forward``).

On CuPy arrays the fused CUDA kernels of ``minibert.cuda_kernels`` take over where one exists
(flash attention, LayerNorm, bias + GELU, cross-entropy), each after a first-use check against
the op it replaces; on NumPy arrays the ops of ``minibert.ops`` run.

Every module keeps the caches of the step it is in and frees them in ``backward``.
Parameter names are the Hugging Face state-dict keys.
"""

from __future__ import annotations

import copy
import json
import math
from dataclasses import asdict, dataclass, field, fields

import numpy as np

from . import ops
from . import cuda_kernels
from .backend import (RandomSource, check_device, check_dtype, get_array_module, is_int_at_least, to_device,
                      xp_for_device)
from .layers import Activation, Dropout, Embedding, LayerNorm, Linear
from .nn import Module, ModuleList, Parameter

ATTENTION_IMPLEMENTATIONS = {"naive": (ops.attention_forward, ops.attention_backward)}
try:  # the tiled op lives in its own file; the naive one is the reference
    from .ops.flash_attention import flash_attention_backward, flash_attention_forward

    ATTENTION_IMPLEMENTATIONS["flash"] = (flash_attention_forward, flash_attention_backward)
except ImportError:  # pragma: no cover
    pass


# ============================================================================ configuration
@dataclass
class BertConfig:
    """The hyperparameters of a BERT model, with the field names of Hugging Face's config.json."""

    vocab_size: int = 30522
    hidden_size: int = 768
    num_hidden_layers: int = 12
    num_attention_heads: int = 12
    intermediate_size: int = 3072
    hidden_act: str = "gelu"
    hidden_dropout_prob: float = 0.1
    attention_probs_dropout_prob: float = 0.1
    max_position_embeddings: int = 512
    type_vocab_size: int = 2
    initializer_range: float = 0.02
    layer_norm_eps: float = 1e-12
    pad_token_id: int = 0
    attn_implementation: str = "naive"
    extra: dict = field(default_factory=dict)   # other config.json fields, kept for round trips

    def __post_init__(self):
        for name in ("vocab_size", "hidden_size", "num_hidden_layers", "num_attention_heads",
                     "intermediate_size", "max_position_embeddings", "type_vocab_size"):
            value = getattr(self, name)
            if not is_int_at_least(value, 1):
                raise ValueError(f"BertConfig.{name} must be a positive integer, got {value!r}")
        if self.hidden_size % self.num_attention_heads:
            raise ValueError(
                f"BertConfig.hidden_size ({self.hidden_size}) must be divisible by "
                f"num_attention_heads ({self.num_attention_heads})"
            )
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob", "initializer_range",
                     "layer_norm_eps"):
            value = getattr(self, name)
            if not isinstance(value, (int, float, np.integer, np.floating)) or isinstance(value, bool):
                raise ValueError(f"BertConfig.{name} must be a number, got {value!r}")
        for name in ("hidden_dropout_prob", "attention_probs_dropout_prob"):
            value = getattr(self, name)
            if not 0.0 <= value < 1.0:
                raise ValueError(f"BertConfig.{name} must be in [0, 1), got {value!r}")
        if not 0.0 <= self.initializer_range < math.inf:
            raise ValueError(f"BertConfig.initializer_range must be 0 or more (finite), got {self.initializer_range!r}")
        if not 0.0 < self.layer_norm_eps < math.inf:
            raise ValueError(f"BertConfig.layer_norm_eps must be positive (finite), got {self.layer_norm_eps!r}")
        if not isinstance(self.pad_token_id, (int, np.integer)) or isinstance(self.pad_token_id, bool):
            raise ValueError(f"BertConfig.pad_token_id must be an integer, got {self.pad_token_id!r}")
        if not isinstance(self.hidden_act, str) or self.hidden_act not in Activation.FUNCTIONS:
            raise ValueError(f"BertConfig.hidden_act {self.hidden_act!r} is not supported; "
                             f"expected one of {sorted(Activation.FUNCTIONS)}")
        if not isinstance(self.attn_implementation, str) or self.attn_implementation not in ("naive", "flash"):
            raise ValueError(f"BertConfig.attn_implementation must be 'naive' or 'flash', "
                             f"got {self.attn_implementation!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"BertConfig.pad_token_id ({self.pad_token_id}) must be in [0, vocab_size)")
        position_type = self.extra.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"position_embedding_type {position_type!r} is not supported (only 'absolute')")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @classmethod
    def from_dict(cls, values: dict) -> "BertConfig":
        if not isinstance(values, dict):
            raise ValueError(f"a BERT config must be a JSON object (a dict), got {type(values).__name__}")
        if not isinstance(values.get("extra", {}), dict):
            raise ValueError(f"the config's 'extra' must be a JSON object (a dict), "
                             f"got {type(values['extra']).__name__}")
        known = {f.name for f in fields(cls)} - {"extra"}
        values = dict(values)
        # transformers' own attention choice ("eager", "sdpa", ...) is not ours: both compute the same
        for key in ("attn_implementation", "_attn_implementation"):
            if values.get(key) not in ("naive", "flash"):
                values.pop(key, None)
        if "minibert_attn_implementation" in values:
            values.setdefault("attn_implementation", values.pop("minibert_attn_implementation"))
        if values.get("model_type", "bert") != "bert":
            raise ValueError(f"config is for model_type {values['model_type']!r}, not 'bert'")
        extra = {k: v for k, v in values.items() if k not in known and k not in ("extra", "model_type")}
        extra.update(values.get("extra", {}))
        return cls(**{k: v for k, v in values.items() if k in known}, extra=extra)

    def to_dict(self) -> dict:
        """The config.json fields. ``attn_implementation`` is minibert's own and is written as
        ``minibert_attn_implementation`` (transformers gives "attn_implementation" a meaning
        of its own and refuses "naive" / "flash")."""
        values = asdict(self)
        extra = values.pop("extra")
        values["minibert_attn_implementation"] = values.pop("attn_implementation")
        return {"model_type": "bert", **extra, **values}

    @classmethod
    def from_json_file(cls, path) -> "BertConfig":
        with open(path, encoding="utf-8") as f:
            try:
                values = json.load(f)
            except json.JSONDecodeError as exc:
                raise ValueError(f"{path}: not valid JSON ({exc})") from exc
        return cls.from_dict(values)

    def to_json_file(self, path) -> None:
        with open(path, "w", encoding="utf-8") as f:
            json.dump(self.to_dict(), f, indent=2, sort_keys=True)
            f.write("\n")

    @classmethod
    def preset(cls, name: str, **overrides) -> "BertConfig":
        """A named size: tiny, mini, small, medium, base or large (``overrides`` replace fields)."""
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; expected one of {sorted(PRESETS)}")
        layers, hidden, heads = PRESETS[name]
        values = dict(num_hidden_layers=layers, hidden_size=hidden, num_attention_heads=heads,
                      intermediate_size=4 * hidden)
        values.update(overrides)
        return cls(**values)


# name: (layers L, hidden H, heads A); intermediate size is 4 H, as in the BERT papers
PRESETS = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}


# ============================================================================ encoder
class BertEmbeddings(Module):
    """word + position + token-type embeddings -> LayerNorm -> dropout.  ids (B,T) -> (B,T,H)"""

    def __init__(self, config: BertConfig, rng, random_source, dtype):
        std, h = config.initializer_range, config.hidden_size
        self.word_embeddings = Embedding(config.vocab_size, h, std, rng, dtype, padding_idx=config.pad_token_id)
        self.position_embeddings = Embedding(config.max_position_embeddings, h, std, rng, dtype)
        self.token_type_embeddings = Embedding(config.type_vocab_size, h, std, rng, dtype)
        self.LayerNorm = LayerNorm(h, config.layer_norm_eps, dtype)
        self.dropout = Dropout(config.hidden_dropout_prob, random_source)

    def forward(self, input_ids, token_type_ids):
        xp = get_array_module(input_ids)
        position_ids = xp.arange(input_ids.shape[1])[None, :]           # (1, T)
        x = self.word_embeddings.forward(input_ids)                      # (B, T, H)
        x += self.position_embeddings.forward(position_ids)              # (1, T, H) broadcast
        x += self.token_type_embeddings.forward(token_type_ids)          # (B, T, H)
        return self.dropout.forward(self.LayerNorm.forward(x))

    def backward(self, dy):
        dx = self.LayerNorm.backward(self.dropout.backward(dy))         # (B, T, H)
        self.word_embeddings.backward(dx)
        self.position_embeddings.backward(dx.sum(axis=0, keepdims=True))  # (1, T, H)
        self.token_type_embeddings.backward(dx)


class BertSelfAttention(Module):
    """Multi-head self-attention: (B,T,H) -> (B,T,H), heads split as (B,N,T,D)."""

    def __init__(self, config: BertConfig, rng, random_source, dtype):
        std, h = config.initializer_range, config.hidden_size
        self.num_heads = config.num_attention_heads
        self.head_size = config.head_size
        self.query = Linear(h, h, std, rng, dtype)
        self.key = Linear(h, h, std, rng, dtype)
        self.value = Linear(h, h, std, rng, dtype)
        self.dropout_p = config.attention_probs_dropout_prob
        self.random = random_source
        self.implementation = config.attn_implementation

    def prune_heads(self, heads) -> list[int]:
        """Remove attention heads (numbered among the current ones): their rows of the query,
        key and value projections go. Returns the kept columns of the context (for the output
        projection, whose matching input columns must go too)."""
        keep_heads = [h for h in range(self.num_heads) if h not in set(heads)]
        if not keep_heads:
            raise ValueError(f"cannot prune all {self.num_heads} heads of a layer "
                             "(the attention block would have nothing left to compute)")
        xp = get_array_module(self.query.weight.data)
        columns = xp.concatenate([xp.arange(h * self.head_size, (h + 1) * self.head_size) for h in keep_heads])
        for linear in (self.query, self.key, self.value):
            linear.keep_outputs(columns)
        self.num_heads = len(keep_heads)
        return columns

    def _split_heads(self, x):                     # (B, T, H) -> (B, N, T, D)
        b, t, _ = x.shape
        return x.reshape(b, t, self.num_heads, self.head_size).transpose(0, 2, 1, 3)

    def _merge_heads(self, x):                     # (B, N, T, D) -> (B, T, H)
        b, _, t, _ = x.shape
        return x.transpose(0, 2, 1, 3).reshape(b, t, self.num_heads * self.head_size)

    def _attention_ops(self, q):
        """(forward, backward) of the configured attention; "flash" on the GPU is the CUDA kernel."""
        if self.implementation == "flash":
            return cuda_kernels.pick("flash_attention", q, variant=(self.head_size,))
        return ATTENTION_IMPLEMENTATIONS[self.implementation]

    def forward(self, h, mask):
        q = self._split_heads(self.query.forward(h))                    # (B, N, T, D)
        k = self._split_heads(self.key.forward(h))
        v = self._split_heads(self.value.forward(h))
        attention_forward, attention_backward = self._attention_ops(q)
        active = self.training and self.dropout_p > 0.0
        rng = self.random.generator(get_array_module(h)) if active else None
        context, cache = attention_forward(q, k, v, mask, self.dropout_p, rng, active)  # (B, N, T, D)
        self._save_cache((attention_backward, cache))
        return self._merge_heads(context)                               # (B, T, H)

    def backward(self, dcontext):
        attention_backward, cache = self._pop_cache()
        dq, dk, dv = attention_backward(self._split_heads(dcontext), cache)  # (B, N, T, D)
        dh = self.query.backward(self._merge_heads(dq))                 # (B, T, H)
        dh += self.key.backward(self._merge_heads(dk))
        dh += self.value.backward(self._merge_heads(dv))
        return dh


class BertAddNorm(Module):
    """dense -> dropout -> + residual -> LayerNorm (Hugging Face's BertSelfOutput and BertOutput)."""

    def __init__(self, in_size: int, config: BertConfig, rng, random_source, dtype):
        self.dense = Linear(in_size, config.hidden_size, config.initializer_range, rng, dtype)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps, dtype)
        self.dropout = Dropout(config.hidden_dropout_prob, random_source)

    def forward(self, x, residual):
        y = self.dropout.forward(self.dense.forward(x))                 # (B, T, H)
        y += residual
        return self.LayerNorm.forward(y)

    def backward(self, dy):
        dsum = self.LayerNorm.backward(dy)                               # d(dense branch + residual)
        dx = self.dense.backward(self.dropout.backward(dsum))
        return dx, dsum                                                  # (d input, d residual)


class BertAttention(Module):
    """Self-attention followed by its output projection, residual and LayerNorm."""

    def __init__(self, config: BertConfig, rng, random_source, dtype):
        self.self = BertSelfAttention(config, rng, random_source, dtype)
        self.output = BertAddNorm(config.hidden_size, config, rng, random_source, dtype)

    def forward(self, h, mask, rows=None):
        """(B,T,H) -> (B,T,H); with ``rows`` (flat indices into the B*T positions) -> (R,H).

        With rows, attention still reads the keys and values of every position, but the
        output projection, residual and LayerNorm run only on those R rows (see
        :meth:`BertModel.forward`, ``output_positions``).
        """
        context = self.self.forward(h, mask)                 # (B, T, H'), H' < H once heads are pruned
        self._save_cache((context.shape, h.shape, rows))
        if rows is not None:
            context = context.reshape(-1, context.shape[-1])[rows]         # (R, H')
            h = h.reshape(-1, h.shape[-1])[rows]                           # (R, H)
        return self.output.forward(context, h)

    def backward(self, dy):
        dcontext, dresidual = self.output.backward(dy)
        context_shape, h_shape, rows = self._pop_cache()
        if rows is not None:                     # the R rows' gradients back among all positions
            dcontext = scatter_rows(dcontext, rows, context_shape)
            dresidual = scatter_rows(dresidual, rows, h_shape)
        dh = self.self.backward(dcontext)
        dh += dresidual
        return dh


def scatter_rows(values, rows, shape):
    """A zero array of ``shape`` (..., H) whose flat rows ``rows`` (distinct) hold ``values`` (R, H)."""
    out = get_array_module(values).zeros((math.prod(shape[:-1]), shape[-1]), dtype=values.dtype)
    out[rows] = values
    return out.reshape(shape)


class BertIntermediate(Module):
    """The feed-forward expansion: dense (H -> I) then the activation.

    On the GPU with GELU, the bias add and the GELU run as one fused kernel after the matrix
    product (one pass over the (B, T, I) activations instead of several).
    """

    def __init__(self, config: BertConfig, rng, dtype):
        self.dense = Linear(config.hidden_size, config.intermediate_size, config.initializer_range, rng, dtype)
        self.intermediate_act_fn = Activation(config.hidden_act)

    def forward(self, x):
        if self.intermediate_act_fn.name == "gelu" and cuda_kernels.use_kernel("bias_gelu", x):
            bias_gelu_forward, bias_gelu_backward = cuda_kernels.KERNEL_OPS["bias_gelu"]
            z, linear_cache = ops.linear_forward(x, self.dense.weight.data, None, self.dense.compute_dtype)
            y, gelu_cache = bias_gelu_forward(z, self.dense.bias.data)           # gelu(z + b)
            self._save_cache((bias_gelu_backward, linear_cache, gelu_cache))
            return y
        self._save_cache(("modules",))
        return self.intermediate_act_fn.forward(self.dense.forward(x))  # (B, T, I)

    def backward(self, dy):
        fused = self._pop_cache()
        if fused == ("modules",):
            return self.dense.backward(self.intermediate_act_fn.backward(dy))
        bias_gelu_backward, linear_cache, gelu_cache = fused
        dz, dbias = bias_gelu_backward(dy, gelu_cache)
        dx, dweight, _ = ops.linear_backward(dz, linear_cache)
        self.dense.weight.grad += dweight
        self.dense.bias.grad += dbias
        return dx


class BertLayer(Module):
    """One encoder block: attention sub-block, then feed-forward sub-block, each post-LN."""

    def __init__(self, config: BertConfig, rng, random_source, dtype):
        self.attention = BertAttention(config, rng, random_source, dtype)
        self.intermediate = BertIntermediate(config, rng, dtype)
        self.output = BertAddNorm(config.intermediate_size, config, rng, random_source, dtype)

    def forward(self, h, mask, rows=None):
        a = self.attention.forward(h, mask, rows)                        # (B, T, H), or (R, H) with rows
        return self.output.forward(self.intermediate.forward(a), a)      # shaped like a

    def backward(self, dy):
        dintermediate, da = self.output.backward(dy)
        da += self.intermediate.backward(dintermediate)
        return self.attention.backward(da)


class BertEncoder(Module):
    def __init__(self, config: BertConfig, rng, random_source, dtype):
        self.layer = ModuleList([BertLayer(config, rng, random_source, dtype)
                                 for _ in range(config.num_hidden_layers)])

    def forward(self, h, mask, last_layer_rows=None):
        """(B,T,H) -> (B,T,H); with ``last_layer_rows`` the last layer gives only those rows, (R,H)."""
        *earlier, last = self.layer
        for layer in earlier:
            h = layer.forward(h, mask)
        return last.forward(h, mask, last_layer_rows)

    def backward(self, dy):
        for layer in reversed(list(self.layer)):
            dy = layer.backward(dy)
        return dy


class BertPooler(Module):
    """pooled = tanh(dense(h[:, 0])): the [CLS] position summarises the sequence.  (B,T,H) -> (B,H)"""

    def __init__(self, config: BertConfig, rng, dtype):
        self.dense = Linear(config.hidden_size, config.hidden_size, config.initializer_range, rng, dtype)
        self.activation = Activation("tanh")

    def forward(self, h):
        self._save_cache(h.shape)
        return self.activation.forward(self.dense.forward(h[:, 0]))

    def backward(self, dpooled):
        shape = self._pop_cache()
        dh = get_array_module(dpooled).zeros(shape, dtype=dpooled.dtype)   # (B, T, H)
        dh[:, 0] = self.dense.backward(self.activation.backward(dpooled))
        return dh


# ============================================================================ models
class BertPreTrainedModel(Module):
    """What every BERT model shares: construction on a device, input checks, checkpoints."""

    base_model_prefix = "bert"

    def _setup(self, config: BertConfig, seed: int, device: str, dtype, share_config: bool = False):
        """Check the arguments; keep a copy of ``config`` (pruning records itself in the
        model's config, which must not reach other models built from the same one), or,
        for an encoder built inside a model with heads, the parent's own copy."""
        if not isinstance(config, BertConfig):
            raise TypeError(f"config must be a BertConfig, got {type(config).__name__}")
        if not is_int_at_least(seed, 0):
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.config = config if share_config else copy.deepcopy(config)
        self.random = RandomSource(seed + 1)               # dropout masks
        return np.random.default_rng(seed), check_dtype(dtype), check_device(device)

    def _finish_setup(self, device: str):
        if device != "cpu":
            xp_for_device(device)                         # clear error when CuPy/GPU is missing
            self.to(device)

    @classmethod
    def from_pretrained(cls, directory, **kwargs):
        """Load ``config.json`` + ``model.safetensors`` from a folder (see minibert.checkpoint)."""
        from .checkpoint import load_pretrained

        return load_pretrained(cls, directory, **kwargs)

    def save_pretrained(self, directory, tokenizer=None, max_shard_size=None):
        """Write ``config.json`` + ``model.safetensors`` (+ the vocabulary when a tokenizer is given);
        ``max_shard_size`` (e.g. ``"500MB"``) splits larger weights into indexed shards."""
        from .checkpoint import save_pretrained

        return save_pretrained(self, directory, tokenizer=tokenizer, max_shard_size=max_shard_size)

    def set_matmul_dtype(self, dtype) -> None:
        """Mixed precision: ``np.float16`` runs every dense layer's matrix products in float16
        (the parameters stay float32 "master" weights; outputs and gradients come back in
        float32); ``None`` goes back to full precision. Train it with a loss scale
        (:class:`minibert.optim.DynamicLossScaler`, ``TrainingArguments(fp16=True)``), or
        small gradients underflow to zero in float16.
        """
        if dtype is not None:
            dtype = np.dtype(dtype)
            if dtype != np.float16:
                raise ValueError(f"the matmul dtype must be float16 or None, got {dtype}")
            if self.dtype != np.float32:
                raise ValueError(f"mixed precision needs float32 master weights; this model is {self.dtype}")
        for _, module in self.named_modules():
            if isinstance(module, Linear):
                module.compute_dtype = dtype

    def check_inputs(self, input_ids, token_type_ids=None, attention_mask=None):
        """Validate the inputs at the public boundary and put them on the model's device.

        Returns (input_ids, token_type_ids, additive_mask) with the mask as (B, 1, 1, T):
        0 where a key may be attended to, the dtype's most negative value where it is padding.
        """
        config = self.config
        xp = xp_for_device(self.device)
        ids = as_int_array(input_ids, "input_ids", xp)
        if ids.ndim != 2:
            raise ValueError(f"input_ids must have shape (batch, sequence), got shape {tuple(ids.shape)}"
                             + (" (use ids[None] for a single sequence)" if ids.ndim == 1 else ""))
        batch, length = ids.shape
        if length == 0 or batch == 0:
            raise ValueError(f"input_ids is empty: shape {tuple(ids.shape)}")
        if length > config.max_position_embeddings:
            raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                             f"({config.max_position_embeddings}); truncate the input")
        check_range(ids, 0, config.vocab_size, "input_ids", "vocab_size")
        if token_type_ids is None:
            token_type_ids = xp.zeros_like(ids)
        else:
            token_type_ids = as_int_array(token_type_ids, "token_type_ids", xp)
            check_shape(token_type_ids, ids.shape, "token_type_ids")
            check_range(token_type_ids, 0, config.type_vocab_size, "token_type_ids", "type_vocab_size")
        dtype = self.dtype
        if attention_mask is None:
            additive_mask = None
        else:
            attention_mask = xp.asarray(to_device(attention_mask, self.device))
            check_shape(attention_mask, ids.shape, "attention_mask")
            if attention_mask.dtype.kind not in "biuf":
                raise TypeError(f"attention_mask must hold numbers 0/1, got dtype {attention_mask.dtype}")
            if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
                raise ValueError("attention_mask must hold only 1 (a real token) and 0 (padding)")
            additive_mask = (1.0 - attention_mask.astype(dtype)) * np.finfo(dtype).min
            additive_mask = additive_mask[:, None, None, :]                  # (B, 1, 1, T)
        return ids, token_type_ids, additive_mask


def as_int_array(values, name, xp):
    try:
        array = xp.asarray(to_device(values, "cpu" if xp is np else "cuda"))
    except ValueError:                      # NumPy: "inhomogeneous shape"
        raise ValueError(f"{name} must be a rectangular array; sequences of different lengths need "
                         "padding (the tokenizer pads a batch, with an attention_mask)") from None
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    return array


def check_shape(array, expected, name, like="like input_ids"):
    if tuple(array.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} {like}, got {tuple(array.shape)}")


def check_range(array, low, high, name, limit_name=None, *, limit=None):
    """Every value in [low, high); the message says where ``high`` comes from: the config
    field ``limit_name`` ("config.vocab_size = 31"), or the words ``limit``."""
    lowest, highest = int(array.min()), int(array.max())
    if lowest < low or highest >= high:
        bad = lowest if lowest < low else highest
        raise ValueError(f"{name} contains {bad}, outside [{low}, {high}) "
                         f"({limit or f'config.{limit_name} = {high}'})")


class BertModel(BertPreTrainedModel):
    """The BERT encoder with its pooler.

    >>> seq, pooled = BertModel(config).forward(input_ids, token_type_ids, attention_mask)
    >>> model.backward(dseq, dpooled)       # gradients into every parameter's .grad
    """

    def __init__(self, config: BertConfig, seed: int = 0, device: str = "cpu", dtype=np.float32,
                 add_pooling_layer: bool = True, _random_source=None, _rng=None):
        inside = _random_source is not None             # built inside a model with heads
        rng, dtype, device = self._setup(config, seed, device, dtype, share_config=inside)
        if inside:
            self.random, rng = _random_source, _rng
        config = self.config
        self.embeddings = BertEmbeddings(config, rng, self.random, dtype)
        self.encoder = BertEncoder(config, rng, self.random, dtype)
        self.pooler = BertPooler(config, rng, dtype) if add_pooling_layer else None
        recorded = config.extra.pop("pruned_heads", None)   # a pruned model's saved config
        if recorded:
            self.prune_heads(recorded)
        if _random_source is None:
            self._finish_setup(device)

    def prune_heads(self, heads_to_prune: dict) -> None:
        """Remove attention heads for good: ``{layer: [head, ...]}`` in the original numbering.

        The model really gets smaller (rows of Q/K/V and columns of the attention output
        projection go). The pruned heads are recorded in ``config.extra["pruned_heads"]`` so a
        saved model is rebuilt with the same shapes. Prune before creating the optimizer.
        """
        pruned = {int(k): set(v) for k, v in self.config.extra.get("pruned_heads", {}).items()}
        n_heads = self.config.num_attention_heads
        plan = {}                                  # every layer is checked before any is touched
        for layer_index, heads in heads_to_prune.items():
            layer_index = int(layer_index)
            if not 0 <= layer_index < len(self.encoder.layer):
                raise ValueError(f"layer {layer_index} does not exist (the model has {len(self.encoder.layer)})")
            heads = set(int(h) for h in heads) - pruned.get(layer_index, set())
            bad = [h for h in heads if not 0 <= h < n_heads]
            if bad:
                raise ValueError(f"head(s) {bad} do not exist (num_attention_heads = {n_heads})")
            if len(heads | pruned.get(layer_index, set()) | plan.get(layer_index, set())) >= n_heads:
                raise ValueError(f"cannot prune every head of layer {layer_index} "
                                 f"({n_heads} heads): at least one must remain")
            plan[layer_index] = plan.get(layer_index, set()) | heads
        for layer_index, heads in plan.items():
            already = sorted(pruned.get(layer_index, set()))
            remaining = [h for h in range(n_heads) if h not in already]
            current = [remaining.index(h) for h in sorted(heads)]          # numbering among the kept heads
            attention = self.encoder.layer[layer_index].attention
            columns = attention.self.prune_heads(current)
            attention.output.dense.keep_inputs(columns)
            pruned[layer_index] = pruned.get(layer_index, set()) | heads
        self.config.extra["pruned_heads"] = {str(k): sorted(v) for k, v in sorted(pruned.items()) if v}

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, *, output_positions=None):
        """ids (B,T) -> (sequence output (B,T,H), pooled output (B,H) or None without a pooler).

        ``output_positions`` (P,): distinct flat indices into the B*T positions, for callers
        that need the sequence output at a few positions only (the masked-LM head scores the
        labelled ones; a classifier needs none). The sequence output is then (P,H), those rows
        in that order, and the last layer computes only them and the [CLS] rows the pooler
        reads: its attention still reads the keys and values of every position, but the
        output projection and the feed-forward block, three quarters of the layer's work,
        skip every other row. The result equals the full output at those rows.
        """
        self.clear_caches()          # a forward that fails half-way leaves backward nothing stale
        ids, token_type_ids, mask = self.check_inputs(input_ids, token_type_ids, attention_mask)
        xp = get_array_module(ids)
        batch, length = ids.shape
        if output_positions is not None:
            positions = as_int_array(output_positions, "output_positions", xp).reshape(-1)   # (P,)
            if positions.size:
                check_range(positions, 0, batch * length, "output_positions", limit=f"{batch} x {length} positions")
                if xp.unique(positions).size != positions.size:
                    raise ValueError("output_positions must not repeat a position")
        h = self.embeddings.forward(ids, token_type_ids)                 # (B, T, H)
        hidden = h.shape[-1]
        if output_positions is None:
            h = self.encoder.forward(h, mask)                            # (B, T, H)
            pooled = self.pooler.forward(h) if self.pooler is not None else None   # (B, H)
            self._save_cache((batch, h.shape, None))
            return h, pooled

        # The last layer computes R rows: the wanted positions and the [CLS] rows for the pooler.
        first_tokens = xp.arange(batch) * length                         # the [CLS] rows, (B,)
        wanted = [positions, first_tokens] if self.pooler is not None else [positions]
        rows = xp.unique(xp.concatenate(wanted))                         # (R,) sorted, distinct
        h_rows = self.encoder.forward(h, mask, last_layer_rows=rows)     # (R, H)
        where, where_first = xp.searchsorted(rows, positions), xp.searchsorted(rows, first_tokens)
        pooled = None
        if self.pooler is not None:
            pooled = self.pooler.forward(h_rows[where_first][:, None])   # reads row 0 of (B, 1, H)
        self._save_cache((batch, (positions.size, hidden), (rows.size, where, where_first)))
        return h_rows[where], pooled

    def backward(self, dsequence=None, dpooled=None):
        """Backpropagate d(loss)/d(sequence output) and/or d(loss)/d(pooled output)."""
        batch, shape, selection = self._pop_cache()       # shape: the sequence output's
        if dsequence is None and dpooled is None:
            raise ValueError("BertModel.backward needs dsequence and/or dpooled")
        if dsequence is not None:
            check_grad_shape(dsequence, shape, "dsequence")
        if dpooled is not None:
            check_grad_shape(dpooled, (batch, shape[-1]), "dpooled")
        xp = xp_for_device(self.device)
        if selection is None:                    # the full (B, T, H) sequence output
            dh = xp.zeros(shape, dtype=self.dtype) if dsequence is None else dsequence
            if dpooled is not None:
                dh = dh + self.pooler.backward(dpooled)
        else:                                    # the last layer's R rows (see forward)
            num_rows, where, where_first = selection
            dh = xp.zeros((num_rows, shape[-1]), dtype=self.dtype)
            if dsequence is not None:
                dh[where] = dsequence
            if dpooled is not None:
                dh[where_first] += self.pooler.backward(dpooled)[:, 0]
        if dpooled is None and self.pooler is not None:
            self.pooler.clear_caches()                                   # unused this step
        self.embeddings.backward(self.encoder.backward(dh))


def check_grad_shape(grad, shape, name):
    if tuple(grad.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(grad.shape)}")
    return grad


# ---------------------------------------------------------------------------- heads
class BertPredictionHeadTransform(Module):
    """dense (H -> H) -> activation -> LayerNorm, applied before the vocabulary projection."""

    def __init__(self, config: BertConfig, rng, dtype):
        self.dense = Linear(config.hidden_size, config.hidden_size, config.initializer_range, rng, dtype)
        self.transform_act_fn = Activation(config.hidden_act)
        self.LayerNorm = LayerNorm(config.hidden_size, config.layer_norm_eps, dtype)

    def forward(self, h):
        return self.LayerNorm.forward(self.transform_act_fn.forward(self.dense.forward(h)))

    def backward(self, dy):
        return self.dense.backward(self.transform_act_fn.backward(self.LayerNorm.backward(dy)))


class BertLMPredictionHead(Module):
    """Masked-LM scores: transform, then the decoder tied to the word embeddings, plus a bias.

    logits = transform(h) @ E.T + bias,  E the (V, H) word-embedding matrix (shared, so the
    decoder's gradient is added to the embedding's: ``+=`` in Linear.backward).
    """

    def __init__(self, config: BertConfig, word_embeddings: Embedding, rng, dtype):
        self.bias = Parameter(np.zeros(config.vocab_size, dtype=dtype))
        self.transform = BertPredictionHeadTransform(config, rng, dtype)
        self.decoder = Linear.from_parameters(word_embeddings.weight, self.bias)   # tied weight

    def forward(self, h):                                # (..., H) -> (..., V)
        return self.decoder.forward(self.transform.forward(h))

    def backward(self, dlogits):
        return self.transform.backward(self.decoder.backward(dlogits))


class BertPreTrainingHeads(Module):
    def __init__(self, config: BertConfig, word_embeddings: Embedding, rng, dtype):
        self.predictions = BertLMPredictionHead(config, word_embeddings, rng, dtype)
        self.seq_relationship = Linear(config.hidden_size, 2, config.initializer_range, rng, dtype)


@dataclass
class PreTrainingOutput:
    """What ``BertForPreTraining.forward`` returns.

    prediction_logits: (B, T, V) when no labels are given; with labels, only the labelled
        positions are scored: (M, V), rows in the order of ``masked_positions`` (flat indices
        into the B*T positions).
    seq_relationship_logits: (B, 2), class 0 = "sentence B follows A".
    loss = mlm_loss + nsp_loss over whichever labels were given (None without labels).
    """

    prediction_logits: object
    seq_relationship_logits: object
    loss: float | None = None
    mlm_loss: float | None = None
    nsp_loss: float | None = None
    masked_positions: object = None


class BertForPreTraining(BertPreTrainedModel):
    """BERT with its two pretraining heads: masked language modelling and next-sentence prediction.

    >>> model = BertForPreTraining(config, seed=0)
    >>> out = model.forward(ids, token_type_ids, attention_mask, labels=mlm_labels, next_sentence_label=nsp)
    >>> model.backward()                 # d(out.loss) into every parameter's .grad
    """

    def __init__(self, config: BertConfig, seed: int = 0, device: str = "cpu", dtype=np.float32):
        rng, dtype, device = self._setup(config, seed, device, dtype)
        config = self.config
        self.bert = BertModel(config, _random_source=self.random, _rng=rng, dtype=dtype)
        self.cls = BertPreTrainingHeads(config, self.bert.embeddings.word_embeddings, rng, dtype)
        self._finish_setup(device)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None,
                next_sentence_label=None) -> PreTrainingOutput:
        self.clear_caches()          # a forward that fails half-way leaves backward nothing stale
        ids, _, _ = self.check_inputs(input_ids, token_type_ids, attention_mask)
        batch, length = ids.shape
        xp = get_array_module(ids)
        out = PreTrainingOutput(None, None)
        losses = {}

        if labels is None:                               # score every position
            seq, pooled = self.bert.forward(ids, token_type_ids, attention_mask)     # (B,T,H), (B,H)
            out.prediction_logits = self.cls.predictions.forward(seq)               # (B, T, V)
        else:                                            # score only the labelled positions
            labels = as_int_array(labels, "labels", xp)
            check_shape(labels, (batch, length), "labels")
            flat_labels = labels.reshape(-1)
            positions = xp.flatnonzero(flat_labels != ops.IGNORE_INDEX)             # (M,)
            targets = flat_labels[positions]
            if targets.size:
                check_range(targets, 0, self.config.vocab_size, "labels", "vocab_size")
            out.masked_positions = positions
            # the encoder's output at those M positions only (its last layer skips the rest)
            seq, pooled = self.bert.forward(ids, token_type_ids, attention_mask,
                                            output_positions=positions)              # (M,H), (B,H)
            out.prediction_logits = self.cls.predictions.forward(seq)               # (M, V)
            # over the vocabulary: the fused kernel on the GPU (no (M, V) probabilities kept)
            ce_forward, ce_backward = cuda_kernels.pick("cross_entropy", out.prediction_logits)
            out.mlm_loss, cache = ce_forward(out.prediction_logits, targets)
            losses["mlm"] = (ce_backward, cache)

        out.seq_relationship_logits = self.cls.seq_relationship.forward(pooled)     # (B, 2)
        if next_sentence_label is not None:
            nsp = as_int_array(next_sentence_label, "next_sentence_label", xp).reshape(-1)
            check_shape(nsp, (batch,), "next_sentence_label", "(one label per sequence)")
            valid = nsp[nsp != ops.IGNORE_INDEX]
            if valid.size:
                check_range(valid, 0, 2, "next_sentence_label", limit="2 NSP classes: 0 B follows A, 1 B is random")
            out.nsp_loss, cache = ops.cross_entropy_forward(out.seq_relationship_logits, nsp)
            losses["nsp"] = (ops.cross_entropy_backward, cache)

        if losses:
            out.loss = (out.mlm_loss or 0.0) + (out.nsp_loss or 0.0)
        self._save_cache((batch, seq.shape, losses))
        return out

    def backward(self, dprediction_logits=None, dseq_relationship_logits=None, *,
                 mlm_weight: float = 1.0, nsp_weight: float = 1.0):
        """Backpropagate the loss, or your own gradients of the two logits.

        Without logits gradients this differentiates ``mlm_weight * mlm_loss +
        nsp_weight * nsp_loss`` (weights 1: ``out.loss``). The weights let gradient
        accumulation reproduce one large batch exactly: each micro-batch's mean loss is
        weighted by its share of the labelled positions (MLM) and of the sequences (NSP).
        """
        batch, seq_shape, losses = self._pop_cache()
        if dprediction_logits is None and dseq_relationship_logits is None:
            if not losses:
                raise RuntimeError("backward() without arguments needs a forward pass with labels "
                                   "and/or next_sentence_label (there is no loss to differentiate)")
            if "mlm" in losses:
                ce_backward, cache = losses["mlm"]
                dprediction_logits = ce_backward(mlm_weight, cache)                      # (M, V)
            if "nsp" in losses:
                ce_backward, cache = losses["nsp"]
                dseq_relationship_logits = ce_backward(nsp_weight, cache)                # (B, 2)

        dseq = None
        if dprediction_logits is not None:
            expected = (*seq_shape[:-1], self.config.vocab_size)                 # (B, T, V) or (M, V)
            dseq = self.cls.predictions.backward(
                check_grad_shape(dprediction_logits, expected, "dprediction_logits"))   # like seq
        else:
            self.cls.predictions.clear_caches()          # the MLM head gets no gradient this step
        dpooled = None
        if dseq_relationship_logits is not None:
            dpooled = self.cls.seq_relationship.backward(
                check_grad_shape(dseq_relationship_logits, (batch, 2), "dseq_relationship_logits"))
        else:
            self.cls.seq_relationship.clear_caches()
        self.bert.backward(dseq, dpooled)
