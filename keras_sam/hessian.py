"""Curvature diagnostics of a compiled Keras model (PyHessian-class; docs/algorithms.md, "Curvature diagnostics").

Everything here is written once with `keras.ops` on top of `backend.hvp`, the
backend's forward-over-reverse Hessian-vector product, and works on the
TensorFlow, JAX and PyTorch backends:

- `hessian_vector_product(model, x, y, vectors)`: H·v;
- `top_eigenvalue(model, x, y)`: the eigenvalue of largest magnitude and its
  unit eigenvector, by power iteration;
- `trace(model, x, y)`: Hutchinson's estimate of tr(H) with Rademacher vectors;
- `gradient_eigenvector_angle(model, x, y)`: the angle between the loss
  gradient and the top eigenvector, in degrees;
- `Curvature(model, x, y)`: the same on one snapshot of the weights and data,
  for several diagnostics in a row (what `callbacks.SharpnessMonitor` uses);
- `make_loss_fn(model, x, y)`: the loss as a pure function of the trainable
  values, for your own autodiff.

The Hessian is that of the model's compiled loss (plus `model.losses`:
regularizers, activity regularizers) with respect to `model.trainable_variables`,
at their current values. Vectors are shaped like those variables, less any
that Keras overwrites with their gradient (float8 training's scales and amax
histories): those are state, held at their current values.

Data: `x, y` arrays (one batch, or split with `batch_size=`), or `x` alone as
one `(x, y[, sample_weight])` tuple, a list of such batches, or an iterable of
them (a `tf.data.Dataset`, a torch `DataLoader`, a generator). It is read once
and kept in memory. Over several batches the loss is the mean of the batch
losses weighted by batch size (PyHessian's full-dataset mode); a regularization
term counts once.

Mode: inference (`training=False`, the default, as in PyHessian and X-SAM):
BatchNorm uses its moving statistics, dropout is off. With `training=True`,
BatchNorm normalizes with the statistics of each batch (the Hessian then
includes their dependence on the weights; the moving statistics are not
updated) and dropout uses one fixed mask for every product (TF and JAX: drawn
from the dropout layers' current seed state; torch: from the global generator
reseeded with `seed` for each evaluation, leaving the global RNG untouched).
On TensorFlow, training-mode BatchNorm gets exact second derivatives from
`backend.hvp` (Keras' `tf.nn.moments` would make them wrong, see there).

Cost: one Hessian-vector product costs a few gradients (measured by
`benchmarks/hvp_time.py`; figures in benchmarks/README.md). Products run
compiled (`jax.jit` on JAX, `tf.function` on TensorFlow; eager on torch) and
are traced once per model, mode and batch shape: a power iteration, or a
monitor called every epoch, does not retrace (the first product pays the
trace).

Under mixed precision the loss is computed as in training (in the compute
dtype, not scaled by a `LossScaleOptimizer`); float16 products are noisy.
"""

import contextlib
import math

import keras
import numpy as np
from keras import ops
from keras import tree
from keras_sam import backend
from keras_sam import keras_private
from keras_sam import vectors as vec
from keras_sam.stateless import ModelVariables, parameter_variables, stateless_loss

__all__ = [
    "Curvature",
    "gradient_eigenvector_angle",
    "hessian_vector_product",
    "make_loss_fn",
    "top_eigenvalue",
    "trace",
]

# -- the loss as a pure function of the trainable values -------------------------
def _fixed_values(model):
    """The values the loss holds fixed: the variables Keras overwrites with
    their gradient (float8 scales), then the model's state."""
    variables = ModelVariables.of(model)
    return _values(variables.overwritten) + _values(variables.state)


def _stateless_loss(model, values, fixed, metrics_values, x, y, sample_weight,
                    training, seed=0):
    """The compiled loss (+ `model.losses`) at parameter `values`, the rest
    at `fixed` (`_fixed_values`); no state is changed."""
    variables = ModelVariables.of(model)
    overwritten = fixed[:len(variables.overwritten)]
    trainable = variables.trainable_values(values, overwritten)
    # torch: the same dropout mask for every evaluation (backend.fixed_randomness).
    context = backend.fixed_randomness(seed) if training else contextlib.nullcontext()
    with context:
        loss, _ = stateless_loss(
            model, variables, trainable, fixed[len(overwritten):], metrics_values,
            x, y, sample_weight, training,
        )
    return keras_private.unscale_loss_for_distribution(loss)


