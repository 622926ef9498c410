"""Reports a reader can trust: every number with the command, models, versions and machine behind it."""

from __future__ import annotations

import csv
import datetime
import json
import os
import platform
import sys
from importlib import metadata
from pathlib import Path

import numpy as np

from biometrics.evaluation import metrics, plots
from biometrics.files import open_output, write_atomically
from biometrics.runtime import default_threads, int8_instructions, int8_text, processor_name


def _version(package: str) -> str | None:
    try:
        return metadata.version(package)
    except metadata.PackageNotFoundError:
        return None


def run_metadata(models: list, threads: int | list[int] | None = None) -> dict:
    """What was run, with what, where: enough to rerun it and to judge its timings. ``threads``: the run's (all
    cores, or BIOMETRICS_THREADS, by default), or a bench's thread counts."""
    return {
        "command": " ".join([Path(sys.argv[0]).name, *sys.argv[1:]]),
        "date": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
        "versions": {
            name: _version(name)
            for name in ("biometrics", "onnxruntime", "numpy", "opencv-python-headless", "scikit-learn")
        }
        | {"python": platform.python_version()},
        "models": list(  # each once, though a run may use it twice (scored, and in the landmark reference)
            {
                (m.name, m.source_sha256): {"name": m.name, "sha256": m.source_sha256, "source": str(m.source_path)}
                for m in models
            }.values()
        ),
        "threads": threads or default_threads(),
        "machine": {
            "platform": platform.platform(),
            "processor": processor_name(),
            "int8_instructions": int8_instructions(),
            "cpu_count": os.cpu_count(),
        },
    }


def write_table_report(out: Path, report: dict, title: str, header: list[str], rows: list[list]) -> Path:
    """``report.json`` (``report``, which should hold the command) and ``report.md`` (title, command, one table)
    in ``out``: the shape of the measurement scripts' reports. Returns the Markdown path."""
    out.mkdir(parents=True, exist_ok=True)
    write_atomically(out / "report.json", (json.dumps(report, indent=2) + "\n").encode())
    lines = [f"# {title}", "", f"`{report['command']}`", "", *_md_table(header, [[str(v) for v in r] for r in rows])]
    md_path = out / "report.md"
    write_atomically(md_path, ("\n".join(lines) + "\n").encode())
    return md_path


def _p50_1thread(card: dict) -> float:
    return next(run["latency_batch1"]["p50_ms"] for run in card["runs"] if run["threads"] == 1)


def _pct(value: float) -> str:
    return f"{100 * value:.2f}%"


def remove_stale_outputs(out_dir: Path, names: list[str]) -> None:
    """Remove ``names`` (glob patterns of files a report writes) from ``out_dir`` if it already holds a report:
    a rerun with fewer models, or without ``--bench``, would otherwise leave the last run's histograms, Pareto plot
    or efficiency cards beside the new report as if they were its own. A folder without a report is left alone."""
    if not (out_dir / "report.json").is_file():
        return
    for pattern in names:
        for path in out_dir.glob(pattern):
            path.unlink()


def write_score_plots(
    out_dir: Path, runs: dict[str, dict], thresholds: dict[str, float], *, private: bool = False
) -> dict[str, Path]:
    """roc.png (the FMRs below what the most impostor pairs of a run resolve shaded) and det.png of every run's
    ``scores`` and ``labels``, and one score histogram per run with its threshold marked (``scores_<i>.png``, in
    the order of ``runs``). ``private``: owner-only files in folders created owner-only (the user's own people)."""
    remove_stale_outputs(out_dir, ["scores_*.png"])
    curves = {label: metrics.roc(run["scores"], run["labels"]) for label, run in runs.items()}
    impostors = max(int(np.count_nonzero(run["labels"] == 0)) for run in runs.values())
    files = {
        "roc": plots.plot_roc(curves, out_dir / "roc.png", impostor_pairs=impostors, private=private),
        "det": plots.plot_det(curves, out_dir / "det.png", private=private),
    }
    for i, (label, run) in enumerate(runs.items()):
        files[f"scores_{i}"] = plots.plot_score_histograms(
            run["scores"],
            run["labels"],
            out_dir / f"scores_{i}.png",
            threshold=thresholds[label],
            title=label,
            private=private,
        )
    return files


PER_PAIR = ("scores", "labels", "pairs", "identification_curve")
"""What a run holds per pair (or per search): written to scores.csv (evaluate lfw, folder) or plotted, never into
report.json."""


