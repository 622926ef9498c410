"""Graph fixes that make published ONNX files run in ONNX Runtime; applied once, then cached."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import onnx
from onnx import numpy_helper


def _keep_inputs(model: onnx.ModelProto, keep: Callable[[str], bool]) -> onnx.ModelProto:
    kept = [graph_input for graph_input in model.graph.input if keep(graph_input.name)]
    del model.graph.input[:]
    model.graph.input.extend(kept)
    return model


def remove_unused_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Drop graph inputs that no node reads (ONNX Runtime refuses SFace's file because of them)."""
    used = {name for node in model.graph.node for name in node.input}
    used |= {output.name for output in model.graph.output}
    return _keep_inputs(model, lambda name: name in used)


def remove_initializer_inputs(model: onnx.ModelProto) -> onnx.ModelProto:
    """Stop listing weights as graph inputs (old exporters did): ONNX Runtime must treat such a weight as
    overridable, so it cannot fold it into the graph (UltraFace runs 3x faster without them)."""
    initializer_names = {init.name for init in model.graph.initializer}
    return _keep_inputs(model, lambda name: name not in initializer_names)


def _dequantize(
    quantized: np.ndarray, scale: np.ndarray, zero_point: np.ndarray | None, axis: int, block_size: int
) -> np.ndarray:
    """DequantizeLinear semantics: per-tensor, per-axis or blocked along ``axis``."""
    values = quantized.astype(np.float32)
    zero = np.zeros_like(scale, dtype=np.float32) if zero_point is None else zero_point.astype(np.float32)
    scale = scale.astype(np.float32)
    if scale.ndim == 0 or scale.size == 1:
        return (values - zero.reshape(())) * scale.reshape(())
    axis = axis % values.ndim
    if block_size > 0:
        scale = np.repeat(scale, block_size, axis=axis).take(range(values.shape[axis]), axis=axis)
        zero = np.repeat(zero, block_size, axis=axis).take(range(values.shape[axis]), axis=axis)
        return (values - zero) * scale
    shape = [1] * values.ndim
    shape[axis] = -1
    return (values - zero.reshape(shape)) * scale.reshape(shape)


def dequantize_weights(model: onnx.ModelProto) -> onnx.ModelProto:
    """Replace every DequantizeLinear whose inputs are all constants by its FP32 result.

    YuNet's int8 file dequantizes a bias in a form ONNX Runtime rejects; folding the weights back to FP32
    makes it run (and run faster, since its QDQ pattern has no fused int8 kernels).
    """
    initializers = {init.name: init for init in model.graph.initializer}
    kept_nodes, folded = [], []
    for node in model.graph.node:
        inputs = [name for name in node.input if name]
        if node.op_type != "DequantizeLinear" or not all(name in initializers for name in inputs):
            kept_nodes.append(node)
            continue
        attrs = {attr.name: onnx.helper.get_attribute_value(attr) for attr in node.attribute}
        arrays = [numpy_helper.to_array(initializers[name]) for name in inputs]
        zero_point = arrays[2] if len(arrays) > 2 else None
        result = _dequantize(arrays[0], arrays[1], zero_point, attrs.get("axis", 1), attrs.get("block_size", 0))
        folded.append(numpy_helper.from_array(result.astype(np.float32), node.output[0]))
    del model.graph.node[:]
    model.graph.node.extend(kept_nodes)
    model.graph.initializer.extend(folded)
    return _drop_unreferenced_initializers(remove_unused_inputs(model))


def _drop_unreferenced_initializers(model: onnx.ModelProto) -> onnx.ModelProto:
    used = {name for node in model.graph.node for name in node.input}
    keep = [init for init in model.graph.initializer if init.name in used]
    del model.graph.initializer[:]
    model.graph.initializer.extend(keep)
    return model


def _make_dims_symbolic(model: onnx.ModelProto, axes: dict[int, str]) -> onnx.ModelProto:
    initializer_names = {init.name for init in model.graph.initializer}
    for graph_input in model.graph.input:
        if graph_input.name in initializer_names:
            continue
        dims = graph_input.type.tensor_type.shape.dim
        for axis, symbol in axes.items():
            dims[axis].Clear()
            dims[axis].dim_param = symbol
    for graph_output in model.graph.output:
        for dim in graph_output.type.tensor_type.shape.dim:
            dim.Clear()
    del model.graph.value_info[:]
    return model


def dynamic_batch(model: onnx.ModelProto) -> onnx.ModelProto:
    """Let the first axis vary so embeddings can be computed in batches."""
    return _make_dims_symbolic(model, {0: "batch"})


def dynamic_input_size(model: onnx.ModelProto) -> onnx.ModelProto:
    """Let batch, height and width vary: a fully convolutional detector then runs at any size."""
    return _make_dims_symbolic(model, {0: "batch", 2: "height", 3: "width"})


PREPARE_STEPS: dict[str, Callable[[onnx.ModelProto], onnx.ModelProto]] = {
    "remove_unused_inputs": remove_unused_inputs,
    "remove_initializer_inputs": remove_initializer_inputs,
    "dequantize_weights": dequantize_weights,
    "dynamic_batch": dynamic_batch,
    "dynamic_input_size": dynamic_input_size,
}


def prepare(model_bytes: bytes, steps: list[str]) -> bytes:
    """Apply the named preparation steps (from a model card) and return the serialized model."""
    unknown = [step for step in steps if step not in PREPARE_STEPS]
    if unknown:
        raise ValueError(f"unknown model preparation step(s): {', '.join(unknown)}")
    model = onnx.load_from_string(model_bytes)
    for step in steps:
        model = PREPARE_STEPS[step](model)
    onnx.checker.check_model(model)
    return model.SerializeToString()
