"""Training faces: detected and aligned by our own pipeline, cached once as 112x112 crops.

The sources are the people we may train on: LFW minus the people of the report folds, aligned CelebA, and
UTKFace (no identities). Crops and their metadata are cached under ``<cache>/training/<key>/`` so every
recipe that asks for the same faces reuses them.
"""

from __future__ import annotations

import hashlib
import itertools
import json
import zipfile
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
from tqdm import tqdm

from biometrics import detection
from biometrics.alignment import align_face
from biometrics.errors import DataError, ImageError
from biometrics.evaluation.datasets import unpack_once
from biometrics.evaluation.lfw import locate_images, people_in_folds, read_pairs
from biometrics.files import replacing, tighten, write_atomically
from biometrics.imaging import load_image
from biometrics.pipeline import select_face
from biometrics.registry import ModelRegistry, cache_dir, sha256_file, shared_path

CELEBA_ARCHIVE = ("celeba/celeba_align10k.tgz", "96023cf2ee53420507a782fc455658d8fff850eca83bd851c48f33344b6929d2")
UTKFACE_ARCHIVE = ("utkface/utkface_part1.tgz", "a7d178a36f12f69eaa2a4d0e7e20b9df50d0bd1afe17a2c090baa14a7c5ae851")


@dataclass(frozen=True)
class FaceSource:
    """One image to take a face from; ``identity`` is None where the dataset has no labels."""

    path: Path
    dataset: str
    identity: str | None


def lfw_sources(data_root: Path, exclude_folds: list[int]) -> list[FaceSource]:
    """Every LFW image whose person appears in none of ``exclude_folds`` (the report folds)."""
    lfw_dir = data_root / "lfw"
    excluded = people_in_folds(read_pairs(lfw_dir / "pairs.txt"), exclude_folds)
    root = locate_images(lfw_dir)
    return [
        FaceSource(path, "lfw", f"lfw/{path.parent.name}")
        for path in sorted(root.glob("*/*.jpg"))
        if path.parent.name not in excluded
    ]


def celeba_sources(data_root: Path) -> list[FaceSource]:
    root = unpack_once(data_root / CELEBA_ARCHIVE[0], CELEBA_ARCHIVE[1]) / "celeba_align10k"
    rows = [line.split() for line in (root / "identity.txt").read_text().splitlines() if line.strip()]
    return [
        FaceSource(
            root / "images" / rel if not rel.startswith("images/") else root / rel, "celeba", f"celeba/{identity}"
        )
        for rel, identity in rows
    ]


def utkface_sources(data_root: Path) -> list[FaceSource]:
    root = unpack_once(data_root / UTKFACE_ARCHIVE[0], UTKFACE_ARCHIVE[1]) / "utkface_part1" / "images"
    return [FaceSource(path, "utkface", None) for path in sorted(root.glob("*.jpg"))]


DEFAULT_DATA_ROOT = "../shared/data"


def resolve_data_root(root: str | Path = DEFAULT_DATA_ROOT) -> Path:
    """The folder a recipe's ``data.root`` names. A relative root is taken from the current directory if it is
    there; one that is not, and that runs through a ``shared`` folder (the default ``../shared/data``), is
    looked up where the registry finds the shared folder (``registry.shared_dirs``: ``BIOMETRICS_SHARED``, else
    ``../shared`` beside the checkout or the current directory), e.g. ``$BIOMETRICS_SHARED/data``."""
    path = Path(root).expanduser()
    if path.is_absolute() or path.exists() or "shared" not in path.parts:
        return path
    parts = path.parts
    inside = parts[len(parts) - parts[::-1].index("shared") :]  # what follows the last "shared"
    return shared_path(*inside) or path


def _dataset_missing(where: Path) -> DataError:
    return DataError(f"{where}: dataset folder not found; set BIOMETRICS_SHARED or data.root")


def gather_sources(spec: dict) -> list[FaceSource]:
    """The images a recipe's ``data`` block names, e.g. {lfw: {exclude_folds: [6..10]}, celeba: {}, utkface: {}},
    under its ``root`` (default: ../shared/data, found as ``resolve_data_root`` says)."""
    data_root = resolve_data_root(spec.get("root", DEFAULT_DATA_ROOT))
    if not data_root.is_dir():
        raise _dataset_missing(data_root)
    needed = {"lfw": Path("lfw") / "pairs.txt", "celeba": Path(CELEBA_ARCHIVE[0]), "utkface": Path(UTKFACE_ARCHIVE[0])}
    for name, relative in needed.items():
        if name in spec and not (data_root / relative).is_file():
            raise _dataset_missing(data_root / relative.parts[0])
    sources: list[FaceSource] = []
    if "lfw" in spec:
        sources += lfw_sources(data_root, spec["lfw"].get("exclude_folds", []))
    if "celeba" in spec:
        sources += celeba_sources(data_root)
    if "utkface" in spec:
        sources += utkface_sources(data_root)
    limit = spec.get("limit")
    if limit:
        rng = np.random.default_rng(0)
        sources = [sources[i] for i in sorted(rng.choice(len(sources), size=min(limit, len(sources)), replace=False))]
    if not sources:
        raise DataError("the recipe's data block selects no images")
    return sources


