"""The FAISS side: the VectorStore interface every kind implements, and the one-file stores.

Ids are int64 FAISS ids (a content's id, or a side view's: see :func:`clipsearch.store.catalog.view_id`).
Scores are inner products of unit vectors (cosine). An index's vectors are kept in segments and
searched through :class:`clipsearch.store.segmented.SegmentedStore`, whatever their kind (``flat``,
``sq8``, ``ivfpq``). :class:`FlatStore` and :class:`QuantizedStore` are the stores of one FAISS
file that version-1 indexes kept (read until their first writer upgrades them), and the in-memory
store of the vectors committed since the last checkpoint.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt

from clipsearch.files import fsync_path

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]


class VectorStore(Protocol):
    """What the rest of clipsearch may ask of a vector index."""

    kind: str
    dim: int

    def __len__(self) -> int: ...

    def add(self, ids: Ids, vectors: Vectors) -> None:
        """Add vectors under the given (new, unique) ids."""

    def remove(self, ids: Ids) -> int:
        """Remove ids that are present; return how many were removed."""

    def search(
        self, queries: Vectors, k: int, *, allowed: Ids | None = None
    ) -> tuple[npt.NDArray[np.float32], Ids]:
        """Top-k by inner product per query row; missing slots have id -1. ``allowed`` filters first."""

    def range_search(self, queries: Vectors, threshold: float) -> list[tuple[npt.NDArray[np.float32], Ids]]:
        """Per query row: every (score, id) with score >= ``threshold``."""

    def reconstruct(self, ids: Ids) -> Vectors:
        """The stored vectors of ``ids``."""

    def ids(self) -> Ids:
        """Every id in the store."""


class FlatStore:
    """Exact inner-product search: ``IndexIDMap2(IndexFlatIP)``, 4 bytes per dimension."""

    kind = "flat"

    def __init__(self, dim: int, index: object | None = None) -> None:
        import faiss

        self.dim = dim
        self._index = index if index is not None else faiss.IndexIDMap2(faiss.IndexFlatIP(dim))
        # faiss only uses BLAS (much faster than its scalar loop) from 20 queries on by default
        faiss.cvar.distance_compute_blas_threshold = 1

    def __len__(self) -> int:
        return int(self._index.ntotal)

    def add(self, ids: Ids, vectors: Vectors) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if len(ids):
            self._index.add_with_ids(vectors, ids)

    def remove(self, ids: Ids) -> int:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        return int(self._index.remove_ids(ids)) if len(ids) else 0

    def search(
        self, queries: Vectors, k: int, *, allowed: Ids | None = None
    ) -> tuple[npt.NDArray[np.float32], Ids]:
        import faiss

        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        k = max(1, min(k, len(self)))
        if len(self) == 0:
            return np.zeros((len(queries), 0), np.float32), np.zeros((len(queries), 0), np.int64)
        params = None
        if allowed is not None:
            allowed = np.ascontiguousarray(allowed, dtype=np.int64)
            params = faiss.SearchParameters(sel=faiss.IDSelectorBatch(allowed))
        scores, ids = self._index.search(queries, k, params=params)
        return scores, ids

    def range_search(self, queries: Vectors, threshold: float) -> list[tuple[npt.NDArray[np.float32], Ids]]:
        queries = np.ascontiguousarray(queries, dtype=np.float32).reshape(-1, self.dim)
        if len(self) == 0:
            return [(np.zeros(0, np.float32), np.zeros(0, np.int64)) for _ in queries]
        lims, scores, ids = self._index.range_search(queries, threshold)
        return [(scores[lims[i] : lims[i + 1]], ids[lims[i] : lims[i + 1]]) for i in range(len(queries))]

    def reconstruct(self, ids: Ids) -> Vectors:
        ids = np.ascontiguousarray(ids, dtype=np.int64)
        if not len(ids):
            return np.zeros((0, self.dim), np.float32)
        return np.asarray(self._index.reconstruct_batch(ids), dtype=np.float32)

    def ids(self) -> Ids:
        import faiss

        return faiss.vector_to_array(self._index.id_map).astype(np.int64)

    def save(self, path: Path) -> None:
        import faiss

        tmp = path.with_name(path.name + ".tmp")
        try:
            faiss.write_index(self._index, str(tmp))
        except RuntimeError as exc:  # faiss reports I/O failures (full disk, no folder) this way
            raise OSError(f"cannot write {tmp}: {str(exc).strip().splitlines()[-1]}") from exc
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)

    @classmethod
    def load(cls, path: Path) -> FlatStore:
        import faiss

        index = faiss.read_index(str(path))
        return cls(index.d, index)


class QuantizedStore(FlatStore):
    """Exhaustive inner-product search over vectors stored in 8 bits per dimension (a quarter of fp32).

    ``IndexIDMap2(IndexScalarQuantizer)``: each dimension's range is learnt from the vectors present
    at the first save with ``TRAIN_MIN`` of them or more (fp16 until then, which needs no training),
    widened by ``RANGE_MARGIN`` of its span each side. A vector added later beyond a range widens it
    first (same margin), re-encoding the stored codes of that dimension, so nothing is ever clipped:
    ranges learnt from a first folder of similar photos do not distort the different ones that come
    later. Every query is still compared with every vector: only the storage is compressed. Stored
    vectors keep cosine >= 0.9999 to the originals on average and >= 0.999 at worst
    (tests/test_vectors.py).
    """

    kind = "sq8"
    TRAIN_MIN = 64
    RANGE_MARGIN = 0.25
    _CHUNK = 65536  # rows re-encoded at a time when ranges widen

    def __init__(self, dim: int, index: object | None = None) -> None:
        import faiss

        if index is None:
            index = faiss.IndexIDMap2(self._quantizer(dim, faiss.ScalarQuantizer.QT_fp16))
        super().__init__(dim, index)

    @staticmethod
    def _quantizer(dim: int, qtype: int, ranges: npt.NDArray[np.float32] | None = None) -> object:
        """An IndexScalarQuantizer; ``ranges``: its trained ``[mins..., spans...]`` (else learnt by train)."""
        import faiss

        inner = faiss.IndexScalarQuantizer(dim, qtype, faiss.METRIC_INNER_PRODUCT)
        inner.sq.rangestat = faiss.ScalarQuantizer.RS_minmax
        inner.sq.rangestat_arg = QuantizedStore.RANGE_MARGIN
        if ranges is not None:
            faiss.copy_array_to_vector(np.ascontiguousarray(ranges, dtype=np.float32), inner.sq.trained)
            inner.is_trained = True
        return inner

    @property
    def quantized(self) -> bool:
        """Whether vectors are stored in 8 bits (else fp16, before there were enough to learn ranges)."""
        import faiss

        inner = faiss.downcast_index(self._index.index)
        return bool(inner.sq.qtype == faiss.ScalarQuantizer.QT_8bit)

    def add(self, ids: Ids, vectors: Vectors) -> None:
        vectors = np.ascontiguousarray(vectors, dtype=np.float32).reshape(-1, self.dim)
        if self.quantized and len(vectors):
            self._widen_for(vectors)
        super().add(ids, vectors)

    def _widen_for(self, vectors: Vectors) -> None:
        """Widen the ranges that ``vectors`` exceed, re-encoding the stored codes in place."""
        import faiss

        inner = faiss.downcast_index(self._index.index)
        ranges = faiss.vector_to_array(inner.sq.trained)
        low, high = ranges[: self.dim], ranges[: self.dim] + ranges[self.dim :]
        smallest, largest = vectors.min(axis=0), vectors.max(axis=0)
        below, above = smallest < low, largest > high
        if not (below.any() or above.any()):
            return
        new_low, new_high = np.minimum(low, smallest), np.maximum(high, largest)
        margin = self.RANGE_MARGIN * (new_high - new_low)
        new_low = np.where(below, new_low - margin, low)
        new_high = np.where(above, new_high + margin, high)
        new_ranges = np.concatenate([new_low, new_high - new_low]).astype(np.float32)
        old = self._quantizer(self.dim, faiss.ScalarQuantizer.QT_8bit, ranges)
        new = self._quantizer(self.dim, faiss.ScalarQuantizer.QT_8bit, new_ranges)
        if inner.ntotal:
            codes = faiss.rev_swig_ptr(inner.codes.data(), inner.codes.size()).reshape(-1, inner.code_size)
            for start in range(0, len(codes), self._CHUNK):  # in place: no second copy of the codes
                chunk = codes[start : start + self._CHUNK]
                chunk[:] = new.sa_encode(old.sa_decode(chunk))
        faiss.copy_array_to_vector(new_ranges, inner.sq.trained)

    def _maybe_quantize(self) -> None:
        """Switch from fp16 to 8 bits, learning the ranges from every vector, once there are enough."""
        import faiss

        if self.quantized or len(self) < self.TRAIN_MIN:
            return
        ids = self.ids()
        vectors = self.reconstruct(ids)
        inner = self._quantizer(self.dim, faiss.ScalarQuantizer.QT_8bit)
        inner.train(vectors)
        index = faiss.IndexIDMap2(inner)
        index.add_with_ids(vectors, ids)
        self._index = index

    def save(self, path: Path) -> None:
        self._maybe_quantize()
        super().save(path)


STORE_KINDS: dict[str, type[FlatStore]] = {"flat": FlatStore, "sq8": QuantizedStore}
DEFAULT_STORE_KIND = "sq8"


def create_store(kind: str, dim: int) -> VectorStore:
    """A new empty store of the given kind."""
    return STORE_KINDS[kind](dim)


def load_store(kind: str, path: Path) -> VectorStore:
    """Read a store written by :meth:`VectorStore.save`."""
    return STORE_KINDS[kind].load(path)