def _check_model(model):
    if not getattr(model, "compiled", False):
        raise ValueError(
            "The curvature of a model is that of its compiled loss: call "
            "`model.compile(loss=...)` first."
        )


def _values(variables):
    """Copies of the current values (torch assigns variables in place)."""
    return [ops.copy(ops.convert_to_tensor(v.value)) for v in variables]


def _leaf_to_tensor(leaf):
    if leaf is None or ops.is_tensor(leaf):
        return leaf
    array = np.asarray(leaf)  # NumPy, or another framework's tensor
    if np.issubdtype(array.dtype, np.floating):
        array = array.astype(keras.backend.floatx())  # as Keras' data adapters do
    return ops.convert_to_tensor(array)


def _batch_size(x):
    return int(ops.shape(next(i for i in tree.flatten(x) if i is not None))[0])


def _batches(x, y=None, sample_weight=None, batch_size=None):
    """`[(x, y, sample_weight), ...]` as backend tensors, and their sizes."""
    if y is None and sample_weight is None and not _is_array_like(x):
        # `x` is the data: one `(x, y[, sample_weight])` tuple, a list of
        # such batches, or an iterable of them.
        if isinstance(x, tuple):
            raw = [x]
        else:
            raw = [tuple(b) if isinstance(b, list) else b for b in x]
        raw = [keras.utils.unpack_x_y_sample_weight(b) for b in raw]
    else:
        raw = [(x, y, sample_weight)]
    batches = [tuple(tree.map_structure(_leaf_to_tensor, part) for part in b) for b in raw]
    if not batches:
        raise ValueError("No data: received an empty list or iterable of batches.")
    if batch_size is not None:
        split = []
        for bx, by, bw in batches:
            n = _batch_size(bx)
            for start in range(0, n, batch_size):
                split.append(
                    tuple(
                        tree.map_structure(
                            lambda t, s=start: None if t is None else t[s:s + batch_size],
                            part,
                        )
                        for part in (bx, by, bw)
                    )
                )
        batches = split
    sizes = [_batch_size(b[0]) for b in batches]
    return batches, sizes


def _is_array_like(x):
    if x is None:
        return False
    if isinstance(x, dict) or ops.is_tensor(x) or isinstance(x, np.ndarray):
        return True
    return hasattr(x, "shape") and hasattr(x, "dtype") and hasattr(x, "__array__")


def make_loss_fn(model, x, y=None, sample_weight=None, training=False, batch_size=None, seed=0):
    """The model's loss on the given data as a pure function of the trainable values.

    Returns `loss_fn(values) -> scalar`, where `values` is a list of tensors
    shaped like the model's parameters — `model.trainable_variables` less
    any that Keras overwrites with their gradient (float8 training's scales),
    which are held at their current values: the compiled loss plus
    `model.losses` of the model called on `x` with `training=training`, with
    the current non-trainable values (BatchNorm statistics, seed states),
    which it never changes. Over several batches,
    their mean weighted by batch size. Use it with `backend.hvp`,
    `backend.value_and_grad` or your own autodiff.
    """
    _check_model(model)
    batches, sizes = _batches(x, y, sample_weight, batch_size)
    non_trainable = _fixed_values(model)
    metrics_values = _values(model.metrics_variables)
    total = float(sum(sizes))

    def loss_fn(values):
        loss = None
        for (bx, by, bw), size in zip(batches, sizes):
            term = _stateless_loss(
                model, values, non_trainable, metrics_values, bx, by, bw, training, seed
            )
            term = term * ops.cast(size / total, term.dtype)
            loss = term if loss is None else loss + term
        return loss

    return loss_fn


