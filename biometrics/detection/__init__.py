"""Face detectors: image in, ``Face`` records (box, score, 5 landmarks) out, in original pixels."""

from biometrics.detection.base import Detector, non_max_suppression
from biometrics.detection.yunet import YuNetDetector

ARCHITECTURES = {"yunet": YuNetDetector}

__all__ = ["ARCHITECTURES", "Detector", "YuNetDetector", "non_max_suppression"]
