"""When a step is sharpness-aware: small policies every method takes (`when=`).

    keras_sam.SAM(inner, rho=0.1, when=keras_sam.when.Random(p=0.5))

A policy decides, step by step, whether a step runs the method's sharpness-
aware step or the inner optimizer's own step (one forward–backward). Steps are
the inner optimizer's `iterations` (under gradient accumulation, updates).

- `Periodic(every, start)`: steps `start`, `start + every`, … (what the
  optimizers' `start=` / `every=` arguments build).
- `Random(p, seed)`: RST, random switching (Zhao et al., "SS-SAM: Stochastic
  Scheduled Sharpness-Aware Minimization", 2022): each step is sharpness-aware
  with probability p, a number or a schedule of the step.
- `LateLearningRate(fraction)`: once the inner optimizer's learning rate has
  decayed to `fraction` of its peak so far (late-phase SAM tied to the
  learning-rate schedule).
- `GradientNormGate(c, decay)`: AE-SAM (Jiang et al., "An Adaptive Policy to
  Employ Sharpness-Aware Minimization", ICLR 2023): decided inside the
  compiled step from the clean gradient's squared norm against its running
  mean and variance.
- `All(policies)`: the steps every one of `policies` chooses.

The first three decide on the host before the step, from the step count alone
(deterministic, so resuming from a saved model or splitting `fit` repeats the
same choices): the plain and sharpness-aware steps are separately compiled
functions, and the plain ones cost one pass. The gate decides from data, inside
the step, with a conditional: its plain steps skip the ascent's passes where
the backend runs one branch (JAX, TensorFlow graphs, torch).
"""

import copy
import math

import keras
import numpy as np
from keras import ops

from keras_sam import backend
from keras_sam import keras_private
from keras_sam.optimizers import checks
from keras_sam.optimizers.checks import require

_BLOCK = 4096  # host-side schedule values are computed in blocks of steps


@keras.saving.register_keras_serializable(package="keras_sam.when")
class When:
    """A policy: every step sharpness-aware (the default). Subclasses override
    `mask` (host-side) or `gate` (in the step)."""

    #: Whether some steps are plain, chosen on the host.
    has_plain_steps = False

    def mask(self, steps, clock):
        """Booleans: which of `steps` (an int array) are sharpness-aware.
        `clock` is the `StepClock` (for `total_steps`, the optimizer)."""
        return np.ones(len(steps), dtype=bool)

    def count_between(self, low, high, clock):
        """The sharpness-aware steps among low … high − 1."""
        return sum(
            int(self.mask(np.arange(start, min(start + _BLOCK, high)), clock).sum())
            for start in range(low, high, _BLOCK)
        )

    def build(self, optimizer, var_list):
        """Creates the policy's state in `optimizer` (the gate's)."""

    def check(self, optimizer):
        """Refuses an optimizer the policy cannot serve (a clear error)."""

    def gate(self, optimizer, clean_grads_norm):
        """In-step: None (no gate), or (climbs, state updates) from the clean
        gradient's norm — `climbs` a boolean tensor."""
        return None

    def clone(self):
        """A copy with state of its own (a gate builds its variables in the
        optimizer that takes it)."""
        return copy.copy(self)

    def get_config(self):
        return {}

    @classmethod
    def from_config(cls, config):
        return cls(**config)

    def __repr__(self):
        args = ", ".join(f"{k}={v!r}" for k, v in self.get_config().items())
        return f"{type(self).__name__}({args})"


