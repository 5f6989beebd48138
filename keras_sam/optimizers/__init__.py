from keras_sam.optimizers.asam import ASAM
from keras_sam.optimizers.base import SharpnessAwareOptimizer
from keras_sam.optimizers.eigen_corrected_sam import EigenCorrectedSAM
from keras_sam.optimizers.eigen_correction import EigenCorrection
from keras_sam.optimizers.gsam import GSAM
from keras_sam.optimizers.looksam import LookSAM
from keras_sam.optimizers.sam import SAM
from keras_sam.optimizers.wsam import WSAM
from keras_sam.optimizers.xsam import XSAM

__all__ = [
    "ASAM",
    "EigenCorrectedSAM",
    "EigenCorrection",
    "GSAM",
    "LookSAM",
    "SAM",
    "SharpnessAwareOptimizer",
    "WSAM",
    "XSAM",
]
