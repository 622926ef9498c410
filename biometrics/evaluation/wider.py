"""WIDER FACE detection benchmark, scored the way the official evaluation tool scores it.

The scoring reproduces the semantics of the official MATLAB tool as ported to Python in
wondervictor/WiderFace-Evaluation (``evaluation.py``: ``norm_score``, ``image_eval``, ``img_pr_info``,
``dataset_pr_info``, ``voc_ap``; ``bbox_overlaps`` from Fast R-CNN), written here independently with
vectorised NumPy. The quirks that move the numbers are kept on purpose, so our APs compare with published ones:

- scores are min-max normalised over the whole set of predictions (the minimum taken with 1, the maximum
  with 0) and the PR curve is read at 1000 thresholds ``1 - t/1000``;
- a detection is matched to the ground-truth box it overlaps most (IoU >= 0.5, pixel-inclusive ``+1``
  areas); if that box is not in the difficulty's keep list the detection is ignored (neither TP nor FP);
  a second detection of an already found face is a false positive;
- every kept face counts towards recall, including those of images with no detection; images without
  ground truth or without detections contribute nothing else;
- AP is the area under the precision envelope (VOC style).
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from pathlib import Path

import cv2
import numpy as np
import onnx
from tqdm import tqdm

from biometrics.detection import ARCHITECTURES, Detector
from biometrics.errors import DataError, ImageError
from biometrics.evaluation import plots
from biometrics.evaluation.complexity import count_macs, count_parameters
from biometrics.evaluation.datasets import unpack_once
from biometrics.evaluation.efficiency import _fmt_millions
from biometrics.evaluation.report import _md_table, run_section
from biometrics.files import write_atomically
from biometrics.imaging import load_image
from biometrics.registry import ResolvedModel

WIDER_ARCHIVE = "wider_val488.tgz"
WIDER_ARCHIVE_SHA256 = "4f9a7b13f99d98b0998be251ffebf7b85e7563867fc8017dc7388e372ee25429"
WIDER_FOLDER = "wider_val488"
DIFFICULTIES = ("easy", "medium", "hard")
IOU_THRESHOLD = 0.5
THRESHOLD_COUNT = 1000
# The protocol scores the whole PR curve, so keep nearly every candidate (the official submissions do too).
EVAL_SCORE_THRESHOLD = 0.02
EVAL_NMS_IOU = 0.4
ANY_SIZE = "the image's size (after max_side)"
"""A network that runs at any input size gets the image as it is, once downscaled to ``max_side`` if larger."""

# Larger than any WIDER image, so every image is detected at its native size.
NATIVE_MAX_SIDE = 4096
LATENCY_SIZES = ((640, 480), (320, 240))


@dataclass(frozen=True)
class GroundTruth:
    """One image's faces: ``boxes`` Nx4 (x, y, w, h) and, per difficulty, a mask of the faces that count."""

    path: str
    boxes: np.ndarray
    keep: dict[str, np.ndarray]


@dataclass(frozen=True)
class PrCurve:
    """Precision and recall at each normalised-score threshold (highest first), and the AP they give."""

    thresholds: np.ndarray
    precision: np.ndarray
    recall: np.ndarray
    faces: int
    ap: float | None  # None when the difficulty has no face in the evaluated images


@dataclass(frozen=True)
class DetectorResult:
    """One detector's WIDER scores, with the settings and latencies measured in the same run and its size."""

    detector: str
    curves: dict[str, PrCurve]
    images: int
    detections: int
    latency_ms: dict[str, float]
    settings: dict[str, float | str]
    size: dict[str, int]  # parameters, file_size_bytes (the published file)

    def to_dict(self) -> dict:
        return {
            "ap": {name: curve.ap for name, curve in self.curves.items()},
            "faces": {name: curve.faces for name, curve in self.curves.items()},
            "images": self.images,
            "detections": self.detections,
            "latency_ms": self.latency_ms,
            "settings": self.settings,
            "size": self.size,
        }


