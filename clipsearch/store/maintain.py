"""How the segments change: pending vectors become a segment, segments merge, the kind follows the size.

Rules (the numbers are module constants):

- **Checkpoint**: the vectors committed since the last one become one new segment (written once,
  never changed), so a checkpoint costs what changed, not the size of the index. The first
  segment of an index is its *big* one; later ones are *small*.
- **Tiered merges**: small segments are grouped by size tier (powers of :data:`TIER_FACTOR`
  above :data:`TIER_BASE` vectors); :data:`TIER_FACTOR` small segments of one tier merge into one.
- **Fold**: when the small segments together pass :data:`FOLD_SHARE` of the big one, or more than
  :data:`PURGE_SHARE` of the big one is deleted, everything is merged into a new big segment
  (deleted vectors dropped). An approximate index keeps its training: codes are copied, not re-encoded.
- **Kind**: :func:`choose_kind` picks ``sq8`` (exhaustive) up to :data:`EXHAUSTIVE_MAX` vectors,
  then ``ivfpq`` sized by the memory budget (:func:`clipsearch.store.ivf.shape_for`); an IVF index
  is trained again when the count has grown or shrunk :data:`RETRAIN_GROWTH`-fold since. Changing
  kind or training is a *rebuild* of the vector files: one new big segment from every vector's
  codes, with its search parameters tuned and its recall measured (:func:`rebuild`).

Every change writes new files first, then switches the catalog's list of segments in one
transaction; the files it replaced are deleted after. Readers keep the files they opened.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from clipsearch.errors import BadValueError
from clipsearch.store import codes as codes_mod
from clipsearch.store import ivf as ivf_kind
from clipsearch.store import segments as seg
from clipsearch.store.codes import CHUNK, Codec, Rows
from clipsearch.store.ivf import IvfParams
from clipsearch.store.segmented import SegmentedStore
from clipsearch.store.segments import Segment, SegmentInfo

Ids = npt.NDArray[np.int64]
Vectors = npt.NDArray[np.float32]
Note = Callable[[str], None]

#: Kinds a user may ask for (``auto``: chosen by size and memory budget).
STORE_CHOICES = ("auto", "flat", "sq8", ivf_kind.KIND)
#: Memory an index may use for searching when none is given (``index --memory-budget``).
DEFAULT_MEMORY_BUDGET = 2 * 1024**3
#: Largest index searched exhaustively (``sq8``): about 10 ms a query on one loaded core.
EXHAUSTIVE_MAX = 50_000
#: Fewest vectors an IVF index is trained on (its PQ learns 256 centres per sub-vector).
IVF_MIN = 1000
TIER_BASE = 1024
TIER_FACTOR = 8
FOLD_SHARE = 0.25
PURGE_SHARE = 0.2
RETRAIN_GROWTH = 4
#: Stored vectors searched, exactly and approximately, to measure recall at a rebuild.
TUNING_QUERIES = 200
#: The share of the index the filtered recall is measured with.
FILTER_SHARE = 0.1


@dataclass(frozen=True)
class StoreSettings:
    """Which kind an index's vectors are stored as (``auto``: by size), and the memory budget for search."""

    choice: str = "auto"
    memory_budget: int = DEFAULT_MEMORY_BUDGET


def parse_budget(text: str) -> int:
    """``512M``, ``1G``, ``1.5GB``, ``2000000000`` -> bytes (K, M, G, T are powers of 1024).

    Raises:
        BadValueError: ("memory_budget", text) for anything else, or less than 16 MB.
    """
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([kmgt]?)(?:i?b)?\s*", text.lower())
    if not match:
        raise BadValueError("memory_budget", text, "give a size such as 512M, 1G or 1.5G")
    value = float(match.group(1)) * 1024 ** " kmgt".index(match.group(2) or " ")
    if value < 16 * 1024**2:
        raise BadValueError("memory_budget", text, "give at least 16M")
    return int(value)


def parse_choice(text: str) -> str:
    if text not in STORE_CHOICES:
        raise BadValueError("store", text, f"choose {', '.join(STORE_CHOICES)}")
    return text


def choose_kind(count: int, dim: int, settings: StoreSettings, current: str) -> str:
    """The kind an index of ``count`` vectors should be (hysteresis: an IVF index stays one down to
    half the exhaustive limit, so that it does not switch back and forth)."""
    if settings.choice != "auto":
        return "sq8" if settings.choice == ivf_kind.KIND and count < IVF_MIN else settings.choice
    limit = EXHAUSTIVE_MAX // 2 if current == ivf_kind.KIND else EXHAUSTIVE_MAX
    exhaustive_bytes = count * (dim + 8)
    return "sq8" if count <= limit and exhaustive_bytes <= settings.memory_budget else ivf_kind.KIND