# -- compiled per-batch functions, cached on the model ---------------------------
def _compiled(model, kind, training, seed):
    """`hvp` or `grad` of the loss on one batch, compiled once per model/mode.

    The cache lives in the model's `__dict__` (not tracked by Keras) and is
    dropped when the model is compiled again (a new loss).
    """
    cache = model.__dict__.get("_keras_sam_curvature_fns")
    compile_loss = keras_private.compile_loss(model)
    if cache is None or cache["compile_loss"] is not compile_loss:
        cache = {"compile_loss": compile_loss, "fns": {}}
        model.__dict__["_keras_sam_curvature_fns"] = cache
    key = (kind, bool(training), seed if training else None)
    fn = cache["fns"].get(key)
    if fn is not None:
        return fn

    def loss_of(non_trainable, metrics_values, x, y, sample_weight):
        return lambda values: _stateless_loss(
            model, values, non_trainable, metrics_values, x, y, sample_weight, training, seed
        )

    if kind == "hvp":

        def fn(params, non_trainable, metrics_values, vectors, x, y, sample_weight):
            loss = loss_of(non_trainable, metrics_values, x, y, sample_weight)
            grads, hv = backend.hvp(loss, params, vectors)
            return list(grads), list(hv)

    else:

        def fn(params, non_trainable, metrics_values, x, y, sample_weight):
            loss = loss_of(non_trainable, metrics_values, x, y, sample_weight)
            (value, _), grads = backend.value_and_grad(lambda v: (loss(v), ()))(params)
            return value, list(grads)

    fn = backend.compile_function(fn)
    cache["fns"][key] = fn
    return fn


