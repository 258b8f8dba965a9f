"""The approximate kind ``ivfpq``: an inverted file (IVF) of product-quantised (PQ) codes.

A coarse quantizer splits the space into ``nlist`` cells (k-means on a sample of the vectors);
each vector is stored in its cell's list as ``m`` bytes of PQ code (its residual to the cell's
centre, 8 bits per sub-vector). A query looks at the ``nprobe`` nearest cells only, scores their
codes by table look-ups, and the best ``rerank`` candidates are scored again with the vectors'
``sq8`` codes (:mod:`clipsearch.store.codes`), which stay on disk. ``nprobe`` and ``rerank`` are
tuned at each build against an exact search of a sample (:func:`tune`).

Segments of one index share one trained quantizer and PQ (the *codec*, kept in the big segment's
file): a small segment stores only its vectors' standalone codes (cell number + PQ code,
``sa_encode``), so its lists are rebuilt in memory when it is opened, and merging segments never
re-encodes a vector.
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from clipsearch.files import fsync_path

Vectors = npt.NDArray[np.float32]

KIND = "ivfpq"
#: recall@10, against an exact search over the stored codes, the search parameters are tuned to
#: reach: above 0.95 because the codes themselves cost some recall against the model's float
#: vectors (0.01-0.03 on a crowded collection), and the approximate search is to keep 0.95 against those
TARGET_RECALL = 0.99
#: k-means iterations of the coarse quantizer (FAISS's default 25 costs twice the time for little)
TRAIN_ITERATIONS = 12
#: training vectors per cell of the coarse quantizer
TRAIN_PER_LIST = 40
#: PQ code sizes (bytes per vector) tried, largest first, against the memory budget
PQ_SIZES = (64, 32, 16, 8, 4)
#: a doubling of the cells visited that adds less recall than this ends the tuning's search of more
PLATEAU = 0.0005
#: re-ranking depths tried, as candidates per segment for k = 10
RERANK_CHOICES = (20, 40, 80, 160, 320, 640, 1280)


@dataclass(frozen=True)
class IvfParams:
    """The shape of an IVF-PQ index and its tuned search parameters."""

    nlist: int
    m: int
    nprobe: int = 16
    rerank: int = 40

    def candidates(self, k: int) -> int:
        """Candidates per segment re-ranked for a top-``k`` search (``rerank`` is for k = 10)."""
        return max(k, math.ceil(self.rerank * max(k, 10) / 10))

    def nprobe_for(self, fraction: float) -> int:
        """Cells to visit when a filter keeps ``fraction`` of the vectors: as many allowed codes as
        an unfiltered search scores (the filter drops the others during the scan)."""
        if fraction >= 1.0:
            return self.nprobe
        return min(self.nlist, math.ceil(self.nprobe / max(fraction, 1e-9)))


def shape_for(count: int, dim: int, budget: int) -> tuple[int, int]:
    """(nlist, m) for ``count`` vectors, and the largest PQ code whose lists (code + 8-byte id per
    vector) and quantizer fit ``budget``.

    Cells: a power of two up to 4 sqrt(count) (FAISS's guidelines say 4-16 sqrt(count): fewer,
    larger cells make a search scan more codes for the same recall (at 10 million vectors, 2,048
    cells had a search visit 256 of them, 1.25 million codes, 50 ms), while assigning every vector
    to a cell, most of a build, costs in proportion to the cells), and no more than 8 bytes of
    quantizer per vector (a 512-d centre is 2 KB: 1,024 cells for 100,000 vectors would be 21
    bytes each, on disk and in memory)."""
    nlist = min(4 * math.sqrt(max(count, 1)), 2 * count / max(dim, 1))
    nlist = max(16, min(65536, int(2 ** math.floor(math.log2(max(nlist, 1))))))
    sizes = [m for m in PQ_SIZES if dim % m == 0 and m <= dim // 2] or [1]
    for m in sizes:
        if count * (m + 8) + nlist * dim * 4 <= budget:
            return nlist, m
    return nlist, sizes[-1]


def search_bytes(count: int, dim: int, nlist: int, m: int) -> int:
    """Memory an IVF-PQ search reads: lists (PQ code + id per vector) and the coarse quantizer."""
    return count * (m + 8) + nlist * dim * 4


def train(sample: Vectors, nlist: int, m: int) -> object:
    """An empty ``IndexIVFPQ`` (inner product) trained on ``sample``: spherical k-means, PQ of residuals."""
    import faiss

    dim = sample.shape[1]
    nlist = max(1, min(nlist, len(sample)))
    quantizer = faiss.IndexFlatIP(dim)
    index = faiss.IndexIVFPQ(quantizer, dim, nlist, m, 8, faiss.METRIC_INNER_PRODUCT)
    index.cp.niter = TRAIN_ITERATIONS
    index.cp.spherical = True  # cell centres on the unit sphere, like the vectors
    for cp in (index.cp, index.pq.cp):  # we sample ourselves; FAISS would warn about small samples
        cp.min_points_per_centroid = 1
        cp.max_points_per_centroid = 1 << 30
    index.train(np.ascontiguousarray(sample, dtype=np.float32))
    index.own_fields = False
    index.referenced_objects = [quantizer]  # keep the quantizer alive as long as the index
    return index


def empty_like(codec: object) -> object:
    """An empty IVF-PQ index with ``codec``'s quantizer (shared, not copied) and PQ."""
    import faiss

    index = faiss.IndexIVFPQ(
        codec.quantizer,  # type: ignore[attr-defined]
        codec.d,  # type: ignore[attr-defined]
        codec.nlist,  # type: ignore[attr-defined]
        codec.pq.M,  # type: ignore[attr-defined]
        codec.pq.nbits,  # type: ignore[attr-defined]
        faiss.METRIC_INNER_PRODUCT,
    )
    index.pq = codec.pq  # type: ignore[attr-defined]
    index.is_trained = True
    index.referenced_objects = [codec]  # the quantizer lives in the codec
    return index


