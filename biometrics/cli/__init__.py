"""The ``biometrics`` command line: the root group in ``biometrics.cli.main`` (which registers the commands of the
``*_commands`` modules), started by ``biometrics.__main__``."""

EXIT_INTERRUPTED = 130  # 128 + SIGINT, as shells report it


def causes(exc: BaseException | None) -> list[BaseException]:
    """``exc`` and the errors it was raised from or while handling, the first failure last."""
    chain = []
    while exc is not None:
        chain.append(exc)
        exc = exc.__cause__ or exc.__context__
    return chain


def was_interrupted(exc: BaseException | None) -> bool:
    """Ctrl-C, or an error it caused: a library interrupted while loading may re-raise it as its own (ONNX Runtime
    turns it into ``ImportError: initialization failed``)."""
    return any(isinstance(error, KeyboardInterrupt) for error in causes(exc))
