"""Training recipes: one YAML file under pipelines/ declares everything a run depends on."""

from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml

from biometrics.errors import BiometricsError, DataError, ModelError
from biometrics.files import UnreadableFile, read_regular_file

T = TypeVar("T")
MAX_RECIPE_BYTES = 1 << 20  # recipes are a few KiB


def section_as(cls: type[T], section: dict) -> T:
    """A recipe section (YAML mapping) as a frozen config dataclass: YAML lists become the tuples it declares."""
    return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in section.items()})


class RecipeError(BiometricsError):
    """A recipe file is missing, not YAML, lacks a required entry, or has an unknown key or a wrong value."""


# Recipe schema. A checker is called with (value, key path) and raises _Invalid("path: reason"); ``block`` walks a
# mapping whose keys are a fixed set. The schema lists only what the trainers read (distill.py, detector_distill.py,
# student.py, detector_student.py, scenes.py, faces.py, loop.py, export.py), so a typo fails at load, not an hour
# in. Choices copied from the trainers (tests/test_recipe.py keeps them in step): distill.INITS,
# distill.TEACHER_VIEWS, export.KEEP_FP32, detector_student.HEAD_STYLES.
class RecipeLoader(yaml.SafeLoader):
    """YAML as people write it: ``1e-3`` is a number (YAML 1.1, PyYAML's dialect, wants ``1.0e-3``)."""


RecipeLoader.add_implicit_resolver(
    "tag:yaml.org,2002:float",
    re.compile(r"^[-+]?(?:\d+\.?\d*|\.\d+)[eE][-+]?\d+$"),
    list("-+0123456789."),
)


class _Invalid(Exception):
    pass


def _expect(ok: bool, at: str, wanted: str, value) -> None:
    if not ok:
        raise _Invalid(f"{at}: expected {wanted}, got {value!r}")


def number(low: float = 0, high: float | None = None, *, integer: bool = False, above: bool = False):
    """A finite int/float (``integer``: an int) >= ``low`` (``above``: > ``low``) and <= ``high``."""
    kind = "integer" if integer else "number"
    wanted = f"a positive {kind}" if above and low == 0 and high is None else ("an " if integer else "a ") + kind
    wanted += f" in [{low}, {high}]" if high is not None else "" if above and low == 0 else f" >= {low}"

    def check(value, at):
        typed = isinstance(value, int if integer else (int, float)) and not isinstance(value, bool)
        _expect(typed and math.isfinite(value), at, wanted, value)
        _expect((value > low if above else value >= low) and (high is None or value <= high), at, wanted, value)

    return check


def text(value, at):
    _expect(isinstance(value, str) and value.strip() != "", at, "a non-empty string", value)


def name(value, at):
    """Run and model names become folder names (runs/<name>, <models-dir>/<name>)."""
    _expect(
        isinstance(value, str) and re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", value),
        at,
        "a name ([A-Za-z0-9._-])",
        value,
    )


def flag(value, at):
    _expect(isinstance(value, bool), at, "true or false", value)


def one_of(*choices):
    def check(value, at):
        if isinstance(value, bool) or not isinstance(value, type(choices[0])) or value not in choices:
            leaf = at.rsplit(".", 1)[-1].split("[")[0]
            raise _Invalid(f"{at}: unknown {leaf} {value!r} (expected one of: {', '.join(map(str, choices))})")

    return check


def optional(checker):
    """Also ``null`` (the key as if left out)."""
    return lambda value, at: None if value is None else checker(value, at)


def either(*checkers, wanted: str):
    def check(value, at):
        for checker in checkers:
            try:
                return checker(value, at)
            except _Invalid:
                pass
        _expect(False, at, wanted, value)

    return check


def list_of(item, length: int | None = None, nonempty: bool = False):
    def check(value, at):
        _expect(isinstance(value, list), at, "a list", value)
        _expect(length is None or len(value) == length, at, f"a list of {length}", value)
        _expect(not nonempty or len(value) > 0, at, "a non-empty list", value)
        for index, entry in enumerate(value):
            item(entry, f"{at}[{index}]")

    return check


