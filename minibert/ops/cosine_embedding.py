"""Cosine embedding loss: a student's hidden states turned to point the way the teacher's do
(DistilBERT's third loss, Sanh et al. 2019).

Forward:   |s_r| = sqrt(sum_h s_rh^2 + eps),   |t_r| = sqrt(sum_h t_rh^2 + eps)
           cos_r = (s_r . t_r) / (|s_r| |t_r|)
           loss = (1/n) * sum_r w_r * (1 - cos_r),     n = sum_r w_r
    student: (R, H) hidden states       teacher: (R, H) hidden states (constants: no gradient)
    weights: (R,) 1 for a position that counts, 0 for padding (None: every row counts)
    Only the direction of a row matters, not its length. eps (1e-12) keeps a zero row (the
    teacher's output at padding, which the weights leave out anyway) from dividing by zero.
    (n == 0 gives loss 0 and a zero gradient rather than 0/0.)
Cache:     the student and teacher rows, their norms, cos, the weights and n.
Backward:  d cos_r / d s_r = t_r / (|s_r| |t_r|) - cos_r * s_r / |s_r|^2
           d loss / d s_r = -dL * (w_r / n) * d cos_r / d s_r
    (|s_r|^2 = sum s^2 + eps, so d|s_r|/d s_r = s_r / |s_r| holds with eps included.)

This is ``torch.nn.functional.cosine_embedding_loss(s, t, target=+1)`` averaged over the
counted rows (torch puts its eps on the product of the squared norms; the two agree to
float precision for rows of any real length).
"""

from ..backend import get_array_module

EPS = 1e-12


def cosine_embedding_forward(student, teacher, weights=None):
    if tuple(student.shape) != tuple(teacher.shape) or student.ndim != 2:
        raise ValueError(f"cosine embedding loss: student {tuple(student.shape)} and teacher "
                         f"{tuple(teacher.shape)} must have the same (rows, hidden) shape")
    xp = get_array_module(student)
    rows = student.shape[0]
    if weights is None:
        weights = xp.ones(rows, dtype=student.dtype)
    weights = xp.asarray(weights, dtype=student.dtype).reshape(-1)                  # (R,)
    if weights.shape[0] != rows:
        raise ValueError(f"cosine embedding loss: weights hold {weights.shape[0]} values for {rows} rows")
    teacher = xp.asarray(teacher, dtype=student.dtype)
    student_norm = xp.sqrt((student * student).sum(axis=-1) + EPS)                 # (R,)
    teacher_norm = xp.sqrt((teacher * teacher).sum(axis=-1) + EPS)                 # (R,)
    cos = (student * teacher).sum(axis=-1) / (student_norm * teacher_norm)          # (R,)
    count = float(weights.sum())
    loss = float((weights * (1.0 - cos)).sum()) / count if count > 0 else 0.0
    return loss, (student, teacher, student_norm, teacher_norm, cos, weights, count)


def cosine_embedding_backward(dloss, cache):
    student, teacher, student_norm, teacher_norm, cos, weights, count = cache
    if count <= 0:
        return student * 0
    # cos = (s . t) / (|s| |t|)
    dcos = teacher / (student_norm * teacher_norm)[:, None] \
        - (cos / student_norm ** 2)[:, None] * student                              # (R, H)
    return dcos * (-dloss * weights / count)[:, None]
