"""The optimizer wrapper that every sharpness-aware method builds on.

Keras 3 hands an optimizer gradients only, so the two (or more) passes of a
sharpness-aware step are driven by the model's `train_step`
(`keras_sam.SAMModel`): it gathers the batch's passes (`keras_sam.training.passes`),
`_compute_update` computes the step from them without touching any variable,
and `keras_sam.training.commit` commits it. The wrapper holds the method, its
hyperparameters and its state; the inner optimizer (SGD, Adam, AdamW, ...)
receives the final direction `d` at the clean weights, exactly as it would
receive a gradient — its weight decay, clipping, EMA and learning-rate schedule
apply to that step only.

Like `keras.optimizers.LossScaleOptimizer`, the wrapper nests the inner
optimizer's config, delegates `learning_rate` and `iterations` to it, and keeps
its own state in Keras variables (so it works inside JAX's stateless step and
survives `model.save`).

A method author overrides `direction` (and, as needed, `build_state`,
`method_phases`, `method_phase`, `phase_ascends`, `diagnostic_names`,
`gated_ascent_supported`). The
protocol between the training step and the optimizer is private, and this is
all of it: the model compiles one step function per `_step_variants()`,
chooses one before each step with `_select_variant(clock)` (a
`keras_sam.training.clock.StepClock`), splits the batch into
`_perturbation_group_count()` groups, and commits what `_compute_update`
returns (`keras_sam.training.commit`).
"""

import dataclasses
import numbers

import keras
from keras import ops

from keras_sam import backend
from keras_sam import keras_private
from keras_sam import stateless
from keras_sam import vectors
from keras_sam.optimizers import ascent as ascents
from keras_sam.optimizers import checks
from keras_sam.optimizers import when as policies
from keras_sam.optimizers.ascent import Ascent  # noqa: F401 (methods' `direction` takes one)
from keras_sam.optimizers.checks import require
from keras_sam.optimizers.eigen_correction import EigenCorrection
from keras_sam.optimizers.variants import DEFAULT, PLAIN, StepVariant

_BASE_OPTIMIZER_ARGS = (
    "learning_rate",
    "weight_decay",
    "clipnorm",
    "global_clipnorm",
    "clipvalue",
    "use_ema",
    "ema_momentum",
    "ema_overwrite_frequency",
    "loss_scale_factor",
    "gradient_accumulation_steps",
)

NEEDS_SAM_MODEL = (
    "{name} is a sharpness-aware optimizer: it needs the loss at perturbed "
    "weights, which Keras' default `train_step` does not provide. Wrap the "
    "model, `model = keras_sam.SAMModel(model)`, or put "
    "`keras_sam.SharpnessAwareMixin` first among the bases of your "
    "`keras.Model` subclass, then compile and fit as usual."
)


@dataclasses.dataclass
class Direction:
    """What a method's `direction` returns."""

    vector: list  # d, the vector the inner optimizer receives.
    # Names in the method's `diagnostic_names` → scalars.
    diagnostics: dict = dataclasses.field(default_factory=dict)
    # (variable, new value) pairs of the method's own state, assigned only if
    # the step is committed.
    state_updates: list = dataclasses.field(default_factory=list)
    # A correction applied after the inner step, θ ← θ − lr_t · extra_step
    # (WSAM's decoupled mode); None for none.
    extra_step: object = None


@dataclasses.dataclass
class Update:
    """What the training step needs to commit one sharpness-aware step."""

    direction: list
    loss: object
    aux: object
    finite: object
    diagnostics: dict
    state_updates: list  # (variable, new value) pairs of the method's own state.
    # A correction applied after the inner step, θ ← θ − lr_t · extra_step
    # (WSAM's decoupled mode); None for none.
    extra_step: object = None
    # Whether the step climbed (a boolean tensor) where an in-step gate
    # decided; None: it did. The diagnostics count climbed steps only.
    climbed: object = None


def _sum_vectors(lists):
    total = lists[0]
    for xs in lists[1:]:
        total = vectors.add(total, xs)
    return total


def _is_bias(variable):
    """Biases and normalization shifts (`bias`, `beta`): ASAM's T = 1 group."""
    name = variable.name.split("/")[-1]
    return name.endswith("bias") or name.endswith("beta")


