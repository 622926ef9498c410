"""Repair a pruned student layer by layer: each conv is re-solved by least squares to reproduce the teacher.

Pruning SFace to half width and swapping PReLU for ReLU leaves almost nothing of the teacher's function (held-out
cosine 0.06 at initialisation), and gradient distillation on 25 k faces on a CPU recovers it only slowly. But
every unit of the chain is linear in its weights: given the student's actual input to a conv (its own, already
repaired, earlier layers) and the teacher's pre-activation on the channels the student kept, the best weights
are a ridge regression. Solving the units in order (as in ThiNet / He et al. 2017 channel pruning) lets each
layer compensate for what the earlier ones lost, and costs one forward pass of a few hundred faces per layer.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from biometrics.training.student import FaceEmbedderNet

POSITIONS_PER_IMAGE = 256  # large early maps: a random subset of positions is plenty for <= 290 unknowns


def _patches(conv: nn.Conv2d, inputs: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """Conv input patches as (groups, samples, features + 1), the last feature a constant 1 for the bias."""
    cols = F.unfold(inputs, conv.kernel_size, padding=conv.padding, stride=conv.stride)  # N x (C*k*k) x L
    if positions is not None:
        cols = cols[:, :, positions]
    groups = conv.groups
    per_group = cols.shape[1] // groups
    cols = cols.reshape(cols.shape[0], groups, per_group, -1).permute(1, 0, 3, 2).reshape(groups, -1, per_group)
    return torch.cat([cols, torch.ones(groups, cols.shape[1], 1, dtype=cols.dtype)], dim=2)


def _targets(conv: nn.Conv2d, target: torch.Tensor, positions: torch.Tensor | None) -> torch.Tensor:
    """Target pre-activations as (groups, samples, outputs per group)."""
    flat = target.flatten(2)  # N x C_out x L
    if positions is not None:
        flat = flat[:, :, positions]
    outputs_per_group = flat.shape[1] // conv.groups
    return (
        flat.reshape(flat.shape[0], conv.groups, outputs_per_group, -1)
        .permute(1, 0, 3, 2)
        .reshape(conv.groups, -1, outputs_per_group)
    )


@torch.no_grad()
def fit_conv_bn(
    conv: nn.Conv2d,
    bn: nn.BatchNorm2d,
    inputs: torch.Tensor,
    target: torch.Tensor,
    ridge: float = 1e-3,
    chunk: int = 64,
    generator: torch.Generator | None = None,
) -> None:
    """Set ``bn(conv(inputs)) ~= target`` (least squares): conv gets the weights, BN the bias and the scale.

    The BN statistics are set to the fitted output's own mean and variance, so the unit computes exactly the
    fitted affine map in eval mode and (nearly) the same in train mode, where BN normalises by batch statistics.
    """
    length = target.shape[2] * target.shape[3]
    features = conv.in_channels // conv.groups * conv.kernel_size[0] * conv.kernel_size[1] + 1
    gram = torch.zeros(conv.groups, features, features, dtype=torch.float64)
    cross = torch.zeros(conv.groups, features, conv.out_channels // conv.groups, dtype=torch.float64)
    for start in range(0, len(inputs), chunk):
        positions = None
        if length > POSITIONS_PER_IMAGE:
            positions = torch.randperm(length, generator=generator)[:POSITIONS_PER_IMAGE]
        x = _patches(conv, inputs[start : start + chunk].float(), positions).double()
        y = _targets(conv, target[start : start + chunk].float(), positions).double()
        gram += x.transpose(1, 2) @ x
        cross += x.transpose(1, 2) @ y
    samples = gram[:, -1, -1:].unsqueeze(-1)  # (groups, 1, 1)
    scale = torch.diagonal(gram, dim1=1, dim2=2)[:, :-1].mean(dim=1).view(-1, 1, 1)
    regulariser = torch.eye(features, dtype=torch.float64) * ridge * scale
    regulariser[-1, -1] = 0  # the bias is not shrunk
    solution = torch.linalg.solve(gram + regulariser, cross)  # groups x features x outputs
    weight, bias = solution[:, :-1], solution[:, -1]  # bias: groups x outputs
    moments = gram / samples
    mean_input = moments[:, -1, :-1]  # E[x] (groups x features-1)
    mean = torch.einsum("gf,gfo->go", mean_input, weight)
    second = torch.einsum("gfo,gfh,gho->go", weight, moments[:, :-1, :-1], weight)
    variance = (second - mean**2).clamp_min(1e-6)
    shape = conv.weight.shape
    if conv.groups == 1:
        conv.weight.copy_(weight[0].T.reshape(shape).float())
    else:  # depthwise: one output per group
        conv.weight.copy_(weight[:, :, 0].reshape(shape).float())
    bn.running_mean.copy_(mean.reshape(-1).float())
    bn.running_var.copy_((variance - bn.eps).clamp_min(1e-6).reshape(-1).float())
    bn.weight.copy_(variance.sqrt().reshape(-1).float())
    bn.bias.copy_((mean + bias).reshape(-1).float())


def _unit(unit: nn.Sequential, inputs: torch.Tensor, chunk: int = 64) -> tuple[torch.Tensor, torch.Tensor]:
    """A conv-bn-activation unit's pre-activation and output, computed in chunks to bound peak memory."""
    pre, out = [], []
    for start in range(0, len(inputs), chunk):
        z = unit[1](unit[0](inputs[start : start + chunk].float()))
        pre.append(z)
        out.append(unit[2](z))
    return torch.cat(pre), torch.cat(out)