def sa_encode(codec: object, vectors: Vectors) -> npt.NDArray[np.uint8]:
    """Standalone codes (cell number, then PQ code of the residual) of ``vectors``."""
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    if not len(vectors):
        return np.zeros((0, codec.sa_code_size()), np.uint8)  # type: ignore[attr-defined]
    return codec.sa_encode(vectors)  # type: ignore[attr-defined,no-any-return]


def with_codes(codec: object, codes: npt.NDArray[np.uint8]) -> object:
    """An in-memory IVF-PQ index holding ``codes`` (standalone codes), labelled by their row."""
    index = empty_like(codec)
    if len(codes):
        index.add_sa_codes(np.ascontiguousarray(codes), np.arange(len(codes), dtype=np.int64))  # type: ignore[attr-defined]
    return index


def export_codes(index: object, count: int) -> npt.NDArray[np.uint8]:
    """The standalone codes of every vector of ``index`` (labelled 0..count-1), in label order."""
    import faiss

    coarse = index.coarse_code_size()  # type: ignore[attr-defined]
    size = index.code_size  # type: ignore[attr-defined]
    out = np.zeros((count, coarse + size), np.uint8)
    lists = index.invlists  # type: ignore[attr-defined]
    for cell in range(index.nlist):  # type: ignore[attr-defined]
        n = lists.list_size(cell)
        if not n:
            continue
        labels = faiss.rev_swig_ptr(lists.get_ids(cell), n)
        out[labels, :coarse] = np.frombuffer(int(cell).to_bytes(8, "little")[:coarse], np.uint8)
        out[labels, coarse:] = faiss.rev_swig_ptr(lists.get_codes(cell), n * size).reshape(n, size)
    return out


def write(index: object, path: Path) -> None:
    """Write an IVF index atomically (temp name, fsync, rename)."""
    import faiss

    tmp = path.with_name(path.name + ".tmp")
    try:
        faiss.write_index(index, str(tmp))
    except RuntimeError as exc:  # faiss reports I/O failures (full disk) this way
        tmp.unlink(missing_ok=True)
        raise OSError(f"cannot write {tmp}: {str(exc).strip().splitlines()[-1]}") from exc
    fsync_path(tmp)
    os.replace(tmp, path)


def read(path: Path) -> object:
    """An IVF index file opened through a memory map (lists and quantizer are not read whole)."""
    import faiss

    try:
        return faiss.read_index(str(path), faiss.IO_FLAG_MMAP_IFC)
    except RuntimeError as exc:
        if not path.exists():
            raise FileNotFoundError(path) from exc
        raise