def _check_inner_optimizer(optimizer, optimizer_name):
    if optimizer is None:
        raise ValueError(
            f"{optimizer_name} needs `optimizer`, the inner Keras optimizer "
            "that makes the update step, e.g. "
            f"`keras_sam.{optimizer_name}(keras.optimizers.SGD(0.1, momentum=0.9))`; "
            "its arguments (`learning_rate`, ...) go to that optimizer."
        )
    if not isinstance(optimizer, keras.optimizers.Optimizer):
        raise ValueError(
            "`optimizer` must be a Keras optimizer instance such as "
            "`keras.optimizers.SGD(0.1, momentum=0.9)`, received "
            f"{optimizer!r}."
        )
    if isinstance(optimizer, SharpnessAwareOptimizer):
        raise ValueError(
            "`optimizer` is already sharpness-aware; wrap a plain Keras "
            "optimizer instead."
        )
    if isinstance(optimizer, keras.optimizers.LossScaleOptimizer):
        raise ValueError(
            "`optimizer` is a LossScaleOptimizer: wrap the other way round, "
            "`LossScaleOptimizer(SAM(inner))` — which is what `compile` "
            "does by itself under the `mixed_float16` policy."
        )


def _check_no_extra_arguments(optimizer_name, kwargs):
    for arg in _BASE_OPTIMIZER_ARGS:
        if arg in kwargs:
            raise ValueError(
                f"{optimizer_name} does not take `{arg}`: set it on "
                "the inner optimizer, which makes the update step."
            )
    if kwargs:
        raise ValueError(
            f"{optimizer_name} got unexpected arguments: {', '.join(sorted(kwargs))}."
        )


def _checked_rho(rho):
    if isinstance(rho, dict):  # from get_config
        rho = keras.saving.deserialize_keras_object(rho)
    if callable(rho):
        at_zero = float(ops.convert_to_numpy(rho(0)))
        checks.positive_number("rho (at step 0)", at_zero, allow_zero=True)
        return rho
    return checks.positive_number("rho", rho)


def _checked_eigen_correction(eigen_correction):
    if isinstance(eigen_correction, dict):  # from get_config
        eigen_correction = EigenCorrection.from_config(eigen_correction)
    require(
        eigen_correction is None or isinstance(eigen_correction, EigenCorrection),
        "eigen_correction", "a keras_sam.EigenCorrection or None", eigen_correction,
    )
    # A copy: the correction keeps this optimizer's eigenvector variables.
    return (
        None if eigen_correction is None
        else EigenCorrection.from_config(eigen_correction.get_config())
    )


