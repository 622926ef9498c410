"""The models shipped in models/: each loads with a verified checksum and its card tells the truth about it."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest

from biometrics.embedding import Embedder
from biometrics.evaluation.complexity import count_macs, count_parameters
from biometrics.evaluation.efficiency import read_cards
from biometrics.imaging import load_image
from biometrics.pipeline import FacePipeline
from biometrics.registry import ModelRegistry
from tests.conftest import ROOT, shared_file

REGISTRY = ModelRegistry([ROOT / "models"])
STUDENTS = [name for name in REGISTRY.names("embedding") if REGISTRY.card(name).data.get("teacher")]


@pytest.mark.parametrize("name", REGISTRY.names())
def test_every_model_resolves_and_has_a_complete_card(name):
    card = REGISTRY.card(name)
    if card.source.get("shared"):
        shared_file(card.source["shared"])  # skips without ../shared, fails on a wrong checksum
    elif card.source.get("attribute") and not REGISTRY.available(name):
        pytest.skip(f"{name}: optional package not installed ({card.how_to_obtain})")
    model = REGISTRY.resolve(name)  # verifies the SHA-256
    for key in ("name", "task", "architecture", "description", "origin", "licence", "input", "bench_input_shape"):
        assert key in model.card.data, f"{name}: card lacks {key}"
    assert model.card.name == name == model.card.folder.name
    trained_on = set((model.card.data.get("recipe") or {}).get("data", {}))
    if trained_on & {"celeba", "utkface"}:  # their terms allow non-commercial research only: the card must say so
        assert "non-commercial research use only" in model.card.data["licence_note"]


@pytest.mark.parametrize("name", STUDENTS)
def test_student_cards_state_size_and_split_truthfully(name):
    card = REGISTRY.card(name)
    graph = onnx.load(str(card.folder / card.source["file"]))
    assert card.data["size"]["parameters"] == count_parameters(graph) <= 1_000_000
    assert card.data["size"]["macs"] == count_macs(graph, {"data": [1, 3, 112, 112]}) <= 250_000_000
    assert card.data["size"]["file_size_bytes"] == (card.folder / card.source["file"]).stat().st_size
    split = card.data["data_split"]
    first, last = (int(v) for v in split["report_folds"].split("-"))
    assert split["lfw_excluded_folds"] == list(range(first, last + 1))  # never trained on reported people
    log = [json.loads(line) for line in (card.folder / "train_log.jsonl").read_text().splitlines()]
    assert log[-1]["holdout"] == card.data["training"]["final_holdout"]


MEASURED_LFW = [
    (name, REGISTRY.card(name).data["measured"]["lfw"])
    for name in REGISTRY.names()
    if "lfw" in REGISTRY.card(name).data.get("measured", {})
]
MEASURED_EFFICIENCY = [
    (name, REGISTRY.card(name).data["measured"]["efficiency"])
    for name in REGISTRY.names()
    if "efficiency" in REGISTRY.card(name).data.get("measured", {})
]


@pytest.mark.parametrize(("name", "measured"), MEASURED_LFW, ids=[name for name, _ in MEASURED_LFW])
def test_a_cards_lfw_numbers_are_its_reports(name, measured):
    """A card's accuracy is the report it names (rounded), for the pipeline and folds it names."""
    result = json.loads((ROOT / measured["report"]).read_text())["results"][measured["pipeline"]]
    summary = result["summary"]
    assert name in measured["pipeline"].split(" + ")
    assert f"--out {measured['report'].removesuffix('/report.json')}" in measured["command"]
    assert measured["pairs"] == summary["pairs"]
    assert measured["accuracy_mean"] == pytest.approx(summary["accuracy_mean"], abs=5e-5)
    assert measured["accuracy_std"] == pytest.approx(summary["accuracy_std"], abs=5e-5)
    assert measured["auc"] == pytest.approx(summary["auc"], abs=5e-6)
    assert measured["eer"] == pytest.approx(summary["eer"], abs=5e-5)
    assert measured["tar_at_far_1e-3"] == pytest.approx(summary["tar_at_far"]["1e-3"]["tar"], abs=5e-5)
    assert measured["detection_failures"] == result["detection_failures"]["count"]


