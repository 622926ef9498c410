from __future__ import annotations

import csv
import io
import json
import runpy
import sys
import tarfile

import cv2
import numpy as np
import pytest

from biometrics.errors import DataError
from biometrics.evaluation.datasets import unpack_once
from biometrics.evaluation.lfw import (
    EmbeddedImages,
    Pair,
    images_in_folds,
    impostor_calibration,
    parse_folds,
    people_in_folds,
    read_pairs,
)
from biometrics.evaluation.report import run_metadata, write_verification_report
from biometrics.imaging import load_image
from biometrics.runtime import int8_instructions, int8_text
from tests.conftest import ROOT, shared_file


def test_official_pairs_file_has_ten_identity_disjoint_folds():
    pairs = read_pairs(shared_file("data/lfw/pairs.txt"))
    assert len(pairs) == 6000
    assert sum(pair.same for pair in pairs) == 3000
    people = {
        fold: {p.name_a for p in pairs if p.fold == fold} | {p.name_b for p in pairs if p.fold == fold}
        for fold in range(1, 11)
    }
    for fold in range(1, 11):
        assert all(not people[fold] & people[other] for other in range(fold + 1, 11))
    assert [pair.same for pair in pairs[:600]] == [True] * 300 + [False] * 300
    assert pairs[0].images[0].endswith("_0001.jpg") or pairs[0].images[0].count("_0") == 1


def test_images_of_report_folds_are_each_named_once_and_show_only_their_people():
    pairs = read_pairs(shared_file("data/lfw/pairs.txt"))
    keys = images_in_folds(pairs, [6, 7, 8, 9, 10])
    assert keys == sorted(set(keys))
    assert {key for pair in pairs if pair.fold >= 6 for key in pair.images} == set(keys)
    assert {key.split("/")[0] for key in keys} == people_in_folds(pairs, [6, 7, 8, 9, 10])
    assert not set(keys) & set(images_in_folds(pairs, [1, 2, 3, 4, 5]))


def test_parse_folds():
    assert parse_folds("6-10") == [6, 7, 8, 9, 10]
    assert parse_folds("1,3,5-6") == [1, 3, 5, 6]
    for bad in ("0-3", "11", "a-b", "6-99999999999"):  # the last checked before its range is made
        with pytest.raises(DataError):
            parse_folds(bad)
    with pytest.raises(DataError, match="from low to high"):
        parse_folds("10-9")


def test_a_report_on_the_students_training_people_says_so():
    """The student trained on the people of folds 1-5 (its card): a number on those folds is not held out."""
    from biometrics.evaluation.lfw import training_overlap
    from biometrics.registry import ModelRegistry

    registry = ModelRegistry()
    student, teacher = registry.card("sface-student"), registry.card("sface-teacher")
    assert training_overlap([teacher, student], [6, 7, 8, 9, 10]) == []
    (caveat,) = training_overlap([teacher, student], [4, 5, 6])
    assert caveat.startswith("sface-student trained on the people of folds 4, 5;")
    # a detector student says it in its recipe's data block (its card has no data_split.datasets)
    detector = registry.card("yunet-student-v4")
    assert training_overlap([detector], [6, 7, 8, 9, 10]) == []
    (caveat,) = training_overlap([detector], list(range(1, 11)))
    assert caveat.startswith("yunet-student-v4 trained on the people of folds 1, 2, 3, 4, 5;")


