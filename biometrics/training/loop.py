"""What every trainer shares: AdamW and the learning-rate schedule from the recipe, atomic checkpoints, the JSON
log, and resuming where a stopped run left off (sessions here end without warning)."""

from __future__ import annotations

import json
import math
import os
import time
from pathlib import Path

import numpy as np
import torch

from biometrics.errors import BiometricsError
from biometrics.training.recipe import Recipe, RecipeError


def lr_at(step: int, total: int, recipe: Recipe) -> float:
    """Linear warm-up, then cosine decay to ``final_lr_fraction`` of the recipe's rate."""
    base, warmup = float(recipe.optimizer["lr"]), int(recipe.schedule.get("warmup_steps", 0))
    if step < warmup:
        return base * (step + 1) / warmup
    progress = (step - warmup) / max(1, total - warmup)
    final = recipe.schedule.get("final_lr_fraction", 0.0)
    return base * (final + (1 - final) * 0.5 * (1 + math.cos(math.pi * progress)))


def training_device(name: str) -> torch.device:
    """``--device``: "cpu", or a PyTorch GPU device ("cuda", "cuda:1"), refused with a clear error if absent."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise BiometricsError(f"unknown device '{name}' ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise BiometricsError(f"device '{name}': PyTorch sees no CUDA GPU on this machine")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True  # fixed input shapes: let cuDNN pick its fastest kernels once
    return device


def to_device(tensor: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A CPU tensor on ``device`` without making the host wait: pinned, then copied asynchronously. A copy from
    pageable memory synchronises the stream, so the host would stall on the GPU's queue several times a step."""
    if device.type == "cpu":
        return tensor
    return tensor.pin_memory().to(device, non_blocking=True)


def checkpoint_path(work_dir: Path) -> Path:
    return work_dir / "checkpoint.pt"


def load_checkpoint(path: Path) -> dict:
    """A checkpoint's state (model, optimizer, step), its tensors on the CPU whichever device saved them."""
    return torch.load(path, map_location="cpu", weights_only=False)


def training_progress(recipe: Recipe, log: list[dict], total_steps: int) -> dict:
    """A card's account of how far its run went, from the run's log (records that carry ``seconds``)."""
    last = next((record for record in reversed(log) if "seconds" in record), {"step": 0, "seconds": 0.0})
    return {
        "epochs": recipe.epochs,
        "steps": last["step"],
        "total_steps": total_steps,
        "finished": last["step"] >= total_steps,
        "seconds": last["seconds"],
    }


def will_resume(work_dir: Path, fresh: bool) -> bool:
    return checkpoint_path(work_dir).is_file() and not fresh


class TrainingRun:
    """One run's optimiser, step counter, log and checkpoints in ``work_dir``; resumes from its checkpoint."""

    def __init__(self, recipe: Recipe, net: torch.nn.Module, work_dir: Path, total_steps: int, fresh: bool = False):
        self.recipe, self.net, self.total_steps = recipe, net, total_steps
        self.checkpoint, self.log_path = checkpoint_path(work_dir), work_dir / "train_log.jsonl"
        self.optimizer = torch.optim.AdamW(
            net.parameters(),
            lr=float(recipe.optimizer["lr"]),
            weight_decay=float(recipe.optimizer.get("weight_decay", 0.0)),
        )
        self.step, self.seconds_before = 0, 0.0
        self.resumed = will_resume(work_dir, fresh)
        if self.resumed:
            state = load_checkpoint(self.checkpoint)
            net.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.step, self.seconds_before = state["step"], state.get("seconds", 0.0)
        else:
            self.log_path.unlink(missing_ok=True)
            self._start_from_run(work_dir.parent)
        self.every = int(recipe.raw.get("checkpoint_every", 200))
        self.started = time.time()
        self.running: list[dict] = []

    def _start_from_run(self, runs_dir: Path) -> None:
        """Recipe ``start_from_run: <recipe name>``: a fresh run (optimiser, schedule, log) that starts from the
        weights that recipe's run ended with, found beside this run's folder; for training on with a changed
        loss without repeating what that run already did."""
        earlier = self.recipe.raw.get("start_from_run")
        if not earlier:
            return
        path = checkpoint_path(runs_dir / earlier)
        if not path.is_file():
            raise RecipeError(f"recipe {self.recipe.name} starts from run '{earlier}': no checkpoint at {path}")
        state = load_checkpoint(path)
        self.net.load_state_dict(state["model"])
        self.log({"step": 0, "started_from": str(path), "its_step": state["step"]})

    def log_stretch(self, device: torch.device, limit: int) -> None:
        """Record where the steps about to run (up to ``limit``) run: a resumed run may change machines."""
        if self.step < limit:
            self.log({"step": self.step, "device": str(device), "torch": torch.__version__})

    def set_learning_rate(self) -> None:
        for group in self.optimizer.param_groups:
            group["lr"] = lr_at(self.step, self.total_steps, self.recipe)

    def optimise(self, loss: torch.Tensor, terms: dict, clip_norm: float | None = None) -> None:
        """One update, then the step counter moves on and the loss terms (detached tensors: read on the host only
        when a record is written) join the next log record."""
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        if clip_norm:
            torch.nn.utils.clip_grad_norm_(self.net.parameters(), clip_norm)
        self.optimizer.step()
        self.step += 1
        self.running.append(terms)

    def due(self, steps_per_epoch: int, limit: int) -> bool:
        """Whether to log and checkpoint now: every ``checkpoint_every`` steps, at epoch ends, at the stop."""
        return self.step % self.every == 0 or self.step % steps_per_epoch == 0 or self.step == limit

    def log(self, record: dict) -> None:
        with open(self.log_path, "a") as log:
            log.write(json.dumps(record) + "\n")

    def record_and_save(self, steps_per_epoch: int, **extra) -> dict:
        """Average the loss terms since the last record, log them, and write the checkpoint atomically."""
        record = {
            "step": self.step,
            "epoch": self.step / steps_per_epoch,
            "lr": lr_at(self.step - 1, self.total_steps, self.recipe),
            **{f"loss_{k}": float(np.mean([float(r[k]) for r in self.running])) for k in self.running[0]},
            "seconds": round(self.seconds_before + time.time() - self.started, 1),  # across resumes
            **extra,
        }
        self.log(record)
        self.running = []
        state = {
            "model": self.net.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "step": self.step,
            "seconds": record["seconds"],
        }
        torch.save(state, self.checkpoint.with_suffix(".tmp"))
        os.replace(self.checkpoint.with_suffix(".tmp"), self.checkpoint)
        return record
