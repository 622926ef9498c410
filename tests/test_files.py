"""Atomic replacement and owner-only files: what the gallery, model cache, checkpoints and face caches rely on."""

import errno
import os
import stat
import subprocess
import sys

import pytest

from biometrics.files import (
    create_private_file,
    make_private_folders,
    open_output,
    open_private,
    read_regular_file,
    replacing,
    write_atomically,
)


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


@pytest.mark.parametrize("private", [False, True])
def test_a_link_planted_where_a_file_is_written_is_never_written_through(tmp_path, monkeypatch, private):
    """In a folder others can write, a link at the temporary file's name must not make the writer empty or
    overwrite the file it points to: the name cannot be guessed, and were it guessed, the file is made new."""
    victim = tmp_path / "victim"
    victim.write_bytes(b"precious")
    target = tmp_path / "shared" / "model.onnx"
    target.parent.mkdir()
    (target.parent / f".model.{os.getpid()}.partial.onnx").symlink_to(victim)  # a name a writer once used
    write_atomically(target, b"new", private=private)
    assert target.read_bytes() == b"new" and not target.is_symlink() and victim.read_bytes() == b"precious"

    monkeypatch.setattr("biometrics.files.secrets.token_hex", lambda size: "guessed")
    (target.parent / ".model.guessed.partial.onnx").symlink_to(victim)
    with pytest.raises(FileExistsError):
        write_atomically(target, b"newer", private=private)
    assert target.read_bytes() == b"new" and victim.read_bytes() == b"precious"


@pytest.mark.skipif(os.getuid() != 0, reason="making a link another user's needs root")
def test_an_output_never_follows_a_link_another_user_made(tmp_path):
    """--events FILE in a folder others can write: their link would have the user empty a file of theirs. The
    user's own links and root's (/dev/stdout) are followed."""
    victim = tmp_path / "victim"
    victim.write_text("precious")
    planted = tmp_path / "events.jsonl"
    planted.symlink_to(victim)
    os.lchown(planted, 4321, 4321)
    with pytest.raises(PermissionError, match="a symbolic link another user made: not followed"):
        open_private(planted)
    assert victim.read_text() == "precious"
    own = tmp_path / "mine.jsonl"
    own.symlink_to(victim)
    os.close(open_private(own))
    assert victim.read_text() == ""


def test_a_report_file_on_a_full_disk_keeps_the_last_one_and_names_itself(tmp_path):
    """A rerun of a report on a full disk left the old report.json empty and the error named no file."""
    report = write_atomically(tmp_path / "report.json", b'{"old": true}')
    with pytest.raises(OSError) as failure, open_output(report) as file:
        file.write('{"new"')
        raise OSError(errno.ENOSPC, "No space left on device")  # as a flush on a full disk does, naming no file
    assert failure.value.errno == errno.ENOSPC and failure.value.filename == str(report)
    assert report.read_bytes() == b'{"old": true}' and os.listdir(tmp_path) == ["report.json"]


def test_reading_a_small_file_reserves_no_more_than_its_size(tmp_path):
    """read(limit) allocated the whole limit (256 MiB for images) before reading a 300 KB photo, which failed under
    a memory limit (ulimit -v) that the rest of the command fits in."""
    photo = tmp_path / "photo.jpg"
    photo.write_bytes(b"\xff" * 300_000)
    code = (
        "import resource, sys\n"
        "from biometrics.files import read_regular_file\n"
        "used = int(open('/proc/self/statm').read().split()[0]) * resource.getpagesize()\n"
        "resource.setrlimit(resource.RLIMIT_AS, (used + (64 << 20),) * 2)\n"
        "print(len(read_regular_file(sys.argv[1], 1 << 30)))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(photo)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and proc.stdout == "300000\n", proc.stderr
    assert read_regular_file(photo, 300_000) == photo.read_bytes()


def test_a_report_to_a_device_is_written_to_it_not_replaced(tmp_path):
    """plot_roc(curves, "/dev/stdout") must write to the device: replacing it (here a link to /dev/null, so a
    regression harms nothing) would put a file in its place."""
    device = tmp_path / "out"
    device.symlink_to("/dev/null")
    with open_output(device, "wb") as file:
        file.write(b"a plot")
    assert device.is_symlink() and os.readlink(device) == "/dev/null"
    with pytest.raises(ValueError, match="not mode 'a'"), open_output(tmp_path / "log.txt", "a"):
        pass
