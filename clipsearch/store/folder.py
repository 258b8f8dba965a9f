"""The index folder: the SQLite catalog and the FAISS vectors, owned together, with the writer lock.

Readers see the last committed state: the FAISS checkpoint file named in the catalog, plus the
vectors committed since (``pending``), minus contents deleted since (``tombstones``). The commit
protocol is described in ``indexes/README.md``; a rebuild is staged beside the index and swapped
in when complete (:mod:`clipsearch.store.rebuild`). Nothing here knows a model: the folder records
the model's facts (:class:`IndexMeta`) as the façade gives them.
"""

from __future__ import annotations

import os
import shutil
import sqlite3
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from clipsearch.errors import (
    IndexAccessError,
    IndexCorruptError,
    IndexGoneError,
    IndexNotFoundError,
    NotARootError,
    UsageError,
)
from clipsearch.files import free_space_note
from clipsearch.store import rebuild as staged
from clipsearch.store.catalog import Catalog, IndexMeta, view_id
from clipsearch.store.layout import (
    CATALOG_FILE,
    LOCK_FILE,
    acquire_lock,
    check_is_folder,
    check_not_busy,
    create_catalog,
    exists,
    index_root,
    not_writable,
    sweep_vector_files,
    vectors_file,
)
from clipsearch.store.vectors import VectorStore, create_store, load_store

__all__ = [
    "CATALOG_FILE",
    "LOCK_FILE",
    "IndexFolder",
    "check_not_busy",
    "exists",
    "index_root",
    "vectors_file",
]


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return st.st_dev, st.st_ino


