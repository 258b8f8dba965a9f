"""The vector files of an index folder: reading them as a store, checkpoints, merges, rebuilds.

:class:`VectorFiles` is the part of :class:`~clipsearch.store.folder.IndexFolder` that owns the
segments (:mod:`clipsearch.store.segments`) and the vector log in the catalog: readers see the
segments the catalog lists, plus the pending vectors, minus the tombstones; a writer turns pending
vectors into segments, merges them and rewrites them in another kind
(:mod:`clipsearch.store.maintain`), each change written to new files first and switched in by one
transaction. A version-1 index (one FAISS file) is read as it is and upgraded by its first writer.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from clipsearch.errors import IndexCorruptError
from clipsearch.store import ivf as ivf_kind
from clipsearch.store import maintain
from clipsearch.store import rebuild as staged
from clipsearch.store.catalog import SCHEMA_VERSION, Catalog, IndexMeta
from clipsearch.store.ivf import IvfParams
from clipsearch.store.layout import sweep_unlisted, vector_files, vectors_file
from clipsearch.store.maintain import StoreSettings
from clipsearch.store.segmented import SegmentedStore
from clipsearch.store.segments import DamagedSegmentError, Segment, SegmentInfo
from clipsearch.store.vectors import VectorStore, create_store, load_store

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]


class VectorFiles:
    """The vectors of an index folder (a base of :class:`~clipsearch.store.folder.IndexFolder`)."""

    path: Path  # the index folder
    data: Path  # where this catalog and its vectors live: the index, or its staged rebuild
    catalog: Catalog
    meta: IndexMeta
    _store: VectorStore | None
    _store_state: tuple[int, int]  # (gen, layout) of the catalog the store was read from
    _rebuild_id: str | None

    def check_present(self) -> None:
        """Raise :class:`IndexGoneError` if the index folder was deleted since it was opened."""
        raise NotImplementedError  # IndexFolder's

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
            except DamagedSegmentError as exc:
                raise IndexCorruptError(self.path, f"The index's vector files are damaged: {exc}.") from exc
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

    def commit_vectors(
        self, ids: Ids, vectors: Vectors, write_rows: Callable[[Catalog], None], *, merges: str = "tiers"
    ) -> None:
        """Write ``vectors`` straight to a new segment, then in one transaction list it with the
        catalog rows ``write_rows`` writes (the ids' contents): a large batch skips the pending log.
        ``merges`` after it: as :meth:`checkpoint`'s (``none``: a long import leaves them to its end).

        The ids must be new (content ids above :meth:`Catalog.last_content_id`, taken under the
        writer lock); a crash before the transaction leaves only files no catalog names.
        """
        self.check_present()
        store = self._segmented()
        if len(ids) > 1 and not (np.diff(ids) > 0).all():  # new contents come in order: no copy then
            order = np.argsort(ids, kind="stable")
            ids, vectors = ids[order], vectors[order]
        info = maintain.write_vectors(self.data, store, ids, vectors)
        self.check_present()
        with self.catalog.transaction():
            caught_up = self.catalog.get_int("gen") == self.catalog.get_int("vectors_gen")
            write_rows(self.catalog)
            gen = self.catalog.next_gen()
            if caught_up:  # nothing pending: the vectors up to this batch are all in files
                self.catalog.set("vectors_gen", gen)
            self.catalog.replace_segments([], [(info.name, info.count, info.big)])
        self._merge(merges)

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


def _params(catalog: Catalog) -> dict[str, Any]:
    """The recorded ``store_params`` (empty when none or unreadable)."""
    try:
        value = json.loads(catalog.get("store_params") or "{}")
    except ValueError:
        return {}
    return value if isinstance(value, dict) else {}
