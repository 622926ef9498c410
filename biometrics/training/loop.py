"""What every trainer shares: AdamW and the learning-rate schedule from the recipe, atomic checkpoints, the JSON
log, and resuming where a stopped run left off (sessions here end without warning)."""

from __future__ import annotations

import hashlib
import json
import math
import os
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import numpy as np
import torch

from biometrics.errors import UsageError
from biometrics.files import replacing
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
    """``--device``: "cpu", or a PyTorch GPU device ("cuda", "cuda:1"), refused with a clear error if absent.
    Any other accelerator PyTorch names ("mps", "xpu", ...) is accepted only where a tensor can be made on it."""
    try:
        device = torch.device(name)
    except RuntimeError as exc:
        raise UsageError(f"unknown device '{name}' ({exc})") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"device '{name}': PyTorch sees no CUDA GPU on this machine")
    if device.type != "cpu":
        try:  # the errors differ by backend (RuntimeError, AssertionError, NotImplementedError): any means no
            usable = device.type != "meta" and torch.empty(1, device=device).device.type == device.type
        except Exception:  # noqa: BLE001
            usable = False
        if not usable:
            raise UsageError(f"device '{name}': not available in this PyTorch build or on this machine")
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


def log_path(work_dir: Path) -> Path:
    return work_dir / "train_log.jsonl"


# Recipe entries that do not change what a run computes: naming, description, where the models go and the
# datasets lie, how often to checkpoint, which folds a report uses. Everything else (``epochs`` included: the
# learning-rate schedule is laid over ``epochs`` worth of steps, so a resumed run with other epochs would finish on
# a schedule its first steps never followed) must match the checkpoint's. To train on for more epochs, a new recipe
# names the run with ``start_from_run`` (a new run from its weights, with its own schedule and work dir).
NOT_TRAINING = ("name", "description", "output", "checkpoint_every", "report_folds")


def training_content(recipe: Recipe) -> dict:
    """What of the recipe's parsed content decides the training: all but the entries in ``NOT_TRAINING``,
    ``data.root``, and (unless training is quantization-aware, which simulates it) the ``quantization`` section,
    which only the export reads."""
    content = {key: value for key, value in recipe.raw.items() if key not in NOT_TRAINING}
    if isinstance(content.get("data"), dict):
        content["data"] = {key: value for key, value in content["data"].items() if key != "root"}
    if not isinstance(content.get("quantization"), dict) or not content["quantization"].get("aware"):
        content.pop("quantization", None)
    return content


def recipe_fingerprint(recipe: Recipe) -> str:
    """A hash of ``training_content``: a checkpoint records it, and only the same recipe resumes from it."""
    text = json.dumps(training_content(recipe), sort_keys=True, default=str)
    return hashlib.sha256(text.encode()).hexdigest()[:16]


def _differences(old: dict, new: dict, prefix: str = "") -> list[str]:
    """The dotted names of the entries that differ between two recipe records (for the refusal's message)."""
    names = []
    for key in sorted(set(old) | set(new), key=str):
        a, b = old.get(key), new.get(key)
        if isinstance(a, dict) and isinstance(b, dict):
            names += _differences(a, b, f"{prefix}{key}.")
        elif a != b:
            names.append(f"{prefix}{key}")
    return names


def prepare_run(recipe: Recipe, work_dir: Path, fresh: bool) -> dict | None:
    """The checkpoint a run in ``work_dir`` resumes from, or None for a new run. Called before any costly
    preparation, so that a checkpoint written under a different recipe (fingerprint) is refused at once; one from
    before fingerprints were recorded is accepted. ``fresh`` (--fresh) removes what an earlier run left that a
    later resume would read (checkpoint, log), so a fresh run stopped before its first checkpoint is never
    mistaken for the old one."""
    path = checkpoint_path(work_dir)
    if fresh:
        for stale in (path, log_path(work_dir)):
            stale.unlink(missing_ok=True)
        return None
    if not path.is_file():
        return None
    state = load_checkpoint(path)
    stored = state.get("recipe_fingerprint")
    if stored is not None and stored != recipe_fingerprint(recipe):
        changed = _differences(state.get("recipe_content") or {}, training_content(recipe))
        what = f"changed: {', '.join(changed)}" if changed else f"fingerprint {stored}"
        raise RecipeError(f"{work_dir} was trained with a different recipe ({what}); rerun with --fresh to start over")
    return state


