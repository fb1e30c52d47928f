"""RoBERTa (Liu et al., 2019): BERT's encoder, trained with a better recipe, and three
small changes to the model, each a subclass of the BERT module it changes.

1. **Positions** count each sequence's real tokens from ``pad_token_id + 1``; padding takes
   position ``pad_token_id``, a row kept at zero that gets no gradient (so 514 position rows
   hold 512 tokens). Sequences padded differently get different positions, so the position
   gradient is not summed over the batch as in BERT::

       real = input_ids != pad;   position_ids = cumsum(real, axis=1) * real + pad     (B, T)

2. **One token type** (``type_vocab_size = 1``): no sentence A / B, no next-sentence task.
3. **The masked-LM head** is ``lm_head``: dense -> GELU -> ``layer_norm`` -> the decoder tied
   to the word embeddings, plus ``lm_head.bias`` (BERT's ``cls.predictions.transform...``).
4. **No pooler.** The sequence classifier reads the ``<s>`` position through a head of its
   own, ``classifier.dense`` -> tanh -> ``classifier.out_proj`` (:class:`RobertaClassificationHead`);
   token classification and question answering are BERT's heads on ``roberta``.

The checkpoint layout is Hugging Face's: ``config.json`` with ``model_type: "roberta"``,
weights named ``roberta.embeddings...``, ``roberta.encoder.layer.N...``, ``lm_head.dense``,
``lm_head.layer_norm``, ``lm_head.bias`` (``lm_head.decoder.weight`` is the tied embedding).
The tokenizer is byte-level BPE (:mod:`minibert.bpe`).
"""

from __future__ import annotations

import numpy as np

from .backend import get_array_module
from .config import RobertaConfig
from .heads import (BertForMaskedLM, BertForQuestionAnswering, BertForSequenceClassification,
                    BertForTokenClassification, _classifier_dropout)
from .layers import Activation, Dropout, LayerNorm, Linear
from .modeling import BertEmbeddings, BertModel
from .nn import Module, Parameter


class RobertaEmbeddings(BertEmbeddings):
    """BERT's embeddings with RoBERTa's positions (see the module docstring)."""

    def __init__(self, config: RobertaConfig, rng, random_source, dtype):
        super().__init__(config, rng, random_source, dtype)
        self.padding_idx = config.pad_token_id
        self.position_embeddings.padding_idx = config.pad_token_id       # no gradient, as PyTorch's
        self.position_embeddings.weight.data[config.pad_token_id] = 0.0

    def position_ids(self, input_ids):
        """Positions pad+1, pad+2, ... over the real tokens, pad at padding.  (B, T)"""
        xp = get_array_module(input_ids)
        real = (input_ids != self.padding_idx).astype(input_ids.dtype)
        return xp.cumsum(real, axis=1) * real + self.padding_idx

    def backward(self, dy):
        dx = self.LayerNorm.backward(self.dropout.backward(dy))         # (B, T, H)
        self.word_embeddings.backward(dx)
        self.position_embeddings.backward(dx)                            # each sequence its own positions
        self.token_type_embeddings.backward(dx)


class RobertaModel(BertModel):
    """The RoBERTa encoder: BertModel with RoBERTa's embeddings and configuration."""

    base_model_prefix = "roberta"
    config_class = RobertaConfig
    embeddings_class = RobertaEmbeddings


class RobertaLMHead(Module):
    """``lm_head``: dense (H -> H) -> GELU -> LayerNorm -> the tied decoder, plus a bias.

    logits = LayerNorm(gelu(h W^T + b)) @ E^T + bias,   E the (V, H) word embeddings.
    """

    def __init__(self, config: RobertaConfig, word_embeddings, rng, dtype):
        self.dense = Linear(config.hidden_size, config.hidden_size, config.initializer_range, rng, dtype)
        self.activation = Activation("gelu")
        self.layer_norm = LayerNorm(config.hidden_size, config.layer_norm_eps, dtype)
        self.bias = Parameter(np.zeros(config.vocab_size, dtype=dtype))
        self.decoder = Linear.from_parameters(word_embeddings.weight, self.bias)   # tied weight

    def forward(self, h):                                # (..., H) -> (..., V)
        return self.decoder.forward(self.layer_norm.forward(self.activation.forward(self.dense.forward(h))))

    def backward(self, dlogits):
        dh = self.layer_norm.backward(self.decoder.backward(dlogits))
        return self.dense.backward(self.activation.backward(dh))


