"""Fine-tuning heads: a pretrained BERT encoder with a small task layer on top.

Shapes (one legend for the whole file):
    B batch   T sequence length   H hidden size   C labels (num_labels)
    V vocabulary size   M labelled (masked) positions

    BertForSequenceClassification   pooled (B,H) -> dropout -> classifier -> logits (B,C)
                                    loss: cross-entropy, or mean squared error for regression
    BertForTokenClassification      sequence (B,T,H) -> dropout -> classifier -> logits (B,T,C)
                                    loss: cross-entropy over the labelled tokens (-100 ignored)
    BertForQuestionAnswering        sequence (B,T,H) -> qa_outputs -> (B,T,2) = start, end logits
                                    loss: (CE(start) + CE(end)) / 2 over the positions of the batch
    BertForMaskedLM                 sequence (B,T,H) -> cls.predictions -> logits (B,T,V),
                                    or (M,V) at the labelled positions only when labels are given

Each model has the parameter names of its Hugging Face class (``bert.*`` for the encoder,
``classifier.weight``, ``qa_outputs.weight``, ``cls.predictions.*``), so
``Model.from_pretrained(dir)`` loads any BERT checkpoint into it: the encoder comes from
the file, the head keeps its fresh initialisation and is reported as missing. As in
transformers, the pooler exists only where the head reads it (sequence classification).
RoBERTa's and DistilBERT's heads (minibert/roberta.py, minibert/distilbert.py) are
subclasses of these, with their own encoder and, where transformers differs, their own
small layer.

Forward and backward come in pairs, like every module of the project::

    out = model.forward(ids, token_type_ids, attention_mask, labels=labels)
    model.backward()                      # d(out.loss) into every parameter's .grad
    model.backward(dlogits)               # or: the gradient of your own loss w.r.t. out.logits

``backward(..., loss_weight=w)`` differentiates ``w * loss``: gradient accumulation gives
each micro-batch its share of the big batch (``Trainer.accumulate`` in minibert/training.py),
which makes the accumulated gradient equal to the big batch's.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import numpy as np

from . import ops
from .backend import get_array_module, is_int_at_least, to_device
from .config import BertConfig
from .layers import Dropout, Linear
from .modeling import BertLMPredictionHead, BertModel, BertPreTrainedModel, masked_positions_and_targets
from .nn import Module, op
from .ops.mse import mse_backward, mse_forward
from .validation import as_int_array, check_grad_shape

IGNORE_INDEX = ops.IGNORE_INDEX
PROBLEM_TYPES = ("single_label_classification", "regression")


# ============================================================================ outputs
@dataclass
class SequenceClassifierOutput:
    """logits: (B, C) class scores (or C predicted values for regression); loss when labels were given."""

    logits: object
    loss: float | None = None


@dataclass
class TokenClassifierOutput:
    """logits: (B, T, C) per-token class scores; loss = mean CE over tokens whose label is not -100."""

    logits: object
    loss: float | None = None


@dataclass
class QuestionAnsweringOutput:
    """start_logits, end_logits: (B, T) scores of each position being the answer's first / last token.

    ``logits`` is the (B, T, 2) output of ``qa_outputs`` they are read from ([..., 0] start,
    [..., 1] end); ``backward(dlogits)`` takes a gradient of that shape.
    """

    logits: object
    loss: float | None = None

    @property
    def start_logits(self):
        return self.logits[..., 0]

    @property
    def end_logits(self):
        return self.logits[..., 1]


@dataclass
class MaskedLMOutput:
    """logits: (B, T, V) without labels; with labels only the labelled positions: (M, V).

    ``masked_positions`` (M,) are then the flat indices into the B*T positions of those rows.
    """

    logits: object
    loss: float | None = None
    masked_positions: object = None


# ============================================================================ helpers
def _label_names(id2label, num_labels: int, explicit: bool) -> list[str]:
    """Label names in id order from an ``id2label`` mapping (keys int or str, as config.json has them)."""
    if id2label is None:
        return [f"LABEL_{i}" for i in range(num_labels)]
    if isinstance(id2label, (list, tuple)):
        id2label = dict(enumerate(id2label))
    try:
        by_id = {int(k): str(v) for k, v in id2label.items()}
    except (AttributeError, TypeError, ValueError):
        raise ValueError(f"id2label must map label ids 0 .. C-1 to names, got {id2label!r}") from None
    if sorted(by_id) != list(range(len(by_id))):
        raise ValueError(f"id2label keys must be exactly 0 .. {len(by_id) - 1}, got {sorted(by_id)}")
    if len(by_id) != num_labels:
        if explicit:
            raise ValueError(f"id2label names {len(by_id)} labels but num_labels is {num_labels}")
        return [f"LABEL_{i}" for i in range(num_labels)]     # num_labels given: it wins, as in transformers
    names = [by_id[i] for i in range(num_labels)]
    if len(set(names)) != len(names):
        raise ValueError(f"id2label names must be distinct, got {names}")
    return names


def _config_with_labels(config: BertConfig, num_labels, id2label) -> tuple[BertConfig, int]:
    """A copy of ``config`` whose ``extra`` holds id2label / label2id as transformers writes them.

    ``num_labels`` None: taken from ``config.extra`` (a ``num_labels`` override), else the
    length of ``id2label`` (given, or saved in the config), else 2. The count itself is not
    stored: transformers derives it from ``id2label``, so a saved model loads back with the
    same number of labels.
    """
    if not isinstance(config, BertConfig):
        raise TypeError(f"config must be a BertConfig, got {type(config).__name__}")
    extra = dict(config.extra)
    explicit = id2label is not None
    names = id2label if explicit else extra.get("id2label")
    if num_labels is None:
        num_labels = extra.get("num_labels")
    if num_labels is None:
        num_labels = len(names) if names else 2
    if not is_int_at_least(num_labels, 1):
        raise ValueError(f"num_labels must be a positive integer, got {num_labels!r}")
    num_labels = int(num_labels)
    names = _label_names(names, num_labels, explicit)
    extra.pop("num_labels", None)
    extra["id2label"] = {str(i): name for i, name in enumerate(names)}
    extra["label2id"] = {name: i for i, name in enumerate(names)}
    return dataclasses.replace(config, extra=extra), num_labels


def _check_class_labels(labels, num_labels: int, name: str, what: str) -> None:
    """Every label is a class id in [0, num_labels) or the ignore index -100."""
    counted = labels[labels != IGNORE_INDEX]
    if counted.size == 0:
        return
    lowest, highest = int(counted.min()), int(counted.max())
    if lowest < 0 or highest >= num_labels:
        bad = lowest if lowest < 0 else highest
        raise ValueError(f"{name} contains {bad}, but there are {num_labels} {what} "
                         f"(valid: 0 .. {num_labels - 1}, or {IGNORE_INDEX} to ignore)")


def _labels_of_shape(labels, shape, name, xp):
    labels = as_int_array(labels, name, xp)
    if tuple(labels.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(labels.shape)}")
    return labels


def _classifier_dropout(config: BertConfig) -> float:
    """transformers' ``classifier_dropout`` when the config sets it, else ``hidden_dropout_prob``."""
    p = config.extra.get("classifier_dropout")
    p = config.hidden_dropout_prob if p is None else float(p)
    if not 0.0 <= p < 1.0:
        raise ValueError(f"classifier_dropout must be in [0, 1), got {p!r}")
    return p


