"""biometrics: face verification with small, fast, honestly measured models on ONNX Runtime."""

from biometrics.errors import BiometricsError, ImageError, ModelError, NoFaceError
from biometrics.face import Face
from biometrics.imaging import load_image
from biometrics.pipeline import FacePipeline, VerificationResult, cosine_similarity

__version__ = "0.1.0"

__all__ = [
    "BiometricsError",
    "Face",
    "FacePipeline",
    "ImageError",
    "ModelError",
    "NoFaceError",
    "VerificationResult",
    "cosine_similarity",
    "load_image",
]
