"""The passes of one training step: functions of the trainable values on the
step's mini-batch, built once per step by `gather`.

Every pass sees the same mini-batch, in training mode, as a pure function of
the variable values (`stateless_call`): the model's variables hold the clean
θ throughout, and no pass changes any of them — non-trainable updates and
metric states come back in `aux`, for `keras_sam.training.commit` to commit.
"""

import dataclasses
import math
import random

import keras
from keras import ops
from keras import tree

from keras_sam import backend
from keras_sam import keras_private
from keras_sam.stateless import ModelVariables, is_overwritten, stateless_loss


@dataclasses.dataclass
class Passes:
    """Functions of the trainable values on the current mini-batch.

    `values` are those of the model's parameters (`ModelVariables.parameters`).
    `value_and_grad(values) -> ((loss, aux), grads)`: training mode, with the
    state updates returned in `aux` rather than applied: `aux` is `(y_pred,
    new state values, new metric states, new values of the overwritten
    variables)`.
    `loss(values) -> loss`: a forward pass only, training mode, statistics
    discarded (XSAM's probes).
    `hvp(values, vectors, examples=None) -> (grads, Hv)`: Hessian-vector
    product (on the first `examples` of the batch, if given) of the loss
    in inference mode (X-SAM's eigenvector refresh).
    """

    value_and_grad: object
    loss: object
    hvp: object = None
    # A perturbation group's share of the mini-batch (its weight in the mean).
    share: object = None
    # With `ascent_fraction` < 1: `value_and_grad` on the first examples of
    # the batch, for the clean pass and the ascent; the last pass of the
    # ascent (at θ + e) stays on the whole batch. None: `value_and_grad`.
    ascent_value_and_grad: object = None


class HostRandomness:
    """Replays Python's global `random` so that every pass of a step draws the
    same numbers (AugMix picks its chain of operations with `random.choice`):
    each pass starts from the state the step began with; the state after the
    first pass — the clean one — is where the step leaves it (`end`)."""

    def __init__(self):
        self.start, self.after_first_pass = random.getstate(), None

    def before_pass(self):
        random.setstate(self.start)

    def after_pass(self):
        if self.after_first_pass is None:
            self.after_first_pass = random.getstate()

    def end(self):
        if self.after_first_pass is not None:
            random.setstate(self.after_first_pass)


@dataclasses.dataclass
class BatchPasses:
    """A step's passes, and the state they start from."""

    passes: Passes  # on the whole mini-batch (this replica's share of it)
    groups: list  # one `Passes` per perturbation group, or None
    variables: ModelVariables  # the model's variables, sorted by kind
    params: list  # the parameters' values θ
    state: list  # values of `variables.state` before the step
    metrics_values: list  # metric states before the step
    replicas: int  # replicas running the step side by side (tf.distribute, torch.distributed)
    randomness: HostRandomness  # Python's `random`, replayed for every pass
    group_count: int  # perturbation groups of the global batch, all replicas together

    def clean_aux(self, aux):
        """The clean pass' `(y_pred, non-trainable, metric states)`: an
        `Update.aux`, merged over the perturbation groups if any."""
        if self.groups is None:
            return aux
        return merge_group_aux(aux, [g.share for g in self.groups], self.metrics_values)


def _values(variables):
    """Current values as tensors (inside a JAX stateless scope: its values)."""
    return [ops.convert_to_tensor(v.value) for v in variables]


