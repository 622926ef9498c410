"""The persistent gallery: people, their templates and the embedder that made them, in one SQLite file.

Kill-safety comes from SQLite itself: WAL journal, ``synchronous=FULL`` and one transaction per change, so a
process killed at any moment leaves either the whole enrolment or none of it, and never a corrupt file. The
file is created 0600 before SQLite opens it (SQLite gives its -wal and -shm files the same mode), an existing
empty file that enrolment makes a gallery is made 0600 too, and a folder we create for it is 0700. Deleted rows
are overwritten (``secure_delete``) and checkpointed out of the WAL.

Only enrolment makes a file a gallery; opening one to read it takes no write lock (WAL readers proceed while
another process writes) and never changes the file.
"""

from __future__ import annotations

import json
import os
import sqlite3
import time
import unicodedata
from collections.abc import Iterator, Sequence
from contextlib import contextmanager, suppress
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import cv2
import numpy as np

from biometrics.errors import AlreadyEnrolled, BiometricsError, GalleryError, OutputError
from biometrics.face import Face
from biometrics.files import create_private_file, disk_full, replacing, tighten
from biometrics.gallery.cipher import KEY_BYTES, KEY_CHECK, KEY_ENV, TemplateCipher

GALLERY_ENV = "BIOMETRICS_GALLERY"
SCHEMA_VERSION = "1"
SEAL_VERSION = "2"
"""How sealed values are bound (meta ``seal``): in a gallery made since, to the gallery, their person, and the photo and
face box they came from; in one made before (no ``seal``), to their person only."""
CANONICAL_NAMES = "nfc"
"""Marks a gallery made since names are stored canonical (``check_name``), so a name is found by one lookup;
one made before may hold a name in another normal form, found by scanning the non-ASCII ones."""
MAX_NAME_LENGTH = 100
UNKNOWN = "unknown"
BUSY_TIMEOUT_S = 10.0
"""How long a change waits for another process's write to finish before the gallery is reported busy."""

SCHEMA = """
CREATE TABLE meta (key TEXT PRIMARY KEY, value BLOB NOT NULL);
CREATE TABLE people (
    id INTEGER PRIMARY KEY,
    name TEXT NOT NULL UNIQUE,
    enrolled_at TEXT NOT NULL
);
CREATE TABLE templates (
    id INTEGER PRIMARY KEY,
    person_id INTEGER NOT NULL REFERENCES people(id) ON DELETE CASCADE,
    embedder_name TEXT NOT NULL,
    embedder_sha256 TEXT NOT NULL,
    dim INTEGER NOT NULL,
    embedding BLOB NOT NULL,  -- float32 vector, AES-GCM sealed when the gallery has a key
    source TEXT NOT NULL,     -- file name of the image it came from
    face_box TEXT NOT NULL,   -- JSON [x1, y1, x2, y2] of the face used, so reembed finds it again
    image BLOB,               -- PNG of the face and a margin around it, only with --keep-images (sealed with a key)
    created_at TEXT NOT NULL
);
CREATE INDEX templates_by_person ON templates(person_id);
"""


PERSON_ROWS = (
    "SELECT p.name, COUNT(t.id), COUNT(t.image), p.enrolled_at, COALESCE(MAX(t.created_at), p.enrolled_at)"
    " FROM people p LEFT JOIN templates t ON t.person_id = p.id"
)
"""A ``Person`` per row, grouped by person (``GROUP BY p.id``)."""


def gallery_exists(path: Path) -> bool:
    """Whether there is a gallery (or something claimed as one) at ``path``: no file, or an empty one (prepared
    0600 beforehand, as ``install -m 600 /dev/null gallery.db`` makes it), is no gallery yet; the first enrolment
    makes it one."""
    return path.exists() and not (path.is_file() and path.stat().st_size == 0)


def default_gallery_path() -> Path:
    """``BIOMETRICS_GALLERY`` or ~/.local/share/biometrics/gallery.db (XDG_DATA_HOME respected)."""
    if os.environ.get(GALLERY_ENV):
        return Path(os.environ[GALLERY_ENV])
    return Path(os.environ.get("XDG_DATA_HOME") or Path.home() / ".local" / "share") / "biometrics" / "gallery.db"


