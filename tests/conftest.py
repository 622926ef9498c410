"""Shared fixtures: real models, real images from ../shared (skipped with a reason if it is absent)."""

from __future__ import annotations

import hashlib
import re
import signal
import subprocess
import textwrap
from pathlib import Path

import pytest

from biometrics.imaging import load_image
from biometrics.pipeline import FacePipeline

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared"
SAMPLES = SHARED / "data" / "samples"

# Some tests press Ctrl-C (SIGINT) in this process or in a `biometrics` child. A test run started in the background
# by a shell without job control (`pytest &` in a script, as CI may do) inherits SIGINT ignored, and so would every
# child: give it Python's usual handler (which children then start with too).
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)


def _expected_sha256(relative: str) -> str | None:
    sums = SHARED / "SHA256SUMS"
    for line in sums.read_text().splitlines() if sums.is_file() else []:
        digest, name = line.split(maxsplit=1)
        if name.removeprefix("./") == relative:
            return digest
    return None


def shared_file(relative: str) -> Path:
    """A file from ../shared: skip if ../shared is absent, fail if the file's checksum is wrong."""
    path = SHARED / relative
    if not path.is_file():
        pytest.skip(f"../shared/{relative} not available (tests need the shared data beside the checkout)")
    expected = _expected_sha256(relative)
    if expected is not None:
        assert hashlib.sha256(path.read_bytes()).hexdigest() == expected, f"../shared/{relative}: wrong checksum"
    return path


@pytest.fixture
def sample():
    """sample('obama.jpg') -> Path of a verified sample photo."""
    return lambda name: shared_file(f"data/samples/{name}")


@pytest.fixture(scope="session")
def pipeline() -> FacePipeline:
    """The default pipeline with real models, built once per test session."""
    return FacePipeline(threads=2)


@pytest.fixture
def no_face_photo(tmp_path, sample) -> Path:
    """A real photo without a face: the lower half of obama.jpg (suit and background)."""
    import cv2

    image = load_image(sample("obama.jpg"))
    path = tmp_path / "no_face.jpg"
    cv2.imwrite(str(path), image[560:])
    return path


def code_blocks(path: Path, language: str) -> list[str]:
    """The ``language`` code blocks of a Markdown file (indented ones too, dedented): the docs' examples."""
    pattern = rf"^([ \t]*)```{language}\n(.*?)^\1```"
    return [textwrap.dedent(body) for _, body in re.findall(pattern, path.read_text(), flags=re.M | re.S)]


@pytest.fixture
def small_disk(tmp_path):
    """A 4 MiB file system of its own (tmpfs), where a test may fill the disk; skipped where it cannot be mounted."""
    folder = tmp_path / "disk"
    folder.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(folder)], capture_output=True).returncode:
        pytest.skip("cannot mount a tmpfs here (not root?)")
    try:
        yield folder
    finally:
        subprocess.run(["umount", str(folder)], check=True)
