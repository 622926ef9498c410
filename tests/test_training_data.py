"""Training data and export: owner-only face caches, packed face sets checked before use, atomic model export,
the data root found where the shared folder is."""

from __future__ import annotations

import json
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="training needs the train extra (pip install -e '.[train]')")

from biometrics.errors import DataError  # noqa: E402
from biometrics.registry import sha256_file  # noqa: E402
from biometrics.training import faces as training_faces  # noqa: E402
from biometrics.training.faces import FaceCache, load_packed_faces, pack_faces  # noqa: E402
from tests.conftest import SHARED  # noqa: E402

SIGNATURE = {"data": "test"}


@pytest.fixture(autouse=True)
def usual_umask():
    previous = os.umask(0o022)  # what made the caches world-readable
    yield
    os.umask(previous)


def _mode(path) -> int:
    return path.stat().st_mode & 0o777


def _faces(folder, count: int = 4, seed: int = 0) -> FaceCache:
    rng = np.random.default_rng(seed)
    colours = rng.integers(0, 192, (count, 1, 1, 3))  # smooth images: WebP keeps them close
    crops = (colours + np.arange(112)[None, :, None, None] // 2).astype(np.uint8).repeat(112, axis=2)
    meta = [{"dataset": "lfw", "identity": f"lfw/person{i % 2}", "file": f"{i}.jpg"} for i in range(count)]
    return FaceCache.store(folder, crops, meta)


def test_face_caches_and_decoded_packs_are_owner_only(tmp_path):
    cache = tmp_path / "cache"
    originals = _faces(cache / "training" / "faces-abc")
    for folder in (cache, cache / "training", originals.folder):
        assert _mode(folder) == 0o700, folder
    files = sorted(originals.folder.iterdir())
    assert [path.name for path in files] == ["crops.npy", "meta.json"]
    assert all(_mode(path) == 0o600 for path in files)

    pack = pack_faces(originals, tmp_path / "faces.npz", SIGNATURE, progress=False)
    copies = load_packed_faces(pack, SIGNATURE, cache=cache)
    assert copies.folder != originals.folder and _mode(copies.folder) == 0o700
    assert all(_mode(path) == 0o600 for path in copies.folder.iterdir())
    assert copies.meta == originals.meta

    os.chmod(copies.folder / "meta.json", 0o644)  # a copy decoded before caches were owner-only
    os.chmod(copies.folder, 0o755)
    load_packed_faces(pack, SIGNATURE, cache=cache)
    assert _mode(copies.folder / "meta.json") == 0o600 and _mode(copies.folder) == 0o700


def test_broken_packs_are_clear_data_errors(tmp_path):
    pack = pack_faces(_faces(tmp_path / "faces"), tmp_path / "faces.npz", SIGNATURE, progress=False)
    empty, garbage, cut = tmp_path / "empty.npz", tmp_path / "garbage.npz", tmp_path / "cut.npz"
    empty.write_bytes(b"")
    garbage.write_bytes(b"\x80\x04 this is not a face set" * 10)
    with np.load(pack) as parts:
        contents = {name: parts[name] for name in parts.files}
    np.savez(cut, **dict(contents, offsets=contents["offsets"][:-1]))  # the last face's identity lost its face
    for path, reason in ((empty, "empty"), (garbage, "not an .npz"), (cut, "offsets"), (tmp_path / "no.npz", "found")):
        with pytest.raises(DataError) as error:
            load_packed_faces(path, SIGNATURE, cache=tmp_path / "cache")
        assert str(path) in str(error.value) and reason in str(error.value)
        assert "EOFError" not in str(error.value) and "allow_pickle" not in str(error.value)


def test_a_changed_pack_is_decoded_again(tmp_path):
    cache = tmp_path / "cache"
    pack = tmp_path / "faces.npz"
    first = load_packed_faces(
        pack_faces(_faces(tmp_path / "faces", seed=1), pack, SIGNATURE, progress=False), SIGNATURE, cache=cache
    )
    first_crops = np.array(first.crops)
    # Another face set from a cache folder of the same name, packed at the same quality, over the same file.
    second_originals = _faces(tmp_path / "other" / "faces", seed=2)
    second = load_packed_faces(pack_faces(second_originals, pack, SIGNATURE, progress=False), SIGNATURE, cache=cache)
    assert second.folder != first.folder
    mean_difference = lambda a, b: np.abs(np.asarray(a, np.float32) - np.asarray(b, np.float32)).mean()  # noqa: E731
    assert mean_difference(second.crops, second_originals.crops) < 4 < mean_difference(second.crops, first_crops)


class _TinyEmbedder(torch.nn.Module):
    def __init__(self, seed: int):
        super().__init__()
        torch.manual_seed(seed)
        self.conv = torch.nn.Conv2d(3, 4, 8, stride=8)

    def forward(self, x):
        return self.conv(x).mean(dim=(2, 3))


def _card(model_path):
    from biometrics.training.export import write_card

    return write_card(
        model_path,
        name="tiny",
        description="test",
        recipe={},
        data_split={},
        teacher="none",
        training={},
        precision="fp32",
    )


def test_a_failed_export_leaves_the_previous_model_and_its_card(tmp_path):
    from biometrics.training.export import export_onnx, quantize_int8

    model_path = tmp_path / "models" / "tiny" / "model.onnx"
    card_path = _card(export_onnx(_TinyEmbedder(0), model_path))
    old_sha = sha256_file(model_path)
    assert json.loads(card_path.read_text())["source"]["sha256"] == old_sha

    # A new export whose INT8 step fails: the folder still holds the old model its card vouches for.
    export_onnx(_TinyEmbedder(1), model_path)
    with pytest.raises(Exception):  # noqa: B017 - whatever ONNX Runtime raises for an empty calibration set
        quantize_int8(model_path, tmp_path / "models" / "tiny-int8" / "model.onnx", np.zeros((0, 3, 112, 112)))
    assert sha256_file(model_path) == old_sha
    assert json.loads(card_path.read_text())["source"]["sha256"] == old_sha

    # The next export that gets as far as its card replaces both.
    export_onnx(_TinyEmbedder(2), model_path)
    assert sha256_file(model_path) == old_sha
    victim = tmp_path / "victim.txt"
    victim.write_text("kept")
    for folder in (model_path.parent, model_path.parent / ".export-staging"):  # the card is not written by a known name
        (folder / "card.json.partial").symlink_to(victim)
    _card(model_path)
    new_sha = sha256_file(model_path)
    assert new_sha != old_sha and json.loads(card_path.read_text())["source"]["sha256"] == new_sha
    assert victim.read_text() == "kept"
    (model_path.parent / "card.json.partial").unlink()
    assert sorted(path.name for path in model_path.parent.iterdir()) == ["card.json", "model.onnx"]


def test_a_relative_data_root_is_found_where_the_shared_folder_is(tmp_path, monkeypatch):
    shared = tmp_path / "elsewhere" / "shared"
    (shared / "data" / "lfw").mkdir(parents=True)
    (tmp_path / "work").mkdir()
    monkeypatch.chdir(tmp_path / "work")
    monkeypatch.setenv("BIOMETRICS_SHARED", str(shared))
    assert training_faces.resolve_data_root("../shared/data") == shared / "data"
    assert training_faces.resolve_data_root(str(tmp_path)) == tmp_path  # absolute: as given

    # The LFW folder is there but not its pairs.txt; no data folder at all: both say where they looked.
    for root, missing in (("../shared/data", shared / "data" / "lfw"), (str(tmp_path / "none"), tmp_path / "none")):
        with pytest.raises(DataError, match="dataset folder not found; set BIOMETRICS_SHARED") as error:
            training_faces.gather_sources({"root": root, "lfw": {"exclude_folds": []}})
        assert str(error.value).startswith(f"{missing}:")


def test_the_default_data_root_reaches_the_real_shared_folder_from_anywhere(tmp_path, monkeypatch):
    if not (SHARED / "data" / "lfw" / "pairs.txt").is_file():
        pytest.skip("../shared/data/lfw not available")
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("BIOMETRICS_SHARED", str(SHARED))
    sources = training_faces.gather_sources({"lfw": {"exclude_folds": list(range(2, 11))}, "limit": 3})
    assert len(sources) == 3 and all(source.path.is_file() for source in sources)
