"""Vector -> ranked hits: filters applied before top-k, FAISS ids mapped back to catalogued files."""

from __future__ import annotations

import os
from dataclasses import dataclass
from datetime import datetime, timezone

import numpy as np
import numpy.typing as npt

from clipsearch.errors import BadValueError
from clipsearch.paths import json_fields
from clipsearch.query.filters import Filters
from clipsearch.store.catalog import Catalog, Entry, content_of
from clipsearch.store.vectors import VectorStore


@dataclass(frozen=True)
class Hit:
    """One result: an absolute path, its cosine similarity to the query, and file facts.

    ``date`` is a POSIX time (seconds, a float) here; :meth:`to_dict`, and so every JSON output,
    gives it as ISO 8601 in UTC (``2019-07-14T16:02:11+00:00``).
    """

    path: str
    score: float
    content_id: int
    size: int = 0
    width: int = 0
    height: int = 0
    date: float = 0.0  # EXIF DateTimeOriginal, else the file's mtime (POSIX time)
    available: bool = True  # the file is on disk now (False: an unplugged drive, or deleted since)

    @classmethod
    def of(cls, entry: Entry, score: float) -> Hit:
        """The hit of a catalogued file; looks whether the file is on disk now (one ``stat``)."""
        return cls(
            entry.path,
            score,
            entry.content_id,
            entry.size,
            entry.width,
            entry.height,
            entry.date,
            os.path.isfile(entry.path),
        )

    def to_dict(self) -> dict[str, object]:
        return {
            **json_fields(self.path),
            "score": round(self.score, 6),
            "content_id": self.content_id,
            "size": self.size,
            "width": self.width,
            "height": self.height,
            "date": datetime.fromtimestamp(self.date, timezone.utc).isoformat(timespec="seconds"),
            "available": self.available,
        }


def rank(
    store: VectorStore,
    catalog: Catalog,
    queries: npt.NDArray[np.float32],
    k: int,
    *,
    filters: Filters | None = None,
) -> list[list[Hit]]:
    """Top-``k`` files for each query row (exact inner product), best first.

    A picture may have several vectors (its side views): its score is its best vector's. Identical
    files share their vectors; each of their paths is returned with the same score, and the list is
    cut at ``k`` paths. Filters restrict the candidates before the top-k cut; with
    ``filters.available``, files not on disk now are left out. Candidates are ranked further down
    until ``k`` files are found or none are left.
    """
    if k < 1 or len(store) == 0:
        return [[] for _ in range(len(queries))]
    allowed_ids = None
    where = filters.for_catalog() if filters is not None else None
    if where is not None and where.active():
        allowed_ids = catalog.vector_ids_matching(where)  # ids only: the files of the hits come after
        if not len(allowed_ids):
            return [[] for _ in range(len(queries))]
    else:
        where = None
    on_disk_only = filters is not None and filters.available
    total = len(allowed_ids) if allowed_ids is not None else len(store)
    wanted = min(total, k * 3 if catalog.has_views() else k)  # a picture's views may fill the ranking
    while True:
        scores, ids = store.search(queries, wanted, allowed=allowed_ids)
        contents_of = content_of(ids)
        # a content's files that pass the filters (a copy elsewhere may not)
        files = catalog.entries_of(sorted({int(c) for c in contents_of.ravel() if c >= 0}), where)
        results = [
            _hits(row_scores, row_contents, files, k, on_disk_only)
            for row_scores, row_contents in zip(scores, contents_of, strict=True)
        ]
        if wanted >= total or all(len(r) == k for r in results):
            return results
        wanted = min(total, wanted * 4)  # views or files not on disk: look further down the ranking


def _hits(
    scores: npt.NDArray[np.float32],
    contents: npt.NDArray[np.int64],
    files: dict[int, list[Entry]],
    k: int,
    on_disk_only: bool,
) -> list[Hit]:
    """The first ``k`` files of one ranking of vectors, each content at its best (first) score."""
    hits: list[Hit] = []
    seen: set[int] = set()
    for score, cid in zip(scores, contents, strict=True):
        if cid < 0 or int(cid) in seen:
            continue
        seen.add(int(cid))
        # a content deleted after the store was loaded has no files left: skip it
        found = (Hit.of(entry, float(score)) for entry in files.get(int(cid), []))
        hits.extend(h for h in found if h.available or not on_disk_only)
        if len(hits) >= k:
            break
    return hits[:k]


#: Candidates the adaptive cutoff looks at: always the best 100, so that ``k`` caps the results
#: without moving the break.
CUTOFF_CANDIDATES = 100


def adaptive_cutoff(scores: npt.NDArray[np.float32] | list[float]) -> int:
    """How many of these best-first scores are relevant: the cut where the distribution breaks.

    Two-class split of the candidate scores (Otsu's method: the threshold that maximises the
    between-class variance of "relevant" above and "the rest" below). Returns at least 1.
    """
    s = np.asarray(scores, dtype=np.float64)
    n = len(s)
    if n <= 2:
        return n
    prefix = np.cumsum(s)
    counts = np.arange(1, n)
    mean_top = prefix[:-1] / counts
    mean_rest = (prefix[-1] - prefix[:-1]) / (n - counts)
    between = counts * (n - counts) * (mean_top - mean_rest) ** 2
    return int(np.argmax(between)) + 1


@dataclass(frozen=True)
class SearchOptions:
    """How many results to keep and in which order, once the candidates are ranked.

    ``candidates`` is how many hits to rank before :func:`finish`: ``k``, or with the adaptive
    cutoff the fixed :data:`CUTOFF_CANDIDATES` (the break is found among them, then capped at ``k``).
    """

    k: int = 10
    candidates: int = 10
    threshold: float | None = None
    cutoff: bool = False
    sort: str = "score"

    @classmethod
    def parse(
        cls, *, top: int | None, threshold: float | None, cutoff: str | None, sort: str
    ) -> SearchOptions:
        """Validate CLI-style values."""
        if cutoff not in (None, "auto"):
            raise BadValueError("cutoff", cutoff, "the only cutoff is 'auto'")
        if sort not in ("score", "date"):
            raise BadValueError("sort", sort, "choose score or date")
        if threshold is not None and not -1.0 <= threshold <= 1.0:
            raise BadValueError("threshold", threshold, "scores are cosine similarities, between -1 and 1")
        auto = cutoff == "auto"
        k = top if top is not None else (CUTOFF_CANDIDATES if auto else 10)
        return cls(
            k=k, candidates=CUTOFF_CANDIDATES if auto else k, threshold=threshold, cutoff=auto, sort=sort
        )


def finish(hits: list[Hit], options: SearchOptions) -> list[Hit]:
    """Apply the threshold, the adaptive cutoff, the cap and the sort order to ranked hits.

    The cutoff looks at the best ``options.candidates`` hits only, however many are given.
    """
    if options.cutoff:
        hits = hits[: options.candidates]
    if options.threshold is not None:
        hits = [h for h in hits if h.score >= options.threshold]
    if options.cutoff and hits:
        hits = hits[: adaptive_cutoff([h.score for h in hits])]
    hits = hits[: options.k]
    if options.sort == "date":
        hits = sorted(hits, key=lambda h: -h.date)
    return hits
