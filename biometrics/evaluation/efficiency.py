"""Efficiency cards for ONNX models: size, parameters and MACs (``complexity``), latency, throughput and peak memory.

Every model in this project is judged on efficiency as well as accuracy, so the numbers here must be
comparable between models measured in the same run: the same session options
(``biometrics.runtime.create_session``), the same random input, warm-up before timing, and one fresh worker
process per model so that peak RSS belongs to that model alone. Run as
``python -m biometrics.evaluation.efficiency --worker '<json>'`` this module is that worker.
"""

from __future__ import annotations

import argparse
import ctypes
import gc
import hashlib
import json
import math
import os
import platform
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterable
from dataclasses import asdict, dataclass
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort

from biometrics.errors import MeasurementError
from biometrics.evaluation.complexity import ORT_DTYPES, count_macs, count_parameters, first_input
from biometrics.files import write_atomically
from biometrics.runtime import create_session, int8_instructions, int8_text, processor_name

CARD_VERSION = 1

# ----------------------------------------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LatencyStats:
    """Per-call wall-clock latency of ``session.run`` (warm-up excluded)."""

    p50_ms: float
    p95_ms: float
    mean_ms: float
    iterations: int
    batch: int


@dataclass(frozen=True)
class ThroughputStats:
    """Images per second; ``batched`` is False when the model's fixed batch dim forced one call per image."""

    images_per_s: float
    batch: int
    batched: bool
    images: int
    seconds: float

    def __float__(self) -> float:
        return self.images_per_s


def _random_input(shape: list[int], dtype: Any, rng: np.random.Generator) -> np.ndarray:
    dtype = np.dtype(dtype)
    if dtype == np.bool_:
        return rng.integers(0, 2, size=shape).astype(np.bool_)
    if np.issubdtype(dtype, np.integer):
        info = np.iinfo(dtype)
        return rng.integers(max(info.min, -128), min(info.max, 127), size=shape, endpoint=True).astype(dtype)
    return rng.standard_normal(size=shape, dtype=np.float32).astype(dtype, copy=False)  # no float64 copy


def _feed(session: ort.InferenceSession, shape: list[int], dtype: Any | None, seed: int = 0) -> dict[str, np.ndarray]:
    """Random input (fixed seed) for the first input; other static-shaped inputs get random values too."""
    rng = np.random.default_rng(seed)
    inputs = session.get_inputs()
    first = inputs[0]
    feed = {first.name: _random_input(shape, dtype or ORT_DTYPES.get(first.type, np.float32), rng)}
    for extra in inputs[1:]:
        if not all(isinstance(d, int) and d > 0 for d in extra.shape):
            raise ValueError(f"cannot make up a value for input {extra.name!r} with shape {extra.shape}")
        feed[extra.name] = _random_input(list(extra.shape), ORT_DTYPES.get(extra.type, np.float32), rng)
    return feed


def _feeds(
    session: ort.InferenceSession, shape: list[int], dtype: Any | None, inputs: np.ndarray | None
) -> list[dict[str, np.ndarray]]:
    """Feeds to cycle through: one per row of ``inputs`` (real data, batch 1 each), else one random input."""
    if inputs is None:
        return [_feed(session, shape, dtype)]
    name = session.get_inputs()[0].name
    return [{name: np.ascontiguousarray(row[None])} for row in inputs]


def measure_latency(
    session: ort.InferenceSession,
    input_feed_shape: list[int],
    *,
    warmup: int = 10,
    iterations: int = 50,
    dtype: Any | None = np.float32,
    inputs: np.ndarray | None = None,
) -> LatencyStats:
    """Time ``iterations`` calls of ``session.run`` after ``warmup`` discarded ones, on one fixed random input
    or, given ``inputs`` (N x input shape), on those in turn.

    Warm-up matters: the first calls allocate the arena and pick kernels. ``dtype=None`` takes the element
    type from the session's first input. Real inputs matter too: some kernels' speed depends on the values
    (ONNX Runtime's PRelu ran three times slower on aligned faces than on random input).
    """
    if iterations < 1:
        raise ValueError("iterations must be >= 1")
    feeds = _feeds(session, list(input_feed_shape), dtype, inputs)
    for i in range(warmup):
        session.run(None, feeds[i % len(feeds)])
    times = [_timed_run(session, feeds[i % len(feeds)]) for i in range(iterations)]
    return latency_stats(times, batch=int(input_feed_shape[0]) if input_feed_shape else 1)


