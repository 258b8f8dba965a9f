"""The index folder: the SQLite catalog and the FAISS vectors, owned together, with the writer lock.

Readers see the last committed state: the FAISS checkpoint file named in the catalog, plus the
vectors committed since (``pending``), minus contents deleted since (``tombstones``). The commit
protocol is described in ``indexes/README.md``; a rebuild is staged beside the index and swapped
in when complete (:mod:`clipsearch.store.rebuild`). Nothing here knows a model: the folder records
the model's facts (:class:`IndexMeta`) as the façade gives them.
"""

from __future__ import annotations

import json
import os
import shutil
import sqlite3
from collections.abc import Callable
from dataclasses import replace
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
from clipsearch.store import ivf as ivf_kind
from clipsearch.store import maintain
from clipsearch.store import rebuild as staged
from clipsearch.store.catalog import SCHEMA_VERSION, Catalog, IndexMeta
from clipsearch.store.ivf import IvfParams
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
    sweep_unlisted,
    vector_files,
    vectors_file,
)
from clipsearch.store.maintain import StoreSettings
from clipsearch.store.segmented import SegmentedStore
from clipsearch.store.segments import Segment, SegmentInfo
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
        self._store_state = (-1, -1)  # (gen, layout) of the catalog the store was read from
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
        try:
            folder._upgrade()
            folder._sweep()
        except BaseException:
            folder.close()
            raise
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
        self._store, self._store_state = None, (-1, -1)
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
        self._rebuild_id, self._store, self._store_state = rebuild_id, None, (-1, -1)
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
        if self._store is None or self._vector_state() != self._store_state:
            self._refresh_store()
        assert self._store is not None
        return self._store

    def _vector_state(self) -> tuple[int, int]:
        rows = dict(self.catalog.conn.execute("SELECT key, value FROM meta WHERE key IN ('gen', 'layout')"))
        return int(rows.get("gen", 0)), int(rows.get("layout", 0))

    def _refresh_store(self) -> None:
        for _ in range(10):  # a checkpoint or merge may replace files between our snapshot and opening them
            with self.catalog.snapshot():
                state = self._vector_state()
                vgen = self.catalog.get_int("vectors_gen")
                rebuild_id = self.catalog.get(staged.REBUILD_ID)
                same_index = rebuild_id == self._rebuild_id  # else a rebuild replaced it: load it whole
                meta = self.meta if same_index else (self.catalog.meta() or self.meta)
                meta = replace(meta, store_kind=self.catalog.get("store_kind") or meta.store_kind)
                listed = [SegmentInfo(*row) for row in self.catalog.segments()]
                legacy = int(self.catalog.get("schema_version") or 1) < 2
                params = _params(self.catalog)
                incremental = self._store is not None and same_index and state[1] == self._store_state[1]
                if legacy:  # a version-1 checkpoint drops the log up to it: reload past it
                    incremental = incremental and vgen <= self._store_state[0]
                since = self._store_state[0] if incremental else vgen
                ids, vectors = self.catalog.pending_after(since, meta.dim)
                if incremental or legacy:  # version 1: the tombstones after its checkpoint
                    dead = self.catalog.tombstones_after(since)
                else:
                    dead = self.catalog.tombstone_ids()
            try:
                if incremental:
                    store = self._store
                elif legacy:
                    store = self._load_checkpoint(vgen, meta)
                else:
                    store = self._open_segments(listed, meta, params)
            except FileNotFoundError:
                continue
            assert store is not None
            store.remove(dead)
            store.add(ids, vectors)
            self._store, self._store_state, self.meta, self._rebuild_id = store, state, meta, rebuild_id
            return
        raise IndexCorruptError(
            self.path, f"The vector files named by the catalog in {self.data} are missing."
        )

    def _open_segments(
        self, listed: list[SegmentInfo], meta: IndexMeta, params: dict[str, Any]
    ) -> SegmentedStore:
        """The segments' store; segments opened already are reused while the big one is the same."""
        previous = self._store.segments if isinstance(self._store, SegmentedStore) else []
        opened = {s.name: s for s in previous}
        big = next((info for info in listed if info.big), None)
        if big is None or big.name not in opened:
            opened = {}
        segments = [
            opened[info.name] if info.name in opened else self._open_segment(info, opened, listed)
            for info in listed
        ]
        ivf_params = None
        if meta.store_kind == ivf_kind.KIND and "nprobe" in params:
            ivf_params = IvfParams(params["nlist"], params["m"], params["nprobe"], params["rerank"])
        return SegmentedStore(meta.dim, meta.store_kind, segments, ivf_params)

    def _open_segment(
        self, info: SegmentInfo, opened: dict[str, Segment], listed: list[SegmentInfo]
    ) -> Segment:
        codec = None
        if not info.big:  # a small segment's IVF codes need the big segment's quantizer
            big = next((i for i in listed if i.big), None)
            if big is not None:
                if big.name not in opened:
                    opened[big.name] = Segment(self.data, big)
                codec = opened[big.name].ivf
        segment = Segment(self.data, info, codec)
        opened[info.name] = segment
        return segment

    def _load_checkpoint(self, vgen: int, meta: IndexMeta) -> VectorStore:
        """The vectors of a version-1 index: one FAISS file, read whole."""
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

    def checkpoint(self, *, merges: str = "all") -> None:
        """Write the vectors committed since the last checkpoint as a new segment (what changed, not
        the whole index), then name it in the catalog; merge segments when due (see
        :mod:`clipsearch.store.maintain`). ``merges``: ``all``, ``tiers`` (small segments only,
        no fold into the big one), ``none``."""
        gen = self.catalog.get_int("gen")
        if gen == self.catalog.get_int("vectors_gen"):
            self._merge(merges)
            return
        self.check_present()
        store = self._segmented()
        info = maintain.write_pending(self.data, store)
        dead = store.dead_ids()
        with self.catalog.transaction():
            self.catalog.replace_segments([], [(info.name, info.count, info.big)] if info else [])
            self.catalog.set("vectors_gen", self._store_state[0])
            self.catalog.forget_pending_through(self._store_state[0])
            # tombstones of vectors that never reached a file (deleted while pending) are done with
            self.catalog.forget_tombstones(np.setdiff1d(self.catalog.tombstone_ids(), dead))
        self.catalog.reclaim_space()
        self._sweep()
        self._merge(merges)

    def _merge(self, merges: str) -> None:
        if merges == "none":
            return
        while (due := maintain.due_merge(self._segmented(), fold=merges == "all")) is not None:
            inputs, big = due
            self._replace(inputs, maintain.merge(self.data, self._segmented(), inputs, big))

    def commit_vectors(self, ids: Ids, vectors: Vectors, write_rows: Callable[[Catalog], None]) -> None:
        """Write ``vectors`` straight to a new segment, then in one transaction list it with the
        catalog rows ``write_rows`` writes (the ids' contents): a large batch skips the pending log.

        The ids must be new (content ids above :meth:`Catalog.last_content_id`, taken under the
        writer lock); a crash before the transaction leaves only files no catalog names.
        """
        self.check_present()
        store = self._segmented()
        order = np.argsort(ids, kind="stable")
        info = maintain.write_vectors(self.data, store, ids[order], vectors[order])
        self.check_present()
        with self.catalog.transaction():
            caught_up = self.catalog.get_int("gen") == self.catalog.get_int("vectors_gen")
            write_rows(self.catalog)
            gen = self.catalog.next_gen()
            if caught_up:  # nothing pending: the vectors up to this batch are all in files
                self.catalog.set("vectors_gen", gen)
            self.catalog.replace_segments([], [(info.name, info.count, info.big)])
        self._merge("tiers")

    def optimize(self, note: Callable[[str], None] | None = None) -> str | None:
        """Rebuild the vector files if the index has outgrown its kind or training (or its settings
        changed): a checkpoint first, then one new big segment, tuned and measured, swapped in.
        Searches use the old files until then. Returns why it rebuilt (None: nothing to do)."""
        self.checkpoint(merges="none")
        store = self._segmented()
        params = _params(self.catalog)
        settings = self.store_settings()
        reason = maintain.needs_rebuild(len(store), self.meta.dim, store.kind, params, settings)
        if reason is None:
            self._merge("all")
            return None
        kind = maintain.choose_kind(len(store), self.meta.dim, settings, store.kind)
        if not len(store):  # nothing to rewrite
            self._replace(store.segments, None, kind=kind, params={})
            return reason
        if note:
            note(f"Reorganising the vectors ({reason}); searches use the current files until it is done ...")
        built = maintain.rebuild(self.data, store, kind, settings.memory_budget, note)
        self._replace(store.segments, built.info, kind=kind, params=built.params)
        return reason

    def _segmented(self) -> SegmentedStore:
        store = self.store
        if not isinstance(store, SegmentedStore):  # a writer upgrades a version-1 index when it opens it
            raise IndexCorruptError(self.path, f"The index at {self.path} has not been upgraded for writing.")
        return store

    def _replace(
        self,
        inputs: list[Segment],
        output: SegmentInfo | None,
        *,
        kind: str | None = None,
        params: dict[str, Any] | None = None,
    ) -> None:
        """Swap ``inputs`` for ``output`` in the catalog, dropping the tombstones of what they held."""
        gone = self._segmented().dead_ids(inputs)
        self.check_present()
        with self.catalog.transaction():
            added = [(output.name, output.count, output.big)] if output is not None else []
            self.catalog.replace_segments([s.name for s in inputs], added)
            self.catalog.forget_tombstones(gone)
            if kind is not None:
                self.catalog.set("store_kind", kind)
                self.catalog.set("store_params", json.dumps(params or {}, sort_keys=True))
        if kind is not None:
            self.meta = replace(self.meta, store_kind=kind)
        self._sweep()

    def _sweep(self) -> None:
        sweep_unlisted(self.data, self.catalog)

    def store_settings(self) -> StoreSettings:
        """The kind asked for (``auto``: by size) and the memory budget, as the index records them."""
        budget = self.catalog.get("memory_budget")
        return StoreSettings(
            self.catalog.get("store_choice") or "auto",
            int(budget) if budget else maintain.DEFAULT_MEMORY_BUDGET,
        )

    def set_store_settings(self, choice: str | None = None, memory_budget: int | None = None) -> None:
        """Record the kind to store vectors as (``auto``, ``flat``, ``sq8``, ``ivfpq``) and the memory
        budget; the next :meth:`optimize` applies them.

        Raises:
            BadValueError: ("store", choice) for an unknown kind.
        """
        if choice is not None:
            maintain.parse_choice(choice)
        self.check_present()
        with self.catalog.transaction():
            if choice is not None:
                self.catalog.set("store_choice", choice)
            if memory_budget is not None:
                self.catalog.set("memory_budget", int(memory_budget))
            empty = int(self.catalog.get("schema_version") or 1) >= 2 and not self.catalog.segments()
            if empty:  # nothing written yet: the vectors to come are written in the new kind at once
                kind = maintain.choose_kind(0, self.meta.dim, self.store_settings(), self.meta.store_kind)
                self.catalog.set("store_kind", kind)
        if empty:
            self.meta = replace(self.meta, store_kind=kind)

    def _upgrade(self) -> None:
        """Rewrite a version-1 index's vectors (one FAISS file and its log) as one big segment, in place."""
        if int(self.catalog.get("schema_version") or 1) >= 2:
            return
        legacy = self.store  # the version-1 file with its pending vectors and tombstones applied
        info = maintain.from_legacy(self.data, legacy)
        self.check_present()
        with self.catalog.transaction():
            self.catalog.replace_segments([], [(info.name, info.count, info.big)] if info else [])
            self.catalog.set("vectors_gen", self.catalog.get_int("gen"))
            self.catalog.forget_pending_through(self.catalog.get_int("gen"))
            self.catalog.forget_tombstones(self.catalog.tombstone_ids())
            self.catalog.set("schema_version", SCHEMA_VERSION)
        self.meta = replace(self.meta, schema_version=SCHEMA_VERSION)
        self._store = None
        self._sweep()

    def stored_vector(self, path: str) -> npt.NDArray[np.float32] | None:
        """The indexed vector of ``path`` if the file is indexed and unchanged on disk, else None.

        A unit vector, as the model gave it: the store's 8-bit codes give it back within one part in
        a thousand of unit length, which would otherwise scale every score of a search with it.
        """
        state = self.catalog.file(path)
        if state is None or state.content_id is None:
            return None
        try:
            st = os.stat(path)
        except OSError:
            return None
        if (st.st_size, st.st_mtime_ns) != (state.size, state.mtime_ns):
            return None
        vector = self.store.reconstruct(np.array([state.content_id], dtype=np.int64))[0]
        norm = float(np.linalg.norm(vector))
        return vector / norm if norm > 0 else vector

    def info(self) -> dict[str, Any]:
        """What is in the index, which model, where it lives, each root's settings, and an
        unfinished rebuild if there is one."""
        counts = self.catalog.counts()
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
            "roots": list(settings),
            "root_settings": [{"path": root, **s.to_dict()} for root, s in settings.items()],
            "size_bytes": size,
            "rebuild": None if self.rebuilding else staged.staged_info(self.path),
            **self._store_info(counts["vectors"]),
        }

    def _store_info(self, vectors: int) -> dict[str, Any]:
        """The vectors' kind, its parameters and measured recall, the segments, bytes on disk."""
        with self.catalog.snapshot():
            kind = self.catalog.get("store_kind") or self.meta.store_kind
            params = _params(self.catalog)
            settings = self.store_settings()
            listed = self.catalog.segments()
            legacy = int(self.catalog.get("schema_version") or 1) < 2
        exact = kind != ivf_kind.KIND or "nprobe" not in params
        return {
            "store": kind,
            "store_choice": settings.choice,
            "memory_budget": settings.memory_budget,
            "store_params": {k: v for k, v in params.items() if k in ("nlist", "m", "nprobe", "rerank")},
            "recall_at_10": 1.0 if exact else params.get("recall_at_10"),
            "filtered_recall_at_10": 1.0 if exact else params.get("filtered_recall_at_10"),
            "recall_measured_at": None if exact else params.get("measured_at"),
            "segments": (1 if self.catalog.get_int("vectors_gen") else 0) if legacy else len(listed),
            **vector_files(self.data, self.catalog, vectors),
        }


Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]


def _params(catalog: Catalog) -> dict[str, Any]:
    """The recorded ``store_params`` (empty when none or unreadable)."""
    try:
        value = json.loads(catalog.get("store_params") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}


def _settle(root: Path) -> None:
    try:
        staged.settle(root)
    except (sqlite3.Error, OSError) as exc:
        raise IndexAccessError(
            root,
            f"A complete rebuild of the index at {root} could not replace it yet: {exc}. The index is as "
            "it was; free some disk space (or fix the folder's permissions) and try again.",
        ) from exc
