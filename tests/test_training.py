"""Training smoke test: a tiny student trains for a few steps, exports and quantizes, and the runtime loads it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
import yaml

torch = pytest.importorskip("torch", reason="training needs the train extra (pip install -e '.[train]')")

from biometrics.embedding import Embedder  # noqa: E402
from biometrics.registry import ModelRegistry  # noqa: E402
from biometrics.training.loop import TrainingRun, prepare_run  # noqa: E402
from biometrics.training.recipe import Recipe, RecipeError  # noqa: E402
from biometrics.training.student import (  # noqa: E402
    EmbedderConfig,
    FaceEmbedderNet,
    count_parameters,
    prune_teacher,
    sface_to_torch,
)
from tests.conftest import ROOT, SHARED, shared_file  # noqa: E402


@pytest.fixture(scope="module")
def teacher():
    return sface_to_torch(ModelRegistry().resolve("sface-teacher").onnx_bytes)


@pytest.fixture(scope="module")
def lfw_faces() -> torch.Tensor:
    """48 real faces (LFW deep-funneled, centre crops): what the head and reconstruction claims are about."""
    from biometrics.alignment import centre_crop
    from biometrics.evaluation.lfw import locate_images
    from biometrics.imaging import load_image

    shared_file("data/lfw/pairs.txt")
    paths = sorted(locate_images(SHARED / "data" / "lfw").glob("*/*_0001.jpg"))[:48]
    crops = np.stack([centre_crop(load_image(path)) for path in paths])
    return torch.from_numpy(np.ascontiguousarray(crops[..., ::-1].transpose(0, 3, 1, 2))).float()


def tiny_recipe(tmp_path, pipeline: str, **changes) -> Recipe:
    """A shipped recipe shrunk to seconds: 12 faces of LFW fold-1 people, batches of 4, a tiny scratch student."""
    raw = yaml.safe_load((ROOT / "pipelines" / pipeline).read_text())
    raw.update(
        batch_size=4,
        epochs=1,
        data={"root": str(SHARED / "data"), "lfw": {"exclude_folds": list(range(2, 11))}, "limit": 12},
        student=dict(raw["student"], init="scratch", width=0.25, stages=[1, 3, 5, 7, 13]),
    )
    raw.update(changes)
    path = tmp_path / f"{raw['name']}.yaml"
    path.write_text(yaml.safe_dump(raw))
    return Recipe.load(path)


def test_teacher_in_pytorch_matches_onnx_runtime(teacher):
    model = ModelRegistry().resolve("sface-teacher")
    reference = Embedder(model, threads=1)
    crops = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    with torch.no_grad():
        ours = teacher(torch.from_numpy(np.ascontiguousarray(crops[..., ::-1].transpose(0, 3, 1, 2))).float())
    ours = torch.nn.functional.normalize(ours, dim=1).numpy()
    np.testing.assert_allclose((ours * reference.embed(crops)).sum(1), 1.0, atol=1e-4)
    assert count_parameters(teacher) == 9_642_880


def test_pruned_student_has_the_configured_shape(teacher):
    config = EmbedderConfig(width=0.5, activation="relu")
    student, kept = prune_teacher(teacher, config)
    assert config.channels()[-1] == 512 and count_parameters(student) <= 1_000_000
    assert [len(kept[stage]) for stage in (1, 7, 14)] == [16, 256, 512]
    # The GDC head is the best rank-1 split of the teacher's FC slice of each kept channel.
    kernel = student.spatial.weight.data.reshape(512, 49)
    column = student.linear.weight.data.T
    rank_one = column[:, :, None] * kernel[:, None, :]
    assert torch.isfinite(rank_one).all() and rank_one.abs().sum() > 0
    with torch.no_grad():
        assert student.eval()(torch.zeros(2, 3, 112, 112)).shape == (2, 128)


def test_reduced_fc_head_factorises_the_teachers_fc(teacher, lfw_faces):
    """At full rank the 1x1 reduction + FC is SFace's FC exactly; at rank 24 it follows the teacher on real faces
    more closely than the GDC head (rank 1 per channel) does, both reading the teacher's own features."""
    rgb = lfw_faces
    body = {k: v for k, v in teacher.state_dict().items() if not k.startswith(("linear", "spatial"))}
    cosines = {}
    with torch.no_grad():
        reference = teacher(rgb)
        for head, rank in (("fc", 1024), ("fc", 24), ("gdc", 0)):
            student, _ = prune_teacher(teacher, EmbedderConfig(width=1.0, head=head, head_channels=rank))
            student.load_state_dict(body, strict=False)
            cosines[rank] = torch.nn.functional.cosine_similarity(student.eval()(rgb), reference)
    assert (cosines[1024] > 0.9999).all() and cosines[24].mean() > cosines[0].mean() + 0.1, cosines
    assert count_parameters(FaceEmbedderNet(EmbedderConfig(width=0.5, head="fc", head_channels=24))) <= 1_000_000
    with pytest.raises(ValueError, match="fc head only"):
        FaceEmbedderNet(EmbedderConfig(head="gdc", head_channels=24))


def test_feature_hints_line_up_with_the_teachers_kept_channels(teacher):
    """A full-width PReLU 'student' pruned from the teacher is the teacher: its hints equal the teacher's."""
    student, kept = prune_teacher(teacher, EmbedderConfig(width=1.0, head="fc"))
    student.load_state_dict(teacher.state_dict())
    rgb = torch.from_numpy(np.random.default_rng(0).uniform(0, 255, (2, 3, 112, 112)).astype(np.float32))
    with torch.no_grad():
        embedding, hints = student.eval().forward_features(rgb, [2, 7, 14])
        reference, teacher_hints = teacher.forward_features(rgb, [2, 7, 14])
        np.testing.assert_allclose(embedding.numpy(), teacher(rgb).numpy(), rtol=1e-4, atol=1e-4)
    assert set(hints) == {2, 7, 14} and hints[7].shape == (2, 512, 14, 14)
    for stage in hints:
        torch.testing.assert_close(hints[stage], teacher_hints[stage][:, kept[stage]])


