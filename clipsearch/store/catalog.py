"""SQLite catalog: files, their content hashes, skip reasons, pending vectors, and index metadata.

Tables (schema version 2; version 1 is read, and upgraded in place by the first writer):

- ``meta(key, value)``: model, pretrained, weights_sha256, dim, store_kind, schema_version,
  ``gen`` (last batch that changed the vectors), ``vectors_gen`` (the last batch whose vectors
  are in segment files), ``layout`` (moves whenever the list of segments changes),
  ``store_params`` (JSON: the kind's parameters and its measured recall), ``store_choice`` and
  ``memory_budget`` (what the kind is chosen by), and ``rebuild_id`` (set when a rebuild replaced
  the index; a staged rebuild also records ``rebuild_complete`` once it is ready to replace it).
- ``roots(path, include_hidden, exclude, max_pixels)``: folders the user indexed, with the settings
  their syncs use (``exclude``: gitignore lines; ``max_pixels`` NULL: the default). A sync without
  roots re-syncs these. The settings columns were added after version 0.1.0: a writer adds them
  to an older catalog in place; a reader of an older catalog sees the defaults.
- ``contents(id, hash, width, height, taken)``: one row per distinct file content (``taken``: EXIF
  DateTimeOriginal as a POSIX time, if the file has one). ``id`` is the FAISS id;
  AUTOINCREMENT so an id is never reused for other content.
- ``files(path, size, mtime_ns, content_id, error)``: path (the file system's bytes, so names that
  are not valid UTF-8 survive) -> content. ``content_id`` is NULL and
  ``error`` set for files that were skipped.
- ``views(content_id, view, kind, t_start, t_end)``: a content's vectors beyond its main one: the
  side crops of a wide or tall picture (``kind`` ``left``, ``right``, ``top``, ``bottom``,
  ``part``), and a video's moments (``kind`` ``moment``, ``t_start``/``t_end`` in seconds from its
  first frame). Every moment of a video has a row: view 0, whose vector is the content's main one,
  is the moment most like the whole video; views 1, 2, ... are the others, in time order. Added
  after 0.1.0 (a writer creates it in place; a reader of an older catalog sees no views).
- ``pending(content_id, gen, vector)``: vectors committed since the last checkpoint;
  ``content_id`` is the vector's FAISS id (see :func:`view_id`).
- ``tombstones(content_id, gen)``: vectors (FAISS ids) deleted whose vectors may still lie in a
  segment file; kept until a merge drops them from the files.
- ``segments(name, count, big)``: the segment files holding the vectors (added in version 2);
  see :mod:`clipsearch.store.segments`. Version 1 kept them in one FAISS file,
  ``vectors-<vectors_gen>.faiss``, and its tombstones were those after ``vectors_gen``.
- ``judgements(query, hash, label, time)``: a person's marks: the picture with this content
  ``hash`` is relevant (``label`` 1) or not (0) to ``query`` (as written, in the query grammar),
  marked at ``time`` (POSIX). Keyed by the content's hash, not its id, so that marks survive a
  rename, a re-sync and a rebuild (which hands out new ids), and follow a picture that is removed
  and added again. Added after 0.2: created in place by the first mark (also by a reader, such as
  the web server: a mark is a small write of its own, allowed while a sync runs); a catalog
  without the table has no judgements. A rebuild keeps the table (it replaces the others).

FAISS ids: a content's main vector has the content's id; view ``n`` (1, 2, ...) of content ``c``
has ``VIEW_FLAG | c << VIEW_BITS | n`` (:func:`view_id`), so ids never collide and
:func:`content_of` maps any of them back to its content.
"""

from __future__ import annotations

import os
import re
import sqlite3
import sys
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from clipsearch.errors import ClipsearchError, IndexAccessError, IndexCorruptError
from clipsearch.files import free_space_note

