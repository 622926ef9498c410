"""WIDER FACE scoring: hand-worked cases of the official protocol, the real ground truth, a real detector."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from biometrics.cli.main import cli
from biometrics.errors import DataError
from biometrics.evaluation.report import run_metadata
from biometrics.evaluation.wider import (
    GroundTruth,
    evaluate_predictions,
    evaluate_wider,
    image_pr_counts,
    locate_dataset,
    match_image,
    normalise_scores,
    pixel_iou,
    read_ground_truth,
    score_thresholds,
    voc_ap,
    write_wider_report,
)
from biometrics.registry import ModelRegistry
from tests.conftest import shared_file


@pytest.fixture(scope="module")
def wider_dir():
    """../shared/data/wider, its archive checked once for the module."""
    return shared_file("data/wider/wider_val488.tgz").parent


def _truth(path, boxes, kept):
    """Ground truth whose faces at indices ``kept`` count in every difficulty; the others are ignored."""
    mask = np.isin(np.arange(len(boxes)), kept)
    return GroundTruth(
        path, np.asarray(boxes, dtype=np.float64).reshape(-1, 4), dict.fromkeys(("easy", "medium", "hard"), mask)
    )


def _pred(*rows):
    return np.asarray(rows, dtype=np.float64).reshape(-1, 5)


def test_pixel_iou_counts_inclusive_pixels():
    box = np.array([[0.0, 0.0, 9.0, 9.0]])
    assert pixel_iou(box, box)[0, 0] == 1.0
    assert pixel_iou(box, np.array([[5.0, 0.0, 14.0, 9.0]]))[0, 0] == pytest.approx(50 / 150)
    assert pixel_iou(box, np.array([[20.0, 20.0, 29.0, 29.0]]))[0, 0] == 0.0


def test_match_image_duplicate_is_a_proposal_and_ignored_face_is_not():
    gt = np.array([[0, 0, 9, 9], [200, 200, 9, 9]], dtype=np.float64)  # the second face is ignored
    keep = np.array([True, False])
    pred = _pred([0, 0, 9, 9, 0.9], [1, 0, 10, 9, 0.8], [200, 200, 209, 209, 0.7], [500, 500, 509, 509, 0.6])
    found, proposal = match_image(pred, gt, keep)
    assert found.tolist() == [1, 1, 1, 1]
    assert proposal.tolist() == [True, True, False, True]


def test_hand_worked_ap_two_images_with_ignored_duplicate_and_missed_faces():
    truths = [
        _truth("a", [[0, 0, 9, 9], [100, 100, 9, 9], [200, 200, 9, 9]], kept=[0, 1]),
        _truth("b", [[0, 0, 9, 9]], kept=[0]),
        _truth("c", [[0, 0, 9, 9]], kept=[0]),  # never detected: still counts towards recall
    ]
    predictions = {
        "a": _pred(
            [0, 0, 9, 9, 0.9],  # TP
            [0, 0, 9, 9, 0.8],  # duplicate of a found face: FP
            [200, 200, 209, 209, 0.7],  # on an ignored face: neither TP nor FP
            [500, 500, 509, 509, 0.6],  # background: FP
        ),
        "b": _pred([0, 0, 9, 9, 0.5]),  # TP, lowest score: normalised to 0, counted at the last threshold only
        "c": _pred(),
    }
    curves = evaluate_predictions(predictions, truths)
    # Ranked: TP, FP, (ignored), FP, TP over 4 faces -> (P, R) = (1, 1/4) ... (2/4, 2/4): AP = 1/4 * 1 + 1/4 * 1/2.
    assert curves["hard"].ap == pytest.approx(0.375)
    assert curves["hard"].faces == 4
    assert curves["hard"].recall[0] == 0.25 and curves["hard"].precision[0] == 1.0
    assert curves["hard"].recall[-1] == 0.5 and curves["hard"].precision[-1] == 0.5


def test_difficulty_without_faces_has_no_ap():
    truths = [
        GroundTruth("a", np.array([[0.0, 0.0, 9.0, 9.0]]), dict.fromkeys(("easy", "medium", "hard"), np.zeros(1, bool)))
    ]
    curves = evaluate_predictions({"a": _pred([0, 0, 9, 9, 0.9])}, truths)
    assert curves["easy"].ap is None and curves["easy"].faces == 0


def test_scores_are_normalised_over_the_set_like_the_official_tool():
    low = normalise_scores({"a": _pred([0, 0, 1, 1, 0.3]), "b": _pred([0, 0, 1, 1, 0.6]), "c": _pred()})
    assert low["a"][0, 4] == pytest.approx(0.0) and low["b"][0, 4] == pytest.approx(1.0)
    # The official minimum starts at 1: scores above 1 (logits) are not stretched down to 0.
    logits = normalise_scores({"a": _pred([0, 0, 1, 1, 2.0], [0, 0, 1, 1, 5.0])})
    assert logits["a"][:, 4].tolist() == [0.25, 1.0]


def test_pr_counts_at_1000_thresholds():
    thresholds = score_thresholds()
    assert len(thresholds) == 1000 and thresholds[0] == 0.999 and thresholds[499] == 0.5 and thresholds[-1] == 0.0
    counts = image_pr_counts(
        np.array([1.0, 0.5, 0.0005]), np.array([1, 1, 2]), np.array([True, False, True]), thresholds
    )
    assert counts[0].tolist() == [1, 1]  # threshold 0.999: the top prediction only
    assert counts[498].tolist() == [1, 1]  # 0.501
    assert counts[499].tolist() == [1, 1]  # 0.5: the ignored prediction adds no proposal
    assert counts[998].tolist() == [1, 1]  # 0.001
    assert counts[999].tolist() == [2, 2]  # 0.0


def test_voc_ap_takes_the_precision_envelope():
    assert voc_ap(np.array([0.5, 0.5, 1.0]), np.array([1.0, 0.5, 0.5])) == pytest.approx(0.75)
    assert voc_ap(np.array([0.25, 0.5]), np.array([0.5, 1.0])) == pytest.approx(0.5)


def test_real_ground_truth_counts(wider_dir):
    truths = read_ground_truth(locate_dataset(wider_dir) / "gt_subset.json")
    assert len(truths) == 488
    assert sum(len(t.boxes) for t in truths) == 4960
    assert {name: sum(int(t.keep[name].sum()) for t in truths) for name in ("easy", "medium", "hard")} == {
        "easy": 1004,
        "medium": 1768,
        "hard": 4013,
    }


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ("not json", "not a WIDER ground-truth file"),
        ("{}", "non-empty object"),
        ('{"a.jpg": {"boxes_xywh": [[0, 0, 5, 5]]}}', "malformed entry"),
        (
            '{"a.jpg": {"boxes_xywh": [[0, 0, 5, 5]], "invalid": [0], "easy_keep_1based": [2], '
            '"medium_keep_1based": [], "hard_keep_1based": []}}',
            "outside 1..1",
        ),
    ],
)
def test_malformed_ground_truth(tmp_path, content, reason):
    path = tmp_path / "gt_subset.json"
    path.write_text(content)
    with pytest.raises(DataError, match=reason):
        read_ground_truth(path)


def test_yunet_end_to_end_on_a_few_images(wider_dir, tmp_path):
    model = ModelRegistry().resolve("yunet-teacher", task="detection")
    result = evaluate_wider(model, wider_dir, threads=2, limit=10, progress=False)
    assert result.images == 10 and result.detections > 0
    aps = {name: curve.ap for name, curve in result.curves.items()}
    # Full subset: 89/85/78 (README); on 10 images easy and medium are near-perfect, hard lower.
    assert aps["easy"] > 0.9 and aps["medium"] > 0.9 and 0.6 < aps["hard"] < aps["medium"], aps
    assert all(0 < ms < 1000 for ms in result.latency_ms.values())
    files = write_wider_report(tmp_path, [result], run_metadata([model], 2))
    report = json.loads(files["json"].read_text())
    assert report["results"]["yunet-teacher"]["images"] == 10
    assert report["results"]["yunet-teacher"]["size"] == {
        "parameters": 53092,
        "macs": 258_168_000,
        "macs_input": "640x480",
        "file_size_bytes": 122489,
    }
    markdown = (tmp_path / "report.md").read_text()
    assert "| MACs (M) |" in markdown and "| 258 @640x480 |" in markdown
    assert "| yunet-teacher |" in files["md"].read_text()
    assert report["results"]["yunet-teacher"]["settings"]["input"] == "the image's size (after max_side)"
    assert all((tmp_path / f"pr_{name}.png").stat().st_size > 0 for name in ("easy", "medium", "hard"))


def test_a_detector_whose_card_has_no_bench_input_shape_is_counted_at_the_frame_bench_times(wider_dir, tmp_path):
    """`evaluate wider` and `bench` agree on a card without bench_input_shape: MACs at a 640x480 frame, not n/a."""
    registry = ModelRegistry()
    teacher = registry.resolve("yunet-teacher", task="detection")
    card = {key: value for key, value in teacher.card.data.items() if key not in ("bench_input_shape", "source")}
    (tmp_path / "mine.onnx").write_bytes(teacher.source_path.read_bytes())
    (tmp_path / "mine.json").write_text(json.dumps(card | {"name": "mine"}))
    mine = registry.resolve(tmp_path / "mine.onnx", task="detection")
    assert "bench_input_shape" not in mine.card.data and mine.card.bench_input_shape == [1, 3, 480, 640]
    result = evaluate_wider(mine, wider_dir, threads=1, limit=1, progress=False)
    assert (result.size["macs"], result.size["macs_input"]) == (258_168_000, "640x480")  # yunet-teacher's, below


def test_cli_missing_data_folder_is_one_line_exit_2(tmp_path):
    result = CliRunner().invoke(cli, ["evaluate", "wider", "--data", str(tmp_path / "nowhere"), "--out", str(tmp_path)])
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and "WIDER data folder not found" in lines[0]


def test_every_detector_is_checked_before_any_is_scored(wider_dir, tmp_path):
    """A broken detector named last failed after the others had been scored, their minutes lost."""
    from biometrics.registry import ModelRegistry as Registry

    embedder = Registry().resolve("sface-student").source_path
    (tmp_path / "broken.onnx").write_bytes(embedder.read_bytes())
    (tmp_path / "broken.json").write_text(json.dumps({"name": "broken", "task": "detection", "architecture": "yunet"}))
    args = [
        "evaluate",
        "wider",
        "--data",
        wider_dir,
        "--detector",
        "yunet-teacher",
        "--detector",
        tmp_path / "broken.onnx",
    ]
    result = CliRunner().invoke(cli, [*map(str, args), "--limit", "2", "--no-progress", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "not a YuNetDetector network" in result.stderr, result.output
    assert "yunet-teacher: AP" not in result.stdout