@pytest.mark.parametrize(
    "kernel, stride, groups",
    [(1, 1, 1), (3, 2, 8), (3, 1, 1)],  # pointwise, strided depthwise, full 3x3 (the first conv)
)
def test_least_squares_recovers_a_linear_unit(kernel, stride, groups):
    """When the target is exactly a conv + BN of the input, the fit reproduces it (train-mode BN included)."""
    from biometrics.training.reconstruct import fit_conv_bn

    torch.manual_seed(0)
    reference = torch.nn.Conv2d(8, 8, kernel, stride, kernel // 2, groups=groups)
    inputs = torch.randn(40, 8, 20, 20)
    with torch.no_grad():
        target = reference(inputs)
    conv = torch.nn.Conv2d(8, 8, kernel, stride, kernel // 2, groups=groups, bias=False)
    bn = torch.nn.BatchNorm2d(8, eps=1e-3)
    fit_conv_bn(conv, bn, inputs, target, ridge=1e-8)
    with torch.no_grad():
        torch.testing.assert_close(bn.eval()(conv(inputs)), target, atol=1e-3, rtol=1e-3)
        torch.testing.assert_close(bn.train()(conv(inputs)), target, atol=2e-2, rtol=2e-2)


def test_reconstruction_restores_what_pruning_lost(teacher, lfw_faces):
    """Re-solving each layer of a pruned, ReLU student brings its embeddings of real faces towards the teacher's."""
    from biometrics.training.reconstruct import reconstruct_student

    rgb = lfw_faces
    student, kept = prune_teacher(teacher, EmbedderConfig(width=0.25, activation="relu"))

    def cosine():
        with torch.no_grad():
            s, t = student.eval()(rgb), teacher(rgb)
        return float(torch.nn.functional.cosine_similarity(s, t).mean())

    pruned = cosine()
    errors = reconstruct_student(teacher, student, kept, rgb[:16], rgb, ridge=1e-2)
    assert cosine() > pruned + 0.3
    assert all(0 <= error < 1 for error in errors.values())


def test_scratch_network_and_bad_configs():
    assert FaceEmbedderNet(EmbedderConfig(width=0.25, stages=(1, 3, 5, 7, 13))).config.channels() == [
        8,
        32,
        64,
        128,
        256,
    ]
    with pytest.raises(ValueError, match="downsampling stages"):
        FaceEmbedderNet(EmbedderConfig(stages=(1, 2, 3)))
    with pytest.raises(ValueError, match="unknown head"):
        FaceEmbedderNet(EmbedderConfig(head="mlp"))


@pytest.mark.parametrize(
    "recipe_path",
    [p for p in sorted((ROOT / "pipelines").glob("*.yaml")) if yaml.safe_load(p.read_text())["task"] == "embedding"],
    ids=lambda p: p.stem,
)
def test_every_embedder_recipe_builds_a_student_within_the_parameter_bar(recipe_path):
    """A recipe that would not build, or would build a student over 1.0 M parameters, fails here, not an hour in."""
    from biometrics.training.distill import student_spec

    config, _, _ = student_spec(Recipe.load(recipe_path))
    assert count_parameters(FaceEmbedderNet(config)) <= 1_000_000


def test_embedding_only_distillation_uses_cached_targets_and_can_start_from_another_run(tmp_path, capsys):
    """Without feature hints the teacher's cached embeddings (face and mirror) are the targets."""
    from biometrics.training.distill import distill

    recipe = tiny_recipe(tmp_path, "sface-student.yaml", name="cached", loss={"cosine": 1.0})
    raw, path = recipe.raw, recipe.path
    summary = distill(recipe, tmp_path / "run", tmp_path / "models", max_steps=2, progress=False)
    assert summary == {"finished": False, "step": 2, "total_steps": 3, "work_dir": str(tmp_path / "run")}
    assert (tmp_path / "run" / "checkpoint.pt").is_file()

    # Scoring a run mid-way: the checkpoint where it stopped is exported, and its cards say how far it went.
    snapshot = distill(recipe, tmp_path / "run", tmp_path / "mid", max_steps=2, progress=False, export_unfinished=True)
    assert snapshot["finished"] is False
    card = json.loads((tmp_path / "mid" / recipe.output["int8"] / "card.json").read_text())
    assert {k: card["training"][k] for k in ("steps", "total_steps", "finished")} == {
        "steps": 2,
        "total_steps": 3,
        "finished": False,
    }

    # A recipe may train on from where another run stopped: fresh schedule and log, that run's weights; an
    # unfinished run is said so, on stderr and in the log.
    path.write_text(yaml.safe_dump(dict(raw, name="on", start_from_run="run")))
    capsys.readouterr()
    distill(Recipe.load(path), tmp_path / "on", tmp_path / "models", max_steps=1, progress=False)
    first = json.loads((tmp_path / "on" / "train_log.jsonl").read_text().splitlines()[0])
    assert first == {
        "step": 0,
        "started_from": str(tmp_path / "run" / "checkpoint.pt"),
        "its_step": 2,
        "its_total_steps": 3,
    }
    assert "note: run 'run' stopped at step 2 of 3; on starts from those unfinished weights" in capsys.readouterr().err
    path.write_text(yaml.safe_dump(dict(raw, name="on", start_from_run="never-ran")))
    with pytest.raises(RecipeError, match="no checkpoint"):
        distill(Recipe.load(path), tmp_path / "elsewhere", tmp_path / "models", max_steps=1, progress=False)


def test_a_packed_face_set_trains_where_the_datasets_are_not(tmp_path, monkeypatch):
    """--pack-faces writes a recipe's faces to one owner-only file; --faces trains on it with no dataset in reach,
    on the same split, and the cards say the faces were WebP copies. A file made for other data is refused."""
    from click.testing import CliRunner

    from biometrics.cli.main import cli
    from biometrics.training.distill import training_faces

    monkeypatch.setenv("BIOMETRICS_CACHE", str(tmp_path / "cache"))
    recipe = tiny_recipe(tmp_path, "sface-student.yaml", name="packed", loss={"cosine": 1.0})
    recipe.raw["data"]["holdout"] = 4
    recipe.path.write_text(yaml.safe_dump(recipe.raw))
    packed = tmp_path / "faces.npz"
    run = lambda *args: CliRunner().invoke(cli, ["distill", *map(str, args), "--no-progress"])  # noqa: E731
    result = run(recipe.path, "--pack-faces", packed)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["faces"] == 12 and packed.stat().st_mode & 0o777 == 0o600

    recipe = Recipe.load(recipe.path)
    originals, holdout, train = training_faces(recipe, progress=False)
    copies, copy_holdout, copy_train = training_faces(recipe, progress=False, faces_file=packed)
    assert copies.meta == originals.meta and copies.folder != originals.folder
    assert list(copy_holdout) == list(holdout) and list(copy_train) == list(train)
    difference = np.abs(np.asarray(copies.crops, np.float32) - np.asarray(originals.crops, np.float32)).mean()
    assert 0 < difference < 4  # lossy, but the same faces

    nowhere = dict(recipe.raw, data=dict(recipe.raw["data"], root=str(tmp_path / "no-datasets")))
    recipe.path.write_text(yaml.safe_dump(nowhere))
    assert run(recipe.path, "--models-dir", tmp_path / "models").exit_code == 2  # the datasets are not there
    args = (recipe.path, "--faces", packed, "--work-dir", tmp_path / "run", "--models-dir", tmp_path / "models")
    result = run(*args)
    assert result.exit_code == 0, result.output
    card = json.loads((tmp_path / "models" / recipe.output["int8"] / "card.json").read_text())
    assert card["data_split"]["faces"] == "trained on WebP copies of the aligned crops, quality 90"

    other_people = dict(nowhere, data=dict(nowhere["data"], lfw={"exclude_folds": [1]}))
    recipe.path.write_text(yaml.safe_dump(other_people))
    refused = run(*args)
    assert refused.exit_code == 2 and "holds faces made for" in refused.output
    for name, content in (("faces.txt", b"faces"), ("half.npz", packed.read_bytes()[: packed.stat().st_size // 2])):
        (tmp_path / name).write_bytes(content)  # not a face set; one half of a face set sent in two parts
        refused = run(recipe.path, "--faces", tmp_path / name)
        assert refused.exit_code == 2 and "not a readable packed face set" in refused.output


def test_same_person_pairs_come_from_known_people_in_the_training_split():
    from biometrics.training.distill import distillation_loss, same_person_groups

    identities = ["lfw/a", "celeba/b", "lfw/a", None, "celeba/b", "lfw/c", None]
    groups = same_person_groups(identities, np.arange(7))
    assert [list(g) for g in groups] == [[0, 2], [1, 4]]  # unlabelled faces and one-photo people never pair
    assert [list(g) for g in same_person_groups(identities, np.array([0, 1, 2, 3]))] == [[0, 2]]

    teacher = torch.nn.functional.normalize(torch.randn(6, 8), dim=1)
    pairs = torch.tensor([[4, 5]])
    weights = {"cosine": 0.0, "same_person": 1.0}
    assert distillation_loss(teacher.clone(), teacher, weights, same_person=pairs)[1]["same_person"] == 0.0
    student = teacher.clone()
    student[5] = -teacher[4]  # the student thinks the two photos are of different people
    total, terms = distillation_loss(student, teacher, weights, same_person=pairs)
    assert terms["same_person"] > 0.5 and float(total) == pytest.approx(terms["same_person"])


def test_recipe_errors(tmp_path):
    path = tmp_path / "r.yaml"
    path.write_text("name: x\n")
    with pytest.raises(RecipeError, match="missing task"):
        Recipe.load(path)


def test_distill_smoke_trains_exports_and_quantizes(tmp_path):
    """A tiny student, a handful of LFW faces, a few steps: FP32 + INT8 ONNX with cards that the runtime loads."""
    shared_file("data/lfw/pairs.txt")
    recipe = yaml.safe_load((ROOT / "pipelines" / "sface-student.yaml").read_text())
    recipe.update(
        name="smoke",
        epochs=1,
        batch_size=8,
        checkpoint_every=2,
        data={"root": str(SHARED / "data"), "lfw": {"exclude_folds": list(range(2, 11))}, "limit": 40, "holdout": 8},
        student=dict(
            recipe["student"],
            width=0.25,
            stages=[1, 2, 3, 5, 7, 13, 14],
            init="teacher-reconstructed",
            reconstruction={"layer_faces": 8, "head_faces": 16},
        ),
        quantization={"calibration_faces": 8, "per_channel": True},
        output={"fp32": "smoke-fp32", "int8": "smoke-int8"},
    )
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(recipe))
    from click.testing import CliRunner

    from biometrics.cli.main import cli

    args = [
        "distill",
        str(path),
        "--work-dir",
        str(tmp_path / "run"),
        "--models-dir",
        str(tmp_path / "models"),
        "--threads",
        "2",
        "--no-progress",
    ]
    partial = CliRunner().invoke(cli, [*args, "--max-steps", "2"])
    assert partial.exit_code == 0, partial.output
    assert json.loads(partial.stdout)["finished"] is False
    result = CliRunner().invoke(cli, args)  # resumes from the checkpoint at step 2
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    assert summary["finished"] is True
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    # The least-squares fit is logged once, before step 1; the resumed run does not redo it. Each stretch of
    # training records where it ran.
    assert [r["step"] for r in log if "device" not in r][:2] == [0, 2] and "holdout" in log[-1]
    assert [(r["step"], r["device"]) for r in log if "device" in r] == [(0, "cpu"), (2, "cpu")]
    assert set(log[0]["reconstruction_relative_error"]) >= {"1", "2dw", "14", "head"}

    registry = ModelRegistry([tmp_path / "models"], cache=tmp_path / "cache")
    crops = np.random.default_rng(1).integers(0, 256, (2, 112, 112, 3), dtype=np.uint8)
    for name, precision in (("smoke-fp32", "fp32"), ("smoke-int8", "int8")):
        model = registry.resolve(name, task="embedding")
        assert model.card.data["precision"] == precision
        assert model.card.data["data_split"]["lfw_excluded_folds"] == list(range(2, 11))
        embeddings = Embedder(model, threads=1).embed(crops)
        np.testing.assert_allclose(np.linalg.norm(embeddings, axis=1), 1.0, atol=1e-5)
    int8 = registry.resolve("smoke-int8")
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load_from_string(int8.onnx_bytes).graph.node)


def test_teacher_view_decides_where_the_targets_come_from(tmp_path):
    """Hints need the teacher on the student's own view; without them the clean face's cached embedding is the
    default, and ``teacher_view: augmented`` runs the teacher online instead."""
    from biometrics.errors import BiometricsError
    from biometrics.training.distill import distill, teacher_view

    raw = yaml.safe_load((ROOT / "pipelines" / "sface-student.yaml").read_text())

    def recipe(**changes) -> Recipe:
        path = tmp_path / "view.yaml"
        path.write_text(yaml.safe_dump(dict(raw, **changes)))
        return Recipe.load(path)

    assert teacher_view(recipe(loss={"cosine": 1.0, "features": 1.0})) == "augmented"
    assert teacher_view(recipe(loss={"cosine": 1.0})) == "clean"
    with pytest.raises(BiometricsError, match="feature hints need teacher_view: augmented"):
        teacher_view(recipe(loss={"features": 1.0}, teacher_view="clean"))
    with pytest.raises(BiometricsError, match="unknown teacher_view 'blurred'"):
        teacher_view(recipe(teacher_view="blurred"))

    online = tiny_recipe(
        tmp_path, "sface-student.yaml", name="online", teacher_view="augmented", loss={"cosine": 1.0, "pairwise": 1.0}
    )
    distill(online, tmp_path / "run", tmp_path / "models", max_steps=1, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 1 and "loss_cosine" in log[-1] and "loss_features" not in log[-1]


@pytest.mark.slow
def test_a_compiled_run_computes_what_the_uncompiled_one_does_and_may_resume_either_way(tmp_path):
    """``--compile`` is an execution choice, not a recipe's: the student's embeddings and gradients are the
    uncompiled ones (to float rounding), the log says which stretch ran compiled, and its checkpoint resumes
    uncompiled."""
    from biometrics.training.distill import distill

    net = FaceEmbedderNet(EmbedderConfig(width=0.25, stages=[1, 3, 5, 7, 13])).train()
    crops = torch.from_numpy(np.random.default_rng(0).integers(0, 256, (4, 3, 112, 112)).astype(np.float32))
    results = []
    for forward in (net.forward_features, torch.compile(net.forward_features, dynamic=False)):
        net.zero_grad()
        embedding, _ = forward(crops, [])
        embedding.square().sum().backward()
        results.append((embedding.detach(), {name: p.grad.clone() for name, p in net.named_parameters()}))
    (eager, eager_grads), (compiled, compiled_grads) = results
    torch.testing.assert_close(compiled, eager, rtol=1e-4, atol=1e-4)
    for name, grad in eager_grads.items():
        torch.testing.assert_close(compiled_grads[name], grad, rtol=1e-3, atol=1e-3, msg=name)

    from biometrics.training.distill import OnlineTeacher, TorchTeacher

    teacher = TorchTeacher("sface-teacher", [], torch.device("cpu"))
    teacher.compile()  # what a compiled run's targets come from, instead of ONNX Runtime's graph
    views = crops.contiguous(memory_format=torch.channels_last)
    targets = torch.nn.functional.normalize(teacher(views)[0], dim=1)
    reference = torch.nn.functional.normalize(OnlineTeacher("sface-teacher", [], threads=2)(views)[0], dim=1)
    assert float((targets * reference).sum(1).min()) > 0.9999

    recipe = tiny_recipe(
        tmp_path, "sface-student.yaml", name="compiled", teacher_view="augmented", loss={"cosine": 1.0, "pairwise": 1.0}
    )
    distill(recipe, tmp_path / "run", tmp_path / "models", max_steps=2, progress=False, compile_network=True)
    distill(recipe, tmp_path / "run", tmp_path / "models", max_steps=3, progress=False)
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert [(r["step"], r.get("compiled", False)) for r in log if "device" in r] == [(0, True), (2, False)]
    assert log[-1]["step"] == 3 and np.isfinite(log[-1]["loss_cosine"])


def test_keep_fp32_depthwise_names_exactly_the_grouped_convs():
    from biometrics.training.export import fp32_nodes

    model = onnx.load_from_string(ModelRegistry().resolve("yunet-student-v4-fp32").onnx_bytes)
    grouped = [
        node.name
        for node in model.graph.node
        if node.op_type == "Conv" and any(a.name == "group" and a.i > 1 for a in node.attribute)
    ]
    assert len(grouped) >= 10 and fp32_nodes(model, ["depthwise"]) == grouped
    with pytest.raises(ValueError, match="unknown keep_fp32 entries"):
        fp32_nodes(model, ["pointwise"])


def _two_conv_model(path):
    """x -> conv "first" (1 -> 2 channels) -> ReLU -> conv "second" (2 -> 2) -> ReLU, saved at ``path``. The
    weights mix signs as a trained net's do: with all of them at full scale, the u8 x s8 products of AVX2 CPUs
    without VNNI saturate (ONNX Runtime's documented caveat), which is not what these tests are about."""
    from onnx import TensorProto, helper, numpy_helper

    weights = [
        numpy_helper.from_array(np.array([1.0, 0.5], np.float32).reshape(2, 1, 1, 1), "w1"),
        numpy_helper.from_array(np.array([[0.5, -0.25], [-0.1, 0.6]], np.float32).reshape(2, 2, 1, 1), "w2"),
    ]
    graph = helper.make_graph(
        [
            helper.make_node("Conv", ["x", "w1"], ["y1"], name="first"),
            helper.make_node("Relu", ["y1"], ["z1"], name="relu1"),
            helper.make_node("Conv", ["z1", "w2"], ["y2"], name="second"),
            helper.make_node("Relu", ["y2"], ["z"], name="relu2"),
        ],
        "tiny",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 16, 16])],
        [helper.make_tensor_value_info("z", TensorProto.FLOAT, [1, 2, 16, 16])],
        weights,
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8), str(path))
    return path


