"""Ultra-Light-Fast-Generic-Face-Detector RFB-320: a fixed 320x240 input, boxes only (no landmarks).

The graph decodes its priors itself: ``boxes`` are corners in 0..1 of the input, ``scores`` softmaxed
(background, face).
"""

from __future__ import annotations

import numpy as np

from biometrics.detection.base import Detector


class UltraFaceDetector(Detector):
    input_size = (320, 240)  # the priors are baked into the graph for this size: it cannot run at another
    # RGB, (pixel - 127) / 128, as the project's demos feed it.
    input_rgb = True
    input_mean = (127.0, 127.0, 127.0)
    input_scale = 1 / 128
    has_landmarks = False
    required_outputs = ("scores", "boxes")

    def _decode(self, outputs, size):
        height, width = size
        scores = outputs["scores"][0, :, 1]
        boxes = outputs["boxes"][0] * np.array([width, height, width, height], dtype=np.float32)
        return boxes.astype(np.float32), scores.astype(np.float32), None
