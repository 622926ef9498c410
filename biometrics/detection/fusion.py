"""Several detectors' faces in one image fused into one set: weighted box fusion (Solovyev et al. 2019).

Each detector's faces are clustered by IoU; a cluster's box and landmarks are the score-weighted means of its
members, and its soft score is the summed member scores divided by the number of detectors, so a face only
one detector of three saw gets at most 1/3. Used to make pseudo-labels for training and as the reference for
landmark accuracy.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from biometrics.detection.base import box_iou
from biometrics.face import Face


@dataclass(frozen=True)
class FusedFace:
    """A fused face: ``score`` in 0..1 is the ensemble's confidence, ``votes`` how many detectors found it."""

    box: np.ndarray
    landmarks: np.ndarray | None
    score: float
    votes: int


def fuse(per_detector: Sequence[list[Face]], iou: float = 0.55) -> list[FusedFace]:
    """Weighted box fusion of several detectors' faces in one image, most confident first.

    A detector contributes at most one face per cluster (its best); landmarks are averaged over the members
    that have them (a boxes-only detector still votes on the box and the score).
    """
    members = sorted(
        ((face, source) for source, faces in enumerate(per_detector) for face in faces), key=lambda m: -m[0].score
    )
    clusters: list[list[tuple[Face, int]]] = []
    fused_boxes: list[np.ndarray] = []
    for face, source in members:
        if fused_boxes:
            overlaps = box_iou(np.asarray(face.box, np.float64)[None], np.asarray(fused_boxes))[0]
            best = int(np.argmax(overlaps))
            if overlaps[best] >= iou and all(s != source for _, s in clusters[best]):
                clusters[best].append((face, source))
                fused_boxes[best] = _weighted_mean([f.box for f, _ in clusters[best]], clusters[best])
                continue
        clusters.append([(face, source)])
        fused_boxes.append(np.asarray(face.box, np.float64))
    fused = []
    for cluster, box in zip(clusters, fused_boxes, strict=True):
        with_landmarks = [(f, t) for f, t in cluster if f.landmarks is not None]
        landmarks = _weighted_mean([f.landmarks for f, _ in with_landmarks], with_landmarks) if with_landmarks else None
        score = sum(f.score for f, _ in cluster) / len(per_detector)
        fused.append(FusedFace(box.astype(np.float32), landmarks, float(score), len(cluster)))
    return sorted(fused, key=lambda f: -f.score)


def _weighted_mean(values: list[np.ndarray], cluster: list[tuple[Face, int]]) -> np.ndarray:
    weights = np.array([f.score for f, _ in cluster], np.float64)
    return np.tensordot(weights / weights.sum(), np.asarray(values, np.float64), axes=1)
