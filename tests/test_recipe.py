"""Recipe.load checks a recipe's keys and values before anything is read or written (no training here)."""

import os
import re
from pathlib import Path

import pytest
import yaml

from biometrics.training.recipe import Recipe, RecipeError

ROOT = Path(__file__).resolve().parents[1]
RECIPES = sorted((ROOT / "pipelines").glob("*.yaml"))


@pytest.mark.parametrize("path", RECIPES, ids=[path.stem for path in RECIPES])
def test_every_shipped_recipe_loads(path):
    assert Recipe.load(path).name == yaml.safe_load(path.read_text())["name"]


def broken(tmp_path, pipeline: str, dotted: str, value, delete: bool = False) -> Path:
    """The shipped recipe with ``dotted`` (e.g. "optimizer.lr") set to ``value`` (or deleted), written out."""
    raw = yaml.safe_load((ROOT / "pipelines" / pipeline).read_text())
    *parents, leaf = dotted.split(".")
    section = raw
    for key in parents:
        section = section[key]
    if delete:
        del section[leaf]
    else:
        section[leaf] = value
    path = tmp_path / "bad.yaml"
    path.write_text(yaml.safe_dump(raw))
    return path


EMBEDDING, DETECTION, DENSE = "sface-student.yaml", "yunet-student.yaml", "yunet-student-v6.yaml"
CASES = [
    # (recipe, key set, value, what the message must contain)
    (EMBEDDING, "checkpoint_evry", 50, "unknown key 'checkpoint_evry'"),
    (EMBEDDING, "lerning_rate", 0.001, "unknown key 'lerning_rate'"),
    (EMBEDDING, "loss.cosin", 1.0, "loss: unknown key 'cosin'"),
    (EMBEDDING, "augmentation.flipp", 0.5, "augmentation: unknown key 'flipp'"),
    (EMBEDDING, "data.vggface2", {}, "data: unknown key 'vggface2'"),
    (EMBEDDING, "optimizer.name", "sgd", "optimizer.name: unknown name 'sgd'"),
    (EMBEDDING, "optimizer.lerning_rate", 0.001, "optimizer: unknown key 'lerning_rate'"),
    (EMBEDDING, "optimizer.lr", -0.002, "optimizer.lr: expected a positive number, got -0.002"),
    (EMBEDDING, "optimizer.lr", "fast", "optimizer.lr: expected a positive number"),
    (EMBEDDING, "student.width", -1, "student.width: expected a positive number"),
    (EMBEDDING, "student.width", 0, "student.width: expected a positive number"),
    (EMBEDDING, "student.head", "transformer", "student.head: unknown head 'transformer'"),
    (EMBEDDING, "student.activation", "swish", "student.activation: unknown activation 'swish'"),
    (EMBEDDING, "student.init", "imagenet", "student.init: unknown init"),
    (EMBEDDING, "student.stages", [1, 15], "student.stages[1]: expected an integer in [1, 14]"),
    (EMBEDDING, "seed", 1.7, "seed: expected an integer"),
    (EMBEDDING, "seed", -1, "seed: expected an integer"),
    (EMBEDDING, "epochs", "many", "epochs: expected a positive integer, got 'many'"),
    (EMBEDDING, "epochs", 0, "epochs: expected a positive integer, got 0"),
    (EMBEDDING, "batch_size", 0, "batch_size: expected a positive integer"),
    (EMBEDDING, "batch_size", 32.5, "batch_size: expected a positive integer"),
    (EMBEDDING, "checkpoint_every", 0, "checkpoint_every: expected a positive integer"),
    (EMBEDDING, "same_person_pairs", 64, "same_person_pairs: expected fewer than batch_size/2"),
    (EMBEDDING, "augmentation.flip", 1.5, "augmentation.flip: expected a number in [0, 1]"),
    (EMBEDDING, "output", {"fp32": "x-fp32"}, "output.int8: missing"),
    (EMBEDDING, "output.int8", "../escape", "output.int8: expected a name"),
    (EMBEDDING, "quantization.keep_fp32", ["hed"], "quantization.keep_fp32[0]: unknown keep_fp32 'hed'"),
    (EMBEDDING, "quantization.per_channel", "yes", "quantization.per_channel: expected true or false"),
    (EMBEDDING, "data.lfw", {"exclude_folds": [11]}, "data.lfw.exclude_folds[0]: expected an integer in [1, 10]"),
    (EMBEDDING, "data", {"root": "x", "holdout": 5}, "data: selects no dataset"),
    (EMBEDDING, "loss", {"cosine": 0.0}, "loss: no term has a positive weight"),
    (EMBEDDING, "teacher_view", "blurred", "teacher_view: unknown teacher_view 'blurred'"),
    (EMBEDDING, "output", {"fp32": "x", "int8": "x"}, "output: fp32 and int8 need names of their own"),
    (EMBEDDING, "report_folds", "a-b", "report_folds: folds 'a-b': expected numbers like 6-10"),
    (DETECTION, "checkpoint_evry", 100, "unknown key 'checkpoint_evry'"),
    (DETECTION, "loss.cosine", 1.0, "loss: unknown key 'cosine'"),  # an embedder's term
    (DETECTION, "loss.score", 1.0, "loss: unknown key 'score'"),  # a dense term, but this student has no init
    (DENSE, "loss.cls", 1.0, "loss: unknown key 'cls'"),
    (DETECTION, "holdout", 10, "unknown key 'holdout'"),
    (DETECTION, "data.holdout", 10, "data: unknown key 'holdout'"),
    (DETECTION, "data.fusion_iou", 0, "data.fusion_iou: expected a number in [0, 1]"),
    (DETECTION, "augmentation.siz", 320, "augmentation: unknown key 'siz'"),
    (DETECTION, "student.head", "transformer", "student.head: unknown head 'transformer'"),
    (DETECTION, "student.stem_stride", 3, "student.stem_stride: unknown stem_stride 3"),
    (DETECTION, "student.units", [[16], [32]], "student.units: expected a list of 5"),
    (DETECTION, "optimizer.lr", 0, "optimizer.lr: expected a positive number"),
    (DETECTION, "teacher", [], "teacher: expected a teacher name or a list of them"),
    (DENSE, "student.init", {"units": [[0]]}, "student.init.from: missing"),
    (DENSE, "student.init.trainabel", ["stages.0"], "student.init: unknown key 'trainabel'"),
    (DENSE, "quantization.calibration_faces", 64, "quantization: unknown key 'calibration_faces'"),
    # the architecture's own rules and the models named, at load rather than after the faces are prepared
    (EMBEDDING, "student.stages", [1, 2, 3], "student: stages must keep the downsampling stages [3, 5, 7, 13]"),
    (EMBEDDING, "student.head_channels", 24, "student: head_channels applies to the fc head only"),
    (EMBEDDING, "teacher", "sface-teachr", "teacher: unknown model 'sface-teachr' (known embedding models:"),
    (EMBEDDING, "detector", "sface-teacher", "detector: model 'sface-teacher' is for embedding, not detection"),
    (EMBEDDING, "teacher", str(ROOT / "README.md"), "README.md is not an ONNX model"),  # a file, but no model
    (DETECTION, "student.neck", 48, "student: the stride-8, 16 and 32 stages need the neck's width"),
    (DETECTION, "teacher", ["yunet-teacher", "scrfd-500m"], "teacher: 'scrfd-500m' is licensed InsightFace, non-comm"),
    (DETECTION, "teacher", ["yunet-teacher", "mtcn"], "teacher: unknown model 'mtcn'"),
    (DENSE, "student.init.units", [[0], [2]], "student: init.units must give one teacher unit per student unit"),
    (DENSE, "student.init.from", "sface-teacher", "student.init.from: model 'sface-teacher' is for embedding"),
]