def test_percentile_calibration_clips_a_rare_extreme_activation(tmp_path):
    """One outlier in the calibration data sets a min-max range alone; a percentile range ignores it, so the
    INT8 step (the input's QuantizeLinear scale) stays fine for every ordinary value."""
    from onnx import numpy_helper

    from biometrics.training.export import quantize_int8

    fp32 = _two_conv_model(tmp_path / "fp32.onnx")
    inputs = np.random.default_rng(0).uniform(0, 1, (64, 1, 16, 16)).astype(np.float32)
    inputs[0, 0, 0, 0] = 1000.0

    def input_scale(percentile):
        path = quantize_int8(fp32, tmp_path / f"int8-{percentile}.onnx", inputs, percentile=percentile)
        model = onnx.load(str(path))
        node = next(n for n in model.graph.node if n.op_type == "QuantizeLinear" and n.input[0] == "x")
        initializers = {i.name: numpy_helper.to_array(i) for i in model.graph.initializer}
        return float(initializers[node.input[1]])

    assert input_scale(None) > 3.0  # 1000 / 255: the outlier sets the range
    assert input_scale(99.99) < 0.01  # about 1 / 255


def test_int8_schemes_the_variants_script_compares(tmp_path):
    """``scripts/int8_variants.py`` times ORT's other INT8 schemes against the recipes' one; each option must
    build what it names: excluded nodes stay FP32, int8 or symmetric activations change the zero points, the
    operator format writes QLinearConv instead of QDQ pairs, reduce_range 7-bit weights."""
    import onnxruntime as ort
    from onnx import numpy_helper

    from biometrics.training.export import quantize_int8

    fp32 = _two_conv_model(tmp_path / "fp32.onnx")
    inputs = np.random.default_rng(0).uniform(0, 1, (8, 1, 16, 16)).astype(np.float32)

    def build(name, **options):
        model = onnx.load(str(quantize_int8(fp32, tmp_path / f"{name}.onnx", inputs, **options)))
        zero_points = {
            numpy_helper.to_array(i).dtype for i in model.graph.initializer if i.name.endswith("_zero_point")
        }
        expected = ort.InferenceSession(str(fp32)).run(None, {"x": inputs[:1]})[0]
        got = ort.InferenceSession(model.SerializeToString()).run(None, {"x": inputs[:1]})[0]
        np.testing.assert_allclose(got, expected, atol=0.05)  # still the same function, up to rounding
        return model, zero_points

    recipes, recipes_zero_points = build("recipes")
    assert np.dtype(np.uint8) in recipes_zero_points
    assert next(n for n in recipes.graph.node if n.name == "second").input[1] != "w2"  # quantized weights
    excluded, _ = build("excluded", exclude_nodes=["second"])
    second = next(n for n in excluded.graph.node if n.name == "second")
    assert second.input[1] == "w2"  # its weights stay the FP32 initializer (no DequantizeLinear in between)
    assert np.dtype(np.uint8) not in build("signed", signed_activations=True)[1]
    symmetric, _ = build("symmetric", symmetric_activations=True)
    activation_zeros = [
        numpy_helper.to_array(i) for i in symmetric.graph.initializer if i.name.endswith("_zero_point") and i.dims == []
    ]
    assert activation_zeros and all(int(z) == 128 for z in activation_zeros if z.dtype == np.uint8)
    operators = {n.op_type for n in build("operators", operator_format=True)[0].graph.node}
    assert "QLinearConv" in operators and "Conv" not in operators
    weights = [numpy_helper.to_array(i) for i in build("seven_bit", reduce_range=True)[0].graph.initializer]
    quantized = [w for w in weights if w.dtype == np.int8 and w.ndim == 4]
    # |w| <= 64: two products of a uint8 activation fit a 16-bit sum (2 x 255 x 64 < 32768), AVX2 or not
    assert quantized and all(np.abs(w.astype(int)).max() == 64 for w in quantized)


