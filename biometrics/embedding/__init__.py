"""Face embedders: aligned 112x112 crops in, L2-normalised embeddings out."""

from __future__ import annotations

import numpy as np

from biometrics.errors import ModelError
from biometrics.registry import Adapters, ResolvedModel

EMBED_BATCH = 4
"""Faces per ``session.run``. ONNX Runtime's CPU arena keeps the memory of the largest batch a session has run
for as long as it lives, so one crowded frame would raise a long-running `live` for good: the student's process
peaked at 484 MiB after a batch of 32, 127 after 4 (91 at batch 1); per face, 4 ran the student within 6% of its
best batch and the teacher within 11%, where 32 ran the student 65% slower than one face at a time on 1 thread
(``scripts/embedder_batch.py``, ``reports/embedder-batch``)."""


class Embedder:
    """An ONNX embedder for ArcFace-aligned crops.

    The card says the channel order and, if the graph does not normalise itself, ``mean``/``std``.
    Batches are split into chunks of ``batch_size`` (``EMBED_BATCH``; one call at a time if the graph's batch is
    fixed).
    """

    def __init__(self, model: ResolvedModel, *, batch_size: int = EMBED_BATCH, threads: int | None = None):
        self.model = model
        spec = model.card.input
        self.size = tuple(spec.get("size", (112, 112)))
        self.rgb = spec.get("channel_order", "RGB").upper() == "RGB"
        # one number, or one per channel (the card checked them): shaped to broadcast over N x 3 x H x W
        self.mean = np.asarray(spec.get("mean", 0.0), np.float32).reshape(-1, 1, 1)
        self.std = np.asarray(spec.get("std", 1.0), np.float32).reshape(-1, 1, 1)
        self.session = model.session(threads)
        graph_input = self.session.get_inputs()[0]
        expected = (3, *self.size)
        if len(graph_input.shape) != 4 or any(
            isinstance(got, int) and got != want for got, want in zip(graph_input.shape[1:], expected, strict=True)
        ):
            raise ModelError(
                f"model '{model.name}' is not an embedder for {self.size[0]}x{self.size[1]} crops "
                f"(its input is {graph_input.shape})"
            )
        graph_outputs = self.session.get_outputs()
        if len(graph_outputs) != 1:  # which one is the embedding? Taking the first could compare anything
            names = ", ".join(output.name for output in graph_outputs)
            raise ModelError(
                f"model '{model.name}' is not an embedder: it has {len(graph_outputs)} outputs ({names}), not one, "
                "the N x D embedding (onnx.utils.extract_model keeps only that one)"
            )
        shape = graph_outputs[0].shape
        if shape and (len(shape) != 2 or (isinstance(shape[1], int) and shape[1] < 2)):  # when declared
            raise ModelError(f"model '{model.name}' is not an embedder: its output is {shape}, not N x D (D >= 2)")
        self.input_name = graph_input.name
        self.batch_size = batch_size if not isinstance(graph_input.shape[0], int) else graph_input.shape[0]

    @property
    def name(self) -> str:
        return self.model.name

    @property
    def threshold(self) -> float | None:
        """The card's default decision threshold on cosine similarity (see its ``threshold`` block; its value was
        checked when the card was read)."""
        block = self.model.card.data.get("threshold")
        return None if block is None else float(block["value"])

    @property
    def false_match_thresholds(self) -> dict[float, float]:
        """One comparison's false-match rate -> the threshold that reaches it, as the card calibrated them: its
        ``value`` at ``fmr`` and the stricter ones of ``by_fmr``, which set the threshold for a gallery's size
        (``biometrics.gallery.gallery_threshold``). Empty without a calibrated FMR."""
        block = self.model.card.data.get("threshold") or {}
        if "fmr" not in block:
            return {}
        calibrated = {float(rate): float(value) for rate, value in block.get("by_fmr", {}).items()}
        return calibrated | {float(block["fmr"]): float(block["value"])}

    def inputs(self, crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """The network input (N x 3 x H x W float32) for N aligned BGR uint8 crops."""
        batch = np.asarray(crops)
        if batch.ndim == 3:
            batch = batch[None]
        if batch.shape[1:3] != self.size:
            raise ValueError(f"{self.name} expects {self.size[0]}x{self.size[1]} crops, got {batch.shape[1:3]}")
        if self.rgb:
            batch = batch[..., ::-1]
        return np.ascontiguousarray((batch.transpose(0, 3, 1, 2).astype(np.float32) - self.mean) / self.std)

    def embed(self, crops: np.ndarray | list[np.ndarray]) -> np.ndarray:
        """Embeddings (N x D, unit length) for N aligned BGR uint8 crops."""
        tensor = self.inputs(crops)
        outputs = [
            self.session.run(None, {self.input_name: np.ascontiguousarray(tensor[i : i + self.batch_size])})[0]
            for i in range(0, len(tensor), self.batch_size)
        ]
        embeddings = np.concatenate(outputs).reshape(len(tensor), -1).astype(np.float32)
        if not np.isfinite(embeddings).all():  # a broken model must not read as "different people"
            raise ModelError(f"model '{self.name}' produced non-finite embeddings (NaN or infinity)")
        if embeddings.shape[1] < 2 or not np.linalg.norm(embeddings, axis=1).all():  # no direction to compare
            kind = "a 1-d" if embeddings.shape[1] < 2 else "an all-zero"
            raise ModelError(f"model '{self.name}' produced {kind} embedding, which has no direction to compare")
        return unit_length(embeddings)


def unit_length(embeddings: np.ndarray) -> np.ndarray:
    """Rows scaled to length 1: verification compares directions (cosine), never magnitudes."""
    return embeddings / np.maximum(np.linalg.norm(embeddings, axis=1, keepdims=True), 1e-12)


ARCHITECTURES: dict[str, type[Embedder]] = Adapters("embedding", {"arcface112": Embedder})

__all__ = ["ARCHITECTURES", "EMBED_BATCH", "Embedder"]
