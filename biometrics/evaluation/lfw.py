"""LFW View 2 verification: 10 identity-disjoint folds of 300 genuine + 300 impostor pairs."""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import numpy as np
from tqdm import tqdm

from biometrics.alignment import align_face, centre_crop
from biometrics.errors import DataError, ImageError
from biometrics.evaluation import metrics
from biometrics.evaluation.datasets import unpack_once
from biometrics.imaging import load_image, shrink_to_side
from biometrics.pipeline import FacePipeline, select_face, sharing_one_detector

LFW_ARCHIVE = "lfw-deepfunneled.tgz"
LFW_ARCHIVE_SHA256 = "5f5d530085c6776351134b91336c66d54e26ae3111aeaaf601b3ba2473955868"
CALIBRATION_FMRS = (1e-2, 3e-3, 1e-3, 3e-4, 1e-4, 3e-5, 1e-5, 3e-6, 1e-6)
"""One comparison's false-match rates calibrated: the card's threshold (1e-3) and, below it, the ones a gallery of
N people needs to keep its false positive identification rate (``biometrics.gallery.gallery_threshold``)."""


@dataclass(frozen=True)
class Pair:
    fold: int  # 1-based, as in the protocol's documentation
    name_a: str
    index_a: int
    name_b: str
    index_b: int

    @property
    def same(self) -> bool:
        return self.name_a == self.name_b

    @property
    def images(self) -> tuple[str, str]:
        return image_key(self.name_a, self.index_a), image_key(self.name_b, self.index_b)


def image_key(name: str, index: int) -> str:
    """The image's path relative to the unpacked archive's person folders."""
    return f"{name}/{name}_{index:04d}.jpg"


def read_pairs(path: Path) -> list[Pair]:
    """Parse the official ``pairs.txt`` (header ``10 300``, then per fold 300 genuine, 300 impostor)."""
    if not path.is_file():
        where = "LFW data folder not found" if not path.parent.is_dir() else f"no {path.name} in the LFW data folder"
        raise DataError(
            f"{path.parent}: {where} (expected {path.name} and {LFW_ARCHIVE} in it; give it with --data, or set "
            "BIOMETRICS_SHARED)"
        )
    try:
        lines = path.read_text().split("\n")
        folds, per_fold = (int(v) for v in lines[0].split())
    except (OSError, ValueError, IndexError) as exc:
        raise DataError(f"{path}: not an LFW pairs file ({exc})") from None
    rows = [line.split() for line in lines[1:] if line.strip()]
    if len(rows) != folds * per_fold * 2:
        raise DataError(f"{path}: expected {folds * per_fold * 2} pairs, found {len(rows)}")
    pairs = []
    for i, row in enumerate(rows):
        fold = i // (2 * per_fold) + 1
        if len(row) == 3:
            pairs.append(Pair(fold, row[0], int(row[1]), row[0], int(row[2])))
        elif len(row) == 4:
            pairs.append(Pair(fold, row[0], int(row[1]), row[2], int(row[3])))
        else:
            raise DataError(f"{path}: line {i + 2} is not a pair: {' '.join(row)}")
    return pairs


def people_in_folds(pairs: list[Pair], folds: list[int]) -> set[str]:
    """Everyone who appears in a pair of ``folds`` (View 2 folds are identity-disjoint)."""
    return {name for pair in pairs if pair.fold in folds for name in (pair.name_a, pair.name_b)}


def images_in_folds(pairs: list[Pair], folds: list[int]) -> list[str]:
    """The image keys named in a pair of ``folds``, sorted: each image once, however many pairs use it."""
    return sorted({key for pair in pairs if pair.fold in folds for key in pair.images})


def parse_folds(text: str) -> list[int]:
    """'6-10' or '1,3,5' or '1-3,7' -> sorted fold numbers in 1..10."""
    folds: set[int] = set()
    for part in text.split(","):
        start, _, end = part.strip().partition("-")
        try:
            first, last = int(start), int(end or start)
        except ValueError:
            raise DataError(f"folds '{text}': expected numbers like 6-10 or 1,3,5") from None
        if last < first:
            raise DataError(f"folds '{text}': a range runs from low to high (e.g. {last}-{first})")
        if first < 1 or last > 10:  # before the range is made: 6-99999999999 must not fill the memory
            raise DataError(f"folds '{text}': LFW View 2 has folds 1 to 10")
        folds.update(range(first, last + 1))
    return sorted(folds)