def _timed_run(session: ort.InferenceSession, feed: dict[str, np.ndarray]) -> float:
    start = time.perf_counter()
    session.run(None, feed)
    return time.perf_counter() - start


def latency_stats(seconds: list[float], batch: int) -> LatencyStats:
    times_ms = np.asarray(seconds, dtype=np.float64) * 1e3
    return LatencyStats(
        p50_ms=float(np.percentile(times_ms, 50)),
        p95_ms=float(np.percentile(times_ms, 95)),
        mean_ms=float(times_ms.mean()),
        iterations=len(times_ms),
        batch=batch,
    )


def _latency_record(stats: LatencyStats) -> dict[str, Any]:
    """A card's ``latency_batch1`` entry."""
    return {
        "p50_ms": round(stats.p50_ms, 4),
        "p95_ms": round(stats.p95_ms, 4),
        "mean_ms": round(stats.mean_ms, 4),
        "iterations": stats.iterations,
    }


def _latency_by_turns(spec: dict[str, Any]) -> list[dict[str, Any]]:
    """The worker side of ``latency_by_turns``: every session open at once, timed round by round."""
    sessions = [create_session(path, threads=spec["threads"]) for path in spec["model_paths"]]
    feeds = [
        _feeds(session, shape, None, None if inputs is None else np.load(inputs))
        for session, shape, inputs in zip(sessions, spec["input_shapes"], spec["inputs_paths"], strict=True)
    ]
    for session, model_feeds in zip(sessions, feeds, strict=True):
        for i in range(spec["warmup"]):
            session.run(None, model_feeds[i % len(model_feeds)])
    iterations, rounds = spec["iterations"], spec["rounds"]
    times: list[list[float]] = [[] for _ in sessions]
    for round_index in range(rounds):
        for session, model_feeds, model_times in zip(sessions, feeds, times, strict=True):
            # the rounds share exactly ``iterations`` calls, so a card's count is the one asked for
            turn = range(round_index * iterations // rounds, (round_index + 1) * iterations // rounds)
            model_times += [_timed_run(session, model_feeds[i % len(model_feeds)]) for i in turn]
    return [asdict(latency_stats(model_times, batch=1)) for model_times in times]


def latency_by_turns(
    models: list[tuple[bytes, list[int]]],
    *,
    threads: int = 1,
    warmup: int = 10,
    iterations: int = 50,
    rounds: int = 10,
    inputs: list[np.ndarray | None] | None = None,
) -> list[LatencyStats]:
    """Batch-1 latency of several models (ONNX bytes, input shape) timed by turns in one fresh process:
    ``rounds`` rounds, each running every model ``iterations / rounds`` times; ``inputs``: per model, real
    inputs to cycle through (None: random, see ``measure_latency``).

    A shared or throttling machine's speed drifts over seconds. Timed one after the other, two models' ratio
    moves with that drift (on our 2-core VM YuNet took 3.9 to 5.0 ms in four separate bench runs); timed by
    turns, the drift slows every model alike and the ratios hold.
    """
    with tempfile.TemporaryDirectory(prefix="biometrics-bench-") as tmp:
        paths, inputs_paths = [], []
        for index, ((data, _), model_inputs) in enumerate(zip(models, inputs or [None] * len(models), strict=True)):
            path = Path(tmp) / f"model{index}.onnx"
            path.write_bytes(data)
            paths.append(str(path))
            inputs_paths.append(_save_inputs(model_inputs, Path(tmp) / f"inputs{index}.npy"))
        spec = {
            "mode": "by_turns",
            "model_paths": paths,
            "inputs_paths": inputs_paths,
            "input_shapes": [[int(v) for v in shape] for _, shape in models],
            "threads": threads,
            "warmup": warmup,
            "iterations": iterations,
            "rounds": rounds,
        }
        answer = run_worker(spec)
    return [LatencyStats(**stats) for stats in answer["latency"]]


MAX_INPUTS = 32  # real inputs cycled through; more would only add to the worker's memory


def _inputs_description(inputs: np.ndarray | None, description: str | None) -> str:
    if inputs is None:
        return "random normal (one fixed input)"
    timed = f"; {MAX_INPUTS} of them, evenly chosen, timed" if len(inputs) > MAX_INPUTS else ""
    return (description or f"{len(inputs)} given inputs") + timed


def _save_inputs(inputs: np.ndarray | None, path: Path) -> str | None:
    """Real inputs travel to the worker process as an .npy file (at most ``MAX_INPUTS``, evenly chosen)."""
    if inputs is None:
        return None
    chosen = np.linspace(0, len(inputs) - 1, min(len(inputs), MAX_INPUTS)).astype(int)
    np.save(path, np.ascontiguousarray(inputs[chosen], dtype=np.float32))
    return str(path)


def _fixed_batch(session: ort.InferenceSession) -> int | None:
    """The first input's batch size if it is fixed in the graph, None if symbolic/0/absent (dynamic)."""
    shape = session.get_inputs()[0].shape
    if not shape:
        return 1
    dim = shape[0]
    return dim if isinstance(dim, int) and dim > 0 else None


def throughput(
    session: ort.InferenceSession,
    input_shape_batch1: list[int],
    batch: int,
    *,
    seconds: float = 2.0,
    iterations: int | None = None,
    warmup: int = 1,
    dtype: Any | None = np.float32,
    inputs: np.ndarray | None = None,
) -> ThroughputStats:
    """Images/s when feeding ``batch`` images at a time (random, or rows of ``inputs`` repeated to fill it).

    A dynamic batch dim gets real batches of ``batch``; a batch dim fixed in the graph (usually 1) gets
    ``batch`` single calls per round and ``batched=False``, so the card can say the number is not batched. A
    dynamic-batch model that fails at batch > 1 (hard-coded reshapes) falls back the same way. Runs
    ``iterations`` rounds if given, else rounds until ``seconds`` have passed (at least one).
    """
    if batch < 1:
        raise ValueError("batch must be >= 1")
    shape = list(input_shape_batch1)
    fixed = _fixed_batch(session)
    batched = fixed is None

    def make_feed(size: int) -> dict[str, np.ndarray]:
        if inputs is None:
            return _feed(session, [size, *shape[1:]], dtype)
        return {session.get_inputs()[0].name: np.ascontiguousarray(np.resize(inputs, (size, *inputs.shape[1:])))}

    if batched:
        feed = make_feed(batch)
        try:
            session.run(None, feed)
        except Exception:  # any ORT failure at batch > 1 means "not batchable"
            batched = False
    if batched:
        calls_per_round, images_per_call = 1, batch
    else:
        per_call = fixed or 1
        feed = make_feed(per_call)
        calls_per_round, images_per_call = math.ceil(batch / per_call), per_call
    for _ in range(warmup * calls_per_round):
        session.run(None, feed)
    rounds = 0
    start = time.perf_counter()
    while True:
        for _ in range(calls_per_round):
            session.run(None, feed)
        rounds += 1
        elapsed = time.perf_counter() - start
        if (iterations is not None and rounds >= iterations) or (iterations is None and elapsed >= seconds):
            break
    images = rounds * calls_per_round * images_per_call
    return ThroughputStats(images_per_s=images / elapsed, batch=batch, batched=batched, images=images, seconds=elapsed)


# ----------------------------------------------------------------------------------------------------------
# Worker process (one per model) and peak memory
# ----------------------------------------------------------------------------------------------------------


def _peak_rss_mib() -> float | None:
    """This process's peak resident set size in MiB.

    On Linux this reads VmHWM from /proc/self/status rather than ``getrusage(RUSAGE_SELF).ru_maxrss``: the
    kernel carries ru_maxrss over fork+exec, so a worker started from a 300 MiB pytest process would report
    at least 300 MiB whatever the model. VmHWM belongs to the worker's own address space. Elsewhere it falls
    back to ru_maxrss (KiB on Linux, bytes on macOS).
    """
    try:
        with open("/proc/self/status", encoding="ascii") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) / 1024  # kB
    except (OSError, ValueError, IndexError):
        pass
    try:
        import resource
    except ImportError:  # Windows
        return None
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