class _BertWithHead(BertPreTrainedModel):
    """What the fine-tuning models share: the encoder, label names, and the loss-or-own-gradient rule.

    The encoder is ``base_model_class``, kept under the attribute ``base_model_prefix``
    (``bert``; RoBERTa's and DistilBERT's heads name their own, minibert/roberta.py and
    minibert/distilbert.py), so its parameters carry the checkpoint names.
    """

    base_model_class = BertModel

    def _build_encoder(self, config, seed, device, dtype, add_pooling_layer: bool):
        if not isinstance(config, self.config_class):
            raise TypeError(f"{type(self).__name__} needs a {self.config_class.__name__}, "
                            f"got a {type(config).__name__}")
        rng, dtype, device = self._setup(config, seed, device, dtype)
        encoder = self.base_model_class(self.config, _random_source=self.random, _rng=rng, dtype=dtype,
                                        add_pooling_layer=add_pooling_layer)
        setattr(self, self.base_model_prefix, encoder)
        return rng, dtype, device

    def _first_token_states(self, input_ids, token_type_ids, attention_mask, head_mask):
        """The encoder's output at each sequence's first position ([CLS], ``<s>``): (B, H).

        Only those B rows are asked for, so the last layer computes no other row."""
        ids, _, _ = self.check_inputs(input_ids, token_type_ids, attention_mask)
        batch, length = ids.shape
        first = get_array_module(ids).arange(batch) * length                      # flat positions, (B,)
        states, _ = self.base_model.forward(ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                                            head_mask=head_mask, output_positions=first)
        return states                                                              # (B, H)

    @property
    def id2label(self) -> dict:
        return {int(k): v for k, v in self.config.extra.get("id2label", {}).items()}

    @property
    def label2id(self) -> dict:
        return dict(self.config.extra.get("label2id", {}))

    @staticmethod
    def _output_gradient(dlogits, shape, loss_gradient, loss_weight: float, name: str = "dlogits"):
        """The gradient to send back: ``loss_weight * dlogits`` (yours) or of ``loss_weight * loss``.

        ``loss_gradient(weight)`` differentiates ``weight * loss``; it is None when the forward
        pass had no labels.
        """
        if dlogits is None:
            if loss_gradient is None:
                raise RuntimeError("backward() without a gradient needs a forward pass with labels "
                                   "(there is no loss to differentiate); pass dlogits for your own loss")
            return loss_gradient(loss_weight)
        dlogits = check_grad_shape(dlogits, shape, name)
        return dlogits * loss_weight if loss_weight != 1.0 else dlogits


