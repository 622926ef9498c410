"""The ``biometrics`` console script, and ``python -m biometrics`` where the script is not on PATH."""

import sys

from biometrics.cli import EXIT_INTERRUPTED, was_interrupted


def main() -> None:
    """Loading the command line takes a moment (NumPy, OpenCV, ONNX Runtime); Ctrl-C during it means
    "interrupted", exit 130, as it does once a command runs, not a traceback."""
    try:
        from biometrics.cli.main import main as run

        run()
    except BaseException as exc:
        if isinstance(exc, SystemExit) or not was_interrupted(exc):  # an exit code chosen, or not Ctrl-C's doing
            raise
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
