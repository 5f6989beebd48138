"""The training step of sharpness-aware methods, for any Keras model.

`SAMModel(model)` wraps a Sequential, functional or subclassed model;
`SharpnessAwareMixin` gives the same step to your own `keras.Model` subclass.
Compiled with a plain Keras optimizer, both train exactly like Keras' own step.

Conventions of the step (ALGORITHMS.md §0):
- every pass sees the same mini-batch, in training mode, as a pure function of
  the variable values (`stateless_call`); the model's variables hold the clean
  θ throughout and the inner optimizer steps from there;
- non-trainable state (BatchNorm moving statistics, dropout seed state) is
  updated by the clean pass only: later passes start from the same values, so
  they see the same dropout mask and their statistics are discarded;
- the loss and metrics reported are those of the clean pass;
- a step whose loss or gradient is non-finite in any pass changes nothing
  (weights, optimizer state, BatchNorm statistics) and is counted in the
  `skipped_steps` log.
"""

import keras
from keras import ops
from keras import tree
from keras.src.losses.loss import unscale_loss_for_distribution
from keras.src.trainers.data_adapters import data_adapter_utils

from keras_sam import backend
from keras_sam.optimizers.base import SharpnessAwareOptimizer


def _values(variables):
    """Current values as tensors (inside a JAX stateless scope: its values)."""
    return [ops.convert_to_tensor(v.value) for v in variables]


class SharpnessAwareMixin:
    """Gives a `keras.Model` subclass the sharpness-aware `train_step`.

    ```python
    class MyModel(keras_sam.SharpnessAwareMixin, keras.Model):
        ...
    ```

    The mixin must come before `keras.Model` among the bases.
    """

    @property
    def sharpness_aware_optimizer(self):
        """The `SharpnessAwareOptimizer` compiled in, or None."""
        optimizer = getattr(self, "optimizer", None)
        return optimizer if isinstance(optimizer, SharpnessAwareOptimizer) else None

    def train_step(self, *args):
        if self.sharpness_aware_optimizer is None:
            return super().train_step(*args)
        return backend.run_train_step(self, self._sharpness_aware_step, args)

    # -- diagnostics as running means over the epoch -----------------------
    def _diagnostic_trackers(self):
        optimizer = self.sharpness_aware_optimizer
        if not self.compiled or optimizer is None or not optimizer.diagnostics:
            return []
        trackers = self.__dict__.get("_sam_trackers")
        names = tuple(optimizer.diagnostic_names)
        if trackers is None or tuple(trackers) != names:
            # Not assigned as attributes: Keras would track them as permanent
            # metrics of the model, also under a plain optimizer.
            trackers = {name: keras.metrics.Mean(name=name) for name in names}
            self.__dict__["_sam_trackers"] = trackers
        return list(trackers.values())

    @property
    def metrics(self):
        return super().metrics + self._diagnostic_trackers()

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        if not self.__dict__.get("_sam_in_train_step", False):
            for tracker in self._diagnostic_trackers():
                logs.pop(tracker.name, None)
        return logs

    # -- the step ------------------------------------------------------------
    def _stateless_loss(self, params, non_trainable, metrics_values, x, y, sample_weight):
        """Loss at `params`; returns new non-trainable and metric values."""
        kwargs = {"training": True} if self._call_has_training_arg else {}
        y_pred, non_trainable, losses = self.stateless_call(
            params, non_trainable, x, return_losses=True, **kwargs
        )
        if losses:  # activity regularizers etc., as the JAX trainer does
            self._losses_override.clear()
            self._losses_override = losses
        loss, (_, non_trainable, metrics_values) = self.stateless_compute_loss(
            params,
            non_trainable,
            metrics_values,
            x=x,
            y=y,
            y_pred=y_pred,
            sample_weight=sample_weight,
            training=True,
        )
        if losses:
            self._losses_override.clear()
        return loss, (y_pred, non_trainable, metrics_values)

    def _sharpness_aware_step(self, data):
        optimizer = self.sharpness_aware_optimizer
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        if not self.built:
            # TF without a distribution strategy defers building to the first
            # trace of the step; the unused outputs are pruned from the graph.
            self(x, training=False)
        trainable_variables = self.trainable_variables
        if not optimizer.built:
            optimizer.build(trainable_variables)
        params = _values(trainable_variables)
        non_trainable = _values(self.non_trainable_variables)
        metrics_values = _values(self.metrics_variables)

        def loss_fn(values):
            return self._stateless_loss(
                values, non_trainable, metrics_values, x, y, sample_weight
            )

        update = optimizer.compute_update(backend.value_and_grad(loss_fn), params)
        y_pred, new_non_trainable, new_metrics_values = update.aux
        optimizer.apply_update(update, trainable_variables)

        # Clean-pass statistics, kept only if the step is committed.
        for variable, new, old in zip(
            self.non_trainable_variables, new_non_trainable, non_trainable
        ):
            variable.assign(ops.where(update.finite, new, old))
        for variable, value in zip(self.metrics_variables, new_metrics_values):
            variable.assign(value)

        batch_size = ops.shape(next(i for i in tree.flatten(x) if i is not None))[0]
        self._loss_tracker.update_state(
            unscale_loss_for_distribution(update.loss), sample_weight=batch_size
        )
        weight = ops.cast(update.finite, "float32")
        for tracker in self._diagnostic_trackers():
            value = ops.cast(update.diagnostics[tracker.name], "float32")
            tracker.update_state(ops.where(update.finite, value, 0.0), sample_weight=weight)
        self.__dict__["_sam_in_train_step"] = True
        try:
            logs = self.compute_metrics(x, y, y_pred, sample_weight)
        finally:
            self.__dict__["_sam_in_train_step"] = False
        logs["skipped_steps"] = ops.convert_to_tensor(optimizer.skipped_steps.value)
        return logs


@keras.saving.register_keras_serializable(package="keras_sam")
class SAMModel(SharpnessAwareMixin, keras.Model):
    """Wraps any Keras model so that `fit` trains it sharpness-aware.

    ```python
    model = keras_sam.SAMModel(model)
    model.compile(optimizer=keras_sam.SAM(keras.optimizers.SGD(0.1, momentum=0.9)),
                  loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y)
    ```

    `call`, `evaluate`, `predict`, callbacks and saving behave as for the
    wrapped model, whose variables are the wrapper's variables.
    """

    def __init__(self, model, **kwargs):
        if not isinstance(model, keras.layers.Layer):
            raise ValueError(
                f"`model` must be a Keras model (or layer), received {model!r}."
            )
        super().__init__(**kwargs)
        self.model = model
        if model.built:
            self.built = True

    def call(self, inputs, training=None):
        return self.model(inputs, training=training)

    def get_config(self):
        return {
            "name": self.name,
            "trainable": self.trainable,
            "model": keras.saving.serialize_keras_object(self.model),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        model = keras.saving.deserialize_keras_object(
            config.pop("model"), custom_objects=custom_objects
        )
        return cls(model, **config)
