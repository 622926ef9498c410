"""Knowledge distillation of a face embedder: the student learns the teacher's embedding geometry.

Losses on L2-normalised embeddings: ``cosine`` (1 - cos(student, teacher) per face) and ``pairwise`` (the
batch's student similarity matrix should equal the teacher's: it preserves who-resembles-whom, which is what
verification uses); and, for a student pruned from the teacher, ``features``: hints that make each chosen
stage reproduce the teacher's activations on the channels it kept, a far denser signal than 128 numbers per face
(embedding-only distillation reached a held-out cosine of 0.39 after an epoch here).

Where the target comes from is the recipe's ``teacher_view``: ``augmented`` runs the teacher online on the very
view the student sees (hints need that); ``clean`` takes its embedding of the unaugmented face or its mirror,
computed once (ONNX Runtime) and cached, so every augmented view is pulled towards the clean face's embedding.

On a GPU (``device``) the faces live on the device as uint8, are augmented there, and an online teacher runs as
PyTorch (its weights dequantized by ``sface_to_torch``): ONNX Runtime's CPU graph would starve the GPU. On the
CPU, ``compile_network`` runs student and teacher through ``torch.compile``, a little faster than ONNX Runtime.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
import torch.nn.functional as F
from tqdm import tqdm

from biometrics.errors import UsageError
from biometrics.registry import ModelRegistry
from biometrics.runtime import create_session
from biometrics.training.export import crops_to_inputs, export_onnx, quantize_int8, write_card
from biometrics.training.faces import (
    FaceCache,
    build_face_cache,
    gather_sources,
    load_packed_faces,
    pack_faces,
    teacher_targets,
)
from biometrics.training.loop import TrainingRun, prepare_run, to_device, training_device, training_progress
from biometrics.training.quantization_aware import freeze_batchnorm, simulate_int8
from biometrics.training.recipe import Recipe, RecipeError, section_as
from biometrics.training.reconstruct import reconstruct_student
from biometrics.training.student import (
    EmbedderConfig,
    FaceEmbedderNet,
    count_parameters,
    prune_teacher,
    sface_stage_tensor,
    sface_to_torch,
)

INITS = ("scratch", "teacher-pruned", "teacher-reconstructed")


def student_spec(recipe: Recipe) -> tuple[EmbedderConfig, str, dict]:
    """The recipe's student section: its architecture, its ``init`` and its ``reconstruction`` settings."""
    spec = dict(recipe.student)
    init = spec.pop("init", "scratch")
    fit = spec.pop("reconstruction", {})
    if init not in INITS:
        raise RecipeError(f"recipe {recipe.name}: unknown student init '{init}' ({', '.join(INITS)})")
    return section_as(EmbedderConfig, spec), init, fit


def face_signature(recipe: Recipe) -> dict:
    """What a recipe's training faces are made from: its data block (wherever the datasets lie) and detector."""
    return {"data": {k: v for k, v in recipe.data.items() if k not in ("root", "holdout")}, "detector": recipe.detector}


def recipe_faces(recipe: Recipe, progress: bool = True) -> FaceCache:
    """The recipe's aligned training faces, detected and cached on first use."""
    sources = gather_sources(recipe.data)
    return build_face_cache(sources, recipe.detector, progress=progress)


def pack_recipe_faces(recipe: Recipe, path: Path, quality: int = 90, progress: bool = True) -> dict:
    """``biometrics distill RECIPE --pack-faces FILE``: the recipe's faces in one file for a machine without the
    datasets (``--faces FILE`` there)."""
    faces = recipe_faces(recipe, progress)
    pack_faces(faces, path, face_signature(recipe), quality, progress)
    return {"packed": str(path), "faces": len(faces.crops), "webp_quality": quality, "bytes": path.stat().st_size}


def training_faces(
    recipe: Recipe, progress: bool = True, faces_file: Path | None = None
) -> tuple[FaceCache, np.ndarray, np.ndarray]:
    """The recipe's cached face crops (or those of a packed face set made for the same data) and their split:
    held-out indices (the per-epoch agreement log) and training indices, drawn from the recipe's seed so every
    tool sees the same held-out faces."""
    if faces_file is not None:
        faces = load_packed_faces(faces_file, face_signature(recipe))
    else:
        faces = recipe_faces(recipe, progress)
    order = np.random.default_rng(recipe.seed).permutation(len(faces.crops))
    holdout = int(recipe.data.get("holdout", 0))
    return faces, np.sort(order[:holdout]), np.sort(order[holdout:])


