"""The host-side clock of the training step: the optimizer's step counters,
mirrored between steps to choose the compiled step variant of the next one
(`keras_sam.optimizers.variants.StepVariant`)."""

import math
import numbers

from keras import ops

from keras_sam import keras_private


class StepClock:
    """The optimizer's step counters, mirrored on the host for whatever
    decides when periodic work is due (`_select_variant` of the optimizer, its
    method and its correction).

    A step is one update of the inner optimizer, its `iterations`: the clock
    of `rho` and learning-rate schedules. A skipped (non-finite) step does not
    advance it; under `gradient_accumulation_steps=k` it advances once per k
    micro-batches, and those k are one step for `start`, `every`,
    `search_every` and the refresh's p: all plain or all sharpness-aware, the
    periodic work on the first (docs/algorithms.md, "Periodic work and
    schedules").

    The counters live in the optimizer's variables, saved with the model:
    `read` copies them when `fit` begins and before each `train_on_batch`;
    from there `advance` follows them step by step, from each step's
    `skipped_steps` log (one host read a step), because within `fit` the
    variables may be synchronised only at the end of an epoch (JAX).

    Attributes:
        micro_steps: the micro-batches the inner optimizer has taken
            (Keras' count under accumulation; `iterations` without it).
        accumulation: k, 1 without gradient accumulation.
        skipped_steps: the optimizer's `skipped_steps`.
        refreshes: eigenvector refreshes done (`EigenCorrection.refreshes`),
            0 without a correction.
        start, every: the optimizer's: the sharpness-aware steps are
            `start_step`, `start_step + every`, ….
        epoch_start: `micro_steps` when the current epoch began (None: it
            begins with the next step).
        fit_batches: the micro-batches of the current `fit` (epochs ×
            batches per epoch), when known, else None.
    """

    def __init__(self):
        self.micro_steps = self.skipped_steps = self.refreshes = self.epoch_start = 0
        self.accumulation = self.every = 1
        self.start = 0
        self.fit_batches = None

    @property
    def step(self):
        """The current step: the inner optimizer's `iterations`."""
        return self.micro_steps // self.accumulation

    @property
    def micro_step(self):
        """The micro-batch of the current step, 0 … k − 1 (0 without accumulation)."""
        return self.micro_steps % self.accumulation

    @property
    def total_steps(self):
        """The steps of the current `fit`, when known, else None."""
        if self.fit_batches is None:
            return None
        steps = self.fit_batches / self.accumulation
        return int(steps) if steps == int(steps) else steps

    @property
    def start_step(self):
        """`start` as a step: a fraction is one of the steps of `fit`."""
        if isinstance(self.start, numbers.Integral) or not self.start:
            return int(self.start)
        if self.total_steps is None:
            raise ValueError(
                f"`start={self.start}` is a fraction of training, but the number "
                "of training steps is unknown (no `fit`, or data of unknown "
                "length): give `start` as an integer step."
            )
        return int(math.ceil(self.start * self.total_steps))

    def sharpness_aware(self, step):
        """Whether `step` is sharpness-aware (not plain) under `start` / `every`."""
        start = self.start_step
        return step >= start and (step - start) % self.every == 0

    def _sharpness_aware_before(self, step):
        return max(0, -(-(step - self.start_step) // self.every))

    @property
    def sam_steps(self):
        """Sharpness-aware steps before the current one."""
        return self._sharpness_aware_before(self.step)

    @property
    def epoch_sam_steps(self):
        """Sharpness-aware steps of the current epoch before the current one:
        of the steps that began in it (an accumulated step that straddles
        two epochs belongs to the first)."""
        epoch_start = self.micro_steps if self.epoch_start is None else self.epoch_start
        first = -(-epoch_start // self.accumulation)
        return max(0, self.sam_steps - self._sharpness_aware_before(first))

    def read(self, optimizer):
        """Copies the counters of `optimizer`, a `SharpnessAwareOptimizer`."""
        inner = optimizer.inner_optimizer
        self.accumulation = inner.gradient_accumulation_steps or 1
        self.micro_steps = _host_int(keras_private.micro_iterations(inner))
        built = optimizer.built
        self.skipped_steps = _host_int(optimizer.skipped_steps) if built else 0
        correction = optimizer.eigen_correction
        self.refreshes = _host_int(correction.refreshes) if built and correction else 0
        self.start, self.every = optimizer.start, optimizer.every

    def start_epoch(self):
        """Marks the next step as the first of an epoch."""
        self.epoch_start = None

    def advance(self, variant, skipped_steps):
        """Follows the counters through a step of `variant` (a `StepVariant`)
        just run; `skipped_steps` is the optimizer's count after it (the
        step's log)."""
        if self.epoch_start is None:
            self.epoch_start = self.micro_steps
        if skipped_steps != self.skipped_steps:
            self.skipped_steps = skipped_steps  # nothing else moved
            return
        self.micro_steps += 1
        if variant.refresh_iterations:
            self.refreshes += 1


def _host_int(value):
    return int(ops.convert_to_numpy(value))
