"""The index folder: the SQLite catalog and the FAISS vectors, owned together, with the writer lock.

Readers see the last committed state: the FAISS checkpoint file named in the catalog, plus the
vectors committed since (``pending``), minus contents deleted since (``tombstones``). The commit
protocol is described in ``indexes/README.md``. Nothing here knows a model: the folder records
the model's facts (:class:`IndexMeta`) as the façade gives them.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from clipsearch.errors import IndexAccessError, IndexBusyError, IndexCorruptError, IndexNotFoundError
from clipsearch.files import free_space_note, fsync_path
from clipsearch.store.catalog import Catalog, IndexMeta
from clipsearch.store.vectors import VectorStore, create_store, load_store

CATALOG_FILE = "catalog.sqlite"
LOCK_FILE = "write.lock"
_OWN_FILES = (CATALOG_FILE, CATALOG_FILE + "-wal", CATALOG_FILE + "-shm", LOCK_FILE)
#: Folders older versions exported the text encoder into, inside the index (now in the model cache).
_LEGACY_GLOBS = ("text-onnx-*", ".text-onnx-tmp-*")


def vectors_file(gen: int) -> str:
    """Name of the FAISS checkpoint holding every vector committed up to ``gen``."""
    return f"vectors-{gen:010d}.faiss"


def index_root(path: str | Path) -> Path:
    """The absolute folder of an index, from what a caller gave."""
    return Path(path).expanduser().absolute()


def exists(path: str | Path) -> bool:
    """Whether an index (its catalog) is at ``path``."""
    return (index_root(path) / CATALOG_FILE).is_file()


class IndexFolder:
    """An index directory: open with :meth:`open` (read) or :meth:`open_for_write` (create/sync)."""

    def __init__(self, path: Path, catalog: Catalog, meta: IndexMeta, *, lock_fd: int | None = None) -> None:
        self.path = path
        self.catalog = catalog
        self.meta = meta
        self._lock_fd = lock_fd
        self._store: VectorStore | None = None
        self._store_gen = -1

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path) -> IndexFolder:
        """Open an existing index for reading.

        Raises:
            IndexNotFoundError: nothing is there.
            IndexCorruptError: something is there but it is not a clipsearch index.
        """
        root = index_root(path)
        _check_is_folder(root)
        if not (root / CATALOG_FILE).is_file():
            raise IndexNotFoundError(root)
        catalog = Catalog(root / CATALOG_FILE)
        meta = catalog.meta()
        if meta is None:
            catalog.close()
            raise IndexCorruptError(root, f"{root / CATALOG_FILE} holds no index metadata.")
        return cls(root, catalog, meta)

    @classmethod
    def open_for_write(
        cls, path: str | Path, new_meta: Callable[[], IndexMeta] | None = None, *, rebuild: bool = False
    ) -> IndexFolder:
        """Open an index to write, holding the writer lock; create it (from ``new_meta()``) if missing.

        Args:
            path: the index folder.
            new_meta: the metadata of a new index; called only when one is created. None: the
                index must exist.
            rebuild: delete the index's contents first (a new index is created).

        Raises:
            IndexBusyError: another process is writing to this index.
            IndexAccessError: the folder cannot be created or written.
            IndexNotFoundError: no index there and no ``new_meta``.
        """
        root = index_root(path)
        _check_is_folder(root)
        try:
            root.mkdir(parents=True, exist_ok=True)
            lock_fd = _acquire_lock(root)
        except OSError as exc:
            raise _not_writable(root, exc) from exc
        try:
            if rebuild:
                _remove_index_files(root)
            if not (root / CATALOG_FILE).exists():
                if new_meta is None:
                    raise IndexNotFoundError(root)
                _create_catalog(root / CATALOG_FILE, new_meta())
            catalog = Catalog(root / CATALOG_FILE, writer=True)
            meta = catalog.meta()
            if meta is None:
                catalog.close()
                raise IndexCorruptError(root, f"{root / CATALOG_FILE} holds no index metadata.")
        except (sqlite3.Error, OSError) as exc:  # e.g. the disk filled up while the catalog was made
            os.close(lock_fd)
            raise IndexAccessError(
                root,
                f"Cannot write the index at {root}: {exc}."
                + (free_space_note(root) or " Check the folder's permissions, then run the command again."),
            ) from exc
        except BaseException:
            os.close(lock_fd)
            raise
        folder = cls(root, catalog, meta, lock_fd=lock_fd)
        folder._sweep_stale_vector_files()
        return folder

    @property
    def writable(self) -> bool:
        """Whether this process holds the writer lock."""
        return self._lock_fd is not None

    def write_meta(self, meta: IndexMeta) -> None:
        """Replace the recorded metadata (only before anything is committed with the old one)."""
        self.catalog.write_meta(meta)
        self.meta = meta

    def close(self) -> None:
        self.catalog.close()
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def __enter__(self) -> IndexFolder:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- vectors ------------------------------------------------------------------------------

    @property
    def store(self) -> VectorStore:
        """The vector store as of the last committed batch (refreshed if the catalog moved on)."""
        gen = self.catalog.get_int("gen")
        if self._store is None or gen != self._store_gen:
            self._refresh_store()
        assert self._store is not None
        return self._store

    def _refresh_store(self) -> None:
        for _ in range(10):  # a checkpoint may replace the file between our snapshot and opening it
            with self.catalog.snapshot():
                gen = self.catalog.get_int("gen")
                vgen = self.catalog.get_int("vectors_gen")
                incremental = self._store is not None and vgen <= self._store_gen
                since = self._store_gen if incremental else vgen
                ids, vectors = self.catalog.pending_after(since, self.meta.dim)
                dead = self.catalog.tombstones_after(since)
            try:
                store = (
                    self._store if incremental and self._store is not None else self._load_checkpoint(vgen)
                )
            except FileNotFoundError:
                continue
            store.remove(dead)
            store.add(ids, vectors)
            self._store, self._store_gen = store, gen
            return
        raise IndexCorruptError(
            self.path, f"The vectors file {self.path / vectors_file(vgen)} named by the catalog is missing."
        )

    def _load_checkpoint(self, vgen: int) -> VectorStore:
        if vgen == 0:
            return create_store(self.meta.store_kind, self.meta.dim)
        path = self.path / vectors_file(vgen)
        try:
            return load_store(self.meta.store_kind, path)
        except RuntimeError as exc:  # faiss raises RuntimeError on unreadable files
            if not path.exists():  # replaced by a newer checkpoint since our snapshot: retry
                raise FileNotFoundError(path) from exc
            raise IndexCorruptError(
                self.path, f"{path} cannot be read ({str(exc).splitlines()[0]})."
            ) from exc

    def checkpoint(self) -> None:
        """Fold the pending vectors into a new FAISS file (written first), then point the catalog at it."""
        gen = self.catalog.get_int("gen")
        old = self.catalog.get_int("vectors_gen")
        if gen == old:
            return
        store = self.store
        store.save(self.path / vectors_file(self._store_gen))
        with self.catalog.transaction():
            self.catalog.set("vectors_gen", self._store_gen)
            self.catalog.forget_log_through(self._store_gen)
        self.catalog.reclaim_space()
        self._sweep_stale_vector_files()

    def _sweep_stale_vector_files(self) -> None:
        keep = vectors_file(self.catalog.get_int("vectors_gen"))
        for entry in self.path.glob("vectors-*.faiss*"):
            if entry.name != keep:
                with contextlib.suppress(OSError):
                    entry.unlink()

    def stored_vector(self, path: str) -> npt.NDArray[np.float32] | None:
        """The indexed vector of ``path`` if the file is indexed and unchanged on disk, else None."""
        state = self.catalog.file(path)
        if state is None or state.content_id is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        if (st.st_size, st.st_mtime_ns) != (state.size, state.mtime_ns):
            return None
        return self.store.reconstruct(np.array([state.content_id], dtype=np.int64))[0]

    def info(self) -> dict[str, Any]:
        """What is in the index, which model, where it lives."""
        counts = self.catalog.counts()
        size = sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())
        return {
            "index": str(self.path),
            "model": self.meta.model,
            "pretrained": self.meta.pretrained,
            "weights_sha256": self.meta.weights_sha256,
            "dim": self.meta.dim,
            "store": self.meta.store_kind,
            "schema_version": self.meta.schema_version,
            "count": counts["files"],
            "vectors": counts["vectors"],
            "skipped": counts["skipped"],
            "roots": self.catalog.roots(),
            "size_bytes": size,
        }


def _check_is_folder(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise IndexCorruptError(root, f"{root} is a file, not an index folder.", rebuildable=False)


def _create_catalog(path: Path, meta: IndexMeta) -> None:
    """Create a catalog with its metadata under a temporary name, then rename it into place.

    A reader therefore never sees a catalog without tables or metadata.
    """
    tmp = path.with_name(path.name + ".new")
    for leftover in (tmp, tmp.with_name(tmp.name + "-wal"), tmp.with_name(tmp.name + "-shm")):
        leftover.unlink(missing_ok=True)
    catalog = Catalog(tmp, writer=True)
    try:
        catalog.write_meta(meta)
    finally:  # a failed write (a full disk) keeps no file open
        catalog.close()
    os.replace(tmp, path)
    fsync_path(path.parent)


def check_not_busy(path: str | Path) -> None:
    """Fail fast (before loading any model) if another process is writing to the index at ``path``."""
    root = index_root(path)
    if (root / LOCK_FILE).is_file():
        try:
            fd = _acquire_lock(root)
        except OSError as exc:  # a read-only folder (its lock file cannot be opened to write)
            raise _not_writable(root, exc) from exc
        os.close(fd)


def _not_writable(root: Path, exc: OSError) -> IndexAccessError:
    return IndexAccessError(
        root,
        f"Cannot write to the index folder {root}: {exc.strerror or exc}."
        + (
            free_space_note(root)
            or " Searching it works as before; to update it, make the folder writable, or write the "
            "index to another folder."
        ),
    )


def _acquire_lock(root: Path) -> int:
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise IndexBusyError(root, holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def _remove_index_files(root: Path) -> None:
    for name in _OWN_FILES[:-1]:
        with contextlib.suppress(FileNotFoundError):
            (root / name).unlink()
    for entry in root.glob("vectors-*.faiss*"):
        entry.unlink()
    thumbs = root / "thumbnails"
    if thumbs.is_dir():
        shutil.rmtree(thumbs)
    for pattern in _LEGACY_GLOBS:
        for entry in root.glob(pattern):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()