def machine_info() -> dict[str, Any]:
    """Versions and hardware that a latency number is meaningless without."""
    return {
        "onnxruntime_version": ort.__version__,
        "numpy_version": np.__version__,
        "onnx_version": onnx.__version__,
        "python_version": platform.python_version(),
        "platform": platform.platform(),
        "processor": processor_name(),
        "int8_instructions": int8_instructions(),
        "cpu_count": os.cpu_count(),
    }


def _run_measurements(spec: dict[str, Any]) -> dict[str, Any]:
    """Everything for one model, in this (fresh) process: timing first, then counts.

    Peak RSS is read right after the batch-1 latency runs (the deployment case: one face at a time), then
    again after the batched throughput runs, and before the counting (shape inference copies the graph; that
    memory belongs to the tooling, not to the model).
    """
    if spec.get("mode") == "baseline":
        return {"peak_rss_mib": _peak_rss_mib()}
    if spec.get("mode") == "by_turns":
        return {"latency": _latency_by_turns(spec)}
    path = spec["model_path"]
    shape = [int(v) for v in spec["input_shape"]]
    threads: list[int] = spec["threads"]
    batch = int(spec["batch"])
    runs: dict[int, dict[str, Any]] = {t: {"threads": t} for t in threads}
    inputs = None if spec.get("inputs_path") is None else np.load(spec["inputs_path"])
    # The real inputs beyond the one a random-input run holds are the bench's memory, not the model's.
    extra_input_mib = 0.0 if inputs is None else (len(inputs) - 1) * inputs[0].nbytes / 2**20
    input_name = None
    for t in threads:
        session = create_session(path, threads=t)
        input_name = session.get_inputs()[0].name
        stats = measure_latency(
            session, shape, warmup=spec["warmup"], iterations=spec["iterations"], dtype=None, inputs=inputs
        )
        runs[t]["latency_batch1"] = _latency_record(stats)
        del session
        gc.collect()
    peak_batch1 = _minus(_peak_rss_mib(), extra_input_mib)
    for t in threads:
        session = create_session(path, threads=t)
        tp = throughput(
            session,
            shape,
            batch,
            seconds=spec["throughput_seconds"],
            iterations=spec.get("throughput_iterations"),
            dtype=None,
            inputs=inputs,
        )
        runs[t][f"throughput_batch{batch}"] = round(tp.images_per_s, 2)
        runs[t]["throughput_batched"] = tp.batched
        del session
        gc.collect()
    peak_batched = _minus(_peak_rss_mib(), extra_input_mib)

    model = onnx.load(path)
    result: dict[str, Any] = {
        "input_name": input_name,
        "parameters": count_parameters(model),
        "runs": [runs[t] for t in threads],
        "peak_rss_mib": peak_batch1,
        f"peak_rss_batch{batch}_mib": peak_batched,
    }
    try:
        result["macs"] = count_macs(model, {first_input(model).name: shape})
    except ValueError as error:  # a card without MACs beats no card
        result["macs"] = None
        result["macs_error"] = str(error)
    return result