def test_calibration_holds_one_chunk_of_inputs_at_a_time():
    """ONNX Runtime's histogram calibrator holds every activation of the inputs it is given (15 GB for 256 faces
    through the embedder student), so the inputs go in chunks of at most 32 that divide their count."""
    from biometrics.training.export import _InputReader, calibration_chunk

    assert [calibration_chunk(n) for n in (256, 100, 7, 37)] == [32, 25, 7, 1]
    reader = _InputReader("x", np.arange(10, dtype=np.float32).reshape(10, 1, 1, 1))
    assert len(reader) == 10
    reader.set_range(start_index=4, end_index=8)
    seen = []
    while (item := reader.get_next()) is not None:
        seen.append(int(item["x"][0, 0, 0, 0]))
    assert seen == [4, 5, 6, 7]


def test_prelu_as_elementwise_computes_prelu_and_stays_fp32_in_int8(tmp_path):
    """ONNX Runtime's PRelu is slow on real activations; the export writes x + (a - 1) * min(x, 0) instead, which
    must be the same function for every slope (negative, zero, between 0 and 1, above 1), and which the INT8
    build leaves in FP32."""
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from biometrics.training.export import fp32_nodes, prelu_as_elementwise

    slopes = np.array([-0.7, 0.0, 0.25, 1.08], np.float32).reshape(4, 1, 1)
    graph = helper.make_graph(
        [helper.make_node("Conv", ["x", "w"], ["c"], name="conv"), helper.make_node("PRelu", ["c", "a"], ["y"])],
        "prelu",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 1, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4, 8, 8])],
        [numpy_helper.from_array(np.ones((4, 1, 1, 1), np.float32), "w"), numpy_helper.from_array(slopes, "a")],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)], ir_version=8)
    x = {"x": np.random.default_rng(0).standard_normal((1, 1, 8, 8)).astype(np.float32)}
    expected = ort.InferenceSession(model.SerializeToString()).run(None, x)[0]
    rewritten = prelu_as_elementwise(model)
    assert "PRelu" not in {node.op_type for node in rewritten.graph.node}
    np.testing.assert_allclose(ort.InferenceSession(rewritten.SerializeToString()).run(None, x)[0], expected, atol=1e-6)
    assert fp32_nodes(rewritten, []) == [node.name for node in rewritten.graph.node if node.name != "conv"]


