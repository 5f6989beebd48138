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

import dataclasses
import warnings

import keras
from keras import ops
from keras import tree
from keras.src.losses.loss import unscale_loss_for_distribution
from keras.src.trainers.data_adapters import data_adapter_utils

from keras_sam import backend
from keras_sam import vectors
from keras_sam.optimizers.base import Passes, SharpnessAwareOptimizer
from keras_sam.stateless import stateless_loss


class _TrainingClock(keras.callbacks.Callback):
    """Counts steps on the host, so that periodic work (XSAM's search on the
    first batch of an epoch, eigenvector refreshes, every-k SAM) is chosen
    from Python between steps. `fit` adds it; in custom loops that call
    `train_on_batch` it just counts steps (call `on_epoch_begin` to mark
    epochs).
    """

    def __init__(self):
        super().__init__()
        self.step = 0  # global training step (the optimizer's iterations)
        self.epoch_step = 0
        self.sam_steps = 0  # sharpness-aware (not "plain") steps
        self.epoch_sam_steps = 0
        self.total_steps = None  # of the current `fit`, when known
        self.eigen_refreshes = 0  # X-SAM's eigenvector refreshes so far

    def on_train_begin(self, logs=None):
        optimizer = self.model.sharpness_aware_optimizer
        if optimizer is not None and optimizer.built:
            self.step = int(ops.convert_to_numpy(optimizer.iterations))
            if optimizer.eigen_correction is not None:
                refreshes = optimizer.eigen_correction.refreshes
                self.eigen_refreshes = int(ops.convert_to_numpy(refreshes))
        params = self.params or {}
        epochs, steps = params.get("epochs"), params.get("steps")
        self.total_steps = epochs * steps if epochs and steps else None

    def on_epoch_begin(self, epoch, logs=None):
        self.epoch_step = self.epoch_sam_steps = 0

    def tick(self, variant):
        self.step += 1
        self.epoch_step += 1
        if variant != "plain":
            self.sam_steps += 1
            self.epoch_sam_steps += 1
        if variant.endswith(("+refresh", "+warmup")):
            self.eigen_refreshes += 1


