"""``biometrics evaluate``: accuracy on a benchmark (LFW, WIDER FACE, landmarks) or on your own photos, written as
a report (JSON, Markdown, plots).

Registered on the ``biometrics`` group by ``biometrics.cli.main`` (import that module, not this one).
"""

from __future__ import annotations

from pathlib import Path

import click

from biometrics.cli.main import (
    MODEL,
    THREADS,
    fpir_option,
    refuse_same_names,
    report_folder_option,
    select_option,
    threshold_option,
)
from biometrics.cli.model_commands import all_thread_counts, benchmark_models
from biometrics.errors import DataError, UsageError


def _shared_data(name: str) -> Path:
    """``biometrics.registry.shared_data``, imported when a default is needed: the command line starts without the
    registry, as it did when this lived in ``main``."""
    from biometrics.registry import shared_data

    return shared_data(name)


lfw_data_option = click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: _shared_data("lfw"),
    show_default="../shared/data/lfw, or $BIOMETRICS_SHARED/data/lfw",
    help="Folder with pairs.txt and lfw-deepfunneled.tgz (or the unpacked folder).",
)


@click.group()
def evaluate():
    """Benchmark accuracy on a dataset and write a report (JSON, Markdown, plots)."""


def _echo_accuracy(label: str, run: dict, folds: str) -> None:
    summary = run["summary"]
    click.echo(
        f"{label}: accuracy {100 * summary['accuracy_mean']:.2f}% ± "
        f"{100 * summary['accuracy_std']:.2f} on folds {folds} ({summary['pairs']} pairs)"
    )
    for caveat in run.get("caveats", []):
        click.echo(f"  not held out: {caveat}")


def _pipelines_by_detector(detectors, embedders, threads, threshold):
    """For each detector (default: the pipeline's), its pipelines with each embedder: an evaluation scores them
    together, on the faces that detector finds."""
    from biometrics.pipeline import DEFAULT_DETECTOR, DEFAULT_EMBEDDER, FacePipeline

    for detector in detectors or (DEFAULT_DETECTOR,):
        yield [
            FacePipeline(detector, embedder, threads=threads, threshold=threshold)
            for embedder in embedders or (DEFAULT_EMBEDDER,)
        ]


