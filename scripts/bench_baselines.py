"""Our pipeline against face_recognition's (dlib), stage by stage, on the same LFW images.

Each pipeline finds the labelled face (detection + landmarks + crop: ``labelled_crop``) and embeds it (batch 1),
by turns in one process on 1 thread (dlib's wheel runs single-threaded; ONNX Runtime is given 1 thread), on
``--images`` LFW images of ``--folds``, so the machine's noise hits every pipeline alike. The report gives the
p50/p95 of each stage, the ratio of the medians to dlib's, and the model files each pipeline loads. Needs the
``baselines`` extra.

    python scripts/bench_baselines.py --out reports/bench-baselines
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

from biometrics.evaluation.baselines import DlibFaceRecognition
from biometrics.evaluation.efficiency import latency_stats
from biometrics.evaluation.lfw import PipelineFaces, parse_folds, sample_images
from biometrics.evaluation.report import write_table_report
from biometrics.pipeline import DEFAULT_DETECTOR, FacePipeline

STAGES = ("find", "embed", "total")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--embedder", action="append", help="our embedders (default: sface-student, sface-teacher)")
    parser.add_argument("--lfw", type=Path, default=Path("../shared/data/lfw"))
    parser.add_argument("--folds", default="6-10")
    parser.add_argument("--images", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=5, help="passes over the images (the first is warm-up)")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()

    subjects = {}
    for embedder in args.embedder or ["sface-student", "sface-teacher"]:
        pipeline = FacePipeline(DEFAULT_DETECTOR, embedder, threads=1, threshold=0.0)
        subjects[f"{DEFAULT_DETECTOR} + {embedder}"] = (
            PipelineFaces(pipeline),
            [pipeline.detector.model.source_size, pipeline.embedder.model.source_size],
        )
    dlib_faces = DlibFaceRecognition()
    subjects[dlib_faces.label] = (dlib_faces, [m.source_path.stat().st_size for m in dlib_faces.models])
    images = sample_images(args.lfw, parse_folds(args.folds), args.images)

    seconds = {label: {stage: [] for stage in STAGES} for label in subjects}
    for turn in range(args.rounds):
        for i, image in enumerate(images):
            order = list(subjects)[i % len(subjects) :] + list(subjects)[: i % len(subjects)]  # rotate who goes first
            for label in order:
                faces = subjects[label][0]
                start = time.perf_counter()
                crop = faces.labelled_crops(image)[0][0]
                found = time.perf_counter()
                faces.embed(0, crop[None])
                done = time.perf_counter()
                if turn:
                    for stage, value in zip(STAGES, (found - start, done - found, done - start), strict=True):
                        seconds[label][stage].append(value)

    stats = {
        label: {stage: latency_stats(s, batch=1) for stage, s in by_stage.items()}
        for label, by_stage in seconds.items()
    }
    reference = stats[dlib_faces.label]
    results = {
        label: {
            stage: {
                "p50_ms": round(st.p50_ms, 2),
                "p95_ms": round(st.p95_ms, 2),
                "x_dlib": round(st.p50_ms / reference[stage].p50_ms, 3),
            }
            for stage, st in by_stage.items()
        }
        | {"model_files_mb": round(sum(subjects[label][1]) / 1e6, 2)}
        for label, by_stage in stats.items()
    }
    report = {
        "command": "python " + " ".join(sys.argv),
        "images": f"{len(images)} LFW images of folds {args.folds} (250x250), {args.rounds - 1} timed passes",
        "threads": 1,
        "results": results,
    }
    header = ["pipeline"] + [f"{stage} p50 / p95 ms (x dlib)" for stage in STAGES] + ["model files (MB)"]
    rows = [
        [label]
        + [f"{r[stage]['p50_ms']:.2f} / {r[stage]['p95_ms']:.2f} ({r[stage]['x_dlib']:.2f}x)" for stage in STAGES]
        + [f"{r['model_files_mb']:.2f}"]
        for label, r in results.items()
    ]
    print(write_table_report(args.out, report, "Our pipeline against face_recognition (dlib), by turns", header, rows))


if __name__ == "__main__":
    main()
