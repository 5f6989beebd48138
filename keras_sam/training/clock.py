"""The host-side clock of the training step: the optimizer's step counters,
mirrored between steps to choose the compiled step variant of the next one
(`keras_sam.optimizers.variants.StepVariant`)."""

import numpy as np
from keras import ops

from keras_sam import keras_private
from keras_sam.optimizers import when as policies


class StepClock:
    """The optimizer's step counters, mirrored on the host for whatever
    decides when periodic work is due (`_select_variant` of the optimizer, its
    method and its correction).

    A step is one update of the inner optimizer, its `iterations`: the clock
    of `rho` and learning-rate schedules. A skipped (non-finite) step does not
    advance it; under `gradient_accumulation_steps=k` it advances once per k
    micro-batches, and those k are one step for `start`, `every`,
    `search_every` and the refresh's p: all plain or all sharpness-aware, the
    periodic work on the first (docs/algorithms.md, "When to be
    sharpness-aware").

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
        policy: the optimizer's `step_policy` (a `keras_sam.when` policy):
            which steps are sharpness-aware.
        optimizer: the `SharpnessAwareOptimizer` read last.
        epoch_start: `micro_steps` when the current epoch began (None: it
            begins with the next step).
        fit_batches: the micro-batches of the current `fit` (epochs ×
            batches per epoch), when known, else None.
    """

    def __init__(self):
        self.micro_steps = self.skipped_steps = self.refreshes = self.epoch_start = 0
        self.accumulation = 1
        self.policy = policies.When()
        self.optimizer = None
        self.fit_batches = None
        self._counts = {}  # step → sharpness-aware steps before it (recent ones)

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

    def sharpness_aware(self, step):
        """Whether `step` is sharpness-aware (not plain) under the policy."""
        return bool(self.policy.mask(np.array([step], dtype=np.int64), self)[0])

    def _sharpness_aware_before(self, step):
        # Counted from the nearest step counted before (each step is one more
        # host decision, not a recount from 0).
        base = max((s for s in self._counts if s <= step), default=0)
        count = self._counts.get(base, 0) + self.policy.count_between(base, step, self)
        self._counts.pop(step, None)
        self._counts[step] = count  # most recently used last
        while len(self._counts) > 8:
            del self._counts[next(iter(self._counts))]
        return count

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
        self.policy, self.optimizer = optimizer.step_policy, optimizer
        self._counts = {}

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
