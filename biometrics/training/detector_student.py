"""The student face detector: YuNet's topology (depthwise-separable backbone, top-down FPN, anchor-free heads at
strides 8/16/32) with width and depth knobs.

It emits YuNet's twelve outputs (``cls_8`` ... ``kps_32``) in YuNet's layout and encoding, so the runtime's
``YuNetDetector`` decodes it unchanged: per cell, sigmoid class and objectness scores, box centre offset and
log size in stride units, and five landmark offsets in stride units.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

import torch
from torch import nn
from torch.nn import functional as F

STRIDES = (8, 16, 32)
HEADS = {"cls": 1, "obj": 1, "bbox": 4, "kps": 10}


@dataclass(frozen=True)
class DetectorConfig:
    """The defaults build YuNet itself (so its ONNX weights load into it, see ``detector_teacher``).

    ``stem``: channels of the first, stride-2 conv; ``units``: per stage (strides 2, 4, 8, 16, 32) the output
    widths of its separable units (stages after the first start with a 2x downsampling); ``neck``: FPN width
    (the last units of the stride-8, 16 and 32 stages must have it: the FPN adds them); ``head``: ``separable``
    (YuNet's: per output a 1x1 conv to its channels and a 3x3 depthwise conv), ``full`` (per output a 1x1 conv
    and a full 3x3 conv) or ``shared`` (per level one separable unit and one 1x1 conv give all four outputs: a
    quarter of the cost at stride 8, where most of the time goes); ``pointwise_bias``: YuNet's 1x1 convs have
    biases (kept so the teacher loads exactly); ``stem_stride``: 2 (YuNet's 3x3 conv) or 4 (a 4x4 conv over
    non-overlapping patches, a space-to-depth stem: the stride-2 stage then runs at stride 4, and stage 1 starts
    without downsampling; YuNet spends a third of its time at stride 2)."""

    stem: int = 16
    units: tuple[tuple[int, ...], ...] = ((16,), (16, 32, 32, 64), (64, 64), (64, 64), (64, 64))
    neck: int = 64
    head: str = "separable"
    downsample: str = "maxpool"  # or "depthwise": a stride-2 depthwise conv (ORT runs uint8 max-pool slowly)
    pointwise_bias: bool = True
    stem_stride: int = 2

    def __post_init__(self):
        object.__setattr__(self, "units", tuple(tuple(stage) for stage in self.units))
        if len(self.units) != 5 or any(not stage for stage in self.units[1:]):
            raise ValueError("units: five stages (strides 2, 4, 8, 16, 32), each after the first with a unit")
        if any(stage[-1] != self.neck for stage in self.units[2:]):
            raise ValueError("the stride-8, 16 and 32 stages need the neck's width (the FPN adds them)")
        if self.downsample not in ("maxpool", "depthwise"):
            raise ValueError("downsample: maxpool or depthwise")
        if self.stem_stride not in (2, 4):
            raise ValueError("stem_stride: 2 or 4")
        if self.head not in HEAD_STYLES:
            raise ValueError(f"head: one of {', '.join(HEAD_STYLES)}")

    def to_dict(self) -> dict:
        return asdict(self)  # tuples become JSON lists when the card is written


HEAD_STYLES = ("separable", "full", "shared")


class SeparableUnit(nn.Sequential):
    """1x1 conv (mixes channels), 3x3 depthwise conv (looks around), BN, ReLU: YuNet's building block."""

    def __init__(self, in_ch: int, out_ch: int, pointwise_bias: bool = False):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 1, bias=pointwise_bias),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, groups=out_ch, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


def _head(style: str, neck: int, channels: int) -> nn.Sequential:
    if style == "separable":
        return nn.Sequential(nn.Conv2d(neck, channels, 1), nn.Conv2d(channels, channels, 3, padding=1, groups=channels))
    return nn.Sequential(
        nn.Conv2d(neck, neck, 1),
        nn.Conv2d(neck, channels, 3, padding=1),  # grouped convs run slowly in int8
    )