@dataclass
class FaceCache:
    """Aligned crops (N x 112 x 112 x 3, BGR uint8) and, per crop, its dataset and identity. ``packed_quality``
    is the WebP quality of the packed face set they were decoded from (``pack_faces``), None for the originals."""

    folder: Path
    crops: np.ndarray
    meta: list[dict]
    packed_quality: int | None = None

    @property
    def identities(self) -> list[str | None]:
        return [row["identity"] for row in self.meta]

    @classmethod
    def open(cls, folder: Path, packed_quality: int | None = None) -> FaceCache:
        """A complete cache folder (``store`` wrote its meta.json last), its crops memory-mapped."""
        meta = json.loads((folder / "meta.json").read_text())
        tighten(folder, 0o700)  # caches written before they were owner-only
        for path in folder.iterdir():
            if path.is_file():
                tighten(path, 0o600)
        return cls(folder, np.load(folder / "crops.npy", mmap_mode="r"), meta, packed_quality)

    @classmethod
    def store(cls, folder: Path, crops: np.ndarray, meta: list[dict], packed_quality: int | None = None) -> FaceCache:
        """Write a cache folder so that an interrupted write is never taken for a complete one. Faces are
        biometric data: the folder is owner-only (0700), its files too (0600)."""
        tighten(folder, 0o700)  # one left by an interrupted earlier write; ``replacing`` creates a missing one 0700
        with replacing(folder / "crops.npy", private=True) as partial:
            np.save(partial, crops)
        write_atomically(folder / "meta.json", json.dumps(meta).encode(), private=True)  # last: marks it complete
        return cls.open(folder, packed_quality)


def _cache_key(sources: list[FaceSource], detector: str) -> str:
    digest = hashlib.sha256(detector.encode())
    for source in sources:
        digest.update(f"{source.dataset}:{source.path.name}:{source.identity}\n".encode())
    return digest.hexdigest()[:16]


def build_face_cache(
    sources: list[FaceSource],
    detector_name: str = "yunet-teacher",
    size: int = 112,
    cache: Path | None = None,
    progress: bool = True,
) -> FaceCache:
    """Detect (the face nearest the centre), align and store each source's face; skip images with none.

    Images are padded by a quarter of their size before detection: aligned CelebA crops are so tight that a
    detector trained on scenes misses many of them otherwise.
    """
    folder = (cache or cache_dir()) / "training" / f"faces-{_cache_key(sources, detector_name)}"
    if (folder / "meta.json").is_file():
        return FaceCache.open(folder)
    model = ModelRegistry().resolve(detector_name, task="detection")
    detector = detection.ARCHITECTURES.of(model.card)(model, score_threshold=0.5)
    crops, meta, skipped = [], [], 0
    for source in tqdm(sources, desc="aligning training faces", unit="img", disable=not progress):
        try:
            image = load_image(source.path)
        except ImageError:
            skipped += 1
            continue
        pad = max(image.shape[:2]) // 4
        padded = cv2.copyMakeBorder(image, pad, pad, pad, pad, cv2.BORDER_CONSTANT, value=0)
        faces = detector.detect(padded)
        if not faces:
            skipped += 1
            continue
        face = select_face(faces, "center", padded.shape)
        crops.append(align_face(padded, face.landmarks, size))
        meta.append({"dataset": source.dataset, "identity": source.identity, "file": source.path.name})
    note = f"{skipped} of {len(sources)} images had no detectable face\n"
    write_atomically(folder / "skipped.txt", note.encode(), private=True)
    return FaceCache.store(folder, np.stack(crops), meta)


PACK_FORMAT = "biometrics-faces/1"


def pack_faces(faces: FaceCache, path: Path, signature: dict, quality: int = 90, progress: bool = True) -> Path:
    """Write the crops, WebP-encoded in their order, with their metadata to one ``.npz`` file (owner-only: these
    are face images), so a run can train where the datasets are not, e.g. on a rented GPU. The 26,577 crops of
    the patient recipes take 70 MB at quality 90 instead of 1 GB. ``signature`` names what the faces were made
    from (``load_packed_faces`` checks it against the recipe that trains on them)."""
    if not 1 <= quality <= 100:
        raise DataError(f"WebP quality must be 1-100, not {quality}")
    encoded = []
    for crop in tqdm(faces.crops, desc="packing faces", unit="face", disable=not progress):
        ok, data = cv2.imencode(".webp", np.asarray(crop), [cv2.IMWRITE_WEBP_QUALITY, quality])
        if not ok:
            raise DataError(f"OpenCV could not WebP-encode a crop of {faces.folder}")
        encoded.append(data.ravel())
    offsets = np.cumsum([0] + [len(data) for data in encoded])
    with replacing(path, private=True) as partial:
        np.savez(
            partial,
            format=np.array(PACK_FORMAT),
            signature=np.array(json.dumps(signature, sort_keys=True)),
            source=np.array(faces.folder.name),
            quality=np.array(quality),
            meta=np.array(json.dumps(faces.meta)),
            offsets=offsets,
            webp=np.concatenate(encoded) if encoded else np.zeros(0, np.uint8),
        )
    return path


