"""Our YuNet decoding, alignment and SFace embedding against OpenCV's own implementations of the same models
(cv2.FaceDetectorYN, cv2.FaceRecognizerSF), on the same model files and pixels: they must agree to noise."""

from __future__ import annotations

import cv2
import numpy as np
import pytest

from biometrics.alignment import align_face
from biometrics.detection.yunet import YuNetDetector
from biometrics.embedding import Embedder
from biometrics.imaging import load_image
from biometrics.pipeline import FacePipeline
from biometrics.registry import ModelRegistry

if not (hasattr(cv2, "FaceDetectorYN") and hasattr(cv2, "FaceRecognizerSF")):
    pytest.skip("this OpenCV build has no FaceDetectorYN / FaceRecognizerSF", allow_module_level=True)

SCORE, NMS = 0.6, 0.3


@pytest.fixture(scope="module")
def yunet():
    return ModelRegistry().resolve("yunet-teacher", task="detection")


@pytest.fixture(scope="module")
def sface():
    return ModelRegistry().resolve("sface-teacher", task="embedding")


@pytest.fixture(scope="module")
def recognizer(sface, tmp_path_factory):
    path = tmp_path_factory.mktemp("sface") / "sface.onnx"
    path.write_bytes(sface.onnx_bytes)  # OpenCV 5's engine refuses the published file's unused inputs
    return cv2.FaceRecognizerSF.create(str(path), "")


def opencv_faces(yunet, image: np.ndarray) -> np.ndarray:
    """OpenCV's rows (x, y, w, h, 5 landmarks, score) on ``image`` at its size (no downscaling)."""
    detector = cv2.FaceDetectorYN.create(str(yunet.source_path), "", image.shape[1::-1], SCORE, NMS, 5000)
    faces = detector.detect(image)[1]
    return np.zeros((0, 15), np.float32) if faces is None else faces


def face_row(face) -> np.ndarray:
    x1, y1, x2, y2 = face.box
    return np.array([[x1, y1, x2 - x1, y2 - y1, *face.landmarks.ravel(), face.score]], np.float32)


@pytest.mark.parametrize("name", ["obama.jpg", "two_people.jpg", "multiface.jpg"])
def test_detection_matches_opencvs_yunet(yunet, sample, name):
    image = load_image(sample(name))
    ours = YuNetDetector(yunet, score_threshold=SCORE, nms_iou=NMS, threads=1).detect(image)
    theirs = opencv_faces(yunet, image)
    assert len(ours) == len(theirs) > 0  # same faces, same order (score descending)
    height, width = image.shape[:2]
    for face, row in zip(ours, theirs, strict=True):
        box = np.array([row[0], row[1], row[0] + row[2], row[1] + row[3]]).clip(0, [width, height] * 2)  # ours clips
        assert np.abs(face.box - box).max() < 1e-2
        assert np.abs(face.landmarks - row[4:14].reshape(5, 2)).max() < 1e-2
        assert abs(face.score - row[14]) < 1e-4


def test_alignment_and_embedding_match_opencvs_sface(yunet, sface, recognizer, sample):
    image = load_image(sample("multiface.jpg"))
    embedder = Embedder(sface, threads=1)
    for face in YuNetDetector(yunet, score_threshold=SCORE, nms_iou=NMS, threads=1).detect(image):
        ours = align_face(image, face.landmarks, 112)
        theirs = recognizer.alignCrop(image, face_row(face))
        difference = np.abs(ours.astype(int) - theirs.astype(int))
        assert difference.max() <= 1 and difference.mean() < 0.01  # float32 rounding of the warp
        reference = recognizer.feature(ours).ravel()
        assert embedder.embed(ours)[0] @ (reference / np.linalg.norm(reference)) > 0.9999


def test_verification_similarity_matches_opencvs_pipeline(yunet, recognizer, sample):
    def feature(path):
        image = cv2.imread(str(path))
        largest = max(opencv_faces(yunet, image), key=lambda row: row[2] * row[3])
        return recognizer.feature(recognizer.alignCrop(image, largest[None]))

    a, b = sample("obama.jpg"), sample("obama2.jpg")  # under 1280 px: no downscaling on either side
    theirs = recognizer.match(feature(a), feature(b), cv2.FaceRecognizerSF_FR_COSINE)
    assert abs(FacePipeline(embedder="sface-teacher", threads=1).verify(a, b).similarity - theirs) < 1e-3


def test_a_downscaled_photos_landmarks_map_back_with_the_real_ratios(yunet, sample):
    """biden.jpg (970x2204) is detected at 563x1280: x shrinks by 563/970, not by the nominal 1280/2204."""
    image = load_image(sample("biden.jpg"))
    small = cv2.resize(image, (563, 1280), interpolation=cv2.INTER_AREA)
    at_small = YuNetDetector(yunet, threads=1).detect(small)[0].landmarks
    expected = at_small * [image.shape[1] / 563, image.shape[0] / 1280]
    assert np.abs(YuNetDetector(yunet, threads=1, max_side=1280).detect(image)[0].landmarks - expected).max() < 0.01