class FaceDetectorNet(nn.Module):
    """BGR 0-255 image (any size, multiple of 32) -> YuNet's twelve outputs."""

    def __init__(self, config: DetectorConfig):
        super().__init__()
        self.config = config
        bias = config.pointwise_bias
        if config.stem_stride == 2:
            stem_conv = nn.Conv2d(3, config.stem, 3, 2, 1, bias=False)
        else:
            stem_conv = nn.Conv2d(3, config.stem, 4, 4, bias=False)
        stem = [stem_conv, nn.BatchNorm2d(config.stem), nn.ReLU(inplace=True)]
        width = config.stem
        self.stages = nn.ModuleList()
        for level, stage_units in enumerate(config.units):  # strides 2 (after the stem), 4, 8, 16, 32
            layers = stem if level == 0 else []
            downsamples = level > 1 or (level == 1 and config.stem_stride == 2)
            if downsamples and config.downsample == "depthwise":
                layers.append(nn.Conv2d(width, width, 3, 2, 1, groups=width, bias=False))
            elif downsamples:
                layers.append(nn.MaxPool2d(2))
            for out_ch in stage_units:
                layers.append(SeparableUnit(width, out_ch, bias))
                width = out_ch
            self.stages.append(nn.Sequential(*layers))
        # The stride-8/16/32 stages end at the neck's width (checked by the config), so every lateral reads it.
        self.lateral = nn.ModuleList([SeparableUnit(config.neck, config.neck, bias) for _ in STRIDES])
        if config.head == "shared":
            self.heads = nn.ModuleList(
                [
                    nn.Sequential(
                        SeparableUnit(config.neck, config.neck), nn.Conv2d(config.neck, sum(HEADS.values()), 1)
                    )
                    for _ in STRIDES
                ]
            )
        else:
            self.heads = nn.ModuleDict(
                {
                    name: nn.ModuleList([_head(config.head, config.neck, channels) for _ in STRIDES])
                    for name, channels in HEADS.items()
                }
            )

    def backbone(self, bgr: torch.Tensor) -> list[torch.Tensor]:
        """Every stage's output (strides 2 or 4, then 4, 8, 16, 32)."""
        outputs, x = [], bgr
        for stage in self.stages:
            x = stage(x)
            outputs.append(x)
        return outputs

    def pyramid(self, bgr: torch.Tensor) -> list[torch.Tensor]:
        return self.fpn(self.backbone(bgr))

    def fpn(self, stage_outputs: list[torch.Tensor]) -> list[torch.Tensor]:
        """FPN features at strides 8, 16, 32 (top-down: coarse context is added to the finer levels)."""
        p3, p4, p5 = stage_outputs[2:]
        n5 = self.lateral[2](p5)
        n4 = self.lateral[1](p4 + F.interpolate(n5, scale_factor=2.0, mode="nearest"))
        n3 = self.lateral[0](p3 + F.interpolate(n4, scale_factor=2.0, mode="nearest"))
        return [n3, n4, n5]

    def raw_outputs(self, bgr: torch.Tensor) -> dict[str, torch.Tensor]:
        """Head outputs before the sigmoid, each N x cells x channels (cells row-major, as the decoder expects)."""
        return self.head_outputs(self.pyramid(bgr))

    def head_outputs(self, pyramid: list[torch.Tensor]) -> dict[str, torch.Tensor]:
        """``raw_outputs`` from the FPN features (training also matches the features themselves)."""
        outputs = {}
        for level, (stride, feature) in enumerate(zip(STRIDES, pyramid, strict=True)):
            if self.config.head == "shared":
                parts = self.heads[level](feature).split(list(HEADS.values()), dim=1)
                outputs.update({f"{name}_{stride}": part for name, part in zip(HEADS, parts, strict=True)})
            else:
                outputs.update({f"{name}_{stride}": heads[level](feature) for name, heads in self.heads.items()})
        return {name: output.flatten(2).transpose(1, 2) for name, output in outputs.items()}

    def score_biases(self) -> list[torch.Tensor]:
        """The bias entries of the class and objectness logits (set at the start so scores begin near 0)."""
        if self.config.head == "shared":
            return [head[-1].bias[:2] for head in self.heads]
        return [head[-1].bias for name in ("cls", "obj") for head in self.heads[name]]

    def forward(self, bgr: torch.Tensor) -> tuple[torch.Tensor, ...]:
        """The twelve outputs in YuNet's order and encoding (scores after the sigmoid)."""
        raw = self.raw_outputs(bgr)
        return tuple(
            torch.sigmoid(raw[f"{name}_{s}"]) if name in ("cls", "obj") else raw[f"{name}_{s}"]
            for name in HEADS
            for s in STRIDES
        )


def output_names() -> list[str]:
    return [f"{name}_{stride}" for name in HEADS for stride in STRIDES]