def test_int8_simulation_tracks_onnx_runtimes_int8_build(tmp_path, teacher, lfw_faces):
    """Quantization-aware fine-tuning is only as good as its simulation: the simulated student (here SFace pruned
    to half width, real weights) must be much closer to its INT8 ONNX build than the FP32 student is, and undoing
    the simulation must give the FP32 student back exactly."""
    import onnxruntime as ort

    from biometrics.training.export import export_onnx, quantize_int8
    from biometrics.training.quantization_aware import simulate_int8

    net, _ = prune_teacher(teacher, EmbedderConfig(width=0.5))
    net.eval()
    calibration, held_out = lfw_faces[:32], lfw_faces[32:]
    fp32_path = export_onnx(net, tmp_path / "fp32.onnx")
    int8_path = quantize_int8(
        fp32_path, tmp_path / "int8.onnx", calibration.numpy(), keep_fp32=["first_conv", "head"], percentile=99.99
    )
    int8 = torch.from_numpy(ort.InferenceSession(str(int8_path)).run(None, {"data": held_out.numpy()})[0])
    with torch.no_grad():
        fp32 = net(held_out)
        undo = simulate_int8(net, calibration, percentile=99.99)
        simulated = net(held_out)
        undo()
        again = net(held_out)
    assert (simulated - int8).norm() < 0.6 * (fp32 - int8).norm()  # measured: 0.17 against 0.39
    assert torch.equal(again, fp32)


