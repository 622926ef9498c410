"""Copy measured numbers from reports into a model card, so each number on a card names its source.

    python scripts/update_card.py models/sface-teacher/card.json \
        --threshold-from reports/lfw-calibration-folds1-5/report.json --fmr 0.001 \
        --lfw reports/lfw-teachers-10fold/report.json --bench reports/bench-teachers/efficiency.json
    python scripts/update_card.py models/yunet-student/card.json --wider reports/wider-detectors-students/report.json \
        --landmarks reports/landmarks-lfw-folds6-10-students/report.json --bench reports/bench-detectors/efficiency.json

--threshold-from must be a report on folds the model is NOT reported on: the threshold is the score at which
the FMR is reached over all cross-identity image pairs of those folds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from biometrics.evaluation.efficiency import read_cards


def _result_for(report: dict, name: str) -> tuple[str, dict]:
    for label, result in report["results"].items():
        if name in (part.strip() for part in label.split("+")):
            return label, result
    raise SystemExit(f"no result for {name} in the report")


def _fold_text(folds: list[int]) -> str:
    return f"{folds[0]}-{folds[-1]}" if folds == list(range(folds[0], folds[-1] + 1)) else ",".join(map(str, folds))


def threshold_block(report_path: Path, name: str, fmr: str) -> dict:
    report = json.loads(report_path.read_text())
    label, result = _result_for(report, name)
    calibration, folds = result["calibration"], _fold_text(result["folds"])
    return {
        "value": round(calibration["thresholds"][fmr], 4),
        "fmr": float(fmr),
        "meaning": f"cosine similarity at which FMR = {float(fmr):g} over all {calibration['impostor_pairs']:,} "
        f"cross-identity pairs of the LFW View 2 folds {folds} images ({label})",
        "by_fmr": {
            rate: round(value, 4) for rate, value in calibration["thresholds"].items() if float(rate) < float(fmr)
        },
        "by_fmr_use": "stricter thresholds from the same pairs: identify and live read off the one for the gallery's "
        "size (biometrics.gallery.gallery_threshold)",
        "calibrated_on": f"LFW View 2 folds {folds}",
        "report": str(report_path),
        "command": report["meta"]["command"],
    }


def lfw_block(report_path: Path, name: str) -> dict:
    report = json.loads(report_path.read_text())
    label, result = _result_for(report, name)
    summary = result["summary"]
    return {
        "pipeline": label,
        "folds": _fold_text(result["folds"]),
        "pairs": summary["pairs"],
        "accuracy_mean": round(summary["accuracy_mean"], 4),
        "accuracy_std": round(summary["accuracy_std"], 4),
        "auc": round(summary["auc"], 5),
        "eer": round(summary["eer"], 4),
        "tar_at_far_1e-3": round(summary["tar_at_far"]["1e-3"]["tar"], 4),
        "detection_failures": result["detection_failures"]["count"],
        "report": str(report_path),
        "command": report["meta"]["command"],
    }


def bench_block(efficiency_path: Path, name: str) -> dict:
    card = next(c for c in read_cards(efficiency_path) if c["name"] == name)
    one_thread = next(run for run in card["runs"] if run["threads"] == 1)
    return {
        "parameters": card["parameters"],
        "macs": card["macs"],
        "input_shape": card["input_shape"],
        "file_size_bytes": card["file_size_bytes"],
        "latency_ms_batch1_1thread": {k: one_thread["latency_batch1"][k] for k in ("p50_ms", "p95_ms")},
        "peak_rss_over_baseline_mib": card["peak_rss_over_baseline_mib"],
        "machine": f"{card['processor']}, {card['cpu_count']} CPUs, onnxruntime {card['onnxruntime_version']}",
        "report": str(efficiency_path),
    }


def wider_block(report_path: Path, name: str) -> dict:
    report = json.loads(report_path.read_text())
    result = report["results"][name]
    return {
        "ap": {k: round(v, 4) for k, v in result["ap"].items()},
        "faces": result["faces"],
        "images": result["images"],
        "latency_ms_detect_call_1thread": result["latency_ms"],
        "settings": result["settings"],
        "report": str(report_path),
        "command": report["meta"]["command"],
    }


def landmarks_block(report_path: Path, name: str) -> dict:
    report = json.loads(report_path.read_text())
    result = next(r for r in report["results"] if r["detector"] == name)
    return {
        "nme_mean": round(result["nme_mean"], 4),
        "nme_median": round(result["nme_median"], 4),
        "faces": result["faces"],
        "missed": result["missed"],
        "report": str(report_path),
        "command": report["meta"]["command"],
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("card", type=Path)
    parser.add_argument("--threshold-from", type=Path, help="LFW report on the calibration (training) folds.")
    parser.add_argument("--fmr", default="0.001", help="Target FMR: a key of the report's calibration block.")
    parser.add_argument("--lfw", type=Path, help="LFW report whose accuracy the card quotes.")
    parser.add_argument("--bench", type=Path, help="efficiency.json from `biometrics bench`.")
    parser.add_argument("--wider", type=Path, help="WIDER FACE report (detectors): AP and detect-call latency.")
    parser.add_argument("--landmarks", type=Path, help="Landmark NME report (detectors).")
    args = parser.parse_args()
    card = json.loads(args.card.read_text())
    if args.threshold_from:
        card["threshold"] = threshold_block(args.threshold_from, card["name"], args.fmr)
    measured = card.setdefault("measured", {})
    if args.lfw:
        measured["lfw"] = lfw_block(args.lfw, card["name"])
    if args.bench:
        measured["efficiency"] = bench_block(args.bench, card["name"])
    if args.wider:
        measured["wider"] = wider_block(args.wider, card["name"])
    if args.landmarks:
        measured["landmarks"] = landmarks_block(args.landmarks, card["name"])
    args.card.write_text(json.dumps(card, indent=2) + "\n")
    print(json.dumps({k: card[k] for k in ("threshold", "measured") if k in card}, indent=2))


if __name__ == "__main__":
    main()
