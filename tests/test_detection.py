from __future__ import annotations

import numpy as np
import pytest

from biometrics.detection import YuNetDetector
from biometrics.errors import ModelError
from biometrics.imaging import load_image
from biometrics.registry import ModelRegistry


@pytest.fixture(scope="module")
def detector() -> YuNetDetector:
    return YuNetDetector(ModelRegistry().resolve("yunet-teacher"), threads=2)


@pytest.mark.parametrize(("name", "expected"), [("two_people.jpg", 2), ("multiface.jpg", 6), ("obama.jpg", 1)])
def test_counts_faces_in_real_photos(detector, sample, name, expected):
    assert len(detector.detect(load_image(sample(name)))) == expected


def test_crowd_selfie_has_dozens_of_faces(detector, sample):
    faces = detector.detect(load_image(sample("selfie.jpg")))
    assert len(faces) >= 36
    scores = [face.score for face in faces]
    assert scores == sorted(scores, reverse=True)


def test_landmarks_sit_inside_their_boxes(detector, sample):
    for face in detector.detect(load_image(sample("multiface.jpg"))):
        x1, y1, x2, y2 = face.box
        assert x1 < x2 and y1 < y2
        assert np.all((face.landmarks[:, 0] > x1) & (face.landmarks[:, 0] < x2))
        assert np.all((face.landmarks[:, 1] > y1) & (face.landmarks[:, 1] < y2))
        assert face.landmarks[0, 0] < face.landmarks[1, 0]  # image-left eye first


def test_any_image_size_maps_back_to_original_pixels(detector, sample):
    """A crop of odd size finds the same face at the same place, shifted by the crop offset."""
    image = load_image(sample("two_people.jpg"))
    full = detector.detect(image)
    top, left = 7, 13
    crop = image[top : top + 611, left : left + 1101]
    cropped = detector.detect(crop)
    assert len(cropped) == len(full) == 2
    for face in cropped:
        shifted = face.box + np.array([left, top, left, top])
        assert min(np.abs(other.box - shifted).max() for other in full) < 6.0


def test_downscaled_detection_reports_original_coordinates(detector, sample):
    image = load_image(sample("obama.jpg"))
    native = detector.detect(image)[0]
    small = YuNetDetector(detector.model, threads=1, max_side=320).detect(image)[0]
    assert np.abs(native.box - small.box).max() < 0.06 * image.shape[0]


def test_blank_and_tiny_images_give_no_faces(detector):
    assert detector.detect(np.full((480, 640, 3), 127, np.uint8)) == []
    assert detector.detect(np.zeros((9, 13, 3), np.uint8)) == []


def test_an_embedder_is_not_accepted_as_detector():
    with pytest.raises(ModelError, match="not a YuNetDetector"):
        YuNetDetector(ModelRegistry().resolve("sface-teacher"), threads=1)