@pytest.mark.parametrize(("pipeline", "key", "value", "message"), CASES, ids=[f"{c[0][:5]}-{c[1]}" for c in CASES])
def test_a_broken_recipe_names_the_file_and_the_key(tmp_path, pipeline, key, value, message):
    path = broken(tmp_path, pipeline, key, value)
    with pytest.raises(RecipeError) as caught:
        Recipe.load(path)
    text = str(caught.value)
    assert text.startswith(f"{path}: ") and message in text and "\n" not in text


def test_numbers_written_as_people_write_them(tmp_path):
    """PyYAML reads ``1e-3`` as text (YAML 1.1 wants ``1.0e-3``); a recipe reads it as the number it is."""
    path = broken(tmp_path, EMBEDDING, "optimizer.lr", 0.0)
    path.write_text(path.read_text().replace("lr: 0.0", "lr: 2e-3"))
    assert Recipe.load(path).raw["optimizer"]["lr"] == 0.002


@pytest.mark.parametrize("key", ["optimizer.lr", "output.fp32", "task", "detector"])
def test_a_required_entry_left_out_is_named(tmp_path, key):
    path = broken(tmp_path, EMBEDDING, key, None, delete=True)
    with pytest.raises(RecipeError, match=key.split(".")[-1]):
        Recipe.load(path)


