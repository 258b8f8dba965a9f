"""Judgements: a person's marks (this picture is right, that one is not) for a query, and what they buy.

Marks are stored in the catalog by content hash (``store.catalog.Judgement``). This module turns what
a person names (a query as written, file paths) into what is stored, scores judged pictures against
their query, and fits the calibrated cutoff: the score threshold that maximises F1 on the marks.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from clipsearch.errors import UsageError
from clipsearch.query.evaluate import best_f1_threshold
from clipsearch.query.feedback import stored_vectors
from clipsearch.query.grammar import Term, describe, parse_query
from clipsearch.query.vector import QueryEncoder, query_vectors
from clipsearch.store.catalog import Catalog, Judgement, content_of
from clipsearch.store.vectors import VectorStore

#: A fitted cutoff needs at least this many marks of pictures indexed now, and this many of each label.
MIN_FIT_JUDGEMENTS = 30
MIN_FIT_PER_LABEL = 5


def query_key(query: str | list[Term]) -> str:
    """The form a query's marks are stored under: the query written back in the grammar (``describe``),
    runs of spaces in texts made one (as the tokenizer reads them), image paths made absolute, so
    that ``red circle -blue`` and ``red  circle - blue`` share marks.

    Raises:
        QuerySyntaxError: the query is malformed.
    """
    terms = parse_query(query) if isinstance(query, str) else query
    return describe(
        [
            Term(t.kind, os.path.abspath(os.path.expanduser(t.value)), t.weight)
            if t.kind == "image"
            else Term(t.kind, " ".join(t.value.split()), t.weight)
            for t in terms
        ]
    )


class JudgedPathError(UsageError):
    """A path given to judge (or as relevant in an evaluation file) names no indexed picture.

    ``reason``: ``missing`` (no such file, and none recorded there), ``outside`` (not under a folder
    of the index), ``not-indexed`` (under one, but not indexed: new since the last sync, or left
    out), ``skipped`` (indexing skipped it; ``detail`` says why).
    """

    def __init__(self, path: str, reason: str, roots: Sequence[str] = (), detail: str = "") -> None:
        problems = {
            "missing": f"{path}: no such file, and the index records none there",
            "outside": f"{path} is not inside a folder of the index ({', '.join(roots) or 'none yet'})",
            "not-indexed": f"{path} is not in the index (added since the last sync, or left out by its "
            "settings)",
            "skipped": f"{path} was skipped when it was indexed ({detail}), so it has no vector to judge",
        }
        super().__init__(problems[reason] + ".")
        self.path = path
        self.reason = reason
        self.roots = list(roots)
        self.detail = detail


def content_ids_of(catalog: Catalog, paths: Iterable[str]) -> list[int]:
    """The content id of each indexed file (in order, duplicates kept once).

    A file the index records is found even when it is not on disk now (an unplugged drive).

    Raises:
        JudgedPathError: a path names no indexed picture (why: see its ``reason``).
    """
    roots = catalog.roots()
    found: list[int] = []
    for given in paths:
        path = os.path.abspath(os.path.expanduser(given))
        state = catalog.file(path)
        if state is None and os.path.exists(path):
            real = os.path.realpath(path)  # a symlink to an indexed file names that file
            state = catalog.file(real) if real != path else None
        if state is not None and state.content_id is None:
            raise JudgedPathError(path, "skipped", roots, state.error or "unreadable")
        if state is None:
            inside = any(path == r or path.startswith(r.rstrip("/") + "/") for r in roots)
            if not os.path.exists(path):
                raise JudgedPathError(path, "missing", roots)
            raise JudgedPathError(path, "not-indexed" if inside else "outside", roots)
        assert state.content_id is not None
        if state.content_id not in found:
            found.append(state.content_id)
    return found


@dataclass(frozen=True)
class QueryMarks:
    """The marks of one query, by content id (pictures indexed now only)."""

    query: str
    relevant: tuple[int, ...]
    irrelevant: tuple[int, ...]

    @classmethod
    def of(cls, query: str, marks: Iterable[Judgement]) -> QueryMarks:
        rows = [m for m in marks if m.content_id is not None]
        return cls(
            query,
            tuple(m.content_id for m in rows if m.relevant),  # type: ignore[misc]
            tuple(m.content_id for m in rows if not m.relevant),  # type: ignore[misc]
        )

    def __bool__(self) -> bool:
        return bool(self.relevant or self.irrelevant)


def by_query(marks: Iterable[Judgement]) -> dict[str, QueryMarks]:
    """Marks grouped by query (queries whose pictures are all gone from the index are left out)."""
    grouped: dict[str, list[Judgement]] = {}
    for mark in marks:
        grouped.setdefault(mark.query, []).append(mark)
    out = {q: QueryMarks.of(q, rows) for q, rows in grouped.items()}
    return {q: m for q, m in out.items() if m}


def _text_only(query: str) -> bool:
    return all(t.kind == "text" for t in parse_query(query))


def picture_scores(
    store: VectorStore, catalog: Catalog, query: npt.NDArray[np.float32], content_ids: Sequence[int]
) -> dict[int, float]:
    """Each picture's score for a query vector as a search gives it: its best vector's (side views)."""
    if not content_ids:
        return {}
    ids, vectors = stored_vectors(store, [*content_ids, *catalog.view_ids_of(content_ids)])
    scores = vectors @ np.asarray(query, dtype=np.float32)
    best: dict[int, float] = {}
    for cid, score in zip(content_of(ids).tolist(), scores.tolist(), strict=True):
        best[cid] = max(best.get(cid, -2.0), score)
    return best


@dataclass(frozen=True)
class FittedCutoff:
    """The score threshold that maximised F1 on the stored marks, and what it was fitted on."""

    threshold: float
    f1: float  # on the marks it was fitted on (optimistic for other queries)
    judgements: int
    queries: tuple[str, ...]

    def to_dict(self) -> dict[str, object]:
        return {
            "threshold": round(self.threshold, 6),
            "f1": round(self.f1, 4),
            "judgements": self.judgements,
            "queries": len(self.queries),
        }


def fit_cutoff(
    model: QueryEncoder, store: VectorStore, catalog: Catalog, marks: Iterable[Judgement]
) -> FittedCutoff | None:
    """The calibrated cutoff for this index's model: each marked picture scored against its query's
    vector (as a search scores it), pooled over the queries, and the threshold that maximises F1 on
    them (:func:`~clipsearch.query.evaluate.best_f1_threshold`). Text queries only: an image scores
    other images on another scale. None without enough marks: fewer than
    :data:`MIN_FIT_JUDGEMENTS` of pictures indexed now, or fewer than :data:`MIN_FIT_PER_LABEL`
    relevant or not relevant.
    """
    grouped = {q: m for q, m in by_query(marks).items() if _text_only(q)}
    relevant = sum(len(m.relevant) for m in grouped.values())
    irrelevant = sum(len(m.irrelevant) for m in grouped.values())
    if relevant + irrelevant < MIN_FIT_JUDGEMENTS or min(relevant, irrelevant) < MIN_FIT_PER_LABEL:
        return None
    scored: list[tuple[float, bool]] = []
    vectors = query_vectors(model, [parse_query(q) for q in grouped])
    for qm, vector in zip(grouped.values(), vectors, strict=True):
        scores = picture_scores(store, catalog, vector, [*qm.relevant, *qm.irrelevant])
        scored += [(scores[c], True) for c in qm.relevant if c in scores]
        scored += [(scores[c], False) for c in qm.irrelevant if c in scores]
    best = best_f1_threshold(scored)
    if best is None:
        return None
    return FittedCutoff(best[0], best[1], len(scored), tuple(grouped))