def needs_rebuild(
    count: int, dim: int, kind: str, params: dict[str, Any], settings: StoreSettings
) -> str | None:
    """Why the vector files should be rebuilt now (a kind or training that no longer fits), or None."""
    want = choose_kind(count, dim, settings, kind)
    if want != kind:
        return f"{count:,} vectors: {kind} -> {want}"
    if kind != ivf_kind.KIND or not count:
        return None
    trained = int(params.get("trained_count", 0))
    if not trained or count > RETRAIN_GROWTH * trained or count * RETRAIN_GROWTH < trained:
        return f"{count:,} vectors since training on {trained:,}: training again"
    if ivf_kind.shape_for(trained, dim, settings.memory_budget)[1] != int(params.get("m", 0)):
        return "the memory budget changed the code size"
    return None


# -- checkpoints and merges -----------------------------------------------------------------------


def codec_for(store: SegmentedStore, vectors: Vectors) -> Codec:
    """The codes codec of a new segment: the index's current sq8 ranges (widened if these vectors
    pass them), so that merges copy codes as they are."""
    if store.kind == "flat":
        return Codec("fp32", store.dim)
    current = codes_mod.union([s.codes.codec for s in store.segments])
    if current is None:
        return codes_mod.learn("sq8", store.dim, vectors)
    return codes_mod.fit(current, vectors)


def write_pending(folder: Path, store: SegmentedStore) -> SegmentInfo | None:
    """Write the store's pending vectors as a new segment (big if it is the index's first)."""
    ids, vectors = store.pending_vectors()
    return write_vectors(folder, store, ids, vectors) if len(ids) else None


def write_vectors(folder: Path, store: SegmentedStore, ids: Ids, vectors: Vectors) -> SegmentInfo:
    """Write vectors (``ids`` ascending) as a new segment of ``store``'s kind (big if it is the first)."""
    codec = codec_for(store, vectors)
    name = seg.new_name()
    codes = codec.encode(vectors)
    fine = codec.refine(vectors, codes) if codec.refines else None
    sa = None
    if store.approximate:
        big = next(s for s in store.segments if s.info.big and s.ivf is not None)
        sa = ivf_kind.sa_encode(big.ivf, codec.decode_fine(codes, fine))
    is_big = not any(s.info.big for s in store.segments)
    seg.write(folder, name, ids, codec, [(codes, fine)], fine=fine is not None, sa=sa)
    return SegmentInfo(name, len(ids), is_big)


def due_merge(store: SegmentedStore, *, fold: bool = True) -> tuple[list[Segment], bool] | None:
    """The segments to merge now and whether the result is the big one (None: nothing due).
    ``fold``: whether folding into the big segment may be due (else tiers of small ones only)."""
    segments = store.segments
    big = [s for s in segments if s.info.big]
    small = [s for s in segments if not s.info.big]
    if not segments:
        return None
    if not big:  # the big one's vectors were all deleted: the others become it
        return segments, True
    head = big[0]
    if fold and (
        len(big) > 1
        or sum(len(s) for s in small) > FOLD_SHARE * len(head)
        or store.count_dead(head) > PURGE_SHARE * len(head)
    ):
        return segments, True
    emptied = [s for s in small if store.count_dead(s) == len(s)]
    if emptied:  # every vector deleted: the segment is dropped, nothing written
        return emptied, False
    tiers: dict[int, list[Segment]] = {}
    for s in small:
        tier = 0 if len(s) <= TIER_BASE else int(math.log(len(s) / TIER_BASE, TIER_FACTOR)) + 1
        tiers.setdefault(tier, []).append(s)
    for tier in sorted(tiers):
        if len(tiers[tier]) >= TIER_FACTOR:
            return tiers[tier], False
    return None


