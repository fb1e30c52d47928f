"""BERT: the encoder and the pretraining heads.

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

Every module keeps the caches of the step it is in and frees them in ``backward``; under
``minibert.nn.no_grad()`` it keeps none (inference). Parameter names are the Hugging Face
state-dict keys. The configuration is ``minibert.config.BertConfig``; the input checks are in
``minibert.validation``; the ops come from ``minibert.ops`` through ``minibert.nn.op``.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass

import numpy as np

from . import ops
from .backend import RandomSource, check_device, check_dtype, get_array_module, is_int_at_least, xp_for_device
from .config import BertConfig
from .layers import Activation, Dropout, Embedding, LayerNorm, Linear
from .nn import Module, ModuleList, Parameter, grad_enabled, op
from .validation import as_int_array, check_grad_shape, check_inputs, check_range, check_shape


# attn_implementation -> the op: "naive" forms the (T, T) probabilities, "flash" works in tiles
ATTENTION_OPS = {"naive": "attention", "flash": "flash_attention"}


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

    def position_ids(self, input_ids):
        """BERT's positions: 0, 1, ..., T-1, the same for every sequence.  (1, T)"""
        return get_array_module(input_ids).arange(input_ids.shape[1])[None, :]

    def forward(self, input_ids, token_type_ids):
        position_ids = self.position_ids(input_ids)                      # (1, T)
        x = self.word_embeddings.forward(input_ids)                      # (B, T, H)
        x += self.position_embeddings.forward(position_ids)              # (1, T, H) broadcast
        x += self.token_type_embeddings.forward(token_type_ids)          # (B, T, H)
        return self.dropout.forward(self.LayerNorm.forward(x))

    def backward(self, dy):
        dx = self.LayerNorm.backward(self.dropout.backward(dy))         # (B, T, H)
        self.word_embeddings.backward(dx)
        self.position_embeddings.backward(dx.sum(axis=0, keepdims=True))  # (1, T, H): shared positions
        self.token_type_embeddings.backward(dx)


