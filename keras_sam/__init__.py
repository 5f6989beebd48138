"""keras_sam: sharpness-aware optimizers for Keras 3 (TensorFlow, JAX, PyTorch)."""

from keras_sam.models import SAMModel, SharpnessAwareMixin
from keras_sam.optimizers import ASAM, SAM, XSAM, SharpnessAwareOptimizer

__version__ = "0.1.0"

__all__ = [
    "ASAM",
    "SAM",
    "SAMModel",
    "SharpnessAwareMixin",
    "SharpnessAwareOptimizer",
    "XSAM",
]
