"""The face pipeline: detect -> align -> embed -> compare, behind one small facade."""

from biometrics.pipeline.facade import (
    DEFAULT_DETECTOR,
    DEFAULT_EMBEDDER,
    FacePipeline,
    VerificationResult,
    cosine_similarity,
    landmark_detector,
    select_face,
    sharing_one_detector,
)

__all__ = [
    "DEFAULT_DETECTOR",
    "DEFAULT_EMBEDDER",
    "FacePipeline",
    "VerificationResult",
    "cosine_similarity",
    "landmark_detector",
    "select_face",
    "sharing_one_detector",
]
