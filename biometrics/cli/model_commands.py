"""Commands about the models themselves: ``bench`` measures them, ``distill`` trains them, ``models`` lists,
inspects and downloads them.

Registered on the ``biometrics`` group by ``biometrics.cli.main`` (import that module, not this one).
"""

from __future__ import annotations

import json
import os
from pathlib import Path

import click

from biometrics.cli.main import THREADS, json_option, refuse_same_names, report_folder_option, sigterm_as_interrupt
from biometrics.errors import BiometricsError


def all_thread_counts() -> list[int]:
    """1 thread (the edge-box case) and every core."""
    return sorted({1, os.cpu_count() or 1})


def benchmark_models(models, thread_counts=(), iterations=50, batch=32, real_inputs=None) -> list[dict]:
    """Efficiency cards for resolved models, each measured in its own process at its card's input shape (memory,
    throughput, counts); with several models, their latencies are then timed by turns in one process.
    ``real_inputs``: per model name, (network inputs, what they are) to time instead of a random input."""
    from biometrics.evaluation.efficiency import benchmark_model, retime_by_turns

    real_inputs = real_inputs or {}
    cards, inputs = [], []
    for model in models:
        data, description = real_inputs.get(model.name, (None, None))
        shape = model.card.bench_input_shape
        click.echo(f"benchmarking {model.name} at {shape} ...", err=True)
        cards.append(
            benchmark_model(
                model.onnx_bytes,
                shape,
                name=model.name,
                threads=list(thread_counts) or [1],
                batch=batch,
                iterations=iterations,
                sha256=model.source_sha256,
                file_size_bytes=model.source_size,
                inputs=data,
                inputs_description=description,
            )
        )
        inputs.append((model.onnx_bytes, shape))
    if len(cards) > 1:
        click.echo(f"timing the {len(cards)} models by turns ...", err=True)
        retime_by_turns(
            cards, inputs, iterations=iterations, inputs=[real_inputs.get(m.name, (None,))[0] for m in models]
        )
    return cards


def _loaded(model):
    """The model's runtime adapter (a detector or an embedder, by its card): loading it makes the checks every
    command makes of a model (its input and outputs are what its card says), with their messages."""
    from biometrics import detection, embedding

    adapters = detection.ARCHITECTURES if model.card.task == "detection" else embedding.ARCHITECTURES
    return adapters[model.card.architecture](model, threads=1)


def _inputs_from_photos(loaded, paths: list[Path]) -> dict:
    """Per model name, (network inputs, what they are) from real photos, for loaded models (``_loaded``): a detector
    gets each photo resized to its bench size; an embedder gets every face the default pipeline finds in them,
    aligned."""
    import cv2
    import numpy as np

    from biometrics.alignment import align_face
    from biometrics.imaging import load_image
    from biometrics.pipeline import DEFAULT_DETECTOR, landmark_detector

    images = [load_image(path) for path in paths]
    names = ", ".join(path.name for path in paths)
    inputs, crops_by_size = {}, {}
    for adapter in loaded:
        model = adapter.model
        shape = model.card.bench_input_shape
        if model.card.task == "detection":
            resized = [cv2.resize(image, (shape[3], shape[2]), interpolation=cv2.INTER_AREA) for image in images]
            blobs = np.concatenate([adapter.preprocess(image) for image in resized])
            inputs[model.name] = (blobs, f"{len(images)} photos resized to {shape[3]}x{shape[2]} ({names})")
            continue
        size = adapter.size[0]
        if size not in crops_by_size:
            finder = landmark_detector(DEFAULT_DETECTOR, threads=1)
            crops_by_size[size] = [
                align_face(image, face.landmarks, size) for image in images for face in finder.detect(image)
            ]
        if not crops_by_size[size]:
            raise BiometricsError(f"no face found in {names}: an embedder needs faces to be timed on")
        crops = crops_by_size[size]
        inputs[model.name] = (adapter.inputs(crops), f"{len(crops)} faces aligned from {len(images)} photos ({names})")
    return inputs


