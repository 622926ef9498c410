"""How much of an embedder's time goes to ONNX Runtime's PRelu, on real faces and on random input?

Each model (a registry name or an .onnx file with a 112x112 RGB 0-255 input) is timed as it is and with every
PRelu rewritten as x + (a - 1) * min(x, 0) (``training.export.prelu_as_elementwise``, what our export now
writes), by turns in one process at batch 1 and 1 thread, once on aligned LFW faces and once on the
bench's random normal input.

    python scripts/prelu_latency.py sface-teacher /tmp/sface-student-fp32-prelu.onnx --out reports/prelu-latency
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import onnx

from biometrics.evaluation.efficiency import latency_by_turns
from biometrics.evaluation.lfw import parse_folds, sample_crops
from biometrics.evaluation.report import write_table_report
from biometrics.pipeline import FacePipeline
from biometrics.registry import ModelRegistry
from biometrics.training.export import crops_to_inputs, prelu_as_elementwise

SHAPE = [1, 3, 112, 112]


def load(model: str) -> onnx.ModelProto:
    if model.endswith(".onnx"):
        return onnx.load(model)
    return onnx.load_from_string(ModelRegistry().resolve(model).onnx_bytes)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--lfw", type=Path, default=Path("../shared/data/lfw"))
    parser.add_argument("--folds", default="6-10")
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    crops = sample_crops(FacePipeline(threads=1), args.lfw, parse_folds(args.folds))
    faces = crops_to_inputs(crops)
    variants = {}
    for name in args.models:
        model = load(name)
        prelus = sum(node.op_type == "PRelu" for node in model.graph.node)
        variants[f"{name} ({prelus} PRelu)"] = model.SerializeToString()
        variants[f"{name}, PRelu element-wise"] = prelu_as_elementwise(model).SerializeToString()
    models = [(data, SHAPE) for data in variants.values()]
    rows = {label: {} for label in variants}
    for input_name, inputs in (("aligned faces", faces), ("random normal", None)):
        stats = latency_by_turns(models, iterations=args.iterations, inputs=[inputs] * len(models))
        for label, stat in zip(variants, stats, strict=True):
            rows[label][input_name] = round(stat.p50_ms, 2)
    report = {"command": "python " + " ".join(sys.argv), "faces": len(faces), "p50_ms_batch1_1thread": rows}
    md_path = write_table_report(
        args.out,
        report,
        "PRelu in ONNX Runtime: p50 ms, batch 1, 1 thread, timed by turns",
        ["model", f"{len(faces)} aligned LFW faces (folds {args.folds})", "random normal input"],
        [[label, row["aligned faces"], row["random normal"]] for label, row in rows.items()],
    )
    print(md_path.read_text())


if __name__ == "__main__":
    main()
