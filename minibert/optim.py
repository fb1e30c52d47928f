"""Optimizers, learning-rate schedules and gradient clipping.

An optimizer sees named parameters only: ``(name, Parameter)`` pairs, where the names are
the Hugging Face state-dict keys (``bert.encoder.layer.0.attention.output.LayerNorm.weight``).
The names decide which parameters get weight decay. Every update is done in place on
``param.data`` (other code may hold views of it), on NumPy or CuPy alike::

    opt = AdamW(model.named_parameters(), lr=1e-4, weight_decay=0.01)
    for step in range(total_steps):
        opt.lr = linear_warmup_linear_decay(step, 1e-4, warmup_steps, total_steps)
        loss = ...; model.backward(...)            # fills param.grad
        clip_grad_norm(model.named_parameters(), max_norm=1.0)
        opt.step()
        opt.zero_grad()

Notation in the formulas below: ``p`` a parameter, ``g`` its gradient, ``t`` the number of
the update being made (1 for the first), ``lr`` the learning rate, ``wd`` the weight decay.
"""

from __future__ import annotations

import math
from typing import Callable

import numpy as np

from .backend import device_of, get_array_module, is_int_at_least, to_device, to_numpy
from .nn import Parameter
from .registry import implementation

# Original BERT (and Hugging Face's examples) exclude biases and LayerNorm parameters from
# weight decay: shrinking a bias or a normalisation gain towards zero is not regularisation.
DEFAULT_NO_DECAY = ("bias", "LayerNorm.weight", "LayerNorm.bias")


# --------------------------------------------------------------------------- helpers
def _check_number(name: str, value, *, low=None, high=None, low_inclusive=True, high_inclusive=False):
    """Raise ValueError naming ``name`` unless ``value`` is a finite number in the range."""
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"{name} must be a number, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value!r}")
    if low is not None and (value < low or (value == low and not low_inclusive)):
        bound = ">=" if low_inclusive else ">"
        raise ValueError(f"{name} must be {bound} {low:g}, got {value!r}")
    if high is not None and (value > high or (value == high and not high_inclusive)):
        bound = "<=" if high_inclusive else "<"
        raise ValueError(f"{name} must be {bound} {high:g}, got {value!r}")
    return value


def _named(params) -> list[tuple[str, Parameter]]:
    """Normalise ``params`` to a list of (name, Parameter).

    Accepts ``model.named_parameters()``, a ``{name: Parameter}`` dict, or bare Parameters
    (which are then called "0", "1", ...: no name matches a no-decay pattern).
    """
    if hasattr(params, "named_parameters") and callable(params.named_parameters):
        raise TypeError(f"give the optimizer {type(params).__name__}.named_parameters(), not the model itself")
    if isinstance(params, dict):
        params = params.items()
    named = []
    for i, item in enumerate(params):
        if isinstance(item, Parameter):
            named.append((str(i), item))
        elif (isinstance(item, tuple) and len(item) == 2 and isinstance(item[0], str)
              and isinstance(item[1], Parameter)):
            named.append(item)
        else:
            raise TypeError(
                "expected (name, Parameter) pairs such as model.named_parameters(), "
                f"or Parameters; item {i} is {type(item).__name__}"
            )
    return named