class BertSelfAttention(Module):
    """Multi-head self-attention: (B,T,H) -> (B,T,N*D), heads split as (B,N,T,D).

    The layer has the heads ``config.kept_heads(layer_index)``: all N of them unless the
    config lists some as pruned, in which case its projections are that much smaller.

    ``head_mask`` (B or 1, N): a gate multiplying each head's context (1 keeps a head, 0
    silences it), as transformers' ``head_mask``; backward then leaves d(loss)/d(gate) per
    sequence in ``head_mask_grad`` (B, N). ``output_attentions``: also return the attention
    probabilities (B, N, T, T), from the naive op, whatever ``attn_implementation`` says.
    """

    def __init__(self, config: BertConfig, rng, random_source, dtype, layer_index: int = 0):
        std, h = config.initializer_range, config.hidden_size
        self.num_heads = len(config.kept_heads(layer_index))
        self.head_size = config.head_size
        width = self.num_heads * self.head_size
        self.query = Linear(h, width, std, rng, dtype)
        self.key = Linear(h, width, std, rng, dtype)
        self.value = Linear(h, width, std, rng, dtype)
        self.dropout_p = config.attention_probs_dropout_prob
        self.random = random_source
        self.implementation = config.attn_implementation                 # "naive" or "flash"
        self.head_mask_grad = None

    def _split_heads(self, x, packed=None):       # (B, T, N*D) -> (B, N, T, D)
        if packed is not None:                     # (M, N*D) rows of the positions packed.rows
            x = scatter_rows(x, packed.rows, (packed.batch, packed.length, x.shape[-1]))
        b, t, _ = x.shape
        return x.reshape(b, t, self.num_heads, self.head_size).transpose(0, 2, 1, 3)

    def _merge_heads(self, x, packed=None):       # (B, N, T, D) -> (B, T, N*D)
        b, _, t, _ = x.shape
        merged = x.transpose(0, 2, 1, 3).reshape(b, t, self.num_heads * self.head_size)
        if packed is not None:                     # -> (M, N*D), the packed positions only
            merged = merged.reshape(b * t, -1)[packed.rows]
        return merged

    def forward(self, h, mask, head_mask=None, output_attentions=False, packed=None):
        """h (B,T,H) -> (B,T,N*D); or, in inference with ``packed`` (see BertModel.forward), the
        (M,H) rows of the M positions ``packed.rows`` -> (M,N*D)."""
        q = self._split_heads(self.query.forward(h), packed)            # (B, N, T, D)
        k = self._split_heads(self.key.forward(h), packed)
        v = self._split_heads(self.value.forward(h), packed)
        active = self.training and self.dropout_p > 0.0
        rng = self.random.generator(get_array_module(h)) if active else None
        if output_attentions:                                           # the op that computes p
            attention_forward, attention_backward = ops.attention_forward, ops.attention_backward
        else:
            attention_forward, attention_backward = op(ATTENTION_OPS[self.implementation], q)
        context, cache = attention_forward(q, k, v, mask, self.dropout_p, rng, active)   # (B, N, T, D)
        gate = ungated = None
        if head_mask is not None:
            gate = head_mask.reshape(-1, self.num_heads, 1, 1).astype(context.dtype)     # (B|1, N, 1, 1)
            ungated, context = context, context * gate
        self._save_cache((attention_backward, cache, gate, ungated))
        merged = self._merge_heads(context, packed)                     # (B, T, N*D) or (M, N*D)
        return (merged, cache.p) if output_attentions else merged

    def backward(self, dcontext):
        attention_backward, cache, gate, ungated = self._pop_cache()
        dcontext = self._split_heads(dcontext)                          # (B, N, T, D)
        if gate is not None:
            self.head_mask_grad = (ungated * dcontext).sum(axis=(2, 3))  # (B, N)
            dcontext = dcontext * gate
        dq, dk, dv = attention_backward(dcontext, cache)                # (B, N, T, D) each
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

    def __init__(self, config: BertConfig, rng, random_source, dtype, layer_index: int = 0):
        self.self = BertSelfAttention(config, rng, random_source, dtype, layer_index)
        width = self.self.num_heads * config.head_size                  # H, or less with pruned heads
        self.output = BertAddNorm(width, config, rng, random_source, dtype)

    def forward(self, h, mask, rows=None, head_mask=None, output_attentions=False, packed=None):
        """(B,T,H) -> (B,T,H); with ``rows`` (flat indices into the rows of h) -> (R,H).

        With rows, attention still reads the keys and values of every position, but the
        output projection, residual and LayerNorm run only on those R rows (see
        :meth:`BertModel.forward`, ``output_positions``). With ``output_attentions`` it
        returns (output, probabilities). ``packed``: h holds the (M,H) packed rows.
        """
        context = self.self.forward(h, mask, head_mask, output_attentions, packed)  # (B, T, N*D)
        probabilities = None
        if output_attentions:
            context, probabilities = context
        self._save_cache((context.shape, h.shape, rows))
        if rows is not None:
            context = context.reshape(-1, context.shape[-1])[rows]         # (R, N*D)
            h = h.reshape(-1, h.shape[-1])[rows]                           # (R, H)
        out = self.output.forward(context, h)
        return (out, probabilities) if output_attentions else out

    def backward(self, dy):
        dcontext, dresidual = self.output.backward(dy)
        context_shape, h_shape, rows = self._pop_cache()
        if rows is not None:                     # the R rows' gradients back among all positions
            dcontext = scatter_rows(dcontext, rows, context_shape)
            dresidual = scatter_rows(dresidual, rows, h_shape)
        dh = self.self.backward(dcontext)
        dh += dresidual
        return dh


@dataclass
class Packed:
    """Which positions the rows of a packed (M, H) array hold: the flat indices ``rows`` (M,)
    into the B*T positions of a (B, T) batch (inference only: see BertModel.forward)."""

    batch: int
    length: int
    rows: object


def scatter_rows(values, rows, shape):
    """A zero array of ``shape`` (..., H) whose flat rows ``rows`` (distinct) hold ``values`` (R, H)."""
    out = get_array_module(values).zeros((math.prod(shape[:-1]), shape[-1]), dtype=values.dtype)
    out[rows] = values
    return out.reshape(shape)


