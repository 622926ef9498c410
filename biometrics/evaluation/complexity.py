"""How big an ONNX model is, read from its graph: learned parameters and multiply-accumulates (MACs) per forward
pass. Static analysis, no timing: ``efficiency`` puts these beside the measured latency on a model's card."""

from __future__ import annotations

import math
from collections.abc import Iterator
from typing import Any

import numpy as np
import onnx
from onnx import TensorProto, numpy_helper

from biometrics.runtime import create_session

# ONNX Runtime's input type names -> the NumPy dtype to feed them (the MAC count's probe run, the timing)
ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


# ----------------------------------------------------------------------------------------------------------
# Parameter count
# ----------------------------------------------------------------------------------------------------------

# Input slots that hold quantization parameters, running statistics or shape/axes/attribute-like values rather
# than learned weights. A tensor is counted when at least one node reads it through a slot *not* listed here.
_NON_WEIGHT_SLOTS: dict[str, frozenset[int]] = {
    op: frozenset(slots)
    for op, slots in {
        "QuantizeLinear": {1, 2},
        "DequantizeLinear": {1, 2},
        "QLinearConv": {1, 2, 4, 5, 6, 7},
        "QLinearMatMul": {1, 2, 4, 5, 6, 7},
        "ConvInteger": {2, 3},
        "MatMulInteger": {2, 3},
        "BatchNormalization": {3, 4},  # running mean / variance: statistics, not learned (as in PyTorch)
        "Reshape": {1},
        "Resize": {1, 2, 3},
        "Upsample": {1},
        "Slice": {1, 2, 3, 4},
        "Expand": {1},
        "Tile": {1},
        "Pad": {1, 2, 3},
        "Squeeze": {1},
        "Unsqueeze": {1},
        "Split": {1},
        "TopK": {1},
        "Clip": {1, 2},
        "Dropout": {1, 2},
        "ConstantOfShape": {0},
        "Range": {0, 1, 2},
        "Gather": {1},
        "GatherElements": {1},
        "GatherND": {1},
        "ScatterND": {1},
        "ScatterElements": {1},
        "OneHot": {0, 1, 2},
        "CumSum": {1},
        "NonMaxSuppression": {2, 3, 4},
        "ReduceMean": {1},
        "ReduceSum": {1},
        "ReduceMax": {1},
        "ReduceMin": {1},
        "ReduceProd": {1},
        "ReduceL1": {1},
        "ReduceL2": {1},
        "ReduceLogSumExp": {1},
        "ReduceSumSquare": {1},
    }.items()
}

# Integer index/shape types are never weights; int8/uint8/int4/int16/int32 (quantized weights and biases) are.
_NEVER_WEIGHT_TYPES = frozenset({TensorProto.INT64, TensorProto.UINT64, TensorProto.BOOL, TensorProto.STRING})


def _graphs(graph: onnx.GraphProto) -> Iterator[onnx.GraphProto]:
    """The graph and every subgraph (If/Loop/Scan bodies), which may hold weights of their own."""
    yield graph
    for node in graph.node:
        for attr in node.attribute:
            if attr.type == onnx.AttributeProto.GRAPH:
                yield from _graphs(attr.g)
            elif attr.type == onnx.AttributeProto.GRAPHS:
                for sub in attr.graphs:
                    yield from _graphs(sub)


def _constant_tensor(node: onnx.NodeProto) -> tuple[int, int] | None:
    """(elem_type, element count) of a Constant node's value, or None for scalars/strings/sparse values."""
    for attr in node.attribute:
        if attr.name == "value":
            return attr.t.data_type, math.prod(attr.t.dims)
        if attr.name == "value_floats":
            return TensorProto.FLOAT, len(attr.floats)
        if attr.name == "value_ints":
            return TensorProto.INT64, len(attr.ints)
    return None


def count_parameters(model: onnx.ModelProto) -> int:
    """Number of stored learned weights (elements, not bytes), however they are quantized.

    Counted: float initializers and int8/uint8/int4/int16/int32 initializers (quantized weights and biases)
    that some node reads as a weight, plus float/int8 ``Constant`` values. Not counted: QuantizeLinear /
    DequantizeLinear scales and zero points (and those of QLinear*/…Integer ops), BatchNormalization running
    mean/variance, int64/bool tensors, shape/axes/pads/scales inputs of Reshape/Resize/Slice/…, tensors no
    node reads, and any tensor with a single element (preprocessing scalars, thresholds) so that initializers
    and Constants follow the same rule. An INT8 QDQ model therefore reports the same count as its FP32 source.
    """
    weight_reads: set[str] = set()
    for graph in _graphs(model.graph):
        for node in graph.node:
            skip = _NON_WEIGHT_SLOTS.get(node.op_type, frozenset())
            weight_reads.update(name for slot, name in enumerate(node.input) if name and slot not in skip)

    total = 0
    seen: set[str] = set()
    for graph in _graphs(model.graph):
        candidates: list[tuple[str, int, int]] = [
            (init.name, init.data_type, math.prod(init.dims)) for init in graph.initializer
        ]
        for node in graph.node:
            if node.op_type == "Constant" and node.output and (value := _constant_tensor(node)) is not None:
                candidates.append((node.output[0], *value))
        for name, elem_type, count in candidates:
            if name in seen or name not in weight_reads or elem_type in _NEVER_WEIGHT_TYPES or count <= 1:
                continue
            seen.add(name)
            total += count
    return total