class SharpnessAwareOptimizer(keras.optimizers.Optimizer):
    """Base class: wraps an inner optimizer and owns the ascent.

    Subclasses implement `direction(...)` — the vector handed to the inner
    optimizer — and may add state in `build_state`.

    Args:
        optimizer: the inner `keras.optimizers.Optimizer` instance.
        rho: the perturbation radius ρ (total path length when `steps > 1`):
            a float, a `keras.optimizers.schedules.LearningRateSchedule`, or a
            callable of the training step (the inner optimizer's
            `iterations`). A schedule's value is clipped at 0 (and NaN is
            read as 0): ρ = 0 is the inner optimizer's own step.
        steps: number of ascent steps k; each has length ρ/k (the XSAM
            repository's convention, no projection back onto the ρ-ball).
        adaptive: ASAM's element-wise perturbation
            `e = ρ T² ⊙ g / ‖T ⊙ g‖`, `T = |θ| + η`.
        eta: ASAM's η.
        adaptive_variables: which variables get `T = |θ| + η` under
            `adaptive=True`. `"weights"` (SamsungLabs' official ASAM): all
            but biases and normalization shifts (`bias`, `beta`), which get
            `T = 1`. `"all"` (davda54/sam, pytorch-optimizer; use it with
            `eta=0.0` to reproduce them): every variable.
        start: run the sharpness-aware step only from this training step on
            (late-phase SAM): an integer step, or a float in [0, 1) read as a
            fraction of the steps of `fit` (epochs × steps per epoch). Steps
            are the inner optimizer's `iterations`: under gradient
            accumulation, updates (docs/algorithms.md, "When to be
            sharpness-aware"). Shorthand for `when=keras_sam.when.Periodic(start=...)`.
        every: run the sharpness-aware step on one step in `every` (the
            first, then every `every`-th), and the inner optimizer's plain
            step — one forward–backward — on the others. Shorthand for
            `when=keras_sam.when.Periodic(every=...)`.
        when: a `keras_sam.when` policy choosing the sharpness-aware steps
            (random switching, late phase by learning rate, AE-SAM's gradient
            gate, ...); combined with `start` / `every` when both are given.
            None: every step.
        eigen_correction: a `keras_sam.EigenCorrection` (X-SAM, Duan et al.
            2026): damps the final direction's component along the Hessian's
            dominant eigenvector, refreshed every p steps. None for none.
        perturbation_groups: m-sharpness (Foret et al. §4). `1` (default):
            one perturbation from the gradient of the whole global batch —
            under data parallelism the ascent gradients are averaged over the
            replicas first, so the step equals one device on the global
            batch. An integer G > 1: the global batch is cut into G equal
            contiguous groups (m = batch size / G examples each), each
            group ascends from its own gradient and its perturbed gradient
            (its method direction) is averaged over the groups — the
            original SAM's per-accelerator ascent, on one device as on
            many. `"replica"`: one group per data-parallel replica (JAX
            `keras.distribution.DataParallel` devices, `tf.distribute`
            replicas, torch.distributed ranks; 1 on a single device). A
            batch that G does not divide (the last, partial one) gets groups
            of ⌊B/G⌋ and ⌈B/G⌉ examples, weighted by their share of the
            batch.
        ascent_fraction: f in (0, 1]: the clean pass and the ascent run on
            the first ⌈f·B⌉ examples of each batch, the last pass (at θ + e)
            on the whole batch (Brock et al. 2021; Bahri et al. 2022), for
            about (1 + f) passes' cost. The clean pass on those examples
            updates BatchNorm statistics and gives the loss and metrics
            logged. Steps that do not climb (plain steps of `start` /
            `every`, LookSAM's reuse steps) run on the whole batch.
        diagnostics: log the cheap per-step diagnostics (sharpness
            `L(θ+e) − L(θ)` and `cos(g_0, g_k)`, plus method-specific ones),
            averaged over the sharpness-aware steps of each epoch.
        name: the optimizer's name.

    Steps on which the sharpness-aware step does not run (chosen on the host
    by `when`, `start`, `every`) are compiled as a separate step function,
    chosen from Python before each step: no recompilation, no passes of the
    other variant, no conditional. `keras_sam.when.GradientNormGate` decides
    inside the step instead.
    """

    #: Names of the per-step diagnostics `_compute_update` returns.
    diagnostic_names = ("sharpness", "grad_cosine")

    def __init__(
        self,
        optimizer=None,
        rho=0.05,
        steps=1,
        adaptive=False,
        eta=0.01,
        adaptive_variables="weights",
        start=0,
        every=1,
        eigen_correction=None,
        perturbation_groups=1,
        ascent_fraction=1.0,
        diagnostics=True,
        when=None,
        name=None,
        **kwargs,
    ):
        _check_inner_optimizer(optimizer, type(self).__name__)
        _check_no_extra_arguments(type(self).__name__, kwargs)
        rho = _checked_rho(rho)
        when = policies.own_copy(when)
        step_policy = policies.resolve(when, start, every)
        eigen_correction = _checked_eigen_correction(eigen_correction)
        steps = checks.integer("steps", steps)
        require(steps >= 1, "steps", ">= 1", steps)
        eta = checks.positive_number("eta", eta, allow_zero=True)
        require(
            perturbation_groups == "replica"
            or (checks.is_integer(perturbation_groups) and perturbation_groups >= 1),
            "perturbation_groups", "an integer >= 1 or 'replica'", perturbation_groups,
        )
        require(
            adaptive_variables in ("weights", "all"), "adaptive_variables",
            "'weights' (SamsungLabs ASAM) or 'all' (davda54/sam)", adaptive_variables,
        )
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = optimizer
        self.rho = rho
        self.start = start if isinstance(start, numbers.Integral) else float(start)
        self.every = int(every)
        # The user's policy (its state, e.g. the gate's `climbs`, is this
        # optimizer's) and the one the steps follow, with `start` / `every`.
        self.step_policy = step_policy
        self.when = when
        self.eigen_correction = eigen_correction
        self.steps = steps
        self.adaptive = bool(adaptive)
        self.eta = eta
        self.adaptive_variables = adaptive_variables
        self.perturbation_groups = (
            perturbation_groups if perturbation_groups == "replica" else int(perturbation_groups)
        )
        self.ascent_fraction = checks.fraction("ascent_fraction", ascent_fraction)
        self.diagnostics = bool(diagnostics)
        step_policy.check(self)

    #: Whether an in-step gate (`keras_sam.when.GradientNormGate`) may turn
    #: the default phase's ascent off (False where a plain step would not be
    #: the inner optimizer's own, as LookSAM's reuse).
    gated_ascent_supported = True

    # ------------------------------------------------------------------
    # State
    # ------------------------------------------------------------------
    @keras_private.no_automatic_dependency_tracking
    def build(self, var_list):
        # Guards against double creation: `build` is reached from `compile`,
        # loading, and the first step, like any Keras optimizer.
        if self.built:
            return
        self.skipped_steps = self.add_variable(
            shape=(),
            dtype="int32",
            initializer="zeros",
            aggregation="none",
            name="skipped_steps",
        )
        self.inner_optimizer.build(var_list)
        # The method's vectors span the parameters only: variables Keras
        # overwrites with their gradient (float8 scales) are state.
        var_list = stateless.parameter_variables(var_list)
        self._scaled_by_weight = [
            self.adaptive_variables == "all" or not _is_bias(v) for v in var_list
        ]
        self.build_state(var_list)
        self.step_policy.build(self, var_list)
        if self.eigen_correction is not None:
            self.eigen_correction.build(self, var_list)
        super().build(var_list)

    def build_state(self, var_list):
        """Hook: create the method's own state with `self.add_variable`."""

    @property
    def variables(self):
        return super().variables + self.inner_optimizer.variables

    @property
    def learning_rate(self):
        return self.inner_optimizer.learning_rate

    @learning_rate.setter
    def learning_rate(self, learning_rate):
        self.inner_optimizer.learning_rate = learning_rate

    @property
    def iterations(self):
        return self.inner_optimizer.iterations

    def finalize_variable_values(self, var_list):
        self.inner_optimizer.finalize_variable_values(var_list)

    # Keras' default train step would apply a plain gradient: refuse clearly.
    def apply(self, grads, trainable_variables=None):
        raise ValueError(NEEDS_SAM_MODEL.format(name=type(self).__name__))

    def stateless_apply(self, optimizer_variables, grads, trainable_variables):
        trainable_variables = list(trainable_variables)
        if trainable_variables:
            raise ValueError(NEEDS_SAM_MODEL.format(name=type(self).__name__))
        # A step over no variables changes nothing: what the LossScaleOptimizer
        # around this one runs when `keras_sam.training.commit` advances its loss scale.
        values = [ops.convert_to_tensor(v.value if hasattr(v, "value") else v)
                  for v in optimizer_variables]
        return trainable_variables, values

    # ------------------------------------------------------------------
    # The step
    # ------------------------------------------------------------------
    def current_rho(self):
        """ρ for the current step: the float, or the schedule at `iterations`."""
        if not callable(self.rho):
            return self.rho
        rho = ops.cast(self.rho(self.iterations), "float32")
        return ops.where(rho > 0.0, rho, 0.0)  # NaN > 0 is False

    def perturbation(self, point, grads, radius):
        """One ascent step of length `radius` from `point` along `grads`:
        SAM's or, with `adaptive=True`, ASAM's (`keras_sam.optimizers.ascent`).
        Returns `e` and the norm it divided by (checked for finiteness).
        """
        if self.adaptive:
            return ascents.adaptive_perturbation(
                point, grads, radius, self.eta, self._scaled_by_weight
            )
        return ascents.perturbation(grads, radius)

    def ascend(self, grad_fn, params, final_grad_fn=None, gate=None):
        """Clean pass and k ascent steps of length ρ/k: an `Ascent`.
        `grad_fn(values) -> ((loss, aux), grads)`; the last pass, at θ + e,
        is `final_grad_fn`'s if given (the whole batch under `ascent_fraction`);
        `gate` may turn the climb off (`ascents.ascend`)."""
        return ascents.ascend(
            grad_fn, params, self.current_rho() / self.steps, self.steps, self.perturbation,
            final_grad_fn, gate,
        )

    def direction(self, ascent, params, passes, phase):
        """The method's step from an `Ascent`: returns a `Direction`.

        `passes` are the step's `Passes` (for methods that probe the loss,
        as XSAM's α search); `phase` is the method's phase for this step,
        one of `method_phases()`.
        """
        raise NotImplementedError

    def phase_ascends(self, phase):
        """Whether the method's step of `phase` climbs. False: one pass, the
        clean one — the `Ascent` it gets holds the clean gradient as `grads`
        and no displacement (e.g. a step that reuses an earlier ascent)."""
        return True

    # -- compiled step variants, chosen from Python between steps -------------
    def method_phases(self):
        """Names of the method's phases, each a compiled step variant (e.g.
        XSAM's "search").

        Periodic work runs as its own compiled function, chosen from Python
        before each step: XLA:CPU slows backward passes inside a conditional
        (benchmarks/README.md, "Hessian-vector products"), and a conditional
        would trace both branches' passes.
        """
        return ("default",)

    def method_phase(self, clock):
        """The method's phase for the next sharpness-aware step; `clock` is a
        `keras_sam.training.clock.StepClock`."""
        return "default"

    def logged_diagnostics(self):
        """Names of the diagnostics each sharpness-aware step logs."""
        if not self.diagnostics:
            return ()
        extra = ("eigen_angle", "eigenvalue") if self.eigen_correction else ()
        return tuple(self.diagnostic_names) + extra

    def _step_variants(self):
        """Every `StepVariant` this optimizer may choose."""
        refreshes = (0,)
        if self.eigen_correction is not None:
            refreshes += self.eigen_correction.refresh_iteration_counts()
        variants = tuple(
            StepVariant(phase=phase, refresh_iterations=n)
            for n in refreshes for phase in self.method_phases()
        )
        return variants + ((PLAIN,) if self.step_policy.has_plain_steps else ())

    def _select_variant(self, clock):
        """The `StepVariant` to run for the next step (a micro-batch under
        gradient accumulation), from `clock`, a `StepClock`: plain where
        the policy (`when`, `start`, `every`) leaves the step out, else the method's phase and the
        correction's refresh, each deciding when it is due."""
        if not clock.sharpness_aware(clock.step):
            return PLAIN
        if clock.micro_step:
            return DEFAULT  # periodic work runs on a step's first micro-batch
        refresh = 0 if self.eigen_correction is None else self.eigen_correction.refresh_due(clock)
        return StepVariant(phase=self.method_phase(clock), refresh_iterations=refresh)

    def _perturbation_group_count(self):
        """The number of perturbation groups of the global batch (an int)."""
        if self.perturbation_groups == "replica":
            return backend.data_parallel_size()
        return self.perturbation_groups

    def _compute_update(self, passes, params, variant=DEFAULT, groups=None,
                       group_count=None):
        """One sharpness-aware step's math, without touching any variable.

        Args:
            passes: a `Passes` on the current mini-batch (the replica's share
                of it under `tf.distribute`).
            params: the current values of the trainable variables.
            variant: one of `_step_variants()`, fixed when the step is traced.
            groups: None, or one `Passes` per perturbation group of the
                mini-batch (m-sharpness): each group ascends from its own
                gradient and gets its own direction; the directions, clean
                losses and diagnostics are averaged over the groups, and
                `Update.aux` is the list of the groups' clean-pass aux. Each
                group's `Passes.share` of the batch weights the means (equal
                weights where it is None). The
                eigenvector of an `eigen_correction` is refreshed on the whole
                mini-batch (`passes.hvp`) and corrects every group's direction.
            group_count: the perturbation groups of the global batch, all
                replicas together (default: those of `groups`).
        """
        if variant.plain:
            return self._plain_update(passes, params)
        groups = list(groups) if groups else [passes]
        group_count = len(groups) if group_count is None else group_count
        ascents, directions = zip(*[
            self._ascend_and_direct(group, params, variant.phase, group_count > 1)
            for group in groups
        ])
        check_scalars = [c for ascent in ascents for c in ascent.check_scalars]
        state_updates = [u for d in directions for u in d.state_updates]
        if self.eigen_correction is not None:
            directions, more_updates, more_check_scalars = self._eigen_corrected(
                directions, params, passes.hvp, variant.refresh_iterations
            )
            state_updates += more_updates
            check_scalars += more_check_scalars
        update = self._combined(ascents, directions, groups)
        return dataclasses.replace(
            update, finite=vectors.all_finite(check_scalars), state_updates=state_updates
        )

    def _plain_update(self, passes, params):
        """The inner optimizer's own step: one forward–backward."""
        (loss, aux), grads = passes.value_and_grad(params)
        return Update(
            direction=grads,
            loss=loss,
            aux=aux,
            finite=vectors.all_finite([loss, vectors.norm(grads)]),
            diagnostics={},
            state_updates=[],
        )

    def _ascend_and_direct(self, passes, params, phase, grouped):
        """One perturbation group's ascent and `Direction` (with the cheap
        diagnostics of its ascent)."""
        climbs = self.phase_ascends(phase)
        if climbs:
            ascent = self.ascend(
                passes.ascent_value_and_grad or passes.value_and_grad, params,
                final_grad_fn=passes.value_and_grad,
                gate=self._gate if phase == "default" else None,
            )
        else:
            ascent = ascents.clean_pass(passes.value_and_grad, params)
        direction = self.direction(ascent, params, passes, phase)
        direction = dataclasses.replace(
            direction, state_updates=direction.state_updates + ascent.state_updates
        )
        if direction.state_updates and grouped:
            raise ValueError(
                f"The {phase!r} step of {type(self).__name__} updates "
                "the optimizer's state from the step's own gradients, which "
                "differ between perturbation groups: use "
                "`perturbation_groups=1` with it (e.g. XSAM's α search; a "
                "fixed `alpha` works with groups)."
            )
        diagnostics = dict(direction.diagnostics)
        if self.diagnostics and climbs:
            diagnostics.update(
                sharpness=ascent.loss - ascent.clean_loss,
                grad_cosine=vectors.cosine(
                    ascent.clean_grads, ascent.grads, ys_norm=ascent.grads_norm
                ),
            )
        return ascent, dataclasses.replace(direction, diagnostics=diagnostics)

    def _gate(self, clean_grads_norm):
        return self.step_policy.gate(self, clean_grads_norm)

    def _eigen_corrected(self, directions, params, hvp, refresh_iterations):
        """The directions corrected along the (refreshed) eigenvector, the
        correction's state updates and check scalars."""
        correction = self.eigen_correction
        v, eigenvalue, ready, state_updates, check_scalars = correction.estimate(
            params, hvp, refresh_iterations
        )
        corrected = []
        for direction in directions:
            vector, angle = correction.correct(direction.vector, v, ready)
            diagnostics = dict(direction.diagnostics, eigen_angle=angle, eigenvalue=eigenvalue)
            corrected.append(
                dataclasses.replace(direction, vector=vector, diagnostics=diagnostics)
            )
        return corrected, state_updates, check_scalars

    def _combined(self, ascents, directions, groups):
        """The groups' directions, clean losses and diagnostics, weighted by
        their shares of the batch (one group: its own)."""
        names = directions[0].diagnostics if self.diagnostics else {}
        if len(groups) == 1:
            (ascent,), (direction,) = ascents, directions
            return Update(
                direction=direction.vector,
                loss=ascent.clean_loss,
                aux=ascent.clean_aux,
                finite=None,
                diagnostics={name: direction.diagnostics[name] for name in names},
                state_updates=[],
                extra_step=direction.extra_step,
                climbed=ascent.climbed,
            )
        shares = [1.0 / len(groups) if g.share is None else g.share for g in groups]

        def mean(values):
            return sum(ops.cast(v, "float32") * w for v, w in zip(values, shares))

        def mean_vectors(lists):
            return _sum_vectors([vectors.scale(xs, w) for xs, w in zip(lists, shares)])

        extra_steps = [d.extra_step for d in directions]
        return Update(
            direction=mean_vectors([d.vector for d in directions]),
            loss=mean([a.clean_loss for a in ascents]),
            aux=[a.clean_aux for a in ascents],
            finite=None,
            diagnostics={name: mean([d.diagnostics[name] for d in directions]) for name in names},
            state_updates=[],
            extra_step=None if extra_steps[0] is None else mean_vectors(extra_steps),
        )

    # ------------------------------------------------------------------
    # Serialization
    # ------------------------------------------------------------------
    def get_config(self):
        return {
            "name": self.name,
            "optimizer": keras_private.public_optimizer_config(
                keras.saving.serialize_keras_object(self.inner_optimizer)
            ),
            "rho": keras.saving.serialize_keras_object(self.rho) if callable(self.rho) else self.rho,
            "steps": self.steps,
            "adaptive": self.adaptive,
            "eta": self.eta,
            "adaptive_variables": self.adaptive_variables,
            "start": self.start,
            "every": self.every,
            "eigen_correction": (
                None if self.eigen_correction is None else self.eigen_correction.get_config()
            ),
            "perturbation_groups": self.perturbation_groups,
            "ascent_fraction": self.ascent_fraction,
            "diagnostics": self.diagnostics,
            "when": None if self.when is None else keras.saving.serialize_keras_object(self.when),
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(
            keras_private.public_optimizer_config(config.pop("optimizer")),
            custom_objects=custom_objects,
        )
        return cls(optimizer, **config)