def training_overlap(model_cards: Iterable, folds: list[int]) -> list[str]:
    """Why a number on the people of ``folds`` is not a held-out measure: models whose card says they trained on
    LFW (``data_split.datasets``, or the recipe's data block) with people outside
    ``data_split.lfw_excluded_folds`` (View 2 folds are identity-disjoint, so only the excluded folds hold
    people they never saw)."""
    caveats = []
    for card in model_cards:
        split = card.data.get("data_split") or {}
        recipe_data = (card.data.get("recipe") or {}).get("data") or {}
        if "lfw" not in split.get("datasets", []) and "lfw" not in recipe_data:
            continue
        excluded = split.get("lfw_excluded_folds", [])
        seen = sorted(set(folds) - set(excluded))
        if seen:
            unseen = f"only folds {', '.join(map(str, excluded))} hold" if excluded else "no fold holds"
            caveats.append(
                f"{card.name} trained on the people of folds {', '.join(map(str, seen))}; {unseen} people it never saw"
            )
    return caveats


def locate_images(data_dir: Path) -> Path:
    """The folder holding ``<Name>/<Name>_NNNN.jpg``: an unpacked copy, or the archive unpacked once."""
    for candidate in (data_dir / "lfw-deepfunneled", data_dir):
        if (candidate / "Aaron_Eckhart").is_dir():
            return candidate
    root = unpack_once(data_dir / LFW_ARCHIVE, LFW_ARCHIVE_SHA256)
    return root / "lfw-deepfunneled"


@dataclass
class EmbeddedImages:
    """Embeddings of a set of LFW images, and which ones fell back to a centre crop."""

    keys: list[str]
    embeddings: np.ndarray
    detection_failures: list[str]


class LabelledFaces(Protocol):
    """What an LFW run needs from face pipelines: each image's labelled face (the one nearest the centre) found
    once, cropped for each embedding model, and each model's unit-length embeddings of a batch of its crops."""

    fallback: str  # what is embedded when no face is detected
    labels: tuple[str, ...]  # one per embedding model: its run's name in the report

    def labelled_crops(self, image: np.ndarray) -> tuple[list[np.ndarray], bool]: ...

    def embed(self, model: int, crops: np.ndarray) -> np.ndarray: ...


class PipelineFaces:
    """Our pipelines as LFW sees them: the detected face nearest the centre, found once by the detector they share
    and aligned to each embedder's input, so every embedder is scored on the very same faces (and the photo is
    decoded and searched once, not once per embedder)."""

    fallback = "centre crop (central 50% of the image)"

    def __init__(self, *pipelines: FacePipeline, image_side: int | None = None):
        """``image_side``: shrink each image to this side first (LFW's are 250 px, the face ~0.37 of that), as if
        it had been taken from farther away: how accuracy falls with the face's size in pixels."""
        self.pipelines = sharing_one_detector(pipelines)
        self.labels = tuple(pipeline.name for pipeline in pipelines)
        self.image_side = image_side

    def labelled_crops(self, image: np.ndarray) -> tuple[list[np.ndarray], bool]:
        """Each embedder's aligned crop, or the conventional centre crop when no face is detected."""
        if self.image_side is not None:
            image = shrink_to_side(image, self.image_side)  # as if taken from farther away
        sizes = {pipeline.embedder.size[0] for pipeline in self.pipelines}
        faces = self.pipelines[0].detect(image)
        if faces:
            landmarks = select_face(faces, "center", image.shape).landmarks
            crops = {size: align_face(image, landmarks, size) for size in sizes}
        else:
            crops = {size: centre_crop(image, size=size) for size in sizes}
        return [crops[pipeline.embedder.size[0]] for pipeline in self.pipelines], bool(faces)

    def embed(self, model: int, crops: np.ndarray) -> np.ndarray:
        return self.pipelines[model].embedder.embed(crops)


def _lfw_image(path: Path) -> np.ndarray:
    try:
        return load_image(path)
    except ImageError as exc:
        raise DataError(f"LFW image unreadable: {exc}") from None


def sample_images(data_dir: Path, folds: list[int], count: int = 32) -> list[np.ndarray]:
    """``count`` images of ``folds``, evenly spread over them: real input for timing."""
    keys = images_in_folds(read_pairs(data_dir / "pairs.txt"), folds)
    chosen = [keys[i] for i in np.linspace(0, len(keys) - 1, min(count, len(keys))).astype(int)]
    root = locate_images(data_dir)
    return [_lfw_image(root / key) for key in chosen]


