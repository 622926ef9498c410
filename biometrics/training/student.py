"""The embedder network family: a depthwise-separable chain (SFace's topology) with width/depth knobs.

One class builds both the teacher (SFace: 14 stages up to 1024 channels and a 50,176 -> 128 FC head) and the
students (narrower stages, fewer 512-wide repeats, a global depthwise (GDC) head as in MobileFaceNet). So the
teacher's ONNX weights can be loaded into PyTorch, checked against ONNX Runtime, and pruned into a student.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np
import onnx
import torch
from onnx import numpy_helper
from torch import nn

from biometrics.onnx_tools import dequantize_weights

# SFace's stages: output channels and depthwise stride of stages 2..14 (stage 1 is a full 3x3 conv, 3 -> 32).
SFACE_WIDTHS = (32, 64, 128, 128, 256, 256, 512, 512, 512, 512, 512, 512, 1024, 1024)
SFACE_STRIDES = (1, 1, 2, 1, 2, 1, 2, 1, 1, 1, 1, 1, 2, 1)


@dataclass(frozen=True)
class EmbedderConfig:
    """Architecture knobs. ``stages`` lists the teacher stages kept (1-based), so a student can skip repeats."""

    width: float = 1.0
    stages: tuple[int, ...] = tuple(range(1, 15))
    head: str = "gdc"  # "fc" (SFace) or "gdc" (global depthwise conv + linear, MobileFaceNet)
    head_channels: int = 0  # "fc" only: a 1x1 conv first reduces the last stage to this many channels (0: none)
    activation: str = "prelu"  # "relu" quantizes better: ONNX Runtime fuses Conv+ReLU into one int8 op
    embedding_dim: int = 128
    widths: tuple[int, ...] = field(default=(), compare=False)

    def __post_init__(self):
        strided = {stage for stage, stride in enumerate(SFACE_STRIDES, start=1) if stride == 2}
        if not strided <= set(self.stages):
            raise ValueError(f"stages must keep the downsampling stages {sorted(strided)} (the head needs 7x7 maps)")
        if self.activation not in ("prelu", "relu"):
            raise ValueError(f"unknown activation '{self.activation}' (prelu or relu)")
        if self.head not in ("fc", "gdc"):
            raise ValueError(f"unknown head '{self.head}' (fc or gdc)")
        if self.head_channels and self.head != "fc":
            raise ValueError("head_channels applies to the fc head only")
        if self.widths and len(self.widths) != len(self.stages):
            raise ValueError(f"widths: one per kept stage ({len(self.stages)}), not {len(self.widths)}")

    def channels(self) -> list[int]:
        """Output channels of each kept stage (multiples of 8, as vector units like)."""
        if self.widths:
            return list(self.widths)
        return [max(8, int(round(SFACE_WIDTHS[s - 1] * self.width / 8)) * 8) for s in self.stages]

    def to_dict(self) -> dict:
        data = asdict(self)
        data["widths"] = self.channels()
        data["stages"] = list(self.stages)
        return data


class QuantizableConv2d(nn.Conv2d):
    """A Conv2d that quantization-aware fine-tuning (``quantization_aware.simulate_int8``) can make compute with
    its weight and input rounded as the INT8 build will; otherwise (``simulation`` None) a plain Conv2d, with the
    same parameters, so checkpoints and exports do not change."""

    simulation: tuple[Callable, Callable] | None = None  # (weight rounding, input rounding)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.simulation is None:
            return super().forward(x)
        round_weight, round_input = self.simulation
        return self._conv_forward(round_input(x), round_weight(self.weight), self.bias)


def _conv_bn_act(in_ch: int, out_ch: int, kernel: int, stride: int, groups: int, activation: str) -> nn.Sequential:
    return nn.Sequential(
        QuantizableConv2d(in_ch, out_ch, kernel, stride, padding=kernel // 2, groups=groups, bias=False),
        nn.BatchNorm2d(out_ch, eps=1e-3),
        nn.PReLU(out_ch) if activation == "prelu" else nn.ReLU(),  # not in place: hints keep pre-activations
    )


class FaceEmbedderNet(nn.Module):
    """112x112 RGB (0-255) -> embedding. Normalisation is inside the network so the ONNX file is self-contained."""

    def __init__(self, config: EmbedderConfig):
        super().__init__()
        self.config = config
        channels = config.channels()
        blocks: list[nn.Module] = []
        in_ch = 3
        for stage, out_ch in zip(config.stages, channels, strict=True):
            if stage == 1:
                blocks.append(_conv_bn_act(in_ch, out_ch, 3, 1, 1, config.activation))
            else:
                blocks.append(
                    nn.Sequential(
                        _conv_bn_act(in_ch, in_ch, 3, SFACE_STRIDES[stage - 1], in_ch, config.activation),
                        _conv_bn_act(in_ch, out_ch, 1, 1, 1, config.activation),
                    )
                )
            in_ch = out_ch
        self.features = nn.Sequential(*blocks)
        self.feature_bn = nn.BatchNorm2d(in_ch, eps=2e-5)
        if config.head == "fc":
            # SFace's head is a full FC over the 7x7 map: a per-channel spatial filter (GDC, rank 1) reproduces
            # its embedding from the teacher's own features at cosine 0.6 only. Reducing the channels first
            # keeps the spatial detail at a small parameter cost (24 channels: 0.82, 163 K parameters).
            reduced = config.head_channels or in_ch
            self.spatial = nn.Conv2d(in_ch, reduced, 1, bias=False) if config.head_channels else nn.Identity()
            self.linear = nn.Linear(reduced * 7 * 7, config.embedding_dim)
        else:  # "gdc"
            self.spatial = nn.Conv2d(in_ch, in_ch, 7, groups=in_ch, bias=False)
            self.linear = nn.Linear(in_ch, config.embedding_dim)
        self.embedding_bn = nn.BatchNorm1d(config.embedding_dim, eps=2e-5)

    def forward(self, rgb: torch.Tensor) -> torch.Tensor:
        return self._head(self.features((rgb - 127.5) * 0.0078125))

    def _head(self, features: torch.Tensor) -> torch.Tensor:
        x = self.spatial(self.feature_bn(features))
        return self.embedding_bn(self.linear(torch.flatten(x, 1)))

    def forward_features(self, rgb: torch.Tensor, stages: list[int]) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        """The embedding, and the pre-activation output (after BN) of each listed stage (teacher numbering).

        Pre-activation, because student and teacher may use different activations: the hint compares what
        each layer computes, not what its nonlinearity does with it.
        """
        x = (rgb - 127.5) * 0.0078125
        hints = {}
        for stage, block in zip(self.config.stages, self.features, strict=True):
            if stage not in stages:
                x = block(x)
                continue
            unit = block if stage == 1 else block[1]
            pre = x if stage == 1 else block[0](x)
            hints[stage] = unit[1](unit[0](pre))
            x = unit[2](hints[stage])
        return self._head(x), hints


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


# --------------------------------------------------------------------------------------------------------------
# SFace ONNX -> PyTorch, and pruning it into a student
# --------------------------------------------------------------------------------------------------------------


def onnx_constants(model: onnx.ModelProto) -> dict[str, np.ndarray]:
    """Initializers, plus the outputs of Reshape nodes that only reshape initializers (SFace's weights)."""
    values = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    for node in model.graph.node:
        if node.op_type == "Reshape" and all(name in values for name in node.input):
            values[node.output[0]] = values[node.input[0]].reshape(values[node.input[1]])
    return values


def sface_stage_tensor(stage: int) -> str:
    """Name of stage ``stage``'s pre-activation tensor (its last BatchNormalization's output) in SFace's graph."""
    return f"conv_{stage}_batchnorm"


def _load_bn(bn: nn.BatchNorm2d | nn.BatchNorm1d, values: dict, prefix: str) -> None:
    bn.weight.data = torch.from_numpy(values[f"{prefix}_gamma"].copy())
    bn.bias.data = torch.from_numpy(values[f"{prefix}_beta"].copy())
    bn.running_mean.data = torch.from_numpy(values[f"{prefix}_moving_mean"].copy())
    bn.running_var.data = torch.from_numpy(values[f"{prefix}_moving_var"].copy())


def _load_unit(unit: nn.Sequential, values: dict, prefix: str) -> None:
    conv, bn, prelu = unit
    conv.weight.data = torch.from_numpy(values[f"{prefix}_conv2d_weight_reshaped"].copy())
    _load_bn(bn, values, f"{prefix}_batchnorm")
    prelu.weight.data = torch.from_numpy(values[f"{prefix}_relu_gamma"].reshape(-1).copy())


def sface_to_torch(onnx_bytes: bytes) -> FaceEmbedderNet:
    """The SFace teacher as a FaceEmbedderNet with its weights (int8 blocks dequantized to FP32)."""
    model = dequantize_weights(onnx.load_from_string(onnx_bytes))
    values = onnx_constants(model)
    values.update({name.removesuffix("_dequantized"): v for name, v in values.items() if name.endswith("_dequantized")})
    net = FaceEmbedderNet(EmbedderConfig(head="fc"))
    for stage, block in zip(range(1, 15), net.features, strict=True):
        if stage == 1:
            _load_unit(block, values, "conv_1")
        else:
            _load_unit(block[0], values, f"conv_{stage}_dw")
            _load_unit(block[1], values, f"conv_{stage}")
    _load_bn(net.feature_bn, values, "bn1")
    net.linear.weight.data = torch.from_numpy(values["pre_fc1_weight"].copy())
    net.linear.bias.data = torch.from_numpy(values["pre_fc1_bias"].copy())
    _load_bn(net.embedding_bn, values, "fc1")
    return net.eval()


def _keep_top(importance: torch.Tensor, count: int) -> torch.Tensor:
    return torch.sort(torch.argsort(importance.abs(), descending=True)[:count]).values


def _slice_unit(src: nn.Sequential, dst: nn.Sequential, out_idx: torch.Tensor, in_idx: torch.Tensor | None) -> None:
    """Copy a conv-bn-prelu unit keeping output channels ``out_idx`` (and input channels ``in_idx``)."""
    weight = src[0].weight.data[out_idx]
    if in_idx is not None and src[0].groups == 1:
        weight = weight[:, in_idx]
    dst[0].weight.data = weight.clone()
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(dst[1], name).data = getattr(src[1], name).data[out_idx].clone()
    if isinstance(dst[2], nn.PReLU):
        dst[2].weight.data = src[2].weight.data[out_idx].clone()


def prune_teacher(teacher: FaceEmbedderNet, config: EmbedderConfig) -> tuple[FaceEmbedderNet, dict[int, torch.Tensor]]:
    """A student initialised from the teacher: per stage keep the channels with the largest BN scale.

    Returns the student and, per kept stage, the teacher channels its channels correspond to (for feature hints).

    Skipped stages (not in ``config.stages``) must keep the shape of the chain: only stages whose input and
    output widths match in the teacher (the 512-wide repeats) may be skipped. The teacher's FC weight restricted
    to the kept channels (D x C x 49) seeds the head: a GDC head takes, per channel, its best rank-1
    approximation (SVD), split into a 7x7 depthwise kernel and a column of the linear layer; a reduced FC head
    takes the best rank-``head_channels`` factorisation across channels (SVD), split into the 1x1 reduction and
    the linear layer; an FC head takes it as it is.
    """
    student = FaceEmbedderNet(config)
    kept: dict[int, torch.Tensor] = {}
    in_idx: torch.Tensor | None = None
    for block, stage, out_ch in zip(student.features, config.stages, config.channels(), strict=True):
        source = teacher.features[stage - 1]
        if stage == 1:
            out_idx = _keep_top(source[1].weight.data, out_ch)
            _slice_unit(source, block, out_idx, None)
        else:
            _slice_unit(source[0], block[0], in_idx, None)  # depthwise: follows its input channels
            out_idx = _keep_top(source[1][1].weight.data, out_ch)
            _slice_unit(source[1], block[1], out_idx, in_idx)
        in_idx = kept[stage] = out_idx
    for name in ("weight", "bias", "running_mean", "running_var"):
        getattr(student.feature_bn, name).data = getattr(teacher.feature_bn, name).data[in_idx].clone()
    fc = teacher.linear.weight.data.reshape(config.embedding_dim, -1, 49)[:, in_idx]  # D x C x 49
    if config.head == "gdc":
        u, s, vt = torch.linalg.svd(fc.permute(1, 0, 2))  # per channel: D x 49
        root = s[:, :1].sqrt()
        student.spatial.weight.data = (vt[:, 0] * root).reshape(-1, 1, 7, 7).clone()
        student.linear.weight.data = (u[:, :, 0] * root).T.contiguous()
    elif config.head_channels:
        rank = config.head_channels
        u, s, vt = torch.linalg.svd(fc.permute(1, 0, 2).reshape(len(in_idx), -1), full_matrices=False)
        root = s[:rank].sqrt()
        student.spatial.weight.data = (u[:, :rank] * root).T.reshape(rank, -1, 1, 1).contiguous()
        mixed = (vt[:rank] * root[:, None]).reshape(rank, config.embedding_dim, 49)  # k x D x 49
        student.linear.weight.data = mixed.permute(1, 0, 2).reshape(config.embedding_dim, -1).contiguous()
    else:
        student.linear.weight.data = fc.reshape(config.embedding_dim, -1).clone()
    student.linear.bias.data = teacher.linear.bias.data.clone()
    student.embedding_bn.load_state_dict(teacher.embedding_bn.state_dict())
    return student, kept
