"""Landmark accuracy on held-out LFW faces: normalised mean error (NME) against a reference ensemble.

LFW has no hand-marked landmarks, so the reference is the fused landmarks of the reference detectors (weighted
box fusion, ``biometrics.detection.fusion``) on the face they all found nearest the image centre. The error
of each of a detector's five points is divided by the distance between the reference's two eye centres
(inter-pupil normalisation: 300-W and WFLW divide by the outer eye corners' distance, about 1.4x larger, so
their NMEs read smaller than ours for the same points). A detector that is part of the reference is partly
compared with itself: the report says which are. Images are those of the people in the chosen View 2 folds;
the report says so when a scored model trained on them (``lfw.training_overlap``).
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from tqdm import tqdm

from biometrics.detection import box_iou
from biometrics.detection.fusion import fuse
from biometrics.evaluation.lfw import locate_images, people_in_folds, read_pairs
from biometrics.evaluation.report import _md_table, run_section
from biometrics.files import write_atomically
from biometrics.imaging import load_image
from biometrics.pipeline import landmark_detector
from biometrics.registry import ResolvedModel

FAILURE_NME = 0.10  # a face whose NME exceeds this counts as a landmark failure
MATCH_IOU = 0.5
POINTS = ("eye (image left)", "eye (image right)", "nose", "mouth (image left)", "mouth (image right)")


@dataclass
class LandmarkResult:
    detector: str
    faces: int  # reference faces
    missed: int  # reference faces the detector did not find (IoU < 0.5)
    nme_mean: float | None  # None: no reference face matched
    nme_median: float | None
    failure_rate: float | None  # of the found faces, NME > FAILURE_NME
    nme_per_point: list[float]
    in_reference: bool


def lfw_images(data_dir: Path, folds: list[int], limit: int | None = None) -> list[Path]:
    """All LFW images of the people in ``folds``; ``limit`` takes an evenly spaced subset."""
    people = people_in_folds(read_pairs(data_dir / "pairs.txt"), folds)
    root = locate_images(data_dir)
    paths = sorted(path for person in people for path in (root / person).glob("*.jpg"))
    if limit and limit < len(paths):
        paths = [paths[i] for i in np.linspace(0, len(paths) - 1, limit).round().astype(int)]
    return paths


def _detector(model: ResolvedModel, threads: int | None):
    # A low threshold: the reference decides which face counts, each detector just has to find it.
    return landmark_detector(model, threads=threads, score_threshold=0.3)


def evaluate_landmarks(
    detectors: list[ResolvedModel],
    references: list[ResolvedModel],
    images: list[Path],
    *,
    threads: int | None = None,
    progress: bool = True,
) -> list[LandmarkResult]:
    # One detector per model: a model that is both scored and in the reference runs once per image.
    runners = {model.name: _detector(model, threads) for model in [*references, *detectors]}
    errors: dict[str, list[np.ndarray]] = {model.name: [] for model in detectors}
    missed = dict.fromkeys(errors, 0)
    faces = 0
    for path in tqdm(images, desc="landmarks", unit="img", disable=not progress):
        image = load_image(path)
        found_by = {name: runner.detect(image) for name, runner in runners.items()}
        fused = [f for f in fuse([found_by[m.name] for m in references]) if f.votes == len(references)]
        if not fused:
            continue
        centre = np.array(image.shape[1::-1], np.float64) / 2
        reference = min(fused, key=lambda f: np.linalg.norm((f.box[:2] + f.box[2:]) / 2 - centre))
        inter_pupil = float(np.linalg.norm(reference.landmarks[0] - reference.landmarks[1]))
        faces += 1
        for name in errors:
            found = [f for f in found_by[name] if f.landmarks is not None]
            overlaps = box_iou(reference.box[None], np.array([f.box for f in found]))[0] if found else np.zeros(0)
            if not len(overlaps) or overlaps.max() < MATCH_IOU:
                missed[name] += 1
                continue
            points = found[int(np.argmax(overlaps))].landmarks
            errors[name].append(np.linalg.norm(points - reference.landmarks, axis=1) / max(inter_pupil, 1.0))
    results = []
    reference_names = {model.name for model in references}
    for name, per_face in errors.items():
        table = np.array(per_face).reshape(-1, 5)
        nme = table.mean(axis=1)
        results.append(
            LandmarkResult(
                detector=name,
                faces=faces,
                missed=missed[name],
                nme_mean=float(nme.mean()) if len(nme) else None,  # None (JSON null): no face matched
                nme_median=float(np.median(nme)) if len(nme) else None,
                failure_rate=float((nme > FAILURE_NME).mean()) if len(nme) else None,
                nme_per_point=[float(v) for v in table.mean(axis=0)] if len(nme) else [],
                in_reference=name in reference_names,
            )
        )
    return results


def percent(value: float | None) -> str:
    """An NME or a rate in %, or n/a when no face matched."""
    return "n/a" if value is None else f"{value * 100:.2f}"


def write_landmark_report(out_dir: Path, results: list[LandmarkResult], meta: dict) -> dict[str, Path]:
    out_dir.mkdir(parents=True, exist_ok=True)
    title = f"Landmark NME on LFW faces (people of folds {meta['folds']})"
    payload = {"title": title, "meta": meta, "results": [asdict(r) for r in results]}
    json_path = out_dir / "report.json"
    write_atomically(json_path, (json.dumps(payload, indent=2) + "\n").encode())
    rows = [
        [
            f"`{r.detector}`" + (" (in reference)" if r.in_reference else ""),
            percent(r.nme_mean),
            percent(r.nme_median),
            percent(r.failure_rate),
            f"{r.missed} / {r.faces}",
            " / ".join(f"{v * 100:.1f}" for v in r.nme_per_point),
        ]
        for r in results
    ]
    points = ", ".join(POINTS)
    lines = [
        f"# {title}",
        "",
        *run_section(meta),
        "",
        "## Results",
        "",
        f"Reference: fused landmarks of {', '.join(f'`{n}`' for n in meta['reference'])} on the face all of them "
        f"found nearest the image centre; {meta['images']} images of the people in LFW View 2 folds "
        f"{meta['folds']}. NME: mean point error / distance between the reference's eye centres (inter-pupil), "
        f"in %; failure: NME > {FAILURE_NME * 100:.0f}%; missed: reference faces the detector did not find "
        f"(IoU < {MATCH_IOU}).",
        "",
        *(f"Not held out: {caveat}." for caveat in meta.get("caveats", [])),
        "",
        *_md_table(["detector", "NME mean %", "NME median %", "failures %", "missed", f"per point % ({points})"], rows),
        "",
    ]
    md_path = out_dir / "report.md"
    write_atomically(md_path, "\n".join(lines).encode())
    return {"json": json_path, "md": md_path}