def search_cells(
    index: object,
    queries: Vectors,
    k: int,
    cells: npt.NDArray[np.int64],
    centre_scores: Vectors,
    selector: object | None,
) -> tuple[Vectors, npt.NDArray[np.int64]]:
    """Top-``k`` labels of ``index`` among the given cells of each query (the quantizer's answer,
    computed once for every segment), skipping labels the selector rejects."""
    import faiss

    n, nprobe = cells.shape
    distances = np.empty((n, k), np.float32)
    labels = np.empty((n, k), np.int64)
    params = faiss.SearchParametersIVF(nprobe=nprobe, sel=selector) if selector is not None else None
    if params is None:
        params = faiss.SearchParametersIVF(nprobe=nprobe)
    queries = np.ascontiguousarray(queries, dtype=np.float32)
    cells = np.ascontiguousarray(cells, dtype=np.int64)
    centre_scores = np.ascontiguousarray(centre_scores, dtype=np.float32)
    index.search_preassigned_c(  # type: ignore[attr-defined]
        n,
        faiss.swig_ptr(queries),
        k,
        faiss.swig_ptr(cells),
        faiss.swig_ptr(centre_scores),
        faiss.swig_ptr(distances),
        faiss.swig_ptr(labels),
        False,
        params,
    )
    return distances, labels


# -- tuning -----------------------------------------------------------------------------------

Search = Callable[[Vectors, int, IvfParams, "npt.NDArray[np.int64] | None"], npt.NDArray[np.int64]]


@dataclass(frozen=True)
class Tuning:
    """The chosen search parameters and the recall@10 measured with them."""

    params: IvfParams
    recall: float
    filtered_recall: float | None


def recall_at(found: npt.NDArray[np.int64], truth: npt.NDArray[np.int64]) -> float:
    """Mean share of each query's exact top-k found in its approximate top-k."""
    hits = [
        len(set(f[f >= 0].tolist()) & set(t[t >= 0].tolist())) / max(1, (t >= 0).sum())
        for f, t in zip(found, truth, strict=True)
    ]
    return float(np.mean(hits)) if hits else 1.0


def tune(
    shape: IvfParams,
    count: int,
    dim: int,
    search: Search,
    queries: Vectors,
    truth: npt.NDArray[np.int64],
    *,
    k: int = 10,
    target: float = TARGET_RECALL,
) -> tuple[IvfParams, float]:
    """The cheapest (nprobe, rerank) whose recall@k on ``queries`` reaches ``target``, and its recall.

    Cost is counted as the work a search does: codes scored in the visited cells (``m`` table
    look-ups each), plus the candidates re-ranked (a ``dim``-long dot product each), plus the
    quantizer (``nlist`` centres). Timings would be the truth, but they are not repeatable on a
    shared machine; this count is. When no setting reaches the target, the one with the best recall.
    """
    per_cell = count / shape.nlist
    best: tuple[float, IvfParams, float] | None = None
    fallback: tuple[float, IvfParams] | None = None
    # The deepest re-ranking first. At a given nprobe, re-ranking fewer candidates finds at most
    # what re-ranking more finds (the candidates are a subset, scored exactly): the others start at
    # the fewest cells where the deepest reached the target, and if it never does, neither can they.
    # They stop (unsearched) where they would cost more than the best found. Doubling the cells
    # stops when it no longer finds more (at 10M vectors, searching every cell, for nothing, was
    # most of a rebuild).
    start = 1
    for rerank in sorted(RERANK_CHOICES, reverse=True):
        nprobe, last = start, -1.0
        while True:
            params = IvfParams(shape.nlist, shape.m, nprobe, rerank)
            cost = nprobe * per_cell * shape.m + params.candidates(k) * dim * 4 + shape.nlist * dim
            if best is not None and cost >= best[0]:  # more cells only cost more
                break
            recall = recall_at(search(queries, k, params, None), truth)
            if fallback is None or recall > fallback[0]:
                fallback = (recall, params)
            if recall >= target:
                best = (cost, params, recall)
                break
            if nprobe >= shape.nlist or recall <= last + PLATEAU:
                break
            last, nprobe = recall, min(shape.nlist, nprobe * 2)
        if best is None:  # the deepest re-ranking cannot reach the target: no other can
            break
        if best[1].rerank == rerank:  # reached here: fewer candidates need at least as many cells
            start = best[1].nprobe
    if best is not None:
        return best[1], best[2]
    assert fallback is not None
    return fallback[1], fallback[0]
