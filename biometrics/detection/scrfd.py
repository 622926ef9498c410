"""SCRFD (InsightFace, with keypoints): anchor-free heads at strides 8, 16, 32, two anchors per cell, boxes
as distances from the cell's corner point and landmarks as offsets from it, both in units of the stride.

Benchmark reference only (InsightFace's non-commercial licence): never a teacher, never shipped.
"""

from __future__ import annotations

import numpy as np

from biometrics.detection.base import Detector


class SCRFDDetector(Detector):
    # RGB, (pixel - 127.5) / 128, as InsightFace's SCRFD.detect feeds it.
    input_rgb = True
    input_mean = (127.5, 127.5, 127.5)
    input_scale = 1 / 128
    strides = (8, 16, 32)
    anchors_per_cell = 2
    # Outputs per stride: scores (sigmoid applied in the graph), box distances, landmark offsets.
    required_outputs = tuple(f"out{i}" for i in range(9))

    def _decode_level(self, outputs, level, stride, grid):
        scores = outputs[f"out{level}"][0, :, 0]
        candidates = scores >= self.score_threshold
        points = grid[candidates] * stride
        distances = outputs[f"out{level + 3}"][0][candidates] * stride
        offsets = outputs[f"out{level + 6}"][0][candidates].reshape(-1, 5, 2) * stride
        boxes = np.column_stack([points - distances[:, :2], points + distances[:, 2:]])
        return boxes, scores[candidates], points[:, None, :] + offsets
