"""Distil a teacher ensemble into the student detector: pseudo-labels -> composed scenes -> anchor-free training.

The teachers (recipe ``teacher``: a list of registry detectors and/or ``mtcnn``) label every training image
once (cached); each step then composes fresh multi-face scenes from those images, so the student sees faces
from ~10 px to the full frame although every source photo holds one large face. Checkpoints, resume and the
log work as for the embedder; the export writes FP32 and INT8 ONNX files in YuNet's output format, so the
runtime's ``YuNetDetector`` runs them.

A student may instead start from a teacher network's own channels (``student.init``, see
``detector_teacher``); it then learns that teacher's outputs on every cell of the scenes and its pyramid
features, and the pseudo-labels only place the faces in the scenes.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from tqdm import tqdm

from biometrics.registry import ModelRegistry
from biometrics.training.detector_loss import (
    DENSE_WEIGHTS,
    build_targets,
    dense_output_terms,
    detection_loss,
    initial_score_bias,
    relative_mse,
)
from biometrics.training.detector_student import STRIDES, DetectorConfig, FaceDetectorNet, output_names
from biometrics.training.detector_teacher import (
    KeptChannels,
    prune_detector,
    recorded_outputs,
    separable_units,
    yunet_to_torch,
)
from biometrics.training.export import export_onnx, quantize_int8, write_card
from biometrics.training.faces import gather_sources
from biometrics.training.loop import TrainingRun, prepare_run, training_device, training_progress
from biometrics.training.pseudo_labels import PseudoLabels, label_images
from biometrics.training.recipe import Recipe, section_as
from biometrics.training.scenes import SceneSpec, compose_scene


def build_detector(recipe: Recipe) -> FaceDetectorNet:
    """The recipe's student with fresh weights (``student.init`` aside: see ``start_from_teacher``)."""
    config = section_as(DetectorConfig, {key: value for key, value in recipe.student.items() if key != "init"})
    net = FaceDetectorNet(config)
    with torch.no_grad():
        for bias in net.score_biases():
            bias.fill_(initial_score_bias())
    return net


@dataclass
class DenseTeacher:
    """The network a pruned student came from, and which of its channels the student kept."""

    net: FaceDetectorNet
    kept: KeptChannels

    @torch.no_grad()
    def targets(self, images: torch.Tensor) -> tuple[dict[str, torch.Tensor], dict[str, list[torch.Tensor]]]:
        """Raw outputs on every cell; for the student's stride-4 to 32 stage outputs, the outputs of the teacher
        units they came from (a student stage may end on a unit its teacher stage does not end on); the
        pyramid. Features on the kept channels."""
        units = separable_units(self.net)
        with recorded_outputs({source: units[source] for source in self.kept.stage_sources[1:]}) as unit_outputs:
            pyramid = self.net.pyramid(images)
        features = {
            "stages": [
                unit_outputs[source][:, kept]
                for source, kept in zip(self.kept.stage_sources[1:], self.kept.stages[1:], strict=True)
            ],
            "hint": [feature[:, self.kept.neck] for feature in pyramid],
        }
        return self.net.head_outputs(pyramid), features

    def loss(self, student: FaceDetectorNet, images: torch.Tensor, weights: dict) -> tuple[torch.Tensor, dict]:
        """Recipe ``loss`` terms (``DENSE_WEIGHTS`` for those it leaves out): ``score``, ``box``, ``kps`` on every
        cell (``dense_output_terms``), ``hint`` on the pyramid, ``stages`` on the backbone's stage outputs. With
        only ``stages`` weighted, the student's pyramid and heads are not run: replacing one block of the
        teacher (``student.init.trainable``) then costs a backbone pass."""
        weights = DENSE_WEIGHTS | weights
        teacher_raw, teacher_features = self.targets(images)
        stages = student.backbone(images)
        # A student stage may start from a teacher unit of the stage before (one stride finer, where the
        # teacher changes width): its target is that output max-pooled, as the teacher's next stage sees it.
        targets = [
            t if t.shape[-2:] == s.shape[-2:] else F.adaptive_max_pool2d(t, s.shape[-2:])
            for s, t in zip(stages[1:], teacher_features["stages"], strict=True)
        ]
        terms = {"stages": relative_mse(stages[1:], targets)}
        if any(weights[name] for name in ("score", "box", "kps", "hint")):
            pyramid = student.fpn(stages)
            terms |= dense_output_terms(student.head_outputs(pyramid), teacher_raw)
            terms["hint"] = relative_mse(pyramid, teacher_features["hint"])
        total = sum(weights[name] * value for name, value in terms.items())
        return total, {name: float(value.detach()) for name, value in terms.items()}