@keras.saving.register_keras_serializable(package="keras_sam.when")
class Periodic(When):
    """Steps `start`, `start + every`, …: the first sharpness-aware step is
    `start` (an integer step, or a fraction in [0, 1) of the steps of `fit`),
    then one in `every`; the others are the inner optimizer's own."""

    def __init__(self, every=1, start=0):
        self.every = checks.integer("every", every, minimum=1)
        require(
            checks.is_number(start) and start >= 0 and (checks.is_integer(start) or start < 1),
            "start", "an integer step >= 0 or a fraction in [0, 1)", start,
        )
        self.start = int(start) if checks.is_integer(start) else float(start)
        self.has_plain_steps = bool(self.start) or self.every > 1

    def start_step(self, clock):
        if checks.is_integer(self.start) or not self.start:
            return int(self.start)
        if clock.total_steps is None:
            raise ValueError(
                f"`start={self.start}` is a fraction of training, but the number "
                "of training steps is unknown (no `fit`, or data of unknown "
                "length): give `start` as an integer step."
            )
        return int(math.ceil(self.start * clock.total_steps))

    def mask(self, steps, clock):
        start = self.start_step(clock)
        return (steps >= start) & ((steps - start) % self.every == 0)

    def count_between(self, low, high, clock):
        start = self.start_step(clock)

        def before(step):
            return max(0, -(-(step - start) // self.every))

        return before(high) - before(low) if high > low else 0

    def get_config(self):
        return {"every": self.every, "start": self.start}


def _hash_uniform(seed, steps):
    """Uniform [0, 1) numbers, one per step, from a counter-based hash of
    (seed, step) (SplitMix64): the same for a step however it is reached."""
    def mix(z):
        z = z + np.uint64(0x9E3779B97F4A7C15)
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))

    with np.errstate(over="ignore"):
        key = mix(np.array([seed], dtype=np.uint64))
        z = mix(np.asarray(steps, dtype=np.uint64) ^ key)
    return (z >> np.uint64(11)).astype(np.float64) / float(2**53)


class _HostSchedule:
    """A schedule's values at integer steps, on the host, kept with their
    running maximum. Evaluated in blocks of steps by one vectorised call (the
    schedule on an array, else `keras.ops.vectorized_map`), else step by step
    with the schedule compiled, only as far as asked."""

    def __init__(self, schedule):
        self.schedule = schedule
        self.values = np.zeros(0)
        self.peaks = np.zeros(0)  # running maximum of `values`
        self._vectorised = None  # how the schedule takes arrays, once found
        self._scalar = None

    def _vectorised_ways(self):
        yield lambda steps: self.schedule(steps)
        yield lambda steps: ops.vectorized_map(self.schedule, steps)

    def _evaluate_block(self, steps):
        ways = [self._vectorised] if self._vectorised else self._vectorised_ways()
        for way in ways:
            try:
                values = np.asarray(ops.convert_to_numpy(way(ops.convert_to_tensor(steps))))
            except Exception:  # noqa: BLE001 — e.g. a conditional on a scalar step
                continue
            if values.shape == steps.shape:
                self._vectorised = way
                return values.astype(np.float64)
        return None

    def _evaluate_each(self, steps):
        if self._scalar is None:
            self._scalar = backend.compile_function(self.schedule)
        return np.array([float(ops.convert_to_numpy(self._scalar(ops.convert_to_tensor(int(t)))))
                         for t in steps])

    def at(self, steps):
        steps = np.asarray(steps, dtype=np.int64)
        needed = int(steps.max()) + 1 if len(steps) else 0
        while len(self.values) < needed:
            low = len(self.values)
            values = None
            if self._vectorised is not False:
                values = self._evaluate_block(np.arange(low, low + _BLOCK, dtype=np.int64))
                if values is None:
                    self._vectorised = False
            if values is None:
                values = self._evaluate_each(np.arange(low, needed, dtype=np.int64))
            peak = self.peaks[-1] if len(self.peaks) else -np.inf
            self.values = np.concatenate([self.values, values])
            self.peaks = np.concatenate([self.peaks, np.maximum.accumulate(
                np.maximum(values, peak))])
        return self.values[steps]

    def peak_until(self, steps):
        self.at(steps)
        return self.peaks[np.asarray(steps, dtype=np.int64)]


def _deserialized(value):
    """A schedule or policy as given, or rebuilt from its `get_config` dict."""
    if isinstance(value, dict):
        return keras.saving.deserialize_keras_object(value)
    return value


def _serialized(value):
    return keras.saving.serialize_keras_object(value) if callable(value) else value


