"""SQLite catalog: files, their content hashes, skip reasons, pending vectors, and index metadata.

Tables (schema version 1):

- ``meta(key, value)``: model, pretrained, weights_sha256, dim, store_kind, schema_version,
  ``gen`` (last committed batch) and ``vectors_gen`` (generation of the saved FAISS file).
- ``roots(path)``: folders the user indexed; a sync without roots re-syncs these.
- ``contents(id, hash, width, height, taken)``: one row per distinct file content (``taken``: EXIF
  DateTimeOriginal as a POSIX time, if the file has one). ``id`` is the FAISS id;
  AUTOINCREMENT so an id is never reused for other content.
- ``files(path, size, mtime_ns, content_id, error)``: path (the file system's bytes, so names that
  are not valid UTF-8 survive) -> content. ``content_id`` is NULL and
  ``error`` set for files that were skipped.
- ``pending(content_id, gen, vector)``: vectors committed since the last FAISS checkpoint.
- ``tombstones(content_id, gen)``: contents deleted since the last FAISS checkpoint.
"""

from __future__ import annotations

import os
import sqlite3
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from clipsearch.errors import IndexAccessError, IndexCorruptError
from clipsearch.files import free_space_note

SCHEMA_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS roots (path BLOB PRIMARY KEY);
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
"""


@dataclass(frozen=True)
class IndexMeta:
    """What an index records about the model that produced its vectors."""

    model: str
    pretrained: str
    weights_sha256: str
    dim: int
    store_kind: str = "flat"
    schema_version: int = SCHEMA_VERSION


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


def _is_corruption(exc: sqlite3.Error) -> bool:
    return "not a database" in str(exc) or "malformed" in str(exc)


def under(root: str) -> tuple[bytes, bytes]:
    """SQL range bounds selecting every path strictly below directory ``root``."""
    prefix = os.fsencode(root).rstrip(b"/") + b"/"
    return prefix, prefix[:-1] + b"0"  # '0' sorts right after '/'


class Catalog:
    """One SQLite connection in WAL mode; every write goes through :meth:`transaction`."""

    def __init__(self, path: Path, *, writer: bool = False) -> None:
        """Open ``path``; only a ``writer`` creates tables or changes settings.

        Readers never write, so an index on read-only media can still be searched.
        """
        self.path = path
        conn: sqlite3.Connection | None = None
        try:
            self.conn = conn = self._connect(path, writer)
            if writer:
                # Pages freed when pending vectors move into the FAISS file go back to the file system
                # (see reclaim_space); only takes effect on a new, empty database.
                self.conn.execute("PRAGMA auto_vacuum = INCREMENTAL")
                self.conn.execute("PRAGMA journal_mode = WAL")
                self.conn.execute("PRAGMA synchronous = FULL")
                self.conn.executescript(f"BEGIN; {_SCHEMA} COMMIT;")  # one transaction: one fsync, not 7
            version = self.get("schema_version")
        except sqlite3.DatabaseError as exc:
            if conn is not None:  # a failed open keeps no file open
                conn.close()
            if isinstance(exc, sqlite3.OperationalError) and not _is_corruption(exc):
                raise IndexAccessError(
                    path.parent,
                    f"Cannot open the index catalog {path}: {exc}."
                    + (
                        free_space_note(path.parent)
                        or " Check that the folder exists and is readable (and writable, to index)."
                    ),
                ) from exc
            raise IndexCorruptError(path.parent, f"{path} is not a clipsearch catalog ({exc}).") from exc
        if version is not None and int(version) != SCHEMA_VERSION:
            self.conn.close()
            raise IndexCorruptError(
                path.parent,
                f"{path} has catalog schema version {version}; this clipsearch reads version "
                f"{SCHEMA_VERSION}.",
            )

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
        """``BEGIN IMMEDIATE`` ... ``COMMIT``, rolled back on any exception."""
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

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
                kwargs[f.name] = int(values[f.name]) if f.type in ("int", int) else values[f.name]
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

    def files_under(self, root: str) -> dict[str, FileState]:
        """Every catalogued file at or below ``root``."""
        low, high = under(root)
        rows = self.conn.execute(
            "SELECT path, size, mtime_ns, content_id, error FROM files "
            "WHERE path = ? OR (path >= ? AND path < ?)",
            (os.fsencode(root), low, high),
        )
        return {os.fsdecode(r[0]): FileState(r[1], r[2], r[3], r[4]) for r in rows}

    def file(self, path: str) -> FileState | None:
        row = self.conn.execute(
            "SELECT size, mtime_ns, content_id, error FROM files WHERE path = ?", (os.fsencode(path),)
        ).fetchone()
        return None if row is None else FileState(*row)

    def content_id(self, digest: str) -> int | None:
        row = self.conn.execute("SELECT id FROM contents WHERE hash = ?", (digest,)).fetchone()
        return None if row is None else int(row[0])

    def counts(self) -> dict[str, int]:
        one = self.conn.execute
        return {
            "files": one("SELECT count(*) FROM files WHERE content_id IS NOT NULL").fetchone()[0],
            "vectors": one("SELECT count(*) FROM contents").fetchone()[0],
            "skipped": one("SELECT count(*) FROM files WHERE content_id IS NULL").fetchone()[0],
        }

    def entries_matching(self, where: FileFilter) -> dict[int, list[Entry]]:
        """content id -> its files that pass the filter."""
        clause, params = where.sql()
        return _group(self.conn.execute(f"{_ENTRY_SQL} WHERE {clause}", params))

    def entries_of(self, content_ids: Sequence[int]) -> dict[int, list[Entry]]:
        """content id -> its files, for the ids given."""
        out: dict[int, list[Entry]] = {}
        for start in range(0, len(content_ids), 500):
            chunk = [int(i) for i in content_ids[start : start + 500]]
            marks = ",".join("?" * len(chunk))
            out.update(_group(self.conn.execute(f"{_ENTRY_SQL} WHERE f.content_id IN ({marks})", chunk)))
        return out

    def skipped(self) -> list[tuple[str, str]]:
        rows = self.conn.execute("SELECT path, error FROM files WHERE content_id IS NULL ORDER BY path")
        return [(os.fsdecode(path), error) for path, error in rows]

    # -- writes (call inside transaction()) ---------------------------------------------------

    def next_gen(self) -> int:
        gen = self.get_int("gen") + 1
        self.set("gen", gen)
        return gen

    def insert_content(self, digest: str, width: int, height: int, taken: float | None) -> int:
        cur = self.conn.execute(
            "INSERT INTO contents(hash, width, height, taken) VALUES (?, ?, ?, ?)",
            (digest, width, height, taken),
        )
        return int(cur.lastrowid or 0)

    def add_pending(self, gen: int, ids: Sequence[int], vectors: npt.NDArray[np.float32]) -> None:
        self.conn.executemany(
            "INSERT INTO pending(content_id, gen, vector) VALUES (?, ?, ?)",
            [(int(i), gen, np.asarray(v, dtype="<f4").tobytes()) for i, v in zip(ids, vectors, strict=True)],
        )

    def upsert_files(self, rows: Iterable[NewFile]) -> None:
        self.conn.executemany(
            "INSERT OR REPLACE INTO files(path, size, mtime_ns, content_id, error) VALUES (?, ?, ?, ?, ?)",
            [(os.fsencode(r.path), r.size, r.mtime_ns, r.content_id, r.error) for r in rows],
        )

    def delete_files(self, paths: Iterable[str]) -> None:
        self.conn.executemany("DELETE FROM files WHERE path = ?", [(os.fsencode(p),) for p in paths])

    def drop_orphan_contents(self, gen: int) -> int:
        """Delete contents no file points to; tombstone their ids for the vector store."""
        orphans = [
            r[0]
            for r in self.conn.execute(
                "SELECT id FROM contents"
                " WHERE NOT EXISTS (SELECT 1 FROM files WHERE content_id = contents.id)"
            )
        ]
        self.conn.executemany("DELETE FROM contents WHERE id = ?", [(i,) for i in orphans])
        self.conn.executemany("DELETE FROM pending WHERE content_id = ?", [(i,) for i in orphans])
        self.conn.executemany(
            "INSERT OR REPLACE INTO tombstones(content_id, gen) VALUES (?, ?)", [(i, gen) for i in orphans]
        )
        return len(orphans)

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
        """After a checkpoint at ``gen``: its pending vectors and tombstones live in the FAISS file."""
        self.conn.execute("DELETE FROM pending WHERE gen <= ?", (gen,))
        self.conn.execute("DELETE FROM tombstones WHERE gen <= ?", (gen,))

    def reclaim_space(self) -> None:
        """Return free pages (left by deleted pending vectors) to the file system; outside a transaction."""
        # executescript steps the pragma to completion (execute would free a single page)
        self.conn.executescript("PRAGMA incremental_vacuum;")
