"""Training recipes: one YAML file under pipelines/ declares everything a run depends on."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

import yaml

from biometrics.errors import BiometricsError

T = TypeVar("T")


def section_as(cls: type[T], section: dict) -> T:
    """A recipe section (YAML mapping) as a frozen config dataclass: YAML lists become the tuples it declares."""
    return cls(**{key: tuple(value) if isinstance(value, list) else value for key, value in section.items()})


class RecipeError(BiometricsError):
    """A recipe file is missing, not YAML, or lacks a required entry."""


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
        try:
            raw = yaml.safe_load(Path(path).read_text())
        except (OSError, yaml.YAMLError) as exc:
            raise RecipeError(f"{path}: cannot read recipe ({exc})") from None
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
