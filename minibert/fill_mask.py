"""Fill-mask: the words a masked-language model guesses behind each ``[MASK]`` of a text.

    >>> fill_mask(model, tokenizer, "the [MASK] of a function")
    [[('value', 0.21), ('name', 0.08), ...]]
"""

from __future__ import annotations

import numpy as np

from .backend import to_numpy
from .nn import no_grad


def fill_mask(model, tokenizer, text: str, top_k: int = 5):
    """Predict the tokens hidden behind each ``[MASK]`` of ``text`` with a masked-LM head.

    ``model`` is a :class:`~minibert.modeling.BertForPreTraining` (or any model with
    ``.bert`` and ``.cls.predictions``). Returns one list per mask, in text order, of
    ``(token, probability)`` pairs, most probable first.
    """
    if not isinstance(text, str):
        raise TypeError(f"text must be a str, got {type(text).__name__}")
    if top_k < 1:
        raise ValueError(f"top_k must be at least 1, got {top_k}")
    mask_token, mask_id = tokenizer.mask_token, tokenizer.mask_token_id
    if mask_id is None:
        raise ValueError(f"the vocabulary has no mask token {mask_token!r}")
    ids = tokenizer.encode(text, max_length=model.config.max_position_embeddings, truncation=True)
    positions = [i for i, t in enumerate(ids) if t == mask_id]
    if not positions:
        if mask_token in text:
            raise ValueError(f"the text is longer than the model's {model.config.max_position_embeddings} "
                             f"tokens and its {mask_token} lies beyond them: shorten the text")
        raise ValueError(f"no {mask_token} in the text: write {mask_token} where a word should be guessed")
    model.eval()                                                              # no dropout
    with no_grad():
        hidden, _ = model.bert.forward(np.asarray([ids]), output_positions=positions)   # (K, H)
        logits = model.cls.predictions.forward(hidden)                       # (K, V)
    logits = to_numpy(logits).astype(np.float64)
    logits -= logits.max(axis=1, keepdims=True)
    probs = np.exp(logits)
    probs /= probs.sum(axis=1, keepdims=True)
    results = []
    for row in probs:
        best = np.argsort(-row, kind="stable")[:top_k]
        results.append([(tokenizer.convert_ids_to_tokens(int(i)), float(row[i])) for i in best])
    return results