def _minus(value: float | None, amount: float) -> float | None:
    return None if value is None else value - amount


PARENT_ENV = "BIOMETRICS_BENCH_PARENT"
PR_SET_PDEATHSIG = 1  # linux/prctl.h


def _worker_env() -> dict[str, str]:
    """Make ``biometrics`` importable in the child even when not installed (tests run from a checkout), and tell
    it which process it measures for (``_die_with_parent``)."""
    env = dict(os.environ)
    root = str(Path(__file__).resolve().parents[2])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH", "")) if p)
    env[PARENT_ENV] = str(os.getpid())
    return env


def _die_with_parent() -> None:
    """End this worker when the bench that started it ends, however it ends (SIGTERM, SIGKILL): left alone, an
    orphaned worker went on timing at full CPU for as many iterations as were asked. Linux: the kernel sends
    SIGKILL on the parent's death; a parent gone before that was set is seen by its pid."""
    try:
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    except (OSError, AttributeError):  # not Linux: the worker ends with its measurement
        return
    if os.environ.get(PARENT_ENV) not in (None, str(os.getppid())):
        os._exit(1)


def run_worker(spec: dict[str, Any], timeout: float | None = None) -> dict[str, Any]:
    """Run ``spec`` in a fresh interpreter and return its JSON answer (last stdout line)."""
    proc = subprocess.run(
        [sys.executable, "-m", "biometrics.evaluation.efficiency", "--worker", json.dumps(spec)],
        capture_output=True,
        text=True,
        env=_worker_env(),
        timeout=timeout,
        check=False,
    )
    lines = [line for line in proc.stdout.splitlines() if line.strip()]
    if proc.returncode != 0 or not lines:
        reason = ([line for line in proc.stderr.splitlines() if line.strip()] or ["no output"])[-1].strip()
        raise MeasurementError(f"efficiency worker failed (exit {proc.returncode}): {reason[:300]}")
    return json.loads(lines[-1])