@dataclass(frozen=True)
class EmbedderId:
    """Which model made a template: templates are only comparable with the exact same model file."""

    name: str
    sha256: str
    dim: int

    @classmethod
    def of(cls, embedder) -> EmbedderId:
        """The id of a pipeline's embedder (``pipeline.embedder``)."""
        dim = embedder.session.get_outputs()[0].shape[-1]
        if not isinstance(dim, int):  # a dynamic output axis: ask the model
            dim = embedder.embed(np.zeros((1, *embedder.size, 3), np.uint8)).shape[1]
        return cls(embedder.name, embedder.model.source_sha256, dim)

    def __str__(self) -> str:
        return f"{self.name} (sha256 {self.sha256[:12]}, {self.dim}-d)"


KEPT_MARGIN = 1.0
"""A kept image is the face and this many face widths (heights) around it on each side: enough context for a
detector to find the face again (``gallery reembed``), without the rest of the photo."""

KEPT_FACE_MAX_PX = 160
"""A kept face wider than this is scaled down to it: more than the 112 px an embedder's crop takes, and accuracy was
flat from faces 49 px wide to LFW's 93 (``reports/lfw-face-size``). A close-up kept whole stored more than the photo
itself (the samples' ``obama3.jpg``: its region's PNG outweighed the JPEG; tests/test_gallery.py), and a gallery
should hold no more of a face than it needs."""


@dataclass(frozen=True)
class NewTemplate:
    """One embedding to enrol, with where it came from (``face_box`` in the kept image's coordinates when an
    image is kept, else in the source image's) and, if kept, the image as PNG."""

    embedding: np.ndarray = field(repr=False)  # a template, like ``Face.embedding``, is never printed
    source: str
    face_box: tuple[float, float, float, float]
    image_png: bytes | None = field(default=None, repr=False)

    @classmethod
    def of_face(cls, face: Face, image: np.ndarray, source: str, keep_image: bool = False) -> NewTemplate:
        """The template of an embedded ``face`` found in ``image`` (BGR); with ``keep_image``, the region of
        ``image`` around the face (``KEPT_MARGIN``), the face at most ``KEPT_FACE_MAX_PX`` wide, is kept with it."""
        if face.embedding is None:
            raise ValueError("a face to enrol needs an embedding: run FacePipeline.analyze (or embed) first")
        x1, y1, x2, y2 = (float(v) for v in face.box)
        if not keep_image:
            return cls(face.embedding, source, (x1, y1, x2, y2))
        dx, dy = KEPT_MARGIN * (x2 - x1), KEPT_MARGIN * (y2 - y1)
        height, width = image.shape[:2]
        left, top = max(0, round(x1 - dx)), max(0, round(y1 - dy))
        right, bottom = min(width, round(x2 + dx)), min(height, round(y2 + dy))
        region, box = image[top:bottom, left:right], (x1 - left, y1 - top, x2 - left, y2 - top)
        scale = KEPT_FACE_MAX_PX / (x2 - x1)
        if scale < 1:
            size = (max(1, round(region.shape[1] * scale)), max(1, round(region.shape[0] * scale)))
            region, box = cv2.resize(region, size, interpolation=cv2.INTER_AREA), tuple(v * scale for v in box)
        return cls(face.embedding, source, box, cv2.imencode(".png", region)[1].tobytes())


@dataclass(frozen=True)
class Person:
    name: str
    templates: int
    kept_images: int
    enrolled_at: str
    updated_at: str


@dataclass(frozen=True)
class Templates:
    """All templates of one embedder, grouped by person: row i belongs to ``names[owners[i]]``."""

    names: tuple[str, ...]
    owners: np.ndarray = field(repr=False)  # int64, non-decreasing
    vectors: np.ndarray = field(repr=False)  # float32, N x dim, unit length; never printed

    @classmethod
    def empty(cls, dim: int) -> Templates:
        return cls((), np.empty(0, dtype=np.int64), np.empty((0, dim), dtype=np.float32))


@dataclass(frozen=True)
class KeptImage:
    template_id: int
    name: str
    source: str
    face_box: tuple[float, float, float, float]
    image_png: bytes = field(repr=False)


def canonical_name(name: str) -> str:
    """A name as names are compared: trimmed, in Unicode NFC."""
    return unicodedata.normalize("NFC", name.strip())


def check_name(name: str) -> str:
    """A person's name as stored: trimmed, in Unicode NFC (so "José" typed on one system and a folder named on
    macOS, in NFD, are one name), printable, not the word the CLI uses for 'nobody'."""
    name = canonical_name(name)
    if not name:
        raise GalleryError("a person's name cannot be empty")
    if len(name) > MAX_NAME_LENGTH or not name.isprintable():
        raise GalleryError(f"invalid name {name[:40]!r}: at most {MAX_NAME_LENGTH} printable characters")
    if name.casefold() == UNKNOWN:
        raise GalleryError(f"'{UNKNOWN}' is reserved: it is what identify reports for a face nobody matches")
    return name


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


