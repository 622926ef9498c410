"""Atomic replacement and owner-only files: what the gallery, model cache, checkpoints and face caches rely on."""

import os
import stat

import pytest

from biometrics.files import create_private_file, make_private_folders, replacing, write_atomically


def mode(path):
    return stat.S_IMODE(path.stat().st_mode)


def test_a_failed_write_leaves_the_old_file_and_no_partial(tmp_path):
    target = write_atomically(tmp_path / "model.onnx", b"old")
    with pytest.raises(RuntimeError), replacing(target) as partial:
        partial.write_bytes(b"half of the new")
        raise RuntimeError("killed halfway")
    assert target.read_bytes() == b"old"
    assert os.listdir(tmp_path) == ["model.onnx"]


def test_the_temporary_file_keeps_the_suffix_writers_go_by(tmp_path):
    """np.save / np.savez append .npy / .npz to a path without it, which would break the rename."""
    import numpy as np

    with replacing(tmp_path / "crops.npy") as partial:
        np.save(partial, np.arange(3))
    assert np.load(tmp_path / "crops.npy").tolist() == [0, 1, 2]
    assert os.listdir(tmp_path) == ["crops.npy"]


def test_private_files_and_folders_are_owner_only_whatever_the_umask(tmp_path):
    previous = os.umask(0)
    try:
        face = write_atomically(tmp_path / "cache" / "faces" / "meta.json", b"{}", private=True)
        gallery = tmp_path / "data" / "gallery.db"
        create_private_file(gallery)
    finally:
        os.umask(previous)
    assert mode(face) == 0o600 and mode(face.parent) == 0o700 and mode(face.parent.parent) == 0o700
    assert mode(gallery) == 0o600 and mode(gallery.parent) == 0o700


def test_existing_folders_keep_their_modes(tmp_path):
    """A user's own folder (e.g. their home) is theirs to set; only folders we create are made 0700."""
    tmp_path.chmod(0o755)
    make_private_folders(tmp_path / "new")
    assert mode(tmp_path) == 0o755 and mode(tmp_path / "new") == 0o700
