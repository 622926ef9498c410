"""PyTorch -> ONNX (FP32) -> ONNX Runtime static INT8 (QDQ), and the model cards that go with them.

Exports are atomic per model folder: where a ``card.json`` already vouches for a folder's ``model.onnx`` (its
SHA-256), ``export_onnx`` and ``quantize_int8`` write the new model into ``<folder>/.export-staging/`` and
``write_card`` moves it into place, card last, only once the card is ready. An export that fails on the way
(INT8, the card) leaves the previous model and its card as they were, never a new model beside an old card.
"""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import helper, numpy_helper
from onnxruntime.quantization import (
    CalibrationDataReader,
    CalibrationMethod,
    QuantFormat,
    QuantType,
    quantize_static,
)
from onnxruntime.quantization.shape_inference import quant_pre_process

from biometrics.evaluation.complexity import count_macs, count_parameters
from biometrics.files import replacing
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


STAGING = ".export-staging"


def staged_path(path: Path) -> Path:
    """Where an export of ``path`` waits until ``write_card`` moves it into place."""
    return path.parent / STAGING / path.name


def current_model(path: Path) -> Path:
    """The newest export of ``path``: its staged copy if there is one (not yet carded), else ``path``."""
    staged = staged_path(path)
    return staged if staged.is_file() else path


