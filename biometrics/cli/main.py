"""``biometrics`` command line: the root group, what every command shares (error reporting, exit codes, model
and report options), and ``verify`` and ``detect``; the other commands live in ``*_commands`` modules beside it.

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
from biometrics.errors import BiometricsError, OutOfMemoryError, OutputError, UsageError
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


def main() -> None:
    cli(prog_name="biometrics")


# Commands with a module of their own; imported last because they use the helpers above.
from biometrics.cli import evaluate_commands, gallery_commands, live_commands, model_commands  # noqa: E402

for module in (gallery_commands, live_commands, evaluate_commands, model_commands):
    for command in module.COMMANDS:
        cli.add_command(command)
