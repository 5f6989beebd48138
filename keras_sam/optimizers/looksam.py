"""LookSAM — Liu et al., "Towards Efficient and Scalable Sharpness-Aware
Minimization", CVPR 2022 (arXiv 2203.02714), Algorithm 1 with whole-model
vectors.

SAM's perturbed gradient g_s differs from the clean one mostly by a component
g_v orthogonal to g that changes slowly from step to step. LookSAM computes
g_s on one step in k and reuses g_v on the others. With t the optimizer's
iteration count (its `iterations`, 0 on the first step):

    t % k == 0 ("look", two passes):
        g   = ∇L_B(θ),   g_s = ∇L_B(θ + ρ g/‖g‖)
        g_v ← g_s − ⟨g, g_s⟩/(‖g‖² + eps) · g        # kept as optimizer state
        d   = g_s
    otherwise ("reuse", one pass):
        g   = ∇L_B(θ)
        d   = g + α ‖g‖/(‖g_v‖ + eps) · g_v

The inner optimizer steps with d: (1 + 1/k) forward–backward passes per step.
Before the first look step g_v = 0, and a reuse step is the inner optimizer's
own step, d = g. Defaults ρ = 0.05, k = 5, α = 0.7 (the paper's LookSAM-5).
"""

import keras
from keras import ops

from keras_sam import vectors
from keras_sam.optimizers import checks
from keras_sam.optimizers.base import Direction, SharpnessAwareOptimizer
from keras_sam.vectors import EPS


def orthogonal_component(g, gs):
    """g_v = g_s − ⟨g, g_s⟩/(‖g‖² + eps) · g: the part of g_s orthogonal to g."""
    projection = vectors.dot(g, gs) / (ops.square(vectors.norm(g)) + EPS)
    return vectors.add_scaled(gs, -projection, g)


def reused_direction(g, g_norm, gv, alpha):
    """d = g + α ‖g‖/(‖g_v‖ + eps) · g_v (d = g while g_v = 0)."""
    return vectors.add_scaled(g, alpha * g_norm / (vectors.norm(gv) + EPS), gv)


@keras.saving.register_keras_serializable(package="keras_sam")
class LookSAM(SharpnessAwareOptimizer):
    """Look-ahead SAM (Liu et al., CVPR 2022): SAM's ascent on one step in k.

    ```python
    model = keras_sam.SAMModel(model)
    model.compile(optimizer=keras_sam.LookSAM(keras.optimizers.SGD(0.1, momentum=0.9),
                                              rho=0.05, k=5, alpha=0.7),
                  loss=...)
    ```

    Args:
        optimizer: the inner Keras optimizer.
        rho: ρ (a float, or a schedule of the step as for `SAM`). 0.05.
        k: the ascent runs on the steps whose `iterations` is a multiple of
            k, and its g_v is reused on the others. 5. k = 1 is SAM.
        alpha: α ≥ 0, the weight of the reused g_v. 0.7. α = 0 makes the
            reuse steps the inner optimizer's own.
        **kwargs: `steps` (g_s is then g_k), `adaptive`, `eta`,
            `adaptive_variables`, `start`, `every`, `eigen_correction`,
            `diagnostics`, `name` as for `SAM`.

    g_v is optimizer state, saved with the model. The look and reuse steps
    are compiled separately (`steps_per_execution=1`); `sharpness` and
    `grad_cosine` are logged on look steps. Composition:
        - `start` / `every`: the look steps are the sharpness-aware steps
          whose `iterations` is a multiple of k; a reuse step before the
          first look step is a plain step (g_v = 0).
        - `adaptive=True`: the ascent is ASAM's, the projection stays
          Euclidean (not the paper's method).
        - `perturbation_groups > 1` is refused at the first look step (g_v
          is one state for the whole batch), and so is the inner
          optimizer's `gradient_accumulation_steps`.
    """

    gated_ascent_supported = False  # a gated-off look step would reset g_v

    def __init__(self, optimizer=None, rho=0.05, k=5, alpha=0.7, **kwargs):
        super().__init__(optimizer, rho=rho, **kwargs)
        self.k = checks.integer("k", k, minimum=1)
        self.alpha = checks.finite_number("alpha", alpha, at_least=0)
        if self.inner_optimizer.gradient_accumulation_steps:
            # The base class runs a step's later micro-batches in the default
            # phase, which would mix look and reuse within one update.
            raise ValueError(
                "LookSAM does not support the inner optimizer's "
                "`gradient_accumulation_steps`: its look and reuse steps are "
                "whole updates."
            )

    def build_state(self, var_list):
        self.gv = [
            self.add_variable(
                shape=tuple(v.shape), dtype=v.dtype, initializer="zeros",
                aggregation="none", name=f"looksam_gv_{i}",
            )
            for i, v in enumerate(var_list)
        ]

    def method_phases(self):
        return ("look",) if self.k == 1 else ("look", "reuse")

    def method_phase(self, clock):
        return "look" if clock.step % self.k == 0 else "reuse"

    def phase_ascends(self, phase):
        return phase == "look"

    def direction(self, ascent, params, passes, phase):
        if phase == "reuse":  # `ascent` is the clean pass alone
            gv = [ops.convert_to_tensor(v.value) for v in self.gv]
            return Direction(reused_direction(ascent.grads, ascent.grads_norm, gv, self.alpha))
        gv = orthogonal_component(ascent.clean_grads, ascent.grads)
        state_updates = [(v, ops.cast(x, v.dtype)) for v, x in zip(self.gv, gv)]
        return Direction(ascent.grads, state_updates=state_updates)

    def get_config(self):
        return {**super().get_config(), "k": self.k, "alpha": self.alpha}
