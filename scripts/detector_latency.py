"""How fast would a detection recipe's student be? Exports the recipe's architecture untrained (latency does not
depend on the weights) as FP32 and INT8, the INT8 one the way the recipe quantizes, and times both against
`yunet-teacher` in one `biometrics bench` run (640x480, 1 thread). Used to pick an architecture before training.
``--also-keep-fp32 depthwise`` adds, per recipe, an INT8 build that keeps those layers in FP32 as well.

    python scripts/detector_latency.py pipelines/yunet-student.yaml pipelines/yunet-student-v2.yaml \
        --out reports/detector-latency
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from biometrics.training.detector_distill import DETECTOR_INTERFACE, build_detector, export_student
from biometrics.training.export import KEEP_FP32, quantize_int8, write_card
from biometrics.training.recipe import Recipe


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipes", nargs="+", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument(
        "--also-keep-fp32",
        default="",
        help=f"comma-separated entries of {', '.join(KEEP_FP32)}: an extra INT8 build per recipe keeps them in FP32",
    )
    args = parser.parse_args()
    extra_keep = [entry for entry in args.also_keep_fp32.split(",") if entry]
    models = args.out / "models"
    names = []
    # Calibration input: noise images stand in for scenes (the ranges change, the graph and its speed do not).
    noise = np.random.default_rng(0).uniform(0, 255, (8, 3, 320, 320)).astype(np.float32)
    for path in args.recipes:
        recipe = Recipe.load(path)
        paths = export_student(recipe, build_detector(recipe), noise, models, suffix="-untrained")
        if extra_keep:
            keep = [*recipe.quantization.get("keep_fp32", []), *extra_keep]
            variant = models / f"{recipe.output['int8']}-untrained-fp32-{'-'.join(extra_keep)}" / "model.onnx"
            paths = (*paths, quantize_int8(paths[0], variant, noise, keep_fp32=keep))
        for model_path, precision in zip(paths, ("fp32", "int8", "int8")[: len(paths)], strict=True):
            write_card(
                model_path,
                name=model_path.parent.name,
                description=f"untrained {recipe.name} architecture, for timing only",
                recipe=dict(recipe.raw, _path=str(path)),
                data_split={},
                teacher=recipe.teacher,
                training={},
                precision=precision,
                interface=DETECTOR_INTERFACE,
            )
            names.append(model_path.parent.name)
    env = dict(os.environ, BIOMETRICS_MODELS=str(models))
    command = ["biometrics", "bench", "yunet-teacher", *names, "--threads", "1", "--iterations", str(args.iterations)]
    subprocess.run([*command, "--out", str(args.out)], env=env, check=True)
    print("python " + " ".join(sys.argv))


if __name__ == "__main__":
    main()
