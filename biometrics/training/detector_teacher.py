"""YuNet's ONNX graph as a ``FaceDetectorNet``, and pruned students that start from its weights.

A student trained from scratch on our scenes learns only what the scenes show: faces pasted from portrait
photos. YuNet's weights already hold what WIDER FACE taught it (profiles, crowds, blur, occlusion). Keeping a
subset of its channels and distilling its dense outputs (every cell's scores, box and landmarks) is meant to
carry that knowledge over, as pruning SFace did for the embedder. Measured with the v3 recipe (half widths,
5 of 11 backbone units, 4.6x fewer MACs, all trained at once), it did not: its WIDER AP is the scratch
student's. Replacing one block and training only it, to reproduce the teacher's features, did (v4 recipes:
a new stride-4 front; README).
"""

from __future__ import annotations

from collections.abc import Callable, Hashable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import onnx
import torch
from torch import nn

from biometrics.training.detector_student import HEADS, STRIDES, DetectorConfig, FaceDetectorNet, SeparableUnit
from biometrics.training.student import onnx_constants

YUNET_CONVS = 53
ONNX_HEAD_ORDER = ("cls", "bbox", "obj", "kps")  # YuNet's graph computes its heads in this order


def separable_units(net: FaceDetectorNet) -> list[SeparableUnit]:
    """Every separable unit in graph order: backbone stages, then the FPN laterals top-down (stride 32 first)."""
    backbone = [m for stage in net.stages for m in stage if isinstance(m, SeparableUnit)]
    return backbone + list(net.lateral[::-1])


def _set_bias_as_bn(bn: nn.BatchNorm2d, bias: np.ndarray) -> None:
    """A BN that adds ``bias`` and nothing else (in eval mode)."""
    bn.weight.data.fill_(1.0)
    bn.bias.data = torch.from_numpy(bias.copy())
    bn.running_mean.data.zero_()
    bn.running_var.data.fill_(1.0 - bn.eps)


def yunet_to_torch(onnx_bytes: bytes) -> FaceDetectorNet:
    """YuNet (FP32 weights: the registry's prepared file) in PyTorch, computing what ONNX Runtime computes."""
    model = onnx.load_from_string(onnx_bytes)
    values = onnx_constants(model)
    convs = [node for node in model.graph.node if node.op_type == "Conv"]
    if len(convs) != YUNET_CONVS:
        raise ValueError(f"not YuNet's graph: {len(convs)} convolutions, YuNet has {YUNET_CONVS}")

    def weights(node) -> tuple[torch.Tensor, np.ndarray]:
        return torch.from_numpy(values[node.input[1]].copy()), values[node.input[2]]

    net = FaceDetectorNet(DetectorConfig())
    stem_conv, stem_bn = net.stages[0][0], net.stages[0][1]
    stem_conv.weight.data, stem_bias = weights(convs[0])
    _set_bias_as_bn(stem_bn, stem_bias)
    units = separable_units(net)
    for index, unit in enumerate(units):
        pointwise, depthwise = convs[1 + 2 * index], convs[2 + 2 * index]
        unit[0].weight.data, pointwise_bias = weights(pointwise)
        unit[0].bias.data = torch.from_numpy(pointwise_bias.copy())
        unit[1].weight.data, depthwise_bias = weights(depthwise)
        _set_bias_as_bn(unit[2], depthwise_bias)
    head_convs = convs[1 + 2 * len(units) :]
    for position, name in enumerate(ONNX_HEAD_ORDER):
        for level in range(len(STRIDES)):
            index = 2 * (position * len(STRIDES) + level)  # each head: a 1x1 conv, then a 3x3 one
            for conv, node in zip(net.heads[name][level], head_convs[index : index + 2], strict=True):
                conv.weight.data, bias = weights(node)
                conv.bias.data = torch.from_numpy(bias.copy())
    return net.eval()


def _keep(importance: torch.Tensor, count: int) -> torch.Tensor:
    return torch.sort(torch.argsort(importance, descending=True)[:count]).values


@contextmanager
def recorded_outputs(
    modules: dict[Hashable, nn.Module], reduce: Callable[[torch.Tensor], torch.Tensor] = lambda out: out
) -> Iterator[dict[Hashable, torch.Tensor]]:
    """While open, every forward pass stores ``reduce(output)`` of each module under its key."""
    outputs: dict[Hashable, torch.Tensor] = {}
    hooks = [
        module.register_forward_hook(lambda _m, _i, out, key=key: outputs.__setitem__(key, reduce(out)))
        for key, module in modules.items()
    ]
    try:
        yield outputs
    finally:
        for hook in hooks:
            hook.remove()


@torch.no_grad()
def channel_activity(net: FaceDetectorNet, images: torch.Tensor) -> dict[str, torch.Tensor]:
    """Mean (post-ReLU) activation of every channel of the stem and of each unit, over ``images``."""
    modules = {"stem": net.stages[0][2]} | {f"unit{i}": unit for i, unit in enumerate(separable_units(net))}
    with recorded_outputs(modules, reduce=lambda out: out.mean(dim=(0, 2, 3)).clone()) as activity:
        net.eval()(images)
    return activity


