"""Attention maps: where each head looks, for one sentence, drawn as heat maps.

Every head of every layer computes, for each token (a *query*, one row), a probability
distribution over the tokens it may attend to (the *keys*, the columns):

    p = softmax(q k^T / sqrt(D) + mask)        (N, T, T) per layer, each row sums to 1

A heat map of ``p`` shows a head's habit: looking at the previous or next token, at
``[SEP]`` or ``[CLS]`` (a common "no-op" for heads with nothing to do), at the same word, or
spreading out evenly.

Where the probabilities come from: ``BertModel.forward(..., output_attentions=True)`` returns
each layer's ``p`` beside the usual outputs (computed by the naive attention op, whatever
``attn_implementation`` the model uses, since the tiled op never forms ``p``).

Shapes: N heads of a layer, T tokens of the sentence, L layers.
"""

from __future__ import annotations

import math

from .backend import to_numpy
from .nn import no_grad
from .plots import pyplot
from .prune import encoder, original_head_numbers

def attention_probabilities(model, tokenizer, text: str, text_pair: str | None = None):
    """(tokens, [p of layer 0, p of layer 1, ...]) for one sentence (or pair), p of shape (N_l, T, T).

    ``model``: a BertModel or any model with one in ``.bert`` (a fine-tuning head's).
    """
    bert = encoder(model)
    encoded = tokenizer([text], None if text_pair is None else [text_pair],
                        max_length=bert.config.max_position_embeddings, truncation=True)
    tokens = tokenizer.convert_ids_to_tokens([int(i) for i in encoded["input_ids"][0]])
    was_training = bert.training
    bert.eval()                                        # no dropout: the probabilities themselves
    try:
        with no_grad():
            _, _, attentions = bert.forward(encoded["input_ids"], encoded["token_type_ids"],
                                            encoded["attention_mask"], output_attentions=True)
    finally:
        bert.train(was_training)
    return tokens, [to_numpy(p[0]) for p in attentions]            # (N_l, T, T) each


def plot_attention_map(model, tokenizer, text: str, path: str, layer: int | None = 0,
                       text_pair: str | None = None, columns: int = 4) -> str | None:
    """Draw the attention of one sentence as heat maps and save a PNG; returns its path.

    ``layer`` an int: one panel per head of that layer, rows = queries, columns = keys, with
    the tokens written along both axes. ``layer=None``: every layer (rows) x every head
    (columns), small panels without token labels, to see the whole model at a glance.
    Heads keep their original numbers in a model whose heads were pruned.
    """
    plt = pyplot()
    tokens, maps = attention_probabilities(model, tokenizer, text, text_pair)
    numbers = original_head_numbers(encoder(model))
    if layer is not None:
        if not -len(maps) <= layer < len(maps):
            raise ValueError(f"layer {layer} does not exist (the model has {len(maps)} layers)")
        layer = layer % len(maps)
        return _plot_one_layer(plt, tokens, maps[layer], numbers[layer], layer, path, columns)
    return _plot_all_layers(plt, tokens, maps, numbers, path)


def _plot_one_layer(plt, tokens, probabilities, head_numbers, layer, path, columns):
    heads, length = probabilities.shape[0], len(tokens)
    columns = max(1, min(columns, heads))
    rows = math.ceil(heads / columns)
    size = 1.0 + 0.22 * length                                     # inches per panel
    fig, axes = plt.subplots(rows, columns, figsize=(columns * size + 1.0, rows * size + 0.6), squeeze=False,
                             layout="constrained")
    for k, ax in enumerate(axes.flat):
        if k >= heads:
            ax.axis("off")
            continue
        image = ax.imshow(probabilities[k], cmap="viridis", vmin=0.0, vmax=1.0)
        ax.set_title(f"head {head_numbers[k]}", fontsize=9)
        ax.set_xticks(range(length))
        ax.set_yticks(range(length))
        bottom_of_its_column, left_column = k + columns >= heads, k % columns == 0
        ax.set_xticklabels(tokens if bottom_of_its_column else [], rotation=90, fontsize=7)
        ax.set_yticklabels(tokens if left_column else [], fontsize=7)
        ax.tick_params(length=0)
    fig.suptitle(f"layer {layer}: how much each token (row, query) attends to each token (column, key)",
                 fontsize=10)
    fig.colorbar(image, ax=axes, shrink=0.6, label="attention probability")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


def _plot_all_layers(plt, tokens, maps, numbers, path):
    """Layers down, heads (original numbers) across; a pruned head's cell is left empty."""
    layers, heads = len(maps), max(max(n) for n in numbers) + 1
    fig, axes = plt.subplots(layers, heads, figsize=(0.8 * heads + 1.2, 0.8 * layers + 0.9), squeeze=False,
                             layout="constrained")
    for l, (probabilities, head_numbers) in enumerate(zip(maps, numbers)):
        for h in range(heads):
            ax = axes[l, h]
            ax.set_xticks([])
            ax.set_yticks([])
            if h in head_numbers:
                image = ax.imshow(probabilities[head_numbers.index(h)], cmap="viridis", vmin=0.0, vmax=1.0)
            else:
                ax.text(0.5, 0.5, "pruned", ha="center", va="center", fontsize=6, transform=ax.transAxes)
            if l == 0:
                ax.set_title(f"head {h}", fontsize=7)
            if h == 0:
                ax.set_ylabel(f"layer {l}", fontsize=7)
    fig.suptitle("attention maps of every layer and head (rows: queries, columns: keys) for\n"
                 + " ".join(tokens), fontsize=8)
    fig.colorbar(image, ax=axes, shrink=0.5, label="attention probability")
    fig.savefig(path, dpi=90)
    plt.close(fig)
    return path


__all__ = ["attention_probabilities", "plot_attention_map"]
