"""The optimizer wrapper that every sharpness-aware method builds on.

Keras 3 hands an optimizer gradients only, so the two (or more) passes of a
sharpness-aware step are driven by the model's `train_step`
(`keras_sam.SAMModel`), which calls `compute_update` with a function giving
the loss and gradient at any point. The wrapper holds the method, its
hyperparameters and its state; the inner optimizer (SGD, Adam, AdamW, ...)
receives the final direction `d` at the clean weights, exactly as it would
receive a gradient — its weight decay, clipping, EMA and learning-rate schedule
apply to that step only.

Like `keras.optimizers.LossScaleOptimizer`, the wrapper nests the inner
optimizer's config, delegates `learning_rate` and `iterations` to it, and keeps
its own state in Keras variables (so it works inside JAX's stateless step and
survives `model.save`).
"""

import dataclasses
import math
import numbers

import keras
from keras import ops
from keras.src.utils import tracking

from keras_sam import backend
from keras_sam import vectors
from keras_sam.optimizers.eigen_correction import EigenCorrection
from keras_sam.vectors import EPS

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
class Ascent:
    """The result of the ascent phase of one step (ALGORITHMS.md §1).

    `clean_*` are at θ, the rest at the last ascent point θ_k = θ + Σ e_i.
    """

    clean_loss: object
    clean_aux: object
    clean_grads: list
    displacement: list  # θ_k − θ, accumulated from the perturbations.
    loss: object  # L_B(θ_k)
    grads: list  # g_k = ∇L_B(θ_k)
    grads_norm: object  # ‖g_k‖
    check_scalars: list  # Every loss and norm of the step: all finite or skip.


@dataclasses.dataclass
class Passes:
    """Functions of the trainable values on the current mini-batch.

    `value_and_grad(values) -> ((loss, aux), grads)`: training mode, with the
    non-trainable updates returned in `aux` rather than applied.
    `loss(values) -> loss`: a forward pass only, training mode, statistics
    discarded (XSAM's probes).
    `hvp(values, vectors, examples=None) -> (grads, Hv)`: Hessian-vector
    product (on the first `examples` of the batch, if given) of the loss
    in inference mode (X-SAM's eigenvector refresh).
    """

    value_and_grad: object
    loss: object
    hvp: object = None
    # A perturbation group's share of the mini-batch (its weight in the mean).
    share: object = None


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


def _check_positive_number(name, value, allow_zero=False):
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"`{name}` must be a number, received {value!r}.")
    if not math.isfinite(value) or value < 0 or (value == 0 and not allow_zero):
        bound = ">= 0" if allow_zero else "> 0"
        raise ValueError(f"`{name}` must be finite and {bound}, received {value!r}.")


def _public_config(config):
    """A serialized Keras optimizer under its public class (`keras.optimizers.SGD`).

    On torch, `keras.optimizers.SGD(...)` is an instance of a torch-only
    subclass (`keras.src.backend.torch.optimizers.torch_sgd.SGD`) that Keras
    serializes under its own module, which makes a file saved on torch fail to
    train on the other backends; under the public name it loads as each
    backend's own class. Files saved that way before are read the same way.
    """
    if not isinstance(config, dict) or not str(config.get("module", "")).startswith(
        "keras.src.backend."
    ):
        return config
    public = getattr(keras.optimizers, str(config.get("class_name")), None)
    if not (isinstance(public, type) and issubclass(public, keras.optimizers.Optimizer)):
        return config
    return {**config, "module": "keras.optimizers", "registered_name": None}


def _sum_vectors(lists):
    total = lists[0]
    for xs in lists[1:]:
        total = vectors.add(total, xs)
    return total


