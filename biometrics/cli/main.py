"""``biometrics`` command line: verify, detect, evaluate, bench, distill, models.

Exit codes scripts can rely on: 0 success (``verify``: same person), 1 ``verify``: different people,
2 error (unreadable input, no face, bad model, bad arguments) with a one-line reason on stderr, 130 interrupted
(Ctrl-C).
"""

from __future__ import annotations

import errno
import json
import os
import re
import signal
import sys
import tempfile
import warnings
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import click

from biometrics.cli import EXIT_INTERRUPTED, was_interrupted
from biometrics.errors import BiometricsError, DataError, OutOfMemoryError, OutputError, UsageError
from biometrics.face import SELECTIONS
from biometrics.files import NO_ROOM
from biometrics.runtime import MAX_THREADS

if TYPE_CHECKING:
    from biometrics.face import Face
    from biometrics.pipeline import FacePipeline

EXIT_DIFFERENT = 1
EXIT_ERROR = 2
EXIT_BROKEN_PIPE = 141  # 128 + SIGPIPE
WRITE_FAILURES = NO_ROOM | {errno.EROFS}
"""Why writing a result can fail through no fault of ours or the input's: an ``OutputError``, not "unexpected"."""


class ReportingGroup(click.Group):
    """The root command: every failure becomes one line on stderr and exit code 2, never a traceback, so that
    exit code 1 keeps its meaning ("different people", "unknown") for scripts."""

    def invoke(self, ctx: click.Context):
        ctx.meta[JSON_OUTPUT] = "--json" in ctx.args  # known before parsing, should the arguments be refused
        try:
            with one_line_warnings():
                return super().invoke(ctx)
        except BiometricsError as exc:
            report_error(ctx, exc, str(exc))
            sys.exit(exc.exit_code)
        except click.UsageError as exc:  # a bad argument or option: one line too, and where to read more
            command = exc.ctx.command_path if exc.ctx else ctx.command_path
            report_error(ctx, exc, f"{exc.format_message()} (see '{command} --help')")
            sys.exit(EXIT_ERROR)
        except (click.exceptions.Exit, click.ClickException, click.Abort):
            raise
        except KeyboardInterrupt:
            click.echo("interrupted", err=True)
            sys.exit(EXIT_INTERRUPTED)
        except BrokenPipeError:  # the reader of our output has gone (`| head -1`): no one to tell, nothing to flush
            os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
            sys.exit(EXIT_BROKEN_PIPE)
        except Exception as exc:  # a bug or an unforeseen failure: still one line and the error code
            if was_interrupted(exc):  # Ctrl-C while a library loaded, re-raised as its own error
                click.echo("interrupted", err=True)
                sys.exit(EXIT_INTERRUPTED)
            if OutOfMemoryError.caused(exc):
                failure = OutOfMemoryError()
                report_error(ctx, failure, str(failure))
                sys.exit(EXIT_ERROR)
            if isinstance(exc, OSError) and exc.errno in WRITE_FAILURES:  # no bug of ours: the place it writes to
                failure = OutputError(f"cannot write {exc.filename or 'the output'} ({exc.strerror})")
                report_error(ctx, failure, str(failure))
                sys.exit(EXIT_ERROR)
            reason = str(exc).strip().splitlines()[0][:300] if str(exc).strip() else ""
            report_error(ctx, exc, f"unexpected {type(exc).__name__}: {reason} (please report this)")
            sys.exit(EXIT_ERROR)


@contextmanager
def one_line_warnings() -> Iterator[None]:
    """Our warnings (``BiometricsWarning``: a model folder that overrides a shipped model, a key file others can
    read) as one ``warning: ...`` line on stderr, as the commands print their own; a library's keep Python's form."""
    from biometrics.errors import BiometricsWarning

    with warnings.catch_warnings():
        python_form = warnings.showwarning

        def show(message, category, *args, **kwargs):
            if issubclass(category, BiometricsWarning):
                click.echo(f"warning: {message}", err=True)
            else:
                python_form(message, category, *args, **kwargs)

        warnings.showwarning = show
        yield


def report_error(ctx: click.Context, exc: Exception, message: str, **where) -> None:
    """The one-line reason on stderr; with ``--json``, also the object a script parses instead of the result
    (``{"error": {"kind": "no_face", "message": ...}}``, its kind named after the error's class, after ``where``:
    which input of several failed). A reason that spans lines (a parser's, quoted) is put on one, which is what
    scripts reading stderr rely on."""
    message = " ".join(message.split())
    click.echo(f"error: {message}", err=True)
    if ctx.meta.get(JSON_OUTPUT):
        with suppress(OSError):  # the output that just failed (a full disk) fails again: stderr has said it
            click.echo(json.dumps(where | {"error": {"kind": error_kind(exc), "message": message}}))


