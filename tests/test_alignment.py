from __future__ import annotations

import cv2
import numpy as np

from biometrics.alignment import ARCFACE_TEMPLATE_112, align_face, similarity_transform


def _similarity(angle_deg: float, scale: float, shift: tuple[float, float]) -> np.ndarray:
    angle = np.deg2rad(angle_deg)
    rotation = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    return np.hstack([rotation, np.array(shift)[:, None]])


def _apply(matrix: np.ndarray, points: np.ndarray) -> np.ndarray:
    return points @ matrix[:, :2].T + matrix[:, 2]


def test_similarity_transform_recovers_a_known_transform():
    known = _similarity(23.0, 2.7, (140.0, -35.0))
    landmarks = _apply(known, ARCFACE_TEMPLATE_112)
    estimated = similarity_transform(landmarks, ARCFACE_TEMPLATE_112)
    np.testing.assert_allclose(_apply(estimated, landmarks), ARCFACE_TEMPLATE_112, atol=1e-3)
    np.testing.assert_allclose(estimated, cv2.invertAffineTransform(known), atol=1e-4)


def test_similarity_transform_never_reflects():
    mirrored = ARCFACE_TEMPLATE_112 * np.array([-1.0, 1.0])
    matrix = similarity_transform(mirrored, ARCFACE_TEMPLATE_112)
    assert np.linalg.det(matrix[:, :2]) > 0


def test_known_landmarks_land_on_the_template():
    """Paint dots at landmark positions of a rotated, scaled face; after alignment they sit on the template."""
    known = _similarity(-17.0, 3.1, (260.0, 80.0))
    landmarks = _apply(known, ARCFACE_TEMPLATE_112)
    image = np.zeros((700, 700, 3), dtype=np.uint8)
    for x, y in landmarks:
        # Anti-aliased dots drawn at sub-pixel precision (4 fractional bits).
        cv2.circle(image, (int(round(x * 16)), int(round(y * 16))), 12 * 16, (255, 255, 255), -1, cv2.LINE_AA, 4)
    crop = align_face(image, landmarks)[..., 0].astype(np.float64)
    assert crop.shape == (112, 112)
    for x, y in ARCFACE_TEMPLATE_112:
        top, left = int(y) - 6, int(x) - 6
        window = crop[top : top + 13, left : left + 13]
        rows, cols = np.mgrid[top : top + 13, left : left + 13]
        centroid = (np.sum(cols * window) / window.sum(), np.sum(rows * window) / window.sum())
        assert np.hypot(centroid[0] - x, centroid[1] - y) < 0.5, f"dot at {centroid}, template ({x:.1f}, {y:.1f})"
    assert crop[0:20, 0:20].max() == 0  # and nothing where no landmark is
