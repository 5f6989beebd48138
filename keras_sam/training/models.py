"""The training step of sharpness-aware methods, for any Keras model.

`SAMModel(model)` wraps a Sequential, functional or subclassed model;
`SharpnessAwareMixin` gives the same step to your own `keras.Model` subclass.
Compiled with a plain Keras optimizer, both train exactly like Keras' own step.

Conventions of the step (docs/algorithms.md, "Conventions"):
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

import warnings

import keras
from keras import ops
from keras import tree
from keras_sam import backend
from keras_sam.training import commit
from keras_sam import keras_private
from keras_sam.training import passes
from keras_sam import stateless
from keras_sam.optimizers.base import SharpnessAwareOptimizer
from keras_sam.optimizers.variants import DEFAULT
from keras_sam.training.clock import StepClock


class _TrainingClock(StepClock, keras.callbacks.Callback):
    """The `StepClock` of a model. `fit` adds it as a callback: it reads the
    optimizer's counters when `fit` begins, as `train_on_batch` does before
    each step; in custom loops call `on_epoch_begin` to mark epochs.
    """

    def __init__(self):
        keras.callbacks.Callback.__init__(self)
        StepClock.__init__(self)

    def on_train_begin(self, logs=None):
        params = self.params or {}
        epochs, steps = params.get("epochs"), params.get("steps")
        self.fit_batches = epochs * steps if epochs and steps else None
        self.read(self.model.sharpness_aware_optimizer)

    def on_epoch_begin(self, epoch, logs=None):
        self.start_epoch()

    def after_step(self, variant, result):
        """Follows the counters through the step; `result` is what the
        backend's train function returned (JAX: logs and state)."""
        logs = result[0] if isinstance(result, tuple) else result
        self.advance(variant, int(ops.convert_to_numpy(logs["skipped_steps"])))


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
        # In `__dict__`: created on first use, also for a model loaded from a
        # file or built by Keras' `from_config`, without a constructor of ours.
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

    def train_on_batch(self, *args, **kwargs):
        optimizer = self.sharpness_aware_optimizer
        if optimizer is not None:
            # The variables hold the counters between steps outside `fit`.
            self.training_clock.read(optimizer)
        return super().train_on_batch(*args, **kwargs)

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
        self._make_diagnostic_trackers()
        if self.sharpness_aware_optimizer is not None:
            stateless.refuse_stateful_modules(self)
            backend.check_train_setup(self)
        reason = backend.COMPILED_STEP_UNSUPPORTED
        if not (reason and self.jit_compile and self.sharpness_aware_optimizer is not None):
            return self._make_sharpness_aware_train_function(force)
        # The step runs eagerly; `jit_compile` is kept for evaluate/predict
        # (Keras' own steps) and for `get_compile_config`.
        # (`__dict__`: once per model, whatever built it, see `training_clock`.)
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
        # Keras' trainers build the train function from `self.train_step`,
        # looked up by attribute when they make it (JAX), trace it (TF) or
        # call it (torch): the variant reaches the step through the model's
        # `__dict__` (untracked by Keras), set before each of those moments.
        # Passing it as an argument would mean building the train function
        # ourselves, per backend.
        optimizer = self.sharpness_aware_optimizer
        variants = optimizer._step_variants() if optimizer is not None else (DEFAULT,)
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
        clock.read(optimizer)

        def train_function(*args):
            variant = optimizer._select_variant(clock)
            # The torch trainer looks `train_step` up at every call.
            self.__dict__["_sam_variant"] = variant
            result = functions[variant](*args)
            clock.after_step(variant, result)
            return result

        self.train_function = train_function
        return train_function

    # -- diagnostics as running means over the epoch -----------------------
    def _make_diagnostic_trackers(self):
        """One running mean per logged diagnostic of the compiled optimizer,
        made with the train function (`compile` stays Keras' own, so that
        loading a model compiles it)."""
        optimizer = self.sharpness_aware_optimizer
        names = optimizer.logged_diagnostics() if optimizer is not None else ()
        if tuple(t.name for t in self._diagnostic_trackers()) == names:
            return
        # In `__dict__`, not assigned as an attribute: Keras would track them
        # as permanent metrics of the model, also after a later `compile`
        # with a plain optimizer.
        self.__dict__["_sam_trackers"] = [keras.metrics.Mean(name=name) for name in names]

    def _diagnostic_trackers(self):
        return self.__dict__.get("_sam_trackers", [])

    @property
    def metrics(self):
        # Listed with the model's metrics: reset every epoch, and carried
        # through JAX's stateless step as metric variables.
        return super().metrics + self._diagnostic_trackers()

    def compute_metrics(self, x, y, y_pred, sample_weight=None):
        logs = super().compute_metrics(x, y, y_pred, sample_weight)
        # The diagnostics belong to training steps only (`_step_logs`).
        for tracker in self._diagnostic_trackers():
            logs.pop(tracker.name, None)
        return logs

    # -- the step ------------------------------------------------------------
    def _sharpness_aware_step(self, data):
        """Gather the batch's passes, compute the method's update, commit it."""
        optimizer = self.sharpness_aware_optimizer
        x, y, sample_weight = keras.utils.unpack_x_y_sample_weight(data)
        self._build_for_step(x)
        loss_scaler = self.optimizer if self.optimizer is not optimizer else None
        variant = self.__dict__.get("_sam_variant", DEFAULT)
        batch = passes.gather(
            self, (x, y, sample_weight), optimizer, loss_scaler, grouped=not variant.plain
        )
        update = optimizer._compute_update(
            batch.passes, batch.params, variant, batch.groups, batch.group_count
        )
        y_pred = commit.commit(self, update, batch, loss_scaler)
        # The clean pass may have seen the first examples only (`ascent_fraction`).
        x, y, sample_weight = passes.first_rows((x, y, sample_weight), y_pred)
        return self._step_logs(x, y, y_pred, sample_weight, update)

    def _build_for_step(self, x):
        if not self.built:
            # TF without a distribution strategy defers building to the first
            # trace of the step; the unused outputs are pruned from the graph.
            self(x, training=False)
        if not self.optimizer.built:
            self.optimizer.build(self.trainable_variables)

    def _step_logs(self, x, y, y_pred, sample_weight, update):
        """The clean pass' loss and metrics, the diagnostics' running means
        (over committed sharpness-aware steps) and `skipped_steps`."""
        batch_size = ops.shape(next(i for i in tree.flatten(x) if i is not None))[0]
        keras_private.loss_tracker(self).update_state(update.loss, sample_weight=batch_size)
        counted = (
            update.finite if update.climbed is None
            else ops.logical_and(update.finite, update.climbed)
        )
        weight = ops.cast(counted, "float32")
        for tracker in self._diagnostic_trackers():
            if tracker.name not in update.diagnostics:
                continue  # a plain step chosen on the host (`when`, `start`, `every`)
            value = ops.cast(update.diagnostics[tracker.name], "float32")
            tracker.update_state(ops.where(counted, value, 0.0), sample_weight=weight)
        logs = self.compute_metrics(x, y, y_pred, sample_weight)
        logs.update({tracker.name: tracker.result() for tracker in self._diagnostic_trackers()})
        # A copy: eager TF would hand the variable itself to the trainer,
        # which cannot pass a variable out of the step.
        logs["skipped_steps"] = ops.copy(self.sharpness_aware_optimizer.skipped_steps.value)
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