def gather(model, data, optimizer, loss_scaler=None, grouped=True):
    """The `BatchPasses` of one step of `model` on `data` = (x, y, sample_weight).

    `optimizer` (a `SharpnessAwareOptimizer`) gives the perturbation groups;
    `loss_scaler` is the `LossScaleOptimizer` around it, if any. Without
    `grouped` (a plain step of `every` / `start`), the batch is not split,
    and the whole batch climbs whatever the optimizer's `ascent_fraction`.
    """
    variables = ModelVariables.of(model)
    start = StartValues(
        trainable=_values(variables.trainable),
        state=_values(variables.state),
        metrics=_values(model.metrics_variables),
    )
    replicas = backend.replicas_in_sync()
    group_count = optimizer._perturbation_group_count()
    _check_setup(optimizer, variables, group_count, replicas, grouped)

    randomness = HostRandomness()

    def passes_on(data, all_reduce):
        return make_passes(model, data, variables, start, loss_scaler, all_reduce, randomness)

    # One perturbation for the global batch: the replicas' ascent gradients
    # are averaged before they are used.
    passes = passes_on(data, all_reduce=group_count == 1 and replicas > 1)
    fraction = optimizer.ascent_fraction
    if grouped and fraction < 1:
        part = first_examples(data, fraction)
        passes = dataclasses.replace(
            passes,
            ascent_value_and_grad=passes_on(part, all_reduce=replicas > 1).value_and_grad,
        )
    groups = None
    local_groups = max(1, group_count // replicas)  # one group: the global batch's
    if grouped and local_groups > 1:
        parts, shares = split_batch(data, local_groups)
        groups = [
            dataclasses.replace(passes_on(part, all_reduce=False), share=share)
            for part, share in zip(parts, shares)
        ]
    return BatchPasses(
        passes=passes,
        groups=groups,
        variables=variables,
        params=variables.split_trainable(start.trainable)[0],
        state=start.state,
        metrics_values=start.metrics,
        replicas=replicas,
        randomness=randomness,
        group_count=group_count,
    )


def _check_setup(optimizer, variables, group_count, replicas, grouped):
    """Refuses perturbation groups the step cannot form or combine."""
    groups = optimizer.perturbation_groups
    if group_count > 1 and group_count % replicas:
        raise ValueError(
            f"perturbation_groups={groups} ({group_count} groups) does not divide "
            f"among the {replicas} replicas."
        )
    if not grouped or group_count == 1:
        return
    if variables.overwritten:
        raise ValueError(
            f"perturbation_groups={groups} cannot run with variables that Keras "
            "overwrites with their gradient (float8 training: "
            f"{variables.overwritten[0].path}, ...): their next value is the whole "
            "batch's, which no group computes. Use `perturbation_groups=1`."
        )
    if optimizer.ascent_fraction < 1:
        raise ValueError(
            f"ascent_fraction={optimizer.ascent_fraction} and perturbation_groups="
            f"{groups} cannot be combined: choose one."
        )


@dataclasses.dataclass
class StartValues:
    """The values a step's passes start from."""

    trainable: list  # of `ModelVariables.trainable`
    state: list  # of `ModelVariables.state`
    metrics: list  # of `model.metrics_variables`


def make_passes(model, data, variables, start, loss_scaler, all_reduce, randomness):
    """The `Passes` of `model` (its `ModelVariables`) on `data`, every pass
    starting from the `StartValues` and the `HostRandomness`; with
    `all_reduce`, their losses and gradients are the mean over the replicas."""
    overwritten = variables.split_trainable(start.trainable)[1]

    def trainable_loss_fn(trainable_values, training=True, data=data):
        randomness.before_pass()
        loss, aux = stateless_loss(
            model, variables, trainable_values, start.state, start.metrics, *data, training
        )
        randomness.after_pass()
        # tf.distribute scales each replica's loss by 1/replicas: the method
        # works with this share's own mean loss.
        return keras_private.unscale_loss_for_distribution(loss), aux

    def loss_fn(values, training=True, data=data):
        return trainable_loss_fn(
            variables.trainable_values(values, overwritten), training, data
        )

    value_and_grad = _parameters_value_and_grad(
        unscaled_value_and_grad(trainable_loss_fn, loss_scaler, variables.trainable),
        variables, overwritten,
    )
    forward = backend.forward(lambda values: loss_fn(values)[0])

    def hvp(values, vectors, examples=None):
        # The curvature is always the global batch's (or of the first
        # `examples` of each replica's share).
        part = data if examples is None else tree.map_structure(
            lambda t: None if t is None else t[:examples], data
        )
        return backend.all_reduce_mean(backend.hvp(
            lambda v: loss_fn(v, training=False, data=part)[0], values, vectors
        ))

    if not all_reduce:
        return Passes(value_and_grad=value_and_grad, loss=forward, hvp=hvp)

    def global_value_and_grad(values):
        (loss, aux), grads = value_and_grad(values)
        loss, grads = backend.all_reduce_mean((loss, grads))
        return (loss, aux), grads

    return Passes(
        value_and_grad=global_value_and_grad,
        loss=lambda values: backend.all_reduce_mean(forward(values)),
        hvp=hvp,
    )


def _parameters_value_and_grad(trainable_value_and_grad, variables, overwritten):
    """Value and gradient with respect to the parameters; the overwritten
    variables keep their start values, and the "gradients" Keras computes for
    them — their next values — join the pass' aux."""

    def value_and_grad(values):
        (loss, aux), grads = trainable_value_and_grad(
            variables.trainable_values(values, overwritten)
        )
        parameter_grads, next_overwritten = variables.split_trainable(grads)
        return (loss, (*aux, next_overwritten)), parameter_grads

    return value_and_grad


def unscaled_value_and_grad(loss_fn, loss_scaler, trainable_variables):
    """Value and gradient of `loss_fn`, through dynamic loss scaling if any.

    Under `mixed_float16` every pass differentiates the scaled loss (so that
    float16 gradients do not underflow) and unscales the gradient at once:
    the method normalises, compares and combines unscaled gradients, and the
    final direction is never unscaled twice. An overflow shows as a
    non-finite norm and skips the step. The "gradients" of variables
    overwritten with them are values, not unscaled (as `LossScaleOptimizer`).
    """
    if loss_scaler is None:
        return backend.value_and_grad(loss_fn)
    scale = ops.convert_to_tensor(loss_scaler.dynamic_scale.value)

    def scaled_loss_fn(values):
        loss, aux = loss_fn(values)
        return ops.multiply(loss, ops.cast(scale, loss.dtype)), (loss, aux)

    scaled_value_and_grad = backend.value_and_grad(scaled_loss_fn)

    def value_and_grad(values):
        (_, (loss, aux)), grads = scaled_value_and_grad(values)
        return (loss, aux), [
            g if is_overwritten(v) else g / ops.cast(scale, g.dtype)
            for g, v in zip(grads, trainable_variables)
        ]

    return value_and_grad


def _batch_size(data):
    return ops.shape(next(i for i in tree.flatten(data) if i is not None))[0]


def _first(data, count):
    return tree.map_structure(lambda t: None if t is None else t[:count], data)


def first_examples(data, fraction):
    """The first ⌈fraction · B⌉ examples of every array in `data`."""
    size = _batch_size(data)
    if isinstance(size, int):
        count = max(1, math.ceil(fraction * size))
    else:  # a batch size known only when the step runs (TF graphs)
        count = ops.maximum(ops.cast(ops.ceil(fraction * ops.cast(size, "float32")), "int32"), 1)
    return _first(data, count)


def first_rows(data, like):
    """`data` cut to as many examples as `like` (a structure of tensors) has."""
    rows = _batch_size(like)
    if isinstance(rows, int) and isinstance(_batch_size(data), int) and rows == _batch_size(data):
        return data
    return _first(data, rows)


def split_batch(data, groups):
    """`groups` contiguous parts of every array in `data` (x, y, sw), and
    each part's share of the batch.

    Part i holds examples ⌊iB/G⌋ … ⌊(i+1)B/G⌋ − 1: equal parts when G divides
    the batch size B, else sizes differing by one (a last, partial batch —
    whose size a compiled step may not know while tracing).
    """
    size = _batch_size(data)
    if isinstance(size, int) and size < groups:
        raise ValueError(
            f"A batch of {size} examples cannot make {groups} perturbation groups."
        )
    bounds = [(i * size) // groups for i in range(groups + 1)]
    parts = [
        tree.map_structure(lambda t, a=a, b=b: None if t is None else t[a:b], data)
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    shares = [
        ops.cast(b - a, "float32") / ops.cast(size, "float32")
        for a, b in zip(bounds[:-1], bounds[1:])
    ]
    return parts, shares


def merge_group_aux(auxes, shares, metrics_values):
    """One clean-pass aux from the perturbation groups' ones.

    Predictions are concatenated; float non-trainable values (BatchNorm's
    moving statistics) averaged with the groups' shares of the batch (as
    replicas' are averaged under data parallelism); metric states (the
    compiled loss' trackers) are sums of per-batch increments.
    """
    y_preds, non_trainables, metrics, overwritten = zip(*auxes)
    y_pred = tree.map_structure(lambda *t: ops.concatenate(t, axis=0), *y_preds)
    non_trainable = [
        sum(v * ops.cast(w, v.dtype) for v, w in zip(values, shares))
        if keras.backend.is_float_dtype(values[0].dtype) else values[0]
        for values in zip(*non_trainables)
    ]
    metrics_values = [
        old + sum(new - old for new in values)
        for old, values in zip(metrics_values, zip(*metrics))
    ]
    # Groups are refused with overwritten variables (`gather`): none here.
    return y_pred, non_trainable, metrics_values, overwritten[0]