@click.command()
@click.argument("models", nargs=-1, required=True)
@report_folder_option
@click.option(
    "--threads",
    "thread_counts",
    type=THREADS,
    multiple=True,
    help="Thread counts to time (default: 1 and all cores).",
)
@click.option(
    "--iterations",
    type=click.IntRange(5, 100_000),
    default=50,
    show_default=True,
    help="Timed batch-1 calls per model.",
)
@click.option("--batch", type=click.IntRange(1, 256), default=32, show_default=True, help="Batch for throughput.")
@click.option(
    "--images",
    "image_paths",
    type=click.Path(dir_okay=False, path_type=Path),
    multiple=True,
    help="Time on these photos (detectors: resized to the bench size; embedders: their faces, aligned) "
    "instead of one random input. Some kernels' speed depends on the values.",
)
def bench(models, out, thread_counts, iterations, batch, image_paths):
    """Efficiency card per model: params, MACs, size, latency p50/p95, throughput, peak RSS."""
    from biometrics.evaluation.efficiency import write_efficiency_report
    from biometrics.evaluation.report import run_metadata
    from biometrics.registry import ModelRegistry

    refuse_same_names("", models)
    registry = ModelRegistry()
    resolved = [registry.resolve(name) for name in models]
    loaded = [_loaded(model) for model in resolved]  # a model that is not what its card says fails here, by name
    real_inputs = _inputs_from_photos(loaded, image_paths) if image_paths else None
    thread_counts = list(thread_counts or all_thread_counts())
    with sigterm_as_interrupt():  # `timeout`, a CI cancel: the workers and temporary copies go too
        cards = benchmark_models(resolved, thread_counts, iterations, batch, real_inputs)
    json_path, md_path = write_efficiency_report(cards, out, run_metadata(resolved, thread_counts))
    click.echo(md_path.read_text())
    click.echo(f"report: {md_path}")


@click.command()
@click.argument("recipe", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--work-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=None,
    help="Checkpoints and training log (default: <cache>/runs/<recipe name>, which outlives the work tree).",
)
@click.option(
    "--models-dir",
    type=click.Path(file_okay=False, path_type=Path),
    default=Path("models"),
    show_default=True,
    help="Where the FP32 and INT8 models and their cards are written (relative to the current directory; models "
    "of the same names there are replaced).",
)
@click.option(
    "--max-steps",
    type=click.IntRange(1),
    default=None,
    help="Stop at this step of the run, counted from its start (a resumed run too); run again to go on.",
)
@click.option("--fresh", is_flag=True, help="Ignore an existing checkpoint and start again.")
@click.option(
    "--export-unfinished",
    is_flag=True,
    help="Export where the run stops (--max-steps), finished or not, to score it mid-way; the cards say the step.",
)
@click.option("--threads", type=THREADS, default=None, help="CPU threads (default: all).")
@click.option("--progress/--no-progress", default=True, help="Show a progress bar.")
@click.option(
    "--device",
    default="cpu",
    show_default=True,
    help="Where the recipe trains: cpu, or a PyTorch GPU device (cuda, cuda:1).",
)
@click.option(
    "--pack-faces",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Embedder recipes: write the recipe's aligned training faces (WebP) to this .npz file and stop, to train "
    "on a machine without the datasets (--faces there). The file holds face images: keep it private.",
)
@click.option(
    "--faces",
    "faces_file",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
    default=None,
    help="Embedder recipes: train on a face set written by --pack-faces (for the same data block) instead of "
    "reading the datasets.",
)
@click.option("--webp-quality", type=click.IntRange(1, 100), default=90, show_default=True, help="For --pack-faces.")
@click.option(
    "--compile",
    "compile_network",
    is_flag=True,
    help="Embedder recipes on the CPU: run the student (and an online teacher) through torch.compile (needs a C++ "
    "compiler; about 1.5 min to compile, then faster steps: 0.74x the time on 2 cores). The weights are the same; a "
    "run may switch on resume.",
)
def distill(
    recipe,
    work_dir,
    models_dir,
    max_steps,
    fresh,
    export_unfinished,
    threads,
    progress,
    device,
    pack_faces,
    faces_file,
    webp_quality,
    compile_network,
):
    """Train a student from a recipe (pipelines/*.yaml): distil, quantize to INT8, export ONNX + cards."""
    try:
        from biometrics.training.detector_distill import distill_detector
        from biometrics.training.distill import distill as distill_embedder
        from biometrics.training.distill import pack_recipe_faces
        from biometrics.training.recipe import Recipe
    except ImportError as exc:
        raise BiometricsError(
            f"training needs the train extra: pip install 'biometrics[train]' (in a checkout: pip install -e "
            f"'.[train]'); {exc}"
        ) from None
    loaded = Recipe.load(recipe)
    from biometrics.registry import cache_dir

    if (pack_faces or faces_file or compile_network) and loaded.task != "embedding":
        raise click.UsageError("--pack-faces, --faces and --compile are for embedder recipes")
    if pack_faces and faces_file:
        raise click.UsageError("--pack-faces reads the datasets, --faces replaces them: give one")
    if pack_faces and compile_network:
        raise click.UsageError("--pack-faces only writes the faces; --compile is for training")
    quality_given = click.get_current_context().get_parameter_source("webp_quality").name == "COMMANDLINE"
    if quality_given and not pack_faces:
        raise click.UsageError("--webp-quality is the quality --pack-faces writes at")
    if export_unfinished:
        for name in loaded.output.values():  # a calibrated model (it has a threshold) is a finished, shipped one
            card = models_dir / name / "card.json"
            if card.is_file() and "threshold" in json.loads(card.read_text()):
                raise click.UsageError(
                    f"--export-unfinished would replace the calibrated model {card.parent} with an unfinished "
                    "one: give another --models-dir"
                )
    if pack_faces:
        click.echo(json.dumps(pack_recipe_faces(loaded, pack_faces, webp_quality, progress), indent=2))
        return
    options = ({"faces_file": faces_file} if faces_file else {}) | (
        {"compile_network": True} if compile_network else {}
    )
    run_distill = distill_detector if loaded.task == "detection" else distill_embedder
    with sigterm_as_interrupt():  # a checkpoint of the steps taken, then exit 130
        summary = run_distill(
            loaded,
            work_dir or cache_dir() / "runs" / loaded.name,
            models_dir,
            max_steps=max_steps,
            fresh=fresh,
            threads=threads,
            progress=progress,
            device=device,
            export_unfinished=export_unfinished,
            **options,
        )
    click.echo(json.dumps(summary, indent=2))