def start_from_teacher(recipe: Recipe, images: torch.Tensor) -> tuple[FaceDetectorNet, DenseTeacher]:
    """``student.init: {from: <registry detector>, units: [...], trainable: [...]}``: the student starts from
    that teacher's channels most active on ``images`` (training scenes) and is then trained to match it densely.
    ``trainable`` (parameter name prefixes, e.g. ``stages.0``) trains only those parts: the rest stays the
    teacher's, which keeps what the teacher learnt from data we do not have."""
    init = recipe.student["init"]
    teacher = yunet_to_torch(ModelRegistry().resolve(init["from"], task="detection").onnx_bytes)
    net = build_detector(recipe)
    kept = prune_detector(teacher, net, init["units"], images)
    trainable = init.get("trainable")
    for name, parameter in net.named_parameters():
        parameter.requires_grad_(trainable is None or any(name.startswith(f"{prefix}.") for prefix in trainable))
    return net, DenseTeacher(teacher, kept)


def _freeze_batch_norm(net: torch.nn.Module) -> None:
    """BN keeps the statistics it started with where its layer is not trained from scratch: a student pruned
    from a BN-free teacher carries the teacher's biases there, which batch statistics would wash out. A BN whose
    parameters are trained while the rest of the network is frozen (a replaced block) learns its statistics."""
    everything_trains = all(parameter.requires_grad for parameter in net.parameters())
    for module in net.modules():
        if isinstance(module, torch.nn.BatchNorm2d) and (everything_trains or not module.weight.requires_grad):
            module.eval()


def scene_batch(labels: PseudoLabels, rng: np.random.Generator, spec: SceneSpec, count: int):
    """``count`` scenes as a float tensor (N x 3 x S x S, BGR 0-255, as the network takes) and their targets."""
    scenes = [compose_scene(labels, rng, spec) for _ in range(count)]
    images = torch.from_numpy(np.stack([s.image for s in scenes]).transpose(0, 3, 1, 2).astype(np.float32))
    targets = [build_targets(s.boxes, s.landmarks, s.scores, spec.size, spec.size) for s in scenes]
    return images, targets


class SceneBatches(torch.utils.data.IterableDataset):
    """The scene batches of steps ``start`` .. ``stop`` - 1, composed in worker processes while the network
    trains (composition is a third of a step's CPU time). Step ``k``'s scenes depend only on (seed, k), so a
    resumed run sees the same scenes as an uninterrupted one; with several workers, worker ``i`` of ``n``
    composes steps ``start + i``, ``start + i + n``, ..., and the loader takes them in turn, so in step order."""

    def __init__(self, labels: PseudoLabels, spec: SceneSpec, batch_size: int, seed: int, start: int, stop: int):
        super().__init__()
        self.labels, self.spec, self.batch_size, self.seed = labels, spec, batch_size, seed
        self.start, self.stop = start, stop

    def __iter__(self):
        worker = torch.utils.data.get_worker_info()
        first, every = (0, 1) if worker is None else (worker.id, worker.num_workers)
        for step in range(self.start + first, self.stop, every):
            yield scene_batch(self.labels, np.random.default_rng([self.seed, step]), self.spec, self.batch_size)


def _unchanged(batch):
    return batch  # targets stay NumPy, as build_targets made them


def training_labels(recipe: Recipe, progress: bool = True) -> tuple[PseudoLabels, list[str]]:
    """The recipe's training images with their fused teacher faces (labelled once, then cached), and the teachers."""
    sources = gather_sources(recipe.data)
    teachers = [recipe.teacher] if isinstance(recipe.teacher, str) else list(recipe.teacher)
    return label_images(sources, teachers, iou=float(recipe.data.get("fusion_iou", 0.55)), progress=progress), teachers


