"""Writing files so that a killed process never leaves half of one, owner-only files for face data, and reading
a file a user names without letting a device or FIFO hang or flood the process.

Used for everything the toolkit writes that a later run reads back (prepared models, checkpoints, exported
models, face caches, the gallery file): the reader finds either the old file or the new one, never a truncated
file under the real name.
"""

from __future__ import annotations

import errno
import os
import secrets
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import IO


def make_private_folders(folder: Path) -> Path:
    """Create ``folder`` and its missing parents owner-only (0700). Folders that exist are left as they are (a
    user's folder is theirs to set); one made meanwhile by another process is fine."""
    for path in [path for path in (folder, *folder.parents) if not path.exists()][::-1]:
        try:
            path.mkdir(mode=0o700)
        except FileExistsError:
            continue
        path.chmod(0o700)  # mkdir's mode is filtered by the umask
    return folder


def make_folders(folder: Path, *, private: bool) -> Path:
    """Create ``folder``'s missing folders: owner-only (``make_private_folders``) or with the default modes."""
    if private:
        return make_private_folders(folder)
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def tighten(path: Path, mode: int) -> None:
    """Set ``path``'s mode to ``mode`` if it is ours to change (a shared read-only cache is left as it is)."""
    try:
        if path.stat().st_mode & 0o777 != mode:
            path.chmod(mode)
    except OSError:
        pass


def open_private(path: Path, *, truncate: bool = True) -> int:
    """A descriptor to write ``path``, a file about to hold faces or names: created 0600 in folders created 0700,
    and a regular file already there made 0600 before anything is written (a device or FIFO such as
    ``/dev/stdout`` is left as it is). ``truncate``: emptied, for writing from the start. A symbolic link at
    ``path`` is followed only if it is the user's own or root's (``/dev/stdout``): one that someone else planted
    in a folder others can write could otherwise make the user empty or overwrite any file of theirs."""
    make_private_folders(path.parent)
    flags = os.O_WRONLY | os.O_CREAT | (os.O_TRUNC if truncate else 0)
    try:
        descriptor = os.open(path, flags | os.O_NOFOLLOW, 0o600)
    except OSError as exc:
        if exc.errno != errno.ELOOP:
            raise
        if os.lstat(path).st_uid not in (0, os.getuid()):
            raise PermissionError(errno.EPERM, "a symbolic link another user made: not followed", str(path)) from None
        descriptor = os.open(path, flags, 0o600)
    try:
        if stat.S_ISREG(os.fstat(descriptor).st_mode):
            os.fchmod(descriptor, 0o600)  # O_CREAT's mode is for a new file only
    except OSError:
        os.close(descriptor)
        raise
    return descriptor


@contextmanager
def open_output(path: Path, mode: str = "w", *, private: bool = False, **options) -> Iterator[IO]:
    """``open(path, mode)`` (``w`` or ``wb``) for writing a report's file, its missing folders created, written whole
    or not at all (``replacing``): a full disk leaves the previous report's file as it was, not a truncated one.
    ``private``: 0600, in folders created 0700, for a report about the user's own people. A device or pipe
    (``/dev/stdout``) is written to as it is: it cannot be replaced."""
    if mode not in ("w", "wb"):
        raise ValueError(f"open_output writes a whole file ('w' or 'wb'), not mode {mode!r}")
    path = Path(path)
    if path.exists() and not path.is_file():
        with open(path, mode, **options) as file:
            yield file
        return
    with replacing(path, private=private) as partial, open(partial, mode, **options) as file:
        yield file


def create_private_file(path: Path) -> None:
    """Create ``path`` (if missing) 0600, in folders created 0700; an existing file keeps its content."""
    os.close(open_private(path, truncate=False))