# ============================================================================ sequence classification
class BertForSequenceClassification(_BertWithHead):
    """One label (or value) per sequence, read from the pooled [CLS] vector.

        logits = classifier(dropout(pooled))                          (B, C)
        single_label_classification:  loss = mean_i CE(logits_i, y_i)   (y_i = -100 ignored)
        regression:                   loss = mean((logits - y)^2)       (y float, (B,) when C = 1)

    ``problem_type`` None: "regression" when ``num_labels == 1``, else classification (as
    transformers decides). ``num_labels``, ``id2label`` and ``problem_type`` are kept in
    ``config.extra`` the way transformers writes config.json, so a saved model loads back
    with its labels: ``BertForSequenceClassification.from_pretrained(dir)``. Fine-tuning a
    pretrained encoder: ``from_pretrained(encoder_dir, num_labels=3)``.

    RoBERTa and DistilBERT replace ``_build_classifier``, ``_logits`` and ``_logits_backward``
    (their heads read the first position's hidden state, not a pooler); the labels and the
    loss are this class's.
    """

    reads_pooler = True          # BERT classifies the pooled [CLS] vector; RoBERTa and DistilBERT have no pooler

    def __init__(self, config: BertConfig, num_labels: int | None = None, problem_type: str | None = None, *,
                 id2label=None, seed: int = 0, device: str = "cpu", dtype=np.float32):
        config, num_labels = _config_with_labels(config, num_labels, id2label)
        if problem_type is None:
            problem_type = config.extra.get("problem_type")          # saved with the model
        if problem_type is None:
            problem_type = "regression" if num_labels == 1 else "single_label_classification"
        if problem_type not in PROBLEM_TYPES:
            raise ValueError(f"problem_type must be one of {PROBLEM_TYPES}, got {problem_type!r}")
        config.extra["problem_type"] = problem_type
        rng, dtype, device = self._build_encoder(config, seed, device, dtype, add_pooling_layer=self.reads_pooler)
        self.num_labels = num_labels
        self.problem_type = problem_type
        self._build_classifier(config, num_labels, rng, dtype)
        self._finish_setup(device)

    def _build_classifier(self, config, num_labels, rng, dtype):
        self.dropout = Dropout(_classifier_dropout(config), self.random)
        self.classifier = Linear(config.hidden_size, num_labels, config.initializer_range, rng, dtype)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None, *,
                head_mask=None) -> SequenceClassifierOutput:
        self.clear_caches()          # a forward that fails half-way leaves backward nothing stale
        logits = self._logits(input_ids, token_type_ids, attention_mask, head_mask)  # (B, C)
        out = SequenceClassifierOutput(logits)
        loss_cache = None
        if labels is not None:
            xp = get_array_module(logits)
            batch = logits.shape[0]
            if self.problem_type == "regression":
                target = self._regression_targets(labels, batch, xp)                   # (B, C)
                out.loss, loss_cache = mse_forward(logits, target)
            else:
                labels = _labels_of_shape(labels, (batch,), "labels", xp).reshape(-1)   # (B,)
                _check_class_labels(labels, self.num_labels, "labels", "labels")
                out.loss, loss_cache = ops.cross_entropy_forward(logits, labels)
        self._save_cache((logits.shape, loss_cache))
        return out

    def _logits(self, input_ids, token_type_ids, attention_mask, head_mask):
        """BERT's head: ``classifier(dropout(pooled))``, (B, C)."""
        # Only [CLS] is read: the last encoder layer computes no other row (output_positions=[]).
        _, pooled = self.bert.forward(input_ids, token_type_ids, attention_mask, head_mask=head_mask,
                                      output_positions=np.zeros(0, dtype=np.int64))  # (B, H)
        return self.classifier.forward(self.dropout.forward(pooled))                # (B, C)

    def _logits_backward(self, dlogits):
        dpooled = self.dropout.backward(self.classifier.backward(dlogits))           # (B, H)
        self.bert.backward(None, dpooled)

    def _regression_targets(self, labels, batch, xp):
        target = xp.asarray(to_device(labels, self.device))
        if target.dtype.kind not in "iuf":
            raise TypeError(f"regression labels must be numbers, got dtype {target.dtype}")
        expected = (batch,) if self.num_labels == 1 else (batch, self.num_labels)
        if tuple(target.shape) not in (expected, (batch, self.num_labels)):
            raise ValueError(f"regression labels must have shape {expected} ({self.num_labels} value(s) "
                             f"per sequence), got {tuple(target.shape)}")
        target = target.astype(self.dtype).reshape(batch, self.num_labels)
        if not bool(xp.isfinite(target).all()):
            raise ValueError("regression labels contain NaN or infinity")
        return target

    def backward(self, dlogits=None, *, loss_weight: float = 1.0):
        """Backpropagate ``loss_weight * out.loss``, or ``loss_weight * dlogits`` of shape (B, C)."""
        shape, loss_cache = self._pop_cache()
        if loss_cache is None:
            loss_gradient = None
        elif self.problem_type == "regression":
            loss_gradient = lambda w: mse_backward(w, loss_cache)                   # noqa: E731
        else:
            loss_gradient = lambda w: ops.cross_entropy_backward(w, loss_cache)     # noqa: E731
        dlogits = self._output_gradient(dlogits, shape, loss_gradient, loss_weight)  # (B, C)
        self._logits_backward(dlogits)