SCHEMA_VERSION = 2
#: Catalog versions this code reads (1: one FAISS file; upgraded to 2 by the first writer).
READABLE_VERSIONS = (1, 2)

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roots (
    path BLOB PRIMARY KEY,
    include_hidden INTEGER NOT NULL DEFAULT 0,
    exclude TEXT NOT NULL DEFAULT '',
    max_pixels INTEGER
);
CREATE TABLE IF NOT EXISTS contents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    hash TEXT NOT NULL UNIQUE,
    width INTEGER,
    height INTEGER,
    taken REAL
);
CREATE TABLE IF NOT EXISTS files (
    path BLOB PRIMARY KEY,
    size INTEGER NOT NULL,
    mtime_ns INTEGER NOT NULL,
    content_id INTEGER REFERENCES contents(id),
    error TEXT
);
CREATE INDEX IF NOT EXISTS files_content ON files(content_id);
CREATE TABLE IF NOT EXISTS pending (
    content_id INTEGER PRIMARY KEY,
    gen INTEGER NOT NULL,
    vector BLOB NOT NULL
);
CREATE TABLE IF NOT EXISTS tombstones (content_id INTEGER PRIMARY KEY, gen INTEGER NOT NULL);
CREATE TABLE IF NOT EXISTS segments (
    name TEXT PRIMARY KEY,
    count INTEGER NOT NULL,
    big INTEGER NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS views (
    content_id INTEGER NOT NULL,
    view INTEGER NOT NULL,
    kind TEXT NOT NULL,
    t_start REAL,
    t_end REAL,
    PRIMARY KEY (content_id, view)
) WITHOUT ROWID;
"""

#: The judgements table (see the module docstring); created by the first mark, not with the catalog.
_JUDGEMENTS_SCHEMA = """CREATE TABLE IF NOT EXISTS judgements (
    query TEXT NOT NULL,
    hash TEXT NOT NULL,
    label INTEGER NOT NULL CHECK (label IN (0, 1)),
    time REAL NOT NULL,
    PRIMARY KEY (query, hash)
) WITHOUT ROWID"""

#: The flag of a view's FAISS id, and the bits of the view number below the content id.
VIEW_FLAG = 1 << 62
VIEW_BITS = 16
MAX_VIEWS = (1 << VIEW_BITS) - 1
_CONTENT_MASK = (1 << (62 - VIEW_BITS)) - 1


def view_id(content_id: int, view: int) -> int:
    """The FAISS id of view ``view`` (1..MAX_VIEWS) of a content; view 0 is the content's own id."""
    if view == 0:
        return int(content_id)
    if not 0 < view <= MAX_VIEWS or not 0 < content_id <= _CONTENT_MASK:
        raise ValueError(f"view {view} of content {content_id} has no FAISS id")
    return VIEW_FLAG | (int(content_id) << VIEW_BITS) | view


def content_of(ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The content ids of FAISS ids (main or view); -1 stays -1."""
    ids = np.asarray(ids, dtype=np.int64)
    is_view = (ids > 0) & ((ids & VIEW_FLAG) != 0)
    return np.where(is_view, (ids >> VIEW_BITS) & _CONTENT_MASK, ids)


def view_of(ids: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    """The view numbers of FAISS ids (0 for a content's main vector)."""
    ids = np.asarray(ids, dtype=np.int64)
    return np.where((ids > 0) & ((ids & VIEW_FLAG) != 0), ids & MAX_VIEWS, 0)


class View(NamedTuple):
    """A vector of a content beyond its main one: which part of it (``kind``), and when (video)."""

    view: int
    kind: str
    t_start: float | None = None
    t_end: float | None = None


#: Columns added to ``roots`` after 0.1.0, with the definitions ``ALTER TABLE`` adds them with.
_ROOT_SETTINGS_COLUMNS = (
    ("include_hidden", "INTEGER NOT NULL DEFAULT 0"),
    ("exclude", "TEXT NOT NULL DEFAULT ''"),
    ("max_pixels", "INTEGER"),
)
#: Tables a rebuild replaces wholesale, with the columns copied.
_REPLACED_TABLES = {
    "roots": "path, include_hidden, exclude, max_pixels",
    "contents": "id, hash, width, height, taken",
    "files": "path, size, mtime_ns, content_id, error",
    "pending": "content_id, gen, vector",
    "tombstones": "content_id, gen",
    "views": "content_id, view, kind, t_start, t_end",
    "segments": "name, count, big",
    "meta": "key, value",
}


@dataclass(frozen=True)
class RootSettings:
    """How a root is synced, recorded with it.

    Args:
        include_hidden: also index dot-files and files in dot-folders.
        exclude: gitignore-style patterns, relative to the root, of files and folders left out.
        max_pixels: images larger than this are skipped; None: the default of the running version.
    """

    include_hidden: bool = False
    exclude: tuple[str, ...] = ()
    max_pixels: int | None = None

    def to_dict(self) -> dict[str, object]:
        return {
            "include_hidden": self.include_hidden,
            "exclude": list(self.exclude),
            "max_pixels": self.max_pixels,
        }


@dataclass(frozen=True)
class IndexMeta:
    """What an index records about the model that produced its vectors."""

    model: str
    pretrained: str
    weights_sha256: str
    dim: int
    store_kind: str = "flat"
    schema_version: int = SCHEMA_VERSION
    #: which extra vectors a picture gets: ``none``, or ``sides`` (the side crops of a wide or tall
    #: picture, for models that crop the centre); indexes made before 0.2 record none
    coverage: str = "none"
    #: JPEGs are decoded (reduced from the DCT) at no less than this many times the model's input
    #: side; a sync and an image query decode at the scale the index records, so its vectors stay
    #: alike. Indexes made before 0.3 record none: they were decoded at 2
    decode_scale: float = 2.0


class Judgement(NamedTuple):
    """A stored mark: the content with ``hash`` is relevant to ``query`` or not, marked at ``time``.

    ``content_id``: that content's id in this index now; None when no file of it is indexed now
    (the mark waits for the picture to come back).
    """

    query: str
    hash: str
    relevant: bool
    time: float
    content_id: int | None


class Entry(NamedTuple):
    """An indexed file as a search result shows it (``date``: EXIF date, else mtime, POSIX time)."""

    path: str
    content_id: int
    size: int
    width: int
    height: int
    date: float


@dataclass(frozen=True)
class FileFilter:
    """Which indexed files a search may return (every field optional).

    Args:
        folder: only files under this folder (absolute path).
        after / before: only files dated on/after, before this POSIX time (EXIF date, else mtime).
        suffixes: only names ending in one of these (lower case, with the dot: ``.jpg``).
        min_side: only images whose shorter side has at least this many pixels.
    """

    folder: str | None = None
    after: float | None = None
    before: float | None = None
    suffixes: tuple[str, ...] = ()
    min_side: int | None = None

    def active(self) -> bool:
        return any(
            v not in (None, ()) for v in (self.folder, self.after, self.before, self.suffixes, self.min_side)
        )

    def sql(self) -> tuple[str, list[object]]:
        """WHERE clause (over files f JOIN contents c) and its parameters."""
        clauses: list[str] = ["f.content_id IS NOT NULL"]
        params: list[object] = []
        if self.folder is not None:
            low, high = under(self.folder)
            clauses.append("f.path >= ? AND f.path < ?")
            params += [low, high]
        if self.after is not None:
            clauses.append("COALESCE(c.taken, f.mtime_ns / 1e9) >= ?")
            params.append(self.after)
        if self.before is not None:
            clauses.append("COALESCE(c.taken, f.mtime_ns / 1e9) < ?")
            params.append(self.before)
        if self.min_side is not None:
            clauses.append("min(c.width, c.height) >= ?")
            params.append(self.min_side)
        if self.suffixes:
            clauses.append(
                "(" + " OR ".join("lower(CAST(f.path AS TEXT)) LIKE ?" for _ in self.suffixes) + ")"
            )
            params += [f"%{s}" for s in self.suffixes]
        return " AND ".join(clauses), params


_ENTRY_SQL = """SELECT f.path, f.content_id, f.size, c.width, c.height,
    COALESCE(c.taken, f.mtime_ns / 1e9) AS date FROM files f JOIN contents c ON c.id = f.content_id"""


def _group(rows: Iterable[tuple[bytes, int, int, int | None, int | None, float]]) -> dict[int, list[Entry]]:
    out: dict[int, list[Entry]] = {}
    for path, cid, size, width, height, date in sorted(rows, key=lambda r: r[0]):
        out.setdefault(int(cid), []).append(
            Entry(os.fsdecode(path), int(cid), int(size), int(width or 0), int(height or 0), float(date))
        )
    return out


class FileState(NamedTuple):
    """A file row as the planner needs it."""

    size: int
    mtime_ns: int
    content_id: int | None
    error: str | None


class NewFile(NamedTuple):
    """A file row to write: ``content_id`` None means skipped with ``error``."""

    path: str
    size: int
    mtime_ns: int
    content_id: int | None
    error: str | None


def fsencode(path: str) -> bytes:
    """``os.fsencode`` of a ``str`` path, without its checks: millions of rows go through it."""
    return path.encode(_FS_ENCODING, _FS_ERRORS)


def fsdecode(path: bytes) -> str:
    """``os.fsdecode`` of a ``bytes`` path, without its checks."""
    return path.decode(_FS_ENCODING, _FS_ERRORS)


_FS_ENCODING, _FS_ERRORS = sys.getfilesystemencoding(), sys.getfilesystemencodeerrors()


def _is_corruption(exc: sqlite3.Error) -> bool:
    return "not a database" in str(exc) or "malformed" in str(exc)


def under(root: str) -> tuple[bytes, bytes]:
    """SQL range bounds selecting every path strictly below directory ``root``."""
    prefix = os.fsencode(root).rstrip(b"/") + b"/"
    return prefix, prefix[:-1] + b"0"  # '0' sorts right after '/'


#: A filter's WHERE clause and parameters (what :meth:`Catalog.vector_ids_matching` keeps answers by).
_FilterKey = tuple[str, tuple[object, ...]]


class Catalog:
    """One SQLite connection in WAL mode; every write goes through :meth:`transaction`."""

    def __init__(self, path: Path, *, writer: bool = False) -> None:
        """Open ``path``; only a ``writer`` creates tables or changes settings.

        Readers never write, so an index on read-only media can still be searched.
        """
        self.path = path
        self.conn = self._connect_or_raise(path, writer)
        self._commits = 0  # transactions this connection committed (other connections': data_version)
        self._allowed: dict[_FilterKey, tuple[tuple[int, int], npt.NDArray[np.int64]]] = {}
        try:
            self._prepare(writer)
        except BaseException:
            self.conn.close()  # no file stays open behind a failed open
            raise

    def _connect_or_raise(self, path: Path, writer: bool) -> sqlite3.Connection:
        try:
            return self._connect(path, writer)
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from exc

    def _open_error(self, exc: sqlite3.DatabaseError) -> ClipsearchError:
        path = self.path
        if isinstance(exc, sqlite3.OperationalError) and not _is_corruption(exc):
            return IndexAccessError(
                path.parent,
                f"Cannot open the index catalog {path}: {exc}."
                + (
                    free_space_note(path.parent)
                    or " Check that the folder exists and is readable (and writable, to index)."
                ),
            )
        return IndexCorruptError(path.parent, f"{path} is not a clipsearch catalog ({exc}).")

    def _prepare(self, writer: bool) -> None:
        """Set up a writer's connection (WAL, tables, upgrades); check the schema version."""
        path = self.path
        try:
            if writer:
                # Pages freed when pending vectors move into the FAISS file go back to the file system
                # (see reclaim_space); only takes effect on a new, empty database.
                self.conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA synchronous = FULL")
                self.conn.executescript(f"BEGIN; {_SCHEMA} COMMIT;")  # one transaction: one fsync, not 7
                self._add_missing_columns()
            self._root_columns = self._columns("roots")
            self._has_views = bool(self._columns("views"))
            version = self.get("schema_version")
        except sqlite3.DatabaseError as exc:
            raise self._open_error(exc) from exc
        if version is not None and int(version) not in READABLE_VERSIONS:
            self.conn.close()
            raise IndexCorruptError(
                path.parent,
                f"{path} has catalog schema version {version}; this clipsearch reads versions "
                f"{' and '.join(map(str, READABLE_VERSIONS))}.",
            )

    @staticmethod
    def create(
        path: Path, meta: IndexMeta, *, extra: dict[str, object] | None = None, first_id: int = 0
    ) -> None:
        """Write a new catalog at ``path``: tables, ``meta`` and ``extra`` meta rows, durably, in one file.

        The database is written in rollback-journal mode, so a successful commit leaves everything in
        ``path`` itself (a WAL left beside a file that is then renamed would take the tables with it);
        writers switch it to WAL when they open it. ``first_id``: content ids start after it.

        Raises:
            sqlite3.Error: it could not be written (a full disk, say); ``path`` is then incomplete.
        """
        conn = sqlite3.connect(path, isolation_level=None)
        try:
            conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
            conn.execute("PRAGMA journal_mode = DELETE")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("BEGIN IMMEDIATE")
            for statement in filter(str.strip, _SCHEMA.split(";")):
                conn.execute(statement)
            rows = {**asdict(meta), **(extra or {})}
            conn.executemany(
                "INSERT INTO meta(key, value) VALUES (?, ?)", [(k, str(v)) for k, v in rows.items()]
            )
            if first_id:
                conn.execute("INSERT INTO sqlite_sequence(name, seq) VALUES ('contents', ?)", (first_id,))
            conn.execute("COMMIT")
        finally:
            conn.close()

    def _columns(self, table: str) -> set[str]:
        return {row[1] for row in self.conn.execute(f"PRAGMA table_info({table})")}

    def _add_missing_columns(self) -> None:
        """Upgrade a catalog written by an older version in place (columns only ever get added)."""
        have = self._columns("roots")
        missing = [(name, kind) for name, kind in _ROOT_SETTINGS_COLUMNS if name not in have]
        if missing:
            with self.transaction():
                for name, kind in missing:
                    self.conn.execute(f"ALTER TABLE roots ADD COLUMN {name} {kind}")

    @staticmethod
    def _connect(path: Path, writer: bool) -> sqlite3.Connection:
        def connect(uri: str) -> sqlite3.Connection:
            conn = sqlite3.connect(uri, uri=True, isolation_level=None, timeout=30, check_same_thread=False)
            try:
                conn.execute("PRAGMA busy_timeout = 30000")
                conn.execute("SELECT count(*) FROM sqlite_master").fetchone()  # fail here, not later
            except BaseException:
                conn.close()
                raise
            return conn

        try:
            return connect(f"file:{path}")
        except sqlite3.OperationalError:
            if writer or os.access(path.parent, os.W_OK):
                raise
        # a read-only folder: SQLite cannot create its WAL index (-shm) there; nobody can write
        # there either, so the database file alone is the whole, final state
        return connect(f"file:{path}?mode=ro&immutable=1")

    def close(self) -> None:
        self.conn.close()

    @contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception.

        A Ctrl-C can land just after ``BEGIN`` returns: inside the ``try``, so it is rolled back too,
        and a transaction found open anyway (an interrupt in the window before) is rolled back first.
        """
        if self.conn.in_transaction:
            self.conn.execute("ROLLBACK")
        try:
            self.conn.execute("BEGIN IMMEDIATE")
            yield self.conn
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")
        self._commits += 1

    @contextmanager
    def snapshot(self) -> Iterator[sqlite3.Connection]:
        """A read transaction: every query inside sees the same committed state."""
        self.conn.execute("BEGIN")
        try:
            yield self.conn
        finally:
            self.conn.execute("COMMIT")

    # -- metadata -----------------------------------------------------------------------------

    def get(self, key: str) -> str | None:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return None if row is None else str(row[0])

    def set(self, key: str, value: object) -> None:
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, str(value)))

    def get_int(self, key: str) -> int:
        value = self.get(key)
        return int(value) if value is not None else 0

    def meta(self) -> IndexMeta | None:
        values = dict(self.conn.execute("SELECT key, value FROM meta").fetchall())
        if "model" not in values:
            return None
        kwargs: dict[str, object] = {}
        for f in fields(IndexMeta):
            if f.name in values:
                value = values[f.name]
                if f.type in ("int", int):
                    value = int(value)
                elif f.type in ("float", float):
                    value = float(value)
                kwargs[f.name] = value
        return IndexMeta(**kwargs)  # type: ignore[arg-type]

    def write_meta(self, meta: IndexMeta) -> None:
        with self.transaction():
            for key, value in asdict(meta).items():
                self.set(key, value)

    # -- roots and files ----------------------------------------------------------------------

    def roots(self) -> list[str]:
        return [os.fsdecode(r[0]) for r in self.conn.execute("SELECT path FROM roots ORDER BY path")]

    def add_roots(self, roots: Iterable[str]) -> None:
        self.conn.executemany(
            "INSERT OR IGNORE INTO roots(path) VALUES (?)", [(os.fsencode(r),) for r in roots]
        )

    def root_settings(self) -> dict[str, RootSettings]:
        """Every root with its recorded settings (the defaults in a catalog from before settings)."""
        if "max_pixels" not in self._root_columns:  # an older catalog opened by a reader
            return {root: RootSettings() for root in self.roots()}
        rows = self.conn.execute("SELECT path, include_hidden, exclude, max_pixels FROM roots ORDER BY path")
        return {
            os.fsdecode(path): RootSettings(bool(hidden), tuple(filter(None, exclude.split("\n"))), limit)
            for path, hidden, exclude, limit in rows
        }

    def set_root(self, root: str, settings: RootSettings) -> None:
        """Record ``root`` with ``settings`` (replacing what it had)."""
        self.conn.execute(
            "INSERT OR REPLACE INTO roots(path, include_hidden, exclude, max_pixels) VALUES (?, ?, ?, ?)",
            (
                os.fsencode(root),
                int(settings.include_hidden),
                "\n".join(settings.exclude),
                settings.max_pixels,
            ),
        )

    def remove_root(self, root: str) -> None:
        self.conn.execute("DELETE FROM roots WHERE path = ?", (os.fsencode(root),))

    def delete_files_under(self, root: str) -> int:
        """Forget every file at or below ``root``; returns how many rows went."""
        low, high = under(root)
        cur = self.conn.execute(
            "DELETE FROM files WHERE path = ? OR (path >= ? AND path < ?)", (os.fsencode(root), low, high)
        )
        return cur.rowcount

    def delete_skipped_under(self, root: str, reason: str) -> int:
        """Forget the files at or below ``root`` skipped for ``reason``, so the next sync retries them."""
        low, high = under(root)
        cur = self.conn.execute(
            "DELETE FROM files WHERE content_id IS NULL AND error LIKE ? "
            "AND (path = ? OR (path >= ? AND path < ?))",
            (f"{reason}:%", os.fsencode(root), low, high),
        )
        return cur.rowcount

    def files_under(self, root: str) -> dict[str, FileState]:
        """Every catalogued file at or below ``root``."""
        return {fsdecode(path): FileState(*state) for path, state in self.file_rows_under(root).items()}

    def file_rows_under(self, root: str) -> dict[bytes, tuple[int, int, int | None, str | None]]:
        """Every catalogued file at or below ``root``: its path's bytes -> (size, mtime_ns,
        content_id, error), as stored (a no-op sync of millions of files compares these, and makes a
        :class:`FileState` only of the files that changed)."""
        low, high = under(root)
        rows = self.conn.execute(
            "SELECT path, size, mtime_ns, content_id, error FROM files "
            "WHERE path = ? OR (path >= ? AND path < ?)",
            (os.fsencode(root), low, high),
        )
        return {path: (size, mtime, cid, error) for path, size, mtime, cid, error in rows}

    def holds_files_under(self, root: str) -> bool:
        """Whether any file at or below ``root`` is catalogued (without reading them all)."""
        low, high = under(root)
        row = self.conn.execute(
            "SELECT 1 FROM files WHERE path = ? OR (path >= ? AND path < ?) LIMIT 1",
            (os.fsencode(root), low, high),
        ).fetchone()
        return row is not None

    def file(self, path: str) -> FileState | None:
        row = self.conn.execute(
            "SELECT size, mtime_ns, content_id, error FROM files WHERE path = ?", (os.fsencode(path),)
        ).fetchone()
        return None if row is None else FileState(*row)

    def files_by_path(self, paths: Sequence[str]) -> dict[str, FileState]:
        """The catalogued files among ``paths`` (absent ones are left out)."""
        out: dict[str, FileState] = {}
        for start in range(0, len(paths), 500):
            chunk = [fsencode(p) for p in paths[start : start + 500]]
            rows = self.conn.execute(
                "SELECT path, size, mtime_ns, content_id, error FROM files "
                f"WHERE path IN ({','.join('?' * len(chunk))})",
                chunk,
            )
            out.update({os.fsdecode(r[0]): FileState(r[1], r[2], r[3], r[4]) for r in rows})
        return out

    def content_ids_of(self, digests: Sequence[str]) -> dict[str, int]:
        """hash -> content id, for the hashes among ``digests`` that are catalogued."""
        out: dict[str, int] = {}
        for start in range(0, len(digests), 500):
            chunk = list(digests[start : start + 500])
            rows = self.conn.execute(
                f"SELECT hash, id FROM contents WHERE hash IN ({','.join('?' * len(chunk))})", chunk
            )
            out.update({str(h): int(i) for h, i in rows})
        return out

    def content_hashes(self) -> Iterator[str]:
        """Every catalogued content hash, in no particular order (streamed, not held in memory)."""
        for (digest,) in self.conn.execute("SELECT hash FROM contents"):
            yield str(digest)

    def content_id(self, digest: str) -> int | None:
        row = self.conn.execute("SELECT id FROM contents WHERE hash = ?", (digest,)).fetchone()
        return None if row is None else int(row[0])

    def is_empty(self) -> bool:
        """No content catalogued (cheap: no count of a large table)."""
        return self.conn.execute("SELECT 1 FROM contents LIMIT 1").fetchone() is None

    def counts(self) -> dict[str, int]:
        one = self.conn.execute
        contents = one("SELECT count(*) FROM contents").fetchone()[0]
        views = one("SELECT count(*) FROM views WHERE view > 0").fetchone()[0] if self._has_views else 0
        return {
            "files": one("SELECT count(*) FROM files WHERE content_id IS NOT NULL").fetchone()[0],
            "contents": contents,
            "vectors": contents + views,
            "skipped": one("SELECT count(*) FROM files WHERE content_id IS NULL").fetchone()[0],
        }

    def video_counts(self) -> dict[str, float]:
        """Video files, distinct videos, their moments and their total length in seconds."""
        if not self._has_views:
            return {"videos": 0, "video_contents": 0, "moments": 0, "video_seconds": 0.0}
        contents, moments, seconds = self.conn.execute(
            "SELECT count(*), COALESCE(sum(n), 0), COALESCE(sum(length), 0) FROM "
            "(SELECT count(*) AS n, max(t_end) AS length FROM views WHERE kind = 'moment' "
            "GROUP BY content_id)"
        ).fetchone()
        files = self.conn.execute(
            "SELECT count(*) FROM files WHERE content_id IN (SELECT content_id FROM views WHERE view = 0 "
            "AND kind = 'moment')"
        ).fetchone()[0]
        return {"videos": files, "video_contents": contents, "moments": moments, "video_seconds": seconds}

    def entries_of(
        self, content_ids: Sequence[int], where: FileFilter | None = None
    ) -> dict[int, list[Entry]]:
        """content id -> its files (those that pass ``where``, if given), for the ids given."""
        clause, params = where.sql() if where is not None else ("1", [])
        out: dict[int, list[Entry]] = {}
        for start in range(0, len(content_ids), 500):
            chunk = [int(i) for i in content_ids[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(
                f"{_ENTRY_SQL} WHERE f.content_id IN ({marks}) AND {clause}", chunk + params
            )
            out.update(_group(rows))
        return out

    def vector_ids_matching(self, where: FileFilter) -> npt.NDArray[np.int64]:
        """The FAISS ids (contents and their views) of the contents with a file that passes ``where``:
        one pass over the matching rows, no record per file (a filter may keep millions).

        The last few answers are kept until the catalog changes (a commit of this connection or of
        another process): a server, or a person paging through results, asks again with the same
        filter, and at millions of files the pass over the rows costs seconds. Read-only: callers
        must not change the array.
        """
        clause, params = where.sql()
        key = (clause, tuple(params))
        if self.conn.in_transaction:  # uncommitted changes of our own: no cache
            return self._vector_ids_matching(clause, params)
        state = (int(self.conn.execute("PRAGMA data_version").fetchone()[0]), self._commits)
        cached = self._allowed.get(key)
        if cached is not None and cached[0] == state:
            return cached[1]
        ids = self._vector_ids_matching(clause, params)
        ids.flags.writeable = False
        if len(self._allowed) >= 4:
            self._allowed.pop(next(iter(self._allowed)))
        self._allowed[key] = (state, ids)
        return ids

    def _vector_ids_matching(self, clause: str, params: list[object]) -> npt.NDArray[np.int64]:
        joined = (
            "JOIN contents c ON c.id = f.content_id " if re.search(r"\bc\.", clause) else ""
        )  # dates, sizes
        matching = f"SELECT f.content_id FROM files f {joined}WHERE {clause}"
        rows = self.conn.execute(matching, params).fetchall()
        contents = np.unique(np.array(rows, dtype=np.int64).reshape(-1))
        if not self._has_views or not len(contents):
            return contents
        rows = self.conn.execute(
            f"SELECT content_id, view FROM views WHERE view > 0 AND content_id IN ({matching})", params
        )
        views = np.array(rows.fetchall(), dtype=np.int64).reshape(-1, 2)
        return np.concatenate([contents, VIEW_FLAG | (views[:, 0] << VIEW_BITS) | views[:, 1]])

    def has_views(self) -> bool:
        """Whether any content has vectors beyond its main one."""
        return self._has_views and self.conn.execute("SELECT 1 FROM views LIMIT 1").fetchone() is not None

    def view_ids_of(self, content_ids: Sequence[int]) -> list[int]:
        """The FAISS ids of the extra views of these contents."""
        if not self._has_views:
            return []
        out: list[int] = []
        for start in range(0, len(content_ids), 500):
            chunk = [int(i) for i in content_ids[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(  # a video's view 0 is its main vector
                f"SELECT content_id, view FROM views WHERE view > 0 AND content_id IN ({marks})", chunk
            )
            out += [view_id(cid, view) for cid, view in rows]
        return out

    def views_of(self, content_ids: Sequence[int]) -> dict[int, dict[int, View]]:
        """content id -> view number -> its view, for the ids given (contents without views: absent)."""
        out: dict[int, dict[int, View]] = {}
        if not self._has_views:
            return out
        for start in range(0, len(content_ids), 500):
            chunk = [int(i) for i in content_ids[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(
                f"SELECT content_id, view, kind, t_start, t_end FROM views WHERE content_id IN ({marks})",
                chunk,
            )
            for cid, view, kind, t_start, t_end in rows:
                out.setdefault(int(cid), {})[int(view)] = View(int(view), kind, t_start, t_end)
        return out

    def skipped(self) -> list[tuple[str, str]]:
        rows = self.conn.execute("SELECT path, error FROM files WHERE content_id IS NULL ORDER BY path")
        return [(os.fsdecode(path), error) for path, error in rows]

    # -- judgements (their own small transactions, also from a reader's connection) -----------

    def has_judgements_table(self) -> bool:
        """Whether the judgements table exists (another process may have created it since we opened)."""
        row = self.conn.execute(
            "SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = 'judgements'"
        ).fetchone()
        return row is not None

    def mark(self, query: str, marks: Sequence[tuple[int, bool | None]], when: float) -> list[int]:
        """Mark contents relevant (True) or not (False) to ``query``, replacing earlier marks; None
        removes a content's mark. One transaction; returns, per mark, whether it changed a row (1, 0).

        Raises:
            IndexAccessError: the catalog cannot be written (read-only media, permissions).
        """
        changed = []
        try:
            with self.transaction():
                self.conn.execute(_JUDGEMENTS_SCHEMA)
                for cid, relevant in marks:
                    if relevant is None:
                        cur = self.conn.execute(
                            "DELETE FROM judgements WHERE query = ? "
                            "AND hash = (SELECT hash FROM contents WHERE id = ?)",
                            (query, int(cid)),
                        )
                    else:
                        cur = self.conn.execute(
                            "INSERT OR REPLACE INTO judgements(query, hash, label, time) "
                            "SELECT ?, hash, ?, ? FROM contents WHERE id = ?",
                            (query, int(relevant), when, int(cid)),
                        )
                    changed.append(max(cur.rowcount, 0))
        except sqlite3.OperationalError as exc:
            if "readonly" not in str(exc) and "read-only" not in str(exc):
                raise
            raise IndexAccessError(
                self.path.parent,
                f"Cannot record judgements in the index at {self.path.parent}: its catalog is read-only "
                f"({exc}). Judgements are stored in the index; make its folder writable.",
            ) from exc
        return changed

    def judgements(self, query: str | None = None) -> list[Judgement]:
        """Every stored mark (of ``query`` only, if given), by query then time."""
        if not self.has_judgements_table():
            return []
        sql = (
            "SELECT j.query, j.hash, j.label, j.time, c.id FROM judgements j "
            "LEFT JOIN contents c ON c.hash = j.hash"
        )
        rows = (
            self.conn.execute(f"{sql} WHERE j.query = ? ORDER BY j.time, j.hash", (query,))
            if query is not None
            else self.conn.execute(f"{sql} ORDER BY j.query, j.time, j.hash")
        )
        return [Judgement(q, h, bool(label), float(t), cid) for q, h, label, t, cid in rows]

    def judgements_state(self) -> tuple[int, float]:
        """(how many marks name a content indexed now, the time of the latest mark): what a result
        computed from the judgements depends on."""
        if not self.has_judgements_table():
            return 0, 0.0
        count, latest = self.conn.execute(
            "SELECT count(c.id), coalesce(max(j.time), 0) FROM judgements j "
            "LEFT JOIN contents c ON c.hash = j.hash"
        ).fetchone()
        return int(count), float(latest)

    def contents_with_hashes(self, hashes: Sequence[str]) -> dict[str, int]:
        """hash -> content id, for the hashes of contents in this index."""
        out: dict[str, int] = {}
        for start in range(0, len(hashes), 500):
            chunk = list(hashes[start : start + 500])
            marks = ",".join("?" * len(chunk))
            rows = self.conn.execute(f"SELECT hash, id FROM contents WHERE hash IN ({marks})", chunk)
            out.update({h: int(i) for h, i in rows})
        return out

    # -- writes (call inside transaction()) ---------------------------------------------------

    def next_gen(self) -> int:
        gen = self.get_int("gen") + 1
        self.set("gen", gen)
        return gen

    def insert_views(self, content_id: int, views: Sequence[View]) -> None:
        """Record a new content's extra views (their vectors: :meth:`add_pending`, ids :func:`view_id`)."""
        self.conn.executemany(
            "INSERT INTO views(content_id, view, kind, t_start, t_end) VALUES (?, ?, ?, ?, ?)",
            [(int(content_id), v.view, v.kind, v.t_start, v.t_end) for v in views],
        )

    def insert_content(
        self, digest: str, width: int, height: int, taken: float | None, *, content_id: int | None = None
    ) -> int:
        """A new content row; ``content_id``: the id to give it (one of :meth:`last_content_id`'s
        successors, taken by a writer that wrote its vectors first), else the next one."""
        cur = self.conn.execute(
            "INSERT INTO contents(id, hash, width, height, taken) VALUES (?, ?, ?, ?, ?)",
            (content_id, digest, width, height, taken),
        )
        return int(cur.lastrowid or 0)

    def insert_contents(self, rows: Sequence[tuple[int, str, int, int, float | None]]) -> None:
        """New content rows ``(id, hash, width, height, taken)`` with ids taken beforehand (see
        :meth:`insert_content`), in one statement."""
        self.conn.executemany(
            "INSERT INTO contents(id, hash, width, height, taken) VALUES (?, ?, ?, ?, ?)", rows
        )

    def add_pending(self, gen: int, ids: Sequence[int], vectors: npt.NDArray[np.float32]) -> None:
        self.conn.executemany(
            "INSERT INTO pending(content_id, gen, vector) VALUES (?, ?, ?)",
            [(int(i), gen, np.asarray(v, dtype="<f4").tobytes()) for i, v in zip(ids, vectors, strict=True)],
        )

    def upsert_files(self, rows: Iterable[NewFile]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO files(path, size, mtime_ns, content_id, error) VALUES (?, ?, ?, ?, ?)",
            [(fsencode(r.path), r.size, r.mtime_ns, r.content_id, r.error) for r in rows],
        )

    def delete_files(self, paths: Iterable[str]) -> None:
        self.conn.executemany("DELETE FROM files WHERE path = ?", [(os.fsencode(p),) for p in paths])

    def drop_orphan_contents(self) -> int:
        """Delete contents no file points to and tombstone their ids for the vector store (under a
        new ``gen``, only if there are any); returns how many."""
        orphans = [
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM contents"
                " WHERE NOT EXISTS (SELECT 1 FROM files WHERE content_id = contents.id)"
            )
        ]
        if not orphans:
            return 0
        gen = self.next_gen()
        dead = orphans + self.view_ids_of(orphans)
        self.conn.executemany("DELETE FROM contents WHERE id = ?", [(i,) for i in orphans])
        if self._has_views:
            self.conn.executemany("DELETE FROM views WHERE content_id = ?", [(i,) for i in orphans])
        self.conn.executemany("DELETE FROM pending WHERE content_id = ?", [(i,) for i in dead])
        self.conn.executemany(
            "INSERT OR REPLACE INTO tombstones(content_id, gen) VALUES (?, ?)", [(i, gen) for i in dead]
        )
        return len(orphans)

    def last_content_id(self) -> int:
        """The largest content id ever handed out (ids are never reused)."""
        row = self.conn.execute("SELECT seq FROM sqlite_sequence WHERE name = 'contents'").fetchone()
        return int(row[0]) if row else 0

    def replace_with(self, staged: Path, meta: dict[str, object | None]) -> None:
        """Replace every row with those of the catalog at ``staged``, then set ``meta`` (None: delete
        the key): one transaction.

        Readers see the old index or the new one, never a mix. Content ids are copied as they are
        (the staged catalog's ids start above every id handed out here, so none is reused).
        """
        self.conn.execute("ATTACH DATABASE ? AS staged", (str(staged),))
        try:
            with self.transaction():
                last = max(self.last_content_id(), self._staged_last_id())
                for table, columns in _REPLACED_TABLES.items():
                    self.conn.execute(f"DELETE FROM main.{table}")
                    self.conn.execute(
                        f"INSERT INTO main.{table}({columns}) SELECT {columns} FROM staged.{table}"
                    )
                for key, value in meta.items():
                    if value is None:
                        self.conn.execute("DELETE FROM main.meta WHERE key = ?", (key,))
                    else:
                        self.set(key, value)
                self.conn.execute("DELETE FROM main.sqlite_sequence WHERE name = 'contents'")
                self.conn.execute(
                    "INSERT INTO main.sqlite_sequence(name, seq) VALUES ('contents', ?)", (last,)
                )
        finally:
            self.conn.execute("DETACH DATABASE staged")

    def _staged_last_id(self) -> int:
        row = self.conn.execute("SELECT seq FROM staged.sqlite_sequence WHERE name = 'contents'").fetchone()
        return int(row[0]) if row else 0

    # -- vector log ---------------------------------------------------------------------------

    def pending_after(self, gen: int, dim: int) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
        rows = self.conn.execute(
            "SELECT content_id, vector FROM pending WHERE gen > ? ORDER BY content_id", (gen,)
        ).fetchall()
        ids = np.array([r[0] for r in rows], dtype=np.int64)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype="<f4").astype(np.float32)
        return ids, vectors.reshape(len(rows), dim)

    def tombstones_after(self, gen: int) -> npt.NDArray[np.int64]:
        rows = self.conn.execute("SELECT content_id FROM tombstones WHERE gen > ?", (gen,)).fetchall()
        return np.array([r[0] for r in rows], dtype=np.int64)

    def forget_log_through(self, gen: int) -> None:
        """After a version-1 checkpoint at ``gen``: its pending vectors and tombstones are in its file."""
        self.conn.execute("DELETE FROM pending WHERE gen <= ?", (gen,))
        self.conn.execute("DELETE FROM tombstones WHERE gen <= ?", (gen,))

    def forget_pending_through(self, gen: int) -> None:
        """After a checkpoint at ``gen``: the pending vectors up to it are in a segment file."""
        self.conn.execute("DELETE FROM pending WHERE gen <= ?", (gen,))

    def forget_tombstones(self, ids: Iterable[int]) -> None:
        """Tombstones no longer needed (their vectors are in no segment file any more)."""
        self.conn.executemany("DELETE FROM tombstones WHERE content_id = ?", [(int(i),) for i in ids])

    def tombstone_ids(self) -> npt.NDArray[np.int64]:
        return np.array(
            [r[0] for r in self.conn.execute("SELECT content_id FROM tombstones")], dtype=np.int64
        )

    # -- segments -------------------------------------------------------------------------------

    def segments(self) -> list[tuple[str, int, bool]]:
        """(name, count, big) of every segment file set, by name (none in a version-1 catalog)."""
        if int(self.get("schema_version") or 1) < 2:
            return []
        rows = self.conn.execute("SELECT name, count, big FROM segments ORDER BY name")
        return [(str(name), int(count), bool(big)) for name, count, big in rows]

    def replace_segments(self, remove: Iterable[str], add: Iterable[tuple[str, int, bool]]) -> None:
        """Swap segments in the list (inside a transaction), moving ``layout`` on."""
        self.conn.executemany("DELETE FROM segments WHERE name = ?", [(n,) for n in remove])
        self.conn.executemany(
            "INSERT INTO segments(name, count, big) VALUES (?, ?, ?)", [(n, c, int(b)) for n, c, b in add]
        )
        self.set("layout", self.get_int("layout") + 1)

    def reclaim_space(self) -> None:
        """Return free pages (left by deleted pending vectors) to the file system; outside a transaction."""
        # executescript steps the pragma to completion (execute would free a single page)
        self.conn.executescript("PRAGMA incremental_vacuum;")