def _output_path(path: Path) -> Path:
    """Where an export writes ``path``: into staging beside a card that vouches for the present model (the card
    must not be left describing another file), straight to ``path`` where there is no card to contradict."""
    staged = staged_path(path)
    if (path.parent / "card.json").is_file():
        staged.parent.mkdir(parents=True, exist_ok=True)
        return staged
    staged.unlink(missing_ok=True)  # left by an export that failed: not this one's
    path.parent.mkdir(parents=True, exist_ok=True)
    return path


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
    batch axis; a detector passes its own names and dynamic height and width. Returns ``path``; the file may
    wait in staging until ``write_card`` (see the module's docstring)."""
    net = net.eval().to(memory_format=torch.contiguous_format)
    if dynamic_axes is None:
        dynamic_axes = {input_name: {0: "batch"}, **{name: {0: "batch"} for name in output_names}}
    with replacing(_output_path(path)) as partial:
        torch.onnx.export(
            net,
            torch.zeros(*example_shape),
            str(partial),
            input_names=[input_name],
            output_names=list(output_names),
            dynamic_axes=dynamic_axes,
            opset_version=17,
            dynamo=False,
        )
        model = prelu_as_elementwise(onnx.load(str(partial)))
        onnx.checker.check_model(model)
        onnx.save(model, str(partial))
    return path


PRELU_NODE_SUFFIXES = ("/prelu_slope_minus_one", "/prelu_negative", "/prelu_scale", "/prelu_add")


def prelu_as_elementwise(model: onnx.ModelProto) -> onnx.ModelProto:
    """Every PRelu(x, a) rewritten as x + (a - 1) * min(x, 0): the same function in element-wise ops (ONNX
    Runtime folds a - 1 into a constant when the session starts).

    ONNX Runtime's PRelu kernel is slow on real activations: on aligned faces our student spent more time in
    its 27 PRelus than in all its convs, and three times what it spent on random input. The rewrite took the
    FP32 student from 8.0 to 3.2 ms a face (``scripts/prelu_latency.py``)."""
    nodes = []
    for node in model.graph.node:
        if node.op_type != "PRelu":
            nodes.append(node)
            continue
        x, slope, out = node.input[0], node.input[1], node.output[0]
        names = [node.name + suffix for suffix in PRELU_NODE_SUFFIXES]
        nodes += [
            helper.make_node("Sub", [slope, "prelu_one"], [f"{out}_slope_minus_one"], name=names[0]),
            helper.make_node("Min", [x, "prelu_zero"], [f"{out}_negative"], name=names[1]),
            helper.make_node("Mul", [f"{out}_negative", f"{out}_slope_minus_one"], [f"{out}_scaled"], name=names[2]),
            helper.make_node("Add", [x, f"{out}_scaled"], [out], name=names[3]),
        ]
    if len(nodes) != len(model.graph.node):
        for name, value in (("prelu_zero", 0.0), ("prelu_one", 1.0)):
            model.graph.initializer.append(numpy_helper.from_array(np.array(value, np.float32), name))
        del model.graph.node[:]
        model.graph.node.extend(nodes)
    return model


def crops_to_inputs(crops: np.ndarray) -> np.ndarray:
    """Aligned BGR uint8 crops (N x H x W x 3) -> the embedders' input: N x 3 x H x W RGB float 0-255."""
    return np.ascontiguousarray(crops[:, :, :, ::-1].transpose(0, 3, 1, 2), dtype=np.float32)


class _InputReader(CalibrationDataReader):
    """Feeds network inputs (each 3 x H x W, ready to run) to the calibrator one at a time, within the range
    ONNX Runtime sets (``CalibStridedMinMax`` calibrates chunk by chunk)."""

    def __init__(self, input_name: str, inputs):
        self._input_name = input_name
        self._inputs = inputs
        self.set_range(0, len(inputs))

    def __len__(self) -> int:
        return len(self._inputs)

    def set_range(self, start_index: int, end_index: int) -> None:
        self._positions = iter(range(start_index, min(end_index, len(self._inputs))))

    def get_next(self) -> dict | None:
        position = next(self._positions, None)
        return None if position is None else {self._input_name: np.asarray(self._inputs[position], np.float32)[None]}


KEEP_FP32 = ("first_conv", "head", "depthwise")
CALIBRATION_CHUNK = 32  # at most this many calibration inputs' activations are held at once


def calibration_chunk(count: int) -> int:
    """The largest chunk of at most ``CALIBRATION_CHUNK`` inputs that divides ``count`` (ORT requires it)."""
    return max(size for size in range(1, min(count, CALIBRATION_CHUNK) + 1) if count % size == 0)


def fp32_nodes(model: onnx.ModelProto, keep: list[str]) -> list[str]:
    """Names of the nodes that ``keep`` (entries of ``KEEP_FP32``) asks to leave in FP32.

    "head" is everything after the last activation (ReLU, PReLU or its element-wise form): the embedding
    layers, where quantization error is not averaged away by later layers. "depthwise": every grouped conv,
    which ONNX Runtime's uint8 kernels run slower than FP32 below 128 channels on our CPU
    (``scripts/int8_layer_latency.py``). The element-wise PReLU ops (``prelu_as_elementwise``) always stay in
    FP32: in a trial, quantizing them moved the student's embedding further from FP32 and ran no faster.
    """
    unknown = set(keep) - set(KEEP_FP32)
    if unknown:
        raise ValueError(f"unknown keep_fp32 entries: {sorted(unknown)} ({', '.join(KEEP_FP32)})")
    nodes = list(model.graph.node)
    names = [node.name for node in nodes if node.name.endswith(PRELU_NODE_SUFFIXES)]
    if "first_conv" in keep:
        names.append(next(node.name for node in nodes if node.op_type == "Conv"))
    if "depthwise" in keep:
        grouped = lambda node: any(a.name == "group" and a.i > 1 for a in node.attribute)  # noqa: E731
        names += [node.name for node in nodes if node.op_type == "Conv" and grouped(node)]
    if "head" in keep:
        last_activation = max(
            i
            for i, node in enumerate(nodes)
            if node.op_type in ("Relu", "PRelu") or node.name.endswith(PRELU_NODE_SUFFIXES[-1])
        )
        names += [node.name for node in nodes[last_activation + 1 :] if node.op_type != "Constant"]
    return names


def quantize_int8(
    fp32_path: Path,
    int8_path: Path,
    calibration_inputs,
    *,
    per_channel: bool = True,
    keep_fp32: list[str] | None = None,
    percentile: float | None = None,
    exclude_nodes: list[str] | None = None,
    signed_activations: bool = False,
    symmetric_activations: bool = False,
    operator_format: bool = False,
    reduce_range: bool = False,
) -> Path:
    """Static INT8 with ONNX Runtime; by default QDQ format, per-channel int8 weights, uint8 activations.

    ``calibration_inputs``: network inputs (3 x H x W each) from training data only, never evaluation images.
    ``keep_fp32`` (entries of ``KEEP_FP32``) leaves those layers in FP32: on our embedder student that recovered
    all of INT8's LFW loss for 0.3 MB. ``percentile``: activation ranges clip at that percentile of the
    calibration values instead of their min and max, so a few extreme activations do not coarsen the step for
    all the others. ``exclude_nodes`` (node names) stay FP32 too. The last three switch to ORT's other INT8
    schemes (int8 activations, activations symmetric about zero, QLinear operators instead of QDQ pairs), which
    the recipes do not use: ``scripts/int8_variants.py`` times them against ours. ``reduce_range``: 7-bit weights,
    whose 8-bit products cannot saturate the 16-bit sums of AVX2 CPUs without VNNI (``scripts/int8_calibration.py``
    measures what that costs and saves). Reads the newest export of
    ``fp32_path`` and, like ``export_onnx``, may leave ``int8_path`` in staging until ``write_card``.
    """
    fp32_path = current_model(fp32_path)
    out = _output_path(int8_path)
    fp32_model = onnx.load(str(fp32_path))
    extra_options = {"ActivationSymmetric": symmetric_activations}
    if percentile is not None:
        # The histogram calibrator otherwise holds every activation of every input until it bins them (15 GB
        # for 256 faces through the embedder student); chunk by chunk, the histograms merge.
        extra_options |= {
            "CalibPercentile": percentile,
            "CalibStridedMinMax": calibration_chunk(len(calibration_inputs)),
        }
    preprocessed = out.with_suffix(".pre.onnx")
    quant_pre_process(str(fp32_path), str(preprocessed), skip_symbolic_shape=True)
    try:
        with replacing(out) as partial:
            quantize_static(
                str(preprocessed),
                str(partial),
                _InputReader(fp32_model.graph.input[0].name, calibration_inputs),
                quant_format=QuantFormat.QOperator if operator_format else QuantFormat.QDQ,
                per_channel=per_channel,
                activation_type=QuantType.QInt8 if signed_activations else QuantType.QUInt8,
                weight_type=QuantType.QInt8,
                nodes_to_exclude=fp32_nodes(fp32_model, keep_fp32 or []) + list(exclude_nodes or []),
                calibrate_method=CalibrationMethod.MinMax if percentile is None else CalibrationMethod.Percentile,
                reduce_range=reduce_range,
                extra_options=extra_options,
            )
    finally:
        preprocessed.unlink(missing_ok=True)
    return int8_path


DATASET_TERMS = {
    "celeba": "CelebA (non-commercial research use only)",
    "utkface": "UTKFace (non-commercial research use only)",
}
"""Training sets whose terms bind more than our Apache-2.0 code does (from ../shared/README.md)."""


def training_data_terms(data: dict) -> dict:
    """A card's ``licence_note`` from a recipe's ``data`` block: the weights were learnt from images whose terms
    limit their use."""
    terms = [terms for name, terms in DATASET_TERMS.items() if name in data]
    if not terms:
        return {}
    note = f"trained on {' and '.join(terms)}: check those terms before any commercial use of these weights"
    return {"licence_note": note}


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

    ``interface``: task, architecture, input description and bench input shape (the runtime reads these). A
    model waiting in staging (see the module's docstring) is described, then moved into place with the card:
    the other staged files first, the model, the card last."""
    source_path = current_model(model_path)
    model = onnx.load(str(source_path))
    card = {
        "name": name,
        "task": interface["task"],
        "architecture": interface["architecture"],
        "description": description,
        "origin": f"trained by this project: `biometrics distill {recipe.get('_path', '')}`".strip(),
        "licence": "Apache-2.0",
        **training_data_terms(recipe.get("data", {})),
        "precision": precision,
        "source": {
            "file": model_path.name,
            "sha256": sha256_file(source_path),
            "obtain": f"shipped with biometrics (models/{name}/): reinstall the package; from a source checkout, "
            f"rebuild with `biometrics distill {recipe.get('_path', '')}`",
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
            "file_size_bytes": os.path.getsize(source_path),
        },
    }
    card_path = model_path.parent / "card.json"
    previous = json.loads(card_path.read_text()) if card_path.is_file() else {}
    if previous.get("source", {}).get("sha256") == card["source"]["sha256"]:
        for kept in ("threshold", "measured"):  # still true of this very file
            if kept in previous:
                card[kept] = previous[kept]
    staging = staged_path(model_path).parent
    # The card goes in last: a run killed before that leaves the old card, whose checksum refuses the new file.
    with replacing(card_path) as written:
        written.write_text(json.dumps(card, indent=2) + "\n")
        if source_path != model_path:
            for path in sorted(staging.iterdir()):
                if path.is_file() and path != source_path:
                    os.replace(path, model_path.parent / path.name)
            os.replace(source_path, model_path)
    shutil.rmtree(staging, ignore_errors=True)
    return card_path