def distill_detector(
    recipe: Recipe,
    work_dir: Path,
    models_dir: Path,
    *,
    max_steps: int | None = None,
    fresh: bool = False,
    threads: int | None = None,
    progress: bool = True,
    device: str = "cpu",
    export_unfinished: bool = False,
) -> dict:
    """Run (or resume) a detection recipe on ``device`` ("cpu", "cuda"); export FP32 and INT8 ONNX with cards
    into ``models_dir`` when it finishes, or where it stops with ``export_unfinished``. On a GPU every core but
    one composes scenes; on the CPU one worker does."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(recipe.seed)
    on = training_device(device)
    work_dir.mkdir(parents=True, exist_ok=True)
    checkpoint = prepare_run(recipe, work_dir, fresh)  # another recipe's checkpoint is refused before the labels
    labels, teachers = training_labels(recipe, progress)
    spec = section_as(SceneSpec, recipe.augmentation)
    dense = None
    if "init" in recipe.student:
        activity_scenes, _ = scene_batch(labels, np.random.default_rng(recipe.seed + 2), spec, 64)
        net, dense = start_from_teacher(recipe, activity_scenes)
        dense.net.to(on)
    else:
        net = build_detector(recipe)
    net.to(on)
    steps_per_epoch = max(1, len(labels.paths) // recipe.batch_size)
    total_steps = steps_per_epoch * recipe.epochs
    run = TrainingRun(recipe, net, work_dir, total_steps, resume_from=checkpoint)
    limit = total_steps if max_steps is None else min(total_steps, max_steps)
    bar = tqdm(total=limit, initial=run.step, desc=f"distill {recipe.name}", unit="step", disable=not progress)
    batches = torch.utils.data.DataLoader(
        SceneBatches(labels, spec, recipe.batch_size, recipe.seed, run.step, limit),
        batch_size=None,
        num_workers=1 if on.type == "cpu" else max(1, (os.cpu_count() or 2) - 1),
        prefetch_factor=4,
        collate_fn=_unchanged,
        pin_memory=on.type == "cuda",
    )
    run.log_stretch(on, limit)
    with run.checkpoint_on_interrupt(steps_per_epoch):
        for images, targets in batches:
            images = images.to(on, non_blocking=True)
            run.set_learning_rate()
            net.train()
            if dense is None:
                loss, terms = detection_loss(net.raw_outputs(images), targets, recipe.loss)
            else:
                _freeze_batch_norm(net)
                loss, terms = dense.loss(net, images, recipe.loss)
            run.optimise(loss, terms, clip_norm=10.0)
            bar.update(1)
            bar.set_postfix(loss=f"{loss.item():.3f}")
            if run.due(steps_per_epoch, limit):
                run.record_and_save(steps_per_epoch)
    bar.close()
    if run.step < total_steps and not export_unfinished:
        return {"finished": False, "step": run.step, "total_steps": total_steps, "work_dir": str(work_dir)}
    return export_detector(recipe, net.cpu(), labels, spec, teachers, work_dir, models_dir, total_steps)


DETECTOR_INTERFACE = {
    "task": "detection",
    "architecture": "yunet",
    "input": {"layout": "NCHW", "channel_order": "BGR", "range": "0-255, no normalisation", "stride": 32},
    "bench_input_shape": [1, 3, 480, 640],
}


def export_student(
    recipe: Recipe, net: FaceDetectorNet, calibration: np.ndarray, models_dir: Path, suffix: str = ""
) -> tuple[Path, Path]:
    """The recipe's FP32 and INT8 ONNX files of ``net`` (INT8 as its ``quantization`` section asks), named
    ``<output name><suffix>``; ``calibration``: N x 3 x H x W inputs from training scenes."""
    fp32_path = export_onnx(
        net,
        models_dir / (recipe.output["fp32"] + suffix) / "model.onnx",
        example_shape=(1, 3, 480, 640),
        input_name="input",
        output_names=tuple(output_names()),
        dynamic_axes={"input": {2: "height", 3: "width"}, **{n: {1: "cells"} for n in output_names()}},
    )
    quant = recipe.quantization
    int8_path = quantize_int8(
        fp32_path,
        models_dir / (recipe.output["int8"] + suffix) / "model.onnx",
        calibration,
        per_channel=bool(quant.get("per_channel", True)),
        keep_fp32=quant.get("keep_fp32"),
        percentile=quant.get("percentile"),
    )
    return fp32_path, int8_path


def export_detector(
    recipe: Recipe,
    net: FaceDetectorNet,
    labels: PseudoLabels,
    spec: SceneSpec,
    teachers: list[str],
    work_dir: Path,
    models_dir: Path,
    total_steps: int,
) -> dict:
    """FP32 and INT8 ONNX (any input size, multiples of 32) with cards, into ``models_dir/<name>/``."""
    names = recipe.output
    rng = np.random.default_rng(recipe.seed + 1)
    calibration, _ = scene_batch(labels, rng, spec, int(recipe.quantization.get("calibration_scenes", 64)))
    fp32_path, int8_path = export_student(recipe, net, calibration.numpy(), models_dir)
    log_text = (work_dir / "train_log.jsonl").read_text()
    for name in (names["fp32"], names["int8"]):
        (models_dir / name / "train_log.jsonl").write_text(log_text)
    log = [json.loads(line) for line in log_text.splitlines()]
    common = {
        "recipe": dict(recipe.raw, _path=str(recipe.path or "")),
        "data_split": {
            "train_images": len(labels.paths),
            "pseudo_faces": int(len(labels.scores)),
            "datasets": sorted(name for name in ("lfw", "celeba", "utkface") if name in recipe.data),
            "lfw_excluded_folds": recipe.data.get("lfw", {}).get("exclude_folds", []),
            "report_folds": recipe.report_folds,
            "note": "pseudo-labels from the teacher ensemble; never WIDER FACE or the sample photos and videos",
        },
        "teacher": teachers,
        "training": {
            **training_progress(recipe, log, total_steps),
            "architecture": net.config.to_dict(),
            "strides": list(STRIDES),
            "log": "train_log.jsonl (beside this card)",
        },
        "interface": DETECTOR_INTERFACE,
    }
    description = recipe.raw.get("description", "student face detector distilled from a teacher ensemble")
    write_card(fp32_path, name=names["fp32"], description=description + " (FP32)", precision="fp32", **common)
    write_card(
        int8_path, name=names["int8"], description=description + " (INT8 static QDQ)", precision="int8", **common
    )
    return {"finished": common["training"]["finished"], "fp32": str(fp32_path), "int8": str(int8_path)}
