"""minibert: BERT from scratch on NumPy (and CuPy), with hand-written backward passes.

The names most programs need are importable from the package itself::

    from minibert import BertConfig, BertForPreTraining, BertTokenizer, AdamW

Each is loaded on first use from the module that defines it (listed in ``_EXPORTS``), so
``import minibert`` alone stays cheap: the command line imports it before it knows which
job it will run.
"""

from __future__ import annotations

import importlib

__version__ = "0.1.0"

# public name -> the module that defines it
_EXPORTS = {
    "BertConfig": "minibert.config",
    "BertModel": "minibert.modeling",
    "BertForPreTraining": "minibert.modeling",
    "BertForSequenceClassification": "minibert.heads",
    "BertForTokenClassification": "minibert.heads",
    "BertForQuestionAnswering": "minibert.heads",
    "BertForMaskedLM": "minibert.heads",
    "BertTokenizer": "minibert.tokenization",
    "RobertaTokenizer": "minibert.bpe",
    "RobertaConfig": "minibert.config",
    "RobertaModel": "minibert.roberta",
    "RobertaForMaskedLM": "minibert.roberta",
    "RobertaForSequenceClassification": "minibert.roberta",
    "RobertaForTokenClassification": "minibert.roberta",
    "RobertaForQuestionAnswering": "minibert.roberta",
    "DistilBertConfig": "minibert.config",
    "DistilBertModel": "minibert.distilbert",
    "DistilBertForMaskedLM": "minibert.distilbert",
    "DistilBertForSequenceClassification": "minibert.distilbert",
    "DistilBertForTokenClassification": "minibert.distilbert",
    "DistilBertForQuestionAnswering": "minibert.distilbert",
    "AdamW": "minibert.optim",
    "SGD": "minibert.optim",
    "Trainer": "minibert.training",
    "TrainingArguments": "minibert.training",
    "SentenceEncoder": "minibert.sentence_embeddings",
    "no_grad": "minibert.nn",
}

__all__ = list(_EXPORTS)


def __getattr__(name: str):
    """Import the module that defines ``name`` and keep the value here for later lookups."""
    module_name = _EXPORTS.get(name)
    if module_name is None:
        raise AttributeError(f"module 'minibert' has no attribute {name!r}")
    value = getattr(importlib.import_module(module_name), name)
    globals()[name] = value
    return value


def __dir__():
    return sorted(set(globals()) | set(__all__))
