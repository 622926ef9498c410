"""The ``biometrics`` command line: its commands in ``biometrics.cli.main``, started by ``biometrics.__main__``."""

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def was_interrupted(exc: BaseException | None) -> bool:
    """Ctrl-C, or an error it caused: a library interrupted while loading may re-raise it as its own (ONNX Runtime
    turns it into ``ImportError: initialization failed``)."""
    while exc is not None:
        if isinstance(exc, KeyboardInterrupt):
            return True
        exc = exc.__cause__ or exc.__context__
    return False
