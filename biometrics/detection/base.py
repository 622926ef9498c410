"""What every detector shares: letterbox to a stride multiple, run, map back, NMS."""

from __future__ import annotations

import cv2
import numpy as np

from biometrics.errors import ModelError
from biometrics.face import Face
from biometrics.registry import ResolvedModel


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes (x1, y1, x2, y2) that survive greedy NMS, highest score first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]).astype(np.float32)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.astype(np.float32).tolist(), 0.0, iou_threshold)
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    return keep[np.argsort(-scores[keep], kind="stable")]


class Detector:
    """An ONNX detector run at the image's own size (capped at ``max_side``), padded to ``stride``.

    Subclasses implement ``_preprocess`` and ``_decode`` for their network; everything else (resizing,
    NMS, mapping boxes and landmarks back to original pixels) is shared.
    """

    stride = 32
    required_outputs: tuple[str, ...] = ()

    def __init__(
        self,
        model: ResolvedModel,
        *,
        score_threshold: float = 0.6,
        nms_iou: float = 0.3,
        max_side: int = 1280,
        threads: int | None = None,
    ):
        self.model = model
        self.score_threshold = score_threshold
        self.nms_iou = nms_iou
        self.max_side = max_side
        self.session = model.session(threads)
        self.input_name = self.session.get_inputs()[0].name
        self.output_names = [output.name for output in self.session.get_outputs()]
        missing = sorted(set(self.required_outputs) - set(self.output_names))
        if missing:
            raise ModelError(
                f"model '{model.name}' is not a {type(self).__name__} network (missing outputs: {', '.join(missing)})"
            )

    @property
    def name(self) -> str:
        return self.model.name

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in a BGR uint8 image, highest score first."""
        height, width = image.shape[:2]
        scale = min(1.0, self.max_side / max(height, width))
        resized = (
            image
            if scale == 1.0
            else cv2.resize(
                image, (max(1, round(width * scale)), max(1, round(height * scale))), interpolation=cv2.INTER_AREA
            )
        )
        pad_h = -resized.shape[0] % self.stride
        pad_w = -resized.shape[1] % self.stride
        padded = cv2.copyMakeBorder(resized, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
        outputs = self.session.run(self.output_names, {self.input_name: self._preprocess(padded)})
        boxes, scores, landmarks = self._decode(dict(zip(self.output_names, outputs, strict=True)), padded.shape[:2])
        mask = scores >= self.score_threshold
        boxes, scores, landmarks = boxes[mask], scores[mask], landmarks[mask]
        keep = non_max_suppression(boxes, scores, self.nms_iou)
        boxes, scores, landmarks = boxes[keep] / scale, scores[keep], landmarks[keep] / scale
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        return [Face(box=b, landmarks=k, score=float(s)) for b, k, s in zip(boxes, landmarks, scores, strict=True)]

    def _preprocess(self, image: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def _decode(
        self, outputs: dict[str, np.ndarray], size: tuple[int, int]
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Return boxes Nx4 (x1, y1, x2, y2), scores N, landmarks Nx5x2 in padded-input pixels."""
        raise NotImplementedError
