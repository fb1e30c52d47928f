import importlib.util
import os

import numpy as np
import pytest

from minibert.modeling import BertConfig


@pytest.fixture
def rng():
    return np.random.default_rng(1234)


def tiny_config(**overrides):
    """A very small BERT for float64 gradient checks (fast enough to differentiate numerically)."""
    values = dict(vocab_size=31, hidden_size=12, num_hidden_layers=2, num_attention_heads=3,
                  intermediate_size=20, max_position_embeddings=16, type_vocab_size=2,
                  hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0)
    values.update(overrides)
    return BertConfig(**values)


def load_script(*parts):
    """A script of the repository as a module: ``load_script("benchmarks", "attention.py")``."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), *parts)
    spec = importlib.util.spec_from_file_location(os.path.splitext(parts[-1])[0], path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module
