"""WSAM — Yue et al., "Sharpness-Aware Minimization Revisited: Weighted Sharpness
as a Regularization Term", KDD 2023 (arXiv 2305.15817).

The loss L + w · (L(θ + e) − L(θ)), sharpness weighted by w = γ/(1 − γ),
γ ∈ [0, 1). With SAM's g_0 = ∇L_B(θ), g_1 = ∇L_B(θ + e), e = ρ g_0/‖g_0‖:

    coupled   (decouple=False): d = g_0 + w (g_1 − g_0)    # the inner optimizer steps with d
    decoupled (decouple=True):  the inner optimizer steps with g_0, then
                                θ ← θ − lr_t · w · (g_1 − g_0)

lr_t is the inner optimizer's learning rate of this step (its schedule at the
current step). γ = 0.5 (w = 1) coupled is SAM; γ = 0 is the inner optimizer's
own step (at the cost of two passes).

Defaults ρ = 0.05, γ = 0.9, decoupled — the authors' code
(dlrover/atorch `atorch.optimizers.WeightedSAM`; its own default γ is 0.88) and
pytorch-optimizer's `WSAM` (γ = 0.9) both default to the decoupled step.
"""

import keras
from keras import ops

from keras_sam import vectors
from keras_sam.optimizers import checks
from keras_sam.optimizers.base import Direction, SharpnessAwareOptimizer

# torch.nn.utils.clip_grad_norm_'s constant, which the authors' code calls.
CLIP_EPS = 1e-6


def clip_by_global_norm(xs, clip_norm, xs_norm=None):
    """xs · min(1, c / (‖xs‖ + 1e-6)): `torch.nn.utils.clip_grad_norm_`."""
    xs_norm = vectors.norm(xs) if xs_norm is None else xs_norm
    return vectors.scale(xs, ops.minimum(clip_norm / (xs_norm + CLIP_EPS), 1.0))


@keras.saving.register_keras_serializable(package="keras_sam")
class WSAM(SharpnessAwareOptimizer):
    """Weighted sharpness-aware minimization (Yue et al., KDD 2023).

    ```python
    model = keras_sam.SAMModel(model)
    model.compile(optimizer=keras_sam.WSAM(keras.optimizers.SGD(0.1, momentum=0.9),
                                           rho=0.05, gamma=0.9),
                  loss=...)
    ```

    Args:
        optimizer: the inner Keras optimizer.
        rho: ρ (a float, or a schedule of the step as for `SAM`). 0.05.
        gamma: γ in [0, 1); the sharpness weight is w = γ/(1 − γ). 0.9 (w = 9).
        decouple: True (the default of the authors' code and of
            pytorch-optimizer): the inner optimizer steps with g_0 and the
            sharpness term w (g_1 − g_0) is applied after it as a plain
            gradient step of size lr_t. False: the inner optimizer steps with
            d = g_0 + w (g_1 − g_0).
        clip_norm: None (default: no clipping, as pytorch-optimizer's default
            `max_norm=None`), or a float c: g_0 and g_1 are each clipped to
            global norm c, g ← g · min(1, c/(‖g‖ + 1e-6)) (torch's
            `clip_grad_norm_`), before they are combined. The authors' code
            clips both with c = 1.0 by default: `clip_norm=1.0` reproduces it.
            The perturbation e is computed from the unclipped g_0, as in the
            authors' code (the same e: it is normalised).
        **kwargs: `steps` (g_1 is then g_k), `adaptive`, `eta`,
            `adaptive_variables` (the authors' `adaptive=True` is
            `eta=0.0, adaptive_variables="all"`), `start`, `every`,
            `diagnostics`, `name` as for `SAM`.

    How the decoupled step composes with the inner optimizer — unlike the
    coupled one, where all of d goes through the inner optimizer:
        - momentum and adaptive scaling (SGD momentum, Adam's moments) see
          g_0 only; the sharpness term is applied without momentum or
          preconditioning, scaled by lr_t alone. With Adam-type optimizers
          (lr ~ 1e-3, steps of ~lr per coordinate whatever the gradient's
          scale) it is therefore much smaller relative to the main step than
          in coupled mode.
        - the inner optimizer's clipping (`clipnorm`, `global_clipnorm`,
          `clipvalue`) applies to g_0 only, not to the sharpness term.
        - Keras' `weight_decay` is decoupled (θ ← θ − lr·λ·θ inside the inner
          step) and acts identically in both modes; an L2 penalty in the loss
          (`kernel_regularizer`) is part of g_0 and g_1 and nearly cancels in
          g_1 − g_0, so in decoupled mode it only goes through the inner
          optimizer via g_0.
        - the inner optimizer's EMA (`use_ema`) is updated inside its step,
          before the sharpness term is applied: it catches up one step later.
        - the inner optimizer's `gradient_accumulation_steps` is refused in
          decoupled mode (the correction would be applied every micro-step).
        - the sharpness term is applied only on steps that are committed (all
          passes finite); on the plain steps of `start` / `every` there is
          none (the inner optimizer's own step).
    """

    def __init__(
        self, optimizer=None, rho=0.05, gamma=0.9, decouple=True, clip_norm=None, **kwargs
    ):
        super().__init__(optimizer, rho=rho, **kwargs)
        checks.require(
            checks.is_number(gamma) and 0.0 <= gamma < 1.0, "gamma",
            "a number in [0, 1) (the sharpness weight is gamma / (1 - gamma))", gamma,
        )
        checks.require(isinstance(decouple, bool), "decouple", "True or False", decouple)
        clip_norm = checks.finite_number("clip_norm", clip_norm, above=0, allow_none=True)
        if decouple and self.inner_optimizer.gradient_accumulation_steps:
            raise ValueError(
                "`decouple=True` applies the sharpness term after every inner "
                "step, which does not match the inner optimizer's "
                "`gradient_accumulation_steps`: use `decouple=False`."
            )
        if decouple and self.eigen_correction is not None:
            # The correction normalises the direction it acts on; decoupled,
            # that would be g_0 alone, beside an unnormalised sharpness term.
            raise ValueError(
                "`eigen_correction` acts on the final direction, which decoupled "
                "WSAM splits in two: use `decouple=False` with it."
            )
        self.gamma = float(gamma)
        self.weight = self.gamma / (1.0 - self.gamma)
        self.decouple = decouple
        self.clip_norm = clip_norm

    def direction(self, ascent, params, passes, phase):
        g0, g1 = ascent.clean_grads, ascent.grads
        if self.clip_norm is not None:
            g0 = clip_by_global_norm(g0, self.clip_norm)
            g1 = clip_by_global_norm(g1, self.clip_norm, ascent.grads_norm)
        sharpness = vectors.subtract(g1, g0)
        if self.decouple:
            return Direction(g0, extra_step=vectors.scale(sharpness, self.weight))
        return Direction(vectors.add_scaled(g0, self.weight, sharpness))

    def get_config(self):
        return {
            **super().get_config(),
            "gamma": self.gamma,
            "decouple": self.decouple,
            "clip_norm": self.clip_norm,
        }
