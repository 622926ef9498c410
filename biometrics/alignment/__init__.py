"""5-point similarity alignment to the 112x112 ArcFace template (what SFace and ArcFace-style nets expect)."""

from __future__ import annotations

import cv2
import numpy as np

ARCFACE_TEMPLATE_112 = np.array(
    [[38.2946, 51.6963], [73.5318, 51.5014], [56.0252, 71.7366], [41.5493, 92.3655], [70.7299, 92.2041]],
    dtype=np.float32,
)
"""Eyes, nose tip and mouth corners (image-left first) in a 112x112 crop, from InsightFace."""


def similarity_transform(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """Least-squares rotation + uniform scale + translation mapping ``source`` onto ``target`` (2x3).

    Umeyama's closed form, as InsightFace and OpenCV's FaceRecognizerSF use: it weighs all five points
    equally, unlike the robust estimators (RANSAC/LMedS) that would discard a point.
    """
    source = np.asarray(source, dtype=np.float64)
    target = np.asarray(target, dtype=np.float64)
    source_mean, target_mean = source.mean(axis=0), target.mean(axis=0)
    source_centred, target_centred = source - source_mean, target - target_mean
    covariance = target_centred.T @ source_centred / len(source)
    u, singular, vt = np.linalg.svd(covariance)
    reflection = np.eye(2)
    if np.linalg.det(u) * np.linalg.det(vt) < 0:
        reflection[1, 1] = -1
    rotation = u @ reflection @ vt
    scale = np.trace(np.diag(singular) @ reflection) / source_centred.var(axis=0).sum()
    translation = target_mean - scale * rotation @ source_mean
    return np.hstack([scale * rotation, translation[:, None]]).astype(np.float32)


def align_face(image: np.ndarray, landmarks: np.ndarray, size: int = 112) -> np.ndarray:
    """Warp ``image`` so that the 5 ``landmarks`` land on the ArcFace template scaled to ``size``."""
    template = ARCFACE_TEMPLATE_112 * (size / 112.0)
    matrix = similarity_transform(landmarks, template)
    return cv2.warpAffine(image, matrix, (size, size), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)


def centre_crop(image: np.ndarray, fraction: float = 0.5, size: int = 112) -> np.ndarray:
    """The conventional fallback when no face is detected: the central ``fraction`` of the image."""
    height, width = image.shape[:2]
    side = int(round(min(height, width) * fraction))
    top, left = (height - side) // 2, (width - side) // 2
    return cv2.resize(image[top : top + side, left : left + side], (size, size), interpolation=cv2.INTER_AREA)
