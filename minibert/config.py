"""The configuration of a BERT model: the fields of Hugging Face's ``config.json``.

It has its own module so that checkpoints, data and the command line can read and write a
configuration without importing the model.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field, fields
from typing import ClassVar

import numpy as np

from .backend import is_int_at_least
from .ops.activations import ACTIVATIONS

# hidden_act values (as config.json names them): the activations of minibert/ops ("gelu" is the
# exact erf form BERT was trained with, "gelu_new" / "gelu_pytorch_tanh" the tanh approximation)
HIDDEN_ACTIVATIONS = (*ACTIVATIONS, "tanh", "relu")
ATTENTION_IMPLEMENTATIONS = ("naive", "flash")


@dataclass
class BertConfig:
    """The hyperparameters of a BERT model, with the field names of Hugging Face's config.json."""

    model_type: ClassVar[str] = "bert"          # config.json's "model_type"
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
        if not isinstance(self.hidden_act, str) or self.hidden_act not in HIDDEN_ACTIVATIONS:
            raise ValueError(f"BertConfig.hidden_act {self.hidden_act!r} is not supported; "
                             f"expected one of {sorted(HIDDEN_ACTIVATIONS)}")
        if not isinstance(self.attn_implementation, str) or self.attn_implementation not in ATTENTION_IMPLEMENTATIONS:
            raise ValueError(f"BertConfig.attn_implementation must be 'naive' or 'flash', "
                             f"got {self.attn_implementation!r}")
        if not 0 <= self.pad_token_id < self.vocab_size:
            raise ValueError(f"BertConfig.pad_token_id ({self.pad_token_id}) must be in [0, vocab_size)")
        self.extra = dict(self.extra)
        if self.extra.get("pruned_heads"):
            self.extra["pruned_heads"] = self._checked_pruned_heads(self.extra["pruned_heads"])
        else:
            self.extra.pop("pruned_heads", None)
        position_type = self.extra.get("position_embedding_type", "absolute")
        if position_type != "absolute":
            raise ValueError(f"position_embedding_type {position_type!r} is not supported (only 'absolute')")

    @property
    def head_size(self) -> int:
        return self.hidden_size // self.num_attention_heads

    @property
    def max_sequence_length(self) -> int:
        """The longest input: one position row per token."""
        return self.max_position_embeddings

    def kept_heads(self, layer: int) -> list[int]:
        """The heads that layer ``layer`` has, in their original numbering: all of them but
        those ``pruned_heads`` lists for it (config.json: ``{"layer": [head, ...]}``)."""
        pruned = set(self.extra.get("pruned_heads", {}).get(str(layer), ()))
        return [h for h in range(self.num_attention_heads) if h not in pruned]

    def _checked_pruned_heads(self, pruned) -> dict:
        """``pruned_heads`` as config.json writes it, {"layer": sorted heads}, after checking it."""
        if not isinstance(pruned, dict):
            raise ValueError(f"pruned_heads must map layers to lists of heads, got {pruned!r}")
        checked = {}
        for layer, heads in pruned.items():
            try:
                layer, heads = int(layer), sorted({int(h) for h in heads})
            except (TypeError, ValueError):
                raise ValueError(f"pruned_heads must map layers to lists of heads, got {pruned!r}") from None
            if not 0 <= layer < self.num_hidden_layers:
                raise ValueError(f"layer {layer} does not exist (the model has {self.num_hidden_layers})")
            bad = [h for h in heads if not 0 <= h < self.num_attention_heads]
            if bad:
                raise ValueError(f"head(s) {bad} do not exist (num_attention_heads = {self.num_attention_heads})")
            if len(heads) >= self.num_attention_heads:
                raise ValueError(f"cannot prune every head of layer {layer} "
                                 f"({self.num_attention_heads} heads): at least one must remain")
            if heads:
                checked[str(layer)] = heads
        return dict(sorted(checked.items(), key=lambda item: int(item[0])))

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
            if values.get(key) not in ATTENTION_IMPLEMENTATIONS:
                values.pop(key, None)
        if "minibert_attn_implementation" in values:
            values.setdefault("attn_implementation", values.pop("minibert_attn_implementation"))
        if values.get("model_type", cls.model_type) != cls.model_type:
            raise ValueError(f"config is for model_type {values['model_type']!r}, not {cls.model_type!r}")
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
        return {"model_type": self.model_type, **extra, **values}

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


@dataclass
class RobertaConfig(BertConfig):
    """RoBERTa's configuration: BERT's fields with RoBERTa's defaults (a byte-level BPE
    vocabulary of 50,265 tokens, ``<pad>`` = 1, one token type, positions counted from
    ``pad_token_id + 1`` so 514 position rows for 512 tokens, LayerNorm epsilon 1e-5)."""

    model_type: ClassVar[str] = "roberta"
    vocab_size: int = 50265
    max_position_embeddings: int = 514
    type_vocab_size: int = 1
    layer_norm_eps: float = 1e-5
    pad_token_id: int = 1

    @property
    def max_sequence_length(self) -> int:
        """Positions start after ``pad_token_id``: 514 rows hold 512 tokens."""
        return self.max_position_embeddings - self.pad_token_id - 1


@dataclass
class DistilBertConfig(BertConfig):
    """DistilBERT's configuration. Its config.json names the fields its own way (``dim``,
    ``n_layers``, ``n_heads``, ``hidden_dim``, ``activation``, ``dropout``,
    ``attention_dropout``); they are read into BERT's names and written back as they were.
    DistilBERT has no token types (``type_vocab_size`` stays 1, an input of zeros)."""

    model_type: ClassVar[str] = "distilbert"
    type_vocab_size: int = 1
    NAMES: ClassVar[dict] = {"dim": "hidden_size", "n_layers": "num_hidden_layers", "n_heads": "num_attention_heads",
                             "hidden_dim": "intermediate_size", "activation": "hidden_act",
                             "dropout": "hidden_dropout_prob", "attention_dropout": "attention_probs_dropout_prob"}

    @classmethod
    def from_dict(cls, values: dict) -> "DistilBertConfig":
        if isinstance(values, dict):
            if values.get("sinusoidal_pos_embds"):
                raise ValueError("sinusoidal_pos_embds is true: minibert's DistilBERT has learned positions only")
            values = {cls.NAMES.get(k, k): v for k, v in values.items() if k != "sinusoidal_pos_embds"}
        return super().from_dict(values)

    def to_dict(self) -> dict:
        ours = {bert: distil for distil, bert in self.NAMES.items()}
        values = {ours.get(k, k): v for k, v in super().to_dict().items() if k != "type_vocab_size"}
        return {**values, "sinusoidal_pos_embds": False}


# name: (layers L, hidden H, heads A); intermediate size is 4 H, as in the BERT papers
PRESETS = {
    "tiny": (2, 128, 2),
    "mini": (4, 256, 4),
    "small": (4, 512, 8),
    "medium": (8, 512, 8),
    "base": (12, 768, 12),
    "large": (24, 1024, 16),
}
