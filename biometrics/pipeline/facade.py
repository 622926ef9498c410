"""``FacePipeline``: the one object an application needs (in the spirit of InsightFace's FaceAnalysis)."""

from __future__ import annotations

import dataclasses
import os
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import cv2
import numpy as np

from biometrics import detection, embedding
from biometrics.alignment import align_face
from biometrics.card import is_similarity
from biometrics.errors import ImageError, ModelError, NoFaceError, UsageError
from biometrics.face import SELECTIONS, Face
from biometrics.imaging import load_image
from biometrics.registry import ModelRegistry, ResolvedModel

DEFAULT_DETECTOR = "yunet-teacher"
DEFAULT_EMBEDDER = "sface-student"  # ours, INT8: LFW folds 6-10 98.97% at 0.08x SFace's latency (README)

ImageSource = str | os.PathLike | bytes | np.ndarray
"""A photo: a file path, its encoded bytes, or an array in BGR uint8 H x W x 3 as OpenCV reads it (grey and BGRA
are converted). An RGB array (PIL's order: ``np.asarray(pil_image)``) is not detected as such and lowers the
similarities: convert it with ``rgb[..., ::-1]`` or ``cv2.cvtColor(rgb, cv2.COLOR_RGB2BGR)``."""
Selection = str | int
"""Which face of an image: ``largest``, ``center``, ``score`` or an index in detection order."""


def landmark_detector(
    name: str | os.PathLike | ResolvedModel,
    *,
    threads: int | None = None,
    registry: ModelRegistry | None = None,
    max_side: int = 1280,
    score_threshold: float = 0.6,
) -> detection.Detector:
    """A detector, by registry name, path or resolved model, that finds the 5 landmarks alignment needs (the
    pipeline's first stage); a boxes-only detector is refused."""
    model = name if isinstance(name, ResolvedModel) else (registry or ModelRegistry()).resolve(name, task="detection")
    detector_class = detection.ARCHITECTURES.of(model.card)
    if not detector_class.has_landmarks:
        raise ModelError(
            f"detector '{model.name}' finds boxes only; the pipeline aligns faces on 5 landmarks "
            "(use it with `biometrics detect` or `evaluate wider`)"
        )
    return detector_class(model, threads=threads, max_side=max_side, score_threshold=score_threshold)


def cosine_similarity(a: Face | np.ndarray, b: Face | np.ndarray) -> float:
    """Cosine similarity of two embeddings (or two embedded faces); 1 = identical direction. Both must come from
    one embedder: across models the number means nothing, and a ``Face`` does not record which model embedded it.
    Embeddings of different lengths (128 and 512) surely come from different embedders: a ``UsageError`` saying so,
    as is an empty or multi-row array, rather than NumPy's shape error or a meaningless 0."""
    u = a.embedding if isinstance(a, Face) else a
    v = b.embedding if isinstance(b, Face) else b
    if u is None or v is None:
        raise ValueError("both faces need an embedding; run FacePipeline.analyze first")
    u, v = np.asarray(u), np.asarray(v)
    for vector in (u, v):
        if vector.ndim != 1 or not vector.size:
            raise UsageError(f"expected an embedding (one non-empty vector), got an array of shape {vector.shape}")
    if u.size != v.size:
        raise UsageError(
            f"the embeddings have different lengths ({u.size} vs {v.size}): they come from different embedders, "
            "whose similarities mean nothing; compare embeddings of one embedder"
        )
    return float(np.dot(u, v) / max(np.linalg.norm(u) * np.linalg.norm(v), 1e-12))


def select_face(faces: list[Face], how: Selection = "largest", image_shape: tuple[int, ...] | None = None) -> Face:
    """Pick one face: ``largest`` box, closest to the image ``center``, best ``score``, or an index."""
    if not faces:
        raise NoFaceError("no face found")
    if isinstance(how, bool) or not isinstance(how, int | str):
        raise ValueError(f"select={how!r}: expected one of {', '.join(SELECTIONS)} or a face index")
    if isinstance(how, int):
        if not 0 <= how < len(faces):
            raise NoFaceError(f"face index {how} out of range: {len(faces)} face(s) found")
        return faces[how]
    if how == "largest":
        return max(faces, key=lambda face: face.area)
    if how == "score":
        return max(faces, key=lambda face: face.score)
    if how == "center":
        if image_shape is None:
            raise ValueError("selecting the centre face needs the image shape")
        cy, cx = image_shape[0] / 2, image_shape[1] / 2
        return min(faces, key=lambda face: (face.center[0] - cx) ** 2 + (face.center[1] - cy) ** 2)
    raise ValueError(f"unknown face selection '{how}' (choose from {', '.join(SELECTIONS)} or an index)")