def _is_bias(variable):
    """Biases and normalization shifts (`bias`, `beta`): ASAM's T = 1 group."""
    name = variable.name.split("/")[-1]
    return name.endswith("bias") or name.endswith("beta")


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
            fraction of the steps of `fit` (epochs × steps per epoch).
        every: run the sharpness-aware step on one step in `every` (the
            first, then every `every`-th), and the inner optimizer's plain
            step — one forward–backward — on the others.
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
            replicas; 1 on a single device). A batch that G does not divide
            (the last, partial one) gets groups of ⌊B/G⌋ and ⌈B/G⌉ examples,
            weighted by their share of the batch.
        diagnostics: log the cheap per-step diagnostics (sharpness
            `L(θ+e) − L(θ)` and `cos(g_0, g_k)`, plus method-specific ones),
            averaged over the sharpness-aware steps of each epoch.
        name: the optimizer's name.

    Steps on which the sharpness-aware step does not run (`start`, `every`)
    are compiled as a separate step function, chosen from Python before each
    step: no recompilation, no passes of the other variant, no conditional.
    """

    #: Names of the per-step diagnostics `compute_update` returns.
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
        diagnostics=True,
        name=None,
        **kwargs,
    ):
        if optimizer is None:
            raise ValueError(
                f"{type(self).__name__} needs `optimizer`, the inner Keras optimizer "
                "that makes the update step, e.g. "
                f"`keras_sam.{type(self).__name__}(keras.optimizers.SGD(0.1, momentum=0.9))`; "
                "its arguments (`learning_rate`, ...) go to that optimizer."
            )
        for arg in _BASE_OPTIMIZER_ARGS:
            if arg in kwargs:
                raise ValueError(
                    f"{type(self).__name__} does not take `{arg}`: set it on "
                    "the inner optimizer, which makes the update step."
                )
        if kwargs:
            raise ValueError(
                f"{type(self).__name__} got unexpected arguments: "
                f"{', '.join(sorted(kwargs))}."
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
        if isinstance(rho, dict):  # from get_config
            rho = keras.saving.deserialize_keras_object(rho)
        if callable(rho):
            _check_positive_number("rho (at step 0)", float(ops.convert_to_numpy(rho(0))), allow_zero=True)
        else:
            _check_positive_number("rho", rho)
        if isinstance(start, bool) or not isinstance(start, numbers.Real) or start < 0 or (
            not isinstance(start, numbers.Integral) and start >= 1
        ):
            raise ValueError(
                "`start` must be an integer step >= 0 or a fraction in [0, 1), "
                f"received {start!r}."
            )
        if isinstance(every, bool) or not isinstance(every, numbers.Integral) or every < 1:
            raise ValueError(f"`every` must be an integer >= 1, received {every!r}.")
        if isinstance(eigen_correction, dict):  # from get_config
            eigen_correction = EigenCorrection.from_config(eigen_correction)
        if eigen_correction is not None and not isinstance(eigen_correction, EigenCorrection):
            raise ValueError(
                "`eigen_correction` must be a keras_sam.EigenCorrection or None, "
                f"received {eigen_correction!r}."
            )
        if isinstance(steps, bool) or not isinstance(steps, numbers.Integral):
            raise ValueError(f"`steps` must be an integer, received {steps!r}.")
        if steps < 1:
            raise ValueError(f"`steps` must be >= 1, received {steps!r}.")
        _check_positive_number("eta", eta, allow_zero=True)
        if perturbation_groups != "replica" and (
            isinstance(perturbation_groups, bool)
            or not isinstance(perturbation_groups, numbers.Integral)
            or perturbation_groups < 1
        ):
            raise ValueError(
                "`perturbation_groups` must be an integer >= 1 or 'replica', "
                f"received {perturbation_groups!r}."
            )
        if adaptive_variables not in ("weights", "all"):
            raise ValueError(
                "`adaptive_variables` must be 'weights' (SamsungLabs ASAM) or "
                f"'all' (davda54/sam), received {adaptive_variables!r}."
            )
        super().__init__(learning_rate=0.0, name=name)
        self.inner_optimizer = optimizer
        self.rho = rho if callable(rho) else float(rho)
        self.start = start if isinstance(start, numbers.Integral) else float(start)
        self.every = int(every)
        # A copy: the correction keeps this optimizer's eigenvector variables.
        self.eigen_correction = (
            None if eigen_correction is None
            else EigenCorrection.from_config(eigen_correction.get_config())
        )
        self.steps = int(steps)
        self.adaptive = bool(adaptive)
        self.eta = float(eta)
        self.adaptive_variables = adaptive_variables
        self.perturbation_groups = (
            perturbation_groups if perturbation_groups == "replica" else int(perturbation_groups)
        )
        self.diagnostics = bool(diagnostics)

    # ------------------------------------------------------------------
    # State
    # ------------------------------------------------------------------
    @tracking.no_automatic_dependency_tracking
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
        self._scaled_by_weight = [
            self.adaptive_variables == "all" or not _is_bias(v) for v in var_list
        ]
        self.build_state(var_list)
        if self.eigen_correction is not None:
            self.eigen_correction.build(self, var_list)
        super().build(var_list)

    def build_state(self, var_list):
        """Hook: create the method's own state with `self.add_variable`."""

    @property
    def variables(self):
        return self._variables + self.inner_optimizer.variables

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
        raise ValueError(NEEDS_SAM_MODEL.format(name=type(self).__name__))

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
        """One ascent step of length `radius` from `point` along `grads`.

        SAM: `e = r g / (‖g‖ + eps)`. ASAM: `e = r T² g / (‖T g‖ + eps)`.
        Returns `e` and the norm it divided by (checked for finiteness).
        """
        if not self.adaptive:
            grads_norm = vectors.norm(grads)
            return vectors.scale(grads, radius / (grads_norm + EPS)), grads_norm
        t = [
            ops.abs(p) + ops.cast(self.eta, p.dtype) if scaled else None
            for p, scaled in zip(point, self._scaled_by_weight)
        ]
        tg = [g if ti is None else ti * g for g, ti in zip(grads, t)]
        tg_norm = vectors.norm(tg)
        factor = radius / (tg_norm + EPS)
        e = [
            x * ops.cast(factor, x.dtype) if ti is None
            else ti * x * ops.cast(factor, x.dtype)
            for x, ti in zip(tg, t)
        ]
        return e, tg_norm

    def ascend(self, grad_fn, params):
        """Clean pass and k ascent steps of length ρ/k (ALGORITHMS.md §1–2).

        `grad_fn(values) -> ((loss, aux), grads)`.
        """
        (clean_loss, clean_aux), clean_grads = grad_fn(params)
        radius = self.current_rho() / self.steps
        checks = [clean_loss]
        grads, displacement = clean_grads, None
        for _ in range(self.steps):
            point = params if displacement is None else vectors.add(params, displacement)
            e, divisor = self.perturbation(point, grads, radius)
            checks.append(divisor)
            displacement = e if displacement is None else vectors.add(displacement, e)
            (loss, _), grads = grad_fn(vectors.add(params, displacement))
            checks.append(loss)
        grads_norm = vectors.norm(grads)
        checks.append(grads_norm)
        return Ascent(
            clean_loss=clean_loss,
            clean_aux=clean_aux,
            clean_grads=clean_grads,
            displacement=displacement,
            loss=loss,
            grads=grads,
            grads_norm=grads_norm,
            check_scalars=checks,
        )

    def direction(self, ascent, params, passes, variant):
        """The vector the inner optimizer receives.

        Returns `(d, diagnostics, state_updates)`: `diagnostics` maps names in
        `diagnostic_names` to scalars; `state_updates` is a list of
        `(variable, new value)` pairs of the method's own state, assigned only
        if the step is finite. A method with a decoupled correction (WSAM)
        returns a fourth element, `extra_step`: see `Update.extra_step`.
        """
        raise NotImplementedError

    # -- compiled step variants, chosen from Python between steps -------------
    def method_variants(self):
        """Names of the method's compiled step variants (e.g. XSAM's search).

        Periodic work runs as its own compiled function, chosen from Python
        before each step: inside a conditional XLA:CPU slows backward passes
        17–34×, and a conditional would trace both branches' passes.
        """
        return ("default",)

    def select_method_variant(self, clock):
        """The method's variant for the next sharpness-aware step.

        `clock` has `step` (global), `epoch_step`, `sam_steps` and
        `epoch_sam_steps` (sharpness-aware steps so far, in all and in this
        epoch) and `total_steps` (of `fit`, or None).
        """
        return "default"

    def logged_diagnostics(self):
        """Names of the diagnostics each sharpness-aware step logs."""
        if not self.diagnostics:
            return ()
        extra = ("eigen_angle", "eigenvalue") if self.eigen_correction else ()
        return tuple(self.diagnostic_names) + extra

    def step_variants(self):
        variants = self.method_variants()
        if self.eigen_correction is not None:
            variants = variants + tuple(
                v + suffix for suffix in self.eigen_correction.variants() for v in variants
            )
        plain = ("plain",) if self.start or self.every > 1 else ()
        return variants + plain

    def start_step(self, total_steps):
        if isinstance(self.start, numbers.Integral):
            return self.start
        if total_steps is None:
            raise ValueError(
                f"`start={self.start}` is a fraction of training, but the number "
                "of training steps is unknown (no `fit`, or data of unknown "
                "length): give `start` as an integer step."
            )
        return int(math.ceil(self.start * total_steps))

    def select_variant(self, clock):
        """The compiled variant to run for the next step."""
        if self.start or self.every > 1:
            step = clock.step - self.start_step(clock.total_steps)
            if step < 0 or step % self.every:
                return "plain"
        variant = self.select_method_variant(clock)
        if self.eigen_correction is not None:
            variant += self.eigen_correction.refresh_variant(clock)
        return variant

    def perturbation_group_count(self):
        """The number of perturbation groups of the global batch (an int)."""
        if self.perturbation_groups == "replica":
            return backend.data_parallel_size()
        return self.perturbation_groups

    def compute_update(self, passes, params, variant="default", groups=None):
        """One sharpness-aware step's math, without touching any variable.

        Args:
            passes: a `Passes` on the current mini-batch (the replica's share
                of it under `tf.distribute`).
            params: the current values of the trainable variables.
            variant: one of `step_variants()`, fixed when the step is traced.
            groups: None, or one `Passes` per perturbation group of the
                mini-batch (m-sharpness): each group ascends from its own
                gradient and gets its own direction; the directions, clean
                losses and diagnostics are averaged over the groups, and
                `Update.aux` is the list of the groups' clean-pass aux. Each
                group's `Passes.share` of the batch weights the means (equal
                weights where it is None). The
                eigenvector of an `eigen_correction` is refreshed on the whole
                mini-batch (`passes.hvp`) and corrects every group's direction.
        """
        if variant == "plain":  # the inner optimizer's own step
            (loss, aux), grads = passes.value_and_grad(params)
            return Update(
                direction=grads,
                loss=loss,
                aux=aux,
                finite=vectors.all_finite([loss, vectors.norm(grads)]),
                diagnostics={},
                state_updates=[],
            )
        method_variant = variant.split("+")[0]
        groups = list(groups) if groups else [passes]
        ascents, directions, diagnostics, extra_steps = [], [], [], []
        state_updates, checks = [], []
        for group in groups:
            ascent = self.ascend(group.value_and_grad, params)
            d, group_diagnostics, group_updates, *extra_step = self.direction(
                ascent, params, group, method_variant
            )
            if group_updates and len(groups) > 1:
                raise ValueError(
                    f"The {method_variant!r} step of {type(self).__name__} updates "
                    "the optimizer's state from the step's own gradients, which "
                    "differ between perturbation groups: use "
                    "`perturbation_groups=1` with it (e.g. XSAM's α search; a "
                    "fixed `alpha` works with groups)."
                )
            ascents.append(ascent)
            directions.append(d)
            diagnostics.append(dict(group_diagnostics))
            extra_steps.append(extra_step[0] if extra_step else None)
            state_updates += group_updates
            checks += ascent.check_scalars
        if self.eigen_correction is not None:
            correction = self.eigen_correction
            v, eigenvalue, ready, more_updates, more_checks = correction.estimate(
                params, passes.hvp, refresh=variant[len(method_variant):]
            )
            state_updates += more_updates
            checks += more_checks
            for i, d in enumerate(directions):
                directions[i], angle = correction.correct(d, v, ready)
                diagnostics[i].update(eigen_angle=angle, eigenvalue=eigenvalue)
        if self.diagnostics:
            for ascent, group_diagnostics in zip(ascents, diagnostics):
                group_diagnostics.update(
                    sharpness=ascent.loss - ascent.clean_loss,
                    grad_cosine=vectors.cosine(
                        ascent.clean_grads, ascent.grads, ys_norm=ascent.grads_norm
                    ),
                )
            names = diagnostics[0]
        else:
            names = {}
        if len(groups) == 1:
            direction, loss, aux, extra_step = (
                directions[0], ascents[0].clean_loss, ascents[0].clean_aux, extra_steps[0]
            )
            diagnostics = {name: diagnostics[0][name] for name in names}
        else:
            shares = [
                1.0 / len(groups) if group.share is None else group.share for group in groups
            ]

            def mean(values):
                return sum(ops.cast(v, "float32") * w for v, w in zip(values, shares))

            def mean_vectors(lists):
                return _sum_vectors([vectors.scale(xs, w) for xs, w in zip(lists, shares)])

            direction = mean_vectors(directions)
            loss = mean([a.clean_loss for a in ascents])
            aux = [a.clean_aux for a in ascents]
            extra_step = None if extra_steps[0] is None else mean_vectors(extra_steps)
            diagnostics = {name: mean([g[name] for g in diagnostics]) for name in names}
        return Update(
            direction=direction,
            loss=loss,
            aux=aux,
            finite=vectors.all_finite(checks),
            diagnostics=diagnostics,
            state_updates=state_updates,
            extra_step=extra_step,
        )

    def apply_update(self, update, trainable_variables):
        """The inner optimizer steps with `d` from θ — only if the step is finite.

        A non-finite loss or gradient in any pass leaves the weights and all
        optimizer state untouched and increments `skipped_steps`, as
        `LossScaleOptimizer` skips non-finite steps.
        """
        trainable_variables = list(trainable_variables)

        state_variables = [variable for variable, _ in update.state_updates]

        # The step's tensors go in as arguments, not through the closure:
        # under tf.distribute they are per-replica values (see apply_if).
        def commit(direction, extra_step, state_values):
            learning_rate = self.inner_optimizer.learning_rate  # before it steps
            self.inner_optimizer.apply(direction, trainable_variables)
            for variable, delta in zip(trainable_variables, extra_step):
                variable.assign_sub(ops.cast(learning_rate, delta.dtype) * delta)
            for variable, value in zip(state_variables, state_values):
                variable.assign(value)

        backend.apply_if(
            update.finite,
            commit,
            (
                list(update.direction),
                list(update.extra_step or []),
                [value for _, value in update.state_updates],
            ),
            trainable_variables + self.variables,
        )
        self.skipped_steps.assign_add(
            ops.cast(ops.logical_not(update.finite), "int32")
        )

    # ------------------------------------------------------------------
    # Serialization
    # ------------------------------------------------------------------
    def get_config(self):
        return {
            "name": self.name,
            "optimizer": _public_config(keras.saving.serialize_keras_object(self.inner_optimizer)),
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
            "diagnostics": self.diagnostics,
        }

    @classmethod
    def from_config(cls, config, custom_objects=None):
        config = dict(config)
        optimizer = keras.saving.deserialize_keras_object(
            _public_config(config.pop("optimizer")), custom_objects=custom_objects
        )
        return cls(optimizer, **config)