def error_kind(exc: Exception) -> str:
    """``NoFaceError`` -> ``no_face``, ``GalleryError`` (and ``AlreadyEnrolled``) -> ``gallery``, a refused argument
    or option -> ``usage``; anything not ours -> ``unexpected``."""
    if isinstance(exc, click.UsageError):
        return "usage"
    if not isinstance(exc, BiometricsError):
        return "unexpected"
    # the nearest ...Error class names the kind: WrongChecksum is a ModelError (model), AlreadyEnrolled a GalleryError
    name = next(cls.__name__ for cls in type(exc).__mro__ if cls.__name__.endswith("Error")).removesuffix("Error")
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


JSON_OUTPUT = "biometrics.json_output"


def _remember_json(ctx: click.Context, _param: click.Parameter, value: bool) -> bool:
    ctx.meta[JSON_OUTPUT] = value  # meta is shared with the root command, which reports errors
    return value


def _json_flag(help: str):
    return click.option("--json", "as_json", is_flag=True, callback=_remember_json, help=help)


json_option = _json_flag(
    'Print one JSON object instead of text (on failure: {"error": {"kind": ..., "message": ...}}).'
)
json_lines_option = _json_flag(
    "Print one JSON object per image, a line each, instead of text (an image that failed: "
    '{"image": ..., "error": {"kind": ..., "message": ...}}).'
)
json_people_option = _json_flag(
    "Print one JSON object per person (sub-folder), a line each, instead of text (enrolled: its name, templates "
    'added and faces; skipped: {"name": ..., "skipped": why}; failed: {"name": ..., "error": {...}}).'
)


class ModelName(click.ParamType):
    """A registered model's name or an .onnx path; an empty one is refused, not taken for the default."""

    name = "model"

    def convert(self, value, param, ctx):
        if not str(value).strip():
            self.fail("a model name or .onnx path cannot be empty", param, ctx)
        return value


MODEL = ModelName()

THREADS = click.IntRange(1, MAX_THREADS)
"""A thread count: more than ``MAX_THREADS`` would take ONNX Runtime minutes to create."""

DETECTOR_OPTIONS = [
    click.option("--detector", type=MODEL, default=None, help="Detector name or .onnx path (default: the pipeline's)."),
    click.option("--threads", type=THREADS, default=None, help="ONNX Runtime threads (default: all)."),
    click.option(
        "--max-side",
        type=click.IntRange(64),
        default=1280,
        show_default=True,
        help="Downscale images whose longer side exceeds this before detection.",
    ),
]
EMBEDDER_OPTION = click.option(
    "--embedder", type=MODEL, default=None, help="Embedder name or .onnx path (default: the pipeline's)."
)


def _with_options(options: list, command):
    for option in reversed(options):
        command = option(command)
    return command


def detector_options(command):
    """The model and runtime options of a command that only detects (``detect``)."""
    return _with_options(DETECTOR_OPTIONS, command)


def pipeline_options(command):
    """The model and runtime options every pipeline command shares: the detector's and the embedder."""
    return _with_options([DETECTOR_OPTIONS[0], EMBEDDER_OPTION, *DETECTOR_OPTIONS[1:]], command)