class BertIntermediate(Module):
    """The feed-forward expansion: dense (H -> I) then the activation."""

    def __init__(self, config: BertConfig, rng, dtype):
        self.dense = Linear(config.hidden_size, config.intermediate_size, config.initializer_range, rng, dtype)
        self.intermediate_act_fn = Activation(config.hidden_act)

    def forward(self, x):
        return self.intermediate_act_fn.forward(self.dense.forward(x))  # (B, T, I)

    def backward(self, dy):
        return self.dense.backward(self.intermediate_act_fn.backward(dy))


class BertLayer(Module):
    """One encoder block: attention sub-block, then feed-forward sub-block, each post-LN."""

    def __init__(self, config: BertConfig, rng, random_source, dtype, layer_index: int = 0):
        self.attention = BertAttention(config, rng, random_source, dtype, layer_index)
        self.intermediate = BertIntermediate(config, rng, dtype)
        self.output = BertAddNorm(config.intermediate_size, config, rng, random_source, dtype)

    def forward(self, h, mask, rows=None, head_mask=None, output_attentions=False, packed=None):
        a = self.attention.forward(h, mask, rows, head_mask, output_attentions, packed)  # like h, or (R, H)
        if output_attentions:
            a, probabilities = a
        out = self.output.forward(self.intermediate.forward(a), a)      # shaped like a
        return (out, probabilities) if output_attentions else out

    def backward(self, dy):
        dintermediate, da = self.output.backward(dy)
        da += self.intermediate.backward(dintermediate)
        return self.attention.backward(da)


