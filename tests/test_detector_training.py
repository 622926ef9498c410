"""Detector distillation: pseudo-label fusion, scene composition, target assignment, and a smoke run that
trains a tiny student for a few steps and exports FP32 + INT8 ONNX files the runtime's YuNet decoder runs."""

from __future__ import annotations

import json

import numpy as np
import pytest
import yaml

torch = pytest.importorskip("torch", reason="training needs the train extra (pip install -e '.[train]')")

from biometrics.detection import YuNetDetector  # noqa: E402
from biometrics.detection.fusion import fuse  # noqa: E402
from biometrics.face import Face  # noqa: E402
from biometrics.registry import ModelRegistry  # noqa: E402
from biometrics.training.detector_loss import build_targets, decode_boxes, level_of  # noqa: E402
from biometrics.training.detector_student import DetectorConfig, FaceDetectorNet, output_names  # noqa: E402
from biometrics.training.pseudo_labels import PseudoLabels  # noqa: E402
from biometrics.training.scenes import Scene, SceneSpec, compose_scene, flip_scene  # noqa: E402
from tests.conftest import ROOT, SHARED, shared_file  # noqa: E402


def _face(box, score, landmarks=True):
    box = np.asarray(box, np.float32)
    points = np.tile(box[:2], (5, 1)) + 1 if landmarks else None
    return Face(box, points, score)


def test_fusion_averages_agreeing_teachers_and_discounts_lonely_faces():
    yunet = [_face([10, 10, 50, 50], 0.9), _face([100, 100, 120, 120], 0.6)]
    retina = [_face([12, 10, 52, 50], 0.9)]
    boxes_only = [_face([11, 10, 51, 50], 0.6, landmarks=False)]
    fused = fuse([yunet, retina, boxes_only])
    assert [f.votes for f in fused] == [3, 1]
    np.testing.assert_allclose(fused[0].box, [11.0, 10, 51.0, 50], atol=0.2)
    assert fused[0].score == pytest.approx((0.9 + 0.9 + 0.6) / 3)
    assert fused[1].score == pytest.approx(0.6 / 3)  # one teacher of three: a weak label
    assert fused[0].landmarks.shape == (5, 2)


def test_flip_mirrors_boxes_and_swaps_landmark_sides():
    landmarks = np.array([[[30, 40], [50, 40], [40, 50], [32, 60], [48, 60]]], np.float32)
    scene = Scene(np.zeros((100, 200, 3), np.uint8), np.array([[20, 30, 60, 70]], np.float32), landmarks, np.ones(1))
    flipped = flip_scene(scene)
    np.testing.assert_allclose(flipped.boxes, [[140, 30, 180, 70]])
    # The eye that was on the image's right (x=50) is now on its left (x=150) and comes first again.
    np.testing.assert_allclose(flipped.landmarks[0, :, 0], [150, 170, 160, 152, 168])
    np.testing.assert_allclose(flip_scene(flipped).landmarks, landmarks)


def test_targets_put_each_face_on_the_level_of_its_size_and_decode_back():
    boxes = np.array([[100, 100, 132, 132], [0, 0, 128, 128]], np.float32)  # 32 px -> stride 8, 128 px -> 32
    landmarks = np.full((2, 5, 2), np.nan, np.float32)
    targets = build_targets(boxes, landmarks, np.array([1.0, 0.5], np.float32), 320, 320)
    assert list(level_of(np.array([12.0, 32, 64, 128, 400]))) == [0, 0, 1, 2, 2]
    assert len(targets[8]["cells"]) == 9 and len(targets[16]["cells"]) == 0 and len(targets[32]["cells"]) >= 1
    assert set(targets[32]["scores"]) == {0.5}
    # The encoding the loss regresses decodes (as YuNet's decoder does) to the label box.
    level = targets[8]
    grid = torch.from_numpy(level["grid"])
    label = torch.from_numpy(level["boxes"])
    encoded = torch.cat([(label[:, :2] + label[:, 2:]) / 2 / 8 - grid, torch.log((label[:, 2:] - label[:, :2]) / 8)], 1)
    torch.testing.assert_close(decode_boxes(encoded, grid, 8), label)


