"""What a wheel and a source distribution carry (pyproject.toml): the models a user can select, and no more."""

from __future__ import annotations

import tomllib

from biometrics.pipeline import DEFAULT_DETECTOR, DEFAULT_EMBEDDER
from tests.conftest import ROOT

PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_the_wheel_bundles_whole_model_folders_including_the_defaults():
    bundled = PYPROJECT["tool"]["hatch"]["build"]["targets"]["wheel"]["force-include"]
    for source, target in bundled.items():
        assert (ROOT / source / "card.json").is_file(), source
        assert target == f"biometrics/_bundled_models/{source.removeprefix('models/')}"
    assert {f"models/{DEFAULT_DETECTOR}", f"models/{DEFAULT_EMBEDDER}"} <= set(bundled)


def test_the_source_distribution_leaves_out_what_a_checkout_accumulates():
    included = PYPROJECT["tool"]["hatch"]["build"]["targets"]["sdist"]["only-include"]
    assert "LICENSE" in included and (ROOT / "LICENSE").is_file()
    assert all((ROOT / path).exists() for path in included)
    assert not {"reports", ".ci"} & set(included) and not any(path.startswith(".faces") for path in included)
