"""SAM — Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
Generalization", ICLR 2021 (arXiv 2010.01412).

    g_0 = ∇L_B(θ)
    e   = ρ · g_0 / (‖g_0‖ + 1e-12)
    d   = ∇L_B(θ + e)            # the inner optimizer steps with d from θ

Multi-step ascent (`steps=k`, ρ is the total path length):
θ_{i+1} = θ_i + (ρ/k) g_i/‖g_i‖, d = ∇L_B(θ_k). `adaptive=True` gives ASAM
(Kwon et al., ICML 2021): e = ρ T² ⊙ g / ‖T ⊙ g‖ with T = |θ| + η.

The ascent step below (`perturbation`, `adaptive_perturbation`) is the one
every method of keras_sam climbs with (`SharpnessAwareOptimizer.ascend`).
"""

import keras
from keras import ops

from keras_sam import vectors
from keras_sam.optimizers.base import Direction, SharpnessAwareOptimizer
from keras_sam.vectors import EPS


def perturbation(grads, radius):
    """SAM's ascent step `e = r g / (‖g‖ + eps)`; returns `e` and ‖g‖."""
    grads_norm = vectors.norm(grads)
    return vectors.scale(grads, radius / (grads_norm + EPS)), grads_norm


def adaptive_perturbation(point, grads, radius, eta, scaled_by_weight):
    """ASAM's ascent step `e = r T² g / (‖T g‖ + eps)`, `T = |θ| + η` at `point`
    on the variables flagged in `scaled_by_weight` (T = 1 on the others);
    returns `e` and ‖T g‖."""
    t = [
        ops.abs(p) + ops.cast(eta, p.dtype) if scaled else None
        for p, scaled in zip(point, scaled_by_weight)
    ]
    tg = [g if ti is None else ti * g for g, ti in zip(grads, t)]
    tg_norm = vectors.norm(tg)
    factor = radius / (tg_norm + EPS)
    e = [
        x * ops.cast(factor, x.dtype) if ti is None else ti * x * ops.cast(factor, x.dtype)
        for x, ti in zip(tg, t)
    ]
    return e, tg_norm


@keras.saving.register_keras_serializable(package="keras_sam")
class SAM(SharpnessAwareOptimizer):
    """Sharpness-aware minimization around any Keras optimizer.

    ```python
    model = keras_sam.SAMModel(model)
    model.compile(optimizer=keras_sam.SAM(keras.optimizers.SGD(0.1, momentum=0.9)),
                  loss="sparse_categorical_crossentropy")
    ```

    Defaults: ρ = 0.05, one ascent step. Costs `steps + 1` forward–backward
    passes per training step. See `SharpnessAwareOptimizer` for all arguments.
    """

    def direction(self, ascent, params, passes, phase):
        return Direction(ascent.grads)