class Optimizer:
    """What SGD and AdamW share: named parameters, the learning rate, the step count,
    per-parameter state buffers, ``zero_grad`` and ``state_dict`` / ``load_state_dict``.

    Sub-classes list their buffers in ``buffer_names`` (e.g. ``("m", "v")``) and write
    ``_update(name, param, buffers, weight_decay)`` (``weight_decay`` is 0 for a no-decay name).
    """

    buffer_names: tuple[str, ...] = ()

    def __init__(self, named_parameters, lr, weight_decay, no_decay):
        self.params = _named(named_parameters)
        if not self.params:
            raise ValueError("the optimizer got no parameters (is named_parameters() empty?)")
        names = [name for name, _ in self.params]
        if len(set(names)) != len(names):
            duplicates = sorted({n for n in names if names.count(n) > 1})
            raise ValueError(f"parameter names must be unique, got duplicates {duplicates[:5]}")
        self.lr = lr
        self.weight_decay = _check_number("weight_decay", weight_decay, low=0.0)
        if isinstance(no_decay, str) or not all(isinstance(p, str) and p for p in no_decay):
            raise TypeError(f"no_decay must be a list of non-empty name patterns such as ['bias'], got {no_decay!r}")
        self.no_decay = tuple(no_decay)
        # A parameter is excluded from weight decay when any pattern is a substring of its name.
        self.decays = {name: not any(pattern in name for pattern in self.no_decay)
                       for name, _ in self.params}
        self.step_count = 0          # number of updates made so far
        self.state = {name: {b: get_array_module(p.data).zeros_like(p.data) for b in self.buffer_names}
                      for name, p in self.params}
        self._scratch = None         # see _scratch_like

    # ------------------------------------------------------------------ learning rate
    @property
    def lr(self) -> float:
        return self._lr

    @lr.setter
    def lr(self, value) -> None:
        self._lr = _check_number("lr", value, low=0.0)

    # ------------------------------------------------------------------ stepping
    def zero_grad(self) -> None:
        """Set every gradient to zero, in place."""
        for _, p in self.params:
            p.grad.fill(0)

    def step(self) -> None:
        """Make one update of every parameter from its ``.grad``."""
        self.step_count += 1
        for name, p in self.params:
            buffers = self.state[name]
            for b in self.buffer_names:
                if buffers[b].shape != p.data.shape:
                    raise ValueError(f"parameter {name} has shape {tuple(p.data.shape)} but its optimizer state "
                                     f"{tuple(buffers[b].shape)}: the model changed (pruned?) after the "
                                     "optimizer was made; make the optimizer afterwards")
                if device_of(buffers[b]) != device_of(p.data) or buffers[b].dtype != p.data.dtype:
                    # The model was moved or cast (model.to(...)) after the optimizer was built.
                    buffers[b] = to_device(buffers[b], device_of(p.data)).astype(p.data.dtype)
            self._update(name, p, buffers, self.weight_decay if self.decays[name] else 0.0)

    def _update(self, name, param, buffers, weight_decay):  # pragma: no cover - abstract
        raise NotImplementedError

    def _scratch_like(self, array):
        """A temporary array shaped like ``array``, carved from one buffer reused by every
        parameter at every step (as large as the largest parameter), instead of a new
        allocation per parameter per step."""
        xp = get_array_module(array)
        buffer = self._scratch
        if buffer is None or buffer.dtype != array.dtype or get_array_module(buffer) is not xp:
            largest = max(p.data.size for _, p in self.params)
            buffer = self._scratch = xp.empty(largest, dtype=array.dtype)
        return buffer[: array.size].reshape(array.shape)

    # ------------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        """Everything needed to continue exactly: plain numbers and host (NumPy) arrays.

        ``{"optimizer": "AdamW", "step": t, "lr": lr, "m.<param name>": array, ...}``.
        The arrays are copies (later steps do not change a saved state), so the numbers can
        go to JSON and the arrays to a safetensors file.
        """
        state = {"optimizer": type(self).__name__, "step": self.step_count, "lr": self.lr}
        for name, buffers in self.state.items():
            for b in self.buffer_names:
                state[f"{b}.{name}"] = np.array(to_numpy(buffers[b]), copy=True)
        return state

    def load_state_dict(self, state: dict) -> None:
        """Restore a :meth:`state_dict`: buffers are copied into place (device and dtype kept)."""
        kind = state.get("optimizer", type(self).__name__)
        if kind != type(self).__name__:
            raise ValueError(f"this is a {kind} state, not a {type(self).__name__} state")
        missing = [f"{b}.{name}" for name in self.state for b in self.buffer_names
                   if f"{b}.{name}" not in state]
        if missing:
            raise KeyError(f"optimizer state is missing {len(missing)} buffers, e.g. {missing[:3]} "
                           "(was it saved for a different model?)")
        for name, buffers in self.state.items():
            for b in self.buffer_names:
                saved = state[f"{b}.{name}"]
                if tuple(saved.shape) != tuple(buffers[b].shape):
                    raise ValueError(f"optimizer buffer {b}.{name} has shape {tuple(saved.shape)}, "
                                     f"expected {tuple(buffers[b].shape)}")
                xp = get_array_module(buffers[b])
                buffers[b][...] = xp.asarray(saved, dtype=buffers[b].dtype)
        self.step_count = int(state["step"])
        if "lr" in state:
            self.lr = state["lr"]


# --------------------------------------------------------------------------- SGD
class SGD(Optimizer):
    """Stochastic gradient descent with (heavy-ball) momentum and L2 weight decay.

    For each parameter, with ``buf`` starting at zero::

        g   = g + wd * p             (wd = 0 for names matching ``no_decay``)
        buf = momentum * buf + g
        p   = p - lr * buf

    With ``momentum=0`` this is plain ``p -= lr * g``. (Same rule as ``torch.optim.SGD``
    without dampening or Nesterov.)
    """

    buffer_names = ("momentum",)

    def __init__(self, named_parameters, lr, momentum=0.0, weight_decay=0.0, no_decay=DEFAULT_NO_DECAY):
        self.momentum = _check_number("momentum", momentum, low=0.0, high=1.0, high_inclusive=False)
        super().__init__(named_parameters, lr, weight_decay, no_decay)

    def _update(self, name, param, buffers, weight_decay):
        xp = get_array_module(param.data)
        p, g, buf = param.data, param.grad, buffers["momentum"]
        tmp = self._scratch_like(p)
        # buf = momentum * buf + g + wd * p
        buf *= self.momentum
        buf += g
        if weight_decay:
            xp.multiply(p, weight_decay, out=tmp)
            buf += tmp
        # p = p - lr * buf
        xp.multiply(buf, self.lr, out=tmp)
        p -= tmp


# --------------------------------------------------------------------------- AdamW
class AdamW(Optimizer):
    """Adam with decoupled weight decay.

    For each parameter, with ``m`` and ``v`` starting at zero::

        m = beta1 * m + (1 - beta1) * g                  running mean of gradients
        v = beta2 * v + (1 - beta2) * g^2                running mean of squared gradients

    ``bias_correction=False``, original BERT's AdamWeightDecayOptimizer::

        p = p - lr * (m / (sqrt(v) + eps) + wd * p)

    ``bias_correction=True``, the rule of ``torch.optim.AdamW``::

        p = p - lr * wd * p                              (decay first, with the old p)
        p = p - lr * m_hat / (sqrt(v_hat) + eps)         m_hat = m / (1 - beta1^t)
                                                         v_hat = v / (1 - beta2^t)

    Both apply the decay to the parameter before this step (the code computes both as
    ``p * (1 - lr * wd) - lr * step``, equal up to rounding), so the two differ only in the
    bias correction (early in training m and v, started at zero, underestimate the true
    means; dividing by ``1 - beta^t`` undoes that). ``wd`` is 0 for parameters whose name
    contains a ``no_decay`` pattern (biases and LayerNorm by default). The decay is
    "decoupled": it shrinks ``p`` directly instead of being added to ``g``, so it does not
    pass through Adam's per-coordinate scaling.
    """

    buffer_names = ("m", "v")

    def __init__(self, named_parameters, lr=1e-4, betas=(0.9, 0.999), eps=1e-6, weight_decay=0.01,
                 bias_correction=True, no_decay=DEFAULT_NO_DECAY):
        if not isinstance(betas, (tuple, list)) or len(betas) != 2:
            raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
        self.betas = (_check_number("betas[0]", betas[0], low=0.0, high=1.0),
                      _check_number("betas[1]", betas[1], low=0.0, high=1.0))
        self.eps = _check_number("eps", eps, low=0.0, low_inclusive=False)
        self.bias_correction = bool(bias_correction)
        super().__init__(named_parameters, lr, weight_decay, no_decay)

    def _update(self, name, param, buffers, weight_decay):
        update, _ = implementation("adamw_update", param.data)     # ops/adamw.py: the rule above
        update(param.data, param.grad, buffers["m"], buffers["v"], lr=self.lr, betas=self.betas, eps=self.eps,
               weight_decay=weight_decay, step=self.step_count, bias_correction=self.bias_correction,
               scratch=self._scratch_like(param.data))


# --------------------------------------------------------------------------- schedules
# A schedule is a plain function: the learning rate for update number ``step``, counting
# the updates already made (0 for the first update), as Hugging Face's schedules do.

def _check_schedule(step, base_lr, warmup_steps, total_steps):
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}")
    _check_number("base_lr", base_lr, low=0.0)
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if total_steps is not None:
        if total_steps <= 0:
            raise ValueError(f"total_steps must be > 0, got {total_steps}")
        if warmup_steps > total_steps:
            raise ValueError(f"warmup_steps ({warmup_steps}) must be <= total_steps ({total_steps})")


def constant(step, base_lr, warmup_steps=0, total_steps=None):
    """``base_lr`` throughout, after an optional linear warmup (``base_lr * step / warmup_steps``)."""
    _check_schedule(step, base_lr, warmup_steps, total_steps)
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return float(base_lr)


def linear_warmup_linear_decay(step, base_lr, warmup_steps, total_steps):
    """BERT's schedule: up from 0 to ``base_lr`` linearly, then down to 0 linearly at the end.

    lr = base_lr * step / warmup_steps                                   step < warmup_steps
    lr = base_lr * (total_steps - step) / (total_steps - warmup_steps)   afterwards (>= 0)
    """
    _check_schedule(step, base_lr, warmup_steps, total_steps)
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    return base_lr * max(0.0, (total_steps - step) / max(1, total_steps - warmup_steps))


def warmup_cosine(step, base_lr, warmup_steps, total_steps, min_lr=0.0):
    """Linear warmup, then half a cosine from ``base_lr`` down to ``min_lr`` at ``total_steps``.

    lr = base_lr * step / warmup_steps                                   step < warmup_steps
    lr = min_lr + (base_lr - min_lr) * (1 + cos(pi * progress)) / 2     afterwards,
         progress = (step - warmup_steps) / (total_steps - warmup_steps), at most 1
    """
    _check_schedule(step, base_lr, warmup_steps, total_steps)
    _check_number("min_lr", min_lr, low=0.0, high=base_lr, high_inclusive=True)
    if step < warmup_steps:
        return base_lr * step / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return min_lr + (base_lr - min_lr) * 0.5 * (1.0 + math.cos(math.pi * progress))


SCHEDULES = {
    "linear": linear_warmup_linear_decay,
    "cosine": warmup_cosine,
    "constant": constant,
}


def get_schedule(name: str, base_lr, warmup_steps=0, total_steps=None) -> Callable[[int], float]:
    """The schedule called ``name`` ("linear", "cosine", "constant") as a function of the step."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}: expected one of {sorted(SCHEDULES)}")
    if name != "constant" and total_steps is None:
        raise ValueError(f"the {name!r} schedule needs total_steps")
    schedule = SCHEDULES[name]
    _check_schedule(0, base_lr, warmup_steps, total_steps)     # fail now, not at step 1000

    def lr_at(step: int) -> float:
        return schedule(step, base_lr, warmup_steps, total_steps)

    lr_at.__name__ = f"{name}_schedule"
    return lr_at