@lru_cache(maxsize=1)
def baseline_rss_mib() -> float | None:
    """Peak RSS of a worker that only imports python, numpy, onnx and onnxruntime (measured once per run)."""
    return run_worker({"mode": "baseline"})["peak_rss_mib"]


def _round(value: float | None, digits: int = 2) -> float | None:
    return None if value is None else round(value, digits)


def benchmark_model(
    model: str | os.PathLike | bytes,
    input_shape: list[int],
    *,
    name: str,
    threads: list[int] | None = None,
    batch: int = 32,
    warmup: int = 10,
    iterations: int = 50,
    throughput_seconds: float = 2.0,
    throughput_iterations: int | None = None,
    file_size_bytes: int | None = None,
    sha256: str | None = None,
    inputs: np.ndarray | None = None,
    inputs_description: str | None = None,
) -> dict[str, Any]:
    """The efficiency card of one model as a JSON-ready dict, measured in its own worker process.

    ``input_shape`` is the batch-1 shape of the first input. ``threads`` defaults to [1, os.cpu_count()].
    ``inputs`` (N x input shape, e.g. aligned faces for an embedder) are timed in turn instead of one random
    input; ``inputs_description`` says what they are, on the card.
    ``file_size_bytes``/``sha256`` default to those of the file (or bytes) measured; pass them to describe
    the published file when ``model`` is a prepared copy of it.
    """
    shape = [int(v) for v in input_shape]
    if not shape or shape[0] != 1:
        raise ValueError(f"input_shape must be the batch-1 shape, got {shape}")
    thread_counts = list(dict.fromkeys(threads or [1, os.cpu_count() or 1]))
    with tempfile.TemporaryDirectory(prefix="biometrics-bench-") as tmp:
        if isinstance(model, bytes):
            data = model
            path = Path(tmp) / "model.onnx"
            path.write_bytes(data)
        else:
            path = Path(model)
            data = path.read_bytes()
        spec = {
            "mode": "model",
            "model_path": str(path),
            "input_shape": shape,
            "threads": thread_counts,
            "batch": batch,
            "warmup": warmup,
            "iterations": iterations,
            "throughput_seconds": throughput_seconds,
            "throughput_iterations": throughput_iterations,
            "inputs_path": _save_inputs(inputs, Path(tmp) / "inputs.npy"),
        }
        measured = run_worker(spec)
    baseline = baseline_rss_mib()
    peak = measured.pop("peak_rss_mib")
    peak_batched = measured.pop(f"peak_rss_batch{batch}_mib")
    card: dict[str, Any] = {
        "card_version": CARD_VERSION,
        "name": name,
        "sha256": sha256 or hashlib.sha256(data).hexdigest(),
        "file_size_bytes": file_size_bytes if file_size_bytes is not None else len(data),
        "parameters": measured["parameters"],
        "macs": measured["macs"],
        "input_name": measured["input_name"],
        "input_shape": shape,
        "input_data": _inputs_description(inputs, inputs_description),
        "batch": batch,
        "warmup": warmup,
        "iterations": iterations,
        "threads": thread_counts,
        "runs": measured["runs"],
        "peak_rss_mib": _round(peak),
        "peak_rss_over_baseline_mib": _round(peak - baseline) if peak is not None and baseline else None,
        f"peak_rss_batch{batch}_mib": _round(peak_batched),
        "baseline_rss_mib": _round(baseline),
        "execution_provider": "CPUExecutionProvider",
        **machine_info(),
    }
    if "macs_error" in measured:
        card["macs_error"] = measured["macs_error"]
    return card