# ----------------------------------------------------------------------------------------------------------
# MAC count
# ----------------------------------------------------------------------------------------------------------

# op_type -> (data input slot, weight input slot); weight shape gives the kernel, data shape gives Cin.
_CONV_SLOTS = {"Conv": (0, 1), "ConvInteger": (0, 1), "QLinearConv": (0, 3), "FusedConv": (0, 1)}
_MATMUL_A_SLOT = {"MatMul": 0, "MatMulInteger": 0, "QLinearMatMul": 0}


class _Shapes:
    """Concrete shapes of a shape-inferred graph, with a fallback that follows weights to their source."""

    def __init__(self, graph: onnx.GraphProto) -> None:
        self.shapes: dict[str, list[int] | None] = {}
        for info in [*graph.input, *graph.value_info, *graph.output]:
            tensor_type = info.type.tensor_type
            if not tensor_type.HasField("shape"):
                continue
            dims = tensor_type.shape.dim
            shape = [d.dim_value if d.HasField("dim_value") else None for d in dims]
            self.shapes[info.name] = None if None in shape else shape  # type: ignore[assignment]
        self.values: dict[str, np.ndarray] = {}
        for init in graph.initializer:
            self.shapes[init.name] = list(init.dims)
            if init.data_type == TensorProto.INT64 and math.prod(init.dims) <= 16:
                self.values[init.name] = numpy_helper.to_array(init)
        self.producer: dict[str, onnx.NodeProto] = {}
        for node in graph.node:
            for out in node.output:
                self.producer[out] = node
            if node.op_type == "Constant":
                for attr in node.attribute:
                    if attr.name == "value" and attr.t.data_type == TensorProto.INT64:
                        self.values[node.output[0]] = numpy_helper.to_array(attr.t)
                    elif attr.name == "value_ints":
                        self.values[node.output[0]] = np.array(attr.ints, dtype=np.int64)

    def get(self, name: str, depth: int = 0) -> list[int] | None:
        """Shape of ``name``; if inference left it unknown, derive it through DequantizeLinear/Reshape/…"""
        shape = self.shapes.get(name)
        if shape is not None or depth > 8 or name not in self.producer:
            return shape
        node = self.producer[name]
        if node.op_type in ("DequantizeLinear", "QuantizeLinear", "Identity", "Cast"):
            return self.get(node.input[0], depth + 1)
        if node.op_type == "Transpose":
            source = self.get(node.input[0], depth + 1)
            perm = next((list(a.ints) for a in node.attribute if a.name == "perm"), None)
            if source is None:
                return None
            return [source[p] for p in perm] if perm else source[::-1]
        if node.op_type == "Reshape" and len(node.input) > 1 and node.input[1] in self.values:
            target = [int(v) for v in self.values[node.input[1]].reshape(-1)]
            source = self.get(node.input[0], depth + 1)
            if source is None:
                return None if any(v <= 0 for v in target) else target
            target = [source[i] if v == 0 else v for i, v in enumerate(target)]
            if -1 in target:
                known = math.prod(v for v in target if v != -1)
                target[target.index(-1)] = math.prod(source) // known if known else 0
            return target
        return None


def _attr(node: onnx.NodeProto, name: str, default: Any) -> Any:
    for attr in node.attribute:
        if attr.name == name:
            return onnx.helper.get_attribute_value(attr)
    return default


def _node_label(node: onnx.NodeProto, index: int) -> str:
    return f"{node.op_type} node {node.name!r}" if node.name else f"{node.op_type} node #{index}"


