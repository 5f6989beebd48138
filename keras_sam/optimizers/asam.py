"""ASAM — Kwon et al., "ASAM: Adaptive Sharpness-Aware Minimization for
Scale-Invariant Learning of Deep Neural Networks", ICML 2021 (arXiv 2102.11600).

    T = |θ| + η   on weights (kernels, embeddings, BatchNorm γ), T = 1 on biases
                  and normalization shifts (SamsungLabs' official code)
    e = ρ · T² ⊙ g_0 / (‖T ⊙ g_0‖ + 1e-12)
    d = ∇L_B(θ + e)

Defaults ρ = 0.5, η = 0.01. davda54/sam and pytorch-optimizer scale every
variable and use η = 0: `ASAM(opt, eta=0.0, adaptive_variables="all")`.
"""

import keras

from keras_sam.optimizers.sam import SAM


@keras.saving.register_keras_serializable(package="keras_sam")
class ASAM(SAM):
    """Adaptive SAM: `SAM(optimizer, adaptive=True)` with ASAM's defaults."""

    def __init__(self, optimizer=None, rho=0.5, eta=0.01, adaptive=True, **kwargs):
        if adaptive is not True:
            raise ValueError("ASAM is adaptive by definition; use SAM otherwise.")
        super().__init__(optimizer, rho=rho, eta=eta, adaptive=True, **kwargs)
