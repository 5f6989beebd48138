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
    """Commits `update` (from `compute_update`) of one step of `model`.

    `batch` is the step's `BatchPasses`; `loss_scaler` the
    `LossScaleOptimizer` around the sharpness-aware optimizer, if any.
    Updates the inner optimizer and the weights, the method's state,
    the non-trainable variables (the clean pass' BatchNorm statistics), the
    metric states and the loss scale. Returns the clean pass' predictions.
    """
    optimizer = model.sharpness_aware_optimizer
    y_pred, new_non_trainable, new_metrics_values = batch.clean_aux(update.aux)
    if batch.replicas > 1:
        update, new_non_trainable = _replicas_agree(update, new_non_trainable, batch.replicas)
    optimizer.apply_update(update, model.trainable_variables)
    if loss_scaler is not None:
        update_loss_scale(loss_scaler, update.finite)
    # Clean-pass statistics, kept only if the step is committed.
    for variable, new, old in zip(
        model.non_trainable_variables, new_non_trainable, batch.non_trainable
    ):
        variable.assign(ops.where(update.finite, new, old))
    for variable, value in zip(model.metrics_variables, new_metrics_values):
        variable.assign(value)
    return y_pred


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

    `LossScaleOptimizer.stateless_apply` decides from the finiteness of the
    gradients it is given and then steps its inner optimizer: it is given one
    scalar, finite exactly when the step was, and the sharpness-aware
    optimizer inside passes it through (the step is committed already). Only
    the scale and its counter are kept from the result.
    """
    signal = [ops.where(finite, 0.0, math.nan)]
    values = [ops.convert_to_tensor(v.value) for v in loss_scaler.variables]
    with loss_scaler.inner_optimizer.passing_through():
        _, new_values = loss_scaler.stateless_apply(values, signal, [])
    for variable, value in zip(loss_scaler.variables, new_values):
        if variable is loss_scaler.step_counter or variable is loss_scaler.dynamic_scale:
            variable.assign(value)
