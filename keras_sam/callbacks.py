"""Callbacks: curvature diagnostics during `fit`."""

import math

import keras

from keras_sam import hessian
from keras_sam import keras_private

__all__ = ["SharpnessMonitor"]


class SharpnessMonitor(keras.callbacks.Callback):
    """Logs the sharpness of the loss surface on fixed data every few epochs.

    At the end of every `every`-th epoch (epochs `every - 1`, `2 every - 1`,
    ...; 0-based), on `data` at the current weights, in inference mode unless
    `training=True` (see `keras_sam.hessian`), it adds to the epoch's logs, and
    so to `model.fit`'s `History`:

    - `lambda_max`: the Hessian eigenvalue of largest magnitude (signed), by
      power iteration (`max_iterations`, `tol`);
    - `hessian_trace`: Hutchinson's estimate of tr(H) with `trace_samples`
      Rademacher vectors (the same vectors every time: `seed`);
    - `eigenvector_angle`: the angle in degrees between the loss gradient on
      `data` and the top eigenvector, signed (in [0°, 180°], relative to the
      eigenvector's orientation) unless `absolute_angle=True` (in [0°, 90°]).

    On JAX the trainer keeps the weights in its own state during an epoch;
    Keras writes them back into the variables before `on_epoch_end` (and
    `self.model` syncs them again), so the values are those of the epoch's
    final weights on every backend.

    Epochs in between get no entries, so `History.history["lambda_max"]` has
    one value per monitored epoch; `self.history` holds the same values with
    their `epoch`. Callbacks after this one (and `History`) see the values;
    those before it do not.

    Cost per monitored epoch: up to `max_iterations + trace_samples`
    Hessian-vector products and one gradient on `data` (each product a few
    gradients): keep `data` small (a few hundred samples), or split
    it with `batch_size`. The products are compiled once for the whole run.

    Args:
        data: `(x, y)` or `(x, y, sample_weight)` arrays, a list of such
            batches, or an iterable of them (read once, kept in memory).
        every: monitor every this many epochs.
        max_iterations: power iterations at most (PyHessian: 100).
        tol: relative change of the eigenvalue that stops the power iteration.
        trace_samples: Hutchinson samples (0: no `hessian_trace`).
        angle: log `eigenvector_angle`.
        absolute_angle: the orientation-free angle in [0°, 90°].
        training: evaluate the model in training mode (default: inference).
        batch_size: split array data into batches of this size.
        warm_start: start each power iteration from the previous eigenvector
            (fewer iterations; the default starts from a Gaussian drawn with
            `seed`, which makes each value reproducible by
            `keras_sam.hessian.top_eigenvalue` with the same arguments).
        seed: seed of the starting vector and the Rademacher vectors.
        prefix: prepended to the log names (e.g. `"train_"`).
        verbose: 1 prints the values.
    """

    def __init__(self, data, every=1, max_iterations=20, tol=1e-3, trace_samples=10,
                 angle=True, absolute_angle=False, training=False, batch_size=None,
                 warm_start=False, seed=0, prefix="", verbose=0):
        super().__init__()
        if every < 1:
            raise ValueError(f"`every` must be at least 1, received {every}.")
        if not isinstance(data, (tuple, list)) and not hasattr(data, "__iter__"):
            raise ValueError("`data` must be `(x, y)` arrays, or batches of them.")
        self.data = data
        self.every = int(every)
        self.max_iterations = int(max_iterations)
        self.tol = tol
        self.trace_samples = int(trace_samples)
        self.angle = angle
        self.absolute_angle = absolute_angle
        self.training = training
        self.batch_size = batch_size
        self.warm_start = warm_start
        self.seed = seed
        self.prefix = prefix
        self.verbose = verbose
        self.eigenvector = None
        self.history = {}
        self.power_iterations = None  # used by the last measurement
        self._batches = None

    def _data(self):
        if self._batches is None:  # an iterable is read once
            self._batches, _ = hessian._batches(self.data, batch_size=self.batch_size)
        return self._batches

    def measure(self):
        """The diagnostics at the current weights, as a dict of floats.

        A non-finite loss or product gives NaN values (training goes on).
        """
        # `self.model` syncs the JAX trainer's state into the variables first.
        model = self.model
        curvature = hessian.Curvature(
            model, self._data(), training=self.training, seed=self.seed
        )
        initial = self.eigenvector if self.warm_start else None
        try:
            eigenvalue, eigenvector = curvature.top_eigenvalue(
                self.max_iterations, self.tol, initial, self.seed
            )
        except FloatingPointError:  # a non-finite loss: log NaN, keep training
            self.power_iterations = curvature.iterations
            nan = {"lambda_max": math.nan}
            if self.trace_samples > 0:
                nan["hessian_trace"] = math.nan
            if self.angle:
                nan["eigenvector_angle"] = math.nan
            return nan
        self.eigenvector = eigenvector
        values = {"lambda_max": eigenvalue}
        if self.trace_samples > 0:
            values["hessian_trace"] = curvature.trace(self.trace_samples, self.seed)
        if self.angle:
            values["eigenvector_angle"] = curvature.gradient_eigenvector_angle(
                eigenvector, absolute=self.absolute_angle
            )
        self.power_iterations = curvature.iterations
        return values

    def on_epoch_end(self, epoch, logs=None):
        if (epoch + 1) % self.every:
            return
        values = self.measure()
        values = {self.prefix + name: value for name, value in values.items()}
        self.history.setdefault("epoch", []).append(epoch)
        for name, value in values.items():
            self.history.setdefault(name, []).append(value)
        if logs is not None:
            logs.update(values)
        if self.verbose:
            text = " - ".join(f"{name}: {value:.4g}" for name, value in values.items())
            keras_private.print_msg(
                f"SharpnessMonitor epoch {epoch + 1}: {text} "
                f"({self.power_iterations} power iterations)"
            )
