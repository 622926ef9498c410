"""All 6,000 LFW pairs for a student, by cross-distillation: two students, each reported on the folds whose
people it never saw, combined into one 10-fold accuracy.

    python scripts/cross_distillation_report.py \
        reports/lfw-students-folds6-10/report.json:sface-student \
        reports/lfw-students-b-folds1-5/report.json:sface-student-b \
        --teacher sface-teacher --out reports/lfw-cross-distillation

Each fold's accuracy is taken as its own report computed it: the threshold chosen on the other folds of that
report (the same student), never on the fold itself. The teacher's numbers, from the same two reports, are
combined the same way so the comparison is like for like. INT8 results move with the CPU's integer instructions
(VNNI or not), so halves whose reports record different ones are refused: measure both on one machine.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from biometrics.runtime import int8_text


def per_fold(report: dict, embedder: str) -> tuple[str, list[dict]]:
    for label, result in report["results"].items():
        if label.split("+")[-1].strip() == embedder:
            return label, result["summary"]["per_fold"]
    raise SystemExit(f"no result for embedder {embedder}")


def recorded_int8_instructions(report: dict) -> list[str] | None:
    """The INT8 instructions of the CPU a report ran on; None where it predates their recording."""
    return (report.get("meta", {}).get("machine") or {}).get("int8_instructions")


def same_int8_kernels(per_source: list[list[str] | None]) -> None:
    recorded = {tuple(found) for found in per_source if found is not None}
    if len(recorded) > 1:
        raise SystemExit(
            "the halves ran on CPUs with different INT8 instructions ("
            + "; ".join(int8_text(list(found)) for found in sorted(recorded))
            + "): INT8 accuracy moves with them, so measure both halves on one machine"
        )


def combine(parts: list[tuple[dict, str]]) -> dict:
    folds = []
    for report, embedder in parts:
        label, rows = per_fold(report, embedder)
        folds += [dict(row, pipeline=label) for row in rows]
    folds.sort(key=lambda row: row["fold"])
    if sorted(row["fold"] for row in folds) != list(range(1, 11)):
        raise SystemExit("the reports must cover folds 1-10 exactly once between them")
    accuracies = np.array([row["accuracy"] for row in folds])
    return {"accuracy_mean": float(accuracies.mean()), "accuracy_std": float(accuracies.std()), "per_fold": folds}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("parts", nargs="+", help="REPORT.json:EMBEDDER, one per half")
    parser.add_argument("--teacher", default="sface-teacher")
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args()
    parts = [(json.loads(Path(path).read_text()), name) for path, name in (p.rsplit(":", 1) for p in args.parts)]
    int8_per_source = [recorded_int8_instructions(report) for report, _ in parts]  # None: not recorded
    same_int8_kernels(int8_per_source)
    student = combine(parts)
    teacher = combine([(report, args.teacher) for report, _ in parts])
    args.out.mkdir(parents=True, exist_ok=True)
    result = {
        "command": " ".join(["python scripts/cross_distillation_report.py", *sys.argv[1:]]),
        "method": "cross-distillation: each fold reported by the student that did not see its people",
        "sources": args.parts,
        "int8_instructions": int8_per_source,
        "student": student,
        "teacher": teacher,
    }
    (args.out / "report.json").write_text(json.dumps(result, indent=2))
    lines = [
        "# LFW View 2, all 6,000 pairs, by cross-distillation",
        "",
        f"`{result['command']}`",
        "",
        "Each fold is reported by the student trained without that fold's people (folds 1-5: the `-b` student,",
        "folds 6-10: the main student); its threshold is chosen on the other folds of the same student.",
        "",
        "| | accuracy (10 folds, mean ± std) | " + " | ".join(f"fold {f}" for f in range(1, 11)) + " |",
        "|---|---|" + "---|" * 10,
    ]
    for name, combined in (("students", student), (args.teacher, teacher)):
        lines.append(
            f"| {name} | {100 * combined['accuracy_mean']:.2f}% ± {100 * combined['accuracy_std']:.2f} | "
            + " | ".join(f"{100 * row['accuracy']:.2f}" for row in combined["per_fold"])
            + " |"
        )
    lines += ["", "Sources: " + ", ".join(f"`{p}`" for p in args.parts)]
    lines += ["", "CPU INT8 instructions, per source: " + "; ".join(map(int8_text, int8_per_source))]
    (args.out / "report.md").write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
