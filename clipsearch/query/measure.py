"""Measure a search on a person's own queries: settings to compare, and the runner.

The queries come from an evaluation set (:mod:`clipsearch.query.evalset`: the stored marks or a
JSONL file). A :class:`Setting` says how to search (how many results, which cutoff, refined or
not, which precision, which index); :func:`run_setting` searches every query of the set once and
scores it with :mod:`clipsearch.query.evaluate`. Ranked metrics look at the best :data:`DEPTH`
results; precision, recall and F1 at the results the setting keeps (its ``k``, threshold or cutoff).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace
from typing import Protocol

import numpy as np
import numpy.typing as npt

from clipsearch.errors import BadValueError
from clipsearch.query.evalset import EvalSet, IndexedPaths, relevant_paths
from clipsearch.query.evaluate import METRICS, QueryScore, precision_at, score_query
from clipsearch.query.feedback import refined_vector
from clipsearch.query.filters import Filters
from clipsearch.query.grammar import parse_query
from clipsearch.query.judgements import FittedCutoff, QueryMarks, query_key
from clipsearch.query.rank import CUTOFF_CANDIDATES, Hit, SearchOptions, finish
from clipsearch.query.vector import QueryEncoder, query_vectors
from clipsearch.store.catalog import Catalog, Judgement
from clipsearch.store.vectors import VectorStore

#: How deep each query is ranked for the ranked metrics (p@10, r@10, nDCG@10, MRR).
DEPTH = CUTOFF_CANDIDATES
#: The extra metric of a report that refines: precision@10 of the results not marked (see README).
NEW_P10 = "new p@10"


# -- settings -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Setting:
    """How to search for one column of a report.

    Args:
        name: the label in reports (default: the spec it was written as).
        k, threshold, cutoff: as ``search``'s options (``cutoff`` ``auto``: the fitted cutoff where
            the index has enough judgements, else the break; ``break``: always the break).
        refine: refine each query with its marks first (Rocchio, :mod:`clipsearch.query.feedback`).
        precision: encode the queries with the torch model at this precision (``fp32``, ``bf16``);
            None: as ``search`` does (the exported ONNX text tower where there is one).
        index: search another index (another model over the same photos); None: this one.
        store: the vector store kind to search (None: the index's own). Only the index's own kind
            exists now; approximate kinds (HNSW, IVF) will be searchable here beside the exact one.
    """

    name: str = ""
    k: int | None = None
    threshold: float | None = None
    cutoff: str | None = None
    refine: bool = False
    precision: str | None = None
    index: str | None = None
    store: str | None = None

    def options(self) -> SearchOptions:
        return SearchOptions.parse(top=self.k, threshold=self.threshold, cutoff=self.cutoff, sort="score")

    def label(self) -> str:
        if self.name:
            return self.name
        parts = []
        if self.cutoff is not None:
            parts.append(f"cutoff={self.cutoff}")
        if self.threshold is not None:
            parts.append(f"threshold={self.threshold:g}")
        if self.k is not None or not parts:
            parts.insert(0, f"k={self.k or 10}")
        parts += [
            f"{key}={getattr(self, key)}" for key in ("precision", "index", "store") if getattr(self, key)
        ]
        if self.refine:
            parts.append("refined")
        return ", ".join(parts)

    def to_dict(self) -> dict[str, object]:
        return {
            "k": self.k,
            "threshold": self.threshold,
            "cutoff": self.cutoff,
            "refine": self.refine,
            "precision": self.precision,
            "index": self.index,
            "store": self.store,
        }


#: Words that stand for several settings in a ``--compare`` list.
PRESETS = {
    "cutoffs": ("k=10", "cutoff=break", "cutoff=auto"),
    "precision": ("precision=fp32", "precision=bf16"),
    "refine": ("refine=no", "refine=yes"),
}
_CUT_KEYS = ("k", "threshold", "cutoff")


def parse_settings(spec: str, base: Setting = Setting()) -> list[Setting]:
    """Settings from a spec: a preset word (:data:`PRESETS`) or ``key=value`` pairs joined by commas
    (``k``, ``threshold``, ``cutoff``, ``refine``, ``precision``, ``index``, ``store``, ``name``).

    Each starts from ``base``; when a spec names any of ``k``, ``threshold`` and ``cutoff``, the
    other two are not taken from ``base`` (``k=10`` is a fixed 10 even after a base cutoff).

    Raises:
        BadValueError: an unknown key or preset, or a value that does not fit its key.
    """
    spec = spec.strip()
    if spec in PRESETS:
        return [s for part in PRESETS[spec] for s in parse_settings(part, base)]
    values: dict[str, str] = {}
    for part in filter(None, (p.strip() for p in spec.split(","))):
        key, sep, value = part.partition("=")
        key = key.strip()
        if not sep or key not in {f.name for f in _setting_fields()}:
            known = ", ".join(
                [*PRESETS, "or key=value with key " + "/".join(f.name for f in _setting_fields())]
            )
            raise BadValueError("compare", spec, f"{part!r} is not a setting; give {known}")
        values[key] = value.strip()
    if not values:
        raise BadValueError("compare", spec, f"name a setting: {', '.join(PRESETS)}, or key=value pairs")
    setting = replace(base, name="")
    if any(key in values for key in _CUT_KEYS):
        setting = replace(setting, k=None, threshold=None, cutoff=None)
    try:
        setting = replace(setting, **{key: _value(key, value) for key, value in values.items()})
    except ValueError:
        raise BadValueError("compare", spec, "k is a whole number and threshold a number") from None
    setting.options()  # checks k, threshold and cutoff
    if setting.precision not in (None, "fp32", "bf16"):
        raise BadValueError("compare", spec, "precision is fp32 or bf16")
    return [setting if values.get("name") else replace(setting, name=spec)]


def _setting_fields() -> tuple[object, ...]:
    from dataclasses import fields

    return fields(Setting)


def _value(key: str, value: str) -> object:
    if key == "k":
        k = int(value)
        if k < 1:
            raise ValueError(value)
        return k
    if key == "threshold":
        return float(value)
    if key == "refine":
        if value.lower() not in ("yes", "no", "true", "false", "1", "0"):
            raise ValueError(value)
        return value.lower() in ("yes", "true", "1")
    return value or None


# -- running --------------------------------------------------------------------------------------


class Searchable(QueryEncoder, Protocol):
    """What a report needs of an index: its model (queries), its catalog and store, and its search."""

    @property
    def catalog(self) -> Catalog: ...

    @property
    def store(self) -> VectorStore: ...

    def search_vectors(
        self, queries: npt.NDArray[np.float32], k: int = 10, *, filters: Filters | None = None
    ) -> list[list[Hit]]: ...


@dataclass
class QueryResult:
    """One query's scores, and what the setting got wrong: relevant files it did not keep (``missed``,
    best ranked first) and files it kept that are not relevant (``wrong``)."""

    score: QueryScore
    missed: list[str]
    wrong: list[str]
    refined: bool = False


@dataclass
class SettingReport:
    """Every query's result under one setting; ``cutoff`` is the fitted cutoff it used, if any;
    ``skipped`` lists queries with no relevant file in the searched index."""

    setting: Setting
    results: list[QueryResult]
    cutoff: FittedCutoff | None = None
    held_out: bool | None = None  # whether no query scored here was used to fit ``cutoff``
    skipped: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.setting.label()

    def mean(self) -> dict[str, float]:
        keys = [*METRICS, *(k for k in self.extra_keys())]
        n = len(self.results)
        return {k: (sum(r.score.scores[k] for r in self.results) / n if n else 0.0) for k in keys}

    def extra_keys(self) -> list[str]:
        first = self.results[0].score.scores if self.results else {}
        return [k for k in first if k not in METRICS]

    def to_dict(self) -> dict[str, object]:
        return {
            "name": self.name,
            "setting": self.setting.to_dict(),
            "cutoff": None if self.cutoff is None else {**self.cutoff.to_dict(), "held_out": self.held_out},
            "queries": [
                {**{k: _round(v) for k, v in r.score.to_dict().items()}, "refined": r.refined}
                for r in self.results
            ],
            "mean": {k: round(v, 4) for k, v in self.mean().items()},
            "skipped": self.skipped,
        }


def _round(value: object) -> object:
    return round(value, 4) if isinstance(value, float) else value


def run_setting(
    index: Searchable,
    evalset: EvalSet,
    setting: Setting,
    *,
    fitted: FittedCutoff | None = None,
    marks: dict[str, QueryMarks] | None = None,
    residual: bool = False,
) -> SettingReport:
    """Search and score every query of ``evalset`` under ``setting``.

    Args:
        index: the index to search (the setting's own: its ``index`` and ``precision`` are the
            caller's to apply).
        fitted: the fitted cutoff of this index, used when the setting's cutoff is ``auto``.
        marks: each query's marks in this index (by :func:`query_key`), for ``refine``.
        residual: also score ``new p@10``: precision@10 of the results not marked, against the
            relevant files not marked (what refinement found that the person had not seen).

    Raises:
        EvalFileError: a file's relevant path or pattern finds nothing in this index.
    """
    options = setting.options()
    used = fitted if options.calibrate and fitted is not None else None
    if used is not None:
        options = replace(options, calibrated=used.threshold)
    marks = marks or {}
    names = IndexedPaths(index.catalog)
    depth = max(DEPTH, options.k)
    results, skipped = [], []
    wanted = []
    for query in evalset.queries:
        relevant = relevant_paths(query, index.catalog, names, evalset.path)
        if relevant:
            wanted.append((query, relevant, parse_query(query.query)))
        else:
            skipped.append(query.query)
    vectors = query_vectors(index, [terms for _, _, terms in wanted])
    feedbacks = [marks.get(query_key(terms)) for _, _, terms in wanted]
    for i, feedback in enumerate(feedbacks):
        if setting.refine and feedback:
            vectors[i] = refined_vector(index.store, vectors[i], feedback.relevant, feedback.irrelevant)
    rankings = index.search_vectors(np.stack(vectors), depth) if vectors else []
    for (query, relevant, terms), feedback, hits in zip(wanted, feedbacks, rankings, strict=True):
        ranked = [h.path for h in hits]
        text_only = all(t.kind == "text" for t in terms)  # the fit is of text queries (see fit_cutoff)
        kept = [h.path for h in finish(hits, options if text_only else replace(options, calibrated=None))]
        score = score_query(query.query, ranked, relevant, kept)
        if residual:
            seen = _paths_of(index.catalog, feedback) if feedback else set()
            unseen = [p for p in ranked if p not in seen]
            score.scores[NEW_P10] = precision_at(unseen, relevant - seen, 10)
        kept_set = set(kept)
        results.append(
            QueryResult(
                score,
                [p for p in ranked if p in relevant and p not in kept_set]
                + sorted(relevant - set(ranked) - kept_set),
                [p for p in kept if p not in relevant],
                bool(setting.refine and feedback),
            )
        )
    held_out = (
        None if used is None else not ({query_key(q.query) for q in evalset.queries} & set(used.queries))
    )
    return SettingReport(setting, results, used, held_out, skipped)


def _paths_of(catalog: Catalog, marks: QueryMarks) -> set[str]:
    ids = [*marks.relevant, *marks.irrelevant]
    return {e.path for files in catalog.entries_of(ids).values() for e in files}


def remap(marks: Iterable[Judgement], catalog: Catalog) -> list[Judgement]:
    """Marks with the content ids of another index (of the same photos): matched by picture hash."""
    marks = list(marks)
    ids = catalog.contents_with_hashes(sorted({m.hash for m in marks}))
    return [m._replace(content_id=ids.get(m.hash)) for m in marks]
