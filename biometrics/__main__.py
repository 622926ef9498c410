"""The ``biometrics`` console script, and ``python -m biometrics`` where the script is not on PATH."""

import json
import sys

from biometrics.cli import EXIT_INTERRUPTED, causes, was_interrupted
from biometrics.errors import BiometricsError, OutOfMemoryError

EXIT_ERROR = BiometricsError.exit_code


def main() -> None:
    """Loading the command line takes a moment (NumPy, OpenCV, ONNX Runtime); what goes wrong meanwhile ends as a
    command's failures do, not in a traceback and exit 1 (``verify``'s "different people"): Ctrl-C is
    "interrupted", exit 130; anything else, running out of memory included, one line and exit 2."""
    try:
        from biometrics.cli.main import main as run
    except BaseException as exc:
        if isinstance(exc, SystemExit):
            raise
        if was_interrupted(exc):
            print("interrupted", file=sys.stderr)
            sys.exit(EXIT_INTERRUPTED)
        exc = causes(exc)[-1]  # the first failure: NumPy's ImportError wraps the loader's
        if OutOfMemoryError.caused(exc):
            kind, message = "out_of_memory", str(OutOfMemoryError("loading the command line"))
        else:
            kind, message = "unexpected", f"cannot start: {type(exc).__name__}: {exc}".splitlines()[0][:300]
            if "failed to map segment" in message:  # the loader's words for a library that does not fit, or noexec
                message += " (too little memory, or a file system mounted noexec)"
        print(f"error: {message}", file=sys.stderr)
        if "--json" in sys.argv[1:]:  # the object a script parses instead of the result, as a command's failures
            print(json.dumps({"error": {"kind": kind, "message": message}}))
        sys.exit(EXIT_ERROR)
    try:
        run()
    except BaseException as exc:
        if isinstance(exc, SystemExit) or not was_interrupted(exc):  # an exit code chosen, or not Ctrl-C's doing
            raise
        print("interrupted", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


if __name__ == "__main__":
    main()