# -- the operator -------------------------------------------------------------------
class Curvature:
    """The Hessian of a model's loss on fixed data at the current weights.

    Takes a snapshot of the weights and of the data when created; each method
    then costs only Hessian-vector products (or a gradient).

    ```python
    curvature = keras_sam.hessian.Curvature(model, x, y)
    lam, v = curvature.top_eigenvalue()
    tr, stderr = curvature.trace(samples=100, return_stderr=True)
    angle = curvature.gradient_eigenvector_angle(eigenvector=v)
    ```

    Args:
        model: a compiled Keras model (a plain `keras.Model`, a `SAMModel`...).
        x: the data (see the module docstring): inputs, or batches.
        y: targets, when `x` holds inputs only.
        sample_weight: optional per-example weights.
        batch_size: split arrays into batches of this size.
        training: evaluate the model in training mode (default: inference).
        seed: torch only, training mode only: the seed of the fixed dropout mask.
    """

    def __init__(self, model, x, y=None, sample_weight=None, batch_size=None,
                 training=False, seed=0):
        _check_model(model)
        self.model = model
        self.training = bool(training)
        self.batches, self.sizes = _batches(x, y, sample_weight, batch_size)
        self.params = _values(parameter_variables(model.trainable_variables))
        if not self.params:
            raise ValueError("The model has no trainable variables.")
        self._non_trainable = _fixed_values(model)
        self._metrics_values = _values(model.metrics_variables)
        self._weights = [s / float(sum(self.sizes)) for s in self.sizes]
        self._hvp = _compiled(model, "hvp", self.training, seed)
        self._grad = _compiled(model, "grad", self.training, seed)
        self.num_parameters = sum(int(np.prod(ops.shape(p))) for p in self.params)
        self.iterations = None  # power iterations of the last `top_eigenvalue`

    # -- primitives ---------------------------------------------------------------
    def _as_vectors(self, vectors):
        vectors = list(vectors)
        if len(vectors) != len(self.params):
            raise ValueError(
                f"Expected {len(self.params)} tensors shaped like the trainable "
                f"variables, received {len(vectors)}."
            )
        out = []
        for v, p in zip(vectors, self.params):
            v = _leaf_to_tensor(v) if not ops.is_tensor(v) else v
            v = ops.cast(v, p.dtype)
            if tuple(ops.shape(v)) != tuple(ops.shape(p)):
                raise ValueError(
                    f"A vector of shape {tuple(ops.shape(v))} for a variable of "
                    f"shape {tuple(ops.shape(p))}."
                )
            out.append(v)
        return out

    def _accumulate(self, outputs_per_batch):
        total = None
        for outputs, weight in zip(outputs_per_batch, self._weights):
            scaled = [o * ops.cast(weight, o.dtype) for o in outputs]
            total = scaled if total is None else vec.add(total, scaled)
        return total

    def gradient_and_hvp(self, vectors):
        """(∇L, H·v) at the snapshot, as lists of tensors."""
        vectors = self._as_vectors(vectors)
        grads, hvs = [], []
        for x, y, sample_weight in self.batches:
            g, hv = self._hvp(
                self.params, self._non_trainable, self._metrics_values, vectors,
                x, y, sample_weight,
            )
            grads.append(g)
            hvs.append(hv)
        return self._accumulate(grads), self._accumulate(hvs)

    def hvp(self, vectors):
        """H·v, a list of tensors shaped like the trainable variables."""
        return self.gradient_and_hvp(vectors)[1]

    def loss_and_gradient(self):
        """(L, ∇L) at the snapshot: a float and a list of tensors."""
        losses, grads = [], []
        for x, y, sample_weight in self.batches:
            loss, g = self._grad(
                self.params, self._non_trainable, self._metrics_values, x, y, sample_weight
            )
            losses.append([loss])
            grads.append(g)
        return float(ops.convert_to_numpy(self._accumulate(losses)[0])), self._accumulate(grads)

    def gradient(self):
        return self.loss_and_gradient()[1]

    def _random_vectors(self, rng, kind):
        out = []
        for p in self.params:
            shape = tuple(ops.shape(p))
            if kind == "rademacher":
                array = rng.integers(0, 2, size=shape) * 2.0 - 1.0
            else:
                array = rng.standard_normal(size=shape)
            out.append(ops.convert_to_tensor(array.astype(ops.dtype(p))))
        return out

    # -- diagnostics ----------------------------------------------------------------
    def top_eigenvalue(self, max_iterations=100, tol=1e-3, initial_vector=None, seed=0):
        """Power iteration on H·v (PyHessian's defaults: tol 1e-3, ≤ 100 iterations).

        Stops when the Rayleigh quotient changes by less than `tol` relative to
        the previous one. Converges to the eigenvalue of largest magnitude
        (Hessians are indefinite) and returns it signed (the Rayleigh quotient
        vᵀHv at the last iterate), with the unit eigenvector as a list of NumPy
        arrays shaped like the trainable variables.

        Each iterate is `sign(vᵀHv) · Hv / ‖Hv‖`, so the vector does not flip
        at every step when the dominant eigenvalue is negative: the returned
        eigenvector keeps the orientation of the starting vector's component
        along it. `initial_vector` (e.g. the previous estimate: a warm start)
        defaults to a Gaussian drawn with `seed` (NumPy, so the same on every
        backend). The number of products used is in `self.iterations`.
        """
        if initial_vector is None:
            v = self._random_vectors(np.random.default_rng(seed), "gaussian")
        else:
            v = self._as_vectors(initial_vector)
        v = vec.scale(v, 1.0 / (float(ops.convert_to_numpy(vec.norm(v))) + vec.EPS))
        eigenvalue = None
        self.iterations = 0
        for _ in range(max_iterations):
            hv = self.hvp(v)
            self.iterations += 1
            rayleigh = float(ops.convert_to_numpy(vec.dot(hv, v)))
            hv_norm = float(ops.convert_to_numpy(vec.norm(hv)))
            if not (math.isfinite(rayleigh) and math.isfinite(hv_norm)):
                raise FloatingPointError(
                    "A non-finite Hessian-vector product in the power iteration."
                )
            previous, eigenvalue = eigenvalue, rayleigh
            if hv_norm == 0.0:  # v in the null space: H v = 0
                break
            v = vec.scale(hv, (1.0 if rayleigh >= 0 else -1.0) / hv_norm)
            if previous is not None and (
                abs(rayleigh - previous) / (abs(previous) + 1e-6) < tol
            ):
                break
        return eigenvalue, [ops.convert_to_numpy(t) for t in v]

    def trace(self, samples=100, seed=0, return_stderr=False):
        """Hutchinson's estimate of tr(H): the mean of zᵀHz over Rademacher z.

        `samples` products with vectors drawn with `seed` (NumPy: the same on
        every backend). With `return_stderr=True`, returns `(estimate, standard
        error)`, the standard error being std(zᵀHz) / √samples (0 when H is
        diagonal: Rademacher vectors then give the exact trace).
        """
        if samples < 1:
            raise ValueError(f"`samples` must be at least 1, received {samples}.")
        rng = np.random.default_rng(seed)
        values = []
        for _ in range(samples):
            z = self._random_vectors(rng, "rademacher")
            values.append(float(ops.convert_to_numpy(vec.dot(self.hvp(z), z))))
        values = np.asarray(values)
        estimate = float(values.mean())
        if not return_stderr:
            return estimate
        stderr = float(values.std(ddof=1) / np.sqrt(samples)) if samples > 1 else math.inf
        return estimate, stderr

    def gradient_eigenvector_angle(self, eigenvector=None, absolute=False, **power_iteration):
        """Angle in degrees between the loss gradient and the top eigenvector.

        Signed by default: `arccos(cos)` in [0°, 180°], the convention of the
        X-SAM paper's Fig. 1 (80–100° typical), relative to the orientation of
        `eigenvector` (if not given: `top_eigenvalue(**power_iteration)`'s,
        which keeps the orientation of its seeded start). `absolute=True`
        measures the angle to the eigen-direction, `arccos(|cos|)` in [0°, 90°],
        independent of the orientation.
        """
        if eigenvector is None:
            _, eigenvector = self.top_eigenvalue(**power_iteration)
        eigenvector = self._as_vectors(eigenvector)
        cos = float(ops.convert_to_numpy(vec.cosine(self.gradient(), eigenvector)))
        if absolute:
            cos = abs(cos)
        return math.degrees(math.acos(min(1.0, max(-1.0, cos))))


