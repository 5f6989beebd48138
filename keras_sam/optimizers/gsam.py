"""GSAM — Zhuang et al., "Surrogate Gap Minimization Improves Sharpness-Aware
Training", ICLR 2022 (arXiv 2203.08065): surrogate gap guided SAM.

After SAM's clean gradient g_0 = ∇L_B(θ) and perturbed gradient
g_1 = ∇L_B(θ + e), e = ρ g_0/‖g_0‖:

    g_⊥ = g_0 − (⟨g_0, g_1⟩ / (‖g_0‖‖g_1‖ + eps)) · ‖g_0‖ · g_1 / (‖g_1‖ + eps)
    d   = g_1 − α g_⊥             # the inner optimizer steps with d from θ

g_⊥ is the part of g_0 orthogonal to g_1. The step θ ← θ − lr·d minimises the
perturbed loss along g_1 and moves along +α g_⊥: that raises L_B(θ) without
changing the perturbed loss to first order, so it lowers the surrogate gap
h(θ) = L_B(θ + e) − L_B(θ) (logged as `sharpness`). α = 0 is SAM.

ρ is either constant (or any schedule of the step, as for SAM) or follows the
inner optimizer's learning rate, as the official code's `ProportionScheduler`:

    ρ_t = ρ_min + (ρ_max − ρ_min) (lr_t − lr_min) / (lr_max − lr_min)

Defaults α = 0.4 (pytorch-optimizer), ρ = 0.05. Official code:
github.com/juntang-zhuang/GSAM.
"""

import numbers

import keras
import numpy as np
from keras import ops

from keras_sam import keras_private
from keras_sam import vectors
from keras_sam.optimizers import checks
from keras_sam.optimizers.base import Direction, SharpnessAwareOptimizer
from keras_sam.vectors import EPS

_SCHEDULES = keras.optimizers.schedules


def learning_rate_bounds(optimizer):
    """(lr_min, lr_max) of an optimizer's learning rate where they follow from it.

    A float learning rate gives (None, lr): its largest value is known, not the
    smallest it may be lowered to (by a callback). Keras' PiecewiseConstantDecay,
    PolynomialDecay and CosineDecay (with or without warmup) give both. Any
    other schedule or callable gives (None, None).
    """
    lr = keras_private.learning_rate_object(optimizer)
    if isinstance(lr, keras.Variable) or isinstance(lr, numbers.Real):
        # The shortest decimal of the float32 value: 0.1, not 0.10000000149.
        return None, float(str(np.float32(ops.convert_to_numpy(lr))))
    values = None
    if isinstance(lr, _SCHEDULES.PiecewiseConstantDecay):
        values = list(lr.values)
    elif isinstance(lr, _SCHEDULES.PolynomialDecay):
        values = [lr.initial_learning_rate, lr.end_learning_rate]
    elif isinstance(lr, _SCHEDULES.CosineDecay):
        if lr.warmup_target is None:
            values = [lr.initial_learning_rate, lr.initial_learning_rate * lr.alpha]
        else:
            values = [lr.initial_learning_rate, lr.warmup_target, lr.warmup_target * lr.alpha]
    if values is None:
        return None, None
    values = [float(ops.convert_to_numpy(v)) for v in values]
    return min(values), max(values)


def _optional_number(name, value, allow_zero=True):
    return None if value is None else checks.positive_number(name, value, allow_zero=allow_zero)