def without_scores(runs: dict[str, dict]) -> dict[str, dict]:
    """The runs as report.json keeps them: everything but the per-pair arrays (``PER_PAIR``)."""
    return {label: {k: v for k, v in run.items() if k not in PER_PAIR} for label, run in runs.items()}


def write_pair_scores(path: Path, runs: dict[str, dict]) -> Path:
    """Every pair's score under every pipeline, a row per pair (its fold, its two images, same person or not), for
    paired comparisons of models (McNemar, bootstrap) and plots of one's own. Scores only, no embeddings."""
    pairs = next(iter(runs.values()))["pairs"]
    if any(run["pairs"] != pairs for run in runs.values()):
        raise ValueError("the runs scored different pairs; scores.csv lines them up pair by pair")
    columns = [run["scores"] for run in runs.values()]
    with open_output(path, newline="") as file:
        writer = csv.writer(file)
        writer.writerow(["fold", "image_a", "image_b", "same_person", *runs])
        for i, pair in enumerate(pairs):
            writer.writerow([pair.fold, *pair.images, int(pair.same), *(f"{column[i]:.6f}" for column in columns)])
    return path


def write_verification_report(
    out_dir: Path, title: str, runs: dict[str, dict], meta: dict, efficiency: dict[str, dict] | None = None
) -> dict[str, Path]:
    """Write report.json, report.md, scores.csv, roc.png, det.png and one score histogram per run.

    ``runs`` maps a label (e.g. "yunet-teacher + sface-teacher") to an ``evaluate_lfw`` result. With
    ``efficiency`` (label -> the embedder's efficiency card, measured in the same run) the report also gets an
    accuracy-vs-cost table and a Pareto plot.
    """
    if not efficiency:  # the cards of an earlier run with --bench (written before this, when there are new ones)
        remove_stale_outputs(out_dir, ["pareto.png", "efficiency.json", "efficiency.md"])
    files = write_score_plots(
        out_dir,
        runs,
        {label: float(np.median([f["threshold"] for f in run["summary"]["per_fold"]])) for label, run in runs.items()},
    )
    if efficiency:
        files["pareto"] = plots.plot_pareto(
            {
                label: (_p50_1thread(card), runs[label]["summary"]["accuracy_mean"], card["file_size_bytes"])
                for label, card in efficiency.items()
            },
            out_dir / "pareto.png",
        )
    files["scores_csv"] = write_pair_scores(out_dir / "scores.csv", runs)
    public = without_scores(runs)
    for label, card in (efficiency or {}).items():
        public[label]["efficiency"] = card
    files["json"] = write_atomically(
        out_dir / "report.json", json.dumps({"title": title, "meta": meta, "results": public}, indent=2).encode()
    )
    files["md"] = out_dir / "report.md"
    write_atomically(files["md"], _markdown(title, public, meta, files).encode())
    return files


def _md_table(header: list[str], rows: list[list[str]]) -> list[str]:
    return ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)] + ["| " + " | ".join(r) + " |" for r in rows]


def _tar_cell(point: dict) -> str:
    """A TAR@FAR cell, marked † when its FAR is below what the impostor pairs resolve (TAR at FAR 0)."""
    return _pct(point["tar"]) + ("†" if point["below_resolution"] else "")


def _tar_note(impostors: int) -> str:
    """What the impostor pairs resolve: each FAR's most false accepts, and what a † cell is."""
    allowed = "; ".join(
        f"at FAR {key} at most {int(far * impostors + 1e-9):,} of them may be accepted"
        for key, far in metrics.SUMMARY_FARS.items()
        if far * impostors >= 1
    )
    below = [key for key, far in metrics.SUMMARY_FARS.items() if far * impostors < 1]
    return (
        f"TAR@FAR: thresholds set on these pairs' impostor scores. {impostors:,} impostor pairs measure a FAR no "
        f"finer than 1/{impostors:,} = {1 / impostors:.1e}"
        + (f"; {allowed}" if allowed else "")
        + (
            f". † FAR {' and '.join(below)} is below that: the TAR shown is at FAR 0 (no impostor accepted)."
            if below
            else "."
        )
    )


def _fold_text(folds: list[int]) -> str:
    return f"{folds[0]}-{folds[-1]}" if folds == list(range(folds[0], folds[-1] + 1)) else str(folds)