# -- one-call functions -------------------------------------------------------------
def hessian_vector_product(model, x, y=None, vectors=None, *, sample_weight=None,
                           batch_size=None, training=False, seed=0):
    """H·v of the model's loss on the data, at the current weights.

    `vectors`: a list of arrays or tensors shaped like
    `model.trainable_variables`. Returns a list of tensors of the same shapes.
    """
    if vectors is None:
        raise ValueError("`vectors` is required.")
    curvature = Curvature(model, x, y, sample_weight, batch_size, training, seed)
    return curvature.hvp(vectors)


def top_eigenvalue(model, x, y=None, max_iterations=100, tol=1e-3, initial_vector=None,
                   seed=0, training=False, *, sample_weight=None, batch_size=None):
    """The Hessian eigenvalue of largest magnitude, signed, and its eigenvector.

    Power iteration (see `Curvature.top_eigenvalue`). Returns
    `(eigenvalue: float, eigenvector: list of NumPy arrays)`, the eigenvector
    of unit global norm and shaped like `model.trainable_variables`.
    """
    curvature = Curvature(model, x, y, sample_weight, batch_size, training, seed)
    return curvature.top_eigenvalue(max_iterations, tol, initial_vector, seed)


def trace(model, x, y=None, samples=100, seed=0, training=False, return_stderr=False, *,
          sample_weight=None, batch_size=None):
    """Hutchinson's estimate of the Hessian trace (see `Curvature.trace`)."""
    curvature = Curvature(model, x, y, sample_weight, batch_size, training, seed)
    return curvature.trace(samples, seed, return_stderr)


def gradient_eigenvector_angle(model, x, y=None, eigenvector=None, absolute=False,
                               max_iterations=100, tol=1e-3, seed=0, training=False, *,
                               sample_weight=None, batch_size=None):
    """Angle in degrees between the loss gradient and the top Hessian eigenvector.

    Signed (in [0°, 180°], relative to the eigenvector's orientation) unless
    `absolute=True` (in [0°, 90°]); see `Curvature.gradient_eigenvector_angle`.
    Computes the eigenvector by power iteration if not given.
    """
    curvature = Curvature(model, x, y, sample_weight, batch_size, training, seed)
    return curvature.gradient_eigenvector_angle(
        eigenvector, absolute, max_iterations=max_iterations, tol=tol, seed=seed
    )