@keras.saving.register_keras_serializable(package="keras_sam")
class GSAM(SharpnessAwareOptimizer):
    """Surrogate-gap guided SAM (Zhuang et al., ICLR 2022).

    ```python
    model = keras_sam.SAMModel(model)
    # Constant ρ:
    opt = keras_sam.GSAM(keras.optimizers.SGD(0.1, momentum=0.9), rho=0.05, alpha=0.4)
    # ρ following a cosine learning rate from 0.1 down to 0: ρ from 0.05 down to 0.01
    # (lr_max = 0.1 and lr_min = 0 are read from the schedule).
    lr = keras.optimizers.schedules.CosineDecay(0.1, decay_steps=10_000)
    opt = keras_sam.GSAM(keras.optimizers.SGD(lr, momentum=0.9), rho_max=0.05, rho_min=0.01)
    model.compile(optimizer=opt, loss=...)
    ```

    Args:
        optimizer: the inner Keras optimizer.
        rho: ρ. Constant mode (no `rho_min`/`rho_max`): a float, or a schedule
            or callable of the step as for `SAM`. Learning-rate mode: the
            default of `rho_max`, and must be a float.
        alpha: α ≥ 0, the weight of the orthogonal component. 0.4. α = 0 is SAM.
        rho_min: ρ_min. Give `rho_min` or `rho_max` (or both) to make ρ follow the inner
            optimizer's learning rate lr_t (evaluated at the current step,
            the rate this step uses): ρ_t = ρ_min + (ρ_max − ρ_min)
            (lr_t − lr_min)/(lr_max − lr_min), clipped at 0 below (as `SAM`'s
            ρ schedules), not clipped to [ρ_min, ρ_max] (nor is the official
            code's). `rho_min` is required in this mode; `rho_max` defaults
            to `rho`. 0 ≤ ρ_min ≤ ρ_max, ρ_max > 0.
        rho_max: ρ_max (see `rho_min`).
        lr_min: with `lr_max`, the learning-rate range mapped onto
            [ρ_min, ρ_max]. Default: read from the inner optimizer where it is known — a float
            learning rate gives lr_max (then lr_min is required: for a
            constant learning rate ρ_t = ρ_max, and a callback that lowers
            the rate lowers ρ); Keras' `PiecewiseConstantDecay`,
            `PolynomialDecay` and `CosineDecay` (also with warmup) give both
            (their smallest and largest values). Any other schedule: both
            required. lr_max must exceed lr_min.
        lr_max: the top of that range (see `lr_min`).
        **kwargs: `steps`, `adaptive`, `eta`, `adaptive_variables`, `start`,
            `every`, `diagnostics`, `name` as for `SAM`.

    Logs per step, besides `sharpness` (= the surrogate gap h = L(θ+e) − L(θ))
    and `grad_cosine`: `rho`, the ρ_t in use.

    Composition:
        - `adaptive=True` (ASAM): the perturbation is ASAM's; the
          decomposition stays Euclidean, as in the official code (whose
          `adaptive` is `eta=0.0, adaptive_variables="all"` here). The paper's
          argument that −g_⊥ lowers h assumes e ∝ g_0; with e ∝ T²g_0, g_⊥ is
          not the component orthogonal to g_1 in ASAM's T-scaled geometry, so
          this is a heuristic combination, not the paper's method.
        - `steps=k > 1`: g_1 is g_k, the gradient at the end of the k-step
          ascent, and g_0 the clean gradient. The paper's first-order analysis
          (h ≈ ρ‖g_0‖, ∇h ≈ g_1 − g_0) is for the one-step perturbation only;
          for k > 1 the decomposition is defined but carries no guarantee.
        - `rho` as a schedule of the step and `rho_min`/`rho_max` are
          exclusive (a ValueError).
    """

    diagnostic_names = ("sharpness", "grad_cosine", "rho")

    def __init__(
        self,
        optimizer=None,
        rho=0.05,
        alpha=0.4,
        rho_min=None,
        rho_max=None,
        lr_min=None,
        lr_max=None,
        **kwargs,
    ):
        super().__init__(optimizer, rho=rho, **kwargs)
        self.alpha = checks.finite_number("alpha", alpha, at_least=0)
        rho_min = _optional_number("rho_min", rho_min)
        rho_max = _optional_number("rho_max", rho_max, allow_zero=False)
        lr_min = _optional_number("lr_min", lr_min)
        lr_max = _optional_number("lr_max", lr_max)
        self.follows_learning_rate = rho_min is not None or rho_max is not None
        if not self.follows_learning_rate:
            if lr_min is not None or lr_max is not None:
                name = "lr_min" if lr_min is not None else "lr_max"
                raise ValueError(
                    f"`{name}` is the learning-rate range that ρ follows: give "
                    "`rho_min` (and optionally `rho_max`) too, or leave it unset "
                    "for a constant ρ."
                )
            self.rho_min = self.rho_max = self.lr_min = self.lr_max = None
            return
        self.rho_min, self.rho_max = self._rho_range(rho_min, rho_max)
        self.lr_min, self.lr_max = self._learning_rate_range(lr_min, lr_max)

    def _rho_range(self, rho_min, rho_max):
        """(ρ_min, ρ_max) of the learning-rate mode, checked."""
        if callable(self.rho):
            raise ValueError(
                "`rho` is a schedule, but `rho_min`/`rho_max` make ρ follow the "
                "learning rate: use one or the other."
            )
        if rho_min is None:
            raise ValueError(
                "`rho_min` is required when ρ follows the learning rate "
                "(`rho_max` given): ρ at the smallest learning rate `lr_min`."
            )
        if rho_max is None:
            rho_max = self.rho
        if rho_min > rho_max:
            raise ValueError(
                f"`rho_min` ({rho_min}) must not exceed `rho_max` ({rho_max})."
            )
        return float(rho_min), float(rho_max)

    def _learning_rate_range(self, lr_min, lr_max):
        """(lr_min, lr_max): given, else read from the inner optimizer."""
        known_min, known_max = learning_rate_bounds(self.inner_optimizer)
        lr_min = known_min if lr_min is None else lr_min
        lr_max = known_max if lr_max is None else lr_max
        for name, value in (("lr_min", lr_min), ("lr_max", lr_max)):
            if value is None:
                raise ValueError(
                    f"`{name}` is required: it cannot be read from the inner "
                    f"optimizer's learning rate ({keras_private.learning_rate_object(self.inner_optimizer)!r})."
                )
        if not lr_max > lr_min:
            raise ValueError(
                f"`lr_max` ({lr_max}) must be greater than `lr_min` ({lr_min}): "
                "ρ follows the learning rate between them. For a constant "
                "learning rate use a constant `rho` (no `rho_min`/`rho_max`)."
            )
        return float(lr_min), float(lr_max)

    def current_rho(self):
        """ρ_t: constant / a schedule of the step, or following lr_t."""
        if not self.follows_learning_rate:
            return super().current_rho()
        lr = ops.cast(self.inner_optimizer.learning_rate, "float32")
        slope = (self.rho_max - self.rho_min) / (self.lr_max - self.lr_min)
        rho = self.rho_min + slope * (lr - self.lr_min)
        return ops.where(rho > 0.0, rho, 0.0)  # NaN > 0 is False

    def direction(self, ascent, params, passes, phase):
        g0, g1 = ascent.clean_grads, ascent.grads
        g0_norm, g1_norm = vectors.norm(g0), ascent.grads_norm
        cosine = vectors.dot(g0, g1) / (g0_norm * g1_norm + EPS)
        # g_⊥ = g_0 − cos · ‖g_0‖ · g_1/(‖g_1‖ + eps);  d = g_1 − α g_⊥
        parallel = vectors.scale(g1, cosine * g0_norm / (g1_norm + EPS))
        g_perp = vectors.subtract(g0, parallel)
        d = vectors.add_scaled(g1, -self.alpha, g_perp)
        return Direction(d, {"rho": ops.convert_to_tensor(self.current_rho(), "float32")})

    def get_config(self):
        return {
            **super().get_config(),
            "alpha": self.alpha,
            "rho_min": self.rho_min,
            "rho_max": self.rho_max,
            "lr_min": self.lr_min,
            "lr_max": self.lr_max,
        }
