"""Copy a calibrated threshold from an LFW report into an embedder's model card.

    python scripts/set_threshold.py reports/lfw-calibration-folds1-5/report.json models/sface-teacher/card.json

The report must come from folds the model is not reported on (1-5); the threshold is the one at which the
chosen FMR is reached over all cross-identity image pairs of those folds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("report", type=Path)
    parser.add_argument("card", type=Path)
    parser.add_argument("--fmr", default="0.001", help="Target false-match rate (a key of the report's calibration).")
    args = parser.parse_args()
    report = json.loads(args.report.read_text())
    card = json.loads(args.card.read_text())
    label, result = next((label, r) for label, r in report["results"].items() if label.endswith(f"+ {card['name']}"))
    calibration = result["calibration"]
    folds = result["folds"]
    fold_text = f"{folds[0]}-{folds[-1]}"
    card["threshold"] = {
        "value": round(calibration["thresholds"][args.fmr], 4),
        "fmr": float(args.fmr),
        "meaning": f"cosine similarity at which FMR = {float(args.fmr):g} over all "
        f"{calibration['impostor_pairs']:,} cross-identity pairs of the LFW View 2 folds {fold_text} "
        f"images ({label})",
        "calibrated_on": f"LFW View 2 folds {fold_text}",
        "report": str(args.report),
        "command": report["meta"]["command"],
    }
    args.card.write_text(json.dumps(card, indent=2) + "\n")
    print(f"{card['name']}: threshold {card['threshold']['value']} ({card['threshold']['meaning']})")


if __name__ == "__main__":
    main()