class IndexFolder:
    """An index directory: open with :meth:`open` (read) or :meth:`open_for_write` (create/sync)."""

    def __init__(
        self,
        path: Path,
        catalog: Catalog,
        meta: IndexMeta,
        *,
        lock_fd: int | None = None,
        data: Path | None = None,
    ) -> None:
        self.path = path  # the index folder
        self.data = data or path  # where this catalog and its vectors live: the index, or its staged rebuild
        self.catalog = catalog
        self.meta = meta
        self._lock_fd = lock_fd
        self._store: VectorStore | None = None
        self._store_gen = -1
        self._rebuild_id = catalog.get(staged.REBUILD_ID)
        self._identity = _identity(self.data / CATALOG_FILE)

    # -- opening ------------------------------------------------------------------------------

    @classmethod
    def open(cls, path: str | Path) -> IndexFolder:
        """Open an existing index for reading.

        Raises:
            IndexNotFoundError: nothing is there.
            IndexCorruptError: something is there but it is not a clipsearch index.
        """
        root = index_root(path)
        check_is_folder(root)
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
        cls,
        path: str | Path,
        new_meta: Callable[[], IndexMeta] | None = None,
        *,
        rebuild: bool = False,
        resume: Callable[[IndexMeta], bool] | None = None,
    ) -> IndexFolder:
        """Open an index to write, holding the writer lock; create it (from ``new_meta()``) if missing.

        A rebuild of an existing index is staged beside it (readers keep using the index) and
        replaces it when :meth:`finish_rebuild` is called; a rebuild that was interrupted is resumed
        if ``resume`` accepts its metadata, else started over. Before anything else, a complete
        rebuild that a crash kept from replacing the index does so now.

        Args:
            path: the index folder.
            new_meta: the metadata of a new index (or rebuild); called only when one is created.
                None: the index must exist.
            rebuild: build a new index to replace this one.
            resume: whether an unfinished rebuild with this metadata may be continued (default: yes).

        Raises:
            IndexBusyError: another process is writing to this index.
            IndexAccessError: the folder cannot be created or written.
            IndexNotFoundError: no index there and no ``new_meta``.
        """
        root = index_root(path)
        check_is_folder(root)
        if rebuild and new_meta is None:
            raise UsageError("A rebuild needs the metadata of the index to build.")
        created = not root.exists()
        try:
            root.mkdir(parents=True, exist_ok=True)
            lock_fd = acquire_lock(root)
        except OSError as exc:
            raise not_writable(root, exc) from exc
        try:
            _settle(root)
            live = root / CATALOG_FILE
            data = root
            if rebuild and (live.exists() or staged.staged_info(root) is not None):
                assert new_meta is not None
                catalog = staged.open_staging(root, new_meta, resume or (lambda meta: True))
                data = staged.staging_dir(root)
            else:
                if not live.exists():
                    if new_meta is None:
                        raise IndexNotFoundError(root)
                    create_catalog(live, new_meta(), index=root)
                catalog = Catalog(live, writer=True)
            meta = catalog.meta()
            if meta is None:
                catalog.close()
                raise IndexCorruptError(root, f"{data / CATALOG_FILE} holds no index metadata.")
        except (sqlite3.Error, OSError) as exc:  # e.g. the disk filled up while the catalog was made
            os.close(lock_fd)
            if created:  # a failed creation leaves nothing behind
                shutil.rmtree(root, ignore_errors=True)
            raise IndexAccessError(
                root,
                f"Cannot write the index at {root}: {exc}."
                + (free_space_note(root) or " Check the folder's permissions, then run the command again."),
            ) from exc
        except BaseException:
            os.close(lock_fd)
            if created:  # a failed creation leaves nothing behind
                shutil.rmtree(root, ignore_errors=True)
            raise
        folder = cls(root, catalog, meta, lock_fd=lock_fd, data=data)
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

    @property
    def rebuilding(self) -> bool:
        """Whether this is a staged rebuild (see :meth:`finish_rebuild`), not yet the index."""
        return self.data != self.path

    def finish_rebuild(self) -> None:
        """Replace the index with this staged rebuild, atomically for readers; the folder is then
        the index. Nothing to do unless :attr:`rebuilding`.

        Raises:
            IndexAccessError: the replacement failed (full disk...): the index is as it was, and the
                complete rebuild replaces it on the next open to write.
        """
        if not self.rebuilding:
            return
        self.checkpoint()
        try:
            staged.mark_complete(self.catalog)
            self.catalog.close()
            staged.swap_in(self.path)
            catalog = Catalog(self.path / CATALOG_FILE, writer=True)
        except (sqlite3.Error, OSError) as exc:
            raise IndexAccessError(
                self.path,
                f"Replacing the index at {self.path} with its rebuild failed: {exc}. The index is as it "
                "was and the rebuild is complete beside it; once the cause is fixed (free disk space, "
                "permissions), the next sync of this index puts the rebuild in its place.",
            ) from exc
        self.catalog, self.data = catalog, self.path
        self._store, self._store_gen = None, -1
        self._rebuild_id = catalog.get(staged.REBUILD_ID)
        self._identity = _identity(self.path / CATALOG_FILE)

    def check_present(self) -> None:
        """Raise :class:`IndexGoneError` if the index folder was deleted (or replaced) since it was opened.

        SQLite goes on writing into a deleted catalog without complaint: a writer checks this before
        each commit, so that a run stops as soon as its work can no longer be kept.
        """
        if _identity(self.data / CATALOG_FILE) != self._identity:
            raise IndexGoneError(self.path)

    @property
    def rebuild_id(self) -> str | None:
        """Names the rebuild that made the index as this folder last read it (None: never rebuilt)."""
        return self._rebuild_id

    def follow_rebuild(self) -> bool:
        """For a reader: whether a rebuild has replaced the index since it was last read; if so, the
        folder takes up the new index (its metadata now, its vectors on next use)."""
        with self.catalog.snapshot():
            rebuild_id = self.catalog.get(staged.REBUILD_ID)
            if rebuild_id == self._rebuild_id:
                return False
            meta = self.catalog.meta()
        if meta is not None:
            self.meta = meta
        self._rebuild_id, self._store, self._store_gen = rebuild_id, None, -1
        return True

    def forget_root(self, root: str) -> int:
        """Remove a recorded root, its files, and the vectors no file uses any more; returns the
        number of files removed.

        Raises:
            NotARootError: ``root`` is not one of the recorded roots.
        """
        roots = self.catalog.roots()
        if root not in roots:
            raise NotARootError(self.path, root, roots)
        self.check_present()
        with self.catalog.transaction():
            removed = self.catalog.delete_files_under(root)
            self.catalog.remove_root(root)
            self.catalog.drop_orphan_contents()
        self.checkpoint()
        return removed

    def close(self) -> None:
        empty_rebuild = self.rebuilding and self._lock_fd is not None and self._records_nothing()
        self.catalog.close()
        if empty_rebuild:  # opened, but nothing recorded (no roots, say): leave nothing behind
            shutil.rmtree(self.data, ignore_errors=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    def _records_nothing(self) -> bool:
        try:
            return not self.catalog.roots() and not self.catalog.counts()["files"]
        except sqlite3.Error:
            return False

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
                rebuild_id = self.catalog.get(staged.REBUILD_ID)
                same_index = rebuild_id == self._rebuild_id  # else a rebuild replaced it: load it whole
                meta = self.meta if same_index else (self.catalog.meta() or self.meta)
                incremental = self._store is not None and same_index and vgen <= self._store_gen
                since = self._store_gen if incremental else vgen
                ids, vectors = self.catalog.pending_after(since, meta.dim)
                dead = self.catalog.tombstones_after(since)
            try:
                store = (
                    self._store
                    if incremental and self._store is not None
                    else self._load_checkpoint(vgen, meta)
                )
            except FileNotFoundError:
                continue
            store.remove(dead)
            store.add(ids, vectors)
            self._store, self._store_gen, self.meta, self._rebuild_id = store, gen, meta, rebuild_id
            return
        raise IndexCorruptError(
            self.path, f"The vectors file {self.data / vectors_file(vgen)} named by the catalog is missing."
        )

    def _load_checkpoint(self, vgen: int, meta: IndexMeta) -> VectorStore:
        if vgen == 0:
            return create_store(meta.store_kind, meta.dim)
        path = self.data / vectors_file(vgen)
        try:
            return load_store(meta.store_kind, path)
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
        self.check_present()
        store = self.store
        store.save(self.data / vectors_file(self._store_gen))
        with self.catalog.transaction():
            self.catalog.set("vectors_gen", self._store_gen)
            self.catalog.forget_log_through(self._store_gen)
        self.catalog.reclaim_space()
        self._sweep_stale_vector_files()

    def _sweep_stale_vector_files(self) -> None:
        sweep_vector_files(self.data, keep=vectors_file(self.catalog.get_int("vectors_gen")))

    def stored_vector(self, path: str) -> npt.NDArray[np.float32] | None:
        """The indexed (unit) vector of ``path`` if the file is indexed and unchanged on disk, else None."""
        state = self.catalog.file(path)
        if state is None or state.content_id is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        if (st.st_size, st.st_mtime_ns) != (state.size, state.mtime_ns):
            return None
        return self.content_vector(state.content_id)

    def content_vector(self, content_id: int, view: int = 0) -> npt.NDArray[np.float32]:
        """A content's main vector (or that of its ``view``: a side view, a video moment), of unit
        length as the model gave it (the store's 8-bit codes give it back within 0.1% of unit
        length, which would otherwise scale every score of a search with it).

        Raises:
            RuntimeError: the store does not hold it (FAISS's error for an unknown id).
        """
        vector = self.store.reconstruct(np.array([view_id(content_id, view)], dtype=np.int64))[0]
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def info(self) -> dict[str, Any]:
        """What is in the index, which model, where it lives, each root's settings, and an
        unfinished rebuild if there is one."""
        counts = self.catalog.counts()
        videos = self.catalog.video_counts()
        size = sum(f.stat().st_size for f in self.path.iterdir() if f.is_file())
        settings = self.catalog.root_settings()
        return {
            "index": str(self.path),
            "model": self.meta.model,
            "pretrained": self.meta.pretrained,
            "weights_sha256": self.meta.weights_sha256,
            "dim": self.meta.dim,
            "store": self.meta.store_kind,
            "schema_version": self.meta.schema_version,
            "coverage": self.meta.coverage,
            "count": counts["files"],
            "contents": counts["contents"],
            "vectors": counts["vectors"],
            "skipped": counts["skipped"],
            "videos": videos["videos"],
            "moments": videos["moments"],
            "video_seconds": round(float(videos["video_seconds"]), 3),
            "roots": list(settings),
            "root_settings": [{"path": root, **s.to_dict()} for root, s in settings.items()],
            "size_bytes": size,
            "rebuild": None if self.rebuilding else staged.staged_info(self.path),
        }


def _settle(root: Path) -> None:
    try:
        staged.settle(root)
    except (sqlite3.Error, OSError) as exc:
        raise IndexAccessError(
            root,
            f"A complete rebuild of the index at {root} could not replace it yet: {exc}. The index is as "
            "it was; free some disk space (or fix the folder's permissions) and try again.",
        ) from exc