def _keep_mask(entry: dict, difficulty: str, count: int, where: str) -> np.ndarray:
    indices = np.asarray(entry[f"{difficulty}_keep_1based"], dtype=np.int64).reshape(-1)
    if indices.size and (indices.min() < 1 or indices.max() > count):
        raise DataError(f"{where}: {difficulty}_keep_1based has indices outside 1..{count}")
    mask = np.zeros(count, dtype=bool)
    mask[indices - 1] = True
    return mask


def read_ground_truth(path: Path) -> list[GroundTruth]:
    """Parse ``gt_subset.json``; keep lists become masks, invalid boxes never count (sorted by path)."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise DataError(f"{path}: not a WIDER ground-truth file ({exc})") from None
    if not isinstance(data, dict) or not data:
        raise DataError(f"{path}: expected a non-empty object mapping image paths to their faces")
    truths = []
    for image, entry in sorted(data.items()):
        where = f"{path}: {image}"
        try:
            boxes = np.asarray(entry["boxes_xywh"], dtype=np.float64).reshape(-1, 4)
            invalid = np.asarray(entry["invalid"], dtype=bool).reshape(-1)
            keep = {name: _keep_mask(entry, name, len(boxes), where) for name in DIFFICULTIES}
        except (KeyError, TypeError, ValueError) as exc:
            raise DataError(f"{where}: malformed entry ({type(exc).__name__}: {exc})") from None
        if len(invalid) != len(boxes):
            raise DataError(f"{where}: {len(boxes)} boxes but {len(invalid)} invalid flags")
        truths.append(GroundTruth(image, boxes, {name: mask & ~invalid for name, mask in keep.items()}))
    return truths


def locate_dataset(data_dir: Path) -> Path:
    """The folder holding ``gt_subset.json`` and ``images/``: an unpacked copy, or the archive unpacked once."""
    for candidate in (data_dir / WIDER_FOLDER, data_dir):
        if (candidate / "gt_subset.json").is_file():
            return candidate
    if not data_dir.is_dir():
        raise DataError(
            f"{data_dir}: WIDER data folder not found (expected {WIDER_ARCHIVE} in it; give it with --data, or set "
            "BIOMETRICS_SHARED)"
        )
    return unpack_once(data_dir / WIDER_ARCHIVE, WIDER_ARCHIVE_SHA256) / WIDER_FOLDER


def sample_evenly(truths: list[GroundTruth], limit: int | None) -> list[GroundTruth]:
    """``limit`` images spread over the sorted list (so over the events), for quick checks; all if None."""
    if limit is None or limit >= len(truths):
        return truths
    return [truths[i] for i in np.linspace(0, len(truths) - 1, limit).round().astype(int)]


def detect_all(
    detector: Detector, root: Path, truths: list[GroundTruth], progress: bool = True
) -> dict[str, np.ndarray]:
    """Each image's detections as Nx5 (x1, y1, x2, y2, score), highest score first."""
    predictions = {}
    for truth in tqdm(truths, desc=f"WIDER {detector.name}", unit="img", disable=not progress):
        try:
            image = load_image(root / "images" / truth.path)
        except ImageError as exc:
            raise DataError(f"WIDER image unreadable: {exc}") from None
        faces = detector.detect(image)
        predictions[truth.path] = np.array([[*face.box, face.score] for face in faces], dtype=np.float64).reshape(-1, 5)
    return predictions