@torch.no_grad()
def reconstruct_student(
    teacher: FaceEmbedderNet,
    student: FaceEmbedderNet,
    kept: dict[int, torch.Tensor],
    rgb: torch.Tensor,
    head_rgb: torch.Tensor | None = None,
    ridge: float = 1e-3,
    seed: int = 0,
) -> dict:
    """Re-solve every student conv (in order) and the head's linear layer against the teacher on ``rgb`` faces.

    ``kept``: per student stage, the teacher channels it stands for (from ``prune_teacher``). The head has one
    sample per face and as many unknowns as channels, so it is fitted on ``head_rgb`` (more faces) if given,
    streamed through both networks. Returns the
    relative error of each fitted unit on these faces (a diagnostic for the training log).
    """
    teacher.eval()
    student.eval()
    generator = torch.Generator().manual_seed(seed)
    t_x = s_x = (rgb - 127.5) * 0.0078125
    in_idx: torch.Tensor | None = None
    errors: dict[str, float] = {}
    student_blocks = dict(zip(student.config.stages, student.features, strict=True))
    for stage in range(1, 15):
        t_block = teacher.features[stage - 1]
        s_block = student_blocks.get(stage)
        t_units = [t_block] if stage == 1 else [t_block[0], t_block[1]]
        s_units = ([s_block] if stage == 1 else [s_block[0], s_block[1]]) if s_block is not None else []
        for position, t_unit in enumerate(t_units):
            t_pre, t_x = _unit(t_unit, t_x)
            if not s_units:
                continue
            s_unit = s_units[position]
            depthwise = stage > 1 and position == 0
            channels = in_idx if depthwise else kept[stage]
            fit_conv_bn(s_unit[0], s_unit[1], s_x, t_pre[:, channels], ridge, generator=generator)
            s_pre, s_x = _unit(s_unit, s_x)
            errors[f"{stage}{'dw' if depthwise else ''}"] = float(
                (s_pre - t_pre[:, channels]).pow(2).mean() / t_pre[:, channels].pow(2).mean()
            )
        if s_block is not None:
            in_idx = kept[stage]
    errors["head"] = _fit_head(teacher, student, head_rgb if head_rgb is not None else rgb, ridge)
    return errors


def _fit_head(teacher: FaceEmbedderNet, student: FaceEmbedderNet, rgb: torch.Tensor, ridge: float, chunk: int = 128):
    """Solve the student's linear layer so its pre-BN output matches the teacher's (the BN is the teacher's)."""
    pooled, target = [], []
    for start in range(0, len(rgb), chunk):
        x = (rgb[start : start + chunk] - 127.5) * 0.0078125
        target.append(teacher.linear(torch.flatten(teacher.spatial(teacher.feature_bn(teacher.features(x))), 1)))
        pooled.append(torch.flatten(student.spatial(student.feature_bn(student.features(x))), 1))
    x = torch.cat([torch.cat(pooled).double(), torch.ones(len(rgb), 1, dtype=torch.float64)], dim=1)
    target = torch.cat(target).double()
    gram = x.T @ x
    regulariser = torch.eye(len(gram), dtype=torch.float64) * ridge * torch.diagonal(gram)[:-1].mean()
    regulariser[-1, -1] = 0
    solution = torch.linalg.solve(gram + regulariser, x.T @ target)
    student.linear.weight.copy_(solution[:-1].T.float())
    student.linear.bias.copy_(solution[-1].float())
    return float((x @ solution - target).pow(2).mean() / target.pow(2).mean())