@contextmanager
def replacing(path: Path, *, private: bool = False) -> Iterator[Path]:
    """Yield a temporary path beside ``path`` to write the new file to; it replaces ``path`` (one rename) when
    the block succeeds and is removed when it fails. ``private``: the file is 0600 and missing folders 0700
    (face data); otherwise missing folders are created with the default modes. The temporary file is created
    here, new (``O_EXCL``: never through a link), under a name nobody can guess: in a folder others can write, no
    one can have the writer empty or overwrite another file by planting a link where it will write."""
    make_folders(path.parent, private=private)
    partial = path.with_name(f".{path.stem}.{secrets.token_hex(8)}.partial{path.suffix}")  # writers go by the suffix
    try:
        flags = os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW
        descriptor = os.open(partial, flags, 0o600 if private else 0o666)
        try:
            if private:
                os.fchmod(descriptor, 0o600)  # whatever the umask, the owner can write it
        finally:
            os.close(descriptor)
        yield partial
        os.replace(partial, path)
    except OSError as exc:
        if exc.errno in NO_ROOM and exc.filename in (None, str(partial)):  # the file asked for, not our temporary
            raise OSError(exc.errno, exc.strerror, str(path)) from None
        raise
    finally:
        partial.unlink(missing_ok=True)


NO_ROOM = frozenset({errno.ENOSPC, errno.EDQUOT, errno.EFBIG, errno.EIO})
"""A write that failed for want of room (or a failing device): ``replacing`` names the file asked for in it."""


def write_atomically(path: Path, payload: bytes, *, private: bool = False) -> Path:
    """Write ``payload`` to ``path`` through ``replacing``."""
    with replacing(path, private=private) as partial:
        partial.write_bytes(payload)
    return path


def disk_full(folder: Path) -> bool:
    """Whether the file system holding ``folder`` has no room left (less than 64 KiB: not a page or frame more), to
    tell a user why a write failed that reported no reason (SQLite's I/O error, a video writer's silence)."""
    try:
        info = os.statvfs(folder)
    except OSError:
        return False
    return info.f_bavail * info.f_frsize < 64 * 1024


def read_own_file(path: Path) -> bytes:
    """The bytes of ``path`` if only this user can have written them: a regular file (not a link) owned by the
    user and not writable by group or others. For the cache's prepared models, which run without a card's
    checksum: a file that someone else made or could have changed is an ``OSError``, and is prepared again."""
    with open(os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_NONBLOCK), "rb") as file:
        info = os.fstat(file.fileno())
        if not stat.S_ISREG(info.st_mode) or info.st_uid != os.getuid() or info.st_mode & 0o022:
            raise PermissionError(errno.EPERM, "not a file only this user can have written", str(path))
        return file.read()


class UnreadableFile(Exception):
    """A named file that cannot be read as one: its reason, as the end of a sentence about it."""


def read_regular_file(path: str | os.PathLike, limit: int) -> bytes:
    """The bytes of a regular file of at most ``limit`` bytes. A device (``/dev/zero``), FIFO or directory is
    refused, and so is a larger file, before anything is read: neither can hang the process or fill its memory.
    ``UnreadableFile`` says why not."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)  # O_NONBLOCK: a FIFO opens without waiting for a writer
        try:
            info = os.fstat(fd)
            if stat.S_ISDIR(info.st_mode):
                raise UnreadableFile("is a directory")
            if not stat.S_ISREG(info.st_mode):
                raise UnreadableFile("not a regular file (a device, FIFO or socket)")
            if info.st_size > limit:
                raise UnreadableFile(f"file too large ({_size(info.st_size)}; limit {_size(limit)})")
            with open(fd, "rb", closefd=False) as file:  # the size checked, even if the file grew since (and
                return file.read(info.st_size)  # read(limit) would reserve all of limit, 256 MiB, up front)
        finally:
            os.close(fd)
    except FileNotFoundError:
        raise UnreadableFile("no such file") from None
    except OSError as exc:
        raise UnreadableFile(f"cannot read file ({exc.strerror or exc})") from None


def _size(count: int) -> str:
    return f"{count / 2**20:,.0f} MiB" if count >= 2**20 else f"{count:,} bytes"