def _check_layout(path: Path, offsets: np.ndarray, meta, webp_size: int) -> None:
    """The pack's parts agree: one metadata row per face and ``offsets`` cutting the WebP block into them."""
    if not isinstance(meta, list) or not all(isinstance(row, dict) and "identity" in row for row in meta):
        raise DataError(f"{path}: not a readable packed face set (its meta is not a list of faces)")
    if offsets.ndim != 1 or not np.issubdtype(offsets.dtype, np.integer):
        raise DataError(f"{path}: not a readable packed face set (its offsets are not a list of positions)")
    if not meta:
        raise DataError(f"{path}: the packed face set holds no faces")
    if len(offsets) != len(meta) + 1:
        raise DataError(
            f"{path}: damaged packed face set: {len(offsets) - 1} faces in its offsets, {len(meta)} in its meta"
        )
    if offsets[0] != 0 or offsets[-1] != webp_size or np.any(np.diff(offsets) <= 0):
        raise DataError(f"{path}: damaged packed face set: its offsets do not cut its {webp_size}-byte data into faces")


def load_packed_faces(path: Path, signature: dict, cache: Path | None = None) -> FaceCache:
    """The face set ``pack_faces`` wrote, decoded once into the cache (beside, never over, a cache of the
    originals), in a folder named by the pack's SHA-256 so that a changed pack is decoded again. Refuses a file
    made for other data than ``signature`` names (the split and the card would lie), and one whose parts do not
    agree (faces would train under other people's identities)."""
    path = Path(path)
    if not path.is_file():
        raise DataError(f"{path}: packed face set not found")
    with open(path, "rb") as file:
        magic = file.read(4)
    if not magic:
        raise DataError(f"{path}: not a readable packed face set (the file is empty)")
    if magic not in (b"PK\x03\x04", b"PK\x05\x06"):
        raise DataError(f"{path}: not a readable packed face set (not an .npz archive)")
    try:
        with np.load(path, allow_pickle=False) as pack:
            if str(pack["format"]) != PACK_FORMAT:
                raise DataError(f"{path}: not a packed face set ({PACK_FORMAT})")
            packed_signature = json.loads(str(pack["signature"]))
            if packed_signature != signature:
                raise DataError(
                    f"{path} holds faces made for {json.dumps(packed_signature, sort_keys=True)}, "
                    f"the recipe asks for {json.dumps(signature, sort_keys=True)}"
                )
            quality = int(pack["quality"])
            offsets, meta, webp = pack["offsets"], json.loads(str(pack["meta"])), pack["webp"]  # each read once
            _check_layout(path, offsets, meta, int(webp.size))
            folder = (cache or cache_dir()) / "training" / f"{pack['source']}-webp{quality}-{sha256_file(path)[:16]}"
            decoded_before = (folder / "meta.json").is_file()
    except (OSError, ValueError, KeyError, EOFError, zipfile.BadZipFile) as exc:
        raise DataError(f"{path}: not a readable packed face set ({type(exc).__name__}: {exc})") from None
    if decoded_before:
        return FaceCache.open(folder, quality)
    decoded = [cv2.imdecode(webp[start:end], cv2.IMREAD_COLOR) for start, end in itertools.pairwise(offsets)]
    if any(crop is None for crop in decoded):
        raise DataError(f"{path}: {sum(crop is None for crop in decoded)} faces in it do not decode")
    return FaceCache.store(folder, np.stack(decoded), meta, quality)


def teacher_targets(
    faces: FaceCache, teacher: str, batch_size: int = 64, progress: bool = True, gpu_teacher=None
) -> np.ndarray:
    """Teacher embeddings of every crop and of its mirror image (N x 2 x D, unit length), computed once and cached.

    The teacher runs in ONNX Runtime exactly as it does at verification time, so the student learns the
    geometry the product actually uses. ``gpu_teacher`` (a ``TorchTeacher`` on the training GPU) computes the
    same embeddings (to a cosine of 1e-4) in seconds instead of the CPU's minutes; they are cached apart.
    """
    from biometrics.embedding import ARCHITECTURES, unit_length

    model = ModelRegistry().resolve(teacher, task="embedding")
    engine = "-torch" if gpu_teacher is not None else ""
    path = faces.folder / f"targets-{model.name}-{model.source_sha256[:12]}{engine}.npy"
    if path.is_file():
        return np.load(path)
    if gpu_teacher is not None:
        embed = lambda crops: unit_length(gpu_teacher.embed(np.ascontiguousarray(crops), batch_size))  # noqa: E731
    else:
        embed = ARCHITECTURES.of(model.card)(model, batch_size=batch_size).embed
    chunks = []
    for start in tqdm(range(0, len(faces.crops), batch_size), desc=f"teacher {model.name}", disable=not progress):
        batch = np.asarray(faces.crops[start : start + batch_size])
        chunks.append(np.stack([embed(batch), embed(batch[:, :, ::-1])], axis=1))
    targets = np.concatenate(chunks).astype(np.float32)
    with replacing(path, private=True) as partial:
        np.save(partial, targets)
    return targets
