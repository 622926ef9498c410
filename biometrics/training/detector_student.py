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
    """``widths``: channels of the stride-2, -4, -8, -16 and -32 stages; ``depth``: separable units per stage
    after the first (YuNet: 16, 64, 64, 64, 64 and 1 or 2); ``neck``: FPN and head channels; ``shared_head``:
    one separable unit and one 1x1 conv per level give all four outputs (a quarter of the cost of separate heads
    at stride 8, where most of the time goes)."""

    widths: tuple[int, ...] = (16, 64, 64, 64, 64)
    depth: tuple[int, ...] = (1, 2, 2, 2, 2)
    neck: int = 64
    shared_head: bool = False
    downsample: str = "maxpool"  # or "depthwise": a stride-2 depthwise conv (ORT runs uint8 max-pool slowly)

    def __post_init__(self):
        if len(self.widths) != 5 or len(self.depth) != 5:
            raise ValueError("widths and depth give the stride-2, 4, 8, 16 and 32 stages: five entries each")
        if any(width != self.neck for width in self.widths[2:]):
            raise ValueError("the stride-8, 16 and 32 stages need the neck's width (the FPN adds them)")
        if self.downsample not in ("maxpool", "depthwise"):
            raise ValueError("downsample: maxpool or depthwise")

    def to_dict(self) -> dict:
        return {k: list(v) if isinstance(v, tuple) else v for k, v in asdict(self).items()}


class SeparableUnit(nn.Sequential):
    """1x1 conv (mixes channels), 3x3 depthwise conv (looks around), BN, ReLU: YuNet's building block."""

    def __init__(self, in_ch: int, out_ch: int):
        super().__init__(
            nn.Conv2d(in_ch, out_ch, 1, bias=False),
            nn.Conv2d(out_ch, out_ch, 3, padding=1, groups=out_ch, bias=False),
            nn.BatchNorm2d(out_ch),
            nn.ReLU(inplace=True),
        )


class FaceDetectorNet(nn.Module):
    """BGR 0-255 image (any size, multiple of 32) -> YuNet's twelve outputs."""

    def __init__(self, config: DetectorConfig):
        super().__init__()
        self.config = config
        w, d = config.widths, config.depth
        stem = [nn.Conv2d(3, w[0], 3, 2, 1, bias=False)]
        stem += [nn.BatchNorm2d(w[0]), nn.ReLU(inplace=True)] + [SeparableUnit(w[0], w[0]) for _ in range(d[0])]
        self.stages = nn.ModuleList([nn.Sequential(*stem)])
        for level in range(1, 5):  # strides 4, 8, 16, 32: halve the resolution, then separable units
            if config.downsample == "depthwise":
                down = nn.Conv2d(w[level - 1], w[level - 1], 3, 2, 1, groups=w[level - 1], bias=False)
            else:
                down = nn.MaxPool2d(2)
            units = [down] + [SeparableUnit(w[level - 1] if i == 0 else w[level], w[level]) for i in range(d[level])]
            self.stages.append(nn.Sequential(*units))
        self.lateral = nn.ModuleList([SeparableUnit(w[level], config.neck) for level in (2, 3, 4)])
        if config.shared_head:
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
                    name: nn.ModuleList(
                        [
                            nn.Sequential(
                                nn.Conv2d(config.neck, config.neck, 1),
                                nn.Conv2d(config.neck, channels, 3, padding=1),  # grouped convs run slowly in int8
                            )
                            for _ in STRIDES
                        ]
                    )
                    for name, channels in HEADS.items()
                }
            )

    def pyramid(self, bgr: torch.Tensor) -> list[torch.Tensor]:
        """FPN features at strides 8, 16, 32 (top-down: coarse context is added to the finer levels)."""
        x, features = bgr, []
        for index, stage in enumerate(self.stages):
            x = stage(x)
            if index >= 2:
                features.append(x)
        p3, p4, p5 = features
        n5 = self.lateral[2](p5)
        n4 = self.lateral[1](p4 + F.interpolate(n5, scale_factor=2.0, mode="nearest"))
        n3 = self.lateral[0](p3 + F.interpolate(n4, scale_factor=2.0, mode="nearest"))
        return [n3, n4, n5]

    def raw_outputs(self, bgr: torch.Tensor) -> dict[str, torch.Tensor]:
        """Head outputs before the sigmoid, each N x cells x channels (cells row-major, as the decoder expects)."""
        outputs = {}
        for level, (stride, feature) in enumerate(zip(STRIDES, self.pyramid(bgr), strict=True)):
            if self.config.shared_head:
                parts = self.heads[level](feature).split(list(HEADS.values()), dim=1)
                outputs.update({f"{name}_{stride}": part for name, part in zip(HEADS, parts, strict=True)})
            else:
                outputs.update({f"{name}_{stride}": heads[level](feature) for name, heads in self.heads.items()})
        return {name: output.flatten(2).transpose(1, 2) for name, output in outputs.items()}

    def score_biases(self) -> list[torch.Tensor]:
        """The bias entries of the class and objectness logits (set at the start so scores begin near 0)."""
        if self.config.shared_head:
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