@evaluate.command("lfw")
@lfw_data_option
@click.option("--folds", default="1-10", show_default=True, help="View 2 folds to report on, e.g. 6-10.")
@click.option("--detector", "detectors", type=MODEL, multiple=True, help="Detector(s) to compare (repeatable).")
@click.option("--embedder", "embedders", type=MODEL, multiple=True, help="Embedder(s) to compare (repeatable).")
@click.option(
    "--baseline",
    "baselines",
    multiple=True,
    type=click.Choice(["dlib"]),
    help="Also run another library's whole pipeline on the same pairs: dlib = face_recognition's "
    "(needs the `baselines` extra).",
)
@click.option(
    "--image-side",
    type=click.IntRange(16),
    default=None,
    help="Shrink each image (250 px) to this side before detection: smaller faces, as from farther away "
    "(the face spans ~0.37 of the side). Our pipelines only.",
)
@click.option("--threads", type=THREADS, default=None)
@report_folder_option
@click.option("--progress/--no-progress", default=True)
@click.option("--bench", is_flag=True, help="Also measure each embedder's efficiency and plot accuracy vs latency.")
def evaluate_lfw_command(data, folds, detectors, embedders, baselines, image_side, threads, out, progress, bench):
    """LFW View 2 verification: accuracy (k-fold), AUC, EER, TAR@FAR, ROC/DET curves."""
    from biometrics.evaluation.baselines import BASELINES
    from biometrics.evaluation.lfw import PipelineFaces, evaluate_lfw, parse_folds, training_overlap
    from biometrics.evaluation.report import run_metadata, write_verification_report

    fold_list = parse_folds(folds)
    if len(fold_list) < 2:
        raise DataError(f"folds '{folds}': k-fold accuracy needs at least 2 folds (thresholds come from the others)")
    if image_side is not None and baselines:
        raise click.UsageError("--image-side shrinks the images for our pipelines only: not with --baseline")
    refuse_same_names("--detector", detectors, "detection")
    refuse_same_names("--embedder", embedders, "embedding")
    library_baselines = [BASELINES[name]() for name in baselines]  # a missing package fails before any work
    runs, models, pipelines = {}, [], {}
    # No decision threshold: every metric chooses its own on the right pairs.
    for group in _pipelines_by_detector(detectors, embedders, threads, threshold=None):
        group_runs = evaluate_lfw(PipelineFaces(*group, image_side=image_side), data, fold_list, progress=progress)
        for pipeline in group:
            label = pipeline.name
            pipelines[label], runs[label] = pipeline, group_runs[label]
            used = [pipeline.detector.model, pipeline.embedder.model]
            runs[label]["caveats"] = training_overlap([m.card for m in used], fold_list)
            models += [m for m in used if m not in models]
            _echo_accuracy(label, runs[label], folds)
    for baseline in library_baselines:
        runs |= evaluate_lfw(baseline, data, fold_list, progress=progress)
        models += baseline.models
        _echo_accuracy(baseline.label, runs[baseline.label], folds)
    efficiency = None
    if bench:
        from biometrics.evaluation.efficiency import write_efficiency_report
        from biometrics.evaluation.lfw import sample_crops

        embedders_by_label = {label: pipe.embedder.model for label, pipe in pipelines.items()}
        # Timed on real aligned faces: some kernels' speed depends on the values (PRelu's does, threefold).
        first = next(iter(pipelines.values()))
        crops = sample_crops(first, data, fold_list)
        real_inputs = {
            pipe.embedder.name: (pipe.embedder.inputs(crops), f"{len(crops)} aligned LFW faces of folds {folds}")
            for pipe in pipelines.values()
        }
        benched = list({m.name: m for m in embedders_by_label.values()}.values())
        thread_counts = all_thread_counts()
        cards = {card["name"]: card for card in benchmark_models(benched, thread_counts, real_inputs=real_inputs)}
        write_efficiency_report(list(cards.values()), out, run_metadata(benched, thread_counts))
        efficiency = {label: cards[model.name] for label, model in embedders_by_label.items()}
    shrunk = f", images shrunk to {image_side} px" if image_side else ""
    meta = run_metadata(models, threads) | {"image_side": image_side}
    files = write_verification_report(out, f"LFW View 2, folds {folds}{shrunk}", runs, meta, efficiency)
    click.echo(f"report: {files['md']}")


