"""The command line as a script sees it: exit codes, one-line reasons on stderr, JSON on stdout."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from importlib.metadata import version
from pathlib import Path

import cv2
import numpy as np
import onnx
import pytest
from click.testing import CliRunner
from onnx import TensorProto, helper

from biometrics.cli.main import cli
from biometrics.runtime import int8_instructions


@pytest.fixture
def run():
    def invoke(*args):
        return CliRunner().invoke(cli, [str(a) for a in args])

    return invoke


def test_verify_same_person_exits_0(run, sample):
    result = run("verify", sample("obama.jpg"), sample("obama2.jpg"), "--threads", 2)
    assert result.exit_code == 0, result.output
    assert result.stdout.startswith("SAME person: similarity")
    assert "time (ms): decode" in result.stdout and "threshold: cosine similarity at which FMR" in result.stdout


def test_verify_different_people_exits_1_with_json(run, sample):
    result = run("verify", sample("obama.jpg"), sample("biden.jpg"), "--json", "--threads", 2)
    assert result.exit_code == 1, result.output
    report = json.loads(result.stdout)
    assert report["same_person"] is False and report["similarity"] < report["threshold"]
    assert report["models"] == {"detector": "yunet-teacher", "embedder": "sface-student"}
    assert [image["faces_found"] for image in report["images"]] == [1, 1]
    assert "embedding" not in json.dumps(report)  # biometric templates are never printed


def test_verify_warns_of_a_face_too_small_to_be_recognised_reliably(run, sample, tmp_path):
    """A face under SMALL_FACE_PX (reports/lfw-face-size) still gets its answer, with a warning naming its size."""
    small = tmp_path / "small.png"
    cv2.imwrite(str(small), cv2.resize(cv2.imread(str(sample("obama.jpg"))), None, fx=0.15, fy=0.15))  # ~39 px face
    text = run("verify", sample("obama2.jpg"), small, "--threads", 2)
    assert text.exit_code == 0 and text.stderr.startswith("warning: small.png: the face is ")
    assert len(text.stderr.splitlines()) == 1  # obama2.jpg's face is large
    report = json.loads(run("verify", sample("obama2.jpg"), small, "--json").stdout)
    assert len(report["warnings"]) == 1 and "faces under 48 px are recognised less reliably" in report["warnings"][0]
    assert run("verify", sample("obama.jpg"), sample("obama2.jpg")).stderr == ""


def test_verify_bad_inputs_exit_2_with_one_line_reason(run, sample, tmp_path, no_face_photo):
    text = tmp_path / "notes.txt"
    text.write_text("not a photo\n")
    truncated = tmp_path / "truncated.jpg"
    truncated.write_bytes(sample("obama.jpg").read_bytes()[:20_000])
    cases = {
        text: "not an image",
        truncated: "corrupt or truncated",
        no_face_photo: "no face found",
        tmp_path / "missing.jpg": "no such file",
    }
    for path, reason in cases.items():
        result = run("verify", path, sample("obama.jpg"))
        assert result.exit_code == 2, (path, result.output)
        assert result.stdout == ""
        lines = result.stderr.strip().splitlines()
        assert len(lines) == 1 and lines[0].startswith("error: ") and reason in lines[0], result.stderr


def test_with_json_a_failure_is_a_json_object_too(run, sample, tmp_path, no_face_photo):
    """A script that asked for --json parses stdout whatever happens: the result, or the error and its kind."""
    cases = [
        (["verify", no_face_photo, sample("obama.jpg"), "--json"], "no_face", "no face found"),
        (["detect", tmp_path / "missing.jpg", "--json"], "image", "no such file"),
        (["verify", sample("obama.jpg"), sample("obama2.jpg"), "--embedder", "nope", "--json"], "model", "unknown"),
        (["identify", sample("obama.jpg"), "--gallery", tmp_path / "none.db", "--json"], "gallery", "no gallery"),
    ]
    for args, kind, reason in cases:
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        error = json.loads(result.stdout)["error"]
        assert error["kind"] == kind and reason in error["message"]
        assert result.stderr == f"error: {error['message']}\n"  # the same one line for people
    assert run("verify", no_face_photo, sample("obama.jpg")).stdout == ""  # without --json, stdout stays empty


def test_a_refused_argument_is_one_line_and_with_json_an_object_of_kind_usage(run, sample, monkeypatch):
    """Click's own refusals (a bad value, a missing argument, an unknown command) read like every other error: one
    `error:` line naming the help to read, and the JSON object a script parses; so does a bad BIOMETRICS_THREADS."""
    cases = [
        (["verify", sample("obama.jpg"), "--threshold", "nan"], "Invalid value for '--threshold'", "biometrics verify"),
        (["verify", sample("obama.jpg")], "Missing argument 'IMAGE_B'", "biometrics verify"),
        (["verify", sample("obama.jpg"), sample("obama2.jpg"), "--threads", 99999], "1<=x<=256", "biometrics verify"),
        (["gallery", "list", "--nope"], "No such option '--nope'", "biometrics gallery list"),
        (["nosuch"], "No such command 'nosuch'", "biometrics"),
        (
            ["verify", sample("obama.jpg"), sample("obama2.jpg"), "--embedder", ""],
            "cannot be empty",
            "biometrics verify",
        ),
    ]
    for args, reason, command in cases:
        for as_json in (False, True):
            words = [str(arg) for arg in args] + (["--json"] if as_json else [])
            result = CliRunner().invoke(cli, words, prog_name="biometrics")
            assert result.exit_code == 2, (args, result.output)
            lines = result.stderr.strip().splitlines()
            assert len(lines) == 1 and reason in lines[0] and lines[0].endswith(f"(see '{command} --help')"), lines
            if as_json:
                assert json.loads(result.stdout)["error"] == {"kind": "usage", "message": lines[0][len("error: ") :]}
            else:
                assert result.stdout == ""
    for bad in ("\u00b2", "0", "257", "two"):  # a superscript two passes str.isdigit but is no number
        monkeypatch.setenv("BIOMETRICS_THREADS", bad)
        result = run("verify", sample("obama.jpg"), sample("obama2.jpg"), "--json")
        assert result.exit_code == 2 and json.loads(result.stdout)["error"]["kind"] == "usage", result.output


def test_ctrl_c_while_a_library_loads_is_interrupted_not_a_failure(run, sample, monkeypatch):
    """ONNX Runtime re-raises a Ctrl-C that lands while it loads as ImportError: still "interrupted", exit 130."""
    from biometrics.__main__ import main as console_script

    def interrupted_import(*args, **kwargs):
        try:
            raise KeyboardInterrupt
        except KeyboardInterrupt as exc:
            raise ImportError("initialization failed") from exc

    monkeypatch.setattr("biometrics.cli.main._pipeline", interrupted_import)
    result = run("verify", sample("obama.jpg"), sample("obama2.jpg"))
    assert (result.exit_code, result.stderr) == (130, "interrupted\n")
    monkeypatch.setattr("biometrics.cli.main.main", interrupted_import)  # the console script, still loading
    with pytest.raises(SystemExit) as stopped:
        console_script()
    assert stopped.value.code == 130


def test_verify_picks_a_chosen_face(run, sample):
    """In two_people.jpg exactly one of the two faces is Obama."""
    results = [run("verify", sample("two_people.jpg"), sample("obama.jpg"), "--face-a", i) for i in (0, 1)]
    assert sorted(result.exit_code for result in results) == [0, 1]
    assert [f"two_people.jpg 2 (used face {i}), obama.jpg 1" in r.stdout for i, r in enumerate(results)] == [True] * 2
    report = json.loads(run("verify", sample("two_people.jpg"), sample("obama.jpg"), "--face-a", 1, "--json").stdout)
    assert [image["face_index"] for image in report["images"]] == [1, 0]
    result = run("verify", sample("two_people.jpg"), sample("obama.jpg"), "--face-a", 7)
    assert result.exit_code == 2 and "out of range" in result.stderr


def test_unknown_model_exits_2(run, sample):
    result = run("verify", sample("obama.jpg"), sample("obama2.jpg"), "--embedder", "no-such-model")
    assert result.exit_code == 2 and "unknown model 'no-such-model'" in result.stderr


def test_failures_that_are_not_the_users_still_exit_2_in_one_line(run, sample, tmp_path):
    """A model that loads but is not what it is used as (a detector's file, without its card, given as the
    embedder), a threshold that is not a cosine similarity, an output format OpenCV cannot write: exit 2, one line,
    never exit 1 ("different")."""
    detector_as_embedder = tmp_path / "uncarded.onnx"
    shutil.copyfile(
        Path(__file__).resolve().parents[1] / "models" / "yunet-student-v3" / "model.onnx", detector_as_embedder
    )
    cases = [
        (
            [
                "verify",
                sample("obama.jpg"),
                sample("obama2.jpg"),
                "--embedder",
                detector_as_embedder,
                "--threshold",
                0.4,
            ],
            "error: model 'uncarded' is not an embedder: it has 12 outputs",  # refused when loaded, not when run
        ),
        (["verify", sample("obama.jpg"), sample("obama2.jpg"), "--threshold", "nan"], "not a cosine similarity"),
        (["detect", sample("obama.jpg"), "--out", tmp_path / "faces.txt"], "cannot write an image with this extension"),
    ]
    for args, reason in cases:
        result = run(*args)
        assert result.exit_code == 2, (args, result.output)
        assert reason in result.stderr and "Traceback" not in result.output
    assert run("detect", sample("obama.jpg"), "--embedder", "sface-teacher").exit_code == 2  # detect embeds nothing


def test_an_output_that_names_an_input_is_refused_before_anything_is_written(run, sample, tmp_path):
    """detect IMG --out IMG would replace the photo, live --out/--events SOURCE the video being read."""
    photo, video = tmp_path / "photo.jpg", tmp_path / "clip.mp4"
    photo.write_bytes(sample("obama.jpg").read_bytes())
    video.write_bytes(sample("hamilton_clip.mp4").read_bytes())
    before = photo.read_bytes(), video.read_bytes()
    cases = [
        (["detect", photo, "--out", tmp_path / "." / "photo.jpg"], "is the same file as IMAGE"),
        (["live", "--headless", "--source", video, "--out", video], "is the same file as the --source video"),
        (["live", "--headless", "--source", video, "--events", video], "is the same file as the --source video"),
        (["live", "--headless", "--source", video, "--out", tmp_path / "a", "--events", tmp_path / "a"], "--out"),
    ]
    for args, reason in cases:
        result = run(*args)
        assert result.exit_code == 2 and reason in result.stderr, (args, result.output)
    assert (photo.read_bytes(), video.read_bytes()) == before and not (tmp_path / "a").exists()


def test_detect_json_and_annotated_output(run, sample, tmp_path):
    out = tmp_path / "annotated.jpg"
    result = run("detect", sample("two_people.jpg"), "--json", "--out", out)
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert len(report["faces"]) == 2 and report["size"] == [1126, 661]
    assert all(len(face["landmarks"]) == 5 for face in report["faces"])
    assert out.stat().st_size > 10_000


def test_json_names_a_file_whose_name_is_not_utf8_so_a_script_can_open_it(sample, tmp_path):
    """ASCII JSON, the name's odd byte kept as Python's surrogateescape does (README, Command line)."""
    photo = Path(os.fsdecode(os.fsencode(tmp_path) + b"/ob\xffama.jpg"))
    shutil.copy(sample("obama.jpg"), photo)
    proc = subprocess.run(
        [sys.executable, "-m", "biometrics", "detect", photo, "--json"], capture_output=True, timeout=120
    )
    assert proc.returncode == 0 and proc.stdout.isascii() and b"ob\\udcffama.jpg" in proc.stdout
    assert os.fsencode(json.loads(proc.stdout)["image"]) == os.fsencode(photo)


def test_detect_out_is_owner_only_and_a_failed_write_keeps_the_earlier_image(run, sample, tmp_path, monkeypatch):
    """The annotated image shows faces: 0600 in folders made 0700, whatever the umask. A full disk is an output
    error naming the image, and the image written before is still there (it used to be deleted)."""
    out = tmp_path / "new" / "annotated.jpg"
    previous = os.umask(0o022)
    try:
        assert run("detect", sample("two_people.jpg"), "--out", out).exit_code == 0
    finally:
        os.umask(previous)
    assert [stat.S_IMODE(path.stat().st_mode) for path in (out, out.parent)] == [0o600, 0o700]
    before, write_bytes = out.read_bytes(), Path.write_bytes

    def disk_fills(path, data):
        if path.parent != out.parent:
            return write_bytes(path, data)
        write_bytes(path, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path))

    monkeypatch.setattr(Path, "write_bytes", disk_fills)
    result = run("detect", sample("obama.jpg"), "--out", out, "--json")
    assert result.exit_code == 2, result.output
    message = f"{out}: cannot write image (No space left on device)"
    assert json.loads(result.stdout)["error"] == {"kind": "output", "message": message}
    assert out.read_bytes() == before and os.listdir(out.parent) == [out.name]


def test_console_script_end_to_end(sample):
    """The installed `biometrics` entry point, in a real process."""
    exe = Path(sys.executable).with_name("biometrics")
    exe = exe if exe.is_file() else shutil.which("biometrics")
    proc = subprocess.run(
        [exe, "verify", sample("biden.jpg"), sample("biden2.jpg")], capture_output=True, text=True, timeout=120
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.startswith("SAME person")


def test_output_that_cannot_be_written_is_an_error_not_a_traceback(sample):
    """`> /dev/full` (a full disk): one line on stderr and exit 2, not a traceback and exit 1 ("different")."""
    with open("/dev/full", "w") as full:
        proc = subprocess.run(
            [sys.executable, "-m", "biometrics", "verify", sample("biden.jpg"), sample("biden2.jpg"), "--json"],
            stdout=full,
            stderr=subprocess.PIPE,
            text=True,
            timeout=120,
        )
    assert proc.returncode == 2 and proc.stderr == "error: cannot write the output (No space left on device)\n"


def test_running_out_of_memory_is_one_line_and_exit_2_not_a_bug_report(run, sample, tmp_path, monkeypatch):
    """Under a memory limit (ulimit -v, a container's) loading the command line failed with a traceback and exit 1
    (`verify`'s "different people"), and a command's MemoryError or ONNX Runtime's bad_alloc read 'unexpected ...
    (please report this)'."""
    code = (
        "import resource, runpy, sys\n"
        "resource.setrlimit(resource.RLIMIT_AS, (32 << 20,) * 2)\n"  # too little for NumPy and OpenCV
        "sys.argv = ['biometrics', *sys.argv[1:]]\n"
        "runpy.run_module('biometrics', run_name='__main__')\n"
    )
    args = [sys.executable, "-c", code, "verify", str(sample("obama.jpg")), str(sample("obama2.jpg")), "--json"]
    proc = subprocess.run(args, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 2 and proc.stderr.startswith("error: ") and proc.stderr.count("\n") == 1, proc.stderr
    assert "leaves too little for loading the command line" in proc.stderr or (  # which library fails first varies
        "failed to map segment from shared object (too little memory, or a file system mounted noexec)" in proc.stderr
    )
    assert json.loads(proc.stdout)["error"]["message"] == proc.stderr.removeprefix("error: ").strip()
    from biometrics.pipeline import FacePipeline

    for failure in (MemoryError(), RuntimeError("[ONNXRuntimeError] : 1 : FAIL : std::bad_alloc")):

        def fail(*_args, failure=failure, **_kwargs):
            raise failure

        monkeypatch.setattr(FacePipeline, "verify", fail)
        result = run("verify", sample("obama.jpg"), sample("obama2.jpg"), "--json")
        assert result.exit_code == 2 and result.stderr.count("\n") == 1, result.output
        assert json.loads(result.stdout)["error"]["kind"] == "out_of_memory"


def test_bench_writes_an_efficiency_card_with_the_run_behind_it(run, tmp_path, monkeypatch):
    """The cards, and beside them what a reader needs to rerun and judge them: the command, date, versions,
    machine, and which file each model was (path and SHA-256), in efficiency.json and efficiency.md."""
    args = ["bench", "yunet-teacher", "--out", str(tmp_path), "--threads", "1", "--iterations", "5", "--batch", "2"]
    monkeypatch.setattr(sys, "argv", ["biometrics", *args])
    result = run(*args)
    assert result.exit_code == 0, result.output
    written = json.loads((tmp_path / "efficiency.json").read_text())
    (card,) = written["cards"]
    assert card["name"] == "yunet-teacher" and card["input_shape"] == [1, 3, 480, 640]
    assert card["parameters"] > 50_000 and card["macs"] > 100e6
    run_1t = card["runs"][0]
    assert run_1t["threads"] == 1 and 0 < run_1t["latency_batch1"]["p50_ms"] <= run_1t["latency_batch1"]["p95_ms"]
    meta = written["meta"]
    assert meta["command"] == " ".join(["biometrics", *args]) and meta["threads"] == [1]
    assert meta["versions"]["biometrics"] == version("biometrics") and meta["versions"]["onnxruntime"]
    assert meta["machine"]["int8_instructions"] == int8_instructions() and meta["machine"]["processor"]
    (model,) = meta["models"]
    assert model["name"] == "yunet-teacher" and model["sha256"] == card["sha256"] and Path(model["source"]).is_file()
    markdown = (tmp_path / "efficiency.md").read_text()
    assert "| yunet-teacher |" in markdown and f"Command: `{meta['command']}`" in markdown
    assert f"Date: {meta['date']}; biometrics {version('biometrics')}" in markdown and "Machine: " in markdown
    assert f"- `yunet-teacher` sha256 `{card['sha256'][:12]}`: `{model['source']}`" in markdown


def test_bench_times_your_own_models_at_their_task_s_input_and_names_a_broken_one(run, sample, tmp_path):
    """A card as the README shows one (no bench_input_shape) is benched at its task's input: an embedder's crop.
    A file ONNX Runtime cannot load, or a network that is no embedder, is a model error naming it, before any
    worker runs."""
    student = Path(__file__).parents[1] / "models" / "sface-student"
    card = json.loads((student / "card.json").read_text())
    mine = {"name": "mine", "task": "embedding", "architecture": card["architecture"], "input": card["input"]}
    (tmp_path / "mine.onnx").write_bytes((student / "model.onnx").read_bytes())
    (tmp_path / "mine.json").write_text(json.dumps(mine))
    result = run("bench", tmp_path / "mine.onnx", "--out", tmp_path / "r", "--threads", 1, "--iterations", 5)
    assert result.exit_code == 0, result.output
    assert json.loads((tmp_path / "r" / "efficiency.json").read_text())["cards"][0]["input_shape"] == [1, 3, 112, 112]

    (tmp_path / "text.onnx").write_text("not onnx")
    (tmp_path / "text.json").write_text(json.dumps(mine | {"name": "text"}))
    broken = run("bench", tmp_path / "text.onnx", "--out", tmp_path / "t")
    assert broken.exit_code == 2 and f"model 'text': ONNX Runtime cannot load {tmp_path / 'text.onnx'}" in broken.stderr
    crops = [helper.make_tensor_value_info(name, TensorProto.FLOAT, [1, 3, 112, 112]) for name in "xy"]
    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "identity", crops[:1], crops[1:])
    onnx.save(helper.make_model(graph), tmp_path / "identity.onnx")
    enrol = ["enroll", "x", sample("obama.jpg"), "--gallery", tmp_path / "g.db"]
    identity = run(*enrol, "--embedder", tmp_path / "identity.onnx")
    assert identity.exit_code == 2 and "not an embedder: its output is [1, 3, 112, 112], not N x D" in identity.stderr


def test_bench_checks_a_model_as_verify_does_before_timing_it(run, tmp_path):
    """A card whose input size is not the network's, a detector carded as an embedder, a fixed batch of 8: each is
    the message `verify` gives, before any worker runs, not a fragment of ONNX Runtime's failure in one."""
    root = Path(__file__).parents[1] / "models"
    card = {"task": "embedding", "architecture": "arcface112"}
    fixed = onnx.load(root / "sface-student-fp32" / "model.onnx")
    fixed.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 8
    onnx.save(fixed, tmp_path / "batch8.onnx")
    shutil.copy(root / "sface-student" / "model.onnx", tmp_path / "size128.onnx")
    shutil.copy(root / "yunet-student-v4" / "model.onnx", tmp_path / "detector.onnx")
    for name, size, reason in [
        ("size128", 128, "not an embedder for 128x128 crops (its input is ['batch', 3, 112, 112])"),
        ("detector", 112, "is not an embedder: it has 12 outputs (cls_8, "),
        ("batch8", 112, "its input has a fixed batch of 8"),
    ]:
        (tmp_path / f"{name}.json").write_text(json.dumps(card | {"name": name, "input": {"size": [size, size]}}))
        result = run("bench", tmp_path / f"{name}.onnx", "--out", tmp_path / name, "--threads", 1)
        assert result.exit_code == 2 and result.stderr.startswith(f"error: model '{name}'"), result.output
        assert reason in result.stderr and "benchmarking" not in result.stderr and result.stderr.count("\n") == 1


def test_onnx_runtime_s_telemetry_neither_writes_to_home_nor_warns_where_it_cannot(sample, tmp_path):
    """ONNX Runtime's telemetry starts when it is imported: it writes a device id under HOME (README, Privacy: not
    after `import biometrics`) and, where it cannot (a read-only HOME), prints a coloured warning; stderr is for our
    one-line errors and warnings."""
    (tmp_path / "a-file").write_text("")
    unset = ("ORT_DISABLE_TELEMETRY", "XDG_CACHE_HOME")
    env = {k: v for k, v in os.environ.items() if k not in unset} | {"HOME": str(tmp_path / "a-file" / "home")}
    proc = subprocess.run(
        [sys.executable, "-m", "biometrics", "detect", sample("obama.jpg"), "--json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0 and proc.stderr == ""
    home = tmp_path / "home"
    subprocess.run([sys.executable, "-c", "import biometrics, onnxruntime"], env=env | {"HOME": str(home)}, check=True)
    assert not (home / ".cache" / "Microsoft").exists()


@pytest.mark.parametrize(
    "command",
    [["evaluate", "lfw", "--folds", "9-10"], ["evaluate", "wider"], ["bench", "sface-student"]],
    ids=["evaluate-lfw", "evaluate-wider", "bench"],
)
def test_a_report_folder_that_cannot_be_written_is_refused_before_any_work(run, tmp_path, command):
    """Not after minutes of evaluation, and not as an 'unexpected' error: a file in the way, or a place where
    nothing can be created; a folder that can be made is not made yet."""
    in_the_way = tmp_path / "a-file"
    in_the_way.write_text("")
    for out, reason in [(in_the_way / "report", "Not a directory"), (Path("/proc/report"), "cannot write")]:
        result = run(*command, "--out", out)
        assert result.exit_code == 2 and "Invalid value for '--out'" in result.output and reason in result.output
    assert run("evaluate", "lfw", "--folds", "10", "--out", tmp_path / "new").exit_code == 2  # refused for its folds
    assert not (tmp_path / "new").exists()


def test_a_scored_detector_named_like_a_reference_one_is_refused(run, tmp_path):
    """evaluate landmarks runs each detector once, by name: a file carded 'yunet-teacher' would have stood in for
    the real one in the reference ensemble, its landmarks measured partly against themselves."""
    model = tmp_path / "model.onnx"
    shipped = Path(__file__).parents[1] / "models" / "yunet-student-v3"
    model.write_bytes((shipped / "model.onnx").read_bytes())
    card = json.loads((shipped / "card.json").read_text()) | {"name": "yunet-teacher"}
    card.pop("source")
    model.with_suffix(".json").write_text(json.dumps(card))
    result = run("evaluate", "landmarks", "--detector", model, "--out", tmp_path / "report")
    assert result.exit_code == 2 and "are both named 'yunet-teacher'" in result.stderr, result.output


@pytest.mark.parametrize(
    ("command", "option", "task"),
    [
        (["evaluate", "lfw", "--folds", "9-10"], "--embedder", "embedding"),
        (["evaluate", "folder", "people"], "--embedder", "embedding"),
        (["evaluate", "lfw", "--folds", "9-10"], "--detector", "detection"),
        (["evaluate", "folder", "people"], "--detector", "detection"),
        (["evaluate", "wider"], "--detector", "detection"),
        (["evaluate", "landmarks"], "--detector", "detection"),
        (["bench"], "", "embedding"),
    ],
)
def test_two_models_of_one_name_are_refused_before_any_work(run, tmp_path, command, option, task):
    """A report keys its results, rows and score columns by model name: two files both named 'model' (an embedder
    without a card takes its file's name) would print twice and leave one result in report.json. Refused at once,
    naming both arguments and how to tell them apart; a model given twice is named as such."""
    given = []
    for folder in ("x1", "x2"):
        (tmp_path / folder).mkdir()
        (tmp_path / folder / "model.onnx").write_bytes(b"never read")
        if task == "detection" or not option:  # a detector (and any model `bench` times) needs a card
            card = {"name": "model", "task": task, "architecture": "yunet" if task == "detection" else "arcface112"}
            (tmp_path / folder / "model.json").write_text(json.dumps(card))
        given += [option, tmp_path / folder / "model.onnx"] if option else [tmp_path / folder / "model.onnx"]
    result = run(*command, *given, "--out", tmp_path / "report")
    both = " and ".join(f"{option} {tmp_path / folder / 'model.onnx'}".strip() for folder in ("x1", "x2"))
    assert result.exit_code == 2 and result.stderr.startswith(f"error: {both} are both named 'model'"), result.output
    assert "give each its own card beside it" in result.stderr and len(result.stderr.splitlines()) == 1
    assert not (tmp_path / "report").exists()
    first = given[: len(given) // 2]
    twice = run(*command, *first, *first, "--out", tmp_path / "report")
    assert twice.exit_code == 2 and twice.stderr == f"error: {' '.join(map(str, first))} is given twice\n"


def test_bench_on_photos_times_detectors_on_the_photos_and_embedders_on_their_faces(run, sample, tmp_path):
    """Timing on real input (kernels like PRelu run at a different speed on faces than on random numbers)."""
    photos = [sample("obama.jpg"), sample("two_people.jpg")]
    args = ["--out", tmp_path, "--threads", 1, "--iterations", 5, "--batch", 2]
    result = run("bench", "yunet-teacher", "sface-student", *args, *[v for p in photos for v in ("--images", p)])
    assert result.exit_code == 0, result.output
    detector, embedder = json.loads((tmp_path / "efficiency.json").read_text())["cards"]
    assert detector["input_data"] == "2 photos resized to 640x480 (obama.jpg, two_people.jpg)"
    assert embedder["input_data"] == "3 faces aligned from 2 photos (obama.jpg, two_people.jpg)"
    assert "Input: 2 photos resized" in (tmp_path / "efficiency.md").read_text()

    empty = tmp_path / "empty.png"
    empty.write_bytes(cv2.imencode(".png", np.full((200, 200, 3), 128, np.uint8))[1].tobytes())
    result = run("bench", "sface-student", "--out", tmp_path / "none", "--images", empty)
    assert result.exit_code == 2 and "no face found in empty.png" in result.output


def test_distill_refuses_to_overwrite_a_shipped_model_with_an_unfinished_one(run, tmp_path):
    """`--export-unfinished` scores a run mid-way; into models/ it would replace the calibrated default embedder."""
    pytest.importorskip("torch")
    recipe = Path(__file__).resolve().parents[1] / "pipelines" / "sface-student-patient-more.yaml"
    models = Path(__file__).resolve().parents[1] / "models"
    args = ["distill", recipe, "--max-steps", 1, "--export-unfinished", "--models-dir", models]
    result = run(*args, "--work-dir", tmp_path / "run")
    assert result.exit_code == 2 and "would replace the calibrated model" in result.output
    assert not (tmp_path / "run").exists()
    result = run("distill", recipe, "--webp-quality", 80, "--work-dir", tmp_path / "run")
    assert result.exit_code == 2 and "--pack-faces" in result.output


def test_a_reader_that_goes_away_is_no_error(sample):
    """`biometrics verify a b | head -0`: the pipe closes before we write; no traceback, the shells' SIGPIPE code."""
    proc = subprocess.Popen(
        [sys.executable, "-m", "biometrics", "verify", sample("obama.jpg"), sample("obama2.jpg")],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    proc.stdout.close()
    assert proc.wait(timeout=120) == 141
    assert proc.stderr.read() == b""


def test_models_list_marks_the_defaults_and_points_to_licence_notes(run):
    result = run("models", "list")
    assert result.exit_code == 0, result.output
    lines = result.stdout.splitlines()
    assert lines[0].split() == ["name", "task", "file", "licence", "description"]
    rows = {line.split()[0]: line for line in lines[1:-1]}
    assert rows["sface-student"].split()[1] == "*" and rows["yunet-teacher"].split()[1] == "*"
    assert "(see card)" in rows["sface-student"] and "(see card)" not in rows["sface-teacher"]
    listed = {model["name"]: model for model in json.loads(run("models", "list", "--json").stdout)["models"]}
    assert list(listed) == [line.split()[0] for line in lines[1:-1]]  # the same models, for scripts
    assert {name for name, model in listed.items() if model["default"]} == {"sface-student", "yunet-teacher"}
    assert listed["sface-student"]["file"] == "ok" and listed["sface-student"]["task"] == "embedding"
    assert (
        "non-commercial" in listed["sface-student"]["licence_note"] and listed["sface-teacher"]["licence_note"] is None
    )
