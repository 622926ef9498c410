"""Pseudo-labels for detector distillation: several teacher detectors vote on every training image.

No training image has hand-drawn boxes, so the teachers' agreement (``biometrics.detection.fusion``) is the
label, with its soft score: the student is taught how sure the ensemble is, not a hard yes. Labels are cached
per (teachers, images).
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from biometrics import detection
from biometrics.detection.fusion import fuse
from biometrics.errors import ImageError
from biometrics.face import Face
from biometrics.files import replacing
from biometrics.imaging import load_image
from biometrics.registry import ModelRegistry, cache_dir
from biometrics.training.faces import FaceSource

FaceFinder = Callable[[np.ndarray], list[Face]]  # BGR uint8 image -> faces


@dataclass
class PseudoLabels:
    """Fused faces of every training image, flattened: face ``i`` belongs to image ``image_index[i]``."""

    paths: list[Path]
    image_index: np.ndarray  # M
    boxes: np.ndarray  # M x 4
    landmarks: np.ndarray  # M x 5 x 2, NaN where no teacher with landmarks saw the face
    scores: np.ndarray  # M
    votes: np.ndarray  # M

    def faces_of(self, image: int) -> slice:
        """The rows of ``image`` (rows are stored grouped by image, in image order)."""
        start, stop = np.searchsorted(self.image_index, [image, image + 1])
        return slice(int(start), int(stop))

    def save(self, folder: Path) -> None:
        arrays = {k: getattr(self, k) for k in ("image_index", "boxes", "landmarks", "scores", "votes")}
        with replacing(folder / "labels.npz") as partial:
            np.savez(partial, **arrays)
        (folder / "paths.json").write_text(json.dumps([str(p) for p in self.paths]))  # last: marks it complete

    @classmethod
    def concatenate(cls, parts: Sequence[PseudoLabels]) -> PseudoLabels:
        """One set from consecutive parts (each part's image indices shifted past the images before it)."""
        offsets = np.cumsum([0] + [len(part.paths) for part in parts[:-1]])
        return cls(
            [path for part in parts for path in part.paths],
            np.concatenate([part.image_index + offset for part, offset in zip(parts, offsets, strict=True)]),
            *(np.concatenate([getattr(part, k) for part in parts]) for k in ("boxes", "landmarks", "scores", "votes")),
        )

    @classmethod
    def load(cls, folder: Path) -> PseudoLabels:
        arrays = np.load(folder / "labels.npz")
        paths = [Path(p) for p in json.loads((folder / "paths.json").read_text())]
        return cls(paths, **{k: arrays[k] for k in arrays.files})


MTCNN = "mtcnn"
"""The one teacher that is not a registry model: facenet-pytorch's MTCNN (training extra only)."""


def teacher_detectors(names: Sequence[str], score_threshold: float = 0.3) -> list[FaceFinder]:
    """Registry detectors by name, plus ``MTCNN``."""
    finders: list[FaceFinder] = []
    for name in names:
        if name == MTCNN:
            finders.append(MtcnnTeacher(score_threshold))
            continue
        model = ModelRegistry().resolve(name, task="detection")
        finders.append(detection.ARCHITECTURES.of(model.card)(model, score_threshold=score_threshold).detect)
    return finders


class MtcnnTeacher:
    """facenet-pytorch's MTCNN as a FaceFinder (it takes RGB; its landmark order matches ``Face``'s)."""

    def __init__(self, score_threshold: float):
        from facenet_pytorch import MTCNN

        self.score_threshold = score_threshold
        self.mtcnn = MTCNN(keep_all=True, device="cpu", min_face_size=12)

    def __call__(self, image: np.ndarray) -> list[Face]:
        boxes, scores, landmarks = self.mtcnn.detect(np.ascontiguousarray(image[..., ::-1]), landmarks=True)
        if boxes is None:
            return []
        return [
            Face(box.astype(np.float32), points.astype(np.float32), float(score))
            for box, score, points in zip(boxes, scores, landmarks, strict=True)
            if score >= self.score_threshold
        ]


def label_images(
    sources: Sequence[FaceSource],
    teachers: Sequence[str],
    *,
    iou: float = 0.55,
    cache: Path | None = None,
    chunk: int = 1000,
    progress: bool = True,
) -> PseudoLabels:
    """Run every teacher on every image and fuse their faces; cached under ``<cache>/training/pseudo-<key>/``.

    Labelling all training images takes the better part of an hour on a laptop CPU, so every ``chunk`` images
    are saved as they finish and an interrupted run picks up at the first missing chunk.
    """
    digest = hashlib.sha256(f"{list(teachers)}:{iou}".encode())
    for source in sources:
        digest.update(f"{source.path}\n".encode())
    folder = (cache or cache_dir()) / "training" / f"pseudo-{digest.hexdigest()[:16]}"
    if (folder / "paths.json").is_file():
        return PseudoLabels.load(folder)
    finders: list[FaceFinder] = []
    parts = []
    with tqdm(total=len(sources), desc="pseudo-labelling", unit="img", disable=not progress) as bar:
        for start in range(0, len(sources), chunk):
            part_folder = folder / "parts" / f"{start:07d}"
            if (part_folder / "paths.json").is_file():
                parts.append(PseudoLabels.load(part_folder))
                bar.update(min(chunk, len(sources) - start))
                continue
            finders = finders or teacher_detectors(teachers)
            part = _label_chunk(sources[start : start + chunk], finders, iou, bar)
            part.save(part_folder)
            parts.append(part)
    labels = PseudoLabels.concatenate(parts)
    labels.save(folder)
    shutil.rmtree(folder / "parts", ignore_errors=True)
    return labels


def _label_chunk(sources: Sequence[FaceSource], finders: Sequence[FaceFinder], iou: float, bar: tqdm) -> PseudoLabels:
    paths, index, boxes, landmarks, scores, votes = [], [], [], [], [], []
    for source in sources:
        bar.update(1)
        try:
            image = load_image(source.path)
        except ImageError:
            continue
        for face in fuse([find(image) for find in finders], iou):
            index.append(len(paths))
            boxes.append(face.box)
            landmarks.append(face.landmarks if face.landmarks is not None else np.full((5, 2), np.nan))
            scores.append(face.score)
            votes.append(face.votes)
        paths.append(source.path)
    return PseudoLabels(
        paths,
        np.asarray(index, np.int64),
        np.asarray(boxes, np.float32).reshape(-1, 4),
        np.asarray(landmarks, np.float32).reshape(-1, 5, 2),
        np.asarray(scores, np.float32),
        np.asarray(votes, np.int64),
    )