@contextmanager
def sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM (`kill`, `timeout`, a service manager) stops a long command as Ctrl-C does, so it can finish its
    outputs (live: the video; distill: a checkpoint) instead of dying mid-write."""
    previous = signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def refuse_overwriting(outputs: dict[str, Path | None], inputs: dict[str, Path | str]) -> None:
    """Refuse, before any work, an output option that names an input's file, or another output's: writing it
    would destroy the photo or video being read (``detect IMG --out IMG``, ``live --source v.mp4 --out v.mp4``)."""
    named = [(f"{option} {path}", Path(path)) for option, path in outputs.items() if path is not None]
    others = [(label, Path(path)) for label, path in inputs.items()]
    for i, (label, path) in enumerate(named):
        for other_label, other in [*named[:i], *others]:
            if path.resolve() == other.resolve() or (path.exists() and other.exists() and path.samefile(other)):
                raise click.UsageError(f"{label} is the same file as {other_label}: one would overwrite the other")


class CosineThreshold(click.ParamType):
    """A cosine-similarity threshold: a finite number in [-1, 1] (NaN would make every pair "different")."""

    name = "threshold"

    def convert(self, value, param, ctx):
        try:
            number = float(value)
        except (TypeError, ValueError):
            self.fail(f"'{value}' is not a number", param, ctx)
        if not -1.0 <= number <= 1.0:  # also refuses NaN
            self.fail(f"{value} is not a cosine similarity (a number from -1 to 1)", param, ctx)
        return number


threshold_option = click.option(
    "--threshold", type=CosineThreshold(), default=None, help="Cosine-similarity threshold (default: the card's)."
)
fpir_option = click.option(
    "--fpir",
    type=click.FloatRange(0, 1, min_open=True, max_open=True),
    default=None,
    help="Share of strangers (people not enrolled) a gallery search may name: the threshold is set for the "
    "gallery's size from the embedder card's calibration [default: 0.01, biometrics.gallery.DEFAULT_FPIR].",
)

select_option = click.option(
    "--select",
    type=click.Choice(SELECTIONS),
    default="largest",
    show_default=True,
    help="Which face to use when a photo has several: the largest box, the one nearest the center, or the "
    "highest detection score.",
)


def _pipeline(detector, embedder, threads, max_side, threshold=None):
    from biometrics.pipeline import DEFAULT_DETECTOR, DEFAULT_EMBEDDER, FacePipeline

    return FacePipeline(
        detector or DEFAULT_DETECTOR,
        embedder or DEFAULT_EMBEDDER,
        threads=threads,
        max_side=max_side,
        threshold=threshold,
    )


@click.group(cls=ReportingGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(package_name="biometrics")
def cli():
    """Face verification with small, fast, honestly measured models."""


def gallery_options(command):
    """Where the gallery is and how to unlock it."""
    command = click.option(
        "--key-file",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="File with the base64 AES-256 key of an encrypted gallery (default: $BIOMETRICS_GALLERY_KEY).",
    )(command)
    return click.option(
        "--gallery",
        "gallery_path",
        type=click.Path(dir_okay=False, path_type=Path),
        default=None,
        help="Gallery file (default: $BIOMETRICS_GALLERY or ~/.local/share/biometrics/gallery.db).",
    )(command)


@dataclass(frozen=True)
class Verdict:
    """What `verify` answers, photo against photo or photo against an enrolled person (``claimed``: their name,
    templates and gallery), with what it rested on."""

    same_person: bool
    similarity: float
    threshold: float
    meaning: str | None
    photos: list[tuple[Path, int, int, Face]]  # per photo compared: path, faces found, the index used, the face
    timings_ms: dict[str, float]
    pipeline: FacePipeline
    claimed: dict | None = None
    warnings: tuple[str, ...] = ()  # about the threshold; a small face's are added (all_warnings)

    def all_warnings(self) -> list[str]:
        from biometrics.face import small_face_warnings

        faces = small_face_warnings((path.name, face.box) for path, _, _, face in self.photos)
        return [*self.warnings, *faces]

    def to_json(self) -> str:
        answer = {"claimed": self.claimed} if self.claimed else {}
        answer |= {
            "same_person": bool(self.same_person),
            "similarity": round(self.similarity, 4),
            "threshold": self.threshold,
            "threshold_meaning": self.meaning,
            "images": [
                {"path": str(path), "faces_found": count, "face_index": index, "face": face.to_dict()}
                for path, count, index, face in self.photos
            ],
            "timings_ms": {stage: round(ms, 2) for stage, ms in self.timings_ms.items()},
            "models": {"detector": self.pipeline.detector.name, "embedder": self.pipeline.embedder.name},
            "warnings": self.all_warnings(),
        }
        return json.dumps(answer)

    def text(self) -> list[str]:
        """The lines on stdout (the warnings go to stderr first)."""
        verdict = "SAME person" if self.same_person else "DIFFERENT people"
        if self.claimed:
            verdict += f": {self.photos[0][0].name} {'is' if self.same_person else 'is not'} {self.claimed['name']}"
        relation = ">=" if self.same_person else "<"
        lines = [f"{verdict}: similarity {self.similarity:.4f} {relation} threshold {self.threshold:.4f}"]
        if self.meaning:
            lines.append(f"threshold: {self.meaning}")
        found = ", ".join(_faces_found(path, count, index) for path, count, index, _ in self.photos)
        if self.claimed:
            found += f"; compared with {self.claimed['templates']} template(s) in {self.claimed['gallery']}"
        lines.append(f"faces found: {found}")
        lines.append(
            "time (ms): "
            + ", ".join(f"{s} {ms:.1f}" for s, ms in self.timings_ms.items())
            + f", total {sum(self.timings_ms.values()):.1f}"
        )
        return [*lines, f"models: {self.pipeline.name}"]


@cli.command()
@click.argument("image_a", type=click.Path(dir_okay=False, path_type=Path))
@click.argument("image_b", required=False, type=click.Path(dir_okay=False, path_type=Path))
@click.option(
    "--as",
    "claimed",
    metavar="NAME",
    default=None,
    help="Is IMAGE_A's face NAME, enrolled in the gallery? Compared with NAME's templates instead of an IMAGE_B, at "
    "the threshold that holds the card's 1:1 FMR per claim, however many templates NAME has.",
)
@gallery_options
@pipeline_options
@threshold_option
@select_option
@click.option("--face-a", type=click.IntRange(0), default=None, help="Use face N of image A (order of `detect`).")
@click.option("--face-b", type=click.IntRange(0), default=None, help="Use face N of image B (order of `detect`).")
@json_option
def verify(
    image_a,
    image_b,
    claimed,
    gallery_path,
    key_file,
    detector,
    embedder,
    threads,
    max_side,
    threshold,
    select,
    face_a,
    face_b,
    as_json,
):
    """Are the faces in IMAGE_A and IMAGE_B the same person? Or, with --as NAME, is IMAGE_A's face the person
    enrolled as NAME? Exit 0 yes, 1 no, 2 error."""
    which_a = select if face_a is None else face_a
    if claimed is not None:
        if image_b is not None or face_b is not None:
            raise click.UsageError("--as NAME compares IMAGE_A with NAME's enrolled photos: no IMAGE_B or --face-b")
        from biometrics.cli.gallery_commands import verify_claim

        pipeline_args = (detector, embedder, threads, max_side)
        verdict = verify_claim(image_a, claimed, gallery_path, key_file, pipeline_args, threshold, which_a)
    else:
        if image_b is None:
            raise click.UsageError("Missing argument 'IMAGE_B' (or --as NAME: someone enrolled in the gallery).")
        if gallery_path is not None or key_file is not None:
            raise click.UsageError("--gallery and --key-file go with --as NAME (two photos need no gallery)")
        which = (which_a, select if face_b is None else face_b)
        verdict = _verify_photos(image_a, image_b, (detector, embedder, threads, max_side), threshold, which)
    if as_json:
        click.echo(verdict.to_json())
    else:
        for warning in verdict.all_warnings():
            click.echo(f"warning: {warning}", err=True)
        click.echo("\n".join(verdict.text()))
    sys.exit(0 if verdict.same_person else EXIT_DIFFERENT)


def _verify_photos(image_a, image_b, pipeline_args, threshold, which) -> Verdict:
    """Photo against photo, each face chosen as ``which`` says (a ``--select`` rule or a face's index)."""
    pipeline = _pipeline(*pipeline_args, threshold)
    result = pipeline.verify(image_a, image_b, select=which)
    card_threshold = pipeline.embedder.model.card.data.get("threshold", {})
    meaning = card_threshold.get("meaning") if threshold is None else "given on the command line"
    photos = list(zip((image_a, image_b), result.faces_found, result.face_indexes, result.faces, strict=True))
    return Verdict(
        result.same_person, result.similarity, result.threshold, meaning, photos, result.timings_ms, pipeline
    )


def _faces_found(path: Path, count: int, index: int) -> str:
    """'a.jpg 1', or with several faces which one was compared: 'group.jpg 2 (used face 1)'."""
    return f"{path.name} {count}" + (f" (used face {index})" if count > 1 else "")


@cli.command()
@click.argument("image", type=click.Path(dir_okay=False, path_type=Path))
@detector_options
@click.option(
    "--out",
    type=click.Path(dir_okay=False, path_type=Path),
    default=None,
    help="Write a copy of the image with boxes and landmarks drawn.",
)
@json_option
def detect(image, detector, threads, max_side, out, as_json):
    """List the faces in IMAGE (score and box; --json: landmarks too), highest score first."""
    from biometrics.detection import ARCHITECTURES
    from biometrics.imaging import load_image
    from biometrics.pipeline import DEFAULT_DETECTOR
    from biometrics.registry import ModelRegistry

    refuse_overwriting({"--out": out}, {"IMAGE": image})
    model = ModelRegistry().resolve(detector or DEFAULT_DETECTOR, task="detection")
    face_detector = ARCHITECTURES.of(model.card)(model, threads=threads, max_side=max_side)
    pixels = load_image(image)
    faces = face_detector.detect(pixels)
    if out is not None:
        from biometrics.visualize import draw_faces, save_image

        save_image(out, draw_faces(pixels, faces))
    if as_json:
        click.echo(
            json.dumps(
                {
                    "image": str(image),
                    "size": list(pixels.shape[1::-1]),
                    "detector": model.name,
                    "faces": [face.to_dict() for face in faces],
                }
            )
        )
    else:
        click.echo(f"{image}: {len(faces)} face(s) ({model.name})")
        for i, face in enumerate(faces):
            x1, y1, x2, y2 = face.box
            click.echo(f"  [{i}] score {face.score:.3f} box ({x1:.0f}, {y1:.0f}, {x2:.0f}, {y2:.0f})")


def shared_data(name: str) -> Path:
    """A benchmark's default folder: ``data/<name>`` in the shared data folder (``BIOMETRICS_SHARED``, else
    ``../shared`` beside the repository or the current directory), as the registry finds reference models."""
    from biometrics.registry import shared_dirs, shared_path

    return shared_path("data", name) or shared_dirs()[0] / "data" / name


def _writable_report_folder(ctx: click.Context, param: click.Parameter, out: Path) -> Path:
    """``--out`` of a report, refused at once if nothing can be written there (a file in the way, a read-only or
    missing place) rather than after minutes of work. Nothing is created yet: a command refused later leaves no
    folder behind."""
    existing = next(path for path in (out, *out.parents) if path.exists())
    try:
        with tempfile.TemporaryFile(dir=existing):
            pass
    except OSError as exc:
        raise click.BadParameter(f"cannot write a report folder there: {existing} ({exc.strerror or exc})") from None
    return out


report_folder_option = click.option(
    "--out",
    type=click.Path(file_okay=False, path_type=Path),
    required=True,
    callback=_writable_report_folder,
    help="Report folder.",
)

lfw_data_option = click.option(
    "--data",
    type=click.Path(file_okay=False, path_type=Path),
    default=lambda: shared_data("lfw"),
    show_default="../shared/data/lfw, or $BIOMETRICS_SHARED/data/lfw",
    help="Folder with pairs.txt and lfw-deepfunneled.tgz (or the unpacked folder).",
)


@cli.group()
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


def refuse_same_names(option: str, models: tuple[str, ...], task: str | None = None) -> None:
    """Refuse, before any work, two of ``models`` (given as ``option``, "" for arguments) that go by one name: a
    report keys its results, rows and score columns by name, so one would hide the other or the two could not be
    told apart. Only the cards are read."""
    from biometrics.registry import ModelRegistry

    registry, given = ModelRegistry(), {}
    for model in models:
        name = registry.card(model, task).name
        this = f"{option} {model}".strip()
        if name in given:
            if given[name] == this:
                raise UsageError(f"{this} is given twice")
            raise UsageError(
                f"{given[name]} and {this} are both named '{name}', and a report tells models apart by name: give "
                "each its own card beside it (a .json of the same name as the .onnx) with a name of its own"
            )
        given[name] = this


def _pipelines_by_detector(detectors, embedders, threads, threshold):
    """For each detector (default ours), its pipelines with each embedder: an evaluation scores them together, on the
    faces that detector finds."""
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
        thread_counts = _all_thread_counts()
        cards = {card["name"]: card for card in _benchmark(benched, thread_counts, real_inputs=real_inputs)}
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
    default=lambda: shared_data("wider"),
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


def _all_thread_counts() -> list[int]:
    import os

    return sorted({1, os.cpu_count() or 1})


def _benchmark(models, thread_counts=(), iterations=50, batch=32, real_inputs=None) -> list[dict]:
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


@cli.command()
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
    thread_counts = list(thread_counts or _all_thread_counts())
    with sigterm_as_interrupt():  # `timeout`, a CI cancel: the workers and temporary copies go too
        cards = _benchmark(resolved, thread_counts, iterations, batch, real_inputs)
    json_path, md_path = write_efficiency_report(cards, out, run_metadata(resolved, thread_counts))
    click.echo(md_path.read_text())
    click.echo(f"report: {md_path}")


@cli.command()
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


@cli.group()
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


def main() -> None:
    cli(prog_name="biometrics")


# Commands with a module of their own; imported last because they use the helpers above.
from biometrics.cli import gallery_commands, live_commands  # noqa: E402

for command in (*gallery_commands.COMMANDS, *live_commands.COMMANDS):
    cli.add_command(command)