def test_quantization_aware_training_runs_and_must_simulate_the_build_it_precedes(tmp_path):
    """``quantization.aware`` fine-tunes through the INT8 simulation and exports plain FP32 + INT8; a recipe whose
    INT8 build the simulation does not reproduce (other layers kept in FP32) is refused before training."""
    from biometrics.errors import BiometricsError
    from biometrics.training.distill import distill

    recipe = tiny_recipe(
        tmp_path,
        "sface-student-qat.yaml",
        name="qat",
        same_person_pairs=0,
        start_from_run=None,
        output={"fp32": "qat-fp32", "int8": "qat-int8"},
    )
    raw, path = recipe.raw, recipe.path
    summary = distill(recipe, tmp_path / "run", tmp_path / "models", progress=False)
    assert summary["finished"] is True
    exported = onnx.load(summary["fp32"])
    assert "QuantizeLinear" not in {node.op_type for node in exported.graph.node}  # the simulation is undone
    assert any(node.op_type == "QuantizeLinear" for node in onnx.load(summary["int8"]).graph.node)

    path.write_text(yaml.safe_dump(dict(raw, quantization=dict(raw["quantization"], keep_fp32=["first_conv"]))))
    with pytest.raises(BiometricsError, match="simulates per-channel INT8 with keep_fp32"):
        distill(Recipe.load(path), tmp_path / "refused", tmp_path / "models", progress=False)


def test_gpu_training_parts_compute_what_the_cpu_path_does(lfw_faces, tmp_path):
    """On a GPU the faces are batched from a device tensor and the teacher runs in PyTorch: both must give the
    network input and the targets (embeddings and hints) that the CPU path's NumPy batches and ONNX teacher give.
    Checked here on the CPU with real faces; the CUDA run itself is recorded in the patient recipes' logs."""
    from biometrics.training.distill import OnlineTeacher, TorchTeacher, _to_tensor

    crops = np.ascontiguousarray(lfw_faces[:8].numpy().transpose(0, 2, 3, 1)[..., ::-1]).astype(np.uint8)  # BGR
    assert torch.equal(_to_tensor(torch.from_numpy(crops)), _to_tensor(crops))
    onnx_teacher = OnlineTeacher("sface-teacher", [3, 13], threads=2)
    torch_teacher = TorchTeacher("sface-teacher", [3, 13], torch.device("cpu"))
    a, b = onnx_teacher.embed(crops), torch_teacher.embed(crops)
    cosine = (a * b).sum(1) / np.linalg.norm(a, axis=1) / np.linalg.norm(b, axis=1)
    assert cosine.min() > 0.9999
    hints_onnx, hints_torch = onnx_teacher(_to_tensor(crops))[1], torch_teacher(_to_tensor(crops))[1]
    for stage in (3, 13):
        torch.testing.assert_close(hints_torch[stage], hints_onnx[stage], rtol=1e-3, atol=1e-3)

    # The cached targets (face and mirror) too, kept apart from the ONNX Runtime ones.
    from biometrics.training.faces import FaceCache, teacher_targets

    faces = FaceCache(tmp_path, crops, [{"dataset": "lfw", "identity": None, "file": str(i)} for i in range(8)])
    by_ort = teacher_targets(faces, "sface-teacher", progress=False)
    by_torch = teacher_targets(faces, "sface-teacher", progress=False, gpu_teacher=torch_teacher)
    assert by_torch.shape == by_ort.shape == (8, 2, 128) and len(list(tmp_path.glob("targets-*.npy"))) == 2
    assert (by_torch * by_ort).sum(-1).min() > 0.9999


