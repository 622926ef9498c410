"""YuNet (libfacedetection): anchor-free heads at strides 8, 16, 32 with objectness and 5 landmarks."""

from __future__ import annotations

import numpy as np

from biometrics.detection.base import Detector


def _grid(rows: int, cols: int) -> tuple[np.ndarray, np.ndarray]:
    """Column and row index of each cell, in the row-major order the heads are flattened in."""
    row, col = np.divmod(np.arange(rows * cols, dtype=np.float32), cols)
    return col, row


class YuNetDetector(Detector):
    strides = (8, 16, 32)
    required_outputs = tuple(f"{head}_{stride}" for head in ("cls", "obj", "bbox", "kps") for stride in (8, 16, 32))

    def _preprocess(self, image: np.ndarray) -> np.ndarray:
        # YuNet takes BGR pixels in 0..255 with no normalisation.
        return np.ascontiguousarray(image.transpose(2, 0, 1)[None], dtype=np.float32)

    def _decode(self, outputs, size):
        height, width = size
        all_boxes, all_scores, all_landmarks = [], [], []
        for stride in self.strides:
            col, row = _grid(height // stride, width // stride)
            cls = outputs[f"cls_{stride}"][0, :, 0]
            obj = outputs[f"obj_{stride}"][0, :, 0]
            bbox = outputs[f"bbox_{stride}"][0]
            kps = outputs[f"kps_{stride}"][0].reshape(-1, 5, 2)
            scores = np.sqrt(np.clip(cls, 0, 1) * np.clip(obj, 0, 1))
            candidates = scores >= self.score_threshold
            col, row, bbox, kps = col[candidates], row[candidates], bbox[candidates], kps[candidates]
            centre_x = (col + bbox[:, 0]) * stride
            centre_y = (row + bbox[:, 1]) * stride
            half_w = np.exp(bbox[:, 2]) * stride / 2
            half_h = np.exp(bbox[:, 3]) * stride / 2
            all_boxes.append(
                np.column_stack([centre_x - half_w, centre_y - half_h, centre_x + half_w, centre_y + half_h])
            )
            all_scores.append(scores[candidates])
            all_landmarks.append((kps + np.stack([col, row], axis=1)[:, None, :]) * stride)
        return (
            np.concatenate(all_boxes).astype(np.float32),
            np.concatenate(all_scores).astype(np.float32),
            np.concatenate(all_landmarks).astype(np.float32),
        )