# ============================================================================ token classification
class BertForTokenClassification(_BertWithHead):
    """One label per token (named entities, parts of speech).

        logits = classifier(dropout(sequence_output))                 (B, T, C)
        loss = mean over tokens with label != -100 of CE(logits_t, y_t)

    Words split into several WordPieces are labelled on their first piece and -100 on the
    rest (minibert.data.finetuning does this), as are [CLS], [SEP] and padding.
    """

    def __init__(self, config: BertConfig, num_labels: int | None = None, *, id2label=None,
                 seed: int = 0, device: str = "cpu", dtype=np.float32):
        config, num_labels = _config_with_labels(config, num_labels, id2label)
        rng, dtype, device = self._build_encoder(config, seed, device, dtype, add_pooling_layer=False)
        self.num_labels = num_labels
        self.dropout = Dropout(_classifier_dropout(config), self.random)
        self.classifier = Linear(config.hidden_size, num_labels, config.initializer_range, rng, dtype)
        self._finish_setup(device)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None, *,
                head_mask=None) -> TokenClassifierOutput:
        self.clear_caches()          # a forward that fails half-way leaves backward nothing stale
        seq, _ = self.base_model.forward(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                                         head_mask=head_mask)                        # (B, T, H)
        logits = self.classifier.forward(self.dropout.forward(seq))                  # (B, T, C)
        out = TokenClassifierOutput(logits)
        loss_cache = None
        if labels is not None:
            batch, length, classes = logits.shape
            labels = _labels_of_shape(labels, (batch, length), "labels", get_array_module(logits))
            _check_class_labels(labels, classes, "labels", "token labels")
            out.loss, loss_cache = ops.cross_entropy_forward(logits.reshape(-1, classes), labels.reshape(-1))
        self._save_cache((logits.shape, loss_cache))
        return out

    def backward(self, dlogits=None, *, loss_weight: float = 1.0):
        """Backpropagate ``loss_weight * out.loss``, or ``loss_weight * dlogits`` of shape (B, T, C)."""
        shape, loss_cache = self._pop_cache()
        loss_gradient = None if loss_cache is None else \
            (lambda w: ops.cross_entropy_backward(w, loss_cache).reshape(shape))    # (B*T, C) -> (B, T, C)
        dlogits = self._output_gradient(dlogits, shape, loss_gradient, loss_weight)
        dseq = self.dropout.backward(self.classifier.backward(dlogits))              # (B, T, H)
        self.base_model.backward(dseq, None)