def _node_macs(node: onnx.NodeProto, index: int, shapes: _Shapes) -> int:
    """MACs of one node; 0 for anything that is not a convolution or a matrix product."""

    def need(name: str, what: str) -> list[int]:
        shape = shapes.get(name)
        if shape is None:
            raise ValueError(f"cannot infer the shape of {what} {name!r} of {_node_label(node, index)}")
        return shape

    op = node.op_type
    if op in _CONV_SLOTS:
        data_slot, weight_slot = _CONV_SLOTS[op]
        out = need(node.output[0], "output")
        group = int(_attr(node, "group", 1))
        weight = shapes.get(node.input[weight_slot])
        kernel = weight[2:] if weight is not None else list(_attr(node, "kernel_shape", []))
        if weight is None and not kernel:
            need(node.input[weight_slot], "weight")
        data = shapes.get(node.input[data_slot])
        if data is not None:
            cin_per_group = data[1] // group
        elif weight is not None:
            cin_per_group = weight[1]
        else:
            cin_per_group = need(node.input[data_slot], "input")[1] // group
        return out[0] * out[1] * math.prod(out[2:]) * cin_per_group * math.prod(kernel)
    if op == "ConvTranspose":
        data = need(node.input[0], "input")
        group = int(_attr(node, "group", 1))
        weight = shapes.get(node.input[1])
        kernel = weight[2:] if weight is not None else list(_attr(node, "kernel_shape", []))
        if weight is None and not kernel:
            need(node.input[1], "weight")
        cout_per_group = weight[1] if weight is not None else need(node.output[0], "output")[1] // group
        # Each input pixel scatters a (Cout/group x kernel) patch: MACs counted per input pixel.
        return data[0] * data[1] * math.prod(data[2:]) * cout_per_group * math.prod(kernel)
    if op in ("Gemm", "FusedGemm"):
        out = need(node.output[0], "output")
        a = need(node.input[0], "input A")
        k = a[0] if int(_attr(node, "transA", 0)) else a[1]
        return math.prod(out) * k
    if op in _MATMUL_A_SLOT:
        out = need(node.output[0], "output")
        a = need(node.input[_MATMUL_A_SLOT[op]], "input A")
        return math.prod(out) * a[-1]
    return 0


def count_macs(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> int:
    """Multiply-accumulates of one forward pass at the given concrete input shapes.

    Counted, as is conventional: Conv (N*Cout*Hout*Wout*Cin/group*prod(kernel)), ConvTranspose (per input
    pixel), Gemm and MatMul (prod(output)*K), and their quantized forms (QLinearConv, ConvInteger,
    QLinearMatMul, MatMulInteger). Elementwise ops, activations, pooling, normalization, resizing and
    (de)quantization count 0. Nodes inside subgraphs (If/Loop) are not counted. Raises ValueError naming the
    node when a shape it needs cannot be inferred even by running the model.
    """
    copy = onnx.ModelProto()
    copy.CopyFrom(model)
    graph = copy.graph
    initializer_names = {init.name for init in graph.initializer}
    real_inputs = {inp.name: inp for inp in graph.input if inp.name not in initializer_names}
    unknown = sorted(set(input_shapes) - set(real_inputs))
    if unknown:
        raise ValueError(f"not graph inputs of this model: {', '.join(unknown)} (inputs: {', '.join(real_inputs)})")
    for name, shape in input_shapes.items():
        tensor_type = real_inputs[name].type.tensor_type
        tensor_type.ClearField("shape")
        for size in shape:
            tensor_type.shape.dim.add().dim_value = int(size)
    # Stale value_info/output shapes from export time could contradict the new input shapes: infer afresh.
    del graph.value_info[:]
    for out in graph.output:
        if out.type.HasField("tensor_type"):
            out.type.tensor_type.ClearField("shape")
    inferred = onnx.shape_inference.infer_shapes(copy, check_type=False, strict_mode=False, data_prop=True)
    shapes = _Shapes(inferred.graph)

    def total() -> int:
        return sum(_node_macs(node, i, shapes) for i, node in enumerate(inferred.graph.node))

    try:
        return total()
    except ValueError as unknown:
        # Sizes computed inside the graph (an FPN's Resize to its neighbour's Shape: RetinaFace, SCRFD) defeat
        # static inference; one run on a zero input of these shapes gives every tensor's real shape.
        try:
            shapes.shapes.update(_runtime_shapes(copy, input_shapes))
        except Exception:  # a graph ONNX Runtime cannot run either: the node is named in the first error
            raise unknown from None
        return total()


def _runtime_shapes(model: onnx.ModelProto, input_shapes: dict[str, list[int]]) -> dict[str, list[int]]:
    """The shape of every node output of ``model``'s main graph, from one ONNX Runtime run on zeros."""
    probe = onnx.ModelProto()
    probe.CopyFrom(model)
    listed = {out.name for out in probe.graph.output}
    names = [name for node in probe.graph.node for name in node.output if name and name not in listed]
    probe.graph.output.extend(onnx.ValueInfoProto(name=name) for name in names)
    session = create_session(probe.SerializeToString(), threads=1)
    feed = {
        inp.name: np.zeros(input_shapes[inp.name], ORT_DTYPES.get(inp.type, np.float32))
        for inp in session.get_inputs()
        if inp.name in input_shapes
    }
    outputs = [out.name for out in session.get_outputs()]
    return {
        name: list(value.shape)
        for name, value in zip(outputs, session.run(outputs, feed), strict=True)
        if isinstance(value, np.ndarray)
    }


def first_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    """The model's first real input (older exporters list the initializers among the graph's inputs too)."""
    initializer_names = {init.name for init in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name not in initializer_names:
            return inp
    raise ValueError("model has no graph input")
