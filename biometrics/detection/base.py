"""What every detector shares: fit the image to the network, normalise it, run, decode, NMS, map back."""

from __future__ import annotations

import cv2
import numpy as np

from biometrics.errors import ModelError
from biometrics.face import Face
from biometrics.imaging import shrink_to_side
from biometrics.registry import ResolvedModel

# Boxes Nx4 (x1, y1, x2, y2), scores N, landmarks Nx5x2 or None (a boxes-only network), in network-input pixels.
Detections = tuple[np.ndarray, np.ndarray, np.ndarray | None]


def box_iou(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Intersection over union of every box (x1, y1, x2, y2) in ``a`` (N x 4) with every box in ``b`` (M x 4):
    N x M."""
    top_left = np.maximum(a[:, None, :2], b[None, :, :2])
    bottom_right = np.minimum(a[:, None, 2:], b[None, :, 2:])
    intersection = np.prod(np.clip(bottom_right - top_left, 0, None), axis=2)
    area_a = np.prod(a[:, 2:] - a[:, :2], axis=1)
    area_b = np.prod(b[:, 2:] - b[:, :2], axis=1)
    return intersection / np.maximum(area_a[:, None] + area_b[None, :] - intersection, 1e-9)


def non_max_suppression(boxes: np.ndarray, scores: np.ndarray, iou_threshold: float) -> np.ndarray:
    """Indices of the boxes (x1, y1, x2, y2) that survive greedy NMS, highest score first."""
    if len(boxes) == 0:
        return np.zeros(0, dtype=np.int64)
    xywh = np.column_stack([boxes[:, :2], boxes[:, 2:] - boxes[:, :2]]).astype(np.float32)
    keep = cv2.dnn.NMSBoxes(xywh.tolist(), scores.astype(np.float32).tolist(), 0.0, iou_threshold)
    keep = np.asarray(keep, dtype=np.int64).reshape(-1)
    return keep[np.argsort(-scores[keep], kind="stable")]


def anchor_grid(height: int, width: int, stride: int, per_cell: int = 1) -> np.ndarray:
    """(column, row) of each cell of a ``stride`` feature map, Nx2 float32, in the row-major order heads are
    flattened in, each cell repeated ``per_cell`` times (one row per anchor)."""
    rows, cols = -(-height // stride), -(-width // stride)
    row, col = np.divmod(np.arange(rows * cols, dtype=np.float32), cols)
    return np.repeat(np.column_stack([col, row]), per_cell, axis=0)


def concat_detections(levels: list[Detections]) -> Detections:
    """One (boxes, scores, landmarks) triple from several feature levels' triples, as float32."""
    boxes, scores, landmarks = zip(*levels, strict=True)
    return (
        np.concatenate(boxes).astype(np.float32),
        np.concatenate(scores).astype(np.float32),
        None if landmarks[0] is None else np.concatenate(landmarks).astype(np.float32),
    )


class Detector:
    """An ONNX detector run at the image's own size (capped at ``max_side``), padded to ``stride``; or, for a
    network with a fixed ``input_size``, at that size (the image is resized to it, aspect ratio not kept).

    Subclasses set the input normalisation (``input_mean``, ``input_scale``, ``input_rgb``) and implement
    ``_decode`` for their network, or ``_decode_level`` (one feature level, called per stride in
    ``strides`` with its anchor grid); resizing, NMS and mapping boxes and landmarks back to original pixels
    are shared.
    """

    stride = 32
    input_size: tuple[int, int] | None = None  # (width, height) of a network that only runs at one size
    input_mean: tuple[float, float, float] = (0.0, 0.0, 0.0)  # subtracted, in the network's channel order
    input_scale = 1.0  # multiplied after the mean is subtracted
    input_rgb = False  # the network takes RGB (images are BGR)
    has_landmarks = True
    strides: tuple[int, ...] = ()
    anchors_per_cell = 1
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
        shape = self.session.get_inputs()[0].shape
        if self.input_size is None and len(shape) == 4 and all(isinstance(side, int) for side in shape[2:]):
            raise ModelError(  # this architecture runs at each image's size: a fixed one would fail on the first image
                f"model '{model.name}': its input is fixed at {shape[2]}x{shape[3]} ({shape}), but a "
                f"'{model.card.architecture}' detector runs at each image's size: add \"prepare\": "
                '["dynamic_input_size"] to its card (the sizes are made free once, and cached)'
            )

    @property
    def name(self) -> str:
        return self.model.name

    def detect(self, image: np.ndarray) -> list[Face]:
        """Faces in a BGR uint8 image, highest score first."""
        height, width = image.shape[:2]
        network_input, scale = self._fit(image)
        outputs = self.session.run(self.output_names, {self.input_name: self.preprocess(network_input)})
        boxes, scores, landmarks = self._decode(
            dict(zip(self.output_names, outputs, strict=True)), network_input.shape[:2]
        )
        keep = np.flatnonzero(scores >= self.score_threshold)
        keep = keep[non_max_suppression(boxes[keep], scores[keep], self.nms_iou)]
        boxes, scores = boxes[keep] / np.tile(scale, 2), scores[keep]
        boxes[:, 0::2] = boxes[:, 0::2].clip(0, width)
        boxes[:, 1::2] = boxes[:, 1::2].clip(0, height)
        points = [None] * len(keep) if landmarks is None else landmarks[keep] / scale
        return [Face(box=b, landmarks=k, score=float(s)) for b, k, s in zip(boxes, points, scores, strict=True)]

    def _fit(self, image: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The network's input image and the (x, y) scale from original to input pixels."""
        height, width = image.shape[:2]
        if self.input_size is not None:
            fixed_w, fixed_h = self.input_size
            resized = cv2.resize(image, (fixed_w, fixed_h), interpolation=cv2.INTER_AREA)
            return resized, np.array([fixed_w / width, fixed_h / height], dtype=np.float32)
        resized = shrink_to_side(image, self.max_side)
        pad_h = -resized.shape[0] % self.stride
        pad_w = -resized.shape[1] % self.stride
        padded = cv2.copyMakeBorder(resized, 0, pad_h, 0, pad_w, cv2.BORDER_CONSTANT, value=0)
        # the sizes were rounded: map back with the ratios the pixels really have (not ``scale``, off by up to
        # half a pixel over the image, a third of a pixel at the landmarks of a 2,204-px photo)
        return padded, np.array([resized.shape[1] / width, resized.shape[0] / height], dtype=np.float32)

    def preprocess(self, image: np.ndarray) -> np.ndarray:
        """1x3xHxW float32: channels swapped to RGB if the network wants it, then (pixel - mean) * scale."""
        pixels = image[..., ::-1] if self.input_rgb else image
        blob = np.ascontiguousarray(pixels.transpose(2, 0, 1)[None], dtype=np.float32)
        if any(self.input_mean):
            blob -= np.asarray(self.input_mean, np.float32).reshape(1, 3, 1, 1)
        if self.input_scale != 1.0:
            blob *= self.input_scale
        return blob

    def _decode(self, outputs: dict[str, np.ndarray], size: tuple[int, int]) -> Detections:
        """Boxes, scores and landmarks (or None) in network-input pixels, from every level in ``strides``."""
        height, width = size
        return concat_detections(
            [
                self._decode_level(outputs, level, stride, anchor_grid(height, width, stride, self.anchors_per_cell))
                for level, stride in enumerate(self.strides)
            ]
        )

    def _decode_level(self, outputs: dict[str, np.ndarray], level: int, stride: int, grid: np.ndarray) -> Detections:
        """One feature level's detections; ``grid`` is each anchor's (column, row) on that level."""
        raise NotImplementedError
