"""Where an embedder student loses the teacher, on held-out training faces (never LFW folds 6-10):

* head: how well each student head design reproduces SFace's embedding when it reads SFace's *own* last-stage
  features (so only the head differs): GDC (rank 1 per channel), reduced FC (a 1x1 conv to k channels, then an
  FC over the 7x7 map) and the full FC, on all channels or on the half a width-0.5 student keeps;
* runs: per stage, the relative error of each trained student's pre-activations against the teacher's on the
  channels it kept, and its embedding's cosine to the teacher's.

    python scripts/embedder_diagnostics.py pipelines/sface-student-pairs.yaml pipelines/sface-student-fc.yaml \
        --out reports/embedder-diagnostics
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F

from biometrics.registry import ModelRegistry, cache_dir
from biometrics.training.distill import _to_tensor, _without_reconstruction, build_student, training_faces
from biometrics.training.loop import checkpoint_path, load_checkpoint
from biometrics.training.recipe import Recipe
from biometrics.training.student import EmbedderConfig, prune_teacher, sface_to_torch

REDUCED_CHANNELS = (16, 24, 32, 48)


def heldout_faces(recipe: Recipe, count: int) -> torch.Tensor:
    """``count`` of the recipe's held-out faces (the split ``distill`` makes), as network input."""
    faces, holdout_idx, _ = training_faces(recipe)
    return _to_tensor(np.asarray(faces.crops)[holdout_idx[:count]])


def mean_cosine(a: torch.Tensor, b: torch.Tensor) -> float:
    return round(float(F.cosine_similarity(a, b).mean()), 4)


@torch.no_grad()
def head_fidelity(teacher, rgb: torch.Tensor) -> dict:
    features = teacher.features((rgb - 127.5) * 0.0078125)
    reference = teacher._head(features)
    rows = {}
    for width in (1.0, 0.5):
        heads = {"gdc": {"head": "gdc"}, "fc": {"head": "fc"}}
        heads |= {f"fc, {k} channels": {"head": "fc", "head_channels": k} for k in REDUCED_CHANNELS}
        for label, head in heads.items():
            student, kept = prune_teacher(teacher, EmbedderConfig(width=width, **head))
            head_parameters = sum(p.numel() for p in (*student.spatial.parameters(), *student.linear.parameters()))
            embedding = student.eval()._head(features[:, kept[14]])
            cosine = mean_cosine(embedding, reference)
            rows[f"width {width}: {label}"] = {"cosine": cosine, "parameters": head_parameters}
    return rows


@torch.no_grad()
def run_fidelity(teacher, recipe: Recipe, rgb: torch.Tensor, runs_dir: Path) -> dict:
    student, kept, _ = build_student(_without_reconstruction(recipe), np.empty(0), np.empty(0, np.int64))
    state = load_checkpoint(checkpoint_path(runs_dir / recipe.name))
    student.load_state_dict(state["model"])
    stages = list(student.config.stages)
    embedding, hints = student.eval().forward_features(rgb, stages)
    reference, teacher_hints = teacher.forward_features(rgb, stages)
    errors = {}
    for stage in stages:
        target = teacher_hints[stage][:, kept[stage]]
        errors[stage] = round(float(F.mse_loss(hints[stage], target) / target.pow(2).mean()), 3)
    return {"step": state["step"], "cosine": mean_cosine(embedding, reference), "stage_relative_error": errors}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("recipes", nargs="+", type=Path, help="embedder recipes whose runs to inspect")
    parser.add_argument("--faces", type=int, default=512, help="held-out faces (of the first recipe's split)")
    parser.add_argument(
        "--runs-dir", type=Path, default=None, help="where distill keeps its runs (default: <cache>/runs, as distill)"
    )
    parser.add_argument("--out", type=Path, required=True)
    args = parser.parse_args(argv)
    args.runs_dir = args.runs_dir or cache_dir() / "runs"
    torch.manual_seed(0)
    recipes = [Recipe.load(path) for path in args.recipes]
    teacher = sface_to_torch(ModelRegistry().resolve(recipes[0].teacher, task="embedding").onnx_bytes).eval()
    rgb = heldout_faces(recipes[0], args.faces)
    report = {
        "command": " ".join(["python", "scripts/embedder_diagnostics.py", *sys.argv[1:]]),
        "faces": len(rgb),
        "head_from_teacher_features": head_fidelity(teacher, rgb),
        "runs": {recipe.name: run_fidelity(teacher, recipe, rgb, args.runs_dir) for recipe in recipes},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "report.json").write_text(json.dumps(report, indent=2) + "\n")
    print(json.dumps(report, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