def sample_crops(pipeline: FacePipeline, data_dir: Path, folds: list[int], count: int = 32) -> np.ndarray:
    """Aligned crops of ``sample_images``: real input for timing embedders, whose speed can depend on the
    values (``efficiency.benchmark_model``)."""
    faces = PipelineFaces(pipeline)
    return np.stack([faces.labelled_crops(image)[0][0] for image in sample_images(data_dir, folds, count)])


def embed_images(
    faces: LabelledFaces, root: Path, keys: Iterable[str], batch_size: int = 64, progress: bool = True
) -> list[EmbeddedImages]:
    """Find each image's labelled face (the one nearest the centre) and embed it with each of ``faces``' models
    (one result per model, in ``faces.labels`` order).

    Images with no detection fall back to a centre crop, as is conventional; they are counted, not dropped.
    """
    keys = list(keys)
    models = range(len(faces.labels))
    pending, chunks, failures = [[] for _ in models], [[] for _ in models], []

    def embed_pending() -> None:
        for model in models:
            chunks[model].append(faces.embed(model, np.stack(pending[model])))
            pending[model].clear()

    for key in tqdm(keys, desc="LFW images", unit="img", disable=not progress):
        crops, detected = faces.labelled_crops(_lfw_image(root / key))
        if not detected:
            failures.append(key)
        for model, crop in enumerate(crops):
            pending[model].append(crop)
        if len(pending[0]) == batch_size:
            embed_pending()
    if pending[0]:
        embed_pending()
    return [EmbeddedImages(keys, np.concatenate(chunks[model]), failures) for model in models]


def impostor_calibration(embedded: EmbeddedImages, fmrs: Iterable[float] = CALIBRATION_FMRS) -> dict:
    """Thresholds at target FMRs over ALL cross-identity pairs of the images (millions, not 1,500); an FMR that
    allows less than one false match among them is not resolved and left out.

    This is how the default threshold is set: on the impostor pairs of folds the model is not reported on.
    """
    identities = np.array([key.split("/")[0] for key in embedded.keys])
    impostor = metrics.pair_scores(embedded.embeddings, identities)[2]
    return {
        "impostor_pairs": int(impostor.size),
        "thresholds": {f"{fmr:g}": metrics.threshold_at_fmr(impostor, fmr) for fmr in fmrs if fmr * impostor.size >= 1},
    }


def evaluate_lfw(faces: LabelledFaces, data_dir: Path, folds: list[int], progress: bool = True) -> dict[str, dict]:
    """Scores, metrics and calibration for the pairs of ``folds``, one run per model of ``faces`` (by label);
    JSON-ready apart from the arrays.

    ``faces``: ``PipelineFaces(FacePipeline(...), ...)`` for ours, or a baseline (``evaluation.baselines``).
    """
    pairs_path = data_dir / "pairs.txt"
    pairs = [pair for pair in read_pairs(pairs_path) if pair.fold in folds]
    root = locate_images(data_dir)
    keys = images_in_folds(pairs, folds)
    missing = [key for key in keys if not (root / key).is_file()]
    if missing:
        raise DataError(f"{len(missing)} LFW images named in pairs.txt are missing, e.g. {missing[0]}")
    index = {key: i for i, key in enumerate(keys)}
    a = np.array([index[pair.images[0]] for pair in pairs])
    b = np.array([index[pair.images[1]] for pair in pairs])
    labels = np.array([pair.same for pair in pairs], dtype=np.int64)
    fold_ids = np.array([pair.fold for pair in pairs])
    runs = {}
    for label, embedded in zip(faces.labels, embed_images(faces, root, keys, progress=progress), strict=True):
        scores = np.einsum("ij,ij->i", embedded.embeddings[a], embedded.embeddings[b])
        runs[label] = {
            "folds": folds,
            "images": len(keys),
            "detection_failures": {
                "count": len(embedded.detection_failures),
                "images": embedded.detection_failures,
                "fallback": faces.fallback,
            },
            "summary": metrics.verification_summary(scores, labels, fold_ids),
            "calibration": impostor_calibration(embedded),
            "scores": scores,
            "labels": labels,
            "pairs": pairs,
        }
    return runs