def block(schema: dict, required: tuple[str, ...] = ()):
    """A mapping whose keys are those of ``schema`` (each checked by its checker), ``required`` among them."""

    def check(value, at):
        _expect(isinstance(value, dict), at, "a mapping", value)
        prefix = f"{at}." if at else ""
        for key, entry in value.items():
            if key not in schema:
                where = f"{at}: " if at else ""
                raise _Invalid(f"{where}unknown key {key!r} (known: {', '.join(sorted(schema))})")
            schema[key](entry, f"{prefix}{key}")
        missing = [key for key in required if key not in value]
        if missing:
            raise _Invalid(f"{prefix}{missing[0]}: missing (required: {', '.join(required)})")

    return check


POSITIVE, POSITIVE_INT, COUNT = number(above=True), number(integer=True, above=True), number(integer=True)
FRACTION, WEIGHT = number(0, 1), number(0)
LFW_FOLD = number(1, 10, integer=True)
DATA = {
    "root": text,
    "lfw": block({"exclude_folds": list_of(LFW_FOLD)}),
    "celeba": block({}),
    "utkface": block({}),
    "limit": POSITIVE_INT,
}
QUANTIZATION = {
    "per_channel": flag,
    "keep_fp32": list_of(one_of("first_conv", "head", "depthwise")),
    "percentile": optional(number(0, 100, above=True)),
}
COMMON = {
    "name": name,
    "description": text,
    "task": one_of("embedding", "detection"),
    "report_folds": text,
    "optimizer": block({"name": one_of("adamw"), "lr": POSITIVE, "weight_decay": WEIGHT}, required=("lr",)),
    "schedule": block({"warmup_steps": COUNT, "final_lr_fraction": FRACTION}),
    "batch_size": POSITIVE_INT,
    "epochs": POSITIVE_INT,
    "seed": COUNT,
    "checkpoint_every": POSITIVE_INT,
    "start_from_run": optional(name),
    "output": block({"fp32": name, "int8": name}, required=("fp32", "int8")),
}
SFACE_STAGE = number(1, 14, integer=True)
EMBEDDING = COMMON | {
    "teacher": text,
    "detector": text,
    "teacher_view": one_of("augmented", "clean"),
    "same_person_pairs": COUNT,
    "data": block(DATA | {"holdout": COUNT}),
    "student": block(
        {
            "init": one_of("scratch", "teacher-pruned", "teacher-reconstructed"),
            "reconstruction": block({"layer_faces": POSITIVE_INT, "head_faces": POSITIVE_INT, "ridge": WEIGHT}),
            "width": POSITIVE,
            "stages": list_of(SFACE_STAGE, nonempty=True),
            "head": one_of("fc", "gdc"),
            "head_channels": COUNT,
            "activation": one_of("prelu", "relu"),
            "embedding_dim": POSITIVE_INT,
            "widths": list_of(POSITIVE_INT),
        }
    ),
    "augmentation": block(
        {
            "flip": FRACTION,
            "shift_px": WEIGHT,
            "scale": FRACTION,
            "rotate_deg": number(0, 180),
            "brightness": FRACTION,
            "contrast": FRACTION,
            "grayscale": FRACTION,
            "downscale": FRACTION,
        }
    ),
    "loss": block(
        {
            "cosine": WEIGHT,
            "pairwise": WEIGHT,
            "same_person": WEIGHT,
            "features": WEIGHT,
            "hint_stages": list_of(SFACE_STAGE),
        }
    ),
    "quantization": block(QUANTIZATION | {"aware": flag, "calibration_faces": POSITIVE_INT}),
}
DETECTION = COMMON | {
    "teacher": either(text, list_of(text, nonempty=True), wanted="a teacher name or a list of them"),
    "data": block(DATA | {"fusion_iou": number(0, 1, above=True)}),
    "student": block(
        {
            "init": block(
                {"from": text, "units": list_of(list_of(COUNT)), "trainable": list_of(text)}, required=("from", "units")
            ),
            "stem": POSITIVE_INT,
            "stem_stride": one_of(2, 4),
            "units": list_of(list_of(POSITIVE_INT), length=5),
            "neck": POSITIVE_INT,
            "head": one_of("separable", "full", "shared"),
            "downsample": one_of("maxpool", "depthwise"),
            "pointwise_bias": flag,
        }
    ),
    "augmentation": block(
        {
            "size": POSITIVE_INT,
            "grid": list_of(POSITIVE_INT, nonempty=True),
            "min_face": POSITIVE,
            "max_face_fraction": number(0, 1, above=True),
            "min_visible": FRACTION,
            "flip": FRACTION,
            "brightness": FRACTION,
            "contrast": FRACTION,
            "blur": FRACTION,
            "min_score": FRACTION,
            "clutter": COUNT,
            "rotate": number(0, 180),
            "occlude": FRACTION,
            "degrade": FRACTION,
            "grayscale": FRACTION,
            "photo_background": FRACTION,
        }
    ),
    "quantization": block(QUANTIZATION | {"calibration_scenes": POSITIVE_INT}),
}
# A detector student trained from scratch learns the ensemble's labels (detector_loss.detection_loss); one with
# ``student.init`` learns its teacher's dense outputs (DenseTeacher.loss).
LABEL_LOSS = block({"cls": WEIGHT, "obj": WEIGHT, "box": WEIGHT, "kps": WEIGHT})
DENSE_LOSS = block({"score": WEIGHT, "box": WEIGHT, "kps": WEIGHT, "hint": WEIGHT, "stages": WEIGHT})
EMBEDDING_LOSS_TERMS = ("cosine", "pairwise", "same_person", "features")


