"""X-SAM (Duan, Chen & Guan 2026, arXiv 2601.10251) by name: SAM with the
dominant-eigenvector correction. See `keras_sam.EigenCorrection` for the math.

Not XSAM (Chen & Zhou, ICLR 2026): that is `keras_sam.XSAM`.
"""

import keras

from keras_sam.optimizers.eigen_correction import EigenCorrection
from keras_sam.optimizers.sam import SAM


@keras.saving.register_keras_serializable(package="keras_sam")
class EigenCorrectedSAM(SAM):
    """The X-SAM paper's method: SAM whose perturbed gradient is corrected
    along the Hessian's dominant eigenvector.

    ```python
    keras_sam.EigenCorrectedSAM(keras.optimizers.SGD(0.05, momentum=0.9))
    # = keras_sam.SAM(opt, rho=0.05, eigen_correction=keras_sam.EigenCorrection(0.2, 5, 5))
    ```

    Defaults (official code): ρ = 0.05, α = 0.2, refresh every p = 5 steps
    with q = 5 power iterations, rule "signed". Other keyword arguments are
    `SAM`'s (`steps`, `adaptive`, `start`, `every`, ...).
    """

    def __init__(
        self,
        optimizer=None,
        rho=0.05,
        alpha=0.2,
        refresh_every=5,
        power_iterations=5,
        rule="signed",
        seed=0,
        eigen_correction=None,
        **kwargs,
    ):
        if eigen_correction is None:
            eigen_correction = EigenCorrection(
                alpha=alpha, every=refresh_every, power_iterations=power_iterations,
                rule=rule, seed=seed,
            )
        super().__init__(optimizer, rho=rho, eigen_correction=eigen_correction, **kwargs)
