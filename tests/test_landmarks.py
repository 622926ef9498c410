"""Landmark NME against a reference ensemble on held-out LFW faces."""

from __future__ import annotations

import json

import numpy as np
from click.testing import CliRunner

from biometrics.cli.main import cli
from biometrics.evaluation.landmarks import evaluate_landmarks, lfw_images
from biometrics.evaluation.lfw import people_in_folds, read_pairs
from biometrics.registry import ModelRegistry
from tests.conftest import SHARED, shared_file


def test_images_come_only_from_the_chosen_folds_people():
    pairs = read_pairs(shared_file("data/lfw/pairs.txt"))
    images = lfw_images(SHARED / "data" / "lfw", [6], limit=12)
    assert len(images) == 12
    assert {path.parent.name for path in images} <= people_in_folds(pairs, [6])
    assert not {path.parent.name for path in images} & (people_in_folds(pairs, [1]) - people_in_folds(pairs, [6]))


def test_a_detector_scored_against_itself_has_zero_error():
    shared_file("data/lfw/pairs.txt")
    yunet = ModelRegistry().resolve("yunet-teacher")
    images = lfw_images(SHARED / "data" / "lfw", [7], limit=5)
    (result,) = evaluate_landmarks([yunet], [yunet], images, progress=False)
    assert result.faces == 5 and result.missed == 0 and result.in_reference
    assert result.nme_mean < 1e-6 and np.allclose(result.nme_per_point, 0, atol=1e-6)


def test_landmarks_command_writes_a_report(tmp_path):
    shared_file("data/lfw/pairs.txt")
    out = tmp_path / "report"
    args = ["evaluate", "landmarks", "--detector", "yunet-teacher", "--reference", "yunet-teacher"]
    result = CliRunner().invoke(cli, [*args, "--limit", "4", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    report = json.loads((out / "report.json").read_text())
    assert report["meta"]["reference"] == ["yunet-teacher"] and report["meta"]["images"] == 4
    assert "NME mean %" in (out / "report.md").read_text() and report["meta"]["caveats"] == []
    assert [model["name"] for model in report["meta"]["models"]] == ["yunet-teacher"]  # scored and reference: once
    assert "INT8 instructions:" in (out / "report.md").read_text()  # the run's machine, as every report gives it


def test_a_report_on_a_students_training_people_says_so(tmp_path):
    """yunet-student-v4 trained on LFW people outside folds 6-10: on folds 1-5 its error is not held out."""
    shared_file("data/lfw/pairs.txt")
    out = tmp_path / "report"
    args = ["evaluate", "landmarks", "--folds", "1-5", "--detector", "yunet-student-v4", "--reference", "yunet-teacher"]
    result = CliRunner().invoke(cli, [*args, "--limit", "2", "--out", str(out), "--no-progress"])
    assert result.exit_code == 0, result.output
    assert "warning: not held out: yunet-student-v4 trained on the people of folds 1, 2, 3, 4, 5" in result.stderr
    assert "Not held out: yunet-student-v4 trained on" in (out / "report.md").read_text()


def test_a_boxes_only_detector_is_refused_before_any_work(tmp_path):
    shared_file("data/lfw/pairs.txt")
    for role in ("--detector", "--reference"):
        args = ["evaluate", "landmarks", "--detector", "yunet-teacher", "--reference", "yunet-teacher"]
        args[args.index(role) + 1] = "ultraface-rfb320"
        result = CliRunner().invoke(cli, [*args, "--limit", "4", "--out", str(tmp_path / "r"), "--no-progress"])
        assert result.exit_code == 2 and "finds boxes only" in result.output