def test_composed_scenes_keep_labels_on_the_faces():
    path = shared_file("data/samples/two_people.jpg")
    labels = PseudoLabels(
        [path],
        np.zeros(2, np.int64),
        np.array([[60, 40, 100, 90], [200, 50, 240, 100]], np.float32),
        np.full((2, 5, 2), np.nan, np.float32),
        np.array([0.9, 0.2], np.float32),
        np.array([2, 1]),
    )
    rng = np.random.default_rng(0)
    hard = dict(rotate=20, occlude=0.5, degrade=0.5, grayscale=0.5, photo_background=0.5, clutter=5)
    for spec in [SceneSpec(size=128, grid=(1, 2))] * 20 + [SceneSpec(size=128, grid=(1, 2), **hard)] * 20:
        scene = compose_scene(labels, rng, spec)
        assert scene.image.shape == (128, 128, 3) and scene.image.dtype == np.uint8
        assert np.all(scene.boxes >= 0) and np.all(scene.boxes <= 128)
        assert np.all(scene.boxes[:, 2:] > scene.boxes[:, :2])
        assert np.all(scene.scores >= 0.3)  # the weak (one-teacher, 0.2) face is never a label


def test_scene_workers_deliver_each_steps_scenes_in_step_order():
    """On a GPU several workers compose scenes; the loader must still hand step k the scenes of (seed, k), as one
    worker (or a resumed run) does."""
    from biometrics.training.detector_distill import SceneBatches, _unchanged

    path = shared_file("data/samples/two_people.jpg")
    labels = PseudoLabels(
        [path],
        np.zeros(1, np.int64),
        np.array([[60, 40, 100, 90]], np.float32),
        np.full((1, 5, 2), np.nan, np.float32),
        np.array([0.9], np.float32),
        np.array([2]),
    )
    batches = SceneBatches(labels, SceneSpec(size=64, grid=(1, 2)), batch_size=2, seed=3, start=5, stop=10)
    in_process = [images for images, _ in batches]
    loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=2, collate_fn=_unchanged)
    from_workers = [images for images, _ in loader]
    assert len(from_workers) == 5
    for expected, got in zip(in_process, from_workers, strict=True):
        torch.testing.assert_close(got, expected)


def test_student_detector_is_small_and_any_size():
    for head, downsample in (("full", "maxpool"), ("shared", "depthwise"), ("separable", "maxpool")):
        config = DetectorConfig(16, ((16,), (32, 32), (32,), (32,), (32,)), 32, head, downsample=downsample)
        net = FaceDetectorNet(config).eval()
        assert sum(p.numel() for p in net.parameters()) <= 150_000
        with torch.no_grad():
            outputs = dict(zip(output_names(), net(torch.zeros(1, 3, 96, 160)), strict=True))
        assert outputs["cls_8"].shape == (1, 12 * 20, 1) and outputs["kps_32"].shape == (1, 3 * 5, 10)
        assert outputs["obj_16"].min() > 0 and outputs["obj_16"].max() < 1  # scores after the sigmoid
    with pytest.raises(ValueError, match="neck"):
        DetectorConfig(units=((16,), (32,), (64,), (32,), (32,)), neck=32)


SCRATCH_STUDENT = {"stem": 8, "units": [[], [16], [16], [16], [16]], "neck": 16, "head": "shared"}


