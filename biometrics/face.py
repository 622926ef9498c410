"""The typed record that crosses every boundary of the pipeline."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field

import numpy as np

SELECTIONS = ("largest", "center", "score")
"""Which face of a photo with several to use, by name (or give its index in detection order)."""

SMALL_FACE_PX = 48
"""Faces narrower than this (the detector's box, in the photo's pixels) are recognised less reliably: LFW accuracy
holds down to faces about this wide and falls faster and faster below (reports/lfw-face-size, tested against it)."""


def face_width(box: Sequence[float]) -> float:
    """A face box's width in pixels: what ``SMALL_FACE_PX`` is measured in (``scripts/lfw_face_size.py``)."""
    return float(box[2] - box[0])


def is_small_face(box: Sequence[float]) -> bool:
    return face_width(box) < SMALL_FACE_PX


def small_face_warnings(boxes: Iterable[tuple[str, Sequence[float]]]) -> list[str]:
    """A warning per (source, box) whose face is under ``SMALL_FACE_PX`` wide: its template matches its person less
    reliably, whether compared now or enrolled, and a larger photo of them (or one taken closer) is the cure."""
    return [
        f"{source}: the face is {face_width(box):.0f} px wide; faces under {SMALL_FACE_PX} px are recognised less "
        "reliably (a larger or closer photo of them is better)"
        for source, box in boxes
        if is_small_face(box)
    ]


@dataclass(frozen=True, eq=False)
class Face:
    """One detected face, in the pixel coordinates of the image it was found in.

    ``box`` is (x1, y1, x2, y2); ``landmarks`` is 5x2 in the order right eye, left eye (as seen in the
    image: left then right), nose tip, right mouth corner, left mouth corner, or None from a detector that
    finds boxes only (such a face cannot be aligned); ``embedding`` is L2-normalised, or None until an
    embedder has run.

    Faces compare and hash by identity (NumPy fields have no single truth value), so ``==``, ``in`` and sets
    work; the embedding is left out of ``repr`` so that printing or logging a face leaks no biometric template.
    """

    box: np.ndarray
    landmarks: np.ndarray | None
    score: float
    embedding: np.ndarray | None = field(default=None, repr=False)

    @property
    def area(self) -> float:
        x1, y1, x2, y2 = self.box
        return float(max(0.0, x2 - x1) * max(0.0, y2 - y1))

    @property
    def center(self) -> tuple[float, float]:
        x1, y1, x2, y2 = self.box
        return float(x1 + x2) / 2.0, float(y1 + y2) / 2.0

    def to_dict(self) -> dict:
        """JSON-ready geometry; the embedding is left out on purpose (biometric data is not logged)."""
        return {
            "box": [round(float(v), 1) for v in self.box],
            "landmarks": None
            if self.landmarks is None
            else [[round(float(x), 1), round(float(y), 1)] for x, y in self.landmarks],
            "score": round(float(self.score), 4),
        }
