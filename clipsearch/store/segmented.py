"""The vector store of an index: its segments, the vectors committed since (pending), minus tombstones.

:class:`SegmentedStore` implements :class:`~clipsearch.store.vectors.VectorStore` for every kind:

- ``flat`` / ``sq8`` (exhaustive): each segment's codes are compared with every query (FAISS on
  the memory-mapped codes); the results of the segments are merged.
- ``ivfpq`` (approximate): the coarse quantizer picks the cells once per query, each segment's
  lists are scanned in those cells, and its best candidates are scored again with their ``sq8``
  codes before the segments' results are merged (:mod:`clipsearch.store.ivf`).

Filters (``allowed`` ids) are applied inside the scan (a FAISS ``IDSelector`` over positions), so
a top-k of a filtered search holds k allowed vectors whenever there are k; a filter that keeps
few vectors (:data:`EXACT_FILTER_MAX`) is answered exactly from their codes. Deleted vectors are
skipped the same way until a merge drops them from the files.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import numpy as np
import numpy.typing as npt

from clipsearch.store import ivf as ivf_kind
from clipsearch.store.codes import PREAD_ROWS
from clipsearch.store.ivf import IvfParams
from clipsearch.store.segments import Segment
from clipsearch.store.vectors import FlatStore

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]
Scores = npt.NDArray[np.float32]

#: A filter keeping at most this many vectors is answered exactly, from their codes.
EXACT_FILTER_MAX = 20_000
#: Above this share of a segment's positions, a filter is a bitmap (else a hashed set of positions).
_BITMAP_SHARE = 1 / 64


class SegmentedStore:
    """Segments (memory-mapped, immutable) + pending vectors (in memory) − deleted ids."""

    def __init__(
        self,
        dim: int,
        kind: str,
        segments: list[Segment],
        params: IvfParams | None = None,
    ) -> None:
        self.dim = dim
        self.kind = kind
        self.segments = segments
        self.params = params
        self.pending = FlatStore(dim)
        self._dead: dict[str, npt.NDArray[np.bool_]] = {}  # segment name -> deleted positions
        self._bits: dict[str, npt.NDArray[np.uint8]] = {}  # segment name -> live positions, as a bitmap
        big = next((s for s in segments if s.ivf is not None and s.info.big), None)
        self.quantizer = big.ivf.quantizer if big is not None else None  # type: ignore[attr-defined]
        self.approximate = kind == ivf_kind.KIND and self.quantizer is not None and params is not None

    def __len__(self) -> int:
        return sum(len(s) - self.count_dead(s) for s in self.segments) + len(self.pending)

    # -- deleted vectors, per segment ---------------------------------------------------------------

    def count_dead(self, segment: Segment) -> int:
        dead = self._dead.get(segment.name)
        return 0 if dead is None else int(dead.sum())

    def find(self, segment: Segment, ids: Ids) -> tuple[npt.NDArray[np.bool_], Ids]:
        """(found, positions) of the live ``ids`` in ``segment``."""
        found, positions = segment.find(ids)
        dead = self._dead.get(segment.name)
        if dead is not None and len(positions):
            found &= ~dead[positions]
        return found, positions

    def live_positions(self, segment: Segment) -> Ids:
        dead = self._dead.get(segment.name)
        if dead is None:
            return np.arange(len(segment), dtype=np.int64)
        return np.flatnonzero(~dead).astype(np.int64)

    def _live_bits(self, segment: Segment) -> npt.NDArray[np.uint8] | None:
        """The live positions as a FAISS bitmap (None when none is deleted)."""
        dead = self._dead.get(segment.name)
        if dead is None:
            return None
        if segment.name not in self._bits:
            self._bits[segment.name] = np.packbits(~dead, bitorder="little")
        return self._bits[segment.name]

    # -- changes (kept in memory; the folder writes them) ----------------------------------------

    def add(self, ids: Ids, vectors: Vectors) -> None:
        self.pending.add(ids, vectors)

    def remove(self, ids: Ids) -> int:
        ids = np.asarray(ids, dtype=np.int64)
        if not len(ids):
            return 0
        removed = self.pending.remove(ids)
        for segment in self.segments:
            found, positions = self.find(segment, ids)
            if found.any():
                dead = self._dead.setdefault(segment.name, np.zeros(len(segment), bool))
                dead[positions[found]] = True
                self._bits.pop(segment.name, None)
                removed += int(found.sum())
        return removed

    def dead_ids(self, segments: list[Segment] | None = None) -> Ids:
        """Ids deleted from the segments (or from those given): their tombstones are still needed."""
        chosen = self.segments if segments is None else segments
        parts = [np.asarray(s.ids)[self._dead[s.name]] for s in chosen if s.name in self._dead]
        return np.concatenate(parts).astype(np.int64) if parts else np.zeros(0, np.int64)

    def pending_vectors(self) -> tuple[Ids, Vectors]:
        """The pending vectors, by ascending id (what the next checkpoint writes as a segment)."""
        ids = np.sort(self.pending.ids())
        return ids, self.pending.reconstruct(ids)

    # -- reading ------------------------------------------------------------------------------------

    def ids(self) -> Ids:
        parts = [np.asarray(s.ids)[self.live_positions(s)] for s in self.segments]
        parts.append(self.pending.ids())
        return np.concatenate(parts).astype(np.int64)

    def reconstruct(self, ids: Ids) -> Vectors:
        ids = np.asarray(ids, dtype=np.int64)
        out = np.zeros((len(ids), self.dim), np.float32)
        done = np.zeros(len(ids), bool)
        for segment in self.segments:
            found, positions = self.find(segment, ids)
            found &= ~done
            if found.any():
                out[found] = segment.codes.rows(positions[found])
                done |= found
        if not done.all():
            rest = ids[~done]
            known = np.isin(rest, self.pending.ids())
            if not known.all():
                raise KeyError(f"ids not in the store: {rest[~known][:5].tolist()}")
            out[~done] = self.pending.reconstruct(rest)
        return out

    def search(self, queries: Vectors, k: int, *, allowed: Ids | None = None) -> tuple[Scores, Ids]:
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        total = len(self)
        if total == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        k = max(1, min(k, total))
        plan = self._plan(allowed)
        if allowed is not None:
            allowed = np.asarray(allowed, dtype=np.int64)
        parts: list[tuple[Scores, Ids]] = []
        kept = sum(len(p) if p is not None else len(s) - self.count_dead(s) for s, p, _ in plan)
        if allowed is not None and kept <= EXACT_FILTER_MAX:
            parts += [self._exact_among(s, p, queries, k) for s, p, _ in plan if p is not None and len(p)]
        elif self.approximate:
            parts += self._approximate(plan, queries, k, kept / max(1, total - len(self.pending)))
        else:
            parts += [self._exhaustive(s, sel, queries, k) for s, p, sel in plan if p is None or len(p)]
        if len(self.pending):
            parts.append(self.pending.search(queries, k, allowed=allowed))
        return _best(parts, len(queries), k)

    def search_with(self, params: IvfParams, queries: Vectors, k: int, allowed: Ids | None) -> Ids:
        """Ids of a search with other IVF parameters (tuning them)."""
        saved = self.params
        self.params = params
        try:
            return self.search(queries, k, allowed=allowed)[1]
        finally:
            self.params = saved

    def range_search(self, queries: Vectors, threshold: float) -> list[tuple[Scores, Ids]]:
        """Every stored vector scoring at least ``threshold``, exactly (over the codes), per query."""
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        found: list[list[tuple[Scores, Ids]]] = [[] for _ in queries]
        for segment in self.segments:
            bits = self._live_bits(segment)
            params = None
            if bits is not None:
                params = faiss.SearchParameters(
                    sel=faiss.IDSelectorBitmap(len(segment), faiss.swig_ptr(bits))
                )
            lims, scores, positions = segment.codes.index.range_search(queries, threshold, params=params)  # type: ignore[attr-defined]
            for i in range(len(queries)):
                part = positions[lims[i] : lims[i + 1]]
                found[i].append(
                    (scores[lims[i] : lims[i + 1]], np.asarray(segment.ids)[part].astype(np.int64))
                )
        if len(self.pending):
            for i, part in enumerate(self.pending.range_search(queries, threshold)):
                found[i].append(part)
        return [
            (np.concatenate([s for s, _ in parts]).astype(np.float32), np.concatenate([i for _, i in parts]))
            if parts
            else (np.zeros(0, np.float32), np.zeros(0, np.int64))
            for parts in found
        ]

    # -- search helpers -----------------------------------------------------------------------------

    def _plan(self, allowed: Ids | None) -> list[tuple[Segment, Ids | None, object | None]]:
        """Per segment: the allowed live positions (None: every live one) and the FAISS selector."""
        import faiss

        plan: list[tuple[Segment, Ids | None, object | None]] = []
        for segment in self.segments:
            if allowed is None:
                bits = self._live_bits(segment)
                sel = None if bits is None else faiss.IDSelectorBitmap(len(segment), faiss.swig_ptr(bits))
                if sel is not None:
                    sel.referenced_objects = [bits]
                plan.append((segment, None, sel))
                continue
            found, positions = self.find(segment, np.asarray(allowed, dtype=np.int64))
            positions = np.unique(positions[found])
            plan.append((segment, positions, _selector(positions, len(segment))))
        return plan

    def _exhaustive(
        self, segment: Segment, selector: object | None, queries: Vectors, k: int
    ) -> tuple[Scores, Ids]:
        import faiss

        params = None if selector is None else faiss.SearchParameters(sel=selector)
        depth = min(refine_depth(k) if segment.codes.refined else k, len(segment))
        scores, positions = segment.codes.index.search(queries, depth, params=params)  # type: ignore[attr-defined]
        if segment.codes.refined:  # the best by their 8-bit codes, ordered by their fine bits
            scores = _scored(segment, queries, positions)
        return scores, _to_ids(segment, positions)

    def _exact_among(self, segment: Segment, positions: Ids, queries: Vectors, k: int) -> tuple[Scores, Ids]:
        """Top-k among a few positions, scored exactly from their codes."""
        scores = queries @ segment.codes.rows(positions).T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, top, axis=1).astype(np.float32), np.asarray(segment.ids)[
            positions[top]
        ]

    def _approximate(
        self, plan: list[tuple[Segment, Ids | None, object | None]], queries: Vectors, k: int, share: float
    ) -> list[tuple[Scores, Ids]]:
        assert self.params is not None and self.quantizer is not None
        nprobe = self.params.nprobe_for(share)
        centre_scores, cells = self.quantizer.search(queries, nprobe)  # type: ignore[attr-defined]
        wanted = self.params.candidates(k)
        parts = []
        for segment, positions, selector in plan:
            if positions is not None and not len(positions):
                continue
            if segment.ivf is None:  # not encoded for this quantizer (cannot happen once built)
                parts.append(self._exhaustive(segment, selector, queries, k))
                continue
            _, labels = ivf_kind.search_cells(segment.ivf, queries, wanted, cells, centre_scores, selector)
            parts.append(self._rerank(segment, queries, labels, k))
        return parts

    def _rerank(self, segment: Segment, queries: Vectors, labels: Ids, k: int) -> tuple[Scores, Ids]:
        """Candidates scored again with their stored codes (the PQ scores only chose them): all of
        them with the 8-bit codes, then the best few again with their fine bits, if the segment
        has them (those few are the segment's answer). Queries go a group at a time, so that each
        group's rows are few enough to ``pread`` (:data:`PREAD_ROWS`): a batch of queries (a
        build's recall measurement: 200 queries x 1,280 candidates) read through the memory map
        would hold gigabytes of a large index's codes in the process, and their decoded copies."""
        step = max(1, PREAD_ROWS // max(1, labels.shape[1]))
        if len(queries) > step:
            parts = [
                self._rerank(segment, queries[i : i + step], labels[i : i + step], k)
                for i in range(0, len(queries), step)
            ]
            return np.concatenate([s for s, _ in parts]), np.concatenate([i for _, i in parts])
        depth = refine_depth(k)
        at_once = labels.shape[1] <= depth  # few candidates: all scored with their fine bits at once
        scores = _scored(segment, queries, labels, fine=at_once)
        if segment.codes.refined and not at_once:
            best = np.argpartition(-scores, depth - 1, axis=1)[:, :depth]
            labels = np.take_along_axis(labels, best, axis=1)
            scores = _scored(segment, queries, labels)
        return scores, _to_ids(segment, labels)


def _scored(segment: Segment, queries: Vectors, positions: Ids, *, fine: bool = True) -> Scores:
    """Each query's candidates (positions in ``segment``, -1 for none) scored with their stored
    codes, with their fine bits unless ``fine`` is False (-inf for none)."""
    valid = positions >= 0
    scores = np.full(positions.shape, -np.inf, np.float32)
    if valid.any():
        rows, _ = np.nonzero(valid)
        vectors = segment.codes.rows(positions[valid], fine=fine)
        scores[valid] = np.einsum("ij,ij->i", vectors, queries[rows])
    return scores


def refine_depth(k: int) -> int:
    """Candidates per segment scored with their fine bits for a top-``k`` (the best by their 8-bit
    codes): how deep the true top 10 lies in that order is measured by ``benchmarks/rerank_codes.py``."""
    return max(4 * k, 40)


def _selector(positions: Ids, size: int) -> object:
    import faiss

    if len(positions) > size * _BITMAP_SHARE:
        mask = np.zeros(size, bool)
        mask[positions] = True
        bits = np.packbits(mask, bitorder="little")
        sel = faiss.IDSelectorBitmap(size, faiss.swig_ptr(bits))
        sel.referenced_objects = [bits]
        return sel
    positions = np.ascontiguousarray(positions, dtype=np.int64)
    sel = faiss.IDSelectorBatch(len(positions), faiss.swig_ptr(positions))
    return sel


def _to_ids(segment: Segment, positions: Ids) -> Ids:
    return np.where(positions >= 0, np.asarray(segment.ids)[np.maximum(positions, 0)], -1)


def _best(parts: list[tuple[Scores, Ids]], n: int, k: int) -> tuple[Scores, Ids]:
    """The top-k of several partial results (missing slots: id -1, lowest score)."""
    if not parts:
        return np.full((n, k), -np.inf, np.float32), np.full((n, k), -1, np.int64)
    scores = np.concatenate([np.asarray(s, dtype=np.float32) for s, _ in parts], axis=1)
    ids = np.concatenate([np.asarray(i, dtype=np.int64) for _, i in parts], axis=1)
    scores = np.where(ids >= 0, scores, -np.inf)
    if scores.shape[1] < k:
        pad = k - scores.shape[1]
        scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        ids = np.pad(ids, ((0, 0), (0, pad)), constant_values=-1)
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)


@contextmanager
def searching_exactly(store: object, exact: bool = True) -> Iterator[None]:
    """While inside, an approximate ``store`` compares each query with every stored vector (its 8-bit
    codes, kept for re-ranking) instead of searching its cells: the exact side of a measurement. Any
    other store, or ``exact`` False, searches as it always does."""
    if not exact or not getattr(store, "approximate", False):
        yield
        return
    store.approximate = False  # type: ignore[attr-defined]
    try:
        yield
    finally:
        store.approximate = True  # type: ignore[attr-defined]