def normalise_scores(predictions: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
    """Scores min-max scaled over the whole set, as the official tool does (its min starts at 1, max at 0)."""
    scores = [pred[:, 4] for pred in predictions.values() if len(pred)]
    if not scores:
        return predictions
    low = min(1.0, min(float(s.min()) for s in scores))
    high = max(0.0, max(float(s.max()) for s in scores))
    span = high - low
    normalised = {}
    for path, pred in predictions.items():
        pred = pred.copy()
        # Every score equal: nothing ranks, so every prediction counts at every threshold.
        pred[:, 4] = (pred[:, 4] - low) / span if span > 0 else 1.0
        normalised[path] = pred
    return normalised


def pixel_iou(boxes: np.ndarray, others: np.ndarray) -> np.ndarray:
    """IoU matrix of (x1, y1, x2, y2) boxes with inclusive pixel extents (``+1``), as the official tool."""
    width = np.minimum(boxes[:, None, 2], others[None, :, 2]) - np.maximum(boxes[:, None, 0], others[None, :, 0]) + 1
    height = np.minimum(boxes[:, None, 3], others[None, :, 3]) - np.maximum(boxes[:, None, 1], others[None, :, 1]) + 1
    inter = width.clip(0) * height.clip(0)
    area = (boxes[:, 2] - boxes[:, 0] + 1) * (boxes[:, 3] - boxes[:, 1] + 1)
    other_area = (others[:, 2] - others[:, 0] + 1) * (others[:, 3] - others[:, 1] + 1)
    return inter / (area[:, None] + other_area[None, :] - inter)


def match_image(
    pred: np.ndarray, gt_xywh: np.ndarray, keep: np.ndarray, iou_threshold: float = IOU_THRESHOLD
) -> tuple[np.ndarray, np.ndarray]:
    """For predictions sorted by score (highest first): faces found so far, and which ones are proposals.

    Returns ``found`` (after each prediction, how many kept faces have been matched) and ``proposal``
    (False for a prediction whose best-overlapping face is ignored: it is neither TP nor FP).
    """
    gt = np.column_stack([gt_xywh[:, :2], gt_xywh[:, :2] + gt_xywh[:, 2:]])
    overlaps = pixel_iou(pred[:, :4], gt)
    best = overlaps.argmax(axis=1)
    matched = overlaps[np.arange(len(pred)), best] >= iou_threshold
    hits = np.flatnonzero(matched & keep[best])
    _, first = np.unique(best[hits], return_index=True)
    new_face = np.zeros(len(pred), dtype=np.int64)
    new_face[hits[first]] = 1
    return np.cumsum(new_face), ~(matched & ~keep[best])


def score_thresholds(count: int = THRESHOLD_COUNT) -> np.ndarray:
    """``1 - t/count`` for t = 1..count: the official tool's thresholds, highest first."""
    return 1 - np.arange(1, count + 1) / count


def image_pr_counts(scores: np.ndarray, found: np.ndarray, proposal: np.ndarray, thresholds: np.ndarray) -> np.ndarray:
    """Per threshold: (proposals, faces found) among the predictions scoring at least the threshold."""
    above = np.searchsorted(-scores, -thresholds, side="right")  # scores are sorted, highest first
    proposals = np.cumsum(proposal)
    last = np.maximum(above - 1, 0)
    return np.where(above[:, None] > 0, np.column_stack([proposals[last], found[last]]), 0)


def voc_ap(recall: np.ndarray, precision: np.ndarray) -> float:
    """Area under the precision envelope, summed where recall changes (VOC 2010+)."""
    mrec = np.concatenate(([0.0], recall, [1.0]))
    mpre = np.concatenate(([0.0], precision, [0.0]))
    envelope = np.maximum.accumulate(mpre[::-1])[::-1]
    steps = np.flatnonzero(mrec[1:] != mrec[:-1])
    return float(np.sum((mrec[steps + 1] - mrec[steps]) * envelope[steps + 1]))


def pr_curve(
    predictions: dict[str, np.ndarray],
    truths: list[GroundTruth],
    difficulty: str,
    iou_threshold: float = IOU_THRESHOLD,
    threshold_count: int = THRESHOLD_COUNT,
) -> PrCurve:
    """The dataset's PR curve for one difficulty, from predictions whose scores are already normalised."""
    thresholds = score_thresholds(threshold_count)
    counts = np.zeros((threshold_count, 2), dtype=np.int64)
    faces = 0
    for truth in truths:
        keep = truth.keep[difficulty]
        faces += int(keep.sum())
        pred = predictions[truth.path]
        if len(pred) == 0 or len(truth.boxes) == 0:
            continue
        pred = pred[np.argsort(-pred[:, 4], kind="stable")]
        found, proposal = match_image(pred, truth.boxes, keep, iou_threshold)
        counts += image_pr_counts(pred[:, 4], found, proposal, thresholds)
    # With no proposal above a threshold recall is 0 there too, so the value given to precision never reaches AP.
    precision = np.divide(counts[:, 1], counts[:, 0], out=np.zeros(threshold_count), where=counts[:, 0] > 0)
    recall = counts[:, 1] / faces if faces else np.zeros(threshold_count)
    return PrCurve(thresholds, precision, recall, faces, voc_ap(recall, precision) if faces else None)


def evaluate_predictions(
    predictions: dict[str, np.ndarray], truths: list[GroundTruth], iou_threshold: float = IOU_THRESHOLD
) -> dict[str, PrCurve]:
    """Official WIDER scoring of raw predictions (Nx5 x1, y1, x2, y2, score per image): one curve per difficulty."""
    normalised = normalise_scores(predictions)
    return {name: pr_curve(normalised, truths, name, iou_threshold) for name in DIFFICULTIES}


def median_latency_ms(
    detector: Detector, image: np.ndarray, size: tuple[int, int], warmup: int = 5, iterations: int = 30
) -> float:
    """Median wall time of ``detect`` (pre- and post-processing included) on ``image`` resized to ``size``."""
    frame = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
    for _ in range(warmup):
        detector.detect(frame)
    times = np.empty(iterations)
    for i in range(iterations):
        start = time.perf_counter()
        detector.detect(frame)
        times[i] = time.perf_counter() - start
    return float(np.median(times) * 1e3)


def evaluate_wider(
    model: ResolvedModel,
    data_dir: Path,
    *,
    score_threshold: float = EVAL_SCORE_THRESHOLD,
    nms_iou: float = EVAL_NMS_IOU,
    threads: int | None = None,
    limit: int | None = None,
    progress: bool = True,
    max_side: int = NATIVE_MAX_SIDE,
) -> DetectorResult:
    """Detect on every image at native size (or downscaled to ``max_side``), score per difficulty, and time the
    detector at 1 thread.

    Latency uses the detector's own default thresholds (what the pipeline runs with), not the evaluation's
    low ones, on the first evaluated image resized to each of ``LATENCY_SIZES``.
    """
    root = locate_dataset(data_dir)
    truths = sample_evenly(read_ground_truth(root / "gt_subset.json"), limit)
    architecture = ARCHITECTURES.of(model.card)
    detector = architecture(model, score_threshold=score_threshold, nms_iou=nms_iou, max_side=max_side, threads=threads)
    predictions = detect_all(detector, root, truths, progress=progress)
    timed = architecture(model, threads=1)
    image = load_image(root / "images" / truths[0].path)
    graph = onnx.load_from_string(model.onnx_bytes)
    bench_shape = model.card.bench_input_shape  # as `bench` counts it: the card's, else a 640x480 frame
    return DetectorResult(
        detector=model.name,
        curves=evaluate_predictions(predictions, truths),
        images=len(truths),
        detections=sum(len(pred) for pred in predictions.values()),
        latency_ms={f"{w}x{h}": round(median_latency_ms(timed, image, (w, h)), 2) for w, h in LATENCY_SIZES},
        settings={
            "score_threshold": score_threshold,
            "nms_iou": nms_iou,
            "max_side": max_side,
            "input": ANY_SIZE if detector.input_size is None else "resized to {}x{}".format(*detector.input_size),
        },
        size={
            "parameters": count_parameters(graph),
            # at the size the card benches: 640x480, or a fixed-input model's own (UltraFace: 320x240)
            "macs": count_macs(graph, {graph.graph.input[0].name: bench_shape}),
            "macs_input": "{}x{}".format(*bench_shape[:1:-1]),
            "file_size_bytes": model.source_size,
        },
    )


def format_ap(ap: float | None) -> str:
    """AP in percent with one decimal, as WIDER results are published."""
    return "n/a" if ap is None else f"{100 * ap:.1f}"


def write_wider_report(out_dir: Path, results: list[DetectorResult], meta: dict) -> dict[str, Path]:
    """Write report.json, report.md and one PR-curve PNG per difficulty (all detectors on each)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    files = {
        name: plots.plot_pr(
            {f"{r.detector} (AP {format_ap(r.curves[name].ap)})": r.curves[name] for r in results},
            out_dir / f"pr_{name}.png",
            title=f"WIDER FACE subset, {name}",
        )
        for name in DIFFICULTIES
    }
    first = results[0]
    dataset = {"images": first.images, "faces": {name: curve.faces for name, curve in first.curves.items()}}
    protocol = {
        "iou_threshold": IOU_THRESHOLD,
        "thresholds": THRESHOLD_COUNT,
        "scores": "min-max normalised over all predictions",
        "ignored": "faces outside the difficulty's keep list, and invalid faces",
        "ap": "area under the interpolated precision envelope (VOC)",
    }
    report = {
        "title": "WIDER FACE validation subset",
        "meta": meta,
        "dataset": dataset,
        "protocol": protocol,
        "results": {result.detector: result.to_dict() for result in results},
    }
    files["json"] = out_dir / "report.json"
    write_atomically(files["json"], json.dumps(report, indent=2).encode())
    files["md"] = out_dir / "report.md"
    write_atomically(files["md"], _markdown(results, meta, dataset, files).encode())
    return files


def _scale_text(max_side: int) -> str:
    return "at native size" if max_side >= NATIVE_MAX_SIDE else f"downscaled to a longer side of {max_side} px"


def _markdown(results: list[DetectorResult], meta: dict, dataset: dict, files: dict[str, Path]) -> str:
    faces = dataset["faces"]
    settings = results[0].settings
    lines = [
        "# WIDER FACE validation subset",
        "",
        *run_section(meta),
        "",
        "## Results",
        "",
        f"{dataset['images']} images {_scale_text(settings['max_side'])}; faces that count: easy {faces['easy']}, "
        f"medium {faces['medium']}, hard {faces['hard']}. Detection at score >= {settings['score_threshold']}, "
        f"NMS IoU {settings['nms_iou']}.",
        "",
    ]
    sizes = [f"{w}x{h}" for w, h in LATENCY_SIZES]
    lines += _md_table(
        ["detector", *DIFFICULTIES, *(f"ms @{size}" for size in sizes), "params (M)", "MACs (M)", "file (MB)"],
        [
            [
                r.detector,
                *(format_ap(r.curves[n].ap) for n in DIFFICULTIES),
                *(f"{r.latency_ms[s]:.2f}" for s in sizes),
                _fmt_millions(r.size["parameters"]),
                f"{r.size['macs'] / 1e6:.0f} @{r.size['macs_input']}",
                _fmt_millions(r.size["file_size_bytes"]),
            ]
            for r in results
        ],
    )
    lines += [
        "",
        "AP (%) as the official WIDER FACE tool computes it: IoU >= 0.5, scores min-max normalised over the set, "
        "PR curve at 1000 thresholds, faces outside the difficulty's keep list ignored (a detection on one is "
        "neither TP nor FP). Latency: median of 30 `detect` calls after 5 warm-up ones, 1 thread, pre- and "
        "post-processing included, the detector's default thresholds. Params: stored weights of the ONNX graph; "
        "file: the published model file (MB = 10^6 bytes).",
        *(
            f"\n`{r.detector}` has a fixed input: every image (and latency frame) is {r.settings['input']}, "
            "aspect ratio not kept."
            for r in results
            if r.settings["input"] != ANY_SIZE
        ),
        "",
        "## Models",
        "",
    ]
    lines += [f"- `{m['name']}` sha256 `{m['sha256']}`" for m in meta["models"]]
    lines += ["", "## Plots", ""] + [f"![{key}]({path.name})" for key, path in files.items() if path.suffix == ".png"]
    return "\n".join(lines) + "\n"