def _unscaled_value_and_grad(loss_fn, loss_scaler):
    """Value and gradient of `loss_fn`, through dynamic loss scaling if any.

    Under `mixed_float16` every pass differentiates the scaled loss (so that
    float16 gradients do not underflow) and unscales the gradient at once:
    the method normalises, compares and combines unscaled gradients, and the
    final direction is never unscaled twice. An overflow shows as a
    non-finite norm and skips the step.
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
        return (loss, aux), [g / ops.cast(scale, g.dtype) for g in grads]

    return value_and_grad


def _update_loss_scale(loss_scaler, finite):
    """`LossScaleOptimizer`'s dynamic scale: halve after a non-finite step,
    double after `dynamic_growth_steps` finite ones (its `apply` is bypassed
    because the step is not a plain gradient step)."""
    counter, scale = loss_scaler.step_counter, loss_scaler.dynamic_scale
    grow = ops.equal(counter.value, loss_scaler.dynamic_growth_steps - 1)
    zero = ops.zeros_like(counter.value)
    counter.assign(ops.where(finite, ops.where(grow, zero, counter.value + 1), zero))
    scale.assign(
        ops.where(finite, ops.where(grow, scale.value * 2.0, scale.value), scale.value * 0.5)
    )


def _split_batch(data, groups):
    """`groups` contiguous parts of every array in `data` (x, y, sw), and
    each part's share of the batch.

    Part i holds examples ⌊iB/G⌋ … ⌊(i+1)B/G⌋ − 1: equal parts when G divides
    the batch size B, else sizes differing by one (a last, partial batch —
    whose size a compiled step may not know while tracing).
    """
    first = next(i for i in tree.flatten(data) if i is not None)
    size = ops.shape(first)[0]
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


def _merge_group_aux(auxes, shares, metrics_values):
    """One clean-pass aux from the perturbation groups' ones.

    Predictions are concatenated; float non-trainable values (BatchNorm's
    moving statistics) averaged with the groups' shares of the batch (as
    replicas' are averaged under data parallelism); metric states (the
    compiled loss' trackers) are sums of per-batch increments.
    """
    y_preds, non_trainables, metrics = zip(*auxes)
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
    return y_pred, non_trainable, metrics_values


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
        """The `SharpnessAwareOptimizer` compiled in (also inside the
        `LossScaleOptimizer` that `mixed_float16` adds), or None."""
        optimizer = getattr(self, "optimizer", None)
        if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
            optimizer = optimizer.inner_optimizer
        return optimizer if isinstance(optimizer, SharpnessAwareOptimizer) else None

    def train_step(self, *args):
        if self.sharpness_aware_optimizer is None:
            return super().train_step(*args)
        return backend.run_train_step(self, self._sharpness_aware_step, args)

    # -- host-side choice between compiled step variants -----------------------
    @property
    def training_clock(self):
        clock = self.__dict__.get("_sam_clock")
        if clock is None:
            clock = self.__dict__["_sam_clock"] = _TrainingClock()
        return clock

    def fit(self, *args, **kwargs):
        if self.sharpness_aware_optimizer is not None:
            # `callbacks` is fit's sixth positional argument.
            if len(args) > 5:
                args = args[:5] + (self._with_clock(args[5]),) + args[6:]
            else:
                kwargs["callbacks"] = self._with_clock(kwargs.get("callbacks"))
        return super().fit(*args, **kwargs)

    def _with_clock(self, callbacks):
        clock = self.training_clock
        if callbacks is None:
            return [clock]
        if isinstance(callbacks, keras.callbacks.CallbackList):
            if clock not in callbacks.callbacks:
                callbacks.append(clock)
            return callbacks
        callbacks = list(callbacks)
        return callbacks if clock in callbacks else callbacks + [clock]

    def make_train_function(self, force=False):
        reason = backend.COMPILED_STEP_UNSUPPORTED
        if not (reason and self.jit_compile and self.sharpness_aware_optimizer is not None):
            return self._make_sharpness_aware_train_function(force)
        # The step runs eagerly; `jit_compile` is kept for evaluate/predict
        # (Keras' own steps) and for `get_compile_config`.
        if not self.__dict__.get("_sam_warned_eager"):
            self.__dict__["_sam_warned_eager"] = True
            warnings.warn(
                f"{type(self).__name__}: the sharpness-aware train step runs eagerly "
                f"although jit_compile=True ({reason}). evaluate() and predict() "
                "are compiled as asked.",
                stacklevel=2,
            )
        self.jit_compile = False
        try:
            return self._make_sharpness_aware_train_function(force)
        finally:
            self.jit_compile = True

    def _make_sharpness_aware_train_function(self, force):
        optimizer = self.sharpness_aware_optimizer
        variants = optimizer.step_variants() if optimizer is not None else ("default",)
        if self.train_function is not None and not force:
            return self.train_function
        if len(variants) == 1:
            self.__dict__["_sam_variant"] = variants[0]
            return super().make_train_function(force=force)
        if self.steps_per_execution != 1:
            raise ValueError(
                f"{type(optimizer).__name__} chooses the step to run from Python "
                "before each step, which needs `steps_per_execution=1` in compile()."
            )
        functions = {}
        for variant in variants:
            # A distinct step function per variant: jax.jit caches traces by
            # function, so one shared `train_step` would reuse one trace.
            def variant_step(*args, _variant=variant):
                self.__dict__["_sam_variant"] = _variant
                return type(self).train_step(self, *args)

            self.__dict__["train_step"] = variant_step
            try:
                super().make_train_function(force=True)
            finally:
                del self.__dict__["train_step"]
            functions[variant] = self.train_function
        clock = self.training_clock

        def train_function(*args):
            variant = optimizer.select_variant(clock)
            # The torch trainer looks `train_step` up at every call.
            self.__dict__["_sam_variant"] = variant
            try:
                return functions[variant](*args)
            finally:
                clock.tick(variant)

        self.train_function = train_function
        return train_function

    # -- diagnostics as running means over the epoch -----------------------
    def _diagnostic_trackers(self):
        optimizer = self.sharpness_aware_optimizer
        if not self.compiled or optimizer is None or not optimizer.diagnostics:
            return []
        trackers = self.__dict__.get("_sam_trackers")
        names = optimizer.logged_diagnostics()
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
    def _sharpness_aware_step(self, data):
        optimizer = self.sharpness_aware_optimizer
        x, y, sample_weight = data_adapter_utils.unpack_x_y_sample_weight(data)
        if not self.built:
            # TF without a distribution strategy defers building to the first
            # trace of the step; the unused outputs are pruned from the graph.
            self(x, training=False)
        trainable_variables = self.trainable_variables
        if not self.optimizer.built:
            self.optimizer.build(trainable_variables)
        params = _values(trainable_variables)
        non_trainable = _values(self.non_trainable_variables)
        metrics_values = _values(self.metrics_variables)

        loss_scaler = self.optimizer if self.optimizer is not optimizer else None
        replicas = backend.replicas_in_sync()
        group_count = optimizer.perturbation_group_count()
        if group_count > 1 and group_count % replicas:
            raise ValueError(
                f"perturbation_groups={optimizer.perturbation_groups} ({group_count} "
                f"groups) does not divide among the {replicas} replicas."
            )
        # One group: the global batch's, whatever the replicas.
        local_groups = max(1, group_count // replicas)

        def make_passes(x, y, sample_weight, all_reduce):
            def loss_fn(values, training=True, data=(x, y, sample_weight)):
                loss, aux = stateless_loss(
                    self, values, non_trainable, metrics_values, *data, training
                )
                # tf.distribute scales each replica's loss by 1/replicas: the
                # method works with this share's own mean loss.
                return unscale_loss_for_distribution(loss), aux

            value_and_grad = _unscaled_value_and_grad(loss_fn, loss_scaler)
            forward = backend.forward(lambda values: loss_fn(values)[0])

            def hvp(values, vectors, examples=None):
                # The curvature is always the global batch's (or of the first
                # `examples` of each replica's share).
                data = (x, y, sample_weight) if examples is None else tree.map_structure(
                    lambda t: None if t is None else t[:examples], (x, y, sample_weight)
                )
                return backend.all_reduce_mean(backend.hvp(
                    lambda v: loss_fn(v, training=False, data=data)[0], values, vectors
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

        # One perturbation for the global batch: the replicas' ascent
        # gradients are averaged before they are used.
        passes = make_passes(x, y, sample_weight, all_reduce=group_count == 1 and replicas > 1)
        groups = None
        if local_groups > 1:
            parts, shares = _split_batch((x, y, sample_weight), local_groups)
            groups = [
                dataclasses.replace(make_passes(*part, all_reduce=False), share=share)
                for part, share in zip(parts, shares)
            ]
        update = optimizer.compute_update(
            passes, params, self.__dict__.get("_sam_variant", "default"), groups
        )
        if groups is not None:
            aux = _merge_group_aux(update.aux, shares, metrics_values)
        else:
            aux = update.aux
        y_pred, new_non_trainable, new_metrics_values = aux
        if replicas > 1:
            # Skip on every replica if any one saw a non-finite value, and
            # hand the inner optimizer this replica's share: it sums them.
            finite = backend.all_reduce_mean(ops.cast(update.finite, "float32")) >= 1.0
            update = dataclasses.replace(
                update,
                finite=finite,
                direction=vectors.scale(update.direction, 1.0 / replicas),
                extra_step=(
                    None if update.extra_step is None
                    else backend.all_reduce_mean(update.extra_step)
                ),
            )
        optimizer.apply_update(update, trainable_variables)
        if loss_scaler is not None:
            _update_loss_scale(loss_scaler, update.finite)

        if replicas > 1:
            # Each replica holds its own copy of BatchNorm's statistics
            # (aggregation "none"): keep them equal, their replicas' mean.
            new_non_trainable = [
                backend.all_reduce_mean(v) if keras.backend.is_float_dtype(v.dtype) else v
                for v in new_non_trainable
            ]
        # Clean-pass statistics, kept only if the step is committed.
        for variable, new, old in zip(
            self.non_trainable_variables, new_non_trainable, non_trainable
        ):
            variable.assign(ops.where(update.finite, new, old))
        for variable, value in zip(self.metrics_variables, new_metrics_values):
            variable.assign(value)

        batch_size = ops.shape(next(i for i in tree.flatten(x) if i is not None))[0]
        self._loss_tracker.update_state(update.loss, sample_weight=batch_size)
        weight = ops.cast(update.finite, "float32")
        for tracker in self._diagnostic_trackers():
            if tracker.name not in update.diagnostics:
                continue  # a plain step of `start` / `every`
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

    A model that is already sharpness-aware (a `SAMModel`, or a model with
    `SharpnessAwareMixin`) is refused: compile and fit it directly.
    """

    def __init__(self, model, **kwargs):
        if not isinstance(model, keras.layers.Layer):
            raise ValueError(
                f"`model` must be a Keras model (or layer), received {model!r}."
            )
        if isinstance(model, SharpnessAwareMixin):
            raise ValueError(
                f"`model` is already sharpness-aware ({type(model).__name__}): compile "
                "and fit it directly instead of wrapping it again."
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