def run_section(meta: dict) -> list[str]:
    """What report.json's ``meta`` says of the run that a reader of the numbers needs first: the command, when, which
    versions, and the CPU, whose INT8 instructions pick ONNX Runtime's kernels and so move an INT8 model's scores."""
    machine = meta["machine"]
    return [
        "## Run",
        "",
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; biometrics {meta['versions']['biometrics']}, "
        f"onnxruntime {meta['versions']['onnxruntime']}  ",
        f"CPU: {machine['processor']}, {machine['cpu_count']} CPUs, {meta['threads']} threads; INT8 instructions: "
        f"{int8_text(machine['int8_instructions'])}",
    ]


def _markdown(title: str, results: dict[str, dict], meta: dict, files: dict[str, Path]) -> str:
    summaries = {label: run["summary"] for label, run in results.items()}
    impostors = next(iter(summaries.values()))["impostor_pairs"]
    lines = [f"# {title}", "", *run_section(meta), "", "## Results", ""]
    lines += _md_table(
        [
            "pipeline",
            "folds",
            "pairs",
            "accuracy (mean ± std)",
            "AUC",
            "EER",
            "TAR@FAR=1e-2",
            "TAR@FAR=1e-3",
            "failures to detect",
        ],
        [
            [
                label,
                _fold_text(run["folds"]),
                str(s["pairs"]),
                f"{_pct(s['accuracy_mean'])} ± {_pct(s['accuracy_std'])}",
                f"{s['auc']:.4f}",
                _pct(s["eer"]),
                _tar_cell(s["tar_at_far"]["1e-2"]),
                _tar_cell(s["tar_at_far"]["1e-3"]),
                f"{run['detection_failures']['count']} / {run['images']}",
            ]
            for (label, run), s in zip(results.items(), summaries.values(), strict=True)
        ],
    )
    caveats = [f"- **{label}**: {caveat}" for label, run in results.items() for caveat in run.get("caveats", [])]
    if caveats:
        lines += ["", "**Not held out:**", "", *caveats]
    lines += [
        "",
        "Accuracy: each fold's threshold is chosen on the other evaluated folds (never on the fold itself; each "
        "fold's is under Per fold).",
        _tar_note(impostors),
        "",
        "## Calibration (all cross-identity image pairs)",
        "",
    ]
    rates = list(next(iter(results.values()))["calibration"]["thresholds"])  # the same images: the same rates
    lines += _md_table(
        ["pipeline", "impostor pairs", *(f"threshold @ FMR {float(rate):.0e}" for rate in rates)],
        [
            [
                label,
                f"{run['calibration']['impostor_pairs']:,}",
                *(f"{run['calibration']['thresholds'][rate]:.4f}" for rate in rates),
            ]
            for label, run in results.items()
        ],
    )
    folds = [f["fold"] for f in next(iter(summaries.values()))["per_fold"]]
    lines += ["", "## Per fold", "", "Each fold's accuracy at its threshold (in brackets), set on the other folds.", ""]
    lines += _md_table(
        ["pipeline", *(f"fold {f}" for f in folds)],
        [
            [label, *(f"{_pct(f['accuracy'])} ({f['threshold']:.4f})" for f in s["per_fold"])]
            for label, s in summaries.items()
        ],
    )
    costed = {label: run for label, run in results.items() if "efficiency" in run}
    if costed:
        lines += ["", "## Accuracy and cost (embedder, measured in this run)", ""]
        lines += _md_table(
            ["pipeline", "accuracy", "p50 ms (batch 1, 1 thread)", "size (MB)", "params (M)", "MACs (M)"],
            [
                [
                    label,
                    _pct(run["summary"]["accuracy_mean"]),
                    f"{_p50_1thread(run['efficiency']):.2f}",
                    f"{run['efficiency']['file_size_bytes'] / 1e6:.2f}",
                    f"{run['efficiency']['parameters'] / 1e6:.3f}",
                    f"{run['efficiency']['macs'] / 1e6:.1f}",
                ]
                for label, run in costed.items()
            ],
        )
        lines += ["", "Full efficiency cards: [efficiency.md](efficiency.md)."]
    lines += ["", "Every pair's score under each pipeline: [scores.csv](scores.csv)."]
    lines += ["", "## Models", ""] + [f"- `{m['name']}` sha256 `{m['sha256']}`" for m in meta["models"]]
    lines += ["", "## Plots", ""] + [f"![{key}]({path.name})" for key, path in files.items() if path.suffix == ".png"]
    return "\n".join(lines) + "\n"