def _make_private(path: Path) -> None:
    """Owner-only modes for an existing file becoming a gallery, and for the -wal and -shm SQLite made beside it."""
    for file in (path, path.with_name(f"{path.name}-wal"), path.with_name(f"{path.name}-shm")):
        if file.exists():
            file.chmod(0o600)


def _file_state(path: Path) -> tuple:
    """What changes when a file is written: its inode, size and modification time."""
    info = path.stat()
    return info.st_ino, info.st_size, info.st_mtime_ns


def _is_busy(exc: sqlite3.Error) -> bool:
    """Whether SQLite gave up waiting for another connection's lock (no fault of the file)."""
    return _primary_code(exc) == sqlite3.SQLITE_BUSY


def _primary_code(exc: sqlite3.Error) -> int | None:
    code = getattr(exc, "sqlite_errorcode", None)
    return None if code is None else code & 0xFF


UNIT_LENGTH_TOLERANCE = 1e-3
"""How far from 1 a template's length may be: embedders normalise their output, float32 rounding aside."""


class Gallery:
    """A gallery file, opened for one command or one live session. Use as a context manager, from the thread that
    opened it (SQLite's rule: open one per thread)."""

    def __init__(self, path: str | os.PathLike, *, key: bytes | None = None, create: bool = False):
        """Open the gallery at ``path``; only with ``create`` is a missing or empty file made into one. ``key``:
        the 32 bytes of an encrypted gallery's AES-256 key (``load_key`` reads one)."""
        self.path = Path(path)
        if key is not None and (not isinstance(key, bytes) or len(key) != KEY_BYTES):
            raise GalleryError(f"a gallery key is {KEY_BYTES} bytes (AES-256; see biometrics.gallery.load_key)")
        if key is not None:
            TemplateCipher(key)  # refused without the 'secure' extra before any file is made
        if self.path.exists() and not self.path.is_file():  # checked before SQLite opens (or we chmod) a device
            raise GalleryError(f"{self.path}: not a regular file (a directory, device or FIFO), not a gallery")
        if not self.path.exists():
            if not create:
                raise GalleryError(
                    f"{self.path}: no gallery here (enrol someone first: biometrics enroll NAME IMAGE...)"
                )
            try:
                create_private_file(self.path)
            except OSError as exc:
                raise GalleryError(f"{self.path}: cannot create gallery ({exc.strerror or exc})") from None
        try:
            db = sqlite3.connect(self.path, isolation_level=None, timeout=BUSY_TIMEOUT_S)
        except sqlite3.Error as exc:
            raise GalleryError(f"{self.path}: cannot open gallery ({exc})") from None
        try:
            self._connect(db, key, create)
        except sqlite3.DatabaseError as exc:
            if _primary_code(exc) != sqlite3.SQLITE_CANTOPEN or self._wal_state() is None:
                raise self._failure(exc) from None
            try:
                self._connect(self._snapshot(), key, create)  # a read-only folder: see _snapshot
            except sqlite3.DatabaseError as exc:
                raise self._failure(exc) from None
        if create:  # to be written: owner-only, even a gallery copied in with looser modes
            for file in (self.path, *(self.path.with_name(f"{self.path.name}-{part}") for part in ("wal", "shm"))):
                tighten(file, 0o600)

    def _connect(self, db: sqlite3.Connection, key: bytes | None, create: bool) -> None:
        self._db = db
        try:
            for pragma in ("synchronous=FULL", "foreign_keys=ON", "secure_delete=ON"):  # per connection: no write
                self._db.execute(f"PRAGMA {pragma}")
            if create:
                self._initialise_if_empty(key)
            self.cipher = self._unlock(key)
        except BaseException:
            self._db.close()
            raise

    def _snapshot(self) -> sqlite3.Connection:
        """The gallery read whole into memory, when SQLite cannot make the -shm it reads through beside it (a
        read-only folder or file system) and no -wal there holds changes not in the file. The file is read as it
        is (``immutable``: no locks) and kept only if it did not change meanwhile: a read-only mount may still be
        written through another (a kiosk's host), and a copy taken mid-write could mix two states. The copy
        refuses writes (``query_only``), so enrolling says the gallery is read-only."""
        for _ in range(3):
            before = self._wal_state(), _file_state(self.path)
            source = sqlite3.connect(f"{self.path.resolve().as_uri()}?immutable=1", uri=True)
            memory = sqlite3.connect(":memory:", isolation_level=None)
            try:
                source.backup(memory)
                unchanged = (self._wal_state(), _file_state(self.path)) == before and before[0] is not None
            except sqlite3.DatabaseError:  # a page caught mid-write
                unchanged = False
            finally:
                source.close()
            if unchanged:
                memory.execute("PRAGMA query_only = ON")
                return memory
            memory.close()
        raise GalleryError(
            f"{self.path} changed while it was being read from a folder this process cannot write; try again"
        )

    def _wal_state(self) -> tuple | None:
        """The -wal beside the gallery, when it holds nothing the file lacks (absent or empty): as it stands, to see
        whether it changes; None when it holds changes (they are read through the -shm)."""
        try:
            wal = self.path.with_name(f"{self.path.name}-wal").stat()
        except FileNotFoundError:
            return ()
        return None if wal.st_size else (wal.st_ino, wal.st_mtime_ns)

    def _failure(self, exc: sqlite3.DatabaseError) -> BiometricsError:
        """What SQLite's error means for the user."""
        code = _primary_code(exc)
        if code == sqlite3.SQLITE_BUSY:
            return self._busy()
        if code == sqlite3.SQLITE_CANTOPEN:  # the file was opened: its -shm could not be made
            return GalleryError(
                f"{self.path}: cannot open the gallery's shared-memory file {self.path.name}-shm beside it "
                "(SQLite's WAL journal needs its folder writable, even to read, unless every change is checkpointed "
                "into the file: see `biometrics gallery export`)"
            )
        if code == sqlite3.SQLITE_READONLY:
            return self._unwritable()
        if code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
            return self._storage_failure(exc)
        return GalleryError(f"{self.path}: not a usable gallery ({exc})")

    def _storage_failure(self, exc: sqlite3.Error) -> BiometricsError:
        """The disk holding the gallery is full, or failing (SQLite reports a full quota as an I/O error): the
        gallery is as it was."""
        if _primary_code(exc) == sqlite3.SQLITE_FULL or disk_full(self.path.parent):
            return OutputError(
                f"{self.path}: no space left for the gallery (the disk is full); the gallery is unchanged: "
                "free some space and try again"
            )
        return GalleryError(
            f"{self.path}: disk I/O error ({exc}: a full quota, or a failing disk?); the gallery is unchanged"
        )

    def _busy(self) -> GalleryError:
        return GalleryError(f"{self.path} is busy: another process is writing to it; try again")

    def _unwritable(self) -> GalleryError:
        return GalleryError(f"{self.path} is read-only (the file, or the folder it is in): nothing changed")

    def __enter__(self) -> Gallery:
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def close(self) -> None:
        self._db.close()

    @contextmanager
    def _transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic change: all of it is on disk when this returns, none of it if anything failed."""
        try:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                if self._db.in_transaction:  # SQLite rolls back by itself after some errors (a full disk)
                    self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")
        except sqlite3.OperationalError as exc:
            code = _primary_code(exc)
            if code not in (sqlite3.SQLITE_BUSY, sqlite3.SQLITE_READONLY, sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
                raise
            failure = self._failure(exc)  # judged first: releasing the -wal frees space, and so the "disk full" sign
            if code in (sqlite3.SQLITE_FULL, sqlite3.SQLITE_IOERR):
                self._release_wal()
            raise failure from None

    def _release_wal(self) -> None:
        """After a change the full disk refused: the frames it left in the -wal are rolled back but keep their
        space (all that was free, on a full disk) until the next checkpoint; reset the -wal now, if no reader holds
        it, so the disk is as full as it was before, not fuller."""
        with suppress(sqlite3.Error):
            self._db.execute("PRAGMA busy_timeout = 0")  # a reader (live) would hold it: not worth waiting for
            try:
                self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)")
            finally:
                self._db.execute(f"PRAGMA busy_timeout = {int(BUSY_TIMEOUT_S * 1000)}")

    def _initialise_if_empty(self, key: bytes | None) -> None:
        """Make a new (empty) file a gallery: WAL journal (kept in the file), owner-only modes, the schema, under
        the write lock, so concurrent first enrolments agree. A file with tables is left as it is (``_unlock`` judges
        it), so a foreign SQLite file is never changed."""
        count_tables = "SELECT COUNT(*) FROM sqlite_master"
        if self._db.execute(count_tables).fetchone()[0]:
            return
        self._use_wal()
        with self._transaction() as db:
            if db.execute(count_tables).fetchone()[0]:  # another enrolment initialised it meanwhile
                return
            _make_private(self.path)
            for statement in filter(str.strip, SCHEMA.split(";")):
                db.execute(statement)
            db.execute("INSERT INTO meta VALUES ('schema_version', ?)", (SCHEMA_VERSION,))
            db.execute("INSERT INTO meta VALUES ('names', ?)", (CANONICAL_NAMES,))
            db.execute("INSERT INTO meta VALUES ('seal', ?)", (SEAL_VERSION,))
            db.execute("INSERT INTO meta VALUES ('gallery_id', ?)", (os.urandom(16).hex(),))
            if key is not None:
                db.execute("INSERT INTO meta VALUES ('key_check', ?)", (TemplateCipher(key).seal(KEY_CHECK, b""),))

    def _use_wal(self) -> None:
        """Switch to the WAL journal. Of two first enrolments switching at the same instant, SQLite refuses one at
        once (waiting could deadlock): it tries again until the other is done, then the switch is a no-op."""
        deadline = time.monotonic() + BUSY_TIMEOUT_S
        while True:
            try:
                self._db.execute("PRAGMA journal_mode=WAL")
                return
            except sqlite3.OperationalError as exc:
                if not _is_busy(exc) or time.monotonic() > deadline:
                    raise
            time.sleep(0.01)

    def _unlock(self, key: bytes | None) -> TemplateCipher | None:
        try:
            meta = dict(self._db.execute("SELECT key, value FROM meta"))
        except sqlite3.OperationalError:  # an empty file, or some other SQLite database
            raise GalleryError(
                f"{self.path}: not a gallery (an empty file, or an SQLite file without the gallery's tables)"
            ) from None
        if meta.get("schema_version") != SCHEMA_VERSION:
            raise GalleryError(f"{self.path}: unsupported gallery version {meta.get('schema_version')!r}")
        self._names_canonical = meta.get("names") == CANONICAL_NAMES
        self._gallery_id = meta.get("gallery_id") if meta.get("seal") == SEAL_VERSION else None
        check = meta.get("key_check")
        if check is None:
            if key is not None:
                raise GalleryError(f"{self.path} is not encrypted but a key was given (its templates are in clear)")
            return None
        if key is None:
            raise GalleryError(f"{self.path} is encrypted: set {KEY_ENV} or pass --key-file")
        cipher = TemplateCipher(key)
        if cipher.open(check, b"") != KEY_CHECK:
            raise GalleryError(f"wrong key for the encrypted gallery {self.path}")
        return cipher

    def _context(self, kind: bytes, name: str, source: str, face_box: str) -> bytes:
        """What a sealed value is bound to (AES-GCM's associated data): its kind and person, and in a gallery made
        since ``SEAL_VERSION``, the gallery and the photo and stored face box it came from. None of them can then be
        altered without the key, nor the value moved to another person, photo or gallery, unnoticed: a face box
        pointed at a bystander in a kept image would otherwise have `gallery reembed` enrol him."""
        if self._gallery_id is None:
            return kind + b"\0" + name.encode()
        return b"\0".join([kind, self._gallery_id.encode(), name.encode(), source.encode(), face_box.encode()])

    def _seal(self, data: bytes, kind: bytes, name: str, source: str, face_box: str) -> bytes:
        return data if self.cipher is None else self.cipher.seal(data, self._context(kind, name, source, face_box))

    def _open(self, data: bytes, kind: bytes, name: str, source: str, face_box: str) -> bytes:
        if self.cipher is None:
            return data
        plain = self.cipher.open(data, self._context(kind, name, source, face_box))
        if plain is None:
            raise GalleryError(f"{self.path}: a stored {kind.decode()} of '{name}' fails authentication (file altered)")
        return plain

    def embedders(self) -> list[EmbedderId]:
        rows = self._db.execute("SELECT DISTINCT embedder_name, embedder_sha256, dim FROM templates ORDER BY 1, 2")
        return [EmbedderId(*row) for row in rows]

    def embedder(self) -> EmbedderId | None:
        """The model that made the gallery's templates (None before any). Every change keeps a gallery to one model
        (enrolment refuses another's templates, a re-embedding replaces or drops them all), so the newest template
        tells: one lookup, where listing ``embedders()`` reads every template (29 ms at 100,000 templates,
        reports/gallery-scale)."""
        newest = "SELECT embedder_name, embedder_sha256, dim FROM templates ORDER BY id DESC LIMIT 1"
        row = self._db.execute(newest).fetchone()
        return None if row is None else EmbedderId(*row)

    def require_embedder(self, embedder: EmbedderId) -> None:
        """Refuse a pipeline whose templates could not be compared with the ones stored, as the newest template
        tells (``embedder``); ``templates`` checks every template it reads."""
        made_by = self.embedder()
        if made_by is not None and made_by != embedder:
            raise self._incomparable(embedder, [made_by])

    def _incomparable(self, embedder: EmbedderId, others: list[EmbedderId] | None = None) -> GalleryError:
        """The error for templates of ``others`` (default: every model but ``embedder`` the gallery holds now)."""
        others = others or [other for other in self.embedders() if other != embedder]
        if not others:  # re-embedded with ``embedder`` since it was read
            return GalleryError(f"{self.path} changed while it was being read; try again")
        return GalleryError(
            f"{self.path} holds templates made by {', '.join(map(str, others))}; this pipeline's embedder is "
            f"{embedder}, and templates of different models cannot be compared (use --embedder "
            f"{others[0].name}, or re-embed kept images with `biometrics gallery reembed`)"
        )

    def enroll(
        self, name: str, embedder: EmbedderId, templates: Sequence[NewTemplate], *, new_person: bool = False
    ) -> Person:
        """Add templates to ``name`` (created if new) in one transaction. ``new_person``: only if ``name`` is not
        enrolled yet, checked under the write lock (``AlreadyEnrolled`` if they are, even if another process
        enrolled them a moment ago)."""
        name = check_name(name)
        if not templates:
            raise GalleryError(f"no templates to enrol for '{name}'")
        vectors = [_checked_vector(template.embedding, embedder.dim) for template in templates]
        now = _now()
        with self._transaction() as db:
            self.require_embedder(embedder)
            stored = self._stored_name(name)  # one enrolled under another spelling of it, if any
            if stored is not None and new_person:
                raise AlreadyEnrolled(f"'{stored}' is enrolled already")
            name = stored or name
            db.execute("INSERT OR IGNORE INTO people (name, enrolled_at) VALUES (?, ?)", (name, now))
            (person_id,) = db.execute("SELECT id FROM people WHERE name = ?", (name,)).fetchone()
            for template, vector in zip(templates, vectors, strict=True):
                box = json.dumps([round(float(v), 1) for v in template.face_box])
                db.execute(
                    "INSERT INTO templates (person_id, embedder_name, embedder_sha256, dim, embedding, source,"
                    " face_box, image, created_at) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (
                        person_id,
                        embedder.name,
                        embedder.sha256,
                        embedder.dim,
                        self._seal(vector.tobytes(), b"template", name, template.source, box),
                        template.source,
                        box,
                        None
                        if template.image_png is None
                        else self._seal(template.image_png, b"image", name, template.source, box),
                        now,
                    ),
                )
        return self.person(name)

    def _stored_name(self, name: str) -> str | None:
        """How the person ``name`` means is spelled in the file, or None: names compare trimmed and in NFC (case
        counts), which also finds one stored, by an earlier version, in another normal form."""
        wanted = canonical_name(name)
        exact = self._db.execute("SELECT name FROM people WHERE name = ?", (wanted,)).fetchone()
        if exact is not None:
            return exact[0]
        if self._names_canonical:  # every name in the file is stored canonical: this one is not there
            return None
        # Made by an earlier version: only a name with a character beyond ASCII can be in another normal form.
        stored = (row[0] for row in self._db.execute("SELECT name FROM people WHERE name GLOB '*[^ -~]*'"))
        return next((spelling for spelling in stored if canonical_name(spelling) == wanted), None)

    def person(self, name: str) -> Person:
        """The person called ``name``, trimmed and normalised as ``enroll`` stores it (case counts). One indexed
        lookup: asking about one person costs the same in a gallery of a hundred thousand."""
        stored = self._stored_name(name)
        found = None
        if stored is not None:
            found = self._db.execute(PERSON_ROWS + " WHERE p.name = ? GROUP BY p.id", (stored,)).fetchone()
        if found is None:
            raise GalleryError(f"no one named '{name.strip()}' in {self.path}")
        return Person(*found)

    def people(self) -> list[Person]:
        return [Person(*row) for row in self._db.execute(PERSON_ROWS + " GROUP BY p.id ORDER BY p.name")]

    def remove(self, name: str) -> tuple[Person, bool]:
        """Delete a person and all their templates and images. Returns them, and whether the freed pages are
        overwritten in the file already: not while another process holds a read open (its snapshot still shows
        the old pages); then they are when the last connection closes (SQLite checkpoints its WAL then)."""
        person = self.person(name)
        with self._transaction() as db:
            db.execute("DELETE FROM people WHERE name = ?", (person.name,))
        try:
            blocked, *_ = self._db.execute("PRAGMA wal_checkpoint(TRUNCATE)").fetchone()
        except sqlite3.OperationalError as exc:  # a reader kept the WAL from being reset: as blocked
            if not _is_busy(exc):
                raise
            blocked = 1
        return person, not blocked

    def templates(self, embedder: EmbedderId, of: str | None = None) -> Templates:
        """Every template, decrypted, for searching with ``embedder``, or only those of the person named ``of`` (a
        claim to be them is checked against nobody else's); refused if another model made any. Read and checked
        as whole arrays, not row by row: every search of a large gallery starts here (100,000 templates: 0.3 s,
        reports/gallery-scale)."""
        self.require_embedder(embedder)
        person = "" if of is None else " WHERE p.name = ?"
        origin = "t.source, t.face_box" if self.cipher is not None else "NULL, NULL"  # what a seal is bound to
        rows = self._db.execute(  # one statement, so one snapshot of both tables
            "SELECT p.id, p.name, t.embedding, t.embedder_name = ? AND t.embedder_sha256 = ? AND t.dim = ?,"
            f" {origin} FROM templates t JOIN people p ON p.id = t.person_id{person} ORDER BY p.id, t.id",
            (embedder.name, embedder.sha256, embedder.dim) + (() if of is None else (self.person(of).name,)),
        ).fetchall()
        ids, owner_names, blobs, comparable, sources, boxes = zip(*rows, strict=True) if rows else [()] * 6
        if not all(comparable):  # a file altered to mix models: every template read is checked
            raise self._incomparable(embedder)
        person_ids = np.array(ids, dtype=np.int64)
        firsts = np.r_[True, person_ids[1:] != person_ids[:-1]] if len(rows) else np.empty(0, bool)
        names = tuple(owner_names[row] for row in np.flatnonzero(firsts))
        owners = np.cumsum(firsts, dtype=np.int64) - 1
        if self.cipher is not None:
            blobs = [
                self._open(blob, b"template", names[owner], source, box) if isinstance(blob, bytes) else blob
                for blob, owner, source, box in zip(blobs, owners, sources, boxes, strict=True)
            ]
        sizes = np.fromiter((len(blob) if isinstance(blob, bytes) else -1 for blob in blobs), np.int64, len(rows))
        corrupt = sizes != 4 * embedder.dim  # float32s; an altered or truncated row is not a template
        if not corrupt.any():
            vectors = np.frombuffer(b"".join(blobs), np.float32).reshape(len(rows), embedder.dim).copy()
            lengths = np.sqrt(np.einsum("ij,ij->i", vectors, vectors))
            corrupt = ~(np.abs(lengths - 1.0) <= UNIT_LENGTH_TOLERANCE)  # NaN or rescaled: hidden from every search
        if corrupt.any():
            name = names[owners[int(np.argmax(corrupt))]]
            raise GalleryError(f"{self.path}: a stored template of '{name}' is corrupt (file altered)")
        return Templates(names, owners, vectors)

    def kept_images(self) -> list[KeptImage]:
        rows = self._db.execute(
            "SELECT t.id, p.name, t.source, t.face_box, t.image FROM templates t JOIN people p ON p.id = t.person_id"
            " WHERE t.image IS NOT NULL ORDER BY t.id"
        )
        return [
            KeptImage(
                template_id,
                name,
                source,
                self._face_box(box, name, source),
                self._open(image, b"image", name, source, box),
            )
            for template_id, name, source, box, image in rows
        ]

    def _face_box(self, stored: str, name: str, source: str) -> tuple[float, float, float, float]:
        try:
            box = tuple(float(v) for v in json.loads(stored))
        except (ValueError, TypeError):
            box = ()
        if len(box) != 4:
            raise GalleryError(f"{self.path}: the stored face box of {name}/{source} is corrupt (file altered)")
        return box

    def template_ids(self) -> frozenset[int]:
        """Every template's id: what a re-embedding started from (``replace_embeddings``)."""
        return frozenset(row[0] for row in self._db.execute("SELECT id FROM templates"))

    def replace_embeddings(
        self, embedder: EmbedderId, embeddings: dict[int, np.ndarray], drop_others: bool, started_from: frozenset[int]
    ) -> tuple[int, list[str]]:
        """Re-embed: set the templates in ``embeddings`` (by template id) to ``embedder``'s vectors, in one
        transaction. Templates not given are kept only if ``embedder`` made them, else dropped if ``drop_others``
        (refused otherwise); people left without a template are removed (nothing could ever match them).
        ``started_from``: the ``template_ids()`` read before the kept images; if templates were enrolled or
        removed since (by another process), nothing is changed, so an enrolment made meanwhile is never dropped.
        Returns how many templates were dropped and who was removed."""
        vectors = {tid: _checked_vector(vector, embedder.dim) for tid, vector in embeddings.items()}
        with self._transaction() as db:
            rows = db.execute(
                "SELECT t.id, p.name, t.source, t.face_box, t.embedder_name, t.embedder_sha256, t.dim FROM templates t"
                " JOIN people p ON p.id = t.person_id"
            ).fetchall()
            if {row[0] for row in rows} != started_from:
                raise GalleryError(
                    f"{self.path} changed while its templates were being re-embedded (someone enrolled or removed "
                    "meanwhile): nothing changed; run it again"
                )
            stale = {
                tid: name
                for tid, name, _, _, *model in rows
                if tid not in embeddings and EmbedderId(*model) != embedder
            }
            if stale and not drop_others:
                who = ", ".join(sorted(set(stale.values())))
                raise GalleryError(
                    f"{len(stale)} template(s) of another model have no kept image ({who}): re-enrol them, or pass "
                    "--drop-unkept to delete them"
                )
            for tid in stale:
                db.execute("DELETE FROM templates WHERE id = ?", (tid,))
            emptied = [
                name
                for (name,) in db.execute(
                    "SELECT name FROM people WHERE id NOT IN (SELECT person_id FROM templates) ORDER BY name"
                )
            ]
            db.execute("DELETE FROM people WHERE id NOT IN (SELECT person_id FROM templates)")
            origins = {tid: (name, source, box) for tid, name, source, box, *_ in rows}
            for tid, vector in vectors.items():
                db.execute(
                    "UPDATE templates SET embedder_name = ?, embedder_sha256 = ?, dim = ?, embedding = ? WHERE id = ?",
                    (
                        embedder.name,
                        embedder.sha256,
                        embedder.dim,
                        self._seal(vector.tobytes(), b"template", *origins[tid]),
                        tid,
                    ),
                )
        return len(stale), emptied

    def export(self, destination: str | os.PathLike) -> None:
        """A consistent copy of the gallery (safe while it is in use), 0600, encrypted if this one is. Written
        beside ``destination`` and renamed into place when complete: a killed export leaves no partial gallery."""
        destination = Path(destination)
        if destination.exists():
            raise GalleryError(f"{destination} already exists; choose a new file")
        try:
            with replacing(destination, private=True) as partial:
                copy = sqlite3.connect(partial)
                try:
                    self._db.backup(copy)
                finally:
                    copy.close()
                    partial.with_name(f"{partial.name}-journal").unlink(missing_ok=True)  # left by a failed copy
        except (OSError, sqlite3.Error) as exc:  # SQLite reports a full disk as its own error
            raise GalleryError(f"{destination}: cannot write ({getattr(exc, 'strerror', None) or exc})") from None


def _checked_vector(embedding, dim: int) -> np.ndarray:
    """A template as stored: ``dim`` float32s of unit length (an embedder's normalised output)."""
    vector = np.asarray(embedding, dtype=np.float32)
    if vector.shape != (dim,):
        raise GalleryError(f"template of shape {vector.shape} from an embedder of {dim} dims")
    if not _is_unit_vector(vector):
        raise GalleryError("a template must be a finite vector of unit length (an embedder's normalised output)")
    return vector


def _is_unit_vector(vector: np.ndarray) -> bool:
    return bool(np.isfinite(vector).all()) and abs(float(np.linalg.norm(vector)) - 1.0) <= UNIT_LENGTH_TOLERANCE
