"""The ``biometrics`` command line."""