@dataclass
class _Rows:
    """Where each row of a merged segment comes from: (input segment, position), by ascending id."""

    ids: Ids
    source: npt.NDArray[np.int32]
    position: Ids

    @classmethod
    def of(cls, store: SegmentedStore, inputs: list[Segment]) -> _Rows:
        live = [store.live_positions(s) for s in inputs]
        ids = np.concatenate(
            [np.asarray(s.ids)[p] for s, p in zip(inputs, live, strict=True)] or [np.zeros(0, np.int64)]
        )
        source = np.concatenate(
            [np.full(len(p), i, np.int32) for i, p in enumerate(live)] or [np.zeros(0, np.int32)]
        )
        position = np.concatenate(live or [np.zeros(0, np.int64)])
        order = np.argsort(ids, kind="stable")
        return cls(ids[order].astype(np.int64), source[order], position[order])

    def __len__(self) -> int:
        return len(self.ids)

    def codes(self, inputs: list[Segment], codec: Codec, start: int, stop: int, fine: bool) -> Rows:
        """Rows ``start:stop`` in ``codec`` (with their fine bits if ``fine``): copied where the input
        has that codec, else decoded (with its fine bits) and encoded again."""
        out = np.empty((stop - start, codec.code_size), np.uint8)
        out_fine = np.empty((stop - start, codec.fine_size), np.uint8) if fine else None
        source, position = self.source[start:stop], self.position[start:stop]
        for i in np.unique(source):
            mask = source == i
            wanted = position[mask]
            stored = inputs[i].codes
            rows, rows_fine = stored.mapped(wanted)
            stored.let_go(int(wanted.min()), int(wanted.max()))
            if stored.codec == codec:
                out[mask] = rows
                if out_fine is not None:
                    assert rows_fine is not None, "fine bits copied from a segment without them"
                    out_fine[mask] = rows_fine
                continue
            vectors = stored.codec.decode_fine(rows, rows_fine)
            out[mask] = codec.encode(vectors)
            if out_fine is not None:
                out_fine[mask] = codec.refine(vectors, out[mask])
        return out, out_fine

    def sa(
        self, inputs: list[Segment], start: int, stop: int, exported: dict[int, npt.NDArray[np.uint8]]
    ) -> npt.NDArray[np.uint8]:
        """The standalone IVF codes of rows ``start:stop`` (``exported``: each input's, by position)."""
        source, position = self.source[start:stop], self.position[start:stop]
        first = exported[int(source[0])] if len(source) else np.zeros((0, 1), np.uint8)
        out = np.empty((stop - start, first.shape[1]), np.uint8)
        for i in np.unique(source):
            mask = source == i
            out[mask] = exported[int(i)][position[mask]]
        return out


def _output_codec(store: SegmentedStore, inputs: list[Segment], kind: str, rows: _Rows) -> Codec:
    """The codes codec of a merged or rebuilt segment: the inputs' sq8 ranges joined (codes are then
    copied as they are), widened where fp16 or fp32 inputs pass them; learnt when there are none."""
    if kind == "flat":
        return Codec("fp32", store.dim)
    codec = codes_mod.union([s.codes.codec for s in inputs])
    bounds: list[Vectors] = []
    for s in inputs:
        if s.codes.codec.kind != "sq8":
            for _, vectors in s.codes.chunks(store.live_positions(s)):  # streamed: min and max only
                if len(vectors):
                    bounds.append(np.stack([vectors.min(axis=0), vectors.max(axis=0)]))
    if not bounds:
        return codec if codec is not None else Codec("fp16", store.dim)
    extremes = np.concatenate(bounds)
    if codec is None:
        if len(rows) < codes_mod.TRAIN_MIN:
            return Codec("fp16", store.dim)
        return codes_mod.spanning(store.dim, extremes.min(axis=0), extremes.max(axis=0), len(rows))
    return codes_mod.fit(codec, extremes)


def merge(folder: Path, store: SegmentedStore, inputs: list[Segment], big: bool) -> SegmentInfo | None:
    """Write ``inputs``' live vectors as one segment; the IVF codes are copied, not recomputed.
    None when none of them is live."""
    rows = _Rows.of(store, inputs)
    if not len(rows):
        return None
    codec = _output_codec(store, inputs, store.kind, rows)
    name = seg.new_name()
    fine = _keeps_fine(inputs, codec)
    chunks = (
        rows.codes(inputs, codec, start, min(start + CHUNK, len(rows)), fine)
        for start in range(0, len(rows), CHUNK)
    )
    ivf_index = sa = None
    if store.approximate:
        exported = {i: _exported(s) for i, s in enumerate(inputs)}
        all_sa = rows.sa(inputs, 0, len(rows), exported)
        if big:
            codec_ivf = next(s for s in store.segments if s.info.big and s.ivf is not None).ivf
            ivf_index = ivf_kind.with_codes(codec_ivf, all_sa)
        else:
            sa = all_sa
    seg.write(folder, name, rows.ids, codec, chunks, fine=fine, ivf=ivf_index, sa=sa)
    return SegmentInfo(name, len(rows), big)


