"""Measure a search on a person's own queries: precision, recall, nDCG, MRR and thresholded F1.

Pure functions over ranked lists and relevant sets (no index, no model): ``score_query`` scores one
query, ``mean_scores`` averages. Relevance is binary; anything not marked relevant counts as not
relevant (unjudged results included), as in TREC-style evaluation with incomplete judgements.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Sequence
from dataclasses import dataclass

#: The metric keys every report carries, in order.
METRICS = ("p@10", "r@10", "ndcg@10", "mrr", "precision", "recall", "f1")


def precision_at(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Share of the first ``k`` results that are relevant (a shorter list counts its gaps as misses)."""
    return sum(1 for r in ranked[:k] if r in relevant) / k if k > 0 else 0.0


def recall_at(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Share of the relevant items found in the first ``k`` results (0 when nothing is relevant)."""
    if not relevant:
        return 0.0
    return len(set(ranked[:k]) & set(relevant)) / len(relevant)


def ndcg_at(ranked: Sequence[str], relevant: Collection[str], k: int) -> float:
    """Normalised discounted cumulative gain with binary gains: sum of 1/log2(rank+1) over the relevant
    results in the first ``k``, divided by the best possible sum."""
    gains = sum(1.0 / math.log2(i + 2) for i, r in enumerate(ranked[:k]) if r in relevant)
    ideal = sum(1.0 / math.log2(i + 2) for i in range(min(k, len(relevant))))
    return gains / ideal if ideal else 0.0


def reciprocal_rank(ranked: Sequence[str], relevant: Collection[str]) -> float:
    """1 / the rank of the first relevant result (0 when there is none)."""
    return next((1.0 / (i + 1) for i, r in enumerate(ranked) if r in relevant), 0.0)


def set_scores(returned: Collection[str], relevant: Collection[str]) -> tuple[float, float, float]:
    """(precision, recall, F1) of a returned set, e.g. the results above a threshold or a cutoff."""
    hits = len(set(returned) & set(relevant))
    precision = hits / len(returned) if returned else 0.0
    recall = hits / len(relevant) if relevant else 0.0
    f1 = 2 * precision * recall / (precision + recall) if precision + recall else 0.0
    return precision, recall, f1


@dataclass(frozen=True)
class QueryScore:
    """Every metric of one query; ``returned`` is how many results the thresholded set kept."""

    query: str
    relevant: int
    returned: int
    scores: dict[str, float]

    def to_dict(self) -> dict[str, object]:
        return {"query": self.query, "relevant": self.relevant, "returned": self.returned, **self.scores}


def score_query(
    query: str, ranked: Sequence[str], relevant: Collection[str], returned: Collection[str] | None = None
) -> QueryScore:
    """All metrics of one query.

    Args:
        ranked: results best first (at least the top 10; more makes recall and MRR more exact).
        relevant: the items judged relevant.
        returned: the thresholded result set (default: the whole ranked list).
    """
    kept = list(ranked) if returned is None else list(returned)
    precision, recall, f1 = set_scores(kept, relevant)
    scores = {
        "p@10": precision_at(ranked, relevant, 10),
        "r@10": recall_at(ranked, relevant, 10),
        "ndcg@10": ndcg_at(ranked, relevant, 10),
        "mrr": reciprocal_rank(ranked, relevant),
        "precision": precision,
        "recall": recall,
        "f1": f1,
    }
    return QueryScore(query, len(set(relevant)), len(kept), scores)


def mean_scores(scores: Sequence[QueryScore]) -> dict[str, float]:
    """The mean of each metric over the queries (an empty list gives zeros)."""
    return {m: (sum(s.scores[m] for s in scores) / len(scores) if scores else 0.0) for m in METRICS}


def best_f1_threshold(scored: Sequence[tuple[float, bool]]) -> tuple[float, float] | None:
    """The score threshold that maximises F1 over judged results (score, relevant?), and that F1.

    Keeping every result scoring at least the threshold; None without any relevant judgement.
    """
    total_relevant = sum(1 for _, rel in scored if rel)
    if not total_relevant:
        return None
    best: tuple[float, float] | None = None
    hits = 0
    ordered = sorted(scored, key=lambda x: -x[0])
    for i, (score, rel) in enumerate(ordered):
        hits += rel
        if i + 1 < len(ordered) and ordered[i + 1][0] == score:
            continue  # a threshold keeps every result of equal score
        precision, recall = hits / (i + 1), hits / total_relevant
        f1 = 2 * precision * recall / (precision + recall) if hits else 0.0
        if best is None or f1 > best[1]:
            best = (score, f1)
    return best
