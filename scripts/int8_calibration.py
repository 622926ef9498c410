"""How should an embedder student's activations be calibrated for INT8? Judged on held-out TRAINING faces (the
split `biometrics distill` makes; never LFW folds 6-10), so the choice can go into the recipe before any report.

For each calibration (min-max, or a percentile of the calibration values) and each set of layers kept in FP32
(the recipe's, or each ``--keep-fp32`` given) it quantizes the recipe's FP32 model on the recipe's calibration
faces and measures how far INT8 moves the embedding: mean cosine INT8 vs FP32 per face, and the correlation of
their pairwise similarities (what verification thresholds). It also runs each INT8 build as plain arithmetic on
its quantized values (ONNX Runtime's ``session.disable_quant_qdq``) and compares: where this CPU's integer kernels
round differently, say 16-bit intermediate sums saturating on AVX2 without VNNI, the two part. With
``--reduce-range`` every build is also made with 7-bit weights, which cannot saturate there.

    python scripts/int8_calibration.py pipelines/sface-student-free.yaml FREE_RUN_FP32.onnx \
        --out reports/int8-calibration
    python scripts/int8_calibration.py pipelines/sface-student-patient-more.yaml models/sface-student-fp32/model.onnx \
        --percentile 99.99 --percentile 99.999 --keep-fp32 first_conv,head --keep-fp32 first_conv,head,depthwise \
        --out reports/int8-calibration-patient
    python scripts/int8_calibration.py pipelines/sface-student-patient-more.yaml models/sface-student-fp32/model.onnx \
        --percentile 99.99 --keep-fp32 first_conv,head,depthwise --keep-fp32 first_conv,head --reduce-range \
        --out reports/int8-reduce-range
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

import numpy as np
import onnxruntime as ort

from biometrics.evaluation.report import write_table_report
from biometrics.runtime import create_session, processor_name
from biometrics.training.distill import calibration_faces, training_faces
from biometrics.training.export import crops_to_inputs, quantize_int8
from biometrics.training.faces import teacher_targets
from biometrics.training.recipe import Recipe

PERCENTILES = (None, 99.9, 99.95, 99.99, 99.999)


def embed(model_path: Path, inputs: np.ndarray, batch: int = 128, arithmetic: bool = False) -> np.ndarray:
    """Unit-length embeddings; ``arithmetic``: the quantized graph computed in float (no integer kernels)."""
    session = create_session(model_path.read_bytes(), 2, {"session.disable_quant_qdq": "1"} if arithmetic else {})
    name = session.get_inputs()[0].name
    out = np.concatenate([session.run(None, {name: inputs[i : i + batch]})[0] for i in range(0, len(inputs), batch)])
    return out / np.linalg.norm(out, axis=1, keepdims=True)


def similarity_correlation(a: np.ndarray, b: np.ndarray) -> float:
    upper = np.triu_indices(len(a), 1)
    return float(np.corrcoef((a @ a.T)[upper], (b @ b.T)[upper])[0, 1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("recipe", type=Path)
    parser.add_argument("fp32_model", type=Path)
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument(
        "--percentile",
        type=float,
        action="append",
        help="repeatable (default: min-max and " + ", ".join(str(p) for p in PERCENTILES[1:]) + ")",
    )
    parser.add_argument(
        "--keep-fp32",
        action="append",
        help="comma-separated layer groups kept in FP32, repeatable (default: the recipe's)",
    )
    parser.add_argument("--reduce-range", action="store_true", help="also build each variant with 7-bit weights")
    args = parser.parse_args()
    recipe = Recipe.load(args.recipe)
    faces, holdout_idx, train_idx = training_faces(recipe)
    crops = np.asarray(faces.crops)
    quant = recipe.quantization
    calibration = crops_to_inputs(calibration_faces(recipe, crops, train_idx))  # as `distill`'s export
    heldout = crops_to_inputs(crops[holdout_idx])
    teacher = teacher_targets(faces, recipe.teacher)[holdout_idx, 0]
    teacher /= np.linalg.norm(teacher, axis=1, keepdims=True)
    fp32 = embed(args.fp32_model, heldout)
    rows = {"fp32": {"cosine_to_teacher": round(float((fp32 * teacher).sum(1).mean()), 4)}}
    args.out.mkdir(parents=True, exist_ok=True)
    keep_sets = [names.split(",") for names in args.keep_fp32] if args.keep_fp32 else [quant.get("keep_fp32")]
    ranges = (False, True) if args.reduce_range else (False,)
    variants = [(keep, p, r) for keep in keep_sets for p in (args.percentile or PERCENTILES) for r in ranges]
    for keep_fp32, percentile, reduce_range in variants:
        label = "min-max" if percentile is None else f"percentile {percentile}"
        if args.keep_fp32:
            label += f"; FP32: {', '.join(keep_fp32)}"
        if reduce_range:
            label += "; 7-bit weights"
        path = args.out / "int8.onnx"
        quantize_int8(
            args.fp32_model,
            path,
            calibration,
            per_channel=bool(quant.get("per_channel", True)),
            keep_fp32=keep_fp32,
            percentile=percentile,
            reduce_range=reduce_range,
        )
        int8, arithmetic = embed(path, heldout), embed(path, heldout, arithmetic=True)
        rows[label] = {
            "cosine_int8_to_fp32": round(float((int8 * fp32).sum(1).mean()), 4),
            "cosine_int8_to_its_arithmetic": round(float((int8 * arithmetic).sum(1).mean()), 4),
            "cosine_arithmetic_to_fp32": round(float((arithmetic * fp32).sum(1).mean()), 4),
            "similarity_correlation_int8_fp32": round(similarity_correlation(int8, fp32), 4),
            "cosine_to_teacher": round(float((int8 * teacher).sum(1).mean()), 4),
        }
        print(label, rows[label], flush=True)
        path.unlink()
    report = {
        "command": "python " + " ".join(sys.argv),
        "recipe": str(args.recipe),
        "fp32_model": str(args.fp32_model),
        "heldout_faces": len(holdout_idx),
        "calibration_faces": len(calibration),
        "machine": {"processor": processor_name(), "onnxruntime": ort.__version__},
        "rows": rows,
    }
    write_table_report(
        args.out,
        report,
        f"INT8 calibration of {args.fp32_model} ({len(holdout_idx)} held-out training faces)",
        ["calibration", "cosine INT8 vs FP32", "pairwise similarity correlation INT8 vs FP32", "cosine to teacher"]
        + ["cosine INT8 vs its arithmetic (1: kernels exact)", "cosine arithmetic vs FP32"],
        [
            [
                label,
                row.get("cosine_int8_to_fp32", ""),
                row.get("similarity_correlation_int8_fp32", ""),
                row["cosine_to_teacher"],
                row.get("cosine_int8_to_its_arithmetic", ""),
                row.get("cosine_arithmetic_to_fp32", ""),
            ]
            for label, row in rows.items()
        ],
    )


if __name__ == "__main__":
    main()