def retime_by_turns(
    cards: list[dict[str, Any]],
    models: list[tuple[bytes, list[int]]],
    *,
    iterations: int,
    rounds: int = 10,
    inputs: list[np.ndarray | None] | None = None,
) -> None:
    """Replace the batch-1 latency of each card (one per model, same thread counts) by timings taken by turns
    with the other models (``latency_by_turns``), in place: the cards' ratios are what a bench reports."""
    for threads in cards[0]["threads"]:
        timings = latency_by_turns(
            models, threads=threads, warmup=cards[0]["warmup"], iterations=iterations, rounds=rounds, inputs=inputs
        )
        for card, latency in zip(cards, timings, strict=True):
            run = _run_for(card, threads)
            run["latency_batch1"] = _latency_record(latency) | {
                "timed": f"by turns with the other {len(cards) - 1} models, {rounds} rounds, one process"
            }


# ----------------------------------------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------------------------------------


def _run_for(card: dict[str, Any], threads: int) -> dict[str, Any] | None:
    return next((run for run in card.get("runs", []) if run["threads"] == threads), None)


def _fmt(value: float | None, digits: int) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


def _fmt_millions(value: float | None) -> str:
    """Millions with two decimals, or three significant digits for tiny models (0.000224, not 0.000)."""
    if value is None:
        return "–"
    millions = value / 1e6
    return f"{millions:.2f}" if millions >= 1 else f"{millions:.3g}"


def _machine_line(cards: Iterable[dict[str, Any]]) -> str:
    keys = ("processor", "cpu_count", "platform", "python_version", "onnxruntime_version", "numpy_version")
    seen = {(*(card.get(k) for k in keys), int8_text(card.get("int8_instructions"))) for card in cards}
    lines = []
    for processor, cpus, plat, py, ort_v, np_v, int8 in sorted(seen, key=str):
        lines.append(
            f"Machine: {processor} ({cpus} CPUs; INT8 instructions: {int8}), {plat}; Python {py}, onnxruntime "
            f"{ort_v}, numpy {np_v}."
        )
    if len(lines) > 1:
        lines.append("**Warning:** these cards come from different machines or versions: do not compare.")
    return "\n".join(lines)


def read_cards(path: Path) -> list[dict[str, Any]]:
    """The cards of an ``efficiency.json``: its ``cards``, or the whole file where it is a bare list of them (as
    written before the run's ``meta`` was recorded beside them: those committed under ``reports/``)."""
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    return data if isinstance(data, list) else data["cards"]


