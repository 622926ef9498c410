"""Face detectors: image in, ``Face`` records (box, score, 5 landmarks or None) out, in original pixels."""

from biometrics.detection.base import Detector, box_iou, non_max_suppression
from biometrics.detection.retinaface import RetinaFaceDetector
from biometrics.detection.scrfd import SCRFDDetector
from biometrics.detection.ultraface import UltraFaceDetector
from biometrics.detection.yunet import YuNetDetector
from biometrics.registry import Adapters

ARCHITECTURES: dict[str, type[Detector]] = Adapters(
    "detection",
    {
        "yunet": YuNetDetector,
        "retinaface": RetinaFaceDetector,
        "scrfd": SCRFDDetector,
        "ultraface": UltraFaceDetector,
    },
)

__all__ = [
    "ARCHITECTURES",
    "Detector",
    "RetinaFaceDetector",
    "SCRFDDetector",
    "UltraFaceDetector",
    "YuNetDetector",
    "box_iou",
    "non_max_suppression",
]
