"""Where a detector's time goes at 640x480, 1 thread: ONNX Runtime's own profile of each kernel, summed by the
stride of the feature map it writes (stride 2 = 240x320 maps, 4 = 120x160, ...). Quoted in the README's detector
section (what a student must cut to reach 0.6x YuNet). Profiling adds overhead: compare shares, not totals.

    python scripts/detector_profile.py yunet-teacher yunet-student-v4 --out reports/detector-profile
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections import Counter
from pathlib import Path

import numpy as np
import onnxruntime as ort

from biometrics.registry import ModelRegistry

HEIGHT, WIDTH = 480, 640


def output_stride(event: dict) -> str:
    """The stride of the first feature map a kernel writes (its height and width found side by side in the shape,
    whatever the layout: NCHW, ORT's blocked NCHWc, NHWC), or "other" (reshaped outputs, scalars)."""
    for output in event["args"].get("output_type_shape", []):
        shape = next(iter(output.values()))
        for height, width in zip(shape[:-1], shape[1:], strict=True):
            if height and height * WIDTH == width * HEIGHT and HEIGHT % height == 0:
                return f"stride {HEIGHT // height}"
    return "other"


def profile(name: str, runs: int, trace_dir: Path) -> dict:
    options = ort.SessionOptions()
    options.intra_op_num_threads = 1
    options.enable_profiling = True
    options.profile_file_prefix = str(trace_dir / name)
    session = ort.InferenceSession(ModelRegistry().resolve(name, task="detection").onnx_bytes, options)
    frame = np.random.default_rng(0).uniform(0, 255, (1, 3, HEIGHT, WIDTH)).astype(np.float32)
    for _ in range(runs):
        session.run(None, {session.get_inputs()[0].name: frame})
    events = json.loads(Path(session.end_profiling()).read_text())
    by_stride = Counter()
    for event in events:
        if event.get("cat") == "Node" and event["name"].endswith("_kernel_time"):
            by_stride[output_stride(event)] += event["dur"] / runs / 1000
    total = sum(by_stride.values())
    return {
        "kernels_ms": round(total, 3),
        "ms_by_output_stride": {key: round(value, 3) for key, value in sorted(by_stride.items())},
        "share_by_output_stride": {key: round(value / total, 3) for key, value in sorted(by_stride.items())},
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("detectors", nargs="+")
    parser.add_argument("--runs", type=int, default=50)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    report = {"command": "python " + " ".join(sys.argv), "input": f"1x3x{HEIGHT}x{WIDTH}", "threads": 1, "results": {}}
    with tempfile.TemporaryDirectory() as traces:  # ORT's per-kernel traces: large, read once
        for name in args.detectors:
            report["results"][name] = profile(name, args.runs, Path(traces))
            print(name, json.dumps(report["results"][name]))
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