@pytest.mark.parametrize(
    ("recipe_file", "student", "loss_term", "faces_term"),
    [
        ("yunet-student.yaml", SCRATCH_STUDENT, "loss_cls", "loss_positives"),
        ("yunet-student-v3.yaml", None, "loss_hint", "loss_stages"),
        ("yunet-student-v4-front.yaml", None, "loss_stages", "loss_stages"),
        ("yunet-student-v6.yaml", None, "loss_hint", "loss_stages"),
    ],
    ids=["from-scratch", "pruned-from-yunet", "yunet-with-a-new-front", "one-unit-stages-all-int8"],
)
def test_detector_distill_smoke_trains_exports_and_runs(tmp_path, recipe_file, student, loss_term, faces_term):
    """A student, a handful of LFW images labelled by YuNet, a few steps: ONNX files YuNetDetector runs. The
    pruned student learns YuNet's dense outputs instead of the labels; YuNet with a new front learns only
    YuNet's stage outputs."""
    shared_file("data/lfw/pairs.txt")
    recipe = yaml.safe_load((ROOT / "pipelines" / recipe_file).read_text())
    recipe.update(
        name="detector-smoke",
        teacher=["yunet-teacher"],
        epochs=1,
        batch_size=4,
        checkpoint_every=2,
        data={"root": str(SHARED / "data"), "lfw": {"exclude_folds": list(range(2, 11))}, "limit": 16},
        student=student or recipe["student"],
        augmentation=dict(recipe["augmentation"], size=128),
        quantization={"calibration_scenes": 4, "per_channel": True},
        output={"fp32": "det-smoke-fp32", "int8": "det-smoke-int8"},
    )
    path = tmp_path / "smoke.yaml"
    path.write_text(yaml.safe_dump(recipe))
    from click.testing import CliRunner

    from biometrics.cli.main import cli

    args = ["distill", str(path), "--work-dir", str(tmp_path / "run"), "--models-dir", str(tmp_path / "models")]
    result = CliRunner().invoke(cli, [*args, "--threads", "2", "--no-progress"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["finished"] is True
    log = [json.loads(line) for line in (tmp_path / "run" / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["step"] == 4 and np.isfinite(log[-1][loss_term]) and log[-1][faces_term] > 0
    trained = torch.load(tmp_path / "run" / "checkpoint.pt")["model"]
    yunet = _yunet_and_photo()[1].state_dict()
    if "trainable" in recipe["student"].get("init", {}):  # only the front trained: the rest is still YuNet's
        for name in ("stages.2.1.0.weight", "lateral.0.0.bias", "heads.kps.0.1.weight"):
            torch.testing.assert_close(trained[name], yunet[name])
    registry = ModelRegistry([tmp_path / "models"], cache=tmp_path / "cache")
    image = np.zeros((200, 300, 3), np.uint8)
    for name, precision in (("det-smoke-fp32", "fp32"), ("det-smoke-int8", "int8")):
        model = registry.resolve(name, task="detection")
        assert model.card.data["precision"] == precision and model.card.architecture == "yunet"
        assert model.card.data["teacher"] == ["yunet-teacher"]
        faces = YuNetDetector(model, threads=1, score_threshold=0.0).detect(image)
        assert all(face.landmarks.shape == (5, 2) for face in faces)


def test_pseudo_labelling_resumes_after_an_interruption(tmp_path, monkeypatch):
    """A killed labelling run keeps its finished chunks: the rerun labels only what is missing."""
    from biometrics.training import pseudo_labels
    from biometrics.training.faces import FaceSource

    paths = [
        shared_file(f"data/samples/{name}.jpg")
        for name in ("obama", "obama2", "obama3", "biden", "biden2", "selfie", "two_people")
    ]
    sources = [FaceSource(path, "lfw", None) for path in paths]
    seen = []

    def finder(image):
        if len(seen) == 4:
            raise KeyboardInterrupt
        seen.append(image.shape)
        return [_face([10, 20, 60, 80], 0.9)]

    monkeypatch.setattr(pseudo_labels, "teacher_detectors", lambda names: [finder])
    with pytest.raises(KeyboardInterrupt):  # killed in the second chunk of three
        pseudo_labels.label_images(sources, ["fake"], cache=tmp_path, chunk=3, progress=False)
    monkeypatch.setattr(pseudo_labels, "teacher_detectors", lambda names: [lambda image: [_face([5, 5, 50, 50], 0.8)]])
    labels = pseudo_labels.label_images(sources, ["fake"], cache=tmp_path, chunk=3, progress=False)
    assert labels.paths == paths
    # Chunk one came from the interrupted run's cache, the rest from the rerun.
    np.testing.assert_allclose(labels.boxes[:3], [[10, 20, 60, 80]] * 3)
    np.testing.assert_allclose(labels.boxes[3:], [[5, 5, 50, 50]] * 4)
    assert list(labels.image_index) == list(range(7))
    assert labels.faces_of(5) == slice(5, 6)
    assert pseudo_labels.label_images(sources, ["fake"], cache=tmp_path, progress=False).paths == paths


def test_clutter_draws_hard_negatives_but_never_over_a_face():
    from biometrics.training.scenes import _draw_clutter

    rng = np.random.default_rng(0)
    faces = [np.array([40, 40, 100, 110], np.float32), np.array([200, 150, 230, 185], np.float32)]
    drawn = 0
    for _ in range(20):
        canvas = rng.integers(0, 256, (320, 320, 3), dtype=np.uint8)
        before = canvas.copy()
        _draw_clutter(canvas, faces, rng, count=30)
        for x1, y1, x2, y2 in (face.astype(int) for face in faces):
            np.testing.assert_array_equal(canvas[y1:y2, x1:x2], before[y1:y2, x1:x2])
        drawn += (canvas != before).any()
    assert drawn >= 15  # a scene draws 0..count distractors, some of them skipped for touching a face


def test_rotation_moves_landmarks_with_the_pixels_and_keeps_the_box_tight():
    from biometrics.training.scenes import _rotate

    image = np.zeros((200, 200, 3), np.uint8)
    points = np.array([[[80, 90], [120, 90], [100, 110], [85, 130], [115, 130]]], np.float32)
    for x, y in points[0].astype(int):
        image[y - 1 : y + 2, x - 1 : x + 2] = 255
    box = np.array([[70, 70, 130, 150]], np.float32)
    rotated, boxes, moved = _rotate(image, box, points, 30.0, box[0])
    for x, y in moved[0]:
        assert rotated[int(round(y)) - 1 : int(round(y)) + 2, int(round(x)) - 1 : int(round(x)) + 2].max() > 100
    centre = (box[0, :2] + box[0, 2:]) / 2
    np.testing.assert_allclose((boxes[0, :2] + boxes[0, 2:]) / 2, centre, atol=1e-3)  # rotated about its centre
    width, height = boxes[0, 2:] - boxes[0, :2]
    assert 60 < width < 60 * np.cos(np.pi / 6) + 80 * np.sin(np.pi / 6)  # grows, but less than the corners'
    assert 80 * np.cos(np.pi / 6) < height < 80


def _yunet_and_photo():
    from biometrics.imaging import load_image
    from biometrics.training.detector_teacher import yunet_to_torch

    model = ModelRegistry().resolve("yunet-teacher", task="detection")
    photo = load_image(shared_file("data/samples/biden.jpg"))[:256, :320].astype(np.float32)
    return model, yunet_to_torch(model.onnx_bytes), torch.from_numpy(photo.transpose(2, 0, 1)[None].copy())


def test_yunet_in_pytorch_computes_what_onnx_runtime_computes():
    model, teacher, image = _yunet_and_photo()
    expected = model.session().run(None, {"input": image.numpy()})
    names = [output.name for output in model.session().get_outputs()]
    with torch.no_grad():
        ours = dict(zip(output_names(), teacher(image), strict=True))
    for name, value in zip(names, expected, strict=True):
        np.testing.assert_allclose(ours[name].numpy(), value, atol=1e-4)


YUNET_UNITS = [[0], [1, 2, 3, 4], [5, 6], [7, 8], [9, 10]]


def test_pruning_keeps_the_teacher_at_full_width_and_a_student_near_it_after_dense_matching():
    from biometrics.training.detector_distill import DenseTeacher
    from biometrics.training.detector_teacher import prune_detector

    _, teacher, image = _yunet_and_photo()
    copy = FaceDetectorNet(DetectorConfig())
    kept = prune_detector(teacher, copy, YUNET_UNITS, image)
    assert kept.neck.tolist() == list(range(64)) and [len(k) for k in kept.stages] == [16, 64, 64, 64, 64]
    assert kept.stage_sources == [0, 4, 6, 8, 10]  # the last unit of each of YuNet's stages
    with torch.no_grad():
        for ours, theirs in zip(copy.eval()(image), teacher(image), strict=True):
            torch.testing.assert_close(ours, theirs)
        loss, terms = DenseTeacher(teacher, kept).loss(copy, image, {"stages": 1.0})
    assert terms["score"] == pytest.approx(0, abs=1e-3) and terms["box"] == 0
    assert terms["hint"] == 0 and terms["stages"] == 0

    small = DetectorConfig(8, ((), (16, 32), (32, 32), (32,), (32,)), 32, head="shared", downsample="depthwise")
    student = FaceDetectorNet(small)
    kept = prune_detector(teacher, student, [[], [2, 4], [5, 6], [8], [10]], image)
    assert len(kept.neck) == 32 and sum(p.numel() for p in student.parameters()) < 20_000
    assert kept.stage_sources == [-1, 4, 6, 8, 10]  # no unit at stride 2: the stem's output
    with pytest.raises(ValueError, match="change the width"):  # unit 4 (32 -> 64) cannot be left out
        prune_detector(teacher, FaceDetectorNet(small), [[], [2, 3], [5, 6], [8], [10]], image)


def test_a_new_stride_4_front_is_all_that_differs_from_yunet():
    """With a space-to-depth stem only the front is new: given YuNet's stride-4 features, it is YuNet."""
    from torch import nn

    from biometrics.training.detector_teacher import prune_detector

    _, teacher, image = _yunet_and_photo()
    student = FaceDetectorNet(DetectorConfig(stem=32, stem_stride=4))
    assert student.backbone(image)[0].shape[-2:] == (64, 80)  # stride 4 after the first stage
    prune_detector(teacher, student, YUNET_UNITS, image)
    student.stages[0] = nn.Sequential(*teacher.stages[0], teacher.stages[1][0])  # YuNet's front, max-pool included
    with torch.no_grad():
        for ours, theirs in zip(student.eval()(image), teacher(image), strict=True):
            torch.testing.assert_close(ours, theirs)
