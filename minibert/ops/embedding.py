"""Embedding lookup: a table row per token id.

Forward:   y[i] = table[ids[i]]
    ids: (...) integers in [0, V)   table: (V, H)   y: (..., H)
Cache:     ids and the table shape.
Backward:  dL/dtable[v] = sum of g[i] over every position i with ids[i] == v.
    Only the rows that occurred get a gradient, so backward returns it sparsely:
    ``rows`` (the distinct ids, sorted) and ``drows`` (len(rows), H), one summed row each.
    The caller adds them in place: ``table.grad[rows] += drows``.
"""


def embedding_forward(ids, table):
    return table[ids], (ids, table.shape)


def embedding_backward(dy, cache):
    from ..backend import get_array_module

    ids, (_, hidden) = cache
    xp = get_array_module(dy)
    flat_ids = ids.reshape(-1)                          # (M,)
    rows, which_row = xp.unique(flat_ids, return_inverse=True)
    drows = xp.zeros((rows.shape[0], hidden), dtype=dy.dtype)   # (R, H)
    xp.add.at(drows, which_row.reshape(-1), dy.reshape(-1, hidden))   # sum repeated ids
    return rows, drows
