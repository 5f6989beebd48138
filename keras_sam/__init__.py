"""keras_sam: sharpness-aware optimizers for Keras 3 (TensorFlow, JAX, PyTorch)."""

# The package version: set here only (pyproject.toml reads it).
__version__ = "0.1.0"

from keras_sam import callbacks, hessian
from keras_sam.optimizers import when
from keras_sam.training import SAMModel, SharpnessAwareMixin
from keras_sam.optimizers import (
    ASAM,
    GSAM,
    SAM,
    WSAM,
    XSAM,
    EigenCorrectedSAM,
    EigenCorrection,
    LookSAM,
    SharpnessAwareOptimizer,
)


__all__ = [
    "ASAM",
    "EigenCorrectedSAM",
    "EigenCorrection",
    "GSAM",
    "LookSAM",
    "SAM",
    "SAMModel",
    "SharpnessAwareMixin",
    "SharpnessAwareOptimizer",
    "WSAM",
    "XSAM",
    "when",
]
