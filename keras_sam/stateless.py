"""A model's loss as a pure function of its variable values."""

from keras_sam import keras_private


def stateless_loss(model, values, non_trainable, metrics_values, x, y, sample_weight,
                   training=True):
    """The compiled loss (+ `model.losses`) of `model` at trainable `values`.

    No variable is changed: returns `(loss, (y_pred, new non-trainable values,
    new metric values))`, as the JAX trainer's `compute_loss_and_updates`.
    """
    kwargs = {"training": training} if keras_private.call_has_training_arg(model) else {}
    y_pred, non_trainable, losses = model.stateless_call(
        values, non_trainable, x, return_losses=True, **kwargs
    )
    # Activity regularizers etc., made visible to compute_loss.
    with keras_private.losses_override(model, losses):
        loss, (_, non_trainable, metrics_values) = model.stateless_compute_loss(
            values,
            non_trainable,
            metrics_values,
            x=x,
            y=y,
            y_pred=y_pred,
            sample_weight=sample_weight,
            training=training,
        )
    return loss, (y_pred, non_trainable, metrics_values)
