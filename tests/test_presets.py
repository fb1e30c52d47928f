"""The size presets against the BERT paper's parameter counts (110 M for base, 340 M for large)."""

import pytest

from minibert.modeling import BertConfig, BertModel


def parameter_count(config: BertConfig) -> int:
    """BertModel's parameters, from the configuration alone (no weights allocated)."""
    h, i, layers = config.hidden_size, config.intermediate_size, config.num_hidden_layers
    embeddings = (config.vocab_size + config.max_position_embeddings + config.type_vocab_size) * h + 2 * h
    attention = 4 * (h * h + h) + 2 * h                      # query, key, value, output; LayerNorm
    feed_forward = (h * i + i) + (i * h + h) + 2 * h          # dense up, dense down; LayerNorm
    pooler = h * h + h
    return embeddings + layers * (attention + feed_forward) + pooler


@pytest.mark.parametrize("preset", ["tiny", "mini", "small"])
def test_the_count_formula_matches_the_model(preset):
    config = BertConfig.preset(preset, vocab_size=1000)
    assert parameter_count(config) == BertModel(config).num_parameters()


@pytest.mark.parametrize("preset, millions, exact", [("base", 110, 109_482_240), ("large", 340, 335_141_888)])
def test_base_and_large_have_the_papers_sizes(preset, millions, exact):
    count = parameter_count(BertConfig.preset(preset, vocab_size=30522))    # bert-base-uncased's vocabulary
    assert count == exact                                     # what transformers' BertModel counts
    assert count == pytest.approx(millions * 1e6, rel=0.02)   # the paper rounds: 110 M and 340 M
