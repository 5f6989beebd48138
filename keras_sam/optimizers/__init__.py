from keras_sam.optimizers.asam import ASAM
from keras_sam.optimizers.base import SharpnessAwareOptimizer
from keras_sam.optimizers.sam import SAM
from keras_sam.optimizers.xsam import XSAM

__all__ = ["ASAM", "SAM", "SharpnessAwareOptimizer", "XSAM"]
