"""Frames per second of `biometrics live --headless` on a clip, with the default models or the embedders named.

Runs the same code as the command (capture thread, detect every 2nd frame, track, identify against a gallery,
annotated video and events written) several times and reports each run; with several ``--embedder`` the runs
take turns, so a drift of the machine's speed slows them alike. Compare numbers from one machine only.

    python scripts/bench_live.py --source ../shared/data/samples/hamilton_clip.mp4 --threads 2 --runs 3
    python scripts/bench_live.py --embedder sface-student --embedder sface-teacher --runs 5
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
from pathlib import Path

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
    args = parser.parse_args()

    with tempfile.TemporaryDirectory() as folder:
        setups = {name: _setup(name, args.threads, Path(folder) / name) for name in args.embedder or [DEFAULT_EMBEDDER]}
        rates: dict[str, list[float]] = {name: [] for name in setups}
        for run in range(args.runs):
            for name, (pipeline, index) in setups.items():
                source = FrameSource(args.source)
                recorder = HeadlessRecorder(Path(folder) / "annotated.mp4", Path(folder) / "events.jsonl", source.fps)
                summary = run_live(source, LiveRecognizer(pipeline, index, detect_every=args.detect_every), [recorder])
                if summary.stopped:  # Ctrl-C: a partial run is no measurement
                    raise SystemExit("stopped")
                rates[name].append(summary.fps)
                print(f"{name} run {run + 1}: {summary}")
    for name, values in rates.items():
        print(f"{Path(args.source).name}, {name}, {args.threads} threads: median {statistics.median(values):.1f} fps")


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
