"""Targets and loss for the anchor-free student detector, in YuNet's output encoding.

Assignment: each labelled face goes to the pyramid level whose stride suits its size (about 4 strides wide:
stride 8 for ~32 px faces, 16 for ~64 px, 32 for ~128 px and up), and there to the cells within one cell of the
face centre that also lie inside the box. Those cells learn:
- ``cls``: the ensemble's soft score (how sure the teachers are), every other cell 0;
- ``obj``: the IoU of the cell's own predicted box with the label (so the product sqrt(cls * obj) that the
  decoder ranks by also says how well the box fits), every other cell 0;
- ``bbox``: IoU loss on the decoded box plus L1 on the encoded centre offset and log size;
- ``kps``: smooth L1 on the landmark offsets, where the ensemble has landmarks.
"""

from __future__ import annotations

import math

import numpy as np
import torch
import torch.nn.functional as F

from biometrics.training.detector_student import STRIDES


def level_of(size: np.ndarray) -> np.ndarray:
    """Pyramid level (0, 1, 2 for strides 8, 16, 32) for faces of the given size (geometric mean of w, h)."""
    return np.clip(np.round(np.log2(np.maximum(size, 1) / 32.0)), 0, len(STRIDES) - 1).astype(np.int64)


def build_targets(boxes: np.ndarray, landmarks: np.ndarray, scores: np.ndarray, height: int, width: int) -> dict:
    """Per level: positive cell indices, and for each the label box, landmarks and score (one scene)."""
    size = np.sqrt(np.prod(boxes[:, 2:] - boxes[:, :2], axis=1)) if len(boxes) else np.zeros(0)
    levels = level_of(size)
    targets = {}
    for level, stride in enumerate(STRIDES):
        rows, cols = -(-height // stride), -(-width // stride)
        cells, owners = [], []
        for face in np.flatnonzero(levels == level):
            cx, cy = (boxes[face, :2] + boxes[face, 2:]) / 2 / stride
            for row in range(int(cy) - 1, int(cy) + 2):
                for col in range(int(cx) - 1, int(cx) + 2):
                    centre = (np.array([col, row]) + 0.5) * stride
                    inside = np.all(centre > boxes[face, :2]) and np.all(centre < boxes[face, 2:])
                    if 0 <= row < rows and 0 <= col < cols and (inside or (row, col) == (int(cy), int(cx))):
                        cells.append(row * cols + col)
                        owners.append(face)
        # A cell claimed by two faces keeps the smaller one (the larger has other cells, or a coarser level).
        order = np.argsort(-size[owners]) if owners else np.zeros(0, np.int64)
        unique = {int(cells[i]): int(owners[i]) for i in order}
        cell_index = np.fromiter(unique.keys(), np.int64, len(unique))
        owner = np.fromiter(unique.values(), np.int64, len(unique))
        targets[stride] = {
            "cells": cell_index,
            "grid": np.stack([cell_index % cols, cell_index // cols], axis=1).astype(np.float32),
            "boxes": boxes[owner],
            "landmarks": landmarks[owner],
            "scores": scores[owner],
        }
    return targets


def decode_boxes(bbox: torch.Tensor, grid: torch.Tensor, stride: int) -> torch.Tensor:
    """YuNet's encoding (centre offset, log size, in stride units, from the cell's top-left) -> x1, y1, x2, y2."""
    centre = (grid + bbox[:, :2]) * stride
    half = torch.exp(bbox[:, 2:].clamp(max=8.0)) * stride / 2
    return torch.cat([centre - half, centre + half], dim=1)


def box_iou_pairs(a: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    top_left, bottom_right = torch.maximum(a[:, :2], b[:, :2]), torch.minimum(a[:, 2:], b[:, 2:])
    inter = (bottom_right - top_left).clamp(min=0).prod(dim=1)
    union = (a[:, 2:] - a[:, :2]).prod(dim=1) + (b[:, 2:] - b[:, :2]).prod(dim=1) - inter
    return inter / union.clamp(min=1e-6)


def detection_loss(raw: dict[str, torch.Tensor], targets: list[dict], weights: dict) -> tuple[torch.Tensor, dict]:
    """``raw``: the student's pre-sigmoid outputs (N x cells x C per head and stride); ``targets``: one
    ``build_targets`` result per scene. Sums are normalised by the number of positive cells, as in YOLOX."""
    terms = {name: raw["cls_8"].new_zeros(()) for name in ("cls", "obj", "box", "kps")}
    positives = 0
    on_device = lambda array: torch.from_numpy(array).to(raw["cls_8"].device)  # noqa: E731
    for stride in STRIDES:
        cls_logits, obj_logits = raw[f"cls_{stride}"][..., 0], raw[f"obj_{stride}"][..., 0]
        cls_target, obj_target = torch.zeros_like(cls_logits), torch.zeros_like(obj_logits)
        for image, scene in enumerate(targets):
            level = scene[stride]
            if not len(level["cells"]):
                continue
            cells = on_device(level["cells"])
            label = on_device(level["boxes"])
            bbox = raw[f"bbox_{stride}"][image, cells]
            grid = on_device(level["grid"])
            predicted = decode_boxes(bbox, grid, stride)
            iou = box_iou_pairs(predicted, label)
            cls_target[image, cells] = on_device(level["scores"])
            obj_target[image, cells] = iou.detach().clamp(0, 1)
            encoded = torch.cat(
                [
                    (label[:, :2] + label[:, 2:]) / 2 / stride - grid,
                    torch.log((label[:, 2:] - label[:, :2]).clamp(min=1) / stride),
                ],
                dim=1,
            )
            terms["box"] = terms["box"] + (1 - iou).sum() + F.l1_loss(bbox, encoded, reduction="sum") * 0.25
            landmarks = on_device(level["landmarks"])
            known = torch.isfinite(landmarks).all(dim=2).all(dim=1)
            if known.any():
                offsets = landmarks[known] / stride - grid[known, None, :]
                predicted_kps = raw[f"kps_{stride}"][image, cells[known]].reshape(-1, 5, 2)
                terms["kps"] = terms["kps"] + F.smooth_l1_loss(predicted_kps, offsets, reduction="sum", beta=0.1) / 5
            positives += len(cells)
        terms["cls"] = terms["cls"] + F.binary_cross_entropy_with_logits(cls_logits, cls_target, reduction="sum")
        terms["obj"] = terms["obj"] + F.binary_cross_entropy_with_logits(obj_logits, obj_target, reduction="sum")
    scale = 1.0 / max(positives, 1)
    terms = {name: value * scale for name, value in terms.items()}
    total = sum(weights.get(name, 1.0) * value for name, value in terms.items())
    return total, {name: float(value.detach()) for name, value in terms.items()} | {"positives": positives}


def initial_score_bias(prior: float = 0.01) -> float:
    """Logit bias that makes every cell start at ``prior`` probability (RetinaNet): the loss is not swamped by
    the easy negatives at step 0."""
    return -math.log((1 - prior) / prior)


DENSE_WEIGHTS = {"score": 1.0, "box": 1.0, "kps": 1.0, "hint": 1.0, "stages": 0.0}


def relative_mse(students: list[torch.Tensor], teachers: list[torch.Tensor]) -> torch.Tensor:
    """Mean over feature maps of the squared error relative to the teacher map's variance (1: as far off as
    predicting its mean)."""
    errors = [F.mse_loss(s, t) / t.var().clamp(min=1e-6) for s, t in zip(students, teachers, strict=True)]
    return sum(errors) / len(errors)


def dense_output_terms(student_raw: dict[str, torch.Tensor], teacher_raw: dict[str, torch.Tensor]) -> dict:
    """Match the teacher on every cell, not only at labelled faces (what a student pruned from it needs).

    - ``score``: KL divergence of the class and objectness probabilities from the teacher's;
    - ``box``, ``kps``: smooth L1 to the teacher's box and landmark encodings, each cell weighted by the
      teacher's face score cls x obj (elsewhere its regression means nothing).
    The sums are normalised by the teacher's total face weight, as the label loss is by its positives.
    """
    terms = {name: student_raw["cls_8"].new_zeros(()) for name in ("score", "box", "kps")}
    face_weight = student_raw["cls_8"].new_zeros(())
    for stride in STRIDES:
        cls_p, obj_p = torch.sigmoid(teacher_raw[f"cls_{stride}"]), torch.sigmoid(teacher_raw[f"obj_{stride}"])
        cell_weight = (cls_p * obj_p)[..., 0]
        face_weight = face_weight + cell_weight.sum()
        for name, target in (("cls", cls_p), ("obj", obj_p)):
            logits = student_raw[f"{name}_{stride}"]
            cross_entropy = F.binary_cross_entropy_with_logits(logits, target, reduction="sum")
            entropy = F.binary_cross_entropy(target, target, reduction="sum")  # so the term is a KL: 0 at a match
            terms["score"] = terms["score"] + cross_entropy - entropy
        for name, term in (("bbox", "box"), ("kps", "kps")):
            error = F.smooth_l1_loss(student_raw[f"{name}_{stride}"], teacher_raw[f"{name}_{stride}"], reduction="none")
            terms[term] = terms[term] + (error.mean(dim=2) * cell_weight).sum()
    scale = 1.0 / face_weight.clamp(min=1.0)
    return {name: value * scale for name, value in terms.items()}
