"""Where a detector loses WIDER AP: recall by face size on WIDER and on held-out training scenes (a gap on WIDER
only is the domain; one on both, the network), and box agreement with YuNet across scales on held-out LFW photos.
Quoted in the README's detector section.

    python scripts/detector_diagnostics.py yunet-teacher yunet-student --limit 80 --out reports/detector-diagnostics
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import cv2
import numpy as np

from biometrics.detection import ARCHITECTURES
from biometrics.evaluation.landmarks import lfw_images
from biometrics.evaluation.wider import detect_all, locate_dataset, pixel_iou, read_ground_truth, sample_evenly
from biometrics.imaging import load_image
from biometrics.pipeline.facade import select_face
from biometrics.registry import ModelRegistry
from biometrics.training.detector_distill import training_labels
from biometrics.training.recipe import Recipe, section_as
from biometrics.training.scenes import Scene, SceneSpec, compose_scene

SIZE_BUCKETS = {"<32 px": (0, 32), "32-96 px": (32, 96), ">=96 px": (96, 1e9)}
LFW_SCALES = (0.5, 1.0, 1.5, 2.0, 3.0)


def load_detector(name: str, score_threshold: float):
    model = ModelRegistry().resolve(name, task="detection")
    return ARCHITECTURES[model.card.architecture](model, threads=1, score_threshold=score_threshold)


def best_iou(faces: np.ndarray, found: np.ndarray) -> np.ndarray:
    """Per face (x1, y1, x2, y2), its best IoU with any found box (0 if none)."""
    return pixel_iou(faces, found[:, :4]).max(1) if len(found) and len(faces) else np.zeros(len(faces))


def recall_summary(best: np.ndarray, widths: np.ndarray) -> dict:
    by_size = {
        label: round(float((best[(widths >= lo) & (widths < hi)] >= 0.5).mean()), 3)
        for label, (lo, hi) in SIZE_BUCKETS.items()
        if ((widths >= lo) & (widths < hi)).any()
    }
    return {
        "faces": len(best),
        "recall_iou_0.5": round(float((best >= 0.5).mean()), 3),
        "recall_iou_0.3": round(float((best >= 0.3).mean()), 3),
        "recall_iou_0.5_by_width": by_size,
    }


def wider_recall(predictions: dict[str, np.ndarray], truths, difficulty: str) -> dict:
    """Share of the difficulty's faces with a detection (score >= the detector's threshold) at IoU 0.5 / 0.3."""
    best, widths = [], []
    for truth in truths:
        keep = truth.keep[difficulty]
        gt = np.column_stack([truth.boxes[:, :2], truth.boxes[:, :2] + truth.boxes[:, 2:]])[keep]
        best += list(best_iou(gt, predictions[truth.path]))
        widths += list(truth.boxes[keep, 2])
    return recall_summary(np.array(best), np.array(widths))


def held_out_scenes(recipe_path: Path, count: int) -> list[Scene]:
    """``count`` scenes composed as the recipe trains on, from its (cached) pseudo-labels, with a seed no training
    run uses: the training domain, new compositions."""
    recipe = Recipe.load(recipe_path)
    labels, _ = training_labels(recipe, progress=False)
    rng = np.random.default_rng(987654)
    return [compose_scene(labels, rng, section_as(SceneSpec, recipe.augmentation)) for _ in range(count)]


def scene_recall(detector, scenes: list[Scene], min_label_score: float = 0.5) -> dict:
    """As ``wider_recall``, on composed scenes; the faces are the placed pseudo-labels scored >= ``min_label_score``."""
    best, widths = [], []
    for scene in scenes:
        faces = scene.boxes[scene.scores >= min_label_score].reshape(-1, 4)
        found = np.array([[*face.box, face.score] for face in detector.detect(scene.image)]).reshape(-1, 5)
        best += list(best_iou(faces, found))
        widths += list(faces[:, 2] - faces[:, 0])
    return recall_summary(np.array(best), np.array(widths))


def lfw_scale_agreement(detector, reference, paths: list[Path]) -> dict:
    """Per scale: median IoU and width ratio of the central face against the reference detector's, and how its
    landmarks differ: the shift the five points share (their mean offset, split into x and y) and what is left
    per point once that shift is taken out, both in units of the reference's inter-ocular distance."""

    rows = {}
    for scale in LFW_SCALES:
        ious, ratios, shifts, residuals, missed = [], [], [], [], 0
        for path in paths:
            image = cv2.resize(load_image(path), None, fx=scale, fy=scale)
            found, expected = detector.detect(image), reference.detect(image)
            if not expected:
                continue
            if not found:
                missed += 1
                continue
            ours, theirs = (select_face(faces, "center", image.shape) for faces in (found, expected))
            ious.append(pixel_iou(ours.box[None].astype(float), theirs.box[None].astype(float))[0, 0])
            ratios.append((ours.box[2] - ours.box[0]) / (theirs.box[2] - theirs.box[0]))
            offsets = (ours.landmarks - theirs.landmarks) / np.linalg.norm(theirs.landmarks[0] - theirs.landmarks[1])
            shifts.append(np.abs(offsets.mean(axis=0)))
            residuals.append(np.linalg.norm(offsets - offsets.mean(axis=0), axis=1).mean())
        shift_x, shift_y = np.median(shifts, axis=0)
        rows[f"x{scale}"] = {
            "missed": missed,
            "median_iou": round(float(np.median(ious)), 3),
            "median_width_ratio": round(float(np.median(ratios)), 3),
            "landmarks_median_shared_shift_x_y_iod": [round(float(shift_x), 3), round(float(shift_y), 3)],
            "landmarks_median_residual_iod": round(float(np.median(residuals)), 3),
        }
    return rows


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("detectors", nargs="+")
    parser.add_argument("--reference", default="yunet-teacher", help="Detector the LFW boxes are compared with.")
    parser.add_argument("--wider", type=Path, default=Path("../shared/data/wider"))
    parser.add_argument("--lfw", type=Path, default=Path("../shared/data/lfw"))
    parser.add_argument("--limit", type=int, default=80, help="WIDER images (evenly spaced).")
    parser.add_argument("--lfw-images", type=int, default=60, help="LFW images of folds 6-10 people.")
    parser.add_argument("--score", type=float, default=0.3, help="Score threshold for counting a detection.")
    parser.add_argument(
        "--scenes-recipe",
        type=Path,
        default=Path("pipelines/yunet-student-v6.yaml"),
        help="Detector recipe whose training scenes (new compositions) are compared with WIDER.",
    )
    parser.add_argument("--scenes", type=int, default=150, help="Held-out training scenes (0: skip).")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    root = locate_dataset(args.wider)
    truths = sample_evenly(read_ground_truth(root / "gt_subset.json"), args.limit)
    paths = lfw_images(args.lfw, [6, 7, 8, 9, 10], limit=args.lfw_images)
    reference = load_detector(args.reference, args.score)
    scenes = held_out_scenes(args.scenes_recipe, args.scenes) if args.scenes else []
    report = {"command": "python " + " ".join(sys.argv), "results": {}}
    for name in args.detectors:
        detector = load_detector(name, args.score)
        predictions = detect_all(detector, root, truths, progress=False)
        report["results"][name] = {
            "sha256": detector.model.source_sha256,
            "wider": {d: wider_recall(predictions, truths, d) for d in ("easy", "medium")},
            **({"training_scenes": scene_recall(detector, scenes)} if scenes else {}),
            f"lfw_vs_{args.reference}": lfw_scale_agreement(detector, reference, paths),
        }
        print(name, json.dumps(report["results"][name]))
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