class RobertaForMaskedLM(BertForMaskedLM):
    """Masked language modelling with RoBERTa: the same forward, loss and backward as
    :class:`~minibert.heads.BertForMaskedLM`, on ``roberta`` and ``lm_head``."""

    base_model_prefix = "roberta"
    config_class = RobertaConfig

    def __init__(self, config: RobertaConfig, *, seed: int = 0, device: str = "cpu", dtype=np.float32):
        if not isinstance(config, RobertaConfig):
            raise TypeError(f"config must be a RobertaConfig, got {type(config).__name__}")
        rng, dtype, device = self._setup(config, seed, device, dtype)
        self.roberta = RobertaModel(self.config, _random_source=self.random, _rng=rng, dtype=dtype,
                                    add_pooling_layer=False)
        self.lm_head = RobertaLMHead(self.config, self.roberta.embeddings.word_embeddings, rng, dtype)
        self._finish_setup(device)

    @property
    def mlm_head(self):
        return self.lm_head


# ---------------------------------------------------------------------------- fine-tuning heads
class _RobertaEncoder:
    """Builds the encoder of a BERT head as ``roberta``, a RobertaModel, from a RobertaConfig."""

    base_model_prefix = "roberta"
    config_class = RobertaConfig
    base_model_class = RobertaModel


class RobertaClassificationHead(Module):
    """``classifier``: the sequence classifier on the ``<s>`` state (RoBERTa has no pooler).

        logits = out_proj(dropout(tanh(dense(dropout(h_<s>)))))        (B, H) -> (B, C)

    The same dense -> tanh as BERT's pooler, but trained with the task (it is not in the
    pretrained checkpoint), and dropout on both sides of it.
    """

    def __init__(self, config: RobertaConfig, num_labels: int, rng, random_source, dtype):
        p = _classifier_dropout(config)
        self.dropout = Dropout(p, random_source)                         # on the <s> state
        self.dense = Linear(config.hidden_size, config.hidden_size, config.initializer_range, rng, dtype)
        self.activation = Activation("tanh")
        self.dense_dropout = Dropout(p, random_source)                   # on the tanh output
        self.out_proj = Linear(config.hidden_size, num_labels, config.initializer_range, rng, dtype)

    def forward(self, h):                                                # (B, H) -> (B, C)
        x = self.activation.forward(self.dense.forward(self.dropout.forward(h)))
        return self.out_proj.forward(self.dense_dropout.forward(x))

    def backward(self, dlogits):                                         # (B, C) -> (B, H)
        dx = self.dense_dropout.backward(self.out_proj.backward(dlogits))
        return self.dropout.backward(self.dense.backward(self.activation.backward(dx)))


class RobertaForSequenceClassification(_RobertaEncoder, BertForSequenceClassification):
    """One label (or value) per sequence from RoBERTa's ``<s>`` state.

        logits = classifier(h[:, 0])          (B, C), :class:`RobertaClassificationHead`

    Labels, ``problem_type`` and the loss are :class:`~minibert.heads.BertForSequenceClassification`'s.
    """

    reads_pooler = False

    def _build_classifier(self, config, num_labels, rng, dtype):
        self.classifier = RobertaClassificationHead(config, num_labels, rng, self.random, dtype)

    def _logits(self, input_ids, token_type_ids, attention_mask, head_mask):
        first = self._first_token_states(input_ids, token_type_ids, attention_mask, head_mask)   # (B, H)
        return self.classifier.forward(first)                                                   # (B, C)

    def _logits_backward(self, dlogits):
        self.roberta.backward(self.classifier.backward(dlogits), None)   # into the <s> rows


class RobertaForTokenClassification(_RobertaEncoder, BertForTokenClassification):
    """One label per token: BERT's ``dropout`` -> ``classifier`` on RoBERTa's sequence output.
    A word split into several BPE pieces is labelled on its first piece."""


class RobertaForQuestionAnswering(_RobertaEncoder, BertForQuestionAnswering):
    """Extractive question answering: BERT's ``qa_outputs`` (start, end logits) on RoBERTa's
    sequence output, with the same loss."""
