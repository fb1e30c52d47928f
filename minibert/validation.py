"""Input checks at the model's public boundary: clear errors for wrong ids, masks and labels.

Every model runs these before any computation, so a wrong shape, a token id outside the
vocabulary, a too-long sequence or a mask that is not 0/1 is refused with a message naming
what was expected and what came, instead of failing somewhere deep in an op.
"""

from __future__ import annotations

import numpy as np

from .backend import to_device, xp_for_device


def check_inputs(config, device, dtype, input_ids, token_type_ids=None, attention_mask=None):
    """Validate the inputs at the public boundary and put them on the model's device.

    Returns (input_ids, token_type_ids, additive_mask) with the mask as (B, 1, 1, T):
    0 where a key may be attended to, the dtype's most negative value where it is padding.
    """
    xp = xp_for_device(device)
    ids = as_int_array(input_ids, "input_ids", xp)
    if ids.ndim != 2:
        raise ValueError(f"input_ids must have shape (batch, sequence), got shape {tuple(ids.shape)}"
                         + (" (use ids[None] for a single sequence)" if ids.ndim == 1 else ""))
    batch, length = ids.shape
    if length == 0 or batch == 0:
        raise ValueError(f"input_ids is empty: shape {tuple(ids.shape)}")
    if length > config.max_sequence_length:
        room = ("" if config.max_sequence_length == config.max_position_embeddings else
                f": {config.max_sequence_length} tokens, as positions start after pad_token_id {config.pad_token_id}")
        raise ValueError(f"sequence length {length} exceeds max_position_embeddings "
                         f"({config.max_position_embeddings}){room}; truncate the input")
    check_range(ids, 0, config.vocab_size, "input_ids", "vocab_size")
    if token_type_ids is None:
        token_type_ids = xp.zeros_like(ids)
    else:
        token_type_ids = as_int_array(token_type_ids, "token_type_ids", xp)
        check_shape(token_type_ids, ids.shape, "token_type_ids")
        check_range(token_type_ids, 0, config.type_vocab_size, "token_type_ids", "type_vocab_size")
    if attention_mask is None:
        additive_mask = None
    else:
        attention_mask = xp.asarray(to_device(attention_mask, device))
        check_shape(attention_mask, ids.shape, "attention_mask")
        if attention_mask.dtype.kind not in "biuf":
            raise TypeError(f"attention_mask must hold numbers 0/1, got dtype {attention_mask.dtype}")
        if not bool(((attention_mask == 0) | (attention_mask == 1)).all()):
            raise ValueError("attention_mask must hold only 1 (a real token) and 0 (padding)")
        additive_mask = (1.0 - attention_mask.astype(dtype)) * np.finfo(dtype).min
        additive_mask = additive_mask[:, None, None, :]                  # (B, 1, 1, T)
    return ids, token_type_ids, additive_mask


def as_int_array(values, name, xp):
    try:
        array = xp.asarray(to_device(values, "cpu" if xp is np else "cuda"))
    except ValueError:                      # NumPy: "inhomogeneous shape"
        raise ValueError(f"{name} must be a rectangular array; sequences of different lengths need "
                         "padding (the tokenizer pads a batch, with an attention_mask)") from None
    if array.dtype.kind not in "iu":
        raise TypeError(f"{name} must hold integers, got dtype {array.dtype}")
    return array


def check_shape(array, expected, name, like="like input_ids"):
    if tuple(array.shape) != tuple(expected):
        raise ValueError(f"{name} must have shape {tuple(expected)} {like}, got {tuple(array.shape)}")


def check_range(array, low, high, name, limit_name=None, *, limit=None):
    """Every value in [low, high); the message says where ``high`` comes from: the config
    field ``limit_name`` ("config.vocab_size = 31"), or the words ``limit``."""
    lowest, highest = int(array.min()), int(array.max())
    if lowest < low or highest >= high:
        bad = lowest if lowest < low else highest
        raise ValueError(f"{name} contains {bad}, outside [{low}, {high}) "
                         f"({limit or f'config.{limit_name} = {high}'})")


def check_grad_shape(grad, shape, name):
    if tuple(grad.shape) != tuple(shape):
        raise ValueError(f"{name} must have shape {tuple(shape)}, got {tuple(grad.shape)}")
    return grad