def test_one_fold_is_refused_before_any_work(tmp_path):
    from click.testing import CliRunner

    from biometrics.cli.main import cli

    result = CliRunner().invoke(cli, ["evaluate", "lfw", "--folds", "10", "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "needs at least 2 folds" in result.output
    shrunk = ["evaluate", "lfw", "--folds", "9-10", "--image-side", "96", "--baseline", "dlib"]
    result = CliRunner().invoke(cli, [*shrunk, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "--image-side shrinks the images for our pipelines only" in result.output
    assert not (tmp_path / "r").exists()


def test_a_baseline_whose_package_is_missing_is_refused_before_any_work(tmp_path, monkeypatch):
    """`--baseline dlib` without dlib installed fails at once, not after our pipelines have run for minutes."""
    from click.testing import CliRunner

    from biometrics.cli.main import cli

    monkeypatch.setitem(sys.modules, "dlib", None)  # `import dlib` raises ImportError
    args = ["evaluate", "lfw", "--folds", "9-10", "--baseline", "dlib", "--data", str(tmp_path / "no-lfw")]
    result = CliRunner().invoke(cli, [*args, "--out", str(tmp_path / "r")])
    assert result.exit_code == 2 and "the dlib baseline needs dlib" in result.stderr  # not "LFW ... not found"


def test_malformed_pairs_file(tmp_path):
    path = tmp_path / "pairs.txt"
    path.write_text("10 300\nAaron 1 2\n")
    with pytest.raises(DataError, match="expected 6000 pairs"):
        read_pairs(path)
    path.unlink()
    with pytest.raises(DataError, match="no pairs.txt in the LFW data folder.*--data"):
        read_pairs(path)
    with pytest.raises(DataError, match="LFW data folder not found"):
        read_pairs(tmp_path / "missing" / "pairs.txt")


def test_archive_is_unpacked_once_and_checked(tmp_path):
    archive = tmp_path / "data.tgz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("data/hello.txt")
        info.size = 5
        tar.addfile(info, io.BytesIO(b"hello"))
    root = unpack_once(archive, cache=tmp_path / "cache")
    assert (root / "data" / "hello.txt").read_text() == "hello"
    assert unpack_once(archive, cache=tmp_path / "cache") == root
    with pytest.raises(DataError, match="does not match"):
        unpack_once(archive, "f" * 64, cache=tmp_path / "cache2")


def test_calibration_uses_only_cross_identity_pairs():
    # Two people, two images each: the impostor pairs are the 4 cross pairs, never the 2 genuine ones.
    keys = ["A/A_0001.jpg", "A/A_0002.jpg", "B/B_0001.jpg", "B/B_0002.jpg"]
    angles = np.deg2rad([0, 10, 80, 95])
    embeddings = np.column_stack([np.cos(angles), np.sin(angles)])
    calibration = impostor_calibration(EmbeddedImages(keys, embeddings, []), fmrs=(0.25,))
    assert calibration["impostor_pairs"] == 4
    cross = sorted(np.cos(np.deg2rad([80, 95, 70, 85])))
    assert cross[-2] < calibration["thresholds"]["0.25"] <= cross[-1]


def _lfw_run() -> dict:
    """An evaluate_lfw result of two folds of 150 genuine and 150 impostor pairs, scores drawn at random."""
    from biometrics.evaluation.metrics import verification_summary

    rng = np.random.default_rng(0)
    labels = np.repeat([1, 0], 300)
    folds = np.tile(np.repeat([1, 2], 150), 2)
    pairs = [
        Pair(int(fold), "A", i + 1, "A" if same else "B", i + 2)
        for i, (fold, same) in enumerate(zip(folds, labels, strict=True))
    ]
    scores = np.where(labels == 1, rng.normal(0.7, 0.1, 600), rng.normal(0.1, 0.1, 600))
    return {
        "folds": [1, 2],
        "images": 10,
        "detection_failures": {"count": 1, "images": ["x"], "fallback": "c"},
        "calibration": {"impostor_pairs": 9, "thresholds": {"0.001": 0.5, "0.0001": 0.6}},
        "scores": scores,
        "labels": labels,
        "pairs": pairs,
        "summary": verification_summary(scores, labels, folds),
    }


def test_report_files(tmp_path):
    run = _lfw_run()
    labels = run["labels"]
    card = {
        "runs": [{"threads": 1, "latency_batch1": {"p50_ms": 2.5}}],
        "file_size_bytes": 1_100_000,
        "parameters": 910_000,
        "macs": 149_000_000,
    }
    files = write_verification_report(tmp_path, "test", {"a + b": run}, run_metadata([]), {"a + b": card})
    report = json.loads(files["json"].read_text())
    assert report["results"]["a + b"]["efficiency"]["parameters"] == 910_000
    assert "| a + b | " in files["md"].read_text().split("## Accuracy and cost")[1]
    assert files["pareto"].stat().st_size > 1000
    assert report["results"]["a + b"]["summary"]["pairs"] == 600
    assert "scores" not in report["results"]["a + b"]
    assert "| a + b | 1-2 | 600 |" in files["md"].read_text()
    assert all(files[key].stat().st_size > 1000 for key in ("roc", "det", "scores_0"))
    rows = list(csv.DictReader(files["scores_csv"].open()))  # every pair, in a form a spreadsheet or pandas reads
    assert len(rows) == 600 and rows[0] == {
        "fold": "1",
        "image_a": "A/A_0001.jpg",
        "image_b": "A/A_0002.jpg",
        "same_person": "1",
        "a + b": f"{run['scores'][0]:.6f}",
    }
    assert [int(row["same_person"]) for row in rows] == labels.tolist() and "embedding" not in rows[0]
    assert "[scores.csv](scores.csv)" in files["md"].read_text()

    # report.md shows what report.json records of the run and each fold's threshold, not report.json alone.
    markdown, meta = files["md"].read_text(), report["meta"]
    run_section = markdown.split("## Run")[1].split("## Results")[0]
    for fact in (meta["command"], meta["versions"]["biometrics"], meta["versions"]["onnxruntime"]):
        assert fact in run_section
    assert meta["machine"]["processor"] in run_section
    assert f"INT8 instructions: {int8_text(meta['machine']['int8_instructions'])}" in run_section
    per_fold = report["results"]["a + b"]["summary"]["per_fold"]
    cells = [f"{100 * f['accuracy']:.2f}% ({f['threshold']:.4f})" for f in per_fold]
    assert f"| a + b | {' | '.join(cells)} |" in markdown.split("## Per fold")[1]

    # Rerun into the same folder with fewer models and no --bench: nothing of the first run is left beside it, and
    # a file that is not a report's stays.
    (tmp_path / "efficiency.md").write_text("cards of the first run")
    (tmp_path / "notes.txt").write_text("mine")
    write_verification_report(tmp_path, "two", {"a + b": run, "c + d": run}, run_metadata([]))
    write_verification_report(tmp_path, "one", {"a + b": run}, run_metadata([]))
    left = sorted(path.name for path in tmp_path.iterdir())
    assert left == ["det.png", "notes.txt", "report.json", "report.md", "roc.png", "scores.csv", "scores_0.png"]


def test_a_tar_at_far_below_what_the_impostor_pairs_resolve_is_flagged_in_the_report(tmp_path):
    """300 impostor pairs measure a FAR no finer than 1/300: the TAR@FAR=1e-3 cell is the TAR at FAR 0, and the
    report says so beside the number; report.json holds the resolution."""
    files = write_verification_report(tmp_path, "test", {"a + b": _lfw_run()}, run_metadata([]))
    summary = json.loads(files["json"].read_text())["results"]["a + b"]["summary"]
    assert summary["far_resolution"] == 1 / 300
    assert summary["tar_at_far"]["1e-3"]["below_resolution"] and not summary["tar_at_far"]["1e-2"]["below_resolution"]
    markdown = files["md"].read_text()
    cells = next(line for line in markdown.splitlines() if line.startswith("| a + b | 1-2 |")).split(" | ")
    assert cells[7].endswith("%†") and cells[6].endswith("%")  # TAR@FAR=1e-3 flagged, 1e-2 not
    assert "300 impostor pairs measure a FAR no finer than 1/300 = 3.3e-03; at FAR 1e-2 at most 3 of them" in markdown
    assert "† FAR 1e-3 is below that: the TAR shown is at FAR 0 (no impostor accepted)." in markdown


@pytest.mark.slow
def test_evaluate_lfw_command_end_to_end(tmp_path):
    """`biometrics evaluate lfw` on folds 1-2 (1,200 real pairs): a complete report, teacher-level accuracy."""
    from click.testing import CliRunner

    from biometrics.cli.main import cli

    lfw = shared_file("data/lfw/pairs.txt").parent
    result = CliRunner().invoke(
        cli,
        [
            "evaluate",
            "lfw",
            "--data",
            str(lfw),
            "--folds",
            "1-2",
            "--embedder",
            "sface-teacher",  # the reference: its accuracy is known
            "--out",
            str(tmp_path),
            "--no-progress",
            "--threads",
            "2",
        ],
    )
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "report.json").read_text())
    run = report["results"]["yunet-teacher + sface-teacher"]
    assert run["summary"]["pairs"] == 1200 and run["folds"] == [1, 2]
    assert run["summary"]["accuracy_mean"] >= 0.99
    assert run["detection_failures"]["count"] <= 5
    assert {m["name"] for m in report["meta"]["models"]} == {"yunet-teacher", "sface-teacher"}
    assert report["meta"]["threads"] == 2 and report["meta"]["machine"]["cpu_count"]
    assert report["meta"]["machine"]["int8_instructions"] == int8_instructions()  # INT8 scores move with them
    for name in ("report.md", "roc.png", "det.png", "scores_0.png"):
        assert (tmp_path / name).stat().st_size > 500


def test_sample_crops_are_aligned_faces_spread_over_the_folds():
    """The bench times embedders on these (real faces, not random numbers): aligned crops at the embedder's size,
    from different people of the requested folds."""
    from biometrics.evaluation.lfw import sample_crops
    from biometrics.pipeline import FacePipeline

    lfw = shared_file("data/lfw/pairs.txt").parent
    crops = sample_crops(FacePipeline(threads=1), lfw, [6], count=4)
    assert crops.shape == (4, 112, 112, 3) and crops.dtype == np.uint8
    assert len({crop.tobytes() for crop in crops}) == 4
    assert 60 < crops.mean() < 200  # faces, not padding


def test_embedders_compared_in_one_run_are_scored_on_the_same_faces_found_once(monkeypatch):
    """`evaluate lfw --embedder a --embedder b`: each image is decoded and searched once for all the embedders,
    and each embedder gets the embeddings it would get alone."""
    from biometrics.evaluation.lfw import PipelineFaces, embed_images, locate_images
    from biometrics.pipeline import FacePipeline

    lfw = shared_file("data/lfw/pairs.txt").parent
    keys = sorted({key for pair in read_pairs(lfw / "pairs.txt") if pair.fold == 6 for key in pair.images})[:12]
    teacher, student = (
        FacePipeline("yunet-teacher", name, threads=2, threshold=0.0) for name in ("sface-teacher", "sface-student")
    )
    alone = [embed_images(PipelineFaces(p), locate_images(lfw), keys, progress=False)[0] for p in (teacher, student)]
    searched = []
    detect = FacePipeline.detect
    monkeypatch.setattr(FacePipeline, "detect", lambda self, image: searched.append(image) or detect(self, image))
    together = embed_images(PipelineFaces(teacher, student), locate_images(lfw), keys, batch_size=5, progress=False)
    assert len(searched) == len(keys)
    for one, both in zip(alone, together, strict=True):
        assert both.keys == keys and both.detection_failures == one.detection_failures
        np.testing.assert_allclose(both.embeddings, one.embeddings, atol=1e-5)
    for other in (
        FacePipeline("retinaface-teacher", "sface-student", threads=1, threshold=0.0),
        FacePipeline("yunet-teacher", "sface-student", threads=1, threshold=0.0, max_side=640),
    ):
        with pytest.raises(ValueError, match="share one detector and its settings"):
            PipelineFaces(teacher, other)


def test_image_side_scores_the_faces_of_shrunken_images():
    """`evaluate lfw --image-side N`: the detector sees the image shrunk to N px (a face that many times smaller),
    and the embedder the face aligned from those pixels; below what the detector can find, the centre crop."""
    from biometrics.evaluation.lfw import PipelineFaces, locate_images
    from biometrics.pipeline import FacePipeline

    lfw = shared_file("data/lfw/pairs.txt").parent
    key = next(key for pair in read_pairs(lfw / "pairs.txt") if pair.fold == 6 for key in pair.images)
    image = load_image(locate_images(lfw) / key)
    pipeline = FacePipeline(threads=1, threshold=0.0)
    seen = []
    detect = pipeline.detect
    pipeline.detect = lambda pixels: seen.append(pixels.shape) or detect(pixels)
    (native,), found = PipelineFaces(pipeline).labelled_crops(image)
    (small,), found_small = PipelineFaces(pipeline, image_side=96).labelled_crops(image)
    (tiny,), found_tiny = PipelineFaces(pipeline, image_side=24).labelled_crops(image)
    assert seen == [(250, 250, 3), (96, 96, 3), (24, 24, 3)] and (found, found_small, found_tiny) == (True, True, False)
    assert native.shape == small.shape == tiny.shape == (112, 112, 3)
    sharpness = [cv2.Laplacian(cv2.cvtColor(crop, cv2.COLOR_BGR2GRAY), cv2.CV_64F).var() for crop in (native, small)]
    assert sharpness[1] < sharpness[0] / 2  # the same face, from fewer pixels


def test_table_report_records_the_command_beside_the_numbers(tmp_path):
    from biometrics.evaluation.report import write_table_report

    report = {"command": "python scripts/x.py --out r", "rows": {"a": 1.5}}
    md_path = write_table_report(tmp_path / "r", report, "Title", ["model", "ms"], [["a", 1.5]])
    assert json.loads((tmp_path / "r" / "report.json").read_text()) == report
    assert md_path.read_text().splitlines() == [
        "# Title",
        "",
        "`python scripts/x.py --out r`",
        "",
        "| model | ms |",
        "|---|---|",
        "| a | 1.5 |",
    ]


def run_cross_distillation(parts: list[str], out, monkeypatch) -> dict:
    """``python scripts/cross_distillation_report.py PARTS --out OUT``, in this process."""
    monkeypatch.setattr(sys, "argv", ["cross_distillation_report.py", *parts, "--out", str(out)])
    runpy.run_path(str(ROOT / "scripts" / "cross_distillation_report.py"), run_name="__main__")
    return json.loads((out / "report.json").read_text())


def test_cross_distillation_combines_two_halves_and_refuses_mixed_int8_kernels(tmp_path, monkeypatch, capsys):
    """The README's all-pairs row for the free step, remade from its two committed halves, gives the committed
    figures; the same halves with one report from a CPU of other INT8 instructions are refused, since INT8
    accuracy moves with them (VNNI or not)."""
    folds_6_10 = ROOT / "reports/lfw-students-chain-vnni-folds6-10/report.json"
    folds_1_5 = ROOT / "reports/lfw-students-b-free-folds1-5/report.json"
    parts = [f"{folds_6_10}:sface-student-free", f"{folds_1_5}:sface-student-b-free"]
    remade = run_cross_distillation(parts, tmp_path / "remade", monkeypatch)
    committed = json.loads((ROOT / "reports/lfw-cross-distillation-free/report.json").read_text())
    assert (remade["student"], remade["teacher"]) == (committed["student"], committed["teacher"])
    assert remade["int8_instructions"] == [["avx2", "avx512bw", "avx512_vnni"]] * 2
    assert "CPU INT8 instructions, per source: avx2, avx512bw, avx512_vnni;" in capsys.readouterr().out

    elsewhere = json.loads(folds_1_5.read_text())
    elsewhere["meta"]["machine"]["int8_instructions"] = ["avx2"]
    (tmp_path / "avx2.json").write_text(json.dumps(elsewhere))
    with pytest.raises(SystemExit, match="different INT8 instructions .avx2; avx2, avx512bw, avx512_vnni."):
        run_cross_distillation(
            [parts[0], f"{tmp_path / 'avx2.json'}:sface-student-b-free"], tmp_path / "x", monkeypatch
        )
    assert not (tmp_path / "x").exists()