def test_distill_refuses_a_device_it_cannot_use(tmp_path):
    from click.testing import CliRunner

    from biometrics.cli.main import cli
    from biometrics.errors import BiometricsError
    from biometrics.training.distill import distill

    recipe = tiny_recipe(tmp_path, "sface-student.yaml")
    with pytest.raises(BiometricsError, match="unknown device 'abacus'"):
        distill(recipe, tmp_path / "run", tmp_path / "models", device="abacus", progress=False)
    if not torch.cuda.is_available():
        with pytest.raises(BiometricsError, match="sees no CUDA GPU"):
            distill(recipe, tmp_path / "run", tmp_path / "models", device="cuda", progress=False)
    detector_recipe = str(ROOT / "pipelines" / "yunet-student.yaml")
    result = CliRunner().invoke(cli, ["distill", detector_recipe, "--device", "abacus", "--no-progress"])
    assert result.exit_code == 2 and "unknown device 'abacus'" in result.output


def test_compile_is_refused_where_it_cannot_run_before_anything_is_read(tmp_path, monkeypatch):
    import torch._inductor.cpp_builder
    from click.testing import CliRunner

    from biometrics.cli.main import cli
    from biometrics.errors import UsageError
    from biometrics.training.distill import require_compiler

    recipe = tiny_recipe(tmp_path, "sface-student.yaml")
    with pytest.raises(UsageError, match="--compile is for CPU runs; on cuda leave it out"):
        require_compiler(torch.device("cuda"), recipe)
    with pytest.raises(RecipeError, match="quantization-aware training runs uncompiled"):
        require_compiler(torch.device("cpu"), Recipe.load(ROOT / "pipelines" / "sface-student-qat.yaml"))

    def no_compiler():
        raise RuntimeError("Unsupported: no C++ compiler found")

    monkeypatch.setattr(torch._inductor.cpp_builder, "get_cpp_compiler", no_compiler)
    with pytest.raises(UsageError, match="--compile needs a C\\+\\+ compiler .*no C\\+\\+ compiler found"):
        require_compiler(torch.device("cpu"), recipe)

    detector_recipe = str(ROOT / "pipelines" / "yunet-student.yaml")
    result = CliRunner().invoke(cli, ["distill", detector_recipe, "--compile", "--no-progress"])
    assert result.exit_code == 2 and "--compile are for embedder recipes" in result.output
    embedder_recipe = str(ROOT / "pipelines" / "sface-student.yaml")
    result = CliRunner().invoke(cli, ["distill", embedder_recipe, "--compile", "--pack-faces", str(tmp_path / "f.npz")])
    assert result.exit_code == 2 and "--compile is for training" in result.output


def test_rotation_augmentation_turns_the_face_and_leaves_the_draws_of_other_recipes_alone():
    from biometrics.training.distill import augment

    # a vertical bar: rotated, its columns spread; not asked for, the same seed gives exactly the old views
    batch = torch.zeros(2, 3, 112, 112)
    batch[:, :, 16:96, 54:58] = 255
    spec = {"shift_px": 3, "scale": 0.05}
    plain = augment(batch.clone(), spec, torch.Generator().manual_seed(0))
    turned = augment(batch.clone(), dict(spec, rotate_deg=20), torch.Generator().manual_seed(0))
    columns = lambda view: int(((view[0, 0] > 128).any(dim=0)).sum())  # noqa: E731
    assert columns(turned) > 2 * columns(plain)
    again = augment(batch.clone(), dict(spec, rotate_deg=0), torch.Generator().manual_seed(0))
    assert torch.equal(plain, again)


def _one_step(run, steps_per_epoch: int = 2) -> dict:
    """One update of a TrainingRun's net on a fixed input, logged and checkpointed."""
    run.optimise(run.net(torch.ones(1, 2)).square().sum(), {"cosine": torch.tensor(0.5)})
    return run.record_and_save(steps_per_epoch)


def _run(recipe, work_dir, fresh: bool = False):
    """A TrainingRun of a two-weight net, started the way ``distill`` starts one."""
    return TrainingRun(recipe, torch.nn.Linear(2, 2), work_dir, 4, prepare_run(recipe, work_dir, fresh))


def _log_steps(work_dir) -> list:
    return [json.loads(line)["step"] for line in (work_dir / "train_log.jsonl").read_text().splitlines()]


def test_a_fresh_run_leaves_nothing_of_the_old_run_to_resume(tmp_path, capsys):
    """--fresh removes the old checkpoint at once: a fresh run stopped before its first checkpoint and rerun
    without --fresh starts over, not from the old run (whose log is gone)."""
    recipe, work_dir = tiny_recipe(tmp_path, "sface-student.yaml"), tmp_path / "run"
    work_dir.mkdir()
    _one_step(_run(recipe, work_dir))
    assert prepare_run(recipe, work_dir, fresh=False)["step"] == 1
    _run(recipe, work_dir, fresh=True)  # ... and stopped before a checkpoint
    assert not (work_dir / "checkpoint.pt").exists() and not (work_dir / "train_log.jsonl").exists()
    assert prepare_run(recipe, work_dir, fresh=False) is None
    rerun = _run(recipe, work_dir)
    assert rerun.step == 0 and not rerun.resumed and "resuming" not in capsys.readouterr().err


