"""SAM — Foret et al., "Sharpness-Aware Minimization for Efficiently Improving
Generalization", ICLR 2021 (arXiv 2010.01412).

    g_0 = ∇L_B(θ)
    e   = ρ · g_0 / (‖g_0‖ + 1e-12)
    d   = ∇L_B(θ + e)            # the inner optimizer steps with d from θ

Multi-step ascent (`steps=k`, ρ is the total path length):
θ_{i+1} = θ_i + (ρ/k) g_i/‖g_i‖, d = ∇L_B(θ_k). `adaptive=True` gives ASAM
(Kwon et al., ICML 2021): e = ρ T² ⊙ g / ‖T ⊙ g‖ with T = |θ| + η.

The ascent (`keras_sam.optimizers.ascent`) is the one every method of
keras_sam climbs; SAM's direction is the gradient at its end.
"""

import keras

from keras_sam.optimizers.base import Direction, SharpnessAwareOptimizer


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