def _keeps_fine(inputs: list[Segment], codec: Codec) -> bool:
    """Whether a segment written from ``inputs`` in ``codec`` has fine bits: when the codec has them
    and no input whose codes would be copied lacks them (an index written before fine bits keeps
    its precision; its vectors cannot be had back finer than its codes)."""
    return codec.refines and all(s.codes.refined for s in inputs if s.codes.codec == codec)


def _exported(segment: Segment) -> npt.NDArray[np.uint8]:
    assert segment.ivf is not None
    return ivf_kind.export_codes(segment.ivf, len(segment))


def from_legacy(folder: Path, legacy: object) -> SegmentInfo | None:
    """Write a version-1 store (``IndexIDMap2`` of an ``IndexScalarQuantizer`` or ``IndexFlatIP``,
    read whole) as one big segment, its codes copied as they are."""
    import faiss

    count = len(legacy)  # type: ignore[arg-type]
    if not count:
        return None
    inner = faiss.downcast_index(legacy._index.index)  # type: ignore[attr-defined]
    codec = codes_mod.codec_of(inner)
    ids = legacy.ids()  # type: ignore[attr-defined]
    stored = faiss.rev_swig_ptr(inner.codes.data(), count * codec.code_size).reshape(count, codec.code_size)
    order = np.argsort(ids, kind="stable")
    name = seg.new_name()
    chunks = ((stored[order[start : start + CHUNK]], None) for start in range(0, count, CHUNK))
    seg.write(folder, name, ids[order], codec, chunks, fine=False)
    return SegmentInfo(name, count, True)


# -- rebuilds -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Built:
    """A rebuild's new big segment and the parameters to record (``store_params``)."""

    info: SegmentInfo
    kind: str
    params: dict[str, Any]


def rebuild(folder: Path, store: SegmentedStore, kind: str, budget: int, note: Note | None = None) -> Built:
    """Write every live vector of ``store`` (no pending ones) as one big segment of ``kind``; for
    ``ivfpq``, train it on a sample, then tune and measure it (:func:`tune`)."""
    started = time.monotonic()
    inputs = store.segments
    rows = _Rows.of(store, inputs)
    count = len(rows)
    codec = _output_codec(store, inputs, kind, rows)
    name = seg.new_name()
    ivf_index = None
    params: dict[str, Any] = {}
    if kind == ivf_kind.KIND and count:
        nlist, m = ivf_kind.shape_for(count, store.dim, budget)
        if note:
            note(f"Training the approximate index ({nlist} cells, {m}-byte codes) on {count:,} vectors")
        rng = np.random.default_rng(count)
        picks = np.sort(rng.choice(count, size=min(count, nlist * ivf_kind.TRAIN_PER_LIST), replace=False))
        trained = ivf_kind.train(_decoded(rows, inputs, codec, picks), nlist, m)  # the sample let go after
        ivf_index = ivf_kind.empty_like(trained)
        params = {"nlist": int(trained.nlist), "m": m, "trained_count": count}  # type: ignore[attr-defined]
        if note:
            note(f"Encoding {count:,} vectors ...")
    fine = _keeps_fine(inputs, codec)
    chunks = _encoding_chunks(rows, inputs, codec, ivf_index, fine)
    seg.write(folder, name, rows.ids, codec, chunks, fine=fine, ivf=ivf_index)
    del chunks, ivf_index, rows  # the lists in memory (72 bytes a vector): tuning reads the file
    info = SegmentInfo(name, count, True)
    if kind == ivf_kind.KIND and count:
        if note:
            note("Measuring recall ...")
        params.update(tune(folder, info, store.dim, params))
    else:
        params = {"recall_at_10": 1.0, "filtered_recall_at_10": 1.0, "exact": True}
    params["build_seconds"] = round(time.monotonic() - started, 1)
    return Built(info, kind, params)


def _decoded(rows: _Rows, inputs: list[Segment], codec: Codec, picks: Ids) -> Vectors:
    out = np.empty((len(picks), codec.dim), np.float32)
    for start in range(0, len(picks), CHUNK):
        part = picks[start : start + CHUNK]
        for i in np.unique(rows.source[part]):
            mask = rows.source[part] == i
            out[start : start + len(part)][mask] = inputs[i].codes.rows(rows.position[part][mask])
    return out