def build_student(
    recipe: Recipe, crops: np.ndarray, train_idx: np.ndarray
) -> tuple[FaceEmbedderNet, dict[int, torch.Tensor], dict]:
    """The student; if pruned from the teacher, which teacher channels each of its stages kept; and, if its
    layers were re-solved against the teacher (``teacher-reconstructed``), each layer's relative fit error on
    training faces (``crops[train_idx]``, read only where drawn)."""
    config, init, fit = student_spec(recipe)
    if init == "scratch":
        return FaceEmbedderNet(config), {}, {}
    teacher = sface_to_torch(ModelRegistry().resolve(recipe.teacher, task="embedding").onnx_bytes)
    student, kept = prune_teacher(teacher, config)
    if init == "teacher-pruned":
        return student, kept, {}
    chosen = np.random.default_rng(recipe.seed).permutation(len(train_idx))
    layer_faces, head_faces = int(fit.get("layer_faces", 256)), int(fit.get("head_faces", 2048))
    errors = reconstruct_student(
        teacher,
        student,
        kept,
        _to_tensor(crops[train_idx[np.sort(chosen[:layer_faces])]]).contiguous(),
        _to_tensor(crops[train_idx[np.sort(chosen[:head_faces])]]).contiguous(),
        ridge=float(fit.get("ridge", 1e-3)),
        seed=recipe.seed,
    )
    return student, kept, errors


