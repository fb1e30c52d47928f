"""DistilBERT (Sanh et al., 2019): a BERT with half the layers, distilled from a full one.

The model is BERT's encoder with two things removed: the token-type embeddings (a single
segment, no next-sentence task) and the pooler. The masked-LM head is BERT's (dense -> GELU
-> LayerNorm -> the decoder tied to the word embeddings, plus a bias).

What differs most is the names. minibert builds DistilBERT from BERT's modules, so its
parameters carry BERT's names; checkpoints use DistilBERT's, translated on the way in and
out by :data:`CHECKPOINT_NAMES` (``attention.self.query`` <-> ``attention.q_lin``,
``attention.output.LayerNorm`` <-> ``sa_layer_norm``, ``intermediate.dense`` <-> ``ffn.lin1``,
``cls.predictions.transform.dense`` <-> ``vocab_transform``, ...), and config.json's fields
by :class:`~minibert.config.DistilBertConfig` (``dim``, ``n_layers``, ``n_heads``,
``hidden_dim``...).
"""

from __future__ import annotations

import re

import numpy as np

from .config import DistilBertConfig
from .heads import BertForMaskedLM, BertOnlyMLMHead
from .modeling import BertEmbeddings, BertModel

# (minibert's name, DistilBERT's name): a name's part, {} standing for the layer number
CHECKPOINT_NAMES = [
    ("encoder.layer.{}.attention.self.query.", "transformer.layer.{}.attention.q_lin."),
    ("encoder.layer.{}.attention.self.key.", "transformer.layer.{}.attention.k_lin."),
    ("encoder.layer.{}.attention.self.value.", "transformer.layer.{}.attention.v_lin."),
    ("encoder.layer.{}.attention.output.dense.", "transformer.layer.{}.attention.out_lin."),
    ("encoder.layer.{}.attention.output.LayerNorm.", "transformer.layer.{}.sa_layer_norm."),
    ("encoder.layer.{}.intermediate.dense.", "transformer.layer.{}.ffn.lin1."),
    ("encoder.layer.{}.output.dense.", "transformer.layer.{}.ffn.lin2."),
    ("encoder.layer.{}.output.LayerNorm.", "transformer.layer.{}.output_layer_norm."),
    ("cls.predictions.transform.dense.", "vocab_transform."),
    ("cls.predictions.transform.LayerNorm.", "vocab_layer_norm."),
    ("cls.predictions.bias", "vocab_projector.bias"),
    ("cls.predictions.decoder.", "vocab_projector."),
]


def rename(name: str, to_distilbert: bool) -> str:
    """``name`` with the first part listed in :data:`CHECKPOINT_NAMES` replaced by its other name."""
    for ours, theirs in CHECKPOINT_NAMES:
        source, target = (ours, theirs) if to_distilbert else (theirs, ours)
        pattern = re.escape(source).replace(re.escape("{}"), r"(\d+)")
        renamed, count = re.subn(pattern, target.replace("{}", r"\1"), name, count=1)
        if count:
            return renamed
    return name


class DistilBertEmbeddings(BertEmbeddings):
    """word + position embeddings -> LayerNorm -> dropout: BERT's, without token types."""

    def __init__(self, config: DistilBertConfig, rng, random_source, dtype):
        super().__init__(config, rng, random_source, dtype)
        del self.token_type_embeddings

    def forward(self, input_ids, token_type_ids=None):
        x = self.word_embeddings.forward(input_ids)                      # (B, T, H)
        x += self.position_embeddings.forward(self.position_ids(input_ids))
        return self.dropout.forward(self.LayerNorm.forward(x))

    def backward(self, dy):
        dx = self.LayerNorm.backward(self.dropout.backward(dy))
        self.word_embeddings.backward(dx)
        self.position_embeddings.backward(dx.sum(axis=0, keepdims=True))


class _DistilBertNames:
    """Checkpoint names translated to DistilBERT's and back (see the module docstring)."""

    def to_checkpoint_name(self, name: str) -> str:
        return rename(name, to_distilbert=True)

    def from_checkpoint_name(self, key: str) -> str:
        return rename(key, to_distilbert=False)


class DistilBertModel(_DistilBertNames, BertModel):
    """The DistilBERT encoder: BertModel without token types and without a pooler."""

    base_model_prefix = "distilbert"
    config_class = DistilBertConfig
    embeddings_class = DistilBertEmbeddings

    def __init__(self, config: DistilBertConfig, seed: int = 0, device: str = "cpu", dtype=np.float32, **kwargs):
        kwargs.setdefault("add_pooling_layer", False)
        super().__init__(config, seed, device, dtype, **kwargs)

    def forward(self, input_ids, attention_mask=None, token_type_ids=None, **kwargs):
        """``(sequence_output, None)``, with transformers' argument order: DistilBERT has no
        token types (``token_type_ids`` must be None or zeros) and no pooler."""
        return super().forward(input_ids, token_type_ids, attention_mask, **kwargs)


class DistilBertForMaskedLM(_DistilBertNames, BertForMaskedLM):
    """Masked language modelling with DistilBERT: BertForMaskedLM on ``distilbert``."""

    base_model_prefix = "distilbert"
    config_class = DistilBertConfig

    def __init__(self, config: DistilBertConfig, *, seed: int = 0, device: str = "cpu", dtype=np.float32):
        if not isinstance(config, DistilBertConfig):
            raise TypeError(f"config must be a DistilBertConfig, got {type(config).__name__}")
        rng, dtype, device = self._setup(config, seed, device, dtype)
        self.distilbert = DistilBertModel(self.config, _random_source=self.random, _rng=rng, dtype=dtype)
        self.cls = BertOnlyMLMHead(self.config, self.distilbert.embeddings.word_embeddings, rng, dtype)
        self._finish_setup(device)

    def forward(self, input_ids, attention_mask=None, labels=None, **kwargs):
        return super().forward(input_ids, None, attention_mask, labels, **kwargs)
