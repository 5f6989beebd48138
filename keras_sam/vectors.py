"""Vector algebra on lists of tensors: all trainable variables as one vector.

Norms and inner products are global over the whole list (docs/algorithms.md, "Conventions"),
accumulated in float32 at least, whatever the dtype of the tensors.
"""

from keras import ops

EPS = 1e-12


def _sum_of(terms):
    total = terms[0]
    for term in terms[1:]:
        total = total + term
    return total


def _wide(x):
    return x if x.dtype == "float64" else ops.cast(x, "float32")


def dot(xs, ys):
    """Global inner product ⟨xs, ys⟩."""
    return _sum_of([ops.sum(_wide(x) * _wide(y)) for x, y in zip(xs, ys)])


def norm(xs):
    """Global Euclidean norm ‖xs‖."""
    return ops.sqrt(_sum_of([ops.sum(ops.square(_wide(x))) for x in xs]))


def scale(xs, factor):
    return [x * ops.cast(factor, x.dtype) for x in xs]


def add(xs, ys):
    return [x + y for x, y in zip(xs, ys)]


def subtract(xs, ys):
    return [x - y for x, y in zip(xs, ys)]


def add_scaled(xs, factor, ys):
    """xs + factor · ys."""
    return [x + ops.cast(factor, y.dtype) * y for x, y in zip(xs, ys)]


def cosine(xs, ys, xs_norm=None, ys_norm=None):
    xs_norm = norm(xs) if xs_norm is None else xs_norm
    ys_norm = norm(ys) if ys_norm is None else ys_norm
    return dot(xs, ys) / (xs_norm * ys_norm + EPS)


def all_finite(scalars):
    """True where every scalar is finite (one check per pass, not per tensor)."""
    flags = [ops.all(ops.isfinite(s)) for s in scalars]
    return ops.all(ops.stack(flags))