class _Teacher:
    """What both online teachers share: called on a batch of network inputs on ``device``, they return the
    embeddings and the hint stages' pre-activations."""

    device = torch.device("cpu")
    embedding_dim: int

    def __call__(self, rgb: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        raise NotImplementedError

    def embed(self, crops: np.ndarray, batch_size: int = 128) -> np.ndarray:
        """The teacher's embeddings of aligned BGR crops (for the held-out agreement log; none without one)."""
        chunks = [
            self(_to_tensor(crops[i : i + batch_size]).to(self.device))[0].cpu().numpy()
            for i in range(0, len(crops), batch_size)
        ]
        return np.concatenate(chunks) if chunks else np.empty((0, self.embedding_dim), np.float32)


class OnlineTeacher(_Teacher):
    """On the CPU: the teacher's ONNX Runtime graph with chosen stages' pre-activations exposed as extra outputs.

    Feature hints need the teacher's activations on the very view the student sees, so it runs on every
    augmented batch (and supplies that view's embedding target too). ONNX Runtime runs the int8 teacher about
    1.4x faster than PyTorch does, and it is the exact graph the product uses (``--compile`` runs a compiled
    ``TorchTeacher`` instead, a little faster).
    """

    def __init__(self, teacher: str, stages: list[int], threads: int | None = None):
        model = onnx.load_from_string(ModelRegistry().resolve(teacher, task="embedding").onnx_bytes)
        self.stages = stages
        for stage in stages:
            model.graph.output.append(
                onnx.helper.make_tensor_value_info(sface_stage_tensor(stage), onnx.TensorProto.FLOAT, None)
            )
        self.session = create_session(model.SerializeToString(), threads)
        self.input_name = self.session.get_inputs()[0].name
        self.embedding_dim = self.session.get_outputs()[0].shape[-1]

    def __call__(self, rgb: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        embedding, *features = self.session.run(None, {self.input_name: rgb.contiguous().numpy()})
        return torch.from_numpy(embedding), {s: torch.from_numpy(f) for s, f in zip(self.stages, features, strict=True)}


class TorchTeacher(_Teacher):
    """On a GPU, or compiled on the CPU: the teacher in PyTorch (``sface_to_torch``), with the same call as
    ``OnlineTeacher``. SFace's int8 blocks quantize its weights only, so the dequantized copy computes the ONNX
    graph's very embeddings and hints (tests/test_training.py checks it on real faces)."""

    def __init__(self, teacher: str, stages: list[int], device: torch.device):
        net = sface_to_torch(ModelRegistry().resolve(teacher, task="embedding").onnx_bytes)
        self.net = net.to(device, memory_format=torch.channels_last).eval()  # the layout of the student's batches
        self.stages, self.device, self.embedding_dim = stages, device, self.net.config.embedding_dim
        self._forward = self.net.forward_features

    @torch.no_grad()
    def __call__(self, rgb: torch.Tensor) -> tuple[torch.Tensor, dict[int, torch.Tensor]]:
        return self._forward(rgb, self.stages)

    def compile(self) -> None:
        """From now on the network runs through ``torch.compile`` (``distill --compile``; each new batch size
        compiles again). On 2 CPU cores it is a little faster than ONNX Runtime's graph: the patient recipe's step
        took 10.3 s with it, 10.7 s with ONNX Runtime's teacher beside the compiled student."""
        self._forward = torch.compile(self.net.forward_features, dynamic=False)


def augment(batch: torch.Tensor, spec: dict, generator: torch.Generator) -> torch.Tensor:
    """Photometric and small geometric changes a deployed camera and an imperfect alignment produce (RGB 0-255,
    N x 3 x H x W). The random draws come from ``generator`` on the CPU, so a run repeats on any device."""
    n = batch.shape[0]
    rand = lambda *shape: to_device(torch.rand(*shape, generator=generator), batch.device)  # noqa: E731
    shift, scale = spec.get("shift_px", 0) / (batch.shape[-1] / 2), spec.get("scale", 0.0)
    rotate = np.deg2rad(spec.get("rotate_deg", 0.0))
    if shift or scale or rotate:
        zoom = 1 + (rand(n) * 2 - 1) * scale
        angle = (rand(n) * 2 - 1) * rotate if rotate else torch.zeros(n, device=batch.device)
        theta = torch.zeros(n, 2, 3, device=batch.device)
        theta[:, 0, 0] = theta[:, 1, 1] = zoom * torch.cos(angle)
        theta[:, 0, 1], theta[:, 1, 0] = -zoom * torch.sin(angle), zoom * torch.sin(angle)
        theta[:, :, 2] = (rand(n, 2) * 2 - 1) * shift
        grid = F.affine_grid(theta, list(batch.shape), align_corners=False)
        batch = F.grid_sample(batch, grid, mode="bilinear", padding_mode="border", align_corners=False)
    if spec.get("brightness") or spec.get("contrast"):
        mean = batch.mean(dim=(1, 2, 3), keepdim=True)
        contrast = 1 + (rand(n, 1, 1, 1) * 2 - 1) * spec.get("contrast", 0.0)
        brightness = (rand(n, 1, 1, 1) * 2 - 1) * spec.get("brightness", 0.0) * 255
        batch = (batch - mean) * contrast + mean + brightness
    if spec.get("grayscale"):
        gray = batch.mean(dim=1, keepdim=True).expand_as(batch)
        batch = torch.where((rand(n) < spec["grayscale"]).view(n, 1, 1, 1), gray, batch)
    if spec.get("downscale"):  # which faces, and to what size, is decided on the host: no wait on the GPU
        chosen = (torch.rand(n, generator=generator) < spec["downscale"]).nonzero().squeeze(1)
        if len(chosen):
            size = int(batch.shape[-1] * (0.3 + 0.4 * float(torch.rand(1, generator=generator))))
            chosen = to_device(chosen, batch.device)
            small = F.interpolate(batch[chosen], size=size, mode="bilinear", antialias=True, align_corners=False)
            batch[chosen] = F.interpolate(small, size=batch.shape[-1], mode="bilinear", align_corners=False)
    return batch.clamp(0, 255)


def distillation_loss(
    student: torch.Tensor,
    teacher: torch.Tensor,
    weights: dict,
    hints: tuple[dict, dict] | None = None,
    same_person: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict]:
    """Weighted sum of the recipe's terms; ``hints`` = (student features, teacher features on the kept channels);
    ``same_person``: P x 2 batch rows holding two photos of one person (their similarity gets its own term)."""
    s, t = F.normalize(student, dim=1), F.normalize(teacher, dim=1)
    terms = {"cosine": (1 - (s * t).sum(dim=1)).mean()}
    if weights.get("pairwise"):  # mean squared difference over the off-diagonal pairs
        off_diagonal = 1 - torch.eye(len(s), device=s.device)
        terms["pairwise"] = ((s @ s.T - t @ t.T).square() * off_diagonal).sum() / off_diagonal.sum()
    if weights.get("same_person") and same_person is not None and len(same_person):
        # Random batches hold almost only impostor pairs; verification is decided where genuine pairs sit.
        a, b = same_person[:, 0], same_person[:, 1]
        terms["same_person"] = F.mse_loss((s[a] * s[b]).sum(1), (t[a] * t[b]).sum(1))
    if hints:
        # Relative MSE per stage, so early (large) and late (small) activations weigh alike.
        terms["features"] = torch.stack(
            [F.mse_loss(hints[0][k], hints[1][k]) / hints[1][k].pow(2).mean() for k in hints[0]]
        ).mean()
    total = sum(weights.get(name, 0.0) * value for name, value in terms.items())
    return total, {name: value.detach() for name, value in terms.items()}


def same_person_groups(identities: list[str | None], indices: np.ndarray) -> list[np.ndarray]:
    """Among ``indices``, the groups of two or more faces of one known person (UTKFace has no identities)."""
    by_person: dict[str, list[int]] = {}
    for index in indices:
        if identities[index] is not None:
            by_person.setdefault(identities[index], []).append(int(index))
    return [np.array(group) for group in by_person.values() if len(group) >= 2]


def _to_tensor(crops: np.ndarray | torch.Tensor) -> torch.Tensor:
    """BGR uint8 N x H x W x 3 (NumPy, or a tensor already on the device) -> RGB float N x 3 x H x W in 0-255,
    channels-last for faster convs."""
    if isinstance(crops, np.ndarray):
        rgb = torch.from_numpy(crops_to_inputs(crops))
    else:
        rgb = crops.flip(-1).permute(0, 3, 1, 2).float()
    return rgb.contiguous(memory_format=torch.channels_last)


def _on_device(crops: np.ndarray, device: torch.device) -> torch.Tensor:
    """The face crops (a read-only memory map of the cache) copied to ``device``. PyTorch warns that it cannot
    write a read-only array; the copy to the device is never written back, so no host copy is made to quiet it."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="The given NumPy array is not writable", category=UserWarning)
        return torch.as_tensor(crops, device=device)


@torch.no_grad()
def agreement(net: FaceEmbedderNet, crops: np.ndarray, targets: np.ndarray, batch_size: int = 128) -> dict:
    """How well the student reproduces the teacher on held-out faces (``targets``: the teacher's embeddings of
    ``crops``, N x D): mean cosine, and the correlation of their pairwise similarities (the quantity
    verification thresholds)."""
    net.eval()
    device = next(net.parameters()).device
    outputs = [
        F.normalize(net(_to_tensor(crops[i : i + batch_size]).to(device)), dim=1).cpu()
        for i in range(0, len(crops), batch_size)
    ]
    s, t = torch.cat(outputs), F.normalize(torch.from_numpy(targets), dim=1)
    upper = torch.triu_indices(len(s), len(s), 1)
    pair_s, pair_t = (s @ s.T)[upper[0], upper[1]], (t @ t.T)[upper[0], upper[1]]
    return {
        "cosine_to_teacher": float((s * t).sum(1).mean()),
        "pairwise_similarity_correlation": float(torch.corrcoef(torch.stack([pair_s, pair_t]))[0, 1]),
        "pairwise_similarity_mae": float((pair_s - pair_t).abs().mean()),
    }


TEACHER_VIEWS = ("augmented", "clean")


def teacher_view(recipe: Recipe) -> str:
    """Which view the teacher embeds for the target: ``augmented`` (online, the student's own view; needed by
    feature hints and the default with them) or ``clean`` (cached, the unaugmented face; the default without)."""
    view = recipe.raw.get("teacher_view", "augmented" if recipe.loss.get("features") else "clean")
    if view not in TEACHER_VIEWS:
        raise RecipeError(f"recipe {recipe.name}: unknown teacher_view '{view}' ({', '.join(TEACHER_VIEWS)})")
    if recipe.loss.get("features") and view != "augmented":
        raise RecipeError(f"recipe {recipe.name}: feature hints need teacher_view: augmented")
    return view


class _NoCpuOnlyCudaNotice(logging.Filter):
    """torch's compiler set-up says "No CUDA runtime is found" on a CPU-only machine: no fault of a CPU run."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "No CUDA runtime is found" not in record.getMessage()


def require_compiler(device: torch.device, recipe: Recipe) -> None:
    """Refuses ``compile_network`` where it is not supported, before any face is read: a GPU run (not tested
    compiled), quantization-aware training (its fake-quantized graph runs uncompiled), or a machine without the C++
    compiler torch.compile builds its CPU kernels with (else the run fails at its first step, in a traceback)."""
    if device.type != "cpu":
        raise UsageError(f"--compile is for CPU runs; on {device} leave it out")
    if recipe.quantization.get("aware"):
        raise RecipeError(f"recipe {recipe.name}: quantization-aware training runs uncompiled (leave out --compile)")
    from torch._inductor.cpp_builder import get_cpp_compiler

    try:
        get_cpp_compiler()
    except Exception as exc:  # noqa: BLE001 - torch raises its own types, which vary by version
        raise UsageError(f"--compile needs a C++ compiler (g++ or clang++; $CXX names another): {exc}") from None
    cpp_extension_log = logging.getLogger("torch.utils.cpp_extension")
    if not any(isinstance(f, _NoCpuOnlyCudaNotice) for f in cpp_extension_log.filters):
        cpp_extension_log.addFilter(_NoCpuOnlyCudaNotice())


def _without_reconstruction(recipe: Recipe) -> Recipe:
    """The recipe with ``teacher-reconstructed`` downgraded to ``teacher-pruned`` (same architecture and channels)."""
    if recipe.student.get("init") != "teacher-reconstructed":
        return recipe
    return dataclasses.replace(recipe, student={**recipe.student, "init": "teacher-pruned"})


def distill(
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
    faces_file: Path | None = None,
    compile_network: bool = False,
) -> dict:
    """Run (or resume) a recipe on ``device`` ("cpu", "cuda"); export FP32 and INT8 ONNX with cards into
    ``models_dir`` when it finishes, or where it stops with ``export_unfinished`` (to score a run mid-way).
    ``faces_file``: train on a packed face set (``pack_recipe_faces``) instead of the recipe's datasets.
    ``compile_network`` (CPU only): the student's training forward and backward run through ``torch.compile``
    (the same weights and arithmetic, fused, so equal to rounding; an online teacher runs compiled too: on 2 CPU
    cores the patient recipe's step took 10.3 s instead of 14 after about 1.5 min of compiling), so a run may
    switch either way when it resumes. Returns a summary."""
    torch.set_num_threads(threads or os.cpu_count() or 1)
    torch.manual_seed(recipe.seed)
    on = training_device(device)
    if on.type != "cpu" and recipe.quantization.get("aware"):
        raise RecipeError(f"recipe {recipe.name}: quantization-aware training runs on the CPU (--device cpu)")
    if compile_network:
        require_compiler(on, recipe)
    work_dir.mkdir(parents=True, exist_ok=True)
    faces, holdout_idx, train_idx = training_faces(recipe, progress, faces_file)
    # A checkpoint of another recipe is refused before the student and the targets are made (a face set made for
    # other data has been refused already). A resumed run loads its weights from the checkpoint: only the channel
    # choice (cheap) is redone.
    checkpoint = prepare_run(recipe, work_dir, fresh)
    resuming = checkpoint is not None
    crops = np.asarray(faces.crops)
    pixels = crops if on.type == "cpu" else _on_device(crops, on)  # training batches come from it

    net, kept, fit_errors = build_student(recipe if not resuming else _without_reconstruction(recipe), crops, train_idx)
    net = net.to(on, memory_format=torch.channels_last)
    forward = torch.compile(net.forward_features, dynamic=False) if compile_network else net.forward_features
    kept = {stage: channels.to(on) for stage, channels in kept.items()}  # indexes the teacher's hints every step
    teacher_online = None
    if teacher_view(recipe) == "augmented":
        if recipe.loss.get("features") and not kept:
            raise RecipeError(f"recipe {recipe.name}: feature hints need a student pruned from the teacher")
        hint_stages = [stage for stage in recipe.loss.get("hint_stages", []) if stage in kept]
        hint_stages = hint_stages if recipe.loss.get("features") else []  # consistent targets without hints
        if on.type == "cpu" and not compile_network:
            teacher_online = OnlineTeacher(recipe.teacher, hint_stages, threads)
        else:
            teacher_online = TorchTeacher(recipe.teacher, hint_stages, on)
        targets = None  # every batch gets the teacher's embedding of its own augmented view
        holdout_targets = teacher_online.embed(crops[holdout_idx])  # uncompiled: its batches are of other sizes
        if compile_network:
            teacher_online.compile()
    else:
        gpu_teacher = TorchTeacher(recipe.teacher, [], on) if on.type != "cpu" else None
        targets = teacher_targets(faces, recipe.teacher, progress=progress, gpu_teacher=gpu_teacher)  # N x 2 x D
        holdout_targets = targets[holdout_idx, 0]
    pairs_per_batch = int(recipe.raw.get("same_person_pairs", 0))
    groups = same_person_groups(faces.identities, train_idx) if pairs_per_batch else []
    random_faces = recipe.batch_size - 2 * pairs_per_batch
    steps_per_epoch = len(train_idx) // random_faces
    total_steps = steps_per_epoch * recipe.epochs
    run = TrainingRun(recipe, net, work_dir, total_steps, resume_from=checkpoint)
    plain_fp32 = _simulate_int8(recipe, net, crops, train_idx) if recipe.quantization.get("aware") else None
    if fit_errors:
        initial = {"step": 0, "reconstruction_relative_error": fit_errors}
        if len(holdout_idx):
            initial["holdout"] = agreement(net, crops[holdout_idx], holdout_targets)
        run.log(initial)
    generator = torch.Generator().manual_seed(recipe.seed + run.step)
    limit = total_steps if max_steps is None else min(total_steps, max_steps)
    run.log_stretch(on, limit, compiled=compile_network)
    bar = tqdm(total=limit, initial=run.step, desc=f"distill {recipe.name}", unit="step", disable=not progress)
    order_epoch = None
    with run.checkpoint_on_interrupt(steps_per_epoch):
        while run.step < limit:
            epoch, position = divmod(run.step, steps_per_epoch)
            if epoch != order_epoch:  # the epoch's shuffle depends only on (seed, epoch), so resuming repeats it
                epoch_order = train_idx[np.random.default_rng(recipe.seed + epoch).permutation(len(train_idx))]
                order_epoch = epoch
            net.train()
            if plain_fp32:
                freeze_batchnorm(net)  # the INT8 build folds the statistics the run started with
            batch_idx = np.sort(epoch_order[position * random_faces : (position + 1) * random_faces])
            same_person = None
            if groups:  # two photos each of a few people, drawn per step (so resuming redraws the same)
                pair_rng = np.random.default_rng([recipe.seed, run.step])
                people = pair_rng.choice(len(groups), min(pairs_per_batch, len(groups)), replace=False)
                photos = [pair_rng.choice(groups[i], 2, replace=False) for i in people]
                same_person = torch.arange(len(batch_idx), len(batch_idx) + 2 * len(photos), device=on).reshape(-1, 2)
                batch_idx = np.concatenate([batch_idx, *photos])
            flip = torch.rand(len(batch_idx), generator=generator) < recipe.augmentation.get("flip", 0.0)
            images = _to_tensor(pixels[batch_idx if on.type == "cpu" else to_device(torch.from_numpy(batch_idx), on)])
            images = torch.where(to_device(flip, on).view(-1, 1, 1, 1), images.flip(-1), images)
            run.set_learning_rate()
            view = augment(images, recipe.augmentation, generator)
            if teacher_online is None:
                target = to_device(torch.from_numpy(targets[batch_idx, flip.numpy().astype(np.int64)]), on)
                loss, terms = distillation_loss(forward(view, [])[0], target, recipe.loss, same_person=same_person)
            else:
                target, teacher_hints = teacher_online(view)
                embedding, hints = forward(view, teacher_online.stages)
                teacher_hints = {k: v[:, kept[k]] for k, v in teacher_hints.items()}
                pairs = (hints, teacher_hints) if hints else None
                loss, terms = distillation_loss(embedding, target, recipe.loss, pairs, same_person)
            run.optimise(loss, terms)
            bar.update(1)
            if run.due(steps_per_epoch, limit):
                extra = {}
                if (run.step % steps_per_epoch == 0 or run.step == limit) and len(holdout_idx):
                    extra["holdout"] = agreement(net, crops[holdout_idx], holdout_targets)
                record = run.record_and_save(steps_per_epoch, **extra)
                bar.set_postfix(cosine_loss=f"{record['loss_cosine']:.4f}")  # per record: a per-step read would sync
    bar.close()
    if run.step < total_steps and not export_unfinished:
        return {"finished": False, "step": run.step, "total_steps": total_steps, "work_dir": str(work_dir)}
    if plain_fp32:
        plain_fp32()
    return export(recipe, net.cpu(), crops, train_idx, faces, work_dir, models_dir, len(holdout_idx), total_steps)


def calibration_faces(recipe: Recipe, crops: np.ndarray, train_idx: np.ndarray) -> np.ndarray:
    """The training faces (of ``crops[train_idx]``) the INT8 build calibrates on (and quantization-aware training
    takes its ranges from)."""
    count = int(recipe.quantization.get("calibration_faces", 256))
    return crops[train_idx[np.random.default_rng(recipe.seed).permutation(len(train_idx))[:count]]]


def _simulate_int8(recipe: Recipe, net: FaceEmbedderNet, crops: np.ndarray, train_idx: np.ndarray):
    """Quantization-aware fine-tuning (recipe ``quantization.aware``): ``net`` computes as its INT8 build will;
    returns the function that undoes it. It simulates the build ``export`` makes, so the recipe must ask for it."""
    quant = recipe.quantization
    if set(quant.get("keep_fp32") or []) != {"first_conv", "head"} or not quant.get("per_channel", True):
        raise RecipeError(
            f"recipe {recipe.name}: quantization-aware training simulates per-channel INT8 with "
            "keep_fp32: [first_conv, head]"
        )
    calibration = _to_tensor(calibration_faces(recipe, crops, train_idx))
    return simulate_int8(net, calibration, float(quant.get("percentile", 100.0)))


def export(
    recipe: Recipe,
    net: FaceEmbedderNet,
    crops: np.ndarray,
    train_idx: np.ndarray,
    faces,
    work_dir: Path,
    models_dir: Path,
    holdout: int,
    total_steps: int,
) -> dict:
    """FP32 and INT8 ONNX with cards, into ``models_dir/<name>/``."""
    names = recipe.output
    fp32_path = export_onnx(net, models_dir / names["fp32"] / "model.onnx")
    quant = recipe.quantization
    calibration = calibration_faces(recipe, crops, train_idx)
    int8_path = quantize_int8(
        fp32_path,
        models_dir / names["int8"] / "model.onnx",
        crops_to_inputs(calibration),
        per_channel=bool(quant.get("per_channel", True)),
        keep_fp32=quant.get("keep_fp32"),
        percentile=quant.get("percentile"),
    )
    datasets = sorted({row["dataset"] for row in faces.meta})
    data_split = {
        "train_faces": len(train_idx),
        "holdout_faces": holdout,
        "datasets": datasets,
        "lfw_excluded_folds": recipe.data.get("lfw", {}).get("exclude_folds", []),
        "report_folds": recipe.report_folds,
        "note": "LFW people of the excluded (report) folds are not in the training data; "
        "thresholds and quantization calibration use training faces only",
    }
    if faces.packed_quality is not None:
        data_split["faces"] = f"trained on WebP copies of the aligned crops, quality {faces.packed_quality}"
    log_text = (work_dir / "train_log.jsonl").read_text()
    for name in (names["fp32"], names["int8"]):  # the log travels with the models it produced
        (models_dir / name / "train_log.jsonl").write_text(log_text)
    log = [json.loads(line) for line in log_text.splitlines()]
    training = {
        **training_progress(recipe, log, total_steps),
        "parameters_torch": count_parameters(net),
        "final_holdout": next((r["holdout"] for r in reversed(log) if "holdout" in r), None),
        "log": "train_log.jsonl (beside this card)",
    }
    recipe_record = dict(recipe.raw, _path=str(recipe.path or ""))
    common = {"recipe": recipe_record, "data_split": data_split, "teacher": recipe.teacher, "training": training}
    description = recipe.raw.get("description", f"student embedder distilled from {recipe.teacher}")
    write_card(fp32_path, name=names["fp32"], description=description + " (FP32)", precision="fp32", **common)
    write_card(
        int8_path, name=names["int8"], description=description + " (INT8 static QDQ)", precision="int8", **common
    )
    return {"finished": training["finished"], "fp32": str(fp32_path), "int8": str(int8_path), "training": training}
