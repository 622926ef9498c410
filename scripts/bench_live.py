"""Frames per second of `biometrics live --headless` on a clip, with the default models.

Runs the same code as the command (capture thread, detect every 2nd frame, track, identify against a gallery,
annotated video and events written) several times and reports each run; compare numbers from one machine only.

    python scripts/bench_live.py --source ../shared/data/samples/hamilton_clip.mp4 --threads 2 --runs 3
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
from biometrics.pipeline import FacePipeline

SAMPLES = Path(__file__).resolve().parents[2] / "shared" / "data" / "samples"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--source", default=str(SAMPLES / "hamilton_clip.mp4"))
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--detect-every", type=int, default=2)
    args = parser.parse_args()

    pipeline = FacePipeline(threads=args.threads)
    embedder = EmbedderId.of(pipeline.embedder)
    with tempfile.TemporaryDirectory() as folder:
        # A small gallery, as a user would have: two people enrolled from the sample photos.
        with Gallery(Path(folder) / "gallery.db", create=True) as gallery:
            for name, photos in {"obama": ("obama.jpg", "obama2.jpg"), "biden": ("biden.jpg",)}.items():
                faces = [pipeline.embed_one(load_image(SAMPLES / photo))[0] for photo in photos]
                gallery.enroll(name, embedder, [NewTemplate(f.embedding, "sample", tuple(f.box)) for f in faces])
            index = TemplateIndex(gallery.templates(embedder))
        rates = []
        for run in range(args.runs):
            source = FrameSource(args.source)
            recorder = HeadlessRecorder(Path(folder) / "annotated.mp4", Path(folder) / "events.jsonl", source.fps)
            recognizer = LiveRecognizer(pipeline, index, detect_every=args.detect_every)
            summary = run_live(source, recognizer, [recorder])
            rates.append(summary.fps)
            print(f"run {run + 1}: {summary}")
    print(f"{Path(args.source).name}, {args.threads} threads: median {statistics.median(rates):.1f} fps")


if __name__ == "__main__":
    main()