@dataclass(frozen=True)
class KeptChannels:
    """Which teacher channels a pruned student's features correspond to (for feature hints)."""

    stages: list[torch.Tensor]  # per backbone stage, the channels of its output
    stage_sources: list[int]  # per stage, the teacher unit its output corresponds to (-1: the stem)
    neck: torch.Tensor  # the pyramid's (every FPN level keeps the same set: the FPN adds them)


def check_teacher_units(config: DetectorConfig, teacher_units: list[list[int]]) -> None:
    """What ``prune_detector`` needs of a student's ``init.units`` that the student's config alone decides."""
    if [len(units) for units in teacher_units] != [len(units) for units in config.units] or not config.pointwise_bias:
        raise ValueError("init.units must give one teacher unit per student unit (and pointwise_bias be true)")


@torch.no_grad()
def prune_detector(
    teacher: FaceDetectorNet, student: FaceDetectorNet, teacher_units: list[list[int]], images: torch.Tensor
) -> KeptChannels:
    """Start a (smaller) student's units from the teacher's most active channels, in place.

    ``teacher_units``: per stage, the teacher units (graph order, as ``separable_units`` counts them) that the student's
    units start from; a teacher unit may be left out only where its input and output widths match, so the
    chain keeps its shape (its successor then reads what it read). Every neck tensor (the stride-8/16/32 stage
    outputs and the laterals) keeps one shared set of channels, since the FPN adds them. What has no teacher
    counterpart (a ``depthwise`` downsampling, a ``shared`` head, a stride-4 stem and the stage it feeds) keeps
    its fresh weights, but a downsampling starts as a 2x2 average, which is what the teacher's max-pool is
    closest to; a fresh stage still takes the channel set its teacher units would keep, so the next stage
    reads the channels it was copied for.
    """
    config = student.config
    check_teacher_units(config, teacher_units)
    fresh_front = config.stem_stride != teacher.config.stem_stride
    teacher_all, student_all = separable_units(teacher), separable_units(student)
    laterals = list(range(len(teacher_all) - 3, len(teacher_all)))
    sources = [unit for stage in teacher_units for unit in stage] + laterals  # teacher unit of each student unit
    backbone = len(sources) - 3
    for previous, unit in zip([-1, *sources[: backbone - 1]], sources[:backbone], strict=True):
        if any(teacher_all[i][0].in_channels != teacher_all[i][0].out_channels for i in range(previous + 1, unit)):
            raise ValueError(f"teacher unit {unit}: the units left out before it change the width")
    stage_ends = [sum(len(units) for units in teacher_units[: level + 1]) - 1 for level in range(5)]
    neck_positions = stage_ends[2:] + list(range(backbone, len(sources)))
    activity = channel_activity(teacher, images)
    neck_keep = _keep(sum(activity[f"unit{sources[i]}"] for i in neck_positions), config.neck)
    stem_keep = _keep(activity["stem"], config.stem)
    if not fresh_front:
        student.stages[0][0].weight.data = teacher.stages[0][0].weight.data[stem_keep].clone()
        _copy_bn(teacher.stages[0][1], student.stages[0][1], stem_keep)
    kept: list[torch.Tensor] = []  # per student unit, the teacher channels it keeps
    for position, (unit, ours) in enumerate(zip(sources, student_all, strict=True)):
        theirs = teacher_all[unit]
        width = ours[0].out_channels
        out_idx = neck_keep if position in neck_positions else _keep(activity[f"unit{unit}"], width)
        if position < backbone:
            in_idx = kept[position - 1] if position else stem_keep
        else:  # laterals, top-down: stride 32 reads the last stage, 16 and 8 their stage (+ the neck above)
            in_idx = kept[stage_ends[4 - (position - backbone)]]
        kept.append(out_idx)
        if fresh_front and position <= stage_ends[0]:
            continue
        ours[0].weight.data = theirs[0].weight.data[out_idx][:, in_idx].clone()
        ours[0].bias.data = theirs[0].bias.data[out_idx].clone()
        ours[1].weight.data = theirs[1].weight.data[out_idx].clone()
        _copy_bn(theirs[2], ours[2], out_idx)
    for stage in student.stages[1:]:
        if isinstance(stage[0], nn.Conv2d):  # depthwise downsampling: the 2x2 window a max-pool would take
            stage[0].weight.data.zero_()
            stage[0].weight.data[:, :, 1:, 1:] = 0.25
    if config.head == teacher.config.head:
        for name in HEADS:
            for t_head, s_head in zip(teacher.heads[name], student.heads[name], strict=True):
                s_head[0].weight.data = t_head[0].weight.data[:, neck_keep].clone()
                s_head[0].bias.data = t_head[0].bias.data.clone()
                s_head[1].load_state_dict(t_head[1].state_dict())
    return KeptChannels(
        [kept[end] if end >= 0 else stem_keep for end in stage_ends],
        [sources[end] if end >= 0 else -1 for end in stage_ends],
        neck_keep,
    )


def _copy_bn(src: nn.BatchNorm2d, dst: nn.BatchNorm2d, index: torch.Tensor) -> None:
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst, name).data = getattr(src, name).data[index].clone()