@keras.saving.register_keras_serializable(package="keras_sam.when")
class Random(When):
    """RST (random switching): each step is sharpness-aware with probability
    `p` — a number in [0, 1], or a schedule of the step (a Keras
    `LearningRateSchedule` or a callable of the step), e.g. SS-SAM's rising
    p. The draws hash (`seed`, step), so a resumed run makes the same ones.
    Expected cost: (1 + mean p) passes per step."""

    has_plain_steps = True

    def __init__(self, p=0.5, seed=0):
        p = _deserialized(p)
        if not callable(p):
            require(checks.is_number(p) and 0 <= p <= 1, "p", "a number in [0, 1] or a schedule", p)
            p = float(p)
        self.p = p
        self.seed = checks.integer("seed", seed, minimum=0)
        self._p_values = _HostSchedule(p) if callable(p) else None

    def mask(self, steps, clock):
        p = self._p_values.at(steps) if self._p_values else self.p
        return _hash_uniform(self.seed, steps) < p

    def get_config(self):
        return {"p": _serialized(self.p), "seed": self.seed}


@keras.saving.register_keras_serializable(package="keras_sam.when")
class LateLearningRate(When):
    """Late-phase SAM tied to the learning-rate schedule: a step is
    sharpness-aware once the inner optimizer's learning rate at it is at most
    `fraction` of the largest learning rate of the steps so far (once that is
    above 0). Needs a learning-rate schedule on the inner optimizer."""

    has_plain_steps = True

    def __init__(self, fraction=0.5):
        require(checks.is_number(fraction) and 0 < fraction <= 1, "fraction",
                "a number in (0, 1]", fraction)
        self.fraction = float(fraction)
        self._learning_rates = None

    def check(self, optimizer):
        schedule = keras_private.learning_rate_object(optimizer.inner_optimizer)
        if not isinstance(schedule, keras.optimizers.schedules.LearningRateSchedule):
            raise ValueError(
                "`LateLearningRate` starts SAM when the inner optimizer's learning "
                "rate has decayed, but its learning rate is not a "
                "`keras.optimizers.schedules.LearningRateSchedule` (received "
                f"{schedule!r}): give the inner optimizer a schedule, or use "
                "`keras_sam.when.Periodic(start=...)`."
            )
        if self._learning_rates is None or self._learning_rates.schedule is not schedule:
            self._learning_rates = _HostSchedule(schedule)

    def mask(self, steps, clock):
        self.check(clock.optimizer)
        values = self._learning_rates.at(steps)
        peak = self._learning_rates.peak_until(steps)
        return (values <= self.fraction * peak) & (peak > 0)

    def get_config(self):
        return {"fraction": self.fraction}


