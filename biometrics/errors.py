"""Errors a user or a script can act on. Each carries the CLI exit code it maps to."""


class BiometricsError(Exception):
    """Base class: a one-line, user-facing reason. The CLI prints it and exits with ``exit_code``."""

    exit_code = 2


class ImageError(BiometricsError):
    """The input is not a readable image (missing, truncated, not an image, too many pixels)."""


class NoFaceError(BiometricsError):
    """The image decoded fine but no face was found in it."""


class ModelError(BiometricsError):
    """A model file is missing, has the wrong checksum, or is not the model its card describes."""


class DataError(BiometricsError):
    """A benchmark dataset is missing or malformed."""


class GalleryError(BiometricsError):
    """The gallery cannot be used as asked: missing, wrong key, other embedder, unknown person, corrupt file."""


class SourceError(BiometricsError):
    """A live video source cannot be opened or stopped delivering frames (missing camera, lost stream)."""


class MeasurementError(BiometricsError):
    """A benchmark could not be measured: its worker process failed (out of memory, a model that fails on the
    given input)."""


class OutOfMemoryError(BiometricsError):
    """The machine, or a limit set on the process (``ulimit -v``, a container's), left too little memory for the
    command: not a bug, not the input's fault nor the model's."""

    def __init__(self, doing: str = "this command") -> None:
        super().__init__(
            f"out of memory: the machine, or a limit set on this process (ulimit -v, a container's), leaves too little "
            f"for {doing}"
        )

    MARKERS = ("bad_alloc", "Failed to allocate memory", "Cannot allocate memory")
    """How libraries pass it on in their own exception types: C++'s std::bad_alloc (ONNX Runtime, OpenCV), ONNX
    Runtime's arena, ENOMEM's text. (Not the dynamic loader's "failed to map segment": a noexec mount says it too.)"""

    @classmethod
    def caused(cls, exc: BaseException) -> bool:
        """Whether ``exc`` is running out of memory: Python's ``MemoryError``, or a library's error saying so."""
        return isinstance(exc, MemoryError) or any(marker in str(exc) for marker in cls.MARKERS)


class OutputError(BiometricsError):
    """A result could not be written: the disk or quota is full, the device failed (``> /dev/full``)."""


class UsageError(BiometricsError):
    """A command or call cannot use what it was given: an environment variable's value, a device, a thread count,
    embeddings of different embedders."""


class AlreadyEnrolled(GalleryError):
    """A person enrolled as new is in the gallery already (perhaps enrolled by another process meanwhile)."""


class BiometricsWarning(UserWarning):
    """Something a user should know that does not stop the command; the CLI prints it as one ``warning:`` line."""


class ModelOverrideWarning(BiometricsWarning):
    """A model folder of ``BIOMETRICS_MODELS`` holds a model named like a shipped one, which it replaces."""


class KeyFileWarning(BiometricsWarning):
    """A gallery's key file can be read by other users (its mode lets the group or others read it)."""
