"""Efficiency cards for ONNX models: size, parameters, MACs, latency, throughput and peak memory.

Every model in this project is judged on efficiency as well as accuracy, so the numbers here must be
comparable between models measured in the same run: the same session options
(``biometrics.runtime.create_session``), the same random input, warm-up before timing, and one fresh worker
process per model so that peak RSS belongs to that model alone. Run as
``python -m biometrics.evaluation.efficiency --worker '<json>'`` this module is that worker.
"""

from __future__ import annotations

import argparse
import gc
import hashlib
import json
import math
import os
import platform
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, numpy_helper

from biometrics.errors import MeasurementError
from biometrics.runtime import create_session, processor_name

CARD_VERSION = 1

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
        inp.name: np.zeros(input_shapes[inp.name], _ORT_DTYPES.get(inp.type, np.float32))
        for inp in session.get_inputs()
        if inp.name in input_shapes
    }
    outputs = [out.name for out in session.get_outputs()]
    return {
        name: list(value.shape)
        for name, value in zip(outputs, session.run(outputs, feed), strict=True)
        if isinstance(value, np.ndarray)
    }


def _first_input(model: onnx.ModelProto) -> onnx.ValueInfoProto:
    initializer_names = {init.name for init in model.graph.initializer}
    for inp in model.graph.input:
        if inp.name not in initializer_names:
            return inp
    raise ValueError("model has no graph input")


# ----------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------

_ORT_DTYPES = {
    "tensor(float)": np.float32,
    "tensor(float16)": np.float16,
    "tensor(double)": np.float64,
    "tensor(uint8)": np.uint8,
    "tensor(int8)": np.int8,
    "tensor(int32)": np.int32,
    "tensor(int64)": np.int64,
    "tensor(bool)": np.bool_,
}


@dataclass(frozen=True)
class LatencyStats:
    """Per-call wall-clock latency of ``session.run`` (warm-up excluded)."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    iterations: int
    batch: int


@dataclass(frozen=True)
class ThroughputStats:
    """Images per second; ``batched`` is False when the model's fixed batch dim forced one call per image."""

    images_per_s: float
    batch: int
    batched: bool
    images: int
    seconds: float

    def __float__(self) -> float:
        return self.images_per_s


def _random_input(shape: list[int], dtype: Any, rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 127), size=shape, endpoint=True).astype(dtype)
    return rng.standard_normal(size=shape, dtype=np.float32).astype(dtype, copy=False)  # no float64 copy


