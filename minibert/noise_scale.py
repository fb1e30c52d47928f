"""The gradient noise scale: how large a batch still helps (McCandlish et al., 2018).

Let ``G`` be the true gradient and ``Σ`` the covariance of one example's gradient. The mean
gradient of a batch of ``B`` independent examples, ``G_B``, has

    E |G_B|² = |G|² + tr(Σ) / B.

Measure ``|G_B|²`` at two batch sizes, a small one ``b`` and a big one ``B``, and solve the
two equations for the two unknowns:

    |G|²  ≈ (B |G_B|² − b |G_b|²) / (B − b)
    tr(Σ) ≈ (|G_b|² − |G_B|²) / (1/b − 1/B)

Each of these is unbiased but noisy, so both are averaged over steps (an exponential moving
average) before their ratio is taken:

    B_noise = tr(Σ) / |G|²

the *simple noise scale*. Below it, doubling the batch nearly halves the steps needed (the
gradient is mostly noise); well above it, a larger batch buys almost nothing. It estimates
the critical batch size.

Gradient accumulation gives both sizes for free: the gradient after the first micro-batch
is a small-batch gradient (``b`` examples; the loop weights it by its share ``b/B``, so it is
divided by that share), and the accumulated gradient is the big-batch one (``B`` examples).
"""

from __future__ import annotations

import math
from dataclasses import dataclass


def two_batch_estimates(small_sq: float, big_sq: float, b_small: int, b_big: int) -> tuple[float, float]:
    """One step's unbiased estimates ``(|G|², tr Σ)`` from ``|G_b|²`` and ``|G_B|²`` (see above)."""
    if not 0 < b_small < b_big:
        raise ValueError(f"the noise scale needs two batch sizes 0 < small < big, got {b_small} and {b_big}")
    gradient_sq = (b_big * big_sq - b_small * small_sq) / (b_big - b_small)
    trace = (small_sq - big_sq) / (1.0 / b_small - 1.0 / b_big)
    return gradient_sq, trace


@dataclass
class GradientNoiseScale:
    """Moving averages of ``|G|²`` and ``tr Σ``, and their ratio, the noise scale."""

    decay: float = 0.95              # weight of the past in the moving averages
    gradient_sq: float = 0.0
    trace: float = 0.0
    updates: int = 0

    def update(self, small_sq: float, big_sq: float, b_small: int, b_big: int) -> float:
        """Add one step's two squared norms; returns the current noise scale (nan at first)."""
        gradient_sq, trace = two_batch_estimates(small_sq, big_sq, b_small, b_big)
        if math.isfinite(gradient_sq) and math.isfinite(trace):
            self.gradient_sq = self.decay * self.gradient_sq + (1 - self.decay) * gradient_sq
            self.trace = self.decay * self.trace + (1 - self.decay) * trace
            self.updates += 1
        return self.value

    @property
    def value(self) -> float:
        """``tr Σ / |G|²`` from the averages (the bias corrections cancel in the ratio)."""
        if self.updates == 0 or self.gradient_sq <= 0:
            return math.nan
        return self.trace / self.gradient_sq