def _encoding_chunks(
    rows: _Rows, inputs: list[Segment], codec: Codec, ivf_index: object | None, fine: bool
) -> Iterator[Rows]:
    """The new segment's codes, chunk by chunk, added to ``ivf_index``'s lists on the way."""
    for start in range(0, len(rows), CHUNK):
        stop = min(start + CHUNK, len(rows))
        chunk = rows.codes(inputs, codec, start, stop, fine)
        if ivf_index is not None:
            sa = ivf_kind.sa_encode(ivf_index, codec.decode_fine(*chunk))
            ivf_index.add_sa_codes(sa, np.arange(start, stop, dtype=np.int64))  # type: ignore[attr-defined]
        yield chunk


def tune(folder: Path, info: SegmentInfo, dim: int, shape: dict[str, Any]) -> dict[str, Any]:
    """Tune nprobe and re-ranking depth on a new big IVF segment; measure recall@10 (all, filtered).

    Queries are stored vectors chosen at random, each moved a little; the exact answer is an
    exhaustive search of the segment's codes (so recall counts what the approximation loses, not
    the codes' rounding, which :data:`clipsearch.store.ivf.TARGET_RECALL` leaves room for).
    """
    segment = Segment(folder, info)
    store = SegmentedStore(dim, ivf_kind.KIND, [segment], IvfParams(shape["nlist"], shape["m"]))
    count = len(segment)
    rng = np.random.default_rng(count + 1)
    queries = _queries_near(
        segment.codes.rows(np.sort(rng.choice(count, size=min(count, TUNING_QUERIES), replace=False))), rng
    )
    allowed_mask = rng.random(count) < FILTER_SHARE
    k = min(10, count)
    truth, truth_filtered = _exact(segment, queries, k, allowed_mask)
    shape_params = IvfParams(shape["nlist"], shape["m"])
    chosen, recall = ivf_kind.tune(
        shape_params, count, dim, lambda q, kk, p, a: store.search_with(p, q, kk, a), queries, truth, k=k
    )
    allowed = np.asarray(segment.ids)[allowed_mask]
    filtered = (
        ivf_kind.recall_at(store.search_with(chosen, queries, k, allowed), truth_filtered)
        if len(allowed)
        else 1.0
    )
    return {
        "nprobe": chosen.nprobe,
        "rerank": chosen.rerank,
        "recall_at_10": round(recall, 4),
        "filtered_recall_at_10": round(filtered, 4),
        "recall_queries": len(queries),
        "measured_at": count,
    }


def _queries_near(vectors: Vectors, rng: np.random.Generator) -> Vectors:
    """Queries near stored vectors, not on them (a stored vector would find itself first, for free):
    each moved to cosine ~0.9 from where it was."""
    noise = rng.standard_normal(vectors.shape).astype(np.float32)
    noise /= np.linalg.norm(noise, axis=1, keepdims=True)
    moved = vectors + 0.5 * noise
    return (moved / np.linalg.norm(moved, axis=1, keepdims=True)).astype(np.float32)


def _exact(segment: Segment, queries: Vectors, k: int, allowed: npt.NDArray[np.bool_]) -> tuple[Ids, Ids]:
    """Exact top-k ids of ``queries`` over a segment's codes, and among the ``allowed`` positions only."""
    n = len(queries)
    best = (np.full((n, 0), -np.inf, np.float32), np.zeros((n, 0), np.int64))
    best_f = best
    ids = np.asarray(segment.ids)
    for start, vectors in segment.codes.chunks():
        scores = queries @ vectors.T
        labels = np.broadcast_to(ids[start : start + len(vectors)], scores.shape)
        best = _keep(best, scores, labels, k)
        mask = allowed[start : start + len(vectors)]
        best_f = _keep(best_f, np.where(mask, scores, -np.inf), labels, k)
    return best[1], np.where(np.isfinite(best_f[0]), best_f[1], -1)


def _keep(best: tuple[Vectors, Ids], scores: Vectors, labels: Ids, k: int) -> tuple[Vectors, Ids]:
    """The top-k of ``best`` and a new block of scores, per row."""
    if scores.shape[1] > k:
        part = np.argpartition(-scores, k - 1, axis=1)[:, :k]
        scores, labels = np.take_along_axis(scores, part, axis=1), np.take_along_axis(labels, part, axis=1)
    all_scores = np.concatenate([best[0], scores], axis=1)
    all_labels = np.concatenate([best[1], labels], axis=1)
    top = np.argsort(-all_scores, axis=1, kind="stable")[:, :k]
    return np.take_along_axis(all_scores, top, axis=1), np.take_along_axis(all_labels, top, axis=1)