@evaluate.command("folder")
@click.argument("folder", type=click.Path(file_okay=False, path_type=Path))
@click.option("--detector", "detectors", type=MODEL, multiple=True, help="Detector(s) to compare (repeatable).")
@click.option("--embedder", "embedders", type=MODEL, multiple=True, help="Embedder(s) to compare (repeatable).")
@threshold_option
@select_option
@click.option("--threads", type=THREADS, default=None)
@click.option(
    "--gallery-photos",
    type=click.IntRange(1),
    default=1,
    show_default=True,
    help="1:N part: photos enrolled per person (their first, by file name); people with more are enrolled.",
)
@fpir_option
@report_folder_option
@click.option("--progress/--no-progress", default=True)
def evaluate_folder_command(
    folder, detectors, embedders, threshold, select, threads, gallery_photos, fpir, out, progress
):
    """Verification and identification on your own photos: FOLDER holds one sub-folder of photos per person.
    Every pair of photos is scored (FMR and FNMR at the threshold, thresholds at target FMRs, EER, the hardest
    pairs), and every photo is searched in a gallery of the people (rank-1, FPIR and FNIR, by gallery size) and
    checked against each of them as `verify --as` would (FMR and FNMR per claim)."""
    from biometrics.evaluation.folder import PhotoFolder, evaluate_folder, training_data, write_folder_report
    from biometrics.evaluation.report import run_metadata
    from biometrics.gallery import DEFAULT_FPIR

    refuse_same_names("--detector", detectors, "detection")
    refuse_same_names("--embedder", embedders, "embedding")
    fpir = DEFAULT_FPIR if fpir is None else fpir  # identify's threshold, in the 1:N part
    photos = PhotoFolder.read(folder)
    empty = ", ".join(photos.without_photos)
    left_out = f"; left out, without photos: {empty}" if empty else ""
    click.echo(f"{folder}: {len(photos.images)} photos of {len(photos.people)} people{left_out}")
    runs, models = {}, []
    for group in _pipelines_by_detector(detectors, embedders, threads, threshold):
        runs |= evaluate_folder(group, photos, select, progress, gallery_photos, fpir)
        for pipeline in group:
            models += [m for m in (pipeline.detector.model, pipeline.embedder.model) if m not in models]
            run = runs[pipeline.name]
            point = run["at_threshold"]
            click.echo(
                f"{pipeline.name}: at threshold {point['threshold']:.4f} FMR {100 * point['fmr']:.3g}% "
                f"({point['false_matches']:,} of {run['impostor_pairs']:,}), FNMR {100 * point['fnmr']:.3g}% "
                f"({point['false_non_matches']:,} of {run['genuine_pairs']:,}); EER {100 * run['eer']:.2f}%; "
                f"{len(run['left_out'])} of {run['photos']} photos left out (unreadable or no face)"
            )
            searches = run["identification"]
            point = searches["at_threshold"]
            click.echo(
                f"  1:N, {searches['gallery_people']:,} people enrolled: rank-1 {100 * searches['rank_1']:.2f}%; at "
                f"the threshold FPIR {100 * point['fpir']:.3g}% ({point['false_positives']:,} of "
                f"{searches['non_mated_searches']:,} non-mated searches), FNIR {100 * point['fnir']:.3g}% "
                f"({point['misses']:,} of {searches['mated_searches']:,}), {point['misidentifications']:,} "
                "misidentified"
            )
            if point := searches["at_size_threshold"]:
                which = "fixed" if run["identify_threshold"] == "fixed" else f"for {searches['templates']:,} templates"
                click.echo(
                    f"  at identify's threshold {which} ({point['threshold']:.4f}): "
                    f"FPIR {100 * point['fpir']:.3g}% ({100 * point['fpir_per_person']:.3g}% per person), "
                    f"FNIR {100 * point['fnir']:.3g}%"
                )
            if named := searches["strangers_named"]["people"][:3]:
                click.echo(
                    "  strangers named most: "
                    + ", ".join(f"{s['person']} {s['named']} of {s['searches']} (as {s['mostly_as']})" for s in named)
                )
            claims = searches["claims"]
            if point := claims["at_claim_threshold"]:
                click.echo(
                    f"  1:1 claims (verify --as) against {searches['enrolled_photos']} template(s) a person, at "
                    f"{point['threshold']:.4f}: FMR {100 * point['fmr']:.3g}% ({point['false_matches']:,} of "
                    f"{claims['impostor_claims']:,}), FNMR {100 * point['fnmr']:.3g}% ({point['false_non_matches']:,} "
                    f"of {claims['genuine_claims']:,})"
                )
    meta = run_metadata(models, threads) | {"select": select, "fpir": fpir}
    for entry, model in zip(meta["models"], models, strict=True):
        entry["trained_on"] = training_data(model.card.data)
    files = write_folder_report(out, photos, runs, meta)
    click.echo(f"report: {files['md']}")


