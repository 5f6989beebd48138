"""The one place a sharpness-aware step is committed.

A step whose loss or gradient was non-finite in any pass changes nothing:
not the weights, not the inner optimizer's or the method's state, not the
BatchNorm statistics; it is counted in `skipped_steps`, and the dynamic loss
scale (under `mixed_float16`) is halved, as `LossScaleOptimizer` does.
"""

import dataclasses
import math

import keras
from keras import ops

from keras_sam import backend
from keras_sam import vectors


def commit(model, update, batch, loss_scaler=None):
    """Commits `update` (from `_compute_update`) of one step of `model`.

    `batch` is the step's `BatchPasses`; `loss_scaler` the
    `LossScaleOptimizer` around the sharpness-aware optimizer, if any.
    Updates the inner optimizer and the weights, the method's state, the
    overwritten variables (to the clean pass' values, which the inner
    optimizer assigns as Keras' optimizers do), the model's state (the clean
    pass' BatchNorm statistics, a stateful RNN's states), the metric states
    and the loss scale. Returns the clean pass' predictions.
    """
    optimizer = model.sharpness_aware_optimizer
    y_pred, new_state, new_metrics_values, overwritten = batch.clean_aux(update.aux)
    if batch.replicas > 1:
        update, new_state = _replicas_agree(update, new_state, batch.replicas)
    direction = batch.variables.trainable_values(update.direction, overwritten)
    apply_update(optimizer, dataclasses.replace(update, direction=direction), batch.variables)
    if loss_scaler is not None:
        update_loss_scale(loss_scaler, update.finite)
    # Clean-pass state, kept only if the step is committed.
    for variable, new, old in zip(batch.variables.state, new_state, batch.state):
        variable.assign(ops.where(update.finite, new, old))
    for variable, value in zip(model.metrics_variables, new_metrics_values):
        variable.assign(value)
    batch.randomness.end()
    return y_pred


def apply_update(optimizer, update, variables):
    """The inner optimizer steps with `d` from θ, the method's state is
    assigned and WSAM's decoupled step taken — only if the step is finite;
    else nothing changes and `skipped_steps` is incremented.

    `update.direction` spans `variables.trainable` (the overwritten variables'
    entries are their next values); `update.extra_step` spans the parameters.
    """
    trainable = list(variables.trainable)
    state_variables = [variable for variable, _ in update.state_updates]

    # The step's tensors go in as arguments, not through the closure: under
    # tf.distribute they are per-replica values (see `backend.apply_if`).
    def commit_step(direction, extra_step, state_values):
        learning_rate = optimizer.inner_optimizer.learning_rate  # before it steps
        optimizer.inner_optimizer.apply(direction, trainable)
        for variable, delta in zip(variables.parameters, extra_step):
            variable.assign_sub(ops.cast(learning_rate, delta.dtype) * delta)
        for variable, value in zip(state_variables, state_values):
            variable.assign(value)

    backend.apply_if(
        update.finite,
        commit_step,
        (
            list(update.direction),
            list(update.extra_step or []),
            [value for _, value in update.state_updates],
        ),
        trainable + optimizer.variables,
    )
    optimizer.skipped_steps.assign_add(ops.cast(ops.logical_not(update.finite), "int32"))


def _replicas_agree(update, non_trainable, replicas):
    """tf.distribute: the update each replica commits, and its statistics.

    The step is skipped on every replica if any one saw a non-finite value;
    every replica's inner optimizer steps with the replicas' mean direction
    (`backend.direction_for_optimizer`: TF's optimizer sums the replicas'
    gradients, torch's applies its own); each replica holds its own copy of BatchNorm's statistics
    (aggregation "none"): they are kept equal, their replicas' mean.
    """
    finite = backend.all_reduce_mean(ops.cast(update.finite, "float32")) >= 1.0
    update = dataclasses.replace(
        update,
        finite=finite,
        direction=backend.direction_for_optimizer(update.direction),
        extra_step=(
            None if update.extra_step is None
            else backend.all_reduce_mean(update.extra_step)
        ),
    )
    non_trainable = [
        backend.all_reduce_mean(v) if keras.backend.is_float_dtype(v.dtype) else v
        for v in non_trainable
    ]
    return update, non_trainable


def update_loss_scale(loss_scaler, finite):
    """Advances `loss_scaler`'s dynamic scale by its own rule: halved after a
    non-finite step, doubled after `dynamic_growth_steps` finite ones.

    Keras' own `LossScaleOptimizer.stateless_apply` decides from the
    finiteness of the gradients it is given, then steps its inner optimizer:
    it is given one scalar, finite exactly when the step was, and no
    variables, so the sharpness-aware optimizer inside has nothing to step
    (the step is committed already). Only the scale and its counter are kept
    from the result.
    """
    signal = [ops.where(finite, 0.0, math.nan)]
    values = [ops.convert_to_tensor(v.value) for v in loss_scaler.variables]
    _, new_values = loss_scaler.stateless_apply(values, signal, [])
    for variable, value in zip(loss_scaler.variables, new_values):
        if variable is loss_scaler.step_counter or variable is loss_scaler.dynamic_scale:
            variable.assign(value)
