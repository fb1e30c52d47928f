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

The fine-tuning heads read DistilBERT's own config fields: the sequence classifier is
``pre_classifier`` -> ReLU -> dropout (``seq_classif_dropout``, 0.2 when absent) ->
``classifier`` on the first position; token classification is ``dropout`` (``dropout``) ->
``classifier``; question answering is dropout (``qa_dropout``, 0.1 when absent) ->
``qa_outputs``. Their forward takes transformers' argument order, ``(input_ids,
attention_mask, labels)``.
"""

from __future__ import annotations

import re

import numpy as np

from .config import DistilBertConfig
from .heads import (BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification,
                    BertForTokenClassification, BertOnlyMLMHead)
from .layers import Activation, Dropout, Linear
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


# ---------------------------------------------------------------------------- fine-tuning heads
def _dropout_field(config: DistilBertConfig, name: str, default: float) -> float:
    """A dropout probability of DistilBERT's config.json (``seq_classif_dropout``, ``qa_dropout``)."""
    p = config.extra.get(name, default)
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not 0.0 <= p < 1.0:
        raise ValueError(f"{name} must be a number in [0, 1), got {p!r}")
    return float(p)


class _DistilBertEncoder(_DistilBertNames):
    """Builds the encoder of a BERT head as ``distilbert``, a DistilBertModel (no pooler)."""

    base_model_prefix = "distilbert"
    config_class = DistilBertConfig
    base_model_class = DistilBertModel


class DistilBertForSequenceClassification(_DistilBertEncoder, BertForSequenceClassification):
    """One label (or value) per sequence from the first position's hidden state:

        logits = classifier(dropout(relu(pre_classifier(h[:, 0]))))      (B, H) -> (B, C)

    Labels, ``problem_type`` and the loss are :class:`~minibert.heads.BertForSequenceClassification`'s.
    """

    reads_pooler = False

    def _build_classifier(self, config, num_labels, rng, dtype):
        self.pre_classifier = Linear(config.hidden_size, config.hidden_size, config.initializer_range, rng, dtype)
        self.activation = Activation("relu")
        self.dropout = Dropout(_dropout_field(config, "seq_classif_dropout", 0.2), self.random)
        self.classifier = Linear(config.hidden_size, num_labels, config.initializer_range, rng, dtype)

    def forward(self, input_ids, attention_mask=None, labels=None, *, token_type_ids=None, head_mask=None):
        return super().forward(input_ids, token_type_ids, attention_mask, labels, head_mask=head_mask)

    def _logits(self, input_ids, token_type_ids, attention_mask, head_mask):
        first = self._first_token_states(input_ids, token_type_ids, attention_mask, head_mask)   # (B, H)
        hidden = self.activation.forward(self.pre_classifier.forward(first))                    # (B, H)
        return self.classifier.forward(self.dropout.forward(hidden))                            # (B, C)

    def _logits_backward(self, dlogits):
        dhidden = self.dropout.backward(self.classifier.backward(dlogits))                     # (B, H)
        dfirst = self.pre_classifier.backward(self.activation.backward(dhidden))
        self.distilbert.backward(dfirst, None)                                                  # into the first rows


class DistilBertForTokenClassification(_DistilBertEncoder, BertForTokenClassification):
    """One label per token: ``classifier(dropout(sequence_output))``, the dropout being
    the config's ``dropout`` (DistilBERT reads no ``classifier_dropout``)."""

    def __init__(self, config: DistilBertConfig, num_labels: int | None = None, **kwargs):
        super().__init__(config, num_labels, **kwargs)
        self.dropout.p = self.config.hidden_dropout_prob

    def forward(self, input_ids, attention_mask=None, labels=None, *, token_type_ids=None, head_mask=None):
        return super().forward(input_ids, token_type_ids, attention_mask, labels, head_mask=head_mask)


class DistilBertForQuestionAnswering(_DistilBertEncoder, BertForQuestionAnswering):
    """Extractive question answering: ``qa_outputs(dropout(sequence_output))``, (B, T, 2), the
    dropout being ``qa_dropout``; the loss is BERT's."""

    def __init__(self, config: DistilBertConfig, **kwargs):
        super().__init__(config, **kwargs)
        self.dropout = Dropout(_dropout_field(self.config, "qa_dropout", 0.1), self.random)

    def forward(self, input_ids, attention_mask=None, start_positions=None, end_positions=None, *,
                token_type_ids=None, head_mask=None):
        return super().forward(input_ids, token_type_ids, attention_mask, start_positions, end_positions,
                               head_mask=head_mask)

    def _span_logits(self, seq):
        return self.qa_outputs.forward(self.dropout.forward(seq))         # (B, T, H) -> (B, T, 2)

    def _span_logits_backward(self, dlogits):
        return self.dropout.backward(self.qa_outputs.backward(dlogits))   # (B, T, H)