def _feed(session: ort.InferenceSession, shape: list[int], dtype: Any | None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random input (fixed seed) for the first input; other static-shaped inputs get random values too."""
    rng = np.random.default_rng(seed)
    inputs = session.get_inputs()
    first = inputs[0]
    feed = {first.name: _random_input(shape, dtype or _ORT_DTYPES.get(first.type, np.float32), rng)}
    for extra in inputs[1:]:
        if not all(isinstance(d, int) and d > 0 for d in extra.shape):
            raise ValueError(f"cannot make up a value for input {extra.name!r} with shape {extra.shape}")
        feed[extra.name] = _random_input(list(extra.shape), _ORT_DTYPES.get(extra.type, np.float32), rng)
    return feed


def _feeds(
    session: ort.InferenceSession, shape: list[int], dtype: Any | None, inputs: np.ndarray | None
) -> list[dict[str, np.ndarray]]:
    """Feeds to cycle through: one per row of ``inputs`` (real data, batch 1 each), else one random input."""
    if inputs is None:
        return [_feed(session, shape, dtype)]
    name = session.get_inputs()[0].name
    return [{name: np.ascontiguousarray(row[None])} for row in inputs]


def measure_latency(
    session: ort.InferenceSession,
    input_feed_shape: list[int],
    *,
    warmup: int = 10,
    iterations: int = 50,
    dtype: Any | None = np.float32,
    inputs: np.ndarray | None = None,
) -> LatencyStats:
    """Time ``iterations`` calls of ``session.run`` after ``warmup`` discarded ones, on one fixed random input
    or, given ``inputs`` (N x input shape), on those in turn.

    Warm-up matters: the first calls allocate the arena and pick kernels. ``dtype=None`` takes the element
    type from the session's first input. Real inputs matter too: some kernels' speed depends on the values
    (ONNX Runtime's PRelu ran three times slower on aligned faces than on random input).
    """
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    feeds = _feeds(session, list(input_feed_shape), dtype, inputs)
    for i in range(warmup):
        session.run(None, feeds[i % len(feeds)])
    times = [_timed_run(session, feeds[i % len(feeds)]) for i in range(iterations)]
    return latency_stats(times, batch=int(input_feed_shape[0]) if input_feed_shape else 1)


def _timed_run(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
    start = time.perf_counter()
    session.run(None, feed)
    return time.perf_counter() - start


def latency_stats(seconds: list[float], batch: int) -> LatencyStats:
    times_ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return LatencyStats(
        p50_ms=float(np.percentile(times_ms, 50)),
        p95_ms=float(np.percentile(times_ms, 95)),
        mean_ms=float(times_ms.mean()),
        iterations=len(times_ms),
        batch=batch,
    )


def _latency_record(stats: LatencyStats) -> dict[str, Any]:
    """A card's ``latency_batch1`` entry."""
    return {
        "p50_ms": round(stats.p50_ms, 4),
        "p95_ms": round(stats.p95_ms, 4),
        "mean_ms": round(stats.mean_ms, 4),
        "iterations": stats.iterations,
    }


def _latency_by_turns(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The worker side of ``latency_by_turns``: every session open at once, timed round by round."""
    sessions = [create_session(path, threads=spec["threads"]) for path in spec["model_paths"]]
    feeds = [
        _feeds(session, shape, None, None if inputs is None else np.load(inputs))
        for session, shape, inputs in zip(sessions, spec["input_shapes"], spec["inputs_paths"], strict=True)
    ]
    for session, model_feeds in zip(sessions, feeds, strict=True):
        for i in range(spec["warmup"]):
            session.run(None, model_feeds[i % len(model_feeds)])
    iterations, rounds = spec["iterations"], spec["rounds"]
    times: list[list[float]] = [[] for _ in sessions]
    for round_index in range(rounds):
        for session, model_feeds, model_times in zip(sessions, feeds, times, strict=True):
            # the rounds share exactly ``iterations`` calls, so a card's count is the one asked for
            turn = range(round_index * iterations // rounds, (round_index + 1) * iterations // rounds)
            model_times += [_timed_run(session, model_feeds[i % len(model_feeds)]) for i in turn]
    return [asdict(latency_stats(model_times, batch=1)) for model_times in times]


def latency_by_turns(
    models: list[tuple[bytes, list[int]]],
    *,
    threads: int = 1,
    warmup: int = 10,
    iterations: int = 50,
    rounds: int = 10,
    inputs: list[np.ndarray | None] | None = None,
) -> list[LatencyStats]:
    """Batch-1 latency of several models (ONNX bytes, input shape) timed by turns in one fresh process:
    ``rounds`` rounds, each running every model ``iterations / rounds`` times; ``inputs``: per model, real
    inputs to cycle through (None: random, see ``measure_latency``).

    A shared or throttling machine's speed drifts over seconds. Timed one after the other, two models' ratio
    moves with that drift (on our 2-core VM YuNet took 3.9 to 5.0 ms in four separate bench runs); timed by
    turns, the drift slows every model alike and the ratios hold.
    """
    with tempfile.TemporaryDirectory(prefix="biometrics-bench-") as tmp:
        paths, inputs_paths = [], []
        for index, ((data, _), model_inputs) in enumerate(zip(models, inputs or [None] * len(models), strict=True)):
            path = Path(tmp) / f"model{index}.onnx"
            path.write_bytes(data)
            paths.append(str(path))
            inputs_paths.append(_save_inputs(model_inputs, Path(tmp) / f"inputs{index}.npy"))
        spec = {
            "mode": "by_turns",
            "model_paths": paths,
            "inputs_paths": inputs_paths,
            "input_shapes": [[int(v) for v in shape] for _, shape in models],
            "threads": threads,
            "warmup": warmup,
            "iterations": iterations,
            "rounds": rounds,
        }
        answer = run_worker(spec)
    return [LatencyStats(**stats) for stats in answer["latency"]]


MAX_INPUTS = 32  # real inputs cycled through; more would only add to the worker's memory


def _inputs_description(inputs: np.ndarray | None, description: str | None) -> str:
    if inputs is None:
        return "random normal (one fixed input)"
    timed = f"; {MAX_INPUTS} of them, evenly chosen, timed" if len(inputs) > MAX_INPUTS else ""
    return (description or f"{len(inputs)} given inputs") + timed


def _save_inputs(inputs: np.ndarray | None, path: Path) -> str | None:
    """Real inputs travel to the worker process as an .npy file (at most ``MAX_INPUTS``, evenly chosen)."""
    if inputs is None:
        return None
    chosen = np.linspace(0, len(inputs) - 1, min(len(inputs), MAX_INPUTS)).astype(int)
    np.save(path, np.ascontiguousarray(inputs[chosen], dtype=np.float32))
    return str(path)


def _fixed_batch(session: ort.InferenceSession) -> int | None:
    """The first input's batch size if it is fixed in the graph, None if symbolic/0/absent (dynamic)."""
    shape = session.get_inputs()[0].shape
    if not shape:
        return 1
    dim = shape[0]
    return dim if isinstance(dim, int) and dim > 0 else None


def throughput(
    session: ort.InferenceSession,
    input_shape_batch1: list[int],
    batch: int,
    *,
    seconds: float = 2.0,
    iterations: int | None = None,
    warmup: int = 1,
    dtype: Any | None = np.float32,
    inputs: np.ndarray | None = None,
) -> ThroughputStats:
    """Images/s when feeding ``batch`` images at a time (random, or rows of ``inputs`` repeated to fill it).

    A dynamic batch dim gets real batches of ``batch``; a batch dim fixed in the graph (usually 1) gets
    ``batch`` single calls per round and ``batched=False``, so the card can say the number is not batched. A
    dynamic-batch model that fails at batch > 1 (hard-coded reshapes) falls back the same way. Runs
    ``iterations`` rounds if given, else rounds until ``seconds`` have passed (at least one).
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    shape = list(input_shape_batch1)
    fixed = _fixed_batch(session)
    batched = fixed is None

    def make_feed(size: int) -> dict[str, np.ndarray]:
        if inputs is None:
            return _feed(session, [size, *shape[1:]], dtype)
        return {session.get_inputs()[0].name: np.ascontiguousarray(np.resize(inputs, (size, *inputs.shape[1:])))}

    if batched:
        feed = make_feed(batch)
        try:
            session.run(None, feed)
        except Exception:  # any ORT failure at batch > 1 means "not batchable"
            batched = False
    if batched:
        calls_per_round, images_per_call = 1, batch
    else:
        per_call = fixed or 1
        feed = make_feed(per_call)
        calls_per_round, images_per_call = math.ceil(batch / per_call), per_call
    for _ in range(warmup * calls_per_round):
        session.run(None, feed)
    rounds = 0
    start = time.perf_counter()
    while True:
        for _ in range(calls_per_round):
            session.run(None, feed)
        rounds += 1
        elapsed = time.perf_counter() - start
        if (iterations is not None and rounds >= iterations) or (iterations is None and elapsed >= seconds):
            break
    images = rounds * calls_per_round * images_per_call
    return ThroughputStats(images_per_s=images / elapsed, batch=batch, batched=batched, images=images, seconds=elapsed)


# ----------------------------------------------------------------------------------------------------------
# Worker process (one per model) and peak memory
# ----------------------------------------------------------------------------------------------------------


def _peak_rss_mib() -> float | None:
    """This process's peak resident set size in MiB.

    On Linux this reads VmHWM from /proc/self/status rather than ``getrusage(RUSAGE_SELF).ru_maxrss``: the
    kernel carries ru_maxrss over fork+exec, so a worker started from a 300 MiB pytest process would report
    at least 300 MiB whatever the model. VmHWM belongs to the worker's own address space. Elsewhere it falls
    back to ru_maxrss (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def machine_info() -> dict[str, Any]:
    """Versions and hardware that a latency number is meaningless without."""
    return {
        "onnxruntime_version": ort.__version__,
        "numpy_version": np.__version__,
        "onnx_version": onnx.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "processor": processor_name(),
        "cpu_count": os.cpu_count(),
    }


def _run_measurements(spec: dict[str, Any]) -> dict[str, Any]:
    """Everything for one model, in this (fresh) process: timing first, then counts.

    Peak RSS is read right after the batch-1 latency runs (the deployment case: one face at a time), then
    again after the batched throughput runs, and before the counting (shape inference copies the graph; that
    memory belongs to the tooling, not to the model).
    """
    if spec.get("mode") == "baseline":
        return {"peak_rss_mib": _peak_rss_mib()}
    if spec.get("mode") == "by_turns":
        return {"latency": _latency_by_turns(spec)}
    path = spec["model_path"]
    shape = [int(v) for v in spec["input_shape"]]
    threads: list[int] = spec["threads"]
    batch = int(spec["batch"])
    runs: dict[int, dict[str, Any]] = {t: {"threads": t} for t in threads}
    inputs = None if spec.get("inputs_path") is None else np.load(spec["inputs_path"])
    # The real inputs beyond the one a random-input run holds are the bench's memory, not the model's.
    extra_input_mib = 0.0 if inputs is None else (len(inputs) - 1) * inputs[0].nbytes / 2**20
    input_name = None
    for t in threads:
        session = create_session(path, threads=t)
        input_name = session.get_inputs()[0].name
        stats = measure_latency(
            session, shape, warmup=spec["warmup"], iterations=spec["iterations"], dtype=None, inputs=inputs
        )
        runs[t]["latency_batch1"] = _latency_record(stats)
        del session
        gc.collect()
    peak_batch1 = _minus(_peak_rss_mib(), extra_input_mib)
    for t in threads:
        session = create_session(path, threads=t)
        tp = throughput(
            session,
            shape,
            batch,
            seconds=spec["throughput_seconds"],
            iterations=spec.get("throughput_iterations"),
            dtype=None,
            inputs=inputs,
        )
        runs[t][f"throughput_batch{batch}"] = round(tp.images_per_s, 2)
        runs[t]["throughput_batched"] = tp.batched
        del session
        gc.collect()
    peak_batched = _minus(_peak_rss_mib(), extra_input_mib)

    model = onnx.load(path)
    result: dict[str, Any] = {
        "input_name": input_name,
        "parameters": count_parameters(model),
        "runs": [runs[t] for t in threads],
        "peak_rss_mib": peak_batch1,
        f"peak_rss_batch{batch}_mib": peak_batched,
    }
    try:
        result["macs"] = count_macs(model, {_first_input(model).name: shape})
    except ValueError as error:  # a card without MACs beats no card
        result["macs"] = None
        result["macs_error"] = str(error)
    return result


def _minus(value: float | None, amount: float) -> float | None:
    return None if value is None else value - amount


def _worker_env() -> dict[str, str]:
    """Make ``biometrics`` importable in the child even when not installed (tests run from a checkout)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    return env


def run_worker(spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter and return its JSON answer (last stdout line)."""
    proc = subprocess.run(
        [sys.executable, "-m", "biometrics.evaluation.efficiency", "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=_worker_env(),
        timeout=timeout,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        reason = ([line for line in proc.stderr.splitlines() if line.strip()] or ["no output"])[-1].strip()
        raise MeasurementError(f"efficiency worker failed (exit {proc.returncode}): {reason[:300]}")
    return json.loads(lines[-1])


@lru_cache(maxsize=1)
def baseline_rss_mib() -> float | None:
    """Peak RSS of a worker that only imports python, numpy, onnx and onnxruntime (measured once per run)."""
    return run_worker({"mode": "baseline"})["peak_rss_mib"]


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def benchmark_model(
    model: str | os.PathLike | bytes,
    input_shape: list[int],
    *,
    name: str,
    threads: list[int] | None = None,
    batch: int = 32,
    warmup: int = 10,
    iterations: int = 50,
    throughput_seconds: float = 2.0,
    throughput_iterations: int | None = None,
    file_size_bytes: int | None = None,
    sha256: str | None = None,
    inputs: np.ndarray | None = None,
    inputs_description: str | None = None,
) -> dict[str, Any]:
    """The efficiency card of one model as a JSON-ready dict, measured in its own worker process.

    ``input_shape`` is the batch-1 shape of the first input. ``threads`` defaults to [1, os.cpu_count()].
    ``inputs`` (N x input shape, e.g. aligned faces for an embedder) are timed in turn instead of one random
    input; ``inputs_description`` says what they are, on the card.
    ``file_size_bytes``/``sha256`` default to those of the file (or bytes) measured; pass them to describe
    the published file when ``model`` is a prepared copy of it.
    """
    shape = [int(v) for v in input_shape]
    if not shape or shape[0] != 1:
        raise ValueError(f"input_shape must be the batch-1 shape, got {shape}")
    thread_counts = list(dict.fromkeys(threads or [1, os.cpu_count() or 1]))
    with tempfile.TemporaryDirectory(prefix="biometrics-bench-") as tmp:
        if isinstance(model, bytes):
            data = model
            path = Path(tmp) / "model.onnx"
            path.write_bytes(data)
        else:
            path = Path(model)
            data = path.read_bytes()
        spec = {
            "mode": "model",
            "model_path": str(path),
            "input_shape": shape,
            "threads": thread_counts,
            "batch": batch,
            "warmup": warmup,
            "iterations": iterations,
            "throughput_seconds": throughput_seconds,
            "throughput_iterations": throughput_iterations,
            "inputs_path": _save_inputs(inputs, Path(tmp) / "inputs.npy"),
        }
        measured = run_worker(spec)
    baseline = baseline_rss_mib()
    peak = measured.pop("peak_rss_mib")
    peak_batched = measured.pop(f"peak_rss_batch{batch}_mib")
    card: dict[str, Any] = {
        "card_version": CARD_VERSION,
        "name": name,
        "sha256": sha256 or hashlib.sha256(data).hexdigest(),
        "file_size_bytes": file_size_bytes if file_size_bytes is not None else len(data),
        "parameters": measured["parameters"],
        "macs": measured["macs"],
        "input_name": measured["input_name"],
        "input_shape": shape,
        "input_data": _inputs_description(inputs, inputs_description),
        "batch": batch,
        "warmup": warmup,
        "iterations": iterations,
        "threads": thread_counts,
        "runs": measured["runs"],
        "peak_rss_mib": _round(peak),
        "peak_rss_over_baseline_mib": _round(peak - baseline) if peak is not None and baseline else None,
        f"peak_rss_batch{batch}_mib": _round(peak_batched),
        "baseline_rss_mib": _round(baseline),
        "execution_provider": "CPUExecutionProvider",
        **machine_info(),
    }
    if "macs_error" in measured:
        card["macs_error"] = measured["macs_error"]
    return card


def retime_by_turns(
    cards: list[dict[str, Any]],
    models: list[tuple[bytes, list[int]]],
    *,
    iterations: int,
    rounds: int = 10,
    inputs: list[np.ndarray | None] | None = None,
) -> None:
    """Replace the batch-1 latency of each card (one per model, same thread counts) by timings taken by turns
    with the other models (``latency_by_turns``), in place: the cards' ratios are what a bench reports."""
    for threads in cards[0]["threads"]:
        timings = latency_by_turns(
            models, threads=threads, warmup=cards[0]["warmup"], iterations=iterations, rounds=rounds, inputs=inputs
        )
        for card, latency in zip(cards, timings, strict=True):
            run = _run_for(card, threads)
            run["latency_batch1"] = _latency_record(latency) | {
                "timed": f"by turns with the other {len(cards) - 1} models, {rounds} rounds, one process"
            }


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------


def _run_for(card: dict[str, Any], threads: int) -> dict[str, Any] | None:
    return next((run for run in card.get("runs", []) if run["threads"] == threads), None)


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _fmt_millions(value: float | None) -> str:
    """Millions with two decimals, or three significant digits for tiny models (0.000224, not 0.000)."""
    if value is None:
        return "–"
    millions = value / 1e6
    return f"{millions:.2f}" if millions >= 1 else f"{millions:.3g}"


def _machine_line(cards: Iterable[dict[str, Any]]) -> str:
    keys = ("processor", "cpu_count", "platform", "python_version", "onnxruntime_version", "numpy_version")
    seen = {tuple(card.get(k) for k in keys) for card in cards}
    lines = []
    for processor, cpus, plat, py, ort_v, np_v in sorted(seen, key=str):
        lines.append(f"Machine: {processor} ({cpus} CPUs), {plat}; Python {py}, onnxruntime {ort_v}, numpy {np_v}.")
    if len(lines) > 1:
        lines.append("**Warning:** these cards come from different machines or versions: do not compare.")
    return "\n".join(lines)


def write_efficiency_report(cards: list[dict[str, Any]], out_dir: Path) -> tuple[Path, Path]:
    """Write ``efficiency.json`` (the cards) and ``efficiency.md`` (one table row per card).

    The "p50 vs first" column divides each model's single-thread p50 by the first card's, so a student is
    compared with a baseline measured in the same run on the same machine.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "efficiency.json"
    md_path = out_dir / "efficiency.md"
    json_path.write_text(json.dumps(cards, indent=2) + "\n", encoding="utf-8")

    low = min((min(c["threads"]) for c in cards), default=1)
    highs = {max(c["threads"]) for c in cards}
    high = highs.pop() if len(highs) == 1 else None
    high_label = f"{high} threads" if high is not None else "max threads"
    batches = {c["batch"] for c in cards}
    batch_label = f"batch {next(iter(batches))}" if len(batches) == 1 else "batch"
    header = [
        "model",
        "params (M)",
        "MACs (M)",
        "size (MB)",
        f"p50 ms @{low}t",
        f"p95 ms @{low}t",
        f"p50 ms @{high_label}",
        f"img/s @{high_label} ({batch_label})",
        "peak RSS MiB (+model)",
        "p50 vs first",
    ]
    rows = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    reference = None
    unbatched = False
    for card in cards:
        first = _run_for(card, low) or card["runs"][0]
        top_threads = max(card["threads"])
        top = _run_for(card, top_threads) or card["runs"][-1]
        p50 = first["latency_batch1"]["p50_ms"]
        reference = reference or p50
        tput = top.get(f"throughput_batch{card['batch']}")
        mark = ""
        if not top.get("throughput_batched", True):
            mark, unbatched = " †", True
        top_note = "" if high is not None else f" ({top_threads}t)"
        batch_note = "" if len(batches) == 1 else f" (b{card['batch']})"
        macs = card.get("macs")
        rss = card.get("peak_rss_mib")
        over = card.get("peak_rss_over_baseline_mib")
        rss_cell = _fmt(rss, 1) + (f" (+{over:.1f})" if over is not None else "")
        rows.append(
            "| "
            + " | ".join(
                [
                    str(card["name"]),
                    _fmt_millions(card["parameters"]),
                    _fmt_millions(macs),
                    _fmt_millions(card["file_size_bytes"]),
                    _fmt(p50, 2),
                    _fmt(first["latency_batch1"]["p95_ms"], 2),
                    _fmt(top["latency_batch1"]["p50_ms"], 2) + top_note,
                    _fmt(tput, 1) + mark + top_note + batch_note,
                    rss_cell,
                    f"{p50 / reference:.2f}×" if reference else "–",
                ]
            )
            + " |"
        )
    baseline = _fmt(cards[0].get("baseline_rss_mib") if cards else None, 1)
    notes = [
        "",
        "MACs count Conv/ConvTranspose/Gemm/MatMul only (elementwise, pooling and normalization excluded); "
        "latency is batch 1, warm-up excluded; peak RSS is per model in a fresh process, "
        f"(+model) is above the bare import baseline of {baseline} MiB.",
    ]
    if cards and all("timed" in (_run_for(c, low) or {}).get("latency_batch1", {}) for c in cards):
        notes.append(
            "Latency: the models were timed by turns in one process (each round runs every model), so a drift of "
            "the machine's speed slows them alike and the ratios hold."
        )
    inputs = sorted({card.get("input_data", "random normal (one fixed input)") for card in cards})
    notes.append(f"Input: {'; '.join(inputs)}.")
    if unbatched:
        notes.append("† fixed batch dimension: throughput measured as single-image calls, not batched.")
    text = "\n".join(["# Efficiency", "", _machine_line(cards), "", *rows, *notes]) + "\n"
    md_path.write_text(text, encoding="utf-8")
    return json_path, md_path


# ----------------------------------------------------------------------------------------------------------
# Entry point for the worker process
# ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", required=True, help="JSON measurement spec (internal use)")
    args = parser.parse_args(argv)
    result = _run_measurements(json.loads(args.worker))
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
