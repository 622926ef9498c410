"""ONNX Runtime sessions configured the same way everywhere (threads, no spinning)."""

from __future__ import annotations

import os

import onnxruntime as ort


def default_threads() -> int:
    """All cores unless BIOMETRICS_THREADS says otherwise."""
    return int(os.environ.get("BIOMETRICS_THREADS", os.cpu_count() or 1))


def create_session(model: str | bytes | os.PathLike, threads: int | None = None) -> ort.InferenceSession:
    """A CPU session with ``threads`` intra-op threads.

    Spinning is switched off: with two sessions in one process (detector + embedder) idle threads that spin
    fight over the cores and halve throughput on small machines.
    """
    options = ort.SessionOptions()
    options.intra_op_num_threads = threads or default_threads()
    options.inter_op_num_threads = 1
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    options.log_severity_level = 3
    source = model if isinstance(model, bytes) else os.fspath(model)
    return ort.InferenceSession(source, sess_options=options, providers=["CPUExecutionProvider"])
