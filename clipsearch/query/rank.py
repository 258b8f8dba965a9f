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
from clipsearch.store.catalog import Catalog, Entry, View, content_of, view_of
from clipsearch.store.vectors import VectorStore


@dataclass(frozen=True)
class Hit:
    """One result: an absolute path, its cosine similarity to the query, and file facts.

    ``date`` is a POSIX time (seconds, a float) here; :meth:`to_dict`, and so every JSON output,
    gives it as ISO 8601 in UTC (``2019-07-14T16:02:11+00:00``). A video's hit is one of its moments:
    ``t_start`` and ``t_end`` (seconds from its start) and ``moment`` (its view number) are set.
    """

    path: str
    score: float
    content_id: int
    size: int = 0
    width: int = 0
    height: int = 0
    date: float = 0.0  # EXIF DateTimeOriginal, else the file's mtime (POSIX time)
    available: bool = True  # the file is on disk now (False: an unplugged drive, or deleted since)
    t_start: float | None = None  # a video's moment: when it starts and ends (seconds)
    t_end: float | None = None
    moment: int | None = None  # a video's moment: its view number (0: the video's main vector)

    @classmethod
    def of(cls, entry: Entry, score: float, moment: View | None = None) -> Hit:
        """The hit of a catalogued file (of one of its moments, for a video); looks whether the file
        is on disk now (one ``stat``)."""
        return cls(
            entry.path,
            score,
            entry.content_id,
            entry.size,
            entry.width,
            entry.height,
            entry.date,
            os.path.isfile(entry.path),
            *((moment.t_start, moment.t_end, moment.view) if moment is not None else ()),
        )

    @property
    def is_moment(self) -> bool:
        """Whether this hit is a moment of a video."""
        return self.moment is not None

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
            **(
                {"t_start": _seconds(self.t_start), "t_end": _seconds(self.t_end), "moment": self.moment}
                if self.is_moment
                else {}
            ),
        }


