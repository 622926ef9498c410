"""Quantization-aware fine-tuning: the student trains while its forward pass rounds the way ONNX Runtime's INT8
build of it will (``export.quantize_int8``), so its weights settle where that rounding costs least.

Simulated, for every conv unit the INT8 build quantizes (all but the first conv; the GDC head, the PReLUs and
the embedding layers stay FP32, as ``keep_fp32: [first_conv, head]`` and the element-wise PReLU leave them):
the conv's weight with its BatchNorm folded in, rounded per output channel to int8 with ORT's symmetric scale
(max|w| / 127); its input and its BatchNorm'd output rounded per tensor to uint8 over a range fixed at the
start from calibration faces, at the percentiles ORT's calibrator uses. Gradients pass the rounding unchanged
(straight-through). BatchNorm statistics stay frozen: the INT8 build folds them.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np
import torch
from torch import nn

from biometrics.training.student import FaceEmbedderNet, QuantizableConv2d

SAMPLES_PER_TENSOR = 200_000  # activation values kept per tensor and batch for the percentile ranges
HISTOGRAM_BINS = 2048  # as ORT's HistogramCalibrater


def _quantized_units(net: FaceEmbedderNet) -> list[tuple[QuantizableConv2d, nn.BatchNorm2d]]:
    """(conv, its BatchNorm) of every conv unit the INT8 build quantizes: all of ``features`` but the first."""
    units = [
        (module[0], module[1])
        for module in net.features.modules()
        if isinstance(module, nn.Sequential) and module and isinstance(module[0], QuantizableConv2d)
    ]
    return units[1:]


def _uint8_range(samples: np.ndarray, percentile: float) -> tuple[float, float]:
    """The uint8 range ORT's calibrators give: min and max (p = 100), else its percentile method: a 2,048-bin
    histogram, (100 - p) / 2 percent cut from each tail at bin edges; then widened to hold 0. ``samples``: the
    values, with the exact extremes among them."""
    low, high = float(samples.min()), float(samples.max())
    if percentile < 100:
        hist, edges = np.histogram(samples, bins=HISTOGRAM_BINS)
        cdf = np.cumsum(hist / hist.sum())
        cut = (100 - percentile) / 200
        low = max(low, float(edges[np.searchsorted(cdf, cut)]))
        high = min(high, float(edges[np.searchsorted(cdf, 1 - cut)]))
    return min(low, 0.0), max(high, 0.0)


@torch.no_grad()
def activation_ranges(
    net: FaceEmbedderNet, calibration: torch.Tensor, percentile: float, batch_size: int = 32
) -> dict[nn.Module, tuple[float, float]]:
    """Per quantized conv (its input) and per BatchNorm after it (its output): the uint8 range."""
    units = _quantized_units(net)
    samples: dict[nn.Module, list[np.ndarray]] = {m: [] for unit in units for m in unit}
    rng = np.random.default_rng(0)

    def keep(module, values: torch.Tensor) -> None:
        flat = values.detach().flatten().numpy()
        chosen = rng.choice(flat, min(len(flat), SAMPLES_PER_TENSOR), replace=False)
        samples[module].append(np.append(chosen, [flat.min(), flat.max()]))

    handles = [conv.register_forward_pre_hook(lambda m, args: keep(m, args[0])) for conv, _ in units]
    handles += [bn.register_forward_hook(lambda m, args, out: keep(m, out)) for _, bn in units]
    net.eval()
    try:
        for start in range(0, len(calibration), batch_size):
            net(calibration[start : start + batch_size])
    finally:
        for handle in handles:
            handle.remove()
    return {module: _uint8_range(np.concatenate(values), percentile) for module, values in samples.items()}


def _round_uint8(x: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    low, high = value_range
    scale = max((high - low) / 255, 1e-8)
    return torch.fake_quantize_per_tensor_affine(x, scale, int(round(-low / scale)), 0, 255)


def _round_folded_weight(weight: torch.Tensor, bn: nn.BatchNorm2d) -> torch.Tensor:
    """The weight as the INT8 build stores it: BatchNorm's scale folded in, int8 per output channel, unfolded."""
    fold = (bn.weight / torch.sqrt(bn.running_var + bn.eps)).detach().view(-1, 1, 1, 1)
    folded = weight * fold
    scale = (folded.detach().abs().amax(dim=(1, 2, 3)) / 127).clamp_min(1e-12)
    zero = torch.zeros(len(scale), dtype=torch.int32)
    return torch.fake_quantize_per_channel_affine(folded, scale, zero, 0, -127, 127) / fold


def simulate_int8(net: FaceEmbedderNet, calibration: torch.Tensor, percentile: float = 99.99) -> Callable[[], None]:
    """Make ``net`` compute as its INT8 build will (ranges from ``calibration``, network inputs); returns the
    function that makes it plain FP32 again (before export)."""
    ranges = activation_ranges(net, calibration, percentile)
    units, handles = _quantized_units(net), []
    for conv, bn in units:
        conv.simulation = (partial(_round_folded_weight, bn=bn), partial(_round_uint8, value_range=ranges[conv]))
        handles.append(bn.register_forward_hook(partial(_round_output, value_range=ranges[bn])))

    def undo() -> None:
        for conv, _ in units:
            conv.simulation = None
        for handle in handles:
            handle.remove()

    return undo


def _round_output(module: nn.Module, args, output: torch.Tensor, value_range: tuple[float, float]) -> torch.Tensor:
    return _round_uint8(output, value_range)


def freeze_batchnorm(net: nn.Module) -> None:
    """BatchNorm layers back in eval mode (frozen statistics) after ``net.train()``."""
    for module in net.modules():
        if isinstance(module, nn.modules.batchnorm._BatchNorm):
            module.eval()
