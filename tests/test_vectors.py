"""Tier 1: the FAISS store against brute-force numpy, on seeded synthetic vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsearch.encoder import l2_normalize
from clipsearch.vectors import create_store, load_store


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32))


def brute_force(base: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ base.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order]


@pytest.fixture
def filled() -> tuple[object, np.ndarray, np.ndarray]:
    base = unit_vectors(500, 64, seed=1)
    ids = np.random.default_rng(2).permutation(np.arange(1000, 1500)).astype(np.int64)
    store = create_store("flat", 64)
    store.add(ids, base)
    return store, ids, base


@pytest.mark.parametrize("n_queries", [1, 3, 50])
def test_search_matches_brute_force(filled, n_queries: int) -> None:
    store, ids, base = filled
    queries = unit_vectors(n_queries, 64, seed=3)
    scores, got = store.search(queries, 10)
    np.testing.assert_array_equal(got, brute_force(base, ids, queries, 10))
    expected_scores = np.sort(queries @ base.T, axis=1)[:, ::-1][:, :10]
    np.testing.assert_allclose(scores, expected_scores, rtol=1e-5, atol=1e-5)


def test_allowed_ids_filter_before_top_k(filled) -> None:
    store, ids, base = filled
    queries = unit_vectors(4, 64, seed=4)
    allowed = ids[::7]
    _, got = store.search(queries, 10, allowed=allowed)
    mask = np.isin(ids, allowed)
    np.testing.assert_array_equal(got, brute_force(base[mask], ids[mask], queries, 10))


def test_remove_reconstruct_and_ids(filled) -> None:
    store, ids, base = filled
    assert store.remove(ids[:100]) == 100
    assert store.remove(ids[:100]) == 0
    assert len(store) == 400
    assert set(store.ids().tolist()) == set(ids[100:].tolist())
    np.testing.assert_allclose(store.reconstruct(ids[100:105]), base[100:105], atol=1e-6)
    _, got = store.search(unit_vectors(2, 64, seed=5), 400)
    assert not set(got.ravel().tolist()) & set(ids[:100].tolist())


def test_save_is_atomic_and_loads_back(filled, tmp_path: Path) -> None:
    store = filled[0]
    target = tmp_path / "v.faiss"
    store.save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["v.faiss"]  # no temp file left behind
    loaded = load_store("flat", target)
    queries = unit_vectors(5, 64, seed=6)
    np.testing.assert_array_equal(loaded.search(queries, 7)[1], store.search(queries, 7)[1])


def test_empty_store_and_k_larger_than_store() -> None:
    store = create_store("flat", 8)
    scores, got = store.search(unit_vectors(2, 8, seed=7), 5)
    assert scores.shape == (2, 0)
    store.add(np.array([5, 9], dtype=np.int64), unit_vectors(2, 8, seed=8))
    _, got = store.search(unit_vectors(1, 8, seed=9), 50)
    assert sorted(got[0].tolist()) == [5, 9]


def test_l2_normalize_keeps_zero_rows() -> None:
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert out.dtype == np.float32
