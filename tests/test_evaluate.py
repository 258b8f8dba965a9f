"""The evaluation metrics against brute-force definitions on seeded random rankings."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from clipsearch.query.evaluate import (
    best_f1_threshold,
    mean_scores,
    ndcg_at,
    precision_at,
    recall_at,
    reciprocal_rank,
    score_query,
    set_scores,
)


def brute_ndcg(ranked: list[str], relevant: set[str], k: int) -> float:
    dcg = 0.0
    for position in range(1, k + 1):
        if position <= len(ranked) and ranked[position - 1] in relevant:
            dcg += 1 / math.log2(position + 1)
    best = sorted([1] * len(relevant) + [0] * k, reverse=True)[:k]
    idcg = sum(g / math.log2(p + 1) for p, g in enumerate(best, 1))
    return dcg / idcg if idcg else 0.0


@pytest.mark.parametrize("seed", range(40))
def test_metrics_equal_brute_force(seed: int) -> None:
    rng = random.Random(seed)
    items = [f"/photos/{i}.jpg" for i in range(30)]
    ranked = rng.sample(items, rng.randint(0, 25))
    relevant = set(rng.sample(items, rng.randint(0, 8)))
    hits10 = [r in relevant for r in ranked[:10]]
    assert precision_at(ranked, relevant, 10) == pytest.approx(sum(hits10) / 10)
    assert recall_at(ranked, relevant, 10) == pytest.approx(sum(hits10) / len(relevant) if relevant else 0)
    assert ndcg_at(ranked, relevant, 10) == pytest.approx(brute_ndcg(ranked, relevant, 10))
    first = [i for i, r in enumerate(ranked, 1) if r in relevant]
    assert reciprocal_rank(ranked, relevant) == pytest.approx(1 / first[0] if first else 0)
    kept = ranked[: rng.randint(0, len(ranked))]
    p, r, f = set_scores(kept, relevant)
    tp = len(set(kept) & relevant)
    assert p == pytest.approx(tp / len(kept) if kept else 0)
    assert r == pytest.approx(tp / len(relevant) if relevant else 0)
    assert f == pytest.approx(2 * tp / (len(kept) + len(relevant)) if tp else 0)
    one = score_query("q", ranked, relevant, kept)
    assert one.scores["p@10"] == precision_at(ranked, relevant, 10) and one.returned == len(kept)


def test_perfect_and_empty_rankings() -> None:
    relevant = {"a", "b", "c"}
    perfect = score_query("q", ["a", "b", "c", "x"], relevant, ["a", "b", "c"])
    assert perfect.scores["ndcg@10"] == 1 and perfect.scores["mrr"] == 1 and perfect.scores["f1"] == 1
    assert perfect.scores["r@10"] == 1 and perfect.scores["p@10"] == pytest.approx(0.3)
    nothing = score_query("q", [], relevant)
    assert all(v == 0 for v in nothing.scores.values())
    means = mean_scores([perfect, nothing])
    assert means["mrr"] == 0.5 and means["ndcg@10"] == 0.5
    assert all(v == 0 for v in mean_scores([]).values())


@pytest.mark.parametrize("seed", range(20))
def test_best_f1_threshold_is_the_best_of_all_thresholds(seed: int) -> None:
    rng = random.Random(seed)
    judged = [(round(rng.random(), 2), rng.random() < 0.4) for _ in range(rng.randint(1, 30))]
    found = best_f1_threshold(judged)
    if not any(rel for _, rel in judged):
        assert found is None
        return
    assert found is not None

    def f1_at(threshold: float) -> float:
        kept = [rel for score, rel in judged if score >= threshold]
        tp, relevant = sum(kept), sum(rel for _, rel in judged)
        return 2 * tp / (len(kept) + relevant) if tp else 0.0

    best = max(f1_at(t) for t, _ in itertools.chain(judged))
    assert found[1] == pytest.approx(best) and f1_at(found[0]) == pytest.approx(best)