def _truncate_log(path: Path, state: dict) -> None:
    """Cut the log back to what it held when the checkpoint was written: records of steps a stopped run took
    after its last checkpoint are taken again by the resumed run. Older checkpoints (without ``log_bytes``): drop
    the records of later steps."""
    if not path.is_file():
        return
    if "log_bytes" in state:
        if path.stat().st_size > state["log_bytes"]:
            os.truncate(path, state["log_bytes"])
        return
    lines = path.read_text().splitlines()
    kept = []
    for line in lines:
        try:
            if json.loads(line).get("step", 0) > state["step"]:
                continue
        except ValueError:
            continue  # a record cut short by the kill
        kept.append(line)
    if len(kept) != len(lines):
        path.write_text("".join(line + "\n" for line in kept))


class TrainingRun:
    """One run's optimiser, step counter, log and checkpoints in ``work_dir``; continues ``resume_from`` (the
    state ``prepare_run`` returned) if given."""

    def __init__(
        self, recipe: Recipe, net: torch.nn.Module, work_dir: Path, total_steps: int, resume_from: dict | None
    ):
        self.recipe, self.net, self.total_steps = recipe, net, total_steps
        self.checkpoint, self.log_path = checkpoint_path(work_dir), log_path(work_dir)
        self.optimizer = torch.optim.AdamW(
            net.parameters(),
            lr=float(recipe.optimizer["lr"]),
            weight_decay=float(recipe.optimizer.get("weight_decay", 0.0)),
        )
        self.step, self.seconds_before = 0, 0.0
        self.fingerprint = recipe_fingerprint(recipe)
        self.resumed = resume_from is not None
        if resume_from is not None:
            net.load_state_dict(resume_from["model"])
            self.optimizer.load_state_dict(resume_from["optimizer"])
            self.step, self.seconds_before = resume_from["step"], resume_from.get("seconds", 0.0)
            _truncate_log(self.log_path, resume_from)
            # stderr, progress bar or not: a resumed run is not a fresh one, and the user should know
            print(f"resuming {work_dir} at step {self.step} of {total_steps}", file=sys.stderr, flush=True)
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
        origin = {"started_from": str(path), "its_step": state["step"]}
        if "total_steps" in state:  # checkpoints before it was recorded cannot tell
            origin["its_total_steps"] = state["total_steps"]
            if state["step"] < state["total_steps"]:  # allowed (to try a change mid-way), never silently
                print(
                    f"note: run '{earlier}' stopped at step {state['step']} of {state['total_steps']}; "
                    f"{self.recipe.name} starts from those unfinished weights (finish it first: run its recipe again)",
                    file=sys.stderr,
                    flush=True,
                )
        self.log({"step": 0, **origin})

    def log_stretch(self, device: torch.device, limit: int, compiled: bool = False) -> None:
        """Record where (and whether through ``torch.compile``) the steps about to run, up to ``limit``, run: a
        resumed run may change machines."""
        if self.step < limit:
            self.log(
                {"step": self.step, "device": str(device), "torch": torch.__version__}
                | ({"compiled": True} if compiled else {})
            )

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

    @contextmanager
    def checkpoint_on_interrupt(self, steps_per_epoch: int) -> Iterator[None]:
        """Ctrl-C (or SIGTERM, which the CLI turns into one) keeps the steps taken since the last checkpoint, so a
        run stopped by hand resumes where it was rather than up to ``checkpoint_every`` steps earlier."""
        try:
            yield
        except KeyboardInterrupt:
            if self.running:
                self.record_and_save(steps_per_epoch, interrupted=True)
                print(f"interrupted: checkpoint at step {self.step} in {self.checkpoint.parent}", file=sys.stderr)
            raise

    def due(self, steps_per_epoch: int, limit: int) -> bool:
        """Whether to log and checkpoint now: every ``checkpoint_every`` steps, at epoch ends, at the stop."""
        return self.step % self.every == 0 or self.step % steps_per_epoch == 0 or self.step == limit

    def log(self, record: dict) -> None:
        with open(self.log_path, "a") as log:
            log.write(json.dumps(record) + "\n")

    def record_and_save(self, steps_per_epoch: int, **extra) -> dict:
        """Average the loss terms since the last record, log them, and write the checkpoint atomically. The
        checkpoint records the log's length, so a resume drops records written after it (a kill between the two
        writes would otherwise leave the same step twice in the log)."""
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
            "total_steps": self.total_steps,
            "seconds": record["seconds"],
            "log_bytes": self.log_path.stat().st_size,
            "recipe_fingerprint": self.fingerprint,
            "recipe_content": training_content(self.recipe),
        }
        with replacing(self.checkpoint) as partial:
            torch.save(state, partial)
        return record
