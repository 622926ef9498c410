"""``python -m biometrics``: the command line, where the ``biometrics`` script is not on PATH."""

from biometrics.cli.main import main

if __name__ == "__main__":
    main()
