"""PyTorch -> ONNX (FP32) -> ONNX Runtime static INT8 (QDQ), and the model cards that go with them."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import onnx
import torch
from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static
from onnxruntime.quantization.shape_inference import quant_pre_process

from biometrics.evaluation.efficiency import count_macs, count_parameters
from biometrics.registry import sha256_file

EMBEDDER_INTERFACE = {
    "task": "embedding",
    "architecture": "arcface112",
    "input": {
        "size": [112, 112],
        "layout": "NCHW",
        "channel_order": "RGB",
        "range": "0-255; the graph normalises (x - 127.5) / 128",
        "alignment": "arcface-5pt-112",
    },
    "bench_input_shape": [1, 3, 112, 112],
}


def export_onnx(
    net: torch.nn.Module,
    path: Path,
    *,
    example_shape: tuple[int, ...] = (1, 3, 112, 112),
    input_name: str = "data",
    output_names: tuple[str, ...] = ("embedding",),
    dynamic_axes: dict | None = None,
) -> Path:
    """FP32 ONNX (opset 17). The defaults are our embedders': input ``data`` Nx3x112x112 RGB 0-255, a dynamic
    batch axis; a detector passes its own names and dynamic height and width."""
    path.parent.mkdir(parents=True, exist_ok=True)
    net = net.eval().to(memory_format=torch.contiguous_format)
    if dynamic_axes is None:
        dynamic_axes = {input_name: {0: "batch"}, **{name: {0: "batch"} for name in output_names}}
    torch.onnx.export(
        net,
        torch.zeros(*example_shape),
        str(path),
        input_names=[input_name],
        output_names=list(output_names),
        dynamic_axes=dynamic_axes,
        opset_version=17,
        dynamo=False,
    )
    onnx.checker.check_model(onnx.load(str(path)))
    return path


def crops_to_inputs(crops: np.ndarray) -> np.ndarray:
    """Aligned BGR uint8 crops (N x H x W x 3) -> the embedders' input: N x 3 x H x W RGB float 0-255."""
    return np.ascontiguousarray(crops[:, :, :, ::-1].transpose(0, 3, 1, 2), dtype=np.float32)


class _InputReader(CalibrationDataReader):
    """Feeds network inputs (each 3 x H x W, ready to run) to the calibrator one at a time."""

    def __init__(self, input_name: str, inputs):
        self._input_name = input_name
        self._inputs = iter(inputs)

    def get_next(self) -> dict | None:
        item = next(self._inputs, None)
        return None if item is None else {self._input_name: np.asarray(item, np.float32)[None]}


def fp32_nodes(model: onnx.ModelProto, keep: list[str]) -> list[str]:
    """Names of the nodes that ``keep`` ("first_conv", "head") asks to leave in FP32.

    "head" is everything after the last activation (ReLU or PReLU): the embedding layers, where quantization
    error is not averaged away by later layers.
    """
    unknown = set(keep) - {"first_conv", "head"}
    if unknown:
        raise ValueError(f"unknown keep_fp32 entries: {sorted(unknown)} (first_conv, head)")
    nodes = list(model.graph.node)
    names = []
    if "first_conv" in keep:
        names.append(next(node.name for node in nodes if node.op_type == "Conv"))
    if "head" in keep:
        last_activation = max(i for i, node in enumerate(nodes) if node.op_type in ("Relu", "PRelu"))
        names += [node.name for node in nodes[last_activation + 1 :] if node.op_type != "Constant"]
    return names


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    calibration_inputs,
    *,
    per_channel: bool = True,
    keep_fp32: list[str] | None = None,
) -> Path:
    """Static INT8 with ONNX Runtime: QDQ format, per-channel int8 weights, uint8 activations.

    ``calibration_inputs``: network inputs (3 x H x W each) from training data only, never evaluation images.
    ``keep_fp32`` ("first_conv", "head") leaves those layers in FP32: on our embedder student that recovered
    all of INT8's LFW loss for 0.3 MB.
    """
    int8_path.parent.mkdir(parents=True, exist_ok=True)
    preprocessed = int8_path.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_path), str(preprocessed), skip_symbolic_shape=True)
    try:
        quantize_static(
            str(preprocessed),
            str(int8_path),
            _InputReader(onnx.load(str(fp32_path)).graph.input[0].name, calibration_inputs),
            quant_format=QuantFormat.QDQ,
            per_channel=per_channel,
            activation_type=QuantType.QUInt8,
            weight_type=QuantType.QInt8,
            nodes_to_exclude=fp32_nodes(onnx.load(str(fp32_path)), keep_fp32 or []),
        )
    finally:
        preprocessed.unlink(missing_ok=True)
    return int8_path


def write_card(
    model_path: Path,
    *,
    name: str,
    description: str,
    recipe: dict,
    data_split: dict,
    teacher: str,
    training: dict,
    precision: str,
    interface: dict = EMBEDDER_INTERFACE,
) -> Path:
    """``card.json`` beside the model: what it is, how it was made, its size and its checksum.

    ``interface``: task, architecture, input description and bench input shape (the runtime reads these)."""
    model = onnx.load(str(model_path))
    card = {
        "name": name,
        "task": interface["task"],
        "architecture": interface["architecture"],
        "description": description,
        "origin": f"trained by this project: `biometrics distill {recipe.get('_path', '')}`".strip(),
        "licence": "Apache-2.0",
        "precision": precision,
        "source": {
            "file": model_path.name,
            "sha256": sha256_file(model_path),
            "obtain": f"shipped in models/{name}/; rebuild with `biometrics distill {recipe.get('_path', '')}`",
        },
        "input": interface["input"],
        "bench_input_shape": interface["bench_input_shape"],
        "teacher": teacher,
        "data_split": data_split,
        "recipe": {k: v for k, v in recipe.items() if not k.startswith("_")},
        "training": training,
        "size": {
            "parameters": count_parameters(model),
            "macs": count_macs(model, {model.graph.input[0].name: interface["bench_input_shape"]}),
            "file_size_bytes": os.path.getsize(model_path),
        },
    }
    card_path = model_path.parent / "card.json"
    previous = json.loads(card_path.read_text()) if card_path.is_file() else {}
    if previous.get("source", {}).get("sha256") == card["source"]["sha256"]:
        for kept in ("threshold", "measured"):  # still true of this very file
            if kept in previous:
                card[kept] = previous[kept]
    card_path.write_text(json.dumps(card, indent=2) + "\n")
    return card_path