class BertEncoder(Module):
    # Called as on_layer_backward(i) when layer i's backward is done (its gradients are then
    # complete for this backward pass). None here; data-parallel training sets it to start
    # sending those gradients while the layers below still compute (minibert/distributed.py).
    on_layer_backward = None

    def __init__(self, config: BertConfig, rng, random_source, dtype):
        self.layer = ModuleList([BertLayer(config, rng, random_source, dtype, layer_index=i)
                                 for i in range(config.num_hidden_layers)])

    def forward(self, h, mask, last_layer_rows=None, head_mask=None, output_attentions=False, packed=None):
        """(B,T,H) -> (B,T,H); with ``last_layer_rows`` the last layer gives only those rows, (R,H).

        ``head_mask``: one gate array per layer (or None); ``output_attentions``: also return
        the list of each layer's attention probabilities; ``packed``: h holds packed rows.
        """
        attentions = []
        for i, layer in enumerate(self.layer):
            rows = last_layer_rows if i == len(self.layer) - 1 else None
            h = layer.forward(h, mask, rows, None if head_mask is None else head_mask[i], output_attentions,
                              packed)
            if output_attentions:
                h, probabilities = h
                attentions.append(probabilities)
        return (h, attentions) if output_attentions else h

    def backward(self, dy):
        for i in reversed(range(len(self.layer))):
            dy = self.layer[i].backward(dy)
            if self.on_layer_backward is not None:
                self.on_layer_backward(i)
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

    base_model_prefix = "bert"              # the encoder's name in checkpoints: bert.encoder...
    config_class = BertConfig

    @property
    def base_model(self):
        """The encoder: the model itself (a BertModel), or its ``bert`` (``roberta``) attribute."""
        return getattr(self, self.base_model_prefix, self)

    def to_checkpoint_name(self, name: str) -> str:
        """A parameter's name in checkpoint files (the same here; DistilBERT renames)."""
        return name

    def from_checkpoint_name(self, key: str) -> str:
        """The parameter name of a checkpoint key (the inverse of :meth:`to_checkpoint_name`)."""
        return key

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

    def check_inputs(self, input_ids, token_type_ids=None, attention_mask=None):
        """(input_ids, token_type_ids, additive mask (B,1,1,T)) checked and on the model's device."""
        return check_inputs(self.config, self.device, self.dtype, input_ids, token_type_ids, attention_mask)

    def resize_token_embeddings(self, new_num_tokens: int) -> Embedding:
        """Give the word-embedding table ``new_num_tokens`` rows, e.g. after the tokenizer
        grew: ``model.resize_token_embeddings(len(tokenizer))``.

        Kept rows keep their vectors; every new row starts as the mean of the old ones (a
        new token then scores like an average one in a tied output layer, instead of at
        random). A tied output layer follows (it shares the table), and its bias, one entry
        per token, is cut or padded with zeros: the head names that bias by building its
        decoder on the table (``Linear.from_parameters(word_embeddings.weight, bias)``:
        ``cls.predictions.bias``, ``lm_head.bias``...). Gradients are reset; build the
        optimizer after resizing.
        """
        if not is_int_at_least(new_num_tokens, 1):
            raise ValueError(f"new_num_tokens must be a positive integer, got {new_num_tokens!r}")
        if self.config.pad_token_id is not None and new_num_tokens <= self.config.pad_token_id:
            raise ValueError(f"new_num_tokens={new_num_tokens} would drop the padding token "
                             f"(pad_token_id {self.config.pad_token_id})")
        bert = self.base_model
        table = bert.embeddings.word_embeddings.weight
        old_num_tokens = table.data.shape[0]
        xp = get_array_module(table.data)
        if new_num_tokens > old_num_tokens:
            mean = table.data.mean(axis=0, keepdims=True)                            # (1, H)
            extra = xp.repeat(mean, new_num_tokens - old_num_tokens, axis=0)         # (V_new - V, H)
            table.data = xp.concatenate([table.data, extra.astype(table.data.dtype)])
        else:
            table.data = table.data[:new_num_tokens].copy()
        table.grad = xp.zeros_like(table.data)
        for bias in self._vocabulary_biases(table):
            kept = bias.data[:new_num_tokens]
            bias.data = xp.concatenate([kept, xp.zeros(new_num_tokens - len(kept), dtype=kept.dtype)])
            bias.grad = xp.zeros_like(bias.data)
        self.config.vocab_size = bert.config.vocab_size = int(new_num_tokens)
        return bert.embeddings.word_embeddings

    def _vocabulary_biases(self, table: Parameter) -> list:
        """The biases of the output layers tied to the word-embedding ``table`` (one entry per
        token, each once): the layers whose weight is that very Parameter."""
        biases = {}
        for _, module in self.named_modules():
            if isinstance(module, Linear) and module.weight is table and module.bias is not None:
                biases[id(module.bias)] = module.bias
        return list(biases.values())

    def prune_heads(self, heads_to_prune: dict) -> None:
        """Remove attention heads for good: ``{layer: [head, ...]}`` in the original numbering.

        The config records them (``pruned_heads``, as config.json has it), so a saved model is
        built with the same, smaller shapes. Each changed layer keeps only the kept heads'
        weights: their rows of Q/K/V and columns of the output projection. Prune before
        creating the optimizer (one made before refuses to step).
        """
        bert = getattr(self, self.base_model_prefix, self)
        config = bert.config
        before = copy.deepcopy(config)
        pruned = {int(k): set(v) for k, v in config.extra.get("pruned_heads", {}).items()}
        for layer, heads in heads_to_prune.items():
            if not 0 <= int(layer) < config.num_hidden_layers:
                raise ValueError(f"layer {layer} does not exist (the model has {config.num_hidden_layers})")
            pruned[int(layer)] = pruned.get(int(layer), set()) | {int(h) for h in heads}
        checked = config._checked_pruned_heads({str(k): sorted(v) for k, v in pruned.items()})   # may raise
        config.extra["pruned_heads"] = checked
        if not checked:
            config.extra.pop("pruned_heads")
        for layer_index in sorted({int(k) for k in heads_to_prune}):
            attention = bert.encoder.layer[layer_index].attention
            kept = [before.kept_heads(layer_index).index(h) for h in config.kept_heads(layer_index)]
            smaller = _state_of_heads(attention.state_dict(), kept, config.head_size)
            for name, param in attention.named_parameters():   # the same Parameter objects, smaller
                param.data = smaller[name].copy()
                param.grad = get_array_module(param.data).zeros_like(param.data)
            attention.self.num_heads = len(kept)


def _state_of_heads(state: dict, heads: list, head_size: int) -> dict:
    """An attention block's state dict cut down to ``heads`` (positions among its current heads):
    their rows of the Q/K/V projections and their columns of the output projection."""
    columns = np.concatenate([np.arange(h * head_size, (h + 1) * head_size) for h in heads])
    kept = {}
    for name, value in state.items():
        if name.startswith("self."):
            kept[name] = value[columns]                                  # (N'*D, H) or (N'*D,)
        elif name == "output.dense.weight":
            kept[name] = value[:, columns]                               # (H, N'*D)
        else:
            kept[name] = value
    return kept


