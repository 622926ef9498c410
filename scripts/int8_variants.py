"""Is any of ONNX Runtime's static INT8 schemes faster than FP32 for a YuNet-shaped detector on this CPU?

Quantizes one FP32 detector several ways and times every build against `yunet-teacher` and the FP32 file by
turns (640x480, batch 1, 1 thread): the recipes' scheme (QDQ, uint8 activations, per-channel int8 weights,
first conv and heads in FP32), int8 activations, activations symmetric about zero, QLinear operators, and
INT8 only where the maps are small and wide (from the stride-8 or stride-16 max-pool on) or only in the
pointwise convs of 32 channels and more, where single-layer timings favour INT8
(`scripts/int8_layer_latency.py`). Calibration uses noise images: the ranges change, the graph and its speed do
not (these ReLU networks time the same on photos, README).

    python scripts/int8_variants.py models/yunet-student-v4-fp32/model.onnx --out reports/int8-variants
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

from biometrics.evaluation.efficiency import latency_by_turns
from biometrics.evaluation.report import write_table_report
from biometrics.registry import ModelRegistry, sha256_file
from biometrics.training.export import quantize_int8

SHAPE = [1, 3, 480, 640]
RECIPES_KEEP = ["first_conv", "head"]  # what the detector recipes keep in FP32


def nodes_before_pool(model: onnx.ModelProto, pool: int) -> list[str]:
    """Names of the nodes before the graph's ``pool``-th MaxPool (0-based): they stay FP32."""
    nodes = list(model.graph.node)
    cut = [i for i, node in enumerate(nodes) if node.op_type == "MaxPool"][pool]
    return [node.name for node in nodes[:cut]]


def all_but_wide_pointwise(model: onnx.ModelProto, min_channels: int = 32) -> list[str]:
    """Names of every node except the 1x1 convs with at least ``min_channels`` inputs and outputs."""
    weights = {tensor.name: tensor.dims for tensor in model.graph.initializer}

    def wide_pointwise(node: onnx.NodeProto) -> bool:
        dims = weights.get(node.input[1]) if node.op_type == "Conv" else None
        return dims is not None and dims[2:] == [1, 1] and min(dims[0], dims[1]) >= min_channels

    return [node.name for node in model.graph.node if not wide_pointwise(node)]


def variants(model: onnx.ModelProto) -> dict[str, dict]:
    """Label -> ``quantize_int8`` options. The max-pools of a stride-2-stem graph: 0 to stride 4, 1 to 8, 2 to 16;
    a stride-4 stem has none before stride 4, so the counts shift by one."""
    pools = sum(node.op_type == "MaxPool" for node in model.graph.node)
    to_stride_8 = pools - 3  # the last three max-pools lead to strides 8, 16, 32
    return {
        "recipes' scheme (QDQ, uint8 activations)": {"keep_fp32": RECIPES_KEEP},
        "int8 activations": {"keep_fp32": RECIPES_KEEP, "signed_activations": True},
        "symmetric uint8 activations": {"keep_fp32": RECIPES_KEEP, "symmetric_activations": True},
        "QLinear operators": {"keep_fp32": RECIPES_KEEP, "operator_format": True},
        "INT8 from stride 8 on": {"keep_fp32": ["head"], "exclude_nodes": nodes_before_pool(model, to_stride_8)},
        "INT8 from stride 16 on": {"keep_fp32": ["head"], "exclude_nodes": nodes_before_pool(model, to_stride_8 + 1)},
        "INT8 pointwise convs >= 32 channels only": {"exclude_nodes": all_but_wide_pointwise(model)},
    }


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("fp32", type=Path, help="an FP32 detector ONNX file (any input size, YuNet's outputs)")
    parser.add_argument("--iterations", type=int, default=200, help="timed runs of each model, in 10 rounds")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    model = onnx.load(str(args.fp32))
    noise = np.random.default_rng(0).uniform(0, 255, (8, *SHAPE[1:])).astype(np.float32)
    builds = {
        "yunet-teacher": ModelRegistry().resolve("yunet-teacher", task="detection").onnx_bytes,
        "FP32": args.fp32.read_bytes(),
    }
    with tempfile.TemporaryDirectory() as tmp:
        for index, (label, options) in enumerate(variants(model).items()):
            path = quantize_int8(args.fp32, Path(tmp) / f"variant{index}.onnx", noise, **options)
            builds[label] = path.read_bytes()
    stats = latency_by_turns([(data, SHAPE) for data in builds.values()], iterations=args.iterations)
    yunet_ms, fp32_ms = stats[0].p50_ms, stats[1].p50_ms
    rows = [
        {
            "build": label,
            "p50_ms": round(s.p50_ms, 3),
            "vs_yunet": round(s.p50_ms / yunet_ms, 2),
            "vs_fp32": round(s.p50_ms / fp32_ms, 2),
        }
        for label, s in zip(builds, stats, strict=True)
    ]
    report = {
        "command": " ".join(["python", "scripts/int8_variants.py", *(argv if argv is not None else sys.argv[1:])]),
        "model": {"path": str(args.fp32), "sha256": sha256_file(args.fp32)},
        "input": SHAPE,
        "onnxruntime": ort.__version__,
        "threads": 1,
        "rows": rows,
    }
    md = write_table_report(
        args.out,
        report,
        f"ONNX Runtime INT8 schemes for `{args.fp32}`, 640x480, batch 1, 1 thread, by turns (ORT {ort.__version__})",
        ["build", "p50 ms", "vs yunet-teacher", "vs FP32"],
        [[r["build"], r["p50_ms"], r["vs_yunet"], r["vs_fp32"]] for r in rows],
    )
    print(md.read_text())
    return 0


if __name__ == "__main__":
    sys.exit(main())