def test_resuming_checks_the_recipe_and_says_so(tmp_path, capsys):
    """A checkpoint resumes only under the recipe it was trained with (epochs included: the schedule spans them);
    a name, output, or checkpoint_every change is not a different training. Checkpoints from before the check
    resume as they did. Resuming is announced on stderr."""
    from biometrics.errors import BiometricsError

    recipe, work_dir = tiny_recipe(tmp_path, "sface-student.yaml"), tmp_path / "run"
    work_dir.mkdir()
    _one_step(_run(recipe, work_dir))
    for change, changed in (
        ({"student": dict(recipe.student, width=0.5)}, "student.width"),
        ({"epochs": 20}, "epochs"),
        ({"data": dict(recipe.data, limit=24)}, "data.limit"),
    ):
        other = Recipe.load(recipe.path)
        other.raw.update(change)
        with pytest.raises(BiometricsError) as refused:
            _run(other, work_dir)
        message = str(refused.value)
        assert message == (
            f"{work_dir} was trained with a different recipe (changed: {changed}); rerun with --fresh to start over"
        )
    same = Recipe.load(recipe.path)
    same.raw.update(name="renamed", checkpoint_every=7, output={"fp32": "a", "int8": "b"})
    same.raw["data"] = dict(same.raw["data"], root=str(tmp_path / "elsewhere"))
    capsys.readouterr()
    resumed = _run(same, work_dir)
    assert resumed.step == 1 and capsys.readouterr().err == f"resuming {work_dir} at step 1 of 4\n"

    state = torch.load(work_dir / "checkpoint.pt", weights_only=False)
    for key in ("recipe_fingerprint", "recipe_content"):
        del state[key]
    torch.save(state, work_dir / "checkpoint.pt")  # written before fingerprints: accepted
    widened = Recipe.load(recipe.path)
    widened.raw.update(epochs=20)
    assert _run(widened, work_dir).step == 1


def test_a_run_stopped_between_its_log_and_its_checkpoint_logs_each_step_once(tmp_path, monkeypatch):
    recipe, work_dir = tiny_recipe(tmp_path, "sface-student.yaml"), tmp_path / "run"
    work_dir.mkdir()
    run = _run(recipe, work_dir)
    _one_step(run)
    run.log_stretch(torch.device("cpu"), 4)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:
        patch.setattr(torch, "save", killed)
        with pytest.raises(KeyboardInterrupt):
            _one_step(run)  # step 2 is logged, then the process dies before its checkpoint is written
    assert _log_steps(work_dir) == [1, 1, 2]
    resumed = _run(recipe, work_dir)
    assert resumed.step == 1 and _log_steps(work_dir) == [1]  # as it was when the checkpoint was written
    _one_step(resumed)
    assert _log_steps(work_dir) == [1, 2]

    # A checkpoint from before the log's length was recorded: the records of later steps go.
    state = torch.load(work_dir / "checkpoint.pt", weights_only=False)
    del state["log_bytes"]
    torch.save(state, work_dir / "checkpoint.pt")
    with open(work_dir / "train_log.jsonl", "a") as log:
        log.write(json.dumps({"step": 3, "seconds": 1.0}) + "\n" + '{"step": 4, "sec')
    assert _run(recipe, work_dir).step == 2 and _log_steps(work_dir) == [1, 2]


def test_a_device_pytorch_cannot_use_is_refused_in_one_line(tmp_path):
    import warnings

    from click.testing import CliRunner

    from biometrics.cli.main import cli
    from biometrics.errors import BiometricsError
    from biometrics.training.distill import _on_device
    from biometrics.training.loop import training_device

    for name in ("mps", "xpu", "meta"):
        if name != "meta" and getattr(torch, name).is_available():
            continue
        with pytest.raises(BiometricsError) as refused:
            training_device(name)
        assert str(refused.value) == f"device '{name}': not available in this PyTorch build or on this machine"
    recipe = tiny_recipe(tmp_path, "sface-student.yaml")
    if not torch.backends.mps.is_available():
        result = CliRunner().invoke(cli, ["distill", str(recipe.path), "--device", "mps", "--no-progress"])
        assert result.exit_code == 2 and "device 'mps': not available" in result.output
        assert "unexpected" not in result.output
    crops = np.zeros((2, 4, 4, 3), np.uint8)
    crops.setflags(write=False)  # as the face cache's memory map is
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert _on_device(crops, torch.device("cpu")).shape == (2, 4, 4, 3)


def test_distill_resumes_only_its_own_recipe_and_says_so(tmp_path):
    """Through the CLI: resuming is announced on stderr with --no-progress; a changed recipe exits 2."""
    from click.testing import CliRunner

    from biometrics.cli.main import cli

    recipe = tiny_recipe(tmp_path, "sface-student.yaml", name="checked", loss={"cosine": 1.0})
    work = ["--work-dir", str(tmp_path / "run"), "--models-dir", str(tmp_path / "models"), "--no-progress"]
    run = lambda *args: CliRunner().invoke(cli, ["distill", str(recipe.path), *work, *args])  # noqa: E731
    first = run("--max-steps", "1")
    assert first.exit_code == 0 and "resuming" not in first.stderr, first.output
    second = run("--max-steps", "2")
    assert second.exit_code == 0, second.output
    assert second.stderr.splitlines()[0] == f"resuming {tmp_path / 'run'} at step 1 of 3"
    recipe.path.write_text(yaml.safe_dump(dict(recipe.raw, epochs=2)))
    refused = run("--max-steps", "3")
    assert refused.exit_code == 2 and refused.stderr == (
        f"error: {tmp_path / 'run'} was trained with a different recipe (changed: epochs); "
        "rerun with --fresh to start over\n"
    )
    assert run("--max-steps", "1", "--fresh").exit_code == 0


def test_ctrl_c_keeps_the_steps_taken_since_the_last_checkpoint(tmp_path, monkeypatch):
    from biometrics.training.distill import distill
    from biometrics.training.loop import load_checkpoint

    recipe = tiny_recipe(tmp_path, "sface-student.yaml", name="stopped", loss={"cosine": 1.0}, checkpoint_every=1000)
    optimise = TrainingRun.optimise

    def stop_at_step_two(run, *args, **kwargs):
        if run.step == 2:  # the user presses Ctrl-C during the third step
            raise KeyboardInterrupt
        optimise(run, *args, **kwargs)

    monkeypatch.setattr(TrainingRun, "optimise", stop_at_step_two)
    with pytest.raises(KeyboardInterrupt):
        distill(recipe, tmp_path / "run", tmp_path / "models", progress=False)
    assert load_checkpoint(tmp_path / "run" / "checkpoint.pt")["step"] == 2
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 2 and log[-1]["interrupted"] is True