class BertModel(BertPreTrainedModel):
    """The BERT encoder with its pooler.

    >>> seq, pooled = BertModel(config).forward(input_ids, token_type_ids, attention_mask)
    >>> model.backward(dseq, dpooled)       # gradients into every parameter's .grad
    """

    embeddings_class = BertEmbeddings

    def __init__(self, config: BertConfig, seed: int = 0, device: str = "cpu", dtype=np.float32,
                 add_pooling_layer: bool = True, _random_source=None, _rng=None):
        inside = _random_source is not None             # built inside a model with heads
        rng, dtype, device = self._setup(config, seed, device, dtype, share_config=inside)
        if inside:
            self.random, rng = _random_source, _rng
        config = self.config
        self.embeddings = self.embeddings_class(config, rng, self.random, dtype)
        self.encoder = BertEncoder(config, rng, self.random, dtype)
        self.pooler = BertPooler(config, rng, dtype) if add_pooling_layer else None
        self.head_mask_grad = None
        if _random_source is None:
            self._finish_setup(device)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, *, output_positions=None,
                head_mask=None, output_attentions=False):
        """ids (B,T) -> (sequence output (B,T,H), pooled output (B,H) or None without a pooler).

        ``output_positions`` (P,): distinct flat indices into the B*T positions, for callers
        that need the sequence output at a few positions only (the masked-LM head scores the
        labelled ones; a classifier needs none). The sequence output is then (P,H), those rows
        in that order, and the last layer computes only them and the [CLS] rows the pooler
        reads: its attention still reads the keys and values of every position, but the
        output projection and the feed-forward block, three quarters of the layer's work,
        skip every other row. The result equals the full output at those rows.

        ``head_mask``: per layer, a gate per head, (L, N) or (L, B, N) (or a list of L arrays
        for a model with pruned heads), 1 keeps a head and 0 silences it; after backward,
        ``head_mask_grad`` holds d(loss)/d(gate) per sequence, a list of L (B, N) arrays.
        ``output_attentions``: also return the list of each layer's attention probabilities,
        (B, N, T, T) each: ``seq, pooled, attentions = model.forward(..., output_attentions=True)``.

        Under ``no_grad()`` (inference) the padded positions of a batch are never computed:
        the encoder runs on the real tokens' rows only, and the sequence output is 0 at padding.
        """
        self.clear_caches()          # a forward that fails half-way leaves backward nothing stale
        self.head_mask_grad = None
        ids, token_type_ids, mask = self.check_inputs(input_ids, token_type_ids, attention_mask)
        xp = get_array_module(ids)
        batch, length = ids.shape
        rows = positions = None
        if output_positions is not None:
            positions = as_int_array(output_positions, "output_positions", xp).reshape(-1)   # (P,)
            if positions.size:
                check_range(positions, 0, batch * length, "output_positions", limit=f"{batch} x {length} positions")
                if xp.unique(positions).size != positions.size:
                    raise ValueError("output_positions must not repeat a position")
            # The last layer computes R rows: the wanted positions and the [CLS] rows for the pooler.
            first_tokens = xp.arange(batch) * length                     # the [CLS] rows, (B,)
            wanted = [positions, first_tokens] if self.pooler is not None else [positions]
            rows = xp.unique(xp.concatenate(wanted))                     # (R,) sorted, distinct
        if head_mask is not None:
            head_mask = self._check_head_mask(head_mask, batch, xp)

        h = self.embeddings.forward(ids, token_type_ids)                 # (B, T, H)
        packed = None
        if not grad_enabled() and mask is not None:
            # Inference: padding is never computed. No real position attends to a padded one,
            # so the encoder runs on the M real positions' rows alone (and any asked for).
            needed = mask.reshape(-1) == 0                               # (B*T,) real tokens
            if rows is not None:
                needed[rows] = True
            packed = Packed(batch, length, xp.flatnonzero(needed))       # rows (M,)
            h = h.reshape(-1, h.shape[-1])[packed.rows]                  # (M, H)
            if rows is not None:
                rows = xp.searchsorted(packed.rows, rows)                # now rows of the packed h
        h = self.encoder.forward(h, mask, rows, head_mask, output_attentions, packed)  # like h, or (R, H)
        attentions = None
        if output_attentions:
            h, attentions = h
        hidden = h.shape[-1]
        if rows is None:
            if packed is not None:                                       # padded positions read 0
                h = scatter_rows(h, packed.rows, (batch, length, hidden))
            pooled = self.pooler.forward(h) if self.pooler is not None else None   # (B, H)
            self._save_cache((batch, h.shape, None, head_mask is not None))
            sequence = h                                                 # (B, T, H)
        else:
            order = rows if packed is None else packed.rows[rows]        # flat positions of the R rows
            where, where_first = xp.searchsorted(order, positions), xp.searchsorted(order, first_tokens)
            pooled = None
            if self.pooler is not None:
                pooled = self.pooler.forward(h[where_first][:, None])    # reads row 0 of (B, 1, H)
            self._save_cache((batch, (positions.size, hidden), (order.size, where, where_first),
                              head_mask is not None))
            sequence = h[where]                                          # (P, H)
        return (sequence, pooled, attentions) if output_attentions else (sequence, pooled)

    def _check_head_mask(self, head_mask, batch, xp):
        """One (B or 1, N_l) gate array per layer, on the model's device."""
        layers = self.encoder.layer
        if len(head_mask) != len(layers):
            raise ValueError(f"head_mask needs one entry per layer ({len(layers)}), got {len(head_mask)}")
        gates = []
        for i, (gate, layer) in enumerate(zip(head_mask, layers)):
            gate = xp.asarray(gate, dtype=self.dtype)
            heads = layer.attention.self.num_heads
            if gate.shape not in ((heads,), (1, heads), (batch, heads)):
                raise ValueError(f"head_mask[{i}] must have shape ({heads},) or ({batch}, {heads}), "
                                 f"got {tuple(gate.shape)}")
            gates.append(gate.reshape(-1, heads))
        return gates

    def backward(self, dsequence=None, dpooled=None):
        """Backpropagate d(loss)/d(sequence output) and/or d(loss)/d(pooled output)."""
        batch, shape, selection, gated = self._pop_cache()  # shape: the sequence output's
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
        if gated:
            self.head_mask_grad = [layer.attention.self.head_mask_grad for layer in self.encoder.layer]


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