def write_efficiency_report(cards: list[dict[str, Any]], out_dir: Path, meta: dict[str, Any]) -> tuple[Path, Path]:
    """Write ``efficiency.json`` (``meta``, the run as ``report.run_metadata`` records it: command, date, versions,
    machine, each model's path and SHA-256; and ``cards``) and ``efficiency.md`` (the run, one table row per card).

    The "p50 vs first" column divides each model's single-thread p50 by the first card's, so a student is
    compared with a baseline measured in the same run on the same machine.
    """
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path = out_dir / "efficiency.json"
    md_path = out_dir / "efficiency.md"
    write_atomically(json_path, (json.dumps({"meta": meta, "cards": cards}, indent=2) + "\n").encode())

    low = min((min(c["threads"]) for c in cards), default=1)
    highs = {max(c["threads"]) for c in cards}
    high = highs.pop() if len(highs) == 1 else None
    high_label = f"{high} thread{'s' * (high != 1)}" if high is not None else "max threads"
    one_thread_count = high == low  # one latency column says it all
    batches = {c["batch"] for c in cards}
    batch_label = f"batch {next(iter(batches))}" if len(batches) == 1 else "batch"
    header = [
        "model",
        "params (M)",
        "MACs (M)",
        "size (MB)",
        f"p50 ms @{low}t",
        f"p95 ms @{low}t",
        *([] if one_thread_count else [f"p50 ms @{high_label}"]),
        *([] if one_thread_count else [f"img/s @{low}t ({batch_label})"]),
        f"img/s @{high_label} ({batch_label})",
        "peak RSS MiB (+model)",
        f"peak RSS MiB ({batch_label})",
        "p50 vs first",
    ]
    rows = ["| " + " | ".join(header) + " |", "|" + "|".join(["---"] + ["---:"] * (len(header) - 1)) + "|"]
    reference = None
    unbatched = False
    for card in cards:
        first = _run_for(card, low) or card["runs"][0]
        top_threads = max(card["threads"])
        top = _run_for(card, top_threads) or card["runs"][-1]
        p50 = first["latency_batch1"]["p50_ms"]
        reference = reference or p50
        tput = top.get(f"throughput_batch{card['batch']}")
        low_tput = first.get(f"throughput_batch{card['batch']}")
        mark = ""
        if not top.get("throughput_batched", True):
            mark, unbatched = " †", True
        top_note = "" if high is not None else f" ({top_threads}t)"
        batch_note = "" if len(batches) == 1 else f" (b{card['batch']})"
        macs = card.get("macs")
        rss = card.get("peak_rss_mib")
        over = card.get("peak_rss_over_baseline_mib")
        rss_cell = _fmt(rss, 1) + (f" (+{over:.1f})" if over is not None else "")
        rows.append(
            "| "
            + " | ".join(
                [
                    str(card["name"]),
                    _fmt_millions(card["parameters"]),
                    _fmt_millions(macs),
                    _fmt_millions(card["file_size_bytes"]),
                    _fmt(p50, 2),
                    _fmt(first["latency_batch1"]["p95_ms"], 2),
                    *([] if one_thread_count else [_fmt(top["latency_batch1"]["p50_ms"], 2) + top_note]),
                    *([] if one_thread_count else [_fmt(low_tput, 1) + mark + batch_note]),
                    _fmt(tput, 1) + mark + top_note + batch_note,
                    rss_cell,
                    _fmt(card.get(f"peak_rss_batch{card['batch']}_mib"), 1),
                    f"{p50 / reference:.2f}×" if reference else "–",
                ]
            )
            + " |"
        )
    baseline = _fmt(cards[0].get("baseline_rss_mib") if cards else None, 1)
    notes = [
        "",
        "MACs count Conv/ConvTranspose/Gemm/MatMul only (elementwise, pooling and normalization excluded); "
        "latency is batch 1, warm-up excluded; peak RSS is per model in a fresh process, after the batch-1 runs "
        f"and after the batched ones; (+model) is above the bare import baseline of {baseline} MiB.",
    ]
    if cards and all("timed" in (_run_for(c, low) or {}).get("latency_batch1", {}) for c in cards):
        notes.append(
            "Latency: the models were timed by turns in one process (each round runs every model), so a drift of "
            "the machine's speed slows them alike and the ratios hold."
        )
    inputs = sorted({card.get("input_data", "random normal (one fixed input)") for card in cards})
    notes.append(f"Input: {'; '.join(inputs)}.")
    if unbatched:
        notes.append("† fixed batch dimension: throughput measured as single-image calls, not batched.")
    run = [
        f"Command: `{meta['command']}`  ",
        f"Date: {meta['date']}; biometrics {meta['versions']['biometrics']}  ",
        _machine_line(cards),
    ]
    models = [f"- `{m['name']}` sha256 `{m['sha256'][:12]}`: `{m['source']}`" for m in meta["models"]]
    text = "\n".join(["# Efficiency", "", *run, "", *rows, *notes, "", "## Models", "", *models]) + "\n"
    write_atomically(md_path, text.encode())
    return json_path, md_path


# ----------------------------------------------------------------------------------------------------------
# Entry point for the worker process
# ----------------------------------------------------------------------------------------------------------


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--worker", required=True, help="JSON measurement spec (internal use)")
    args = parser.parse_args(argv)
    _die_with_parent()
    result = _run_measurements(json.loads(args.worker))
    sys.stdout.write("\n" + json.dumps(result) + "\n")
    sys.stdout.flush()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