def validate(raw: dict) -> None:
    """Raise _Invalid for the first unknown key or wrong value of a recipe (``task`` already checked)."""
    if raw["task"] == "embedding":
        block(EMBEDDING)(raw, "")
        if not any(raw["loss"].get(term) for term in EMBEDDING_LOSS_TERMS):
            raise _Invalid(f"loss: no term has a positive weight ({', '.join(EMBEDDING_LOSS_TERMS)})")
        pairs = raw.get("same_person_pairs", 0)
        _expect(
            2 * pairs < raw["batch_size"], "same_person_pairs", f"fewer than batch_size/2 ({raw['batch_size']})", pairs
        )
    else:
        dense = isinstance(raw["student"], dict) and "init" in raw["student"]
        block(DETECTION | {"loss": DENSE_LOSS if dense else LABEL_LOSS})(raw, "")
    if not any(dataset in raw["data"] for dataset in ("lfw", "celeba", "utkface")):
        raise _Invalid("data: selects no dataset (lfw, celeba, utkface)")
    if raw["output"]["fp32"] == raw["output"]["int8"]:
        raise _Invalid("output: fp32 and int8 need names of their own (one would overwrite the other)")
    from biometrics.evaluation.lfw import parse_folds  # evaluation's imports are heavy; a bad recipe is rare

    try:
        parse_folds(str(raw["report_folds"]))  # the card records them: they must be folds
    except DataError as exc:
        raise _Invalid(f"report_folds: {exc}") from None
    _check_student(raw)
    _check_models(raw)


def _check_student(raw: dict) -> None:
    """The student's architecture rules, as its config class checks them: a trainer builds the student only
    after aligning or labelling its faces (minutes to an hour), too late to learn the recipe is wrong."""
    student = raw["student"]
    try:
        if raw["task"] == "embedding":
            from biometrics.training.student import EmbedderConfig

            section_as(EmbedderConfig, {k: v for k, v in student.items() if k not in ("init", "reconstruction")})
        else:
            from biometrics.training.detector_student import DetectorConfig
            from biometrics.training.detector_teacher import check_teacher_units

            config = section_as(DetectorConfig, {k: v for k, v in student.items() if k != "init"})
            if "init" in student:
                check_teacher_units(config, student["init"]["units"])
    except ValueError as exc:
        raise _Invalid(f"student: {exc}") from None