# ============================================================================ question answering
class BertForQuestionAnswering(_BertWithHead):
    """Extractive question answering: which tokens start and end the answer span.

        logits = qa_outputs(sequence_output)            (B, T, 2);  start = [..., 0], end = [..., 1]
        loss = (CE(start_logits, start_positions) + CE(end_logits, end_positions)) / 2

    Each CE is a softmax over the T positions of a sequence, averaged over the batch. A
    window that does not contain the answer points both positions at [CLS] (index 0); a
    position of -100 is ignored. The logits of padding and question tokens are not masked
    here (as in transformers): the post-processing only picks spans inside the context.
    """

    def __init__(self, config: BertConfig, *, seed: int = 0, device: str = "cpu", dtype=np.float32):
        rng, dtype, device = self._build_encoder(config, seed, device, dtype, add_pooling_layer=False)
        self.qa_outputs = Linear(config.hidden_size, 2, config.initializer_range, rng, dtype)
        self._finish_setup(device)

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, start_positions=None,
                end_positions=None, *, head_mask=None) -> QuestionAnsweringOutput:
        self.clear_caches()          # a forward that fails half-way leaves backward nothing stale
        seq, _ = self.base_model.forward(input_ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                                         head_mask=head_mask)                        # (B, T, H)
        logits = self._span_logits(seq)                                              # (B, T, 2)
        out = QuestionAnsweringOutput(logits)
        loss_caches = None
        if (start_positions is None) != (end_positions is None):
            raise ValueError("give both start_positions and end_positions (or neither)")
        if start_positions is not None:
            batch, length, _ = logits.shape
            xp = get_array_module(logits)
            caches, losses = [], []
            for k, (name, positions) in enumerate((("start_positions", start_positions),
                                                   ("end_positions", end_positions))):
                positions = as_int_array(positions, name, xp).reshape(-1)           # (B,)
                if positions.shape[0] != batch:
                    raise ValueError(f"{name} must hold one position per sequence ({batch}), "
                                     f"got {positions.shape[0]}")
                _check_class_labels(positions, length, name, f"positions in a sequence of length {length}")
                loss, cache = ops.cross_entropy_forward(logits[..., k], positions)   # over the T positions
                losses.append(loss)
                caches.append(cache)
            out.loss = (losses[0] + losses[1]) / 2
            loss_caches = caches
        self._save_cache((logits.shape, loss_caches))
        return out

    def backward(self, dlogits=None, *, loss_weight: float = 1.0):
        """Backpropagate ``loss_weight * out.loss``, or ``loss_weight * dlogits`` of shape (B, T, 2)."""
        shape, loss_caches = self._pop_cache()

        def loss_gradient(weight):
            start_cache, end_cache = loss_caches
            dstart = ops.cross_entropy_backward(weight / 2, start_cache)            # (B, T)
            dend = ops.cross_entropy_backward(weight / 2, end_cache)
            return get_array_module(dstart).stack([dstart, dend], axis=-1)          # (B, T, 2)

        dlogits = self._output_gradient(dlogits, shape, None if loss_caches is None else loss_gradient,
                                        loss_weight)
        self.base_model.backward(self._span_logits_backward(dlogits), None)         # (B, T, H)

    def _span_logits(self, seq):
        """BERT's head: ``qa_outputs(sequence_output)``, (B, T, H) -> (B, T, 2)."""
        return self.qa_outputs.forward(seq)

    def _span_logits_backward(self, dlogits):
        return self.qa_outputs.backward(dlogits)                                    # (B, T, H)