# --------------------------------------------------------------------------- clipping
def clip_grad_norm(params, max_norm) -> float:
    """Scale all gradients together so that their global L2 norm is at most ``max_norm``.

    total_norm = sqrt(sum over parameters of sum(g^2))
    if total_norm > max_norm:  g = g * max_norm / (total_norm + 1e-6)   for every g

    Returns ``total_norm`` before clipping, as a float. A non-finite norm (a NaN or inf
    gradient) is returned as is and the gradients are left alone, so the caller can detect it.
    ``params`` may be named parameters or bare Parameters.
    """
    max_norm = _check_number("max_norm", max_norm, low=0.0, low_inclusive=False)
    grads = [p.grad for _, p in _named(params)]
    if not grads:
        return 0.0
    xp = get_array_module(grads[0])
    squares = xp.stack([xp.vdot(g.ravel(), g.ravel()).astype(xp.float64) for g in grads])
    total_norm = float(xp.sqrt(squares.sum()))       # one transfer to the host
    if math.isfinite(total_norm) and total_norm > max_norm:
        scale = max_norm / (total_norm + 1e-6)
        for g in grads:
            g *= scale
    return total_norm


# --------------------------------------------------------------------------- mixed precision
class DynamicLossScaler:
    """Dynamic loss scaling for float16 matrix products (``model.set_matmul_dtype(np.float16)``).

    Gradients below float16's smallest subnormal (6e-8) become 0 in a float16 product. So
    the backward pass starts from ``scale * loss`` instead of ``loss``: every gradient is
    ``scale`` times larger on the way down, and :meth:`unscale` divides the parameters'
    (float32) gradients by ``scale`` before the update. Too large a scale overflows to inf
    instead; then the step is skipped and the scale shrinks:

        finite gradients:  update;  after ``growth_interval`` such steps in a row, scale *= growth_factor
        inf or NaN:        no update;  scale *= backoff_factor

    so the scale settles just below where overflow starts. Use::

        model.backward(mlm_weight=scaler.scale, nsp_weight=scaler.scale)
        if scaler.unscale(model.named_parameters()):     # False: an overflow, skip this step
            optimizer.step()
        scaler.update()
        optimizer.zero_grad()
    """

    def __init__(self, init_scale: float = 2.0 ** 16, growth_factor: float = 2.0,
                 backoff_factor: float = 0.5, growth_interval: int = 2000, min_scale: float = 1.0):
        self.scale = _check_number("init_scale", init_scale, low=0.0, low_inclusive=False)
        self.growth_factor = _check_number("growth_factor", growth_factor, low=1.0, low_inclusive=False)
        self.backoff_factor = _check_number("backoff_factor", backoff_factor, low=0.0, high=1.0,
                                            low_inclusive=False)
        if not is_int_at_least(growth_interval, 1):
            raise ValueError(f"growth_interval must be a positive integer, got {growth_interval!r}")
        self.growth_interval = int(growth_interval)
        self.min_scale = _check_number("min_scale", min_scale, low=0.0, low_inclusive=False)
        self.good_steps = 0              # finite steps since the scale last changed
        self.found_overflow = False      # what the last unscale() found

    def unscale(self, params) -> bool:
        """Divide every gradient by the scale, in place; True when all of them are finite."""
        grads = [p.grad for _, p in _named(params)]
        if not grads:
            self.found_overflow = False
            return True
        xp = get_array_module(grads[0])
        inverse = 1.0 / self.scale
        for g in grads:
            g *= inverse
        # one reduction per gradient, one transfer to the host for the whole model
        finite = xp.stack([xp.isfinite(g).all() for g in grads]).all()
        self.found_overflow = not bool(finite)
        return not self.found_overflow

    def update(self) -> None:
        """Adjust the scale after a step, from what :meth:`unscale` found."""
        if self.found_overflow:
            self.scale = max(self.scale * self.backoff_factor, self.min_scale)
            self.good_steps = 0
        else:
            self.good_steps += 1
            if self.good_steps == self.growth_interval:
                self.scale *= self.growth_factor
                self.good_steps = 0

    def state_dict(self) -> dict:
        return {"scale": self.scale, "good_steps": self.good_steps}

    def load_state_dict(self, state: dict) -> None:
        self.scale = _check_number("scale", state["scale"], low=0.0, low_inclusive=False)
        self.good_steps = int(state["good_steps"])
