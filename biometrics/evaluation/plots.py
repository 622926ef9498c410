"""PNG plots for evaluation reports: ROC, DET, score histograms, Pareto fronts and detection PR curves.

Built on ``matplotlib.figure.Figure`` with the Agg canvas, never pyplot, so there is no global figure
state and no display is needed (works headless, in threads and in tests). Each function takes several
curves keyed by a legend label, because reports compare models in one figure; each writes a PNG and
returns its path (parent folders are created; ``private``: owner-only, for a report on the user's own people).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
from matplotlib import ticker
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure

from biometrics.evaluation.metrics import RocCurve
from biometrics.files import open_output

if TYPE_CHECKING:  # wider.py writes its report with these plots, so it cannot be imported here at run time
    from biometrics.evaluation.wider import PrCurve

__all__ = ["plot_det", "plot_pareto", "plot_pr", "plot_roc", "plot_score_histograms"]

# Rates below this are clipped so log axes stay finite (0 is where every ROC starts).
MIN_RATE = 1e-5
# FMR operating points marked on ROC plots (the ones verification_summary reports).
MARKED_FMRS = (1e-3, 1e-2)


def _new_figure() -> Figure:
    fig = Figure(figsize=(6.4, 4.8), dpi=120)
    FigureCanvasAgg(fig)
    return fig


def _save(fig: Figure, path: str | os.PathLike[str], private: bool) -> Path:
    out = Path(path)
    with open_output(out, "wb", private=private) as file:
        fig.savefig(file, format="png")
    return out


def _finish(
    fig: Figure,
    ax,
    path,
    *,
    xlabel: str,
    ylabel: str,
    title: str,
    legend: str | None,
    private: bool = False,
    labels: list | None = None,
) -> Path:
    """The ending every plot shares: axis labels, title, grid, optional legend, layout, then the point labels
    (annotations) kept apart in that layout, PNG."""
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.grid(True, which="both", alpha=0.3)
    if legend:
        ax.legend(loc=legend)
    fig.tight_layout()
    if labels:
        separate_labels(ax, labels)
    return _save(fig, path, private)


def _rate_floor(rates: list[np.ndarray], show: float = 1.0) -> float:
    """Where a log rate axis starts: the decade below the smallest non-zero rate (1 / pairs counted), or below
    ``show`` if that is lower, and never below MIN_RATE. Left of the smallest rate every curve is flat, so the
    axis does not spend decades on nothing."""
    positive = [r[r > 0].min() for r in rates if (r > 0).any()]
    smallest = min([*positive, show])
    return max(MIN_RATE, 10.0 ** np.floor(np.log10(smallest) - 1e-9))


def _tmr_at(curve: RocCurve, fmr: float) -> float:
    """Step-function TMR at a given FMR: the best TMR with FMR <= fmr (what tar_at_far reports)."""
    ok = curve.fmr <= fmr
    return float(curve.tmr[ok].max()) if ok.any() else 0.0


def plot_roc(
    curves: dict[str, RocCurve],
    path: str | os.PathLike[str],
    title: str = "",
    impostor_pairs: int | None = None,
    *,
    private: bool = False,
) -> Path:
    """TMR vs FMR with a log FMR axis from the smallest FMR the pairs can measure, marking each curve at FMR 1e-3
    and 1e-2; the TMR axis starts just below the lowest curve (a 0-1 axis flattens curves above 0.95 into one).
    With ``impostor_pairs``, the FMRs below 1 / their number are shaded: no impostor can be accepted there, so a
    mark in that region is the TMR at FMR 0."""
    if not curves:
        raise ValueError("plot_roc needs at least one curve")
    floor = _rate_floor([c.fmr for c in curves.values()], show=min(MARKED_FMRS) / 2)
    lowest = min(_tmr_at(c, floor) for c in curves.values())
    fig = _new_figure()
    ax = fig.add_subplot()
    if impostor_pairs and 1 / impostor_pairs > floor:
        ax.axvspan(floor, 1 / impostor_pairs, color="0.85", label=f"FMR < 1/{impostor_pairs:,}: not resolved")
    for fmr_mark in MARKED_FMRS:
        ax.axvline(fmr_mark, color="0.6", linestyle=":", linewidth=1)
    for label, c in curves.items():
        (line,) = ax.step(np.clip(c.fmr, MIN_RATE, 1.0), c.tmr, where="post", label=label)
        marks = np.array(MARKED_FMRS)
        ax.plot(marks, [_tmr_at(c, m) for m in marks], "o", color=line.get_color(), markersize=4)
    ax.set_xscale("log")
    ax.set_xlim(floor, 1.0)
    ax.set_ylim(max(0.0, np.floor(lowest * 20 - 0.2) / 20), 1.0 + 0.002)
    return _finish(
        fig,
        ax,
        path,
        xlabel="False match rate (FMR)",
        ylabel="True match rate (TMR)",
        title=title or "ROC",
        legend="lower right",
        private=private,
    )


def plot_det(
    curves: dict[str, RocCurve],
    path: str | os.PathLike[str],
    title: str = "",
    rates: tuple[str, str] = ("False match rate (FMR)", "False non-match rate (FNMR)"),
    *,
    private: bool = False,
) -> Path:
    """FNMR vs FMR, both axes log-scale from the decade below the smallest rate the pairs can measure (a zero rate
    is drawn on the axis): lower-left is better. ``rates`` names the axes (x, y): a 1:N curve plots FNIR vs FPIR."""
    if not curves:
        raise ValueError("plot_det needs at least one curve")
    fmr_floor = _rate_floor([c.fmr for c in curves.values()], show=min(MARKED_FMRS) / 2)
    fnmr_floor = _rate_floor([c.fnmr for c in curves.values()])
    fig = _new_figure()
    ax = fig.add_subplot()
    for label, c in curves.items():
        ax.step(np.clip(c.fmr, fmr_floor, 1.0), np.clip(c.fnmr, fnmr_floor, 1.0), where="post", label=label)
    ax.set_xscale("log")
    ax.set_yscale("log")
    ax.set_xlim(fmr_floor, 1.0)
    ax.set_ylim(fnmr_floor, 1.0)
    return _finish(
        fig,
        ax,
        path,
        xlabel=rates[0],
        ylabel=rates[1],
        title=title or "DET",
        legend="upper right",
        private=private,
    )


def plot_score_histograms(
    scores: np.ndarray,
    labels: np.ndarray,
    path: str | os.PathLike[str],
    threshold: float | None = None,
    title: str = "",
    bins: int = 50,
    *,
    private: bool = False,
) -> Path:
    """Genuine vs impostor score densities on shared bins, with an optional threshold line.

    Densities (not counts) because impostor pairs usually far outnumber genuine ones.
    """
    s = np.asarray(scores, dtype=np.float64)
    lab = np.asarray(labels)
    if s.ndim != 1 or lab.shape != s.shape:
        raise ValueError(f"scores and labels must be 1-D and the same length, got {s.shape} and {lab.shape}")
    gen, imp = s[lab == 1], s[lab == 0]
    if gen.size == 0 or imp.size == 0:
        raise ValueError("need both genuine (1) and impostor (0) scores to plot histograms")
    edges = np.histogram_bin_edges(s, bins=bins)
    fig = _new_figure()
    ax = fig.add_subplot()
    ax.hist(imp, bins=edges, density=True, alpha=0.5, label=f"impostor (n={imp.size})", color="tab:red")
    ax.hist(gen, bins=edges, density=True, alpha=0.5, label=f"genuine (n={gen.size})", color="tab:green")
    if threshold is not None:
        ax.axvline(
            float(threshold),
            color="k",
            linestyle="--",
            linewidth=1.2,
            label=f"threshold = {float(threshold):.4g}",
        )
    return _finish(
        fig,
        ax,
        path,
        xlabel="Similarity score",
        ylabel="Density",
        title=title or "Score distributions",
        legend="best",
        private=private,
    )


def pareto_front(points: dict[str, tuple[float, float, float]]) -> list[str]:
    """The labels no other model beats on both latency and accuracy, fastest first."""
    front, best = [], -np.inf
    for label, (_, accuracy, _) in sorted(points.items(), key=lambda item: (item[1][0], -item[1][1])):
        if accuracy > best:
            front.append(label)
            best = accuracy
    return front


def separate_labels(ax, labels: list) -> None:
    """Moves each annotation (placed in offset points) up or down, as little as it can, so that it overlaps no
    label above it and not the legend, and stays inside the axes: models of nearly the same latency and accuracy
    (a network's FP32 and INT8 files) keep readable names. Call it once the figure is laid out."""
    fig = ax.figure
    fig.canvas.draw()  # text has no extent before it is drawn once
    renderer = fig.canvas.get_renderer()
    inside = ax.get_window_extent(renderer)
    taken = [ax.get_legend().get_window_extent(renderer)] if ax.get_legend() else []
    for label in sorted(labels, key=lambda a: -a.get_window_extent(renderer).y1):
        box = label.get_window_extent(renderer)
        shifts = [0.0, *(o.y0 - 2 - box.y1 for o in taken), *(o.y1 + 2 - box.y0 for o in taken)]

        def fits(shift: float, box=box) -> bool:
            moved = box.translated(0, shift)
            return inside.y0 <= moved.y0 and moved.y1 <= inside.y1 and not any(o.overlaps(moved) for o in taken)

        shift = min((s for s in shifts if fits(s)), key=abs, default=0.0)
        offset_x, offset_y = label.xyann
        label.xyann = (offset_x, offset_y + shift * 72 / fig.dpi)  # pixels to points
        taken.append(box.translated(0, shift))
        if shift:  # a thin leader line says which marker a moved name belongs to
            leader = {"arrowstyle": "-", "color": "0.6", "linewidth": 0.5, "shrinkA": 0, "shrinkB": 0}
            ax.annotate("", label.xy, xytext=label.xyann, textcoords="offset points", arrowprops=leader)


def plot_pareto(points: dict[str, tuple[float, float, float]], path: str | os.PathLike[str], title: str = "") -> Path:
    """Accuracy against latency, one marker per model, marker area proportional to file size, the Pareto front
    dashed.

    ``points`` maps a label to (latency_ms, accuracy, file_size_bytes). Up and to the left is better.
    """
    if not points:
        raise ValueError("plot_pareto needs at least one point")
    fig = _new_figure()
    ax = fig.add_subplot()
    largest = max(size for _, _, size in points.values())
    front = pareto_front(points)
    ax.plot(
        [points[label][0] for label in front],
        [100 * points[label][1] for label in front],
        "--",
        color="0.5",
        linewidth=1,
        drawstyle="steps-post",
        label="Pareto front",
    )
    latencies = np.log([latency for latency, _, _ in points.values()])
    middle = (latencies.min() + latencies.max()) / 2
    labels = []
    for label, (latency, accuracy, size) in points.items():
        area = 40 + 960 * size / largest  # points squared
        ax.scatter([latency], [100 * accuracy], s=area, alpha=0.6)
        right_half = np.log(latency) > middle  # its label goes to the left, inside the axes
        clear = 0.75 * np.sqrt(area / np.pi) + 2  # off the marker's edge, diagonally
        labels.append(
            ax.annotate(
                f"{label}\n{size / 1e6:.2f} MB",
                (latency, 100 * accuracy),
                fontsize=7,
                xytext=(-clear if right_half else clear, clear),
                textcoords="offset points",
                ha="right" if right_half else "left",
            )
        )
    ax.set_xscale("log")
    ax.margins(x=0.25, y=0.15)
    ax.xaxis.set_major_locator(ticker.LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.xaxis.set_major_formatter(ticker.FuncFormatter(lambda value, _: f"{value:g}"))
    ax.xaxis.set_minor_formatter(ticker.NullFormatter())
    return _finish(
        fig,
        ax,
        path,
        xlabel="Embedding latency, batch 1, 1 thread (ms, log scale)",
        ylabel="LFW accuracy (%)",
        title=title or "Accuracy vs latency (marker area = file size)",
        legend="lower right",
        labels=labels,
    )


def plot_pr(curves: dict[str, PrCurve], path: str | os.PathLike[str], title: str = "") -> Path:
    """Precision vs recall of detectors (label them with their AP): up and to the right is better."""
    if not curves:
        raise ValueError("plot_pr needs at least one curve")
    fig = _new_figure()
    ax = fig.add_subplot()
    for label, c in curves.items():
        ax.plot(c.recall, c.precision, label=label)
    ax.set_xlim(0.0, 1.0)
    ax.set_ylim(0.0, 1.01)
    return _finish(
        fig, ax, path, xlabel="Recall", ylabel="Precision", title=title or "Precision-recall", legend="lower left"
    )