@evaluate.command("wider")
@click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: _shared_data("wider"),
    show_default="../shared/data/wider, or $BIOMETRICS_SHARED/data/wider",
    help="Folder with wider_val488.tgz (or the unpacked wider_val488 folder).",
)
@click.option("--detector", "detectors", type=MODEL, multiple=True, help="Detector(s) to compare (repeatable).")
@click.option("--threads", type=THREADS, default=None, help="Threads for the accuracy run (latency: 1).")
@report_folder_option
@click.option("--limit", type=click.IntRange(1), default=None, help="Evenly spaced sample of N images (quick check).")
@click.option(
    "--max-side",
    type=click.IntRange(64),
    default=None,
    help="Downscale images to this longer side (default: native size; 640 is the VGA scale SCRFD publishes at).",
)
@click.option("--progress/--no-progress", default=True)
def evaluate_wider_command(data, detectors, threads, out, limit, max_side, progress):
    """WIDER FACE detection AP (easy/medium/hard, official protocol), PR curves and latency."""
    from biometrics.detection import ARCHITECTURES
    from biometrics.evaluation.report import run_metadata
    from biometrics.evaluation.wider import NATIVE_MAX_SIDE, evaluate_wider, format_ap, write_wider_report
    from biometrics.pipeline import DEFAULT_DETECTOR
    from biometrics.registry import ModelRegistry

    refuse_same_names("--detector", detectors, "detection")
    registry = ModelRegistry()
    models = [registry.resolve(name, task="detection") for name in detectors or (DEFAULT_DETECTOR,)]
    for model in models:  # each loaded (and so checked) before any is scored: a late failure would waste the rest
        ARCHITECTURES.of(model.card)(model, threads=1)
    results = []
    for model in models:
        result = evaluate_wider(
            model, data, threads=threads, limit=limit, progress=progress, max_side=max_side or NATIVE_MAX_SIDE
        )
        results.append(result)
        aps = ", ".join(f"{name} {format_ap(curve.ap)}" for name, curve in result.curves.items())
        click.echo(f"{model.name}: AP {aps} ({result.images} images); ms {result.latency_ms}")
    files = write_wider_report(out, results, run_metadata(models, threads))
    click.echo(f"report: {files['md']}")


@evaluate.command("landmarks")
@lfw_data_option
@click.option("--folds", default="6-10", show_default=True, help="View 2 folds whose people's images are used.")
@click.option(
    "--detector", "detectors", type=MODEL, multiple=True, required=True, help="Detector(s) to score (repeatable)."
)
@click.option(
    "--reference",
    "references",
    multiple=True,
    default=("yunet-teacher", "retinaface-teacher"),
    show_default=True,
    help="Detectors whose fused landmarks are the reference (repeatable).",
)
@click.option("--limit", type=click.IntRange(1), default=None, help="Evenly spaced sample of N images.")
@click.option("--threads", type=THREADS, default=None)
@report_folder_option
@click.option("--progress/--no-progress", default=True)
def evaluate_landmarks_command(data, folds, detectors, references, limit, threads, out, progress):
    """Landmark NME against a reference ensemble on held-out LFW faces (people of --folds)."""
    from biometrics.evaluation.landmarks import evaluate_landmarks, lfw_images, percent, write_landmark_report
    from biometrics.evaluation.lfw import parse_folds, training_overlap
    from biometrics.evaluation.report import run_metadata
    from biometrics.registry import ModelRegistry

    refuse_same_names("--detector", detectors, "detection")
    refuse_same_names("--reference", references, "detection")
    registry = ModelRegistry()
    scored = [registry.resolve(name, task="detection") for name in detectors]
    reference = [registry.resolve(name, task="detection") for name in references]
    references_by_name = {model.name: model for model in reference}
    for model in scored:  # one model both scored and in the reference is fine; two files of one name are not
        other = references_by_name.get(model.name)
        if other is not None and other.source_sha256 != model.source_sha256:
            raise UsageError(
                f"--detector {model.source_path} and the reference {other.source_path} are both named '{model.name}' "
                "(the evaluation runs each detector once, by name): give the scored one a card with a name of its own"
            )
    fold_list = parse_folds(folds)
    images = lfw_images(data, fold_list, limit)
    results = evaluate_landmarks(scored, reference, images, threads=threads, progress=progress)
    meta = run_metadata(scored + reference, threads) | {
        "reference": list(references),
        "images": len(images),
        "folds": folds,
        "caveats": training_overlap([model.card for model in scored + reference], fold_list),
    }
    for caveat in meta["caveats"]:
        click.echo(f"warning: not held out: {caveat}", err=True)
    files = write_landmark_report(out, results, meta)
    for result in results:
        click.echo(f"{result.detector}: NME {percent(result.nme_mean)}% ({result.missed} missed of {result.faces})")
    click.echo(f"report: {files['md']}")


COMMANDS = (evaluate,)