def sharing_one_detector(pipelines: Sequence[FacePipeline]) -> Sequence[FacePipeline]:
    """``pipelines``, checked to have one detector between them: an evaluation that finds each face once and embeds
    it with every pipeline's embedder (``evaluate lfw``, ``evaluate folder``) must find the faces all would."""
    detectors = {(p.detector.name, p.detector.max_side, p.detector.score_threshold) for p in pipelines}
    if len(detectors) != 1:
        settings = ", ".join(f"{name} (max side {side}, score >= {score})" for name, side, score in sorted(detectors))
        raise ValueError(f"expected pipelines that share one detector and its settings, got {settings or 'none'}")
    return pipelines


@dataclass
class VerificationResult:
    """The answer to "are these the same person?", with what it was based on."""

    same_person: bool
    similarity: float
    threshold: float
    faces: tuple[Face, Face]
    faces_found: tuple[int, int]
    face_indexes: tuple[int, int]  # which face of each image was compared, in detection order
    timings_ms: dict[str, float] = field(default_factory=dict)


class FacePipeline:
    """Detector + aligner + embedder, each an ONNX model resolved by name from the registry."""

    def __init__(
        self,
        detector: str | os.PathLike = DEFAULT_DETECTOR,
        embedder: str | os.PathLike = DEFAULT_EMBEDDER,
        *,
        threads: int | None = None,
        registry: ModelRegistry | None = None,
        threshold: float | None = None,
        max_side: int = 1280,
        score_threshold: float = 0.6,
    ):
        if isinstance(max_side, bool) or not isinstance(max_side, int) or max_side < 1:
            raise UsageError(f"max_side={max_side!r}: expected a whole number of pixels, at least 1")
        if threshold is not None and not is_similarity(threshold):  # NaN would make every pair "different"
            raise UsageError(f"threshold={threshold!r}: expected a cosine similarity, a number from -1 to 1")
        registry = registry or ModelRegistry()
        self.detector = landmark_detector(
            detector, threads=threads, registry=registry, max_side=max_side, score_threshold=score_threshold
        )
        embedder_model = registry.resolve(embedder, task="embedding")
        self.embedder = embedding.ARCHITECTURES.of(embedder_model.card)(embedder_model, threads=threads)
        self._threshold = float(threshold) if threshold is not None else self.embedder.threshold
        self._timings = threading.local()  # each thread's calls timed apart: the models may serve several at once

    @property
    def threshold(self) -> float:
        """The cosine similarity from which two faces are the same person: the one given, else the embedder card's
        calibrated one. Only decisions need it: an uncalibrated embedder still detects, embeds and enrols."""
        if self._threshold is None:
            raise ModelError(
                f"embedder '{self.embedder.name}' has no calibrated threshold in its card; pass a threshold "
                "(--threshold on the command line)"
            )
        return self._threshold

    @property
    def calibrated(self) -> bool:
        """Whether ``threshold`` has a value (given, or from the embedder's card)."""
        return self._threshold is not None

    @property
    def name(self) -> str:
        """Which models run, as reports label a pipeline: "yunet-teacher + sface-student"."""
        return f"{self.detector.name} + {self.embedder.name}"

    @property
    def timings_ms(self) -> dict[str, float]:
        """Milliseconds per stage (decode, detect, align, embed) of the calls made in this thread: reset by each
        ``verify``, cumulative otherwise (set it to ``{}`` to start a count)."""
        if not hasattr(self._timings, "ms"):
            self._timings.ms = {}
        return self._timings.ms

    @timings_ms.setter
    def timings_ms(self, value: dict[str, float]) -> None:
        self._timings.ms = value

    @contextmanager
    def _timed(self, stage: str) -> Iterator[None]:
        """Add the block's wall time to ``timings_ms[stage]``."""
        start = time.perf_counter()
        yield
        self.timings_ms[stage] = self.timings_ms.get(stage, 0.0) + (time.perf_counter() - start) * 1000

    def _bgr(self, source: ImageSource) -> np.ndarray:
        """The BGR uint8 H x W x 3 array the models need, from a path or an array (timed as ``decode``): grey gains
        three channels, BGRA loses its alpha, and anything else is refused here rather than failing deep inside a
        model or, for a float image in 0..1, silently finding no face."""
        with self._timed("decode"):
            if isinstance(source, str | os.PathLike | bytes):
                return load_image(source)
            if not isinstance(source, np.ndarray):  # a PIL image, a list: what it holds cannot be known here
                raise ImageError(
                    f"expected a path, an image file's bytes or a BGR uint8 array, got {type(source).__name__} "
                    "(a PIL image: np.asarray(image)[..., ::-1])"
                )
            if source.dtype == np.uint8 and source.size:
                channels = 1 if source.ndim == 2 else source.shape[2] if source.ndim == 3 else 0
                if channels == 3:
                    return source
                if channels == 1:
                    return cv2.cvtColor(source, cv2.COLOR_GRAY2BGR)
                if channels == 4:
                    return cv2.cvtColor(source, cv2.COLOR_BGRA2BGR)
            raise ImageError(
                f"expected a BGR uint8 image (H x W x 3, as OpenCV reads it), got a {source.dtype} array of shape "
                f"{source.shape}"
            )

    def detect(self, image: ImageSource) -> list[Face]:
        """All faces in a photo (path or BGR uint8 array), highest score first, not yet embedded."""
        return self._detect(self._bgr(image))

    def embed(self, image: ImageSource, faces: list[Face]) -> list[Face]:
        """The same faces, found in ``image``, with their embeddings filled in (one batched embedder call)."""
        return self._embed(self._bgr(image), faces) if faces else []

    def analyze(self, image: ImageSource) -> list[Face]:
        """All faces in a photo (path or BGR uint8 array), detected and embedded."""
        pixels = self._bgr(image)
        faces = self._detect(pixels)
        return self._embed(pixels, faces) if faces else []

    def embed_one(self, image: ImageSource, select: Selection = "largest") -> tuple[Face, int, int]:
        """The selected face of a photo (path or BGR uint8 array), embedded; its index in detection order (as
        `biometrics detect` numbers faces); and how many faces the photo had."""
        pixels = self._bgr(image)
        faces = self._detect(pixels)
        if not faces:
            raise NoFaceError("no face found")
        face = select_face(faces, select, pixels.shape)
        return self._embed(pixels, [face])[0], next(i for i, found in enumerate(faces) if found is face), len(faces)

    # The public methods take a path or any array once (``_bgr``); these work on the BGR pixels it gives.
    def _detect(self, pixels: np.ndarray) -> list[Face]:
        with self._timed("detect"):
            return self.detector.detect(pixels)

    def _embed(self, pixels: np.ndarray, faces: list[Face]) -> list[Face]:
        with self._timed("align"):
            crops = np.stack([align_face(pixels, face.landmarks, self.embedder.size[0]) for face in faces])
        with self._timed("embed"):
            vectors = self.embedder.embed(crops)
        return [dataclasses.replace(face, embedding=vector) for face, vector in zip(faces, vectors, strict=True)]

    def verify(
        self,
        a: ImageSource,
        b: ImageSource,
        select: Selection | tuple[Selection, Selection] = "largest",
    ) -> VerificationResult:
        """Compare the selected face of two photos (paths or BGR uint8 arrays); ``select`` applies to both, or is
        a pair, one per photo."""
        threshold = self.threshold  # an uncalibrated embedder fails before any photo is read
        if isinstance(select, tuple | list) and len(select) != 2:
            raise ValueError(f"select={select!r}: one selection for both photos, or a pair of them (one per photo)")
        self.timings_ms = {}
        embedded, indexes, counts = [], [], []
        for source, how in zip((a, b), select if isinstance(select, tuple | list) else (select, select), strict=True):
            try:
                face, index, count = self.embed_one(source, how)
            except NoFaceError as exc:
                raise NoFaceError(f"{source if isinstance(source, str | os.PathLike) else 'image'}: {exc}") from None
            embedded.append(face)
            indexes.append(index)
            counts.append(count)
        similarity = cosine_similarity(*embedded)
        return VerificationResult(
            similarity >= threshold,
            similarity,
            threshold,
            tuple(embedded),
            tuple(counts),
            tuple(indexes),
            dict(self.timings_ms),
        )
