"""scripts/update_card.py copies measured numbers from committed reports into a card, naming their source."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

from tests.conftest import ROOT


def test_detector_card_gets_wider_landmarks_and_bench_numbers_from_the_reports(tmp_path):
    card = tmp_path / "card.json"
    shutil.copy(ROOT / "models" / "yunet-student" / "card.json", card)
    reports = ROOT / "reports"
    args = [
        "--wider",
        reports / "wider-detectors-students" / "report.json",
        "--landmarks",
        reports / "landmarks-lfw-folds6-10-students" / "report.json",
        "--bench",
        reports / "bench-detectors" / "efficiency.json",
    ]
    script = ROOT / "scripts" / "update_card.py"
    subprocess.run([sys.executable, script, card, *map(str, args)], check=True, capture_output=True, cwd=ROOT)
    measured = json.loads(card.read_text())["measured"]
    wider = json.loads((reports / "wider-detectors-students" / "report.json").read_text())["results"]["yunet-student"]
    assert measured["wider"]["ap"] == {k: round(v, 4) for k, v in wider["ap"].items()}
    assert measured["wider"]["command"].startswith("biometrics evaluate wider")
    landmarks = json.loads((reports / "landmarks-lfw-folds6-10-students" / "report.json").read_text())["results"]
    ours = next(r for r in landmarks if r["detector"] == "yunet-student")
    assert measured["landmarks"]["nme_mean"] == round(ours["nme_mean"], 4)
    assert (
        measured["efficiency"]["file_size_bytes"] == (ROOT / "models" / "yunet-student" / "model.onnx").stat().st_size
    )
