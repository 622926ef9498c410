"""Benchmark archives, unpacked once into the cache and checked against their SHA-256."""

from __future__ import annotations

import shutil
import tarfile
import tempfile
from pathlib import Path

from biometrics.errors import DataError
from biometrics.registry import cache_dir, sha256_file


def unpack_once(archive: Path, expected_sha256: str | None = None, cache: Path | None = None) -> Path:
    """Unpack ``archive`` into ``<cache>/datasets/<stem>-<sha>/`` unless already there; return that folder.

    The checksum is verified before the first unpack; a half-finished unpack (killed process) is never
    mistaken for a complete one because the folder is renamed into place only at the end.
    """
    if not archive.is_file():
        raise DataError(f"{archive}: dataset archive not found (give its folder with --data, or set BIOMETRICS_SHARED)")
    stem = archive.name.split(".")[0]
    digest = expected_sha256 or sha256_file(archive)
    target = (cache or cache_dir()) / "datasets" / f"{stem}-{digest[:12]}"
    if target.is_dir():
        return target
    actual = sha256_file(archive) if expected_sha256 else digest
    if actual != digest:
        raise DataError(f"{archive}: SHA-256 {actual[:16]}… does not match the expected {digest[:16]}…")
    target.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(dir=target.parent, prefix=f".{stem}-"))
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(staging, filter="data")
        staging.rename(target)
    except (tarfile.TarError, OSError) as exc:
        shutil.rmtree(staging, ignore_errors=True)
        raise DataError(f"{archive}: cannot unpack ({exc})") from None
    return target
