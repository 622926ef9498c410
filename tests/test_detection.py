from __future__ import annotations

import json

import cv2
import numpy as np
import pytest
from click.testing import CliRunner

from biometrics.cli.main import cli
from biometrics.detection import (
    ARCHITECTURES,
    Detector,
    RetinaFaceDetector,
    SCRFDDetector,
    UltraFaceDetector,
    YuNetDetector,
)
from biometrics.errors import ModelError
from biometrics.imaging import load_image
from biometrics.pipeline import FacePipeline
from biometrics.registry import ModelRegistry
from tests.conftest import shared_file


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


# ---- every registered detector: the reference adapters (RetinaFace, SCRFD, UltraFace) and YuNet alike ----

DETECTORS = ["yunet-teacher", "retinaface-teacher", "scrfd-500m", "scrfd-2.5g", "ultraface-rfb320"]
# The two faces of two_people.jpg (x1, y1, x2, y2), as every detector here places them to within a few pixels.
TWO_PEOPLE = np.array([[238.0, 25.0, 384.0, 225.0], [790.0, 45.0, 937.0, 256.0]])


def _reference_model(name: str):
    """Resolve a detector; skip when its file is not here (../shared absent, optional package not installed)."""
    registry = ModelRegistry()
    card = registry.card(name)
    if card.source.get("shared"):
        shared_file(card.source["shared"])  # skips without ../shared, fails on a wrong checksum
    elif not registry.available(name):
        pytest.skip(f"{name} not installed: {card.how_to_obtain}")
    return registry.resolve(name, task="detection")


@pytest.fixture(scope="module", params=DETECTORS)
def any_detector(request) -> Detector:
    model = _reference_model(request.param)
    return ARCHITECTURES[model.card.architecture](model, threads=2)


def _iou(a: np.ndarray, b: np.ndarray) -> float:
    inter = np.clip(np.minimum(a[2:], b[2:]) - np.maximum(a[:2], b[:2]), 0, None).prod()
    return float(inter / ((a[2:] - a[:2]).prod() + (b[2:] - b[:2]).prod() - inter))


def test_finds_both_faces_with_sensible_boxes_and_landmarks(any_detector, sample):
    faces = any_detector.detect(load_image(sample("two_people.jpg")))
    assert len(faces) == 2
    assert faces[0].score >= faces[1].score >= any_detector.score_threshold
    for face in faces:
        assert max(_iou(face.box, expected) for expected in TWO_PEOPLE) > 0.8, face.box
        if not any_detector.has_landmarks:
            assert face.landmarks is None and face.to_dict()["landmarks"] is None
            continue
        x1, y1, x2, y2 = face.box
        assert face.landmarks.shape == (5, 2)
        assert np.all((face.landmarks[:, 0] > x1) & (face.landmarks[:, 0] < x2))
        assert np.all((face.landmarks[:, 1] > y1) & (face.landmarks[:, 1] < y2))
        eyes, nose, mouth = face.landmarks[:2], face.landmarks[2], face.landmarks[3:]
        assert eyes[0, 0] < eyes[1, 0] and mouth[0, 0] < mouth[1, 0]  # image-left first
        assert eyes[:, 1].max() < nose[1] < mouth[:, 1].min()


def test_no_face_and_blank_images_give_nothing(any_detector, no_face_photo):
    assert any_detector.detect(load_image(no_face_photo)) == []
    assert any_detector.detect(np.full((480, 640, 3), 127, np.uint8)) == []


def test_half_size_image_gives_the_same_boxes(any_detector, sample):
    image = load_image(sample("two_people.jpg"))
    half = cv2.resize(image, (image.shape[1] // 2, image.shape[0] // 2), interpolation=cv2.INTER_AREA)
    full, small = any_detector.detect(image), any_detector.detect(half)
    assert len(full) == len(small) == 2
    for face in small:
        assert max(_iou(face.box * 2, other.box) for other in full) > 0.85


def test_downscaled_input_maps_back_to_original_pixels(any_detector, sample):
    """``max_side`` shrinks the network input; a fixed-size network ignores it. Boxes stay in image pixels."""
    image = load_image(sample("two_people.jpg"))
    model = any_detector.model
    small = ARCHITECTURES[model.card.architecture](model, threads=1, max_side=640).detect(image)
    assert len(small) == 2
    for face in small:
        assert max(_iou(face.box, expected) for expected in TWO_PEOPLE) > 0.75


def test_boxes_only_detector_is_refused_by_the_pipeline_but_detects_on_the_command_line(sample, tmp_path):
    _reference_model("ultraface-rfb320")
    with pytest.raises(ModelError, match="boxes only"):
        FacePipeline(detector="ultraface-rfb320", threads=1)
    photo, drawn = sample("two_people.jpg"), tmp_path / "drawn.jpg"
    result = CliRunner().invoke(
        cli, ["detect", str(photo), "--detector", "ultraface-rfb320", "--json", "--out", str(drawn)]
    )
    assert result.exit_code == 0, result.output
    faces = json.loads(result.stdout)["faces"]
    assert len(faces) == 2 and all(face["landmarks"] is None for face in faces)
    assert drawn.stat().st_size > 0


@pytest.mark.parametrize("adapter", [SCRFDDetector, RetinaFaceDetector, UltraFaceDetector])
def test_a_network_of_another_architecture_is_refused(adapter):
    with pytest.raises(ModelError, match=f"not a {adapter.__name__}"):
        adapter(ModelRegistry().resolve("yunet-teacher"), threads=1)


def test_a_detector_exported_at_a_fixed_size_is_refused_with_the_fix(tmp_path):
    """InsightFace's SCRFD files take 640x640 only: every other image failed in ONNX Runtime as 'unexpected'. The
    error says what the card needs, and with it the same file detects at any size."""
    from biometrics.registry import sha256_file

    scrfd = shared_file("models/baselines/scrfd_500m_kps.onnx")
    folder = tmp_path / "mine"
    folder.mkdir()
    card = {"name": "mine", "task": "detection", "architecture": "scrfd"}
    card["source"] = {"file": "model.onnx", "sha256": sha256_file(scrfd)}
    (folder / "model.onnx").write_bytes(scrfd.read_bytes())
    (folder / "card.json").write_text(json.dumps(card))
    registry = ModelRegistry([tmp_path], cache=tmp_path / "cache")
    with pytest.raises(ModelError, match=r"input is fixed at 640x640 .* add \"prepare\": \[\"dynamic_input_size\"\]"):
        SCRFDDetector(registry.resolve("mine"), threads=1)
    (folder / "card.json").write_text(json.dumps(card | {"prepare": ["dynamic_input_size"]}))
    detector = SCRFDDetector(registry.resolve("mine"), threads=1)
    assert len(detector.detect(np.zeros((300, 500, 3), np.uint8))) == 0
