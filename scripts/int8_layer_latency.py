"""How ONNX Runtime runs one depthwise 3x3 conv and one 1x1 conv in FP32 and in our INT8 (static QDQ, the
recipes' quantizer) as the channel count grows, at a detector's stride-4 map of a 640x480 frame (160x120), batch 1,
1 thread. Why INT8 students of YuNet's shape are slower than their FP32 twins on this CPU.

    python scripts/int8_layer_latency.py --out reports/int8-layer-latency
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import tempfile
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort
from onnx import TensorProto, helper, numpy_helper

from biometrics.evaluation.efficiency import latency_by_turns
from biometrics.evaluation.report import write_table_report
from biometrics.training.export import quantize_int8

CHANNELS = (16, 32, 48, 64, 128)
HEIGHT, WIDTH = 120, 160


def layer_model(kind: str, channels: int) -> onnx.ModelProto:
    """Conv + ReLU, the unit our detector students repeat; ``kind``: depthwise (3x3, one filter per channel) or
    pointwise (1x1, channels -> channels)."""
    rng = np.random.default_rng(0)
    if kind == "depthwise":
        weight, attributes = rng.normal(0, 0.3, (channels, 1, 3, 3)), {"group": channels, "pads": [1, 1, 1, 1]}
    else:
        weight, attributes = rng.normal(0, 1 / np.sqrt(channels), (channels, channels, 1, 1)), {}
    shape = [1, channels, HEIGHT, WIDTH]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w", "b"], ["conv"], **attributes),
            helper.make_node("Relu", ["conv"], ["y"]),
        ],
        f"{kind}-{channels}",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)],
        [
            numpy_helper.from_array(weight.astype(np.float32), "w"),
            numpy_helper.from_array(np.zeros(channels, np.float32), "b"),
        ],
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--iterations", type=int, default=200, help="timed runs of each model, in 10 rounds")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        for kind in ("depthwise", "pointwise"):
            for channels in CHANNELS:
                fp32 = Path(tmp) / f"{kind}-{channels}.onnx"
                onnx.save(layer_model(kind, channels), fp32)
                calibration = np.random.default_rng(1).uniform(0, 2, (8, channels, HEIGHT, WIDTH)).astype(np.float32)
                int8 = quantize_int8(fp32, Path(tmp) / f"{kind}-{channels}-int8.onnx", calibration)
                shape = [1, channels, HEIGHT, WIDTH]
                fp32_stats, int8_stats = latency_by_turns(
                    [(fp32.read_bytes(), shape), (int8.read_bytes(), shape)], iterations=args.iterations
                )
                fp32_ms, int8_ms = fp32_stats.p50_ms, int8_stats.p50_ms
                rows.append(
                    {
                        "layer": kind,
                        "channels": channels,
                        "fp32_p50_ms": round(fp32_ms, 4),
                        "int8_p50_ms": round(int8_ms, 4),
                        "int8_over_fp32": round(int8_ms / fp32_ms, 2),
                        "int8_ms_per_channel": round(int8_ms / channels, 5),
                        "fp32_ms_per_channel": round(fp32_ms / channels, 5),
                    }
                )
                print(json.dumps(rows[-1]))
    report = {
        "command": " ".join(["python", "scripts/int8_layer_latency.py", *sys.argv[1:]]),
        "input": [1, "C", HEIGHT, WIDTH],
        "onnxruntime": ort.__version__,
        "processor": platform.processor() or platform.machine(),
        "threads": 1,
        "rows": rows,
    }
    write_table_report(
        args.out,
        report,
        f"One conv + ReLU, FP32 vs INT8 (static QDQ), 160x120, batch 1, 1 thread (ONNX Runtime {ort.__version__})",
        ["layer", "channels", "FP32 p50 ms", "INT8 p50 ms", "INT8 / FP32"],
        [[r["layer"], r["channels"], r["fp32_p50_ms"], r["int8_p50_ms"], r["int8_over_fp32"]] for r in rows],
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