def _check_models(raw: dict) -> None:
    """Every model the recipe names is registered (or a model file) for the task it is used for, and no model
    whose licence is non-commercial (SCRFD) teaches: those are benchmark references only."""
    from biometrics.registry import ModelRegistry
    from biometrics.training.pseudo_labels import MTCNN

    task = raw["task"]
    teachers = [raw["teacher"]] if isinstance(raw["teacher"], str) else raw["teacher"]
    named = [("teacher", name, task) for name in teachers if not (task == "detection" and name == MTCNN)]
    if task == "embedding":
        named.append(("detector", raw["detector"], "detection"))
    elif "init" in raw["student"]:
        named.append(("student.init.from", raw["student"]["init"]["from"], "detection"))
    registry = ModelRegistry()
    registered = set(registry.names())
    for key, name, used_for in named:
        try:
            licence = registry.card(name, task=used_for).data.get("licence", "")
        except ModelError as exc:
            raise _Invalid(f"{key}: {exc}") from None
        if name not in registered:  # a file of the user's: an ONNX model, or the run fails only hours later
            _require_onnx(key, Path(name))
        if key != "detector" and "non-commercial" in licence.lower():
            raise _Invalid(f"{key}: '{name}' is licensed {licence}: a benchmark reference, never a teacher")


def _require_onnx(key: str, path: Path) -> None:
    import onnx
    from google.protobuf.message import DecodeError

    try:
        onnx.load_model(path, load_external_data=False)
    except (DecodeError, OSError, ValueError) as exc:
        raise _Invalid(f"{key}: {path} is not an ONNX model ({type(exc).__name__})") from None


@dataclass(frozen=True)
class Recipe:
    """A distillation recipe. Sections are kept as plain dicts: they are recorded verbatim in model cards."""

    name: str
    task: str  # "embedding" or "detection"
    teacher: str | list[str]  # a detection recipe names an ensemble
    detector: str | None  # the detector that finds and aligns an embedding recipe's training faces
    data: dict
    student: dict
    augmentation: dict
    loss: dict
    optimizer: dict
    schedule: dict
    batch_size: int
    epochs: int
    seed: int
    quantization: dict
    output: dict
    report_folds: str
    path: Path | None = None
    raw: dict = field(default_factory=dict, repr=False)

    @classmethod
    def load(cls, path: Path) -> Recipe:
        try:  # a regular file of a recipe's size: /dev/zero or a FIFO named by mistake must not hang or flood
            raw = yaml.load(read_regular_file(path, MAX_RECIPE_BYTES).decode("utf-8"), Loader=RecipeLoader)
        except UnreadableFile as exc:
            raise RecipeError(f"{path}: cannot read recipe ({exc})") from None
        except UnicodeDecodeError:
            raise RecipeError(f"{path}: a recipe is UTF-8 text") from None
        except yaml.YAMLError as exc:
            mark = getattr(exc, "problem_mark", None)
            where = f" at line {mark.line + 1}, column {mark.column + 1}" if mark else ""
            raise RecipeError(f"{path}: not valid YAML{where} ({getattr(exc, 'problem', None) or exc})") from None
        if not isinstance(raw, dict):
            raise RecipeError(f"{path}: a recipe is a YAML mapping")
        required = [
            "name",
            "task",
            "teacher",
            "data",
            "student",
            "loss",
            "optimizer",
            "batch_size",
            "epochs",
            "seed",
            "output",
            "report_folds",
        ]
        if raw.get("task") == "embedding":
            required.append("detector")
        missing = [key for key in required if key not in raw]
        if missing:
            raise RecipeError(f"{path}: missing {', '.join(missing)}")
        if raw["task"] not in ("embedding", "detection"):
            raise RecipeError(f"{path}: task '{raw['task']}' is not one we train (embedding, detection)")
        try:
            validate(raw)
        except _Invalid as exc:
            raise RecipeError(f"{path}: {exc}") from None
        return cls(
            name=raw["name"],
            task=raw["task"],
            teacher=raw["teacher"],
            detector=raw.get("detector"),
            data=raw["data"],
            student=raw["student"],
            augmentation=raw.get("augmentation", {}),
            loss=raw["loss"],
            optimizer=raw["optimizer"],
            schedule=raw.get("schedule", {}),
            batch_size=int(raw["batch_size"]),
            epochs=int(raw["epochs"]),
            seed=int(raw["seed"]),
            quantization=raw.get("quantization", {}),
            output=raw["output"],
            report_folds=str(raw["report_folds"]),
            path=Path(path),
            raw=raw,
        )
