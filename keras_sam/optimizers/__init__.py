from keras_sam.optimizers.asam import ASAM
from keras_sam.optimizers.base import SharpnessAwareOptimizer
from keras_sam.optimizers.sam import SAM

__all__ = ["ASAM", "SAM", "SharpnessAwareOptimizer"]
