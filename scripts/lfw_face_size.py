"""LFW accuracy by face size: the `evaluate lfw --image-side N` reports of one folder in one table, with the
size of the faces the detector found at each side (median box width and eye distance, in pixels).

    for side in 250 160 128 96 80 64 48; do
        biometrics evaluate lfw --folds 6-10 --embedder sface-student --embedder sface-teacher \
            --image-side $side --no-progress --out reports/lfw-face-size/side-$side
    done
    python scripts/lfw_face_size.py reports/lfw-face-size

The sizes are measured here, on the same images shrunk the same way, with the reports' detector: the face
nearest the centre, as `evaluate lfw` labels it. What `enroll` warns about (``SMALL_FACE_PX``) is read off this.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np

from biometrics.evaluation.lfw import images_in_folds, locate_images, read_pairs
from biometrics.evaluation.report import write_table_report
from biometrics.face import face_width
from biometrics.imaging import load_image, shrink_to_side
from biometrics.pipeline import FacePipeline, select_face
from biometrics.registry import shared_data


def face_sizes(pipeline: FacePipeline, images: list[Path], side: int) -> tuple[float, float]:
    """Median box width and eye distance (px) of the labelled face in each image shrunk to ``side``."""
    widths, eyes = [], []
    for path in images:
        image = shrink_to_side(load_image(path), side)
        faces = pipeline.detect(image)
        if faces:
            face = select_face(faces, "center", image.shape)
            widths.append(face_width(face.box))
            eyes.append(float(np.linalg.norm(face.landmarks[1] - face.landmarks[0])))
    return float(np.median(widths)), float(np.median(eyes))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("folder", type=Path, help="folder of side-N report folders; the table is written there")
    parser.add_argument("--data", type=Path, default=None, help="LFW folder (default: ../shared/data/lfw)")
    args = parser.parse_args()
    data = args.data or shared_data("lfw")
    reports = sorted(
        (json.loads(path.read_text()) for path in args.folder.glob("side-*/report.json")),
        key=lambda report: -report["meta"]["image_side"],
    )
    if not reports:
        raise SystemExit(f"{args.folder}: no side-N/report.json")
    folds = next(iter(reports[0]["results"].values()))["folds"]
    images = [locate_images(data) / key for key in images_in_folds(read_pairs(data / "pairs.txt"), folds)]
    detector = reports[0]["meta"]["models"][0]["name"]
    pipeline = FacePipeline(detector=detector, threads=2, threshold=0.0)
    rows, table = [], []
    for report in reports:
        side = report["meta"]["image_side"]
        width, eyes = face_sizes(pipeline, images, side)
        row = {"image_side": side, "face_width_px": width, "eye_distance_px": eyes, "pipelines": {}}
        for label, run in report["results"].items():
            summary = run["summary"]
            row["pipelines"][label] = {
                "accuracy_mean": summary["accuracy_mean"],
                "accuracy_std": summary["accuracy_std"],
                "no_face_found": run["detection_failures"]["count"],
            }
        rows.append(row)
        table.append(
            [side, f"{width:.0f}", f"{eyes:.0f}"]
            + [
                f"{100 * p['accuracy_mean']:.2f}% ± {100 * p['accuracy_std']:.2f} ({p['no_face_found']} no face)"
                for p in row["pipelines"].values()
            ]
        )
    labels = list(rows[0]["pipelines"])
    command = f"python scripts/lfw_face_size.py {args.folder}"
    report = {"command": command, "detector": detector, "folds": folds, "images": len(images), "rows": rows}
    path = write_table_report(
        args.folder,
        report,
        f"LFW folds {min(folds)}-{max(folds)} accuracy by face size (images shrunk before detection)",
        ["image side (px)", "face width (median px)", "eye distance (median px)", *labels],
        table,
    )
    print(path.read_text())


if __name__ == "__main__":
    main()