def masked_positions_and_targets(labels, shape, vocab_size, xp):
    """(positions (M,), targets (M,)): the flat indices of the labelled positions of a (B, T)
    label array (-100: not labelled) and their token ids, checked against the vocabulary."""
    labels = as_int_array(labels, "labels", xp)
    check_shape(labels, shape, "labels")
    flat = labels.reshape(-1)                                            # (B*T,)
    positions = xp.flatnonzero(flat != ops.IGNORE_INDEX)                 # (M,)
    targets = flat[positions]
    if targets.size:
        check_range(targets, 0, vocab_size, "labels", "vocab_size")
    return positions, targets


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
            positions, targets = masked_positions_and_targets(labels, (batch, length), self.config.vocab_size, xp)
            out.masked_positions = positions
            # the encoder's output at those M positions only (its last layer skips the rest)
            seq, pooled = self.bert.forward(ids, token_type_ids, attention_mask,
                                            output_positions=positions)              # (M,H), (B,H)
            out.prediction_logits = self.cls.predictions.forward(seq)               # (M, V)
            ce_forward, ce_backward = op("cross_entropy", out.prediction_logits)
            out.mlm_loss, cache = ce_forward(out.prediction_logits, targets)
            losses["mlm"] = (ce_backward, cache)

        out.seq_relationship_logits = self.cls.seq_relationship.forward(pooled)     # (B, 2)
        if next_sentence_label is not None:
            nsp = as_int_array(next_sentence_label, "next_sentence_label", xp).reshape(-1)
            check_shape(nsp, (batch,), "next_sentence_label", "(one label per sequence)")
            valid = nsp[nsp != ops.IGNORE_INDEX]
            if valid.size:
                check_range(valid, 0, 2, "next_sentence_label", limit="2 NSP classes: 0 B follows A, 1 B is random")
            ce_forward, ce_backward = op("cross_entropy", out.seq_relationship_logits)
            out.nsp_loss, cache = ce_forward(out.seq_relationship_logits, nsp)
            losses["nsp"] = (ce_backward, cache)

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
