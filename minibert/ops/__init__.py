"""Ops: pure forward/backward pairs with explicit caches.

Each op is ``y, cache = name_forward(inputs...)`` and ``grads = name_backward(dy, cache)``,
side by side in one file, with the formula, shapes, cache and derivative in its docstring.
Ops know nothing of BERT or modules; they take their array module (NumPy or CuPy) from
their inputs.
"""

from .activations import (
    ACTIVATIONS,
    gelu_backward,
    gelu_forward,
    gelu_tanh_backward,
    gelu_tanh_forward,
    relu_backward,
    relu_forward,
    tanh_backward,
    tanh_forward,
)
from .adamw import adamw_update
from .attention import attention_backward, attention_forward
from .cosine_embedding import cosine_embedding_backward, cosine_embedding_forward
from .cross_entropy import IGNORE_INDEX, cross_entropy_backward, cross_entropy_forward
from .distillation import distillation_backward, distillation_forward
from .dropout import dropout_backward, dropout_forward
from .embedding import embedding_backward, embedding_forward
from .flash_attention import flash_attention_backward, flash_attention_forward
from .layer_norm import layer_norm_backward, layer_norm_forward
from .linear import linear_backward, linear_forward
from .mse import mse_backward, mse_forward
from .softmax import softmax_backward, softmax_forward

__all__ = [name for name in dir() if name.endswith(("_forward", "_backward"))] + [
    "ACTIVATIONS", "IGNORE_INDEX", "adamw_update",
]
