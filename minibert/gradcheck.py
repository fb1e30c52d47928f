"""Finite-difference gradient checks: the proof that a backward pass is right.

For a scalar loss L(a) and a coordinate a_j, the central difference

    (L(a + eps e_j) - L(a - eps e_j)) / (2 eps)

approximates dL/da_j with an error of order eps^2. In float64 with eps ~ 1e-6 that is far
below the tolerance, so a backward pass that disagrees is wrong, not unlucky.

To check an op with output y (any shape) we make it a scalar with a *random* upstream
gradient g: L = sum(y * g), so dL/dy = g. (An all-ones g would hide errors such as a
transposed or mis-summed gradient; a random one does not.) Large tensors are checked on a
random sample of coordinates. A coordinate passes when

    |analytic - numeric| <= atol + rtol * |numeric|

Three entry points, from the most general to the most convenient:

* :func:`gradcheck` -- any scalar function of arrays that it may perturb in place, with the
  gradients you claim;
* :func:`check_op` -- an op written as ``y, cache = forward(*inputs)`` /
  ``grads = backward(g, cache)``;
* :func:`check_module` -- a :class:`minibert.nn.Module`: its input gradients and every
  parameter's ``.grad``.

Each returns a :class:`GradcheckReport`; ``report.ok`` says whether everything passed and
``str(report)`` lists the worst coordinates of each array.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np

from .backend import get_array_module, is_int_at_least, to_numpy


@dataclass
class ArrayCheck:
    """The comparison for one array: the sampled coordinates and both gradients there."""

    name: str
    shape: tuple
    indices: list          # flat indices that were checked
    analytic: np.ndarray
    numeric: np.ndarray
    atol: float
    rtol: float

    @property
    def errors(self) -> np.ndarray:
        return np.abs(self.analytic - self.numeric)

    @property
    def allowed(self) -> np.ndarray:
        return self.atol + self.rtol * np.abs(self.numeric)

    @property
    def ok(self) -> bool:
        return bool(np.all(self.errors <= self.allowed))

    def worst(self, count: int = 3):
        """(index tuple, analytic, numeric, error) of the worst coordinates, worst first."""
        order = np.argsort(-(self.errors - self.allowed))[:count]
        return [
            (np.unravel_index(self.indices[i], self.shape), self.analytic[i], self.numeric[i], self.errors[i])
            for i in order
        ]


@dataclass
class GradcheckReport:
    checks: list = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def failures(self) -> list:
        return [c for c in self.checks if not c.ok]

    def __str__(self) -> str:
        lines = [f"gradcheck: {'PASS' if self.ok else 'FAIL'} "
                 f"({len(self.checks) - len(self.failures)}/{len(self.checks)} arrays agree)"]
        for c in self.checks:
            status = "ok  " if c.ok else "FAIL"
            lines.append(f"  {status} {c.name} {c.shape}: {len(c.indices)} coords, "
                         f"max |analytic - numeric| = {c.errors.max(initial=0.0):.3e}")
            if not c.ok:
                for idx, a, n, e in c.worst():
                    lines.append(f"         at {tuple(int(i) for i in idx)}: analytic {a:+.8e} "
                                 f"numeric {n:+.8e} (error {e:.2e})")
        return "\n".join(lines)

    def raise_if_failed(self):
        if not self.ok:
            raise AssertionError(str(self))
        return self


def _sample_indices(size: int, samples: int | None, rng) -> np.ndarray:
    if samples is None or size <= samples:
        return np.arange(size)
    return np.sort(rng.choice(size, size=samples, replace=False))


def gradcheck(loss_fn, arrays: dict, grads: dict, *, samples: int | None = 30, eps: float = 1e-6,
              atol: float = 1e-7, rtol: float = 1e-5, seed: int = 0) -> GradcheckReport:
    """Compare claimed gradients with central differences of ``loss_fn``.

    loss_fn:  a function of no arguments returning the scalar loss computed from the
              current contents of ``arrays`` (which the checker perturbs in place and restores).
    arrays:   {name: float64 array} the variables to check (any memory layout).
    grads:    {name: array} the claimed dL/d(array), same shapes.
    samples:  how many coordinates to check per array (None = all).
    """
    if samples is not None and not is_int_at_least(samples, 1):
        raise ValueError(f"samples must be a positive integer or None (all coordinates), got {samples!r}")
    if not eps > 0:
        raise ValueError(f"eps must be positive, got {eps!r}")
    if not arrays:
        raise ValueError("gradcheck got no arrays to check")
    rng = np.random.default_rng(seed)
    report = GradcheckReport()

    def scalar_loss():
        value = loss_fn()
        if np.ndim(value) != 0:
            raise TypeError(f"loss_fn must return a scalar, got an array of shape {np.shape(value)}")
        return float(value)

    for name, array in arrays.items():
        if getattr(array, "dtype", None) != np.float64:
            raise TypeError(f"gradcheck needs float64 arrays for {name!r}, got "
                            f"{getattr(array, 'dtype', type(array).__name__)}: "
                            "float32 rounding is larger than the finite-difference error")
        if name not in grads:
            raise KeyError(f"no claimed gradient for {name!r}")
        claimed = to_numpy(grads[name])
        if tuple(claimed.shape) != tuple(array.shape):
            raise ValueError(f"gradient for {name!r} has shape {tuple(claimed.shape)}, the array {tuple(array.shape)}")
        claimed = claimed.reshape(-1)
        indices = _sample_indices(array.size, samples, rng)
        numeric = np.empty(len(indices))
        for n, i in enumerate(indices):
            where = np.unravel_index(i, array.shape)       # any memory layout: written in place
            original = float(array[where])
            array[where] = original + eps
            plus = scalar_loss()
            array[where] = original - eps
            minus = scalar_loss()
            array[where] = original
            numeric[n] = (plus - minus) / (2 * eps)
        report.checks.append(ArrayCheck(name, tuple(array.shape), list(indices),
                                        claimed[indices].astype(np.float64), numeric, atol, rtol))
    return report


def _random_like(y, rng):
    xp = get_array_module(y)
    return xp.asarray(rng.standard_normal(y.shape))


def check_op(forward, backward, inputs, wrt=None, *, names=None, seed: int = 0, **kwargs) -> GradcheckReport:
    """Check an op ``y, cache = forward(*inputs)`` / ``grads = backward(g, cache)``.

    inputs: the op's arguments (float64 arrays and anything else, e.g. integer ids).
    wrt:    positions of the inputs whose gradients ``backward`` returns, in the order it
            returns them (default: every float array among the inputs).
    Other keyword arguments go to :func:`gradcheck` (samples, eps, atol, rtol).
    """
    inputs = list(inputs)
    if wrt is None:
        wrt = [i for i, x in enumerate(inputs) if hasattr(x, "dtype") and x.dtype.kind == "f"]
    if not wrt:
        raise ValueError("check_op found no float array among the inputs to check (give wrt=...)")
    names = names or [f"input{i}" for i in wrt]
    if len(names) != len(wrt):
        raise ValueError(f"{len(names)} names for {len(wrt)} checked inputs (wrt = {list(wrt)})")
    y, cache = forward(*inputs)
    g = _random_like(y, np.random.default_rng(seed + 1))
    claimed = backward(g, cache)
    if not isinstance(claimed, (tuple, list)):
        claimed = (claimed,)
    if len(claimed) < len(wrt):
        raise ValueError(f"backward returned {len(claimed)} gradients, wrt names {len(wrt)} inputs")

    def loss():
        out, _ = forward(*inputs)
        return float((out * g).sum())

    arrays = {name: inputs[i] for name, i in zip(names, wrt)}
    grads = {name: claimed[k] for k, name in enumerate(names)}
    return gradcheck(loss, arrays, grads, seed=seed, **kwargs)


def check_module(module, *inputs, wrt=(), parameters=True, seed: int = 0, **kwargs) -> GradcheckReport:
    """Check a module's backward: the input gradients it returns and every parameter's ``.grad``.

    ``module.forward(*inputs)`` must return one float64 array y; ``module.backward(g)``
    returns dL/d(input) for the inputs at positions ``wrt`` (a tuple when several; ``wrt=()``
    when the inputs are ids and only the parameters are checked).
    Dropout must be off (``module.eval()`` or p = 0): the loss has to be a fixed function.
    """
    y = module.forward(*inputs)
    if not hasattr(y, "shape"):
        raise TypeError(f"check_module needs a forward that returns one array; {type(module).__name__}.forward "
                        f"returned a {type(y).__name__} (wrap the module so it returns the output to check)")
    g = _random_like(y, np.random.default_rng(seed + 1))
    module.zero_grad()
    dinputs = module.backward(g)
    if dinputs is not None and not isinstance(dinputs, (tuple, list)):
        dinputs = (dinputs,)

    def loss():
        return float((module.forward(*inputs) * g).sum())

    arrays, grads = {}, {}
    for k, position in enumerate(wrt):
        arrays[f"input{position}"] = inputs[position]
        grads[f"input{position}"] = dinputs[k]
    if parameters:
        for name, p in module.named_parameters():
            arrays[name] = p.data
            grads[name] = p.grad.copy()
    return gradcheck(loss, arrays, grads, seed=seed, **kwargs)