@keras.saving.register_keras_serializable(package="keras_sam.when")
class GradientNormGate(When):
    """AE-SAM (Jiang et al., ICLR 2023): with n = ‖∇L_B(θ)‖² of the clean
    pass and running moments (μ, σ²) kept as optimizer state,

        μ  ← δ μ + (1 − δ) n
        σ² ← δ σ² + (1 − δ) (n − μ)²
        sharpness-aware  iff  n ≥ μ + c_t σ,

    else the step is the inner optimizer's own with the clean gradient. The
    first gated step sets μ = n, σ² = 0 (and is sharpness-aware). `c` is a
    number or a schedule of the step; the paper moves c_t linearly from λ₂ to
    λ₁ over training, e.g. `keras.optimizers.schedules.PolynomialDecay(1.0,
    total_steps, end_learning_rate=-1.0)`. Defaults: c = 0 (SAM where the
    squared norm is above its running mean), δ = 0.9.

    The choice is made inside the compiled step (a conditional, no host
    synchronisation), so it also works with `steps_per_execution > 1`. It
    gates the method's default phase (XSAM's α search steps always climb).
    Not with `ascent_fraction < 1`, `perturbation_groups != 1`, an
    `eigen_correction`, LookSAM (each would change what a plain step is), or
    gradient accumulation (it would decide per micro-batch). `climbs` counts
    the steps that climbed.
    """

    def __init__(self, c=0.0, decay=0.9):
        c = _deserialized(c)
        if not callable(c):
            c = checks.finite_number("c", c)
        self.c = c
        require(checks.is_number(decay) and 0 <= decay < 1, "decay", "a number in [0, 1)", decay)
        self.decay = float(decay)

    def check(self, optimizer):
        conflicts = [
            ("ascent_fraction < 1", optimizer.ascent_fraction < 1),
            ("perturbation_groups != 1", optimizer.perturbation_groups != 1),
            ("an eigen_correction", optimizer.eigen_correction is not None),
            (type(optimizer).__name__, not optimizer.gated_ascent_supported),
            ("the inner optimizer's gradient_accumulation_steps",
             bool(optimizer.inner_optimizer.gradient_accumulation_steps)),
        ]
        for what, present in conflicts:
            if present:
                raise ValueError(
                    f"`GradientNormGate` (AE-SAM) is not defined with {what}: its "
                    "plain steps are the inner optimizer's step on the clean "
                    "whole-batch gradient."
                )

    def build(self, optimizer, var_list):
        self.moments = [
            optimizer.add_variable(shape=(), dtype="float32", initializer=init,
                                   aggregation="none", name=name)
            for name, init in (("gate_mean", keras.initializers.Constant(-1.0)),
                               ("gate_variance", "zeros"))
        ]
        # Steps that climbed: how often the gate paid for SAM.
        self.climbs = optimizer.add_variable(
            shape=(), dtype="int32", initializer="zeros", aggregation="none", name="gate_climbs"
        )

    def gate(self, optimizer, clean_grads_norm):
        n = ops.square(ops.cast(clean_grads_norm, "float32"))
        mean, variance = (ops.convert_to_tensor(v.value) for v in self.moments)
        first = mean < 0.0
        mean = ops.where(first, n, self.decay * mean + (1.0 - self.decay) * n)
        variance = ops.where(
            first, 0.0, self.decay * variance + (1.0 - self.decay) * ops.square(n - mean)
        )
        c = self.c
        if callable(c):
            c = ops.cast(c(optimizer.iterations), "float32")
        climbs = n >= mean + c * ops.sqrt(variance)
        count = self.climbs.value + ops.cast(climbs, "int32")
        return climbs, list(zip([*self.moments, self.climbs], (mean, variance, count)))

    def get_config(self):
        return {"c": _serialized(self.c), "decay": self.decay}


@keras.saving.register_keras_serializable(package="keras_sam.when")
class All(When):
    """The steps every one of `policies` chooses (at most one gate)."""

    def __init__(self, policies):
        policies = [_deserialized(p) for p in policies]
        for p in policies:
            require(isinstance(p, When), "policies", "keras_sam.when policies", p)
        require(sum(type(p).gate is not When.gate for p in policies) <= 1,
                "policies", "at most one in-step gate", policies)
        self.policies = policies
        self.has_plain_steps = any(p.has_plain_steps for p in policies)

    def mask(self, steps, clock):
        result = np.ones(len(steps), dtype=bool)
        for p in self.policies:
            if p.has_plain_steps:
                result &= p.mask(steps, clock)
        return result

    def build(self, optimizer, var_list):
        for p in self.policies:
            p.build(optimizer, var_list)

    def check(self, optimizer):
        for p in self.policies:
            p.check(optimizer)

    def gate(self, optimizer, clean_grads_norm):
        for p in self.policies:
            gated = p.gate(optimizer, clean_grads_norm)
            if gated is not None:
                return gated
        return None

    def clone(self):
        clone = copy.copy(self)
        clone.policies = [p.clone() for p in self.policies]
        return clone

    def get_config(self):
        return {"policies": [keras.saving.serialize_keras_object(p) for p in self.policies]}


def own_copy(when):
    """The optimizer's own copy of the user's `when` (None: every step); a
    gate keeps this optimizer's state variables in it."""
    if when is None:
        return None
    when = _deserialized(when)
    require(isinstance(when, When), "when", "a keras_sam.when policy or None", when)
    return when.clone()


def resolve(when, start, every):
    """The policy an optimizer follows: its copy of `when` (None: every
    step) with the `start` / `every` shorthands (a `Periodic`)."""
    periodic = Periodic(every=every, start=start)
    if not periodic.has_plain_steps:
        return When() if when is None else when
    if when is None or type(when) is When:
        return periodic
    return All([periodic, when])
