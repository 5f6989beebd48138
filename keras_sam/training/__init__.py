"""The training step, the layer above the methods: `SAMModel` and
`SharpnessAwareMixin` (models), the batch's passes (passes), the one commit
of every write (commit) and the host-side step clock (clock).

    training step (this package) → methods (keras_sam.optimizers)
        → the model as a pure function (keras_sam.stateless), vectors
        → backend (keras_sam.backend)
"""

from keras_sam.training.models import SAMModel, SharpnessAwareMixin

__all__ = ["SAMModel", "SharpnessAwareMixin"]
