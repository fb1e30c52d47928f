"""Knowledge distillation: a student's logits pulled towards a teacher's softened distribution
(Hinton, Vinyals and Dean, 2015), the loss a pruned model recovers with (minibert.prune).

Forward:   p = softmax(teacher / T),   q = softmax(student / T)                 (R, C) each
           loss = T^2 * (1/R) * sum_r KL(p_r || q_r)
                = T^2 * (1/R) * sum_r sum_c p_rc * (log p_rc - log q_rc)
    student: (R, C) logits       teacher: (R, C) logits (constants: no gradient)
    T > 0, the temperature: T > 1 softens both distributions so the teacher's ranking of the
    wrong classes ("neutral is closer to positive than negative is") also teaches. The T^2
    keeps the gradient's size independent of T (Hinton et al.).
    (R == 0 gives loss 0 and a zero gradient rather than 0/0.)
Cache:     q, p, T and R.
Backward:  d loss / d student = dL * T * (q - p) / R
    (the softmax-cross-entropy derivative q - p, times the 1/T of the scaled logits,
    times the T^2 in front).
"""

from ..backend import get_array_module


def _log_softmax(z):
    xp = get_array_module(z)
    shifted = z - z.max(axis=-1, keepdims=True)
    return shifted - xp.log(xp.exp(shifted).sum(axis=-1, keepdims=True))


def distillation_forward(student, teacher, temperature: float = 1.0):
    if tuple(student.shape) != tuple(teacher.shape) or student.ndim != 2:
        raise ValueError(f"distillation: student logits {tuple(student.shape)} and teacher logits "
                         f"{tuple(teacher.shape)} must have the same (rows, classes) shape")
    if not temperature > 0:
        raise ValueError(f"distillation temperature must be > 0, got {temperature!r}")
    xp = get_array_module(student)
    log_q = _log_softmax(student / temperature)                                     # (R, C)
    log_p = _log_softmax(xp.asarray(teacher, dtype=student.dtype) / temperature)    # (R, C)
    p = xp.exp(log_p)
    rows = student.shape[0]
    loss = temperature ** 2 * float((p * (log_p - log_q)).sum()) / max(rows, 1)
    return loss, (xp.exp(log_q), p, temperature, rows)


def distillation_backward(dloss, cache):
    q, p, temperature, rows = cache
    return (q - p) * (dloss * temperature / max(rows, 1))
