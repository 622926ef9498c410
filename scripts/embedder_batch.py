"""How many faces the embedder should run at once: time per face and peak memory at batches of 1 to 32.

ONNX Runtime's CPU arena keeps, for as long as a session lives, the memory of the largest batch it has run: a
kiosk whose `live` once sees a crowd keeps that crowd's memory for the rest of its uptime. The embedder's chunk
(``biometrics.embedding.EMBED_BATCH``) bounds it. Time per face is taken by turns in one process (every batch
size in each of ``--rounds`` rounds, on aligned LFW faces); peak RSS in a fresh worker process per model and
batch (``efficiency.benchmark_model``: after its batch-1 runs, then after the batched ones).

    python scripts/embedder_batch.py sface-student sface-teacher --out reports/embedder-batch
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

from biometrics.embedding import Embedder
from biometrics.evaluation.efficiency import benchmark_model, machine_info
from biometrics.evaluation.lfw import parse_folds, sample_crops
from biometrics.evaluation.report import write_table_report
from biometrics.pipeline import FacePipeline
from biometrics.registry import ModelRegistry

BATCHES = (1, 2, 4, 8, 16, 32)


def ms_per_face(embedder: Embedder, faces: np.ndarray, rounds: int) -> dict[int, float]:
    """Median milliseconds per face of one ``session.run`` at each batch, by turns: every round times every
    batch on about 32 faces, so a drift of the machine's speed slows them alike."""
    feed = embedder.inputs(np.resize(faces, (max(BATCHES), *faces.shape[1:])))
    times: dict[int, list[float]] = {batch: [] for batch in BATCHES}
    for batch in BATCHES:  # warm-up: the arena grows to each size once
        embedder.session.run(None, {embedder.input_name: feed[:batch]})
    for _ in range(rounds):
        for batch in BATCHES:
            calls = max(1, max(BATCHES) // batch)
            start = time.perf_counter()
            for call in range(calls):
                embedder.session.run(None, {embedder.input_name: feed[call * batch : (call + 1) * batch]})
            times[batch].append((time.perf_counter() - start) * 1e3 / (calls * batch))
    return {batch: round(float(np.median(values)), 2) for batch, values in times.items()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("models", nargs="+")
    parser.add_argument("--lfw", type=Path, default=Path("../shared/data/lfw"))
    parser.add_argument("--folds", default="6-10")
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    registry = ModelRegistry()
    crops = sample_crops(FacePipeline(threads=1), args.lfw, parse_folds(args.folds))
    thread_counts = list(dict.fromkeys([1, os.cpu_count() or 1]))
    results, rows = {}, []
    for name in args.models:
        model = registry.resolve(name, task="embedding")
        faces = Embedder(model, threads=1).inputs(crops)
        peak = {}
        for batch in BATCHES:
            card = benchmark_model(
                model.onnx_bytes,
                [1, *faces.shape[1:]],
                name=name,
                threads=[1],
                batch=batch,
                iterations=5,
                throughput_iterations=3,
                inputs=faces,
            )
            peak[batch] = {"batch1": card["peak_rss_mib"], "batched": card[f"peak_rss_batch{batch}_mib"]}
        speed = {
            threads: ms_per_face(Embedder(model, threads=threads), crops, args.rounds) for threads in thread_counts
        }
        results[name] = {"peak_rss_mib": peak, "ms_per_face": speed}
        for batch in BATCHES:
            rows.append([name, batch, *(speed[threads][batch] for threads in thread_counts), peak[batch]["batched"]])
    report = {
        "command": "python " + " ".join(sys.argv),
        "faces": len(crops),
        "rounds": args.rounds,
        "threads": thread_counts,
        "machine": machine_info(),
        "models": results,
    }
    md_path = write_table_report(
        args.out,
        report,
        "Embedder batch: ms per face (by turns) and peak RSS of a fresh process after running that batch",
        ["model", "batch", *(f"ms per face, {threads} thread(s)" for threads in thread_counts), "peak RSS (MiB)"],
        rows,
    )
    print(md_path.read_text())


if __name__ == "__main__":
    main()