@click.group()
def models():
    """List, inspect and download models."""


def _model_problem(registry, name_or_path, load: bool = False) -> tuple[str, BiometricsError | None]:
    """A model's state in `models list` and why it cannot be used: its file's (``ModelRegistry.file_state``), or
    ``unsupported``: an architecture this version has no adapter for (a card from a newer release, or a typo). With
    ``load`` (`models show`: one model, so the moment it takes), also ``unusable``: its network is loaded as its
    adapter loads it, which checks the graph against the card (outputs, input size, layout)."""
    from biometrics.detection import ARCHITECTURES as DETECTORS
    from biometrics.embedding import ARCHITECTURES as EMBEDDERS

    card = registry.card(name_or_path)
    try:
        adapter = (EMBEDDERS if card.task == "embedding" else DETECTORS).of(card)
    except BiometricsError as exc:
        return "unsupported", exc
    problem = registry.file_problem(name_or_path)
    if problem is None and load:
        try:
            adapter(registry.resolve(name_or_path), threads=1)
        except BiometricsError as exc:
            return "unusable", exc
    return registry.file_state_of(problem), problem


@models.command("list")
@json_option
def models_list(as_json):
    """Registered models: task, whether the file can be used (`ok`; `missing`; `corrupt`: not the file its card
    names; `refused`: a card naming a file outside its folders; `unreadable`; `unsupported`: an architecture this
    version does not run; `models show NAME` says why), licence; the pipeline's defaults are marked *. Cards that
    cannot be read are left out, each with a warning (--json: under `left_out`)."""
    from biometrics.pipeline import DEFAULT_DETECTOR, DEFAULT_EMBEDDER
    from biometrics.registry import ModelRegistry

    registry = ModelRegistry()
    cards, broken = registry.scan()
    for problem in broken:
        click.echo(f"warning: {problem} (left out)", err=True)
    listed = [
        {
            "name": card.name,
            "task": card.task,
            "file": _model_problem(registry, card.name)[0],
            "default": card.name in (DEFAULT_DETECTOR, DEFAULT_EMBEDDER),
            "licence": card.data.get("licence", "?"),
            "licence_note": card.data.get("licence_note"),
            "description": card.data.get("description", ""),
        }
        for card in (cards[name] for name in sorted(cards))
    ]
    if as_json:
        click.echo(json.dumps({"models": listed, "left_out": [str(problem) for problem in broken]}))
        return
    rows = [("name", "task", "file", "licence", "description")]
    for model in listed:
        rows.append(
            (
                model["name"] + (" *" if model["default"] else ""),
                model["task"],
                model["file"],
                model["licence"] + (" (see card)" if model["licence_note"] else ""),
                model["description"],
            )
        )
    widths = [max(len(row[column]) for row in rows) for column in range(4)]
    for row in rows:
        click.echo(
            "  ".join([*(cell.ljust(width) for cell, width in zip(row[:4], widths, strict=True)), row[4]]).rstrip()
        )
    click.echo("* the default detector and embedder")


@models.command("show")
@click.argument("name")
def models_show(name):
    """Print a model's card (JSON); where the model cannot be used (not `ok` in `models list`, or its network not
    the one its card describes: loaded to check), why, on stderr."""
    from biometrics.registry import ModelRegistry

    registry = ModelRegistry()
    click.echo(json.dumps(registry.card(name).data, indent=2))
    if problem := _model_problem(registry, name, load=True)[1]:
        click.echo(f"warning: {problem}", err=True)


@models.command("fetch")
@click.argument("name")
def models_fetch(name):
    """Download a model's file from the URL on its card (checked against its SHA-256)."""
    from biometrics.registry import ModelRegistry

    click.echo(ModelRegistry().fetch(name))


COMMANDS = (bench, distill, models)
