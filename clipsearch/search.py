"""Vector -> ranked hits: filters applied before top-k, FAISS ids mapped back to catalogued files."""

from __future__ import annotations

import os
from dataclasses import dataclass, field, replace
from datetime import datetime, timezone

import numpy as np
import numpy.typing as npt

from clipsearch.catalog import Catalog, under
from clipsearch.errors import UsageError
from clipsearch.vectors import VectorStore

_FILE_COLUMNS = """f.path, f.content_id, f.size, f.mtime_ns, c.width, c.height,
    COALESCE(c.taken, f.mtime_ns / 1e9) AS date"""


@dataclass(frozen=True)
class Hit:
    """One result: an absolute path, its cosine similarity to the query, and file facts."""

    path: str
    score: float
    content_id: int
    size: int = 0
    width: int = 0
    height: int = 0
    date: float = 0.0  # EXIF DateTimeOriginal, else the file's mtime (POSIX time)

    def to_dict(self) -> dict[str, object]:
        return {
            "path": self.path,
            "score": round(self.score, 6),
            "content_id": self.content_id,
            "size": self.size,
            "width": self.width,
            "height": self.height,
            "date": datetime.fromtimestamp(self.date, timezone.utc).isoformat(timespec="seconds"),
        }


@dataclass(frozen=True)
class Filters:
    """Which files may be returned; every filter applies before the top-k cut.

    Args:
        folder: only files under this folder (absolute path).
        after / before: only files dated on/after, before this POSIX time (EXIF date, else mtime).
        types: only these extensions (lower case, no dot; ``jpg`` also matches ``jpeg``).
        min_side: only images whose shorter side has at least this many pixels.
    """

    folder: str | None = None
    after: float | None = None
    before: float | None = None
    types: tuple[str, ...] = field(default_factory=tuple)
    min_side: int | None = None

    def active(self) -> bool:
        return any(
            v not in (None, ()) for v in (self.folder, self.after, self.before, self.types, self.min_side)
        )

    def sql(self) -> tuple[str, list[object]]:
        """WHERE clause (over files f JOIN contents c) and its parameters."""
        clauses, params = ["f.content_id IS NOT NULL"], []  # type: ignore[var-annotated]
        if self.folder is not None:
            low, high = under(self.folder)
            clauses.append("f.path >= ? AND f.path < ?")
            params += [low, high]
        if self.after is not None:
            clauses.append("COALESCE(c.taken, f.mtime_ns / 1e9) >= ?")
            params.append(self.after)
        if self.before is not None:
            clauses.append("COALESCE(c.taken, f.mtime_ns / 1e9) < ?")
            params.append(self.before)
        if self.min_side is not None:
            clauses.append("min(c.width, c.height) >= ?")
            params.append(self.min_side)
        if self.types:
            suffixes = {f".{t}" for t in self.types} | ({".jpeg", ".jpe"} if "jpg" in self.types else set())
            clauses.append("(" + " OR ".join("lower(CAST(f.path AS TEXT)) LIKE ?" for _ in suffixes) + ")")
            params += [f"%{s}" for s in sorted(suffixes)]
        return " AND ".join(clauses), params


def parse_date(value: str, *, option: str) -> float:
    """``2019``, ``2019-07``, ``2019-07-14`` or an ISO date-time -> POSIX time (UTC)."""
    for fmt in ("%Y", "%Y-%m", "%Y-%m-%d"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise UsageError(f"{option} {value!r} is not a date; use YYYY, YYYY-MM or YYYY-MM-DD.") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def allowed_files(catalog: Catalog, filters: Filters) -> dict[int, list[Hit]]:
    """content id -> the files (as score-less hits) that pass the filters."""
    where, params = filters.sql()
    rows = catalog.conn.execute(
        f"SELECT {_FILE_COLUMNS} FROM files f JOIN contents c ON c.id = f.content_id WHERE {where}", params
    )
    return _group(rows)


def _group(rows: object) -> dict[int, list[Hit]]:
    out: dict[int, list[Hit]] = {}
    for path, cid, size, _mtime, width, height, date in sorted(rows, key=lambda r: r[0]):  # type: ignore[call-overload]
        out.setdefault(int(cid), []).append(
            Hit(os.fsdecode(path), 0.0, int(cid), int(size), int(width or 0), int(height or 0), float(date))
        )
    return out


def files_of(catalog: Catalog, content_ids: list[int]) -> dict[int, list[Hit]]:
    """content id -> its files (as score-less hits), for the ids given."""
    out: dict[int, list[Hit]] = {}
    for start in range(0, len(content_ids), 500):
        chunk = content_ids[start : start + 500]
        marks = ",".join("?" * len(chunk))
        rows = catalog.conn.execute(
            f"SELECT {_FILE_COLUMNS} FROM files f JOIN contents c ON c.id = f.content_id "
            f"WHERE f.content_id IN ({marks})",
            chunk,
        )
        out.update(_group(rows))
    return out


def rank(
    store: VectorStore,
    catalog: Catalog,
    queries: npt.NDArray[np.float32],
    k: int,
    *,
    filters: Filters | None = None,
) -> list[list[Hit]]:
    """Top-``k`` files for each query row (exact inner product), best first.

    Identical files share one vector; each of their paths is returned with the same score, and
    the list is cut at ``k`` paths. Filters restrict the candidates before the top-k cut.
    """
    if k < 1 or len(store) == 0:
        return [[] for _ in range(len(queries))]
    allowed = None
    if filters is not None and filters.active():
        allowed = allowed_files(catalog, filters)
        if not allowed:
            return [[] for _ in range(len(queries))]
    allowed_ids = np.fromiter(allowed, dtype=np.int64) if allowed is not None else None
    scores, ids = store.search(queries, k, allowed=allowed_ids)
    files = (
        allowed if allowed is not None else files_of(catalog, sorted({int(i) for i in ids.ravel() if i >= 0}))
    )
    results = []
    for row_scores, row_ids in zip(scores, ids, strict=True):
        hits: list[Hit] = []
        for score, cid in zip(row_scores, row_ids, strict=True):
            # a content deleted after the store was loaded has no files left: skip it
            hits.extend(_scored(h, float(score)) for h in files.get(int(cid), []))
        results.append(hits[:k])
    return results


def _scored(hit: Hit, score: float) -> Hit:
    return replace(hit, score=score)


#: Candidates examined by the adaptive cutoff when no larger -k is given.
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
    """How many results to keep and in which order, once the candidates are ranked."""

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
            raise UsageError(f"--cutoff {cutoff!r}: the only cutoff is 'auto'.")
        if sort not in ("score", "date"):
            raise UsageError(f"--sort {sort!r}: choose score or date.")
        if threshold is not None and not -1.0 <= threshold <= 1.0:
            raise UsageError(f"--threshold {threshold}: scores are cosine similarities, between -1 and 1.")
        k = top if top is not None else (CUTOFF_CANDIDATES if cutoff else 10)
        return cls(k=k, candidates=k, threshold=threshold, cutoff=cutoff == "auto", sort=sort)


def finish(hits: list[Hit], options: SearchOptions) -> list[Hit]:
    """Apply the threshold, the adaptive cutoff, the cap and the sort order to ranked hits."""
    if options.threshold is not None:
        hits = [h for h in hits if h.score >= options.threshold]
    if options.cutoff and hits:
        hits = hits[: adaptive_cutoff([h.score for h in hits])]
    hits = hits[: options.k]
    if options.sort == "date":
        hits = sorted(hits, key=lambda h: -h.date)
    return hits
