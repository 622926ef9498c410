"""Frames per second of `biometrics live --headless` on a clip, with the default models or the embedders named.

Runs the same code as the command (capture thread, detect every 2nd frame, track, identify against a gallery,
annotated video and events written) several times and reports each run; with several ``--embedder`` the runs
take turns, so a drift of the machine's speed slows them alike. Compare numbers from one machine only.

    python scripts/bench_live.py --source ../shared/data/samples/hamilton_clip.mp4 --threads 2 --runs 3
    python scripts/bench_live.py --embedder sface-student --embedder sface-teacher --runs 5 --out reports/bench-live

``--out`` writes ``report.json`` (every run, the command, models, versions, machine) and ``report.md``.
"""

from __future__ import annotations

import argparse
import dataclasses
import statistics
import sys
import tempfile
from pathlib import Path

import cv2

from biometrics.evaluation.report import run_metadata, write_table_report
from biometrics.gallery import EmbedderId, Gallery, NewTemplate, TemplateIndex
from biometrics.imaging import load_image
from biometrics.live.capture import FrameSource
from biometrics.live.recognizer import LiveRecognizer
from biometrics.live.session import run_live
from biometrics.live.views import HeadlessRecorder
from biometrics.pipeline import DEFAULT_EMBEDDER, FacePipeline

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "samples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(SAMPLES / "hamilton_clip.mp4"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--detect-every", type=int, default=2)
    parser.add_argument("--embedder", action="append", help=f"repeatable (default: {DEFAULT_EMBEDDER})")
    parser.add_argument("--out", type=Path, default=None, help="folder for report.json and report.md")
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        setups = {name: _setup(name, args.threads, Path(folder) / name) for name in args.embedder or [DEFAULT_EMBEDDER]}
        rates: dict[str, list[float]] = {name: [] for name in setups}
        runs: dict[str, list[dict]] = {name: [] for name in setups}
        for run in range(args.runs):
            for name, (pipeline, index) in setups.items():
                source = FrameSource(args.source)
                recorder = HeadlessRecorder(Path(folder) / "annotated.mp4", Path(folder) / "events.jsonl", source.fps)
                summary = run_live(source, LiveRecognizer(pipeline, index, detect_every=args.detect_every), [recorder])
                if summary.stopped:  # Ctrl-C: a partial run is no measurement
                    raise SystemExit("stopped")
                rates[name].append(summary.fps)
                runs[name].append(dataclasses.asdict(summary) | {"fps": round(summary.fps, 1)})
                print(f"{name} run {run + 1}: {summary}")
        models = [
            model for pipeline, _ in setups.values() for model in (pipeline.detector.model, pipeline.embedder.model)
        ]
    for name, values in rates.items():
        print(f"{Path(args.source).name}, {name}, {args.threads} threads: median {statistics.median(values):.1f} fps")
    if args.out:
        _write_report(args, runs, rates, models)


def _write_report(args, runs: dict[str, list[dict]], rates: dict[str, list[float]], models: list) -> None:
    capture = cv2.VideoCapture(args.source)
    width, height, frames = (
        int(capture.get(prop))
        for prop in (cv2.CAP_PROP_FRAME_WIDTH, cv2.CAP_PROP_FRAME_HEIGHT, cv2.CAP_PROP_FRAME_COUNT)
    )
    capture.release()
    size = f"{width}x{height}"
    meta = run_metadata(models, args.threads) | {"command": "python " + " ".join(sys.argv)}
    report = meta | {
        "source": f"{Path(args.source).name} ({size}, {frames} frames)",
        "detect_every": args.detect_every,
        "runs": runs,
        "median_fps": {name: round(statistics.median(values), 1) for name, values in rates.items()},
    }
    header = ["embedder", "median fps", "runs (fps)", "faces embedded (first run)", "detector runs (first run)"]
    rows = [
        [
            name,
            f"{report['median_fps'][name]:.1f}",
            ", ".join(f"{run['fps']:.1f}" for run in runs[name]),
            runs[name][0]["embeddings"],
            runs[name][0]["detections"],
        ]
        for name in runs
    ]
    title = f"`biometrics live --headless` on {report['source']}, {args.threads} threads, by turns"
    print(write_table_report(args.out, report, title, header, rows))


def _setup(embedder_name: str, threads: int, folder: Path) -> tuple[FacePipeline, TemplateIndex]:
    """The pipeline and a small gallery, as a user would have: two people enrolled from the sample photos."""
    pipeline = FacePipeline(embedder=embedder_name, threads=threads)
    embedder = EmbedderId.of(pipeline.embedder)
    folder.mkdir()
    with Gallery(folder / "gallery.db", create=True) as gallery:
        for name, photos in {"obama": ("obama.jpg", "obama2.jpg"), "biden": ("biden.jpg",)}.items():
            faces = [pipeline.embed_one(load_image(SAMPLES / photo))[0] for photo in photos]
            gallery.enroll(name, embedder, [NewTemplate(f.embedding, "sample", tuple(f.box)) for f in faces])
        return pipeline, TemplateIndex(gallery.templates(embedder))


if __name__ == "__main__":
    main()