CALIBRATED = [name for name in REGISTRY.names("embedding") if "threshold" in REGISTRY.card(name).data]


@pytest.mark.parametrize("name", CALIBRATED)
def test_a_cards_thresholds_are_its_calibration_on_people_it_is_not_reported_on(name):
    """The 1:1 threshold and the stricter ones a gallery's size calls for (down to FMR 1e-6) are the report's
    (rounded); a student's are set on the people of its training folds, never on those it is reported on."""
    block = REGISTRY.card(name).data["threshold"]
    report = json.loads((ROOT / block["report"]).read_text())
    (result,) = [run for label, run in report["results"].items() if name in label.split(" + ")]
    thresholds = result["calibration"]["thresholds"]
    assert block["value"] == pytest.approx(thresholds[f"{block['fmr']:g}"], abs=5e-5)
    stricter = {rate: value for rate, value in thresholds.items() if float(rate) < block["fmr"]}
    assert block["by_fmr"] == pytest.approx(stricter, abs=5e-5) and "1e-06" in block["by_fmr"]
    if split := REGISTRY.card(name).data.get("data_split"):  # ours: calibrated on its training folds' people
        first, last = (int(fold) for fold in split["report_folds"].split("-"))
        assert not set(result["folds"]) & set(range(first, last + 1))
    calibration = Embedder(REGISTRY.resolve(name), threads=1).false_match_thresholds
    assert calibration[block["fmr"]] == block["value"] and min(calibration) == 1e-6


@pytest.mark.parametrize(("name", "measured"), MEASURED_EFFICIENCY, ids=[name for name, _ in MEASURED_EFFICIENCY])
def test_a_cards_efficiency_numbers_are_its_reports(name, measured):
    """A card's size and latency are its bench report's, and the size is the shipped file's."""
    (bench,) = [card for card in read_cards(ROOT / measured["report"]) if card["name"] == name]
    one_thread = next(run for run in bench["runs"] if run["threads"] == 1)["latency_batch1"]
    assert measured["latency_ms_batch1_1thread"]["p50_ms"] == pytest.approx(one_thread["p50_ms"], abs=5e-5)
    assert measured["latency_ms_batch1_1thread"]["p95_ms"] == pytest.approx(one_thread["p95_ms"], abs=5e-5)
    assert (measured["parameters"], measured["macs"]) == (bench["parameters"], bench["macs"])
    assert measured["file_size_bytes"] == bench["file_size_bytes"] == REGISTRY.resolve(name).source_size


def test_int8_student_is_small(request):
    if "sface-student" not in STUDENTS:
        pytest.skip("no sface-student in models/")
    card = REGISTRY.card("sface-student")
    assert card.data["precision"] == "int8" and card.data["size"]["file_size_bytes"] <= 1_500_000


@pytest.mark.parametrize("name", STUDENTS)
def test_students_tell_people_apart(name, sample):
    """The same person is more similar than two different people, with each student."""
    pipeline = FacePipeline(embedder=name, registry=REGISTRY, threshold=0.0, threads=1)
    embed = lambda photo: pipeline.embed_one(load_image(sample(photo)))[0].embedding  # noqa: E731
    obama, obama2, biden = embed("obama.jpg"), embed("obama2.jpg"), embed("biden.jpg")
    # The first student separates them by ~0.1 (the teacher by ~0.6): tighten as the students improve.
    assert float(obama @ obama2) > float(obama @ biden) + 0.05
    assert isinstance(Embedder(REGISTRY.resolve(name), threads=1).threshold, float | None)
    assert np.isclose(np.linalg.norm(obama), 1.0, atol=1e-5)
