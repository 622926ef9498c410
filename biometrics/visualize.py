"""Drawing faces on images, for `detect --out` and the live demo."""

from __future__ import annotations

from pathlib import Path

import cv2
import numpy as np

from biometrics.errors import ImageError
from biometrics.face import Face

LANDMARK_COLOURS = ((255, 0, 0), (0, 0, 255), (0, 255, 0), (255, 0, 255), (0, 255, 255))


def draw_faces(image: np.ndarray, faces: list[Face], labels: list[str] | None = None) -> np.ndarray:
    """A copy of ``image`` with each face's box, landmarks and label (default: index and score)."""
    canvas = image.copy()
    thickness = max(1, round(max(image.shape[:2]) / 600))
    for i, face in enumerate(faces):
        x1, y1, x2, y2 = (int(round(v)) for v in face.box)
        cv2.rectangle(canvas, (x1, y1), (x2, y2), (0, 255, 0), thickness)
        for (x, y), colour in zip(face.landmarks, LANDMARK_COLOURS, strict=True):
            cv2.circle(canvas, (int(round(x)), int(round(y))), thickness + 1, colour, -1)
        text = labels[i] if labels else f"{i}: {face.score:.2f}"
        cv2.putText(
            canvas, text, (x1, max(0, y1 - 4)), cv2.FONT_HERSHEY_SIMPLEX, 0.4 * thickness, (0, 255, 0), thickness
        )
    return canvas


def save_image(path: Path, image: np.ndarray) -> None:
    if not cv2.imwrite(str(path), image):
        raise ImageError(f"{path}: cannot write image (unknown extension or unwritable folder)")