def _seconds(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def format_time(seconds: float | None) -> str:
    """``83.4`` -> ``0:01:23``: a moment's time as the table shows it."""
    whole = max(0, int(seconds or 0))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


def moment_span(hit: Hit) -> str:
    """``0:01:23–0:01:31`` for a video's moment, "" for a picture."""
    return f"{format_time(hit.t_start)}–{format_time(hit.t_end)}" if hit.is_moment else ""


def rank(
    store: VectorStore,
    catalog: Catalog,
    queries: npt.NDArray[np.float32],
    k: int,
    *,
    filters: Filters | None = None,
    per_file: int | None = None,
) -> list[list[Hit]]:
    """Top-``k`` hits for each query row (exact inner product), best first.

    A picture may have several vectors (its side views): its score is its best vector's. A video's
    vectors are its moments, each a hit of its own: a video may appear several times, at most
    ``per_file`` times when given (its best moments). Identical files share their vectors; each of
    their paths is returned with the same score, and the list is cut at ``k`` paths. Filters
    restrict the candidates before the top-k cut; with ``filters.available``, files not on disk now
    are left out. Candidates are ranked further down until ``k`` hits are found or none are left.
    """
    if k < 1 or len(store) == 0:
        return [[] for _ in range(len(queries))]
    allowed = None
    allowed_ids = None
    where = filters.for_catalog() if filters is not None else None
    if where is not None and where.active():
        allowed = catalog.entries_matching(where)
        if not allowed:
            return [[] for _ in range(len(queries))]
        contents = list(allowed)
        allowed_ids = np.array(contents + catalog.view_ids_of(contents), dtype=np.int64)
    on_disk_only = filters is not None and filters.available
    total = len(allowed_ids) if allowed_ids is not None else len(store)
    wanted = min(total, k * 3 if catalog.has_views() else k)  # a picture's views may fill the ranking
    while True:
        scores, ids = store.search(queries, wanted, allowed=allowed_ids)
        contents_of = content_of(ids)
        found = sorted({int(c) for c in contents_of.ravel() if c >= 0})
        files = allowed if allowed is not None else catalog.entries_of(found)
        moments = _moments(catalog, found)
        results = [
            _hits(row_scores, row_ids, files, moments, k, on_disk_only, per_file)
            for row_scores, row_ids in zip(scores, ids, strict=True)
        ]
        if wanted >= total or all(len(r) == k for r in results):
            return results
        wanted = min(total, wanted * 4)  # views or files not on disk: look further down the ranking


def _moments(catalog: Catalog, contents: list[int]) -> dict[int, dict[int, View]]:
    """content id -> view number -> moment, for the videos among ``contents``."""
    views = catalog.views_of(contents) if catalog.has_views() else {}
    return {cid: v for cid, v in views.items() if any(view.kind == "moment" for view in v.values())}


def _hits(
    scores: npt.NDArray[np.float32],
    ids: npt.NDArray[np.int64],
    files: dict[int, list[Entry]],
    moments: dict[int, dict[int, View]],
    k: int,
    on_disk_only: bool,
    per_file: int | None,
) -> list[Hit]:
    """The first ``k`` hits of one ranking of vectors: each picture at its best (first) score, each
    moment of a video at its own (at most ``per_file`` moments of a video)."""
    hits: list[Hit] = []
    seen: set[tuple[int, int]] = set()
    taken: dict[int, int] = {}
    for score, cid, view in zip(scores, content_of(ids), view_of(ids), strict=True):
        cid, view = int(cid), int(view)
        video = moments.get(cid)
        key = (cid, view if video else 0)
        if cid < 0 or key in seen or (video and view not in video):
            continue
        seen.add(key)
        if per_file is not None and taken.get(cid, 0) >= per_file:
            continue
        taken[cid] = taken.get(cid, 0) + 1
        # a content deleted after the store was loaded has no files left: skip it
        found = (Hit.of(entry, float(score), video[view] if video else None) for entry in files.get(cid, []))
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


#: The values of ``cutoff``: ``auto`` uses the fitted cutoff where the index holds enough judgements
#: (see :mod:`clipsearch.query.judgements`), else the break; ``break`` always the break.
CUTOFFS = ("auto", "break")


@dataclass(frozen=True)
class SearchOptions:
    """How many results to keep and in which order, once the candidates are ranked.

    ``candidates`` is how many hits to rank before :func:`finish`: ``k``, or with a cutoff the fixed
    :data:`CUTOFF_CANDIDATES` (the cut is made among them, then capped at ``k``). ``calibrate``:
    the cutoff may use a fitted threshold (``cutoff`` ``auto``); ``calibrated`` is that threshold
    once the index's judgements gave one (set by the caller that knows the index), which then
    replaces the break.
    """

    k: int = 10
    candidates: int = 10
    threshold: float | None = None
    cutoff: bool = False
    sort: str = "score"
    calibrate: bool = False
    calibrated: float | None = None
    per_file: int | None = None  # most moments of one video (None: every moment that ranks)

    @classmethod
    def parse(
        cls,
        *,
        top: int | None,
        threshold: float | None,
        cutoff: str | None,
        sort: str,
        per_file: int | None = None,
    ) -> SearchOptions:
        """Validate CLI-style values."""
        if per_file is not None and per_file < 1:
            raise BadValueError("per_file", per_file, "give how many moments of a video to keep, 1 or more")
        if cutoff not in (None, *CUTOFFS):
            raise BadValueError("cutoff", cutoff, f"choose {' or '.join(CUTOFFS)}")
        if sort not in ("score", "date"):
            raise BadValueError("sort", sort, "choose score or date")
        if threshold is not None and not -1.0 <= threshold <= 1.0:
            raise BadValueError("threshold", threshold, "scores are cosine similarities, between -1 and 1")
        auto = cutoff is not None
        k = top if top is not None else (CUTOFF_CANDIDATES if auto else 10)
        return cls(
            k=k,
            candidates=CUTOFF_CANDIDATES if auto else k,
            threshold=threshold,
            cutoff=auto,
            sort=sort,
            calibrate=cutoff == "auto",
            per_file=per_file,
        )


def finish(hits: list[Hit], options: SearchOptions) -> list[Hit]:
    """Apply the threshold, the cutoff (fitted or the break), the cap and the sort order to ranked hits.

    The cutoff looks at the best ``options.candidates`` hits only, however many are given.
    """
    if options.cutoff:
        hits = hits[: options.candidates]
    if options.threshold is not None:
        hits = [h for h in hits if h.score >= options.threshold]
    if options.cutoff and options.calibrated is not None:
        hits = [h for h in hits if h.score >= options.calibrated]
    elif options.cutoff and hits:
        hits = hits[: adaptive_cutoff([h.score for h in hits])]
    hits = hits[: options.k]
    if options.sort == "date":
        hits = sorted(hits, key=lambda h: -h.date)
    return hits
