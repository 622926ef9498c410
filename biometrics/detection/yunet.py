"""YuNet (libfacedetection): anchor-free heads at strides 8, 16, 32 with objectness and 5 landmarks."""

from __future__ import annotations

import numpy as np

from biometrics.detection.base import Detector


class YuNetDetector(Detector):
    # BGR pixels in 0..255, no normalisation (the base class defaults).
    strides = (8, 16, 32)
    required_outputs = tuple(f"{head}_{stride}" for head in ("cls", "obj", "bbox", "kps") for stride in (8, 16, 32))

    def _decode_level(self, outputs, level, stride, grid):
        cls = outputs[f"cls_{stride}"][0, :, 0]
        obj = outputs[f"obj_{stride}"][0, :, 0]
        scores = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
        candidates = scores >= self.score_threshold
        grid = grid[candidates]
        bbox = outputs[f"bbox_{stride}"][0][candidates]
        kps = outputs[f"kps_{stride}"][0][candidates].reshape(-1, 5, 2)
        centre = (grid + bbox[:, :2]) * stride
        half = np.exp(bbox[:, 2:]) * stride / 2
        landmarks = (kps + grid[:, None, :]) * stride
        return np.column_stack([centre - half, centre + half]), scores[candidates], landmarks
