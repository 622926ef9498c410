"""ONNX Runtime sessions configured the same way everywhere (threads, no spinning, no telemetry), and the
machine facts a timing needs."""

from __future__ import annotations

import os
import platform
import re
from typing import TYPE_CHECKING

from biometrics.errors import UsageError

if TYPE_CHECKING:  # imported when a session is made: the command line starts without it
    import onnxruntime as ort


MAX_THREADS = 256
"""More threads than any machine this runs on has cores: ONNX Runtime would spend minutes creating them."""


def default_threads() -> int:
    """All cores unless BIOMETRICS_THREADS says otherwise."""
    value = os.environ.get("BIOMETRICS_THREADS")
    if value is None:
        return os.cpu_count() or 1
    if not re.fullmatch(r"\s*[0-9]+\s*", value) or not 1 <= int(value) <= MAX_THREADS:
        raise UsageError(f"BIOMETRICS_THREADS='{value}': expected a whole number of threads, 1 to {MAX_THREADS}")
    return int(value)


def check_threads(threads: int | None) -> int | None:
    """A thread count given in code: None (all cores, or BIOMETRICS_THREADS) or a whole number 1 to
    ``MAX_THREADS``; anything else is a ``UsageError`` here, not an obscure failure of the model it was meant for."""
    if threads is not None and (
        isinstance(threads, bool) or not isinstance(threads, int) or not 1 <= threads <= MAX_THREADS
    ):
        raise UsageError(f"threads={threads!r}: expected a whole number of threads, 1 to {MAX_THREADS}, or None")
    return threads


def processor_name() -> str:
    """The CPU model (e.g. "AMD EPYC 7B13"), which a latency means nothing without."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


INT8_INSTRUCTIONS = ("avx2", "avx512bw", "avx512_vnni", "avx_vnni", "amx_int8", "asimddp", "i8mm")
"""CPU extensions whose presence picks ONNX Runtime's INT8 kernels: AVX2 without VNNI sums pairs of u8 x s8 products
in 16 bits and can saturate, so an INT8 model's scores (and the thresholds set on them) move slightly with them."""


def int8_instructions() -> list[str]:
    """Those of ``INT8_INSTRUCTIONS`` this CPU has (from /proc/cpuinfo; empty where it cannot be read)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            flags = next((line.split(":", 1)[1].split() for line in fh if line.startswith(("flags", "Features"))), [])
    except OSError:
        return []
    return [name for name in INT8_INSTRUCTIONS if name in flags]


def int8_text(instructions: list[str] | None) -> str:
    """``int8_instructions()`` as a report writes it: which of them a run had, "none of ..." or "not recorded"."""
    if instructions is None:
        return "not recorded"
    return ", ".join(instructions) or "none of " + "/".join(INT8_INSTRUCTIONS)


def create_session(
    model: str | bytes | os.PathLike, threads: int | None = None, config: dict[str, str] | None = None
) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads (and ONNX Runtime session ``config`` entries, if any).

    Spinning is switched off: with two sessions in one process (detector + embedder) idle threads that spin
    fight over the cores and halve throughput on small machines. ONNX Runtime (1.32+ on Linux) queues telemetry
    events about sessions and errors in ~/.cache/Microsoft/DeveloperTools/.onnxruntime: they are switched off
    before any session is made (README, Privacy), should ONNX Runtime have been imported before ``biometrics`` set
    ``ORT_DISABLE_TELEMETRY`` (``biometrics/__init__.py``).
    """
    import onnxruntime as ort

    ort.disable_telemetry_events()
    options = ort.SessionOptions()
    options.intra_op_num_threads = check_threads(threads) or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 4  # fatal only: a failing run raises, and the command says it in one line
    for key, value in (config or {}).items():
        options.add_session_config_entry(key, value)
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