def test_schema_choices_match_the_trainers():
    from biometrics.training.detector_student import HEAD_STYLES
    from biometrics.training.distill import INITS, TEACHER_VIEWS
    from biometrics.training.export import KEEP_FP32

    for path in RECIPES:
        Recipe.load(path)
    for choices, pipeline, key in (
        (INITS, EMBEDDING, "student.init"),
        (TEACHER_VIEWS, EMBEDDING, "teacher_view"),
        (HEAD_STYLES, DETECTION, "student.head"),
    ):
        message = ""
        try:
            Recipe.load(broken(Path(__import__("tempfile").mkdtemp()), pipeline, key, "nonsense"))
        except RecipeError as exc:
            message = str(exc)
        assert f"(expected one of: {', '.join(choices)})" in message
    try:
        Recipe.load(broken(Path(__import__("tempfile").mkdtemp()), EMBEDDING, "quantization.keep_fp32", ["x"]))
    except RecipeError as exc:
        assert f"(expected one of: {', '.join(KEEP_FP32)})" in str(exc)


def test_cli_refuses_a_broken_recipe_in_one_line_before_writing_anything(tmp_path):
    from click.testing import CliRunner

    from biometrics.cli.main import cli

    path = broken(tmp_path, EMBEDDING, "optimizer.lr", -0.002)
    work_dir = tmp_path / "wd"
    args = ["distill", str(path), "--work-dir", str(work_dir), "--models-dir", str(tmp_path / "models")]
    result = CliRunner().invoke(cli, args)
    assert result.exit_code == 2, result.output
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and "optimizer.lr: expected a positive number, got -0.002" in lines[0]
    assert not work_dir.exists() and not (tmp_path / "models").exists()


def test_a_recipe_that_is_no_regular_utf8_file_is_refused_unread(tmp_path):
    fifo = tmp_path / "fifo.yaml"
    os.mkfifo(fifo)
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"\xff\xfe name: x")
    for path, reason in [(fifo, "cannot read recipe (not a regular file"), (binary, "a recipe is UTF-8 text")]:
        with pytest.raises(RecipeError, match=re.escape(f"{path}: {reason}")):
            Recipe.load(path)


def test_a_recipe_that_is_not_yaml_is_one_line_naming_where(tmp_path):
    from click.testing import CliRunner

    from biometrics.cli.main import cli

    path = tmp_path / "recipe.yaml"
    path.write_text("name: x\ntask: [embedding,\n")
    result = CliRunner().invoke(cli, ["distill", str(path), "--work-dir", str(tmp_path / "wd")])
    assert result.exit_code == 2
    (line,) = result.output.strip().splitlines()
    assert line.startswith(f"error: {path}: not valid YAML at line 3, column 1 (")
