"""Other libraries' face pipelines, run on the same LFW pairs and protocol as ours, so a comparison is fair.

``dlib``: what ``face_recognition`` (dlib) computes for its users: the HOG detector on the image upsampled
once, dlib's 5-point shape predictor, and the ResNet descriptor of the 150x150 face chip (``face_encodings``
with its defaults). Installed by the ``baselines`` extra (``dlib-bin``, ``face-recognition-models``). The
descriptors are scaled to unit length and compared by cosine, like ours; ``face_recognition`` compares the raw
descriptors by Euclidean distance, which ranks pairs almost the same way.
"""

from __future__ import annotations

import importlib.util
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from biometrics.embedding import unit_length
from biometrics.errors import ModelError
from biometrics.registry import sha256_file

INSTALL_HINT = "pip install 'biometrics[baselines]' (dlib-bin, face-recognition-models==0.3.0)"


@dataclass(frozen=True)
class BaselineModel:
    """A model file a baseline runs, with the fields a report records (as a registry model has them)."""

    name: str
    source_path: Path
    source_sha256: str


def _package_file(package: str, relative: str, sha256: str) -> BaselineModel:
    """A checksum-verified file inside an installed package, found without importing the package (the
    ``face_recognition_models`` module needs the long-deprecated ``pkg_resources`` to import)."""
    spec = importlib.util.find_spec(package)
    if spec is None or not spec.submodule_search_locations:
        raise ModelError(f"package '{package}' is not installed: {INSTALL_HINT}")
    path = Path(next(iter(spec.submodule_search_locations))) / relative
    if not path.is_file():
        raise ModelError(f"{path} is missing from package '{package}': reinstall it ({INSTALL_HINT})")
    actual = sha256_file(path)
    if actual != sha256:
        raise ModelError(f"{path}: SHA-256 {actual} is not the expected {sha256}; reinstall '{package}'")
    return BaselineModel(path.name, path, actual)


class DlibFaceRecognition:
    """``face_recognition``'s pipeline: HOG detection, 5 landmarks, ResNet descriptor (128-d)."""

    name = "dlib"
    label = "face_recognition (dlib HOG + ResNet)"
    chip_size = 150  # what dlib's ResNet takes: the face chip with 25% padding
    chip_padding = 0.25
    upsample = 1  # face_recognition.face_locations' default: finds faces down to ~40 px
    fallback = "landmarks sought in the central 50% of the image"
    labels = (label,)  # one model: an LFW run has one result (``evaluation.lfw.LabelledFaces``)

    def __init__(self) -> None:
        try:
            import dlib
        except ImportError:
            raise ModelError(f"the dlib baseline needs dlib: {INSTALL_HINT}") from None
        self._dlib = dlib
        self.models = [
            _package_file(
                "face_recognition_models",
                "models/shape_predictor_5_face_landmarks.dat",
                "c4b1e9804792707d3a405c2c16a80a20269e6675021f64a41d30fffafbc41888",
            ),
            _package_file(
                "face_recognition_models",
                "models/dlib_face_recognition_resnet_model_v1.dat",
                "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30",
            ),
        ]
        self._detector = dlib.get_frontal_face_detector()
        self._landmarks = dlib.shape_predictor(str(self.models[0].source_path))
        self._descriptor = dlib.face_recognition_model_v1(str(self.models[1].source_path))

    def face_boxes(self, rgb: np.ndarray) -> list:
        """dlib rectangles of the faces in an RGB image."""
        return list(self._detector(rgb, self.upsample))

    def face_chip(self, rgb: np.ndarray, box) -> np.ndarray:
        """The 150x150 RGB chip dlib's ResNet embeds, aligned on the 5 landmarks found inside ``box``."""
        return self._dlib.get_face_chip(rgb, self._landmarks(rgb, box), size=self.chip_size, padding=self.chip_padding)

    def labelled_crop(self, image: np.ndarray) -> tuple[np.ndarray, bool]:
        """The chip of the face nearest the centre of a BGR image, and whether a face was found; with none,
        the landmarks are sought in the central 50% of the image (our pipeline embeds that region unaligned)."""
        rgb = np.ascontiguousarray(image[..., ::-1])
        height, width = rgb.shape[:2]
        boxes = self.face_boxes(rgb)
        if boxes:
            box = min(boxes, key=lambda b: (b.dcenter().x - width / 2) ** 2 + (b.dcenter().y - height / 2) ** 2)
        else:
            side = round(min(height, width) * 0.5)
            left, top = (width - side) // 2, (height - side) // 2
            box = self._dlib.rectangle(left, top, left + side, top + side)
        return self.face_chip(rgb, box), bool(boxes)

    def labelled_crops(self, image: np.ndarray) -> tuple[list[np.ndarray], bool]:
        chip, found = self.labelled_crop(image)
        return [chip], found

    def embed(self, model: int, chips: np.ndarray) -> np.ndarray:
        """Unit-length 128-d descriptors of RGB face chips (N x 150 x 150 x 3); ``model`` is 0, the only one."""
        descriptors = self._descriptor.compute_face_descriptor([np.ascontiguousarray(c) for c in chips])
        return unit_length(np.array(descriptors, dtype=np.float32))


BASELINES = {DlibFaceRecognition.name: DlibFaceRecognition}