# ============================================================================ masked language model
class BertOnlyMLMHead(Module):
    """``cls.predictions``: the masked-LM head of pretraining, without next-sentence prediction."""

    def __init__(self, config: BertConfig, word_embeddings, rng, dtype):
        self.predictions = BertLMPredictionHead(config, word_embeddings, rng, dtype)


class BertForMaskedLM(_BertWithHead):
    """Masked language modelling alone (the pretraining MLM head, decoder tied to the embeddings).

        logits = cls.predictions(sequence_output)        (B, T, V) without labels
        loss = mean over labelled positions of CE(logits_t, y_t)

    With labels only the M labelled positions are scored, (M, V): the same loss and
    gradients as scoring every position, for a fraction of the work.
    """

    def __init__(self, config: BertConfig, *, seed: int = 0, device: str = "cpu", dtype=np.float32):
        rng, dtype, device = self._build_encoder(config, seed, device, dtype, add_pooling_layer=False)
        self.cls = BertOnlyMLMHead(config, self.bert.embeddings.word_embeddings, rng, dtype)
        self._finish_setup(device)

    @property
    def mlm_head(self):
        """The module that turns hidden states into vocabulary scores."""
        return self.cls.predictions

    def forward(self, input_ids, token_type_ids=None, attention_mask=None, labels=None, *,
                head_mask=None) -> MaskedLMOutput:
        self.clear_caches()          # a forward that fails half-way leaves backward nothing stale
        out = MaskedLMOutput(None)
        loss_cache = None
        if labels is None:
            seq, _ = self.base_model.forward(input_ids, token_type_ids=token_type_ids,
                                             attention_mask=attention_mask, head_mask=head_mask)  # (B, T, H)
            out.logits = self.mlm_head.forward(seq)                                   # (B, T, V)
        else:
            ids, _, _ = self.check_inputs(input_ids, token_type_ids, attention_mask)
            positions, targets = masked_positions_and_targets(labels, ids.shape, self.config.vocab_size,
                                                              get_array_module(ids))  # (M,), (M,)
            out.masked_positions = positions
            # the encoder's output at the M labelled positions only (its last layer skips the rest)
            seq, _ = self.base_model.forward(ids, token_type_ids=token_type_ids, attention_mask=attention_mask,
                                             output_positions=positions, head_mask=head_mask)  # (M, H)
            out.logits = self.mlm_head.forward(seq)                                   # (M, V)
            ce_forward, ce_backward = op("cross_entropy", out.logits)
            out.loss, cache = ce_forward(out.logits, targets)
            loss_cache = (ce_backward, cache)
        self._save_cache((out.logits.shape, loss_cache))
        return out

    def backward(self, dlogits=None, *, loss_weight: float = 1.0):
        """Backpropagate ``loss_weight * out.loss``, or ``loss_weight * dlogits`` shaped like out.logits."""
        logits_shape, loss_cache = self._pop_cache()
        loss_gradient = None if loss_cache is None else \
            (lambda w: loss_cache[0](w, loss_cache[1]))                               # (M, V)
        dlogits = self._output_gradient(dlogits, logits_shape, loss_gradient, loss_weight)
        self.base_model.backward(self.mlm_head.backward(dlogits), None)              # (B, T, H) or (M, H)


HEADS = {
    "sequence-classification": BertForSequenceClassification,
    "token-classification": BertForTokenClassification,
    "question-answering": BertForQuestionAnswering,
    "masked-lm": BertForMaskedLM,
}
