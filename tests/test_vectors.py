"""Tier 1: the FAISS store against brute-force numpy, on seeded synthetic vectors."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clipsearch.encoders.encoder import l2_normalize
from clipsearch.store.vectors import QuantizedStore, create_store, load_store


def unit_vectors(n: int, dim: int, seed: int) -> np.ndarray:
    return l2_normalize(np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32))


def brute_force(base: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    scores = queries @ base.T
    order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
    return ids[order]


@pytest.fixture(params=["flat", "sq8"])
def filled(request: pytest.FixtureRequest) -> tuple[object, np.ndarray, np.ndarray]:
    """A store of each kind with 500 vectors; ``base`` is what the store holds (fp16-rounded for sq8)."""
    base = unit_vectors(500, 64, seed=1)
    ids = np.random.default_rng(2).permutation(np.arange(1000, 1500)).astype(np.int64)
    store = create_store(request.param, 64)
    store.add(ids, base)
    if request.param == "sq8":  # not saved yet: fp16 storage, within 1e-3 of the input
        assert not store.quantized
        np.testing.assert_allclose(store.reconstruct(ids), base, atol=1e-3)
        base = store.reconstruct(ids)
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
    assert store.kind in ("flat", "sq8")
    _, got = store.search(unit_vectors(2, 64, seed=5), 400)
    assert not set(got.ravel().tolist()) & set(ids[:100].tolist())


def test_save_is_atomic_and_loads_back(filled, tmp_path: Path) -> None:
    store = filled[0]
    target = tmp_path / "v.faiss"
    store.save(target)
    assert [p.name for p in tmp_path.iterdir()] == ["v.faiss"]  # no temp file left behind
    loaded = load_store(store.kind, target)
    queries = unit_vectors(5, 64, seed=6)
    np.testing.assert_array_equal(loaded.search(queries, 7)[1], store.search(queries, 7)[1])


@pytest.mark.parametrize("kind", ["flat", "sq8"])
def test_empty_store_and_k_larger_than_store(kind: str) -> None:
    store = create_store(kind, 8)
    scores, got = store.search(unit_vectors(2, 8, seed=7), 5)
    assert scores.shape == (2, 0)
    store.add(np.array([5, 9], dtype=np.int64), unit_vectors(2, 8, seed=8))
    _, got = store.search(unit_vectors(1, 8, seed=9), 50)
    assert sorted(got[0].tolist()) == [5, 9]


def test_l2_normalize_keeps_zero_rows() -> None:
    out = l2_normalize(np.array([[3.0, 4.0], [0.0, 0.0]], dtype=np.float32))
    np.testing.assert_allclose(out, [[0.6, 0.8], [0.0, 0.0]])
    assert out.dtype == np.float32


def test_sq8_learns_ranges_once_big_enough_and_keeps_rankings(tmp_path: Path) -> None:
    dim, n = 512, 1500
    base = unit_vectors(n, dim, seed=10)
    ids = np.arange(n, dtype=np.int64) * 3 + 7
    store = create_store("sq8", dim)
    small = QuantizedStore.TRAIN_MIN - 1
    store.add(ids[:small], base[:small])
    store.save(tmp_path / "a.faiss")  # fewer than TRAIN_MIN: still fp16
    assert not load_store("sq8", tmp_path / "a.faiss").quantized
    store.add(ids[small:1000], base[small:1000])
    store.save(tmp_path / "b.faiss")  # learns the ranges from all 1000 and re-encodes them
    store = load_store("sq8", tmp_path / "b.faiss")
    assert store.quantized and len(store) == 1000
    store.add(ids[1000:], base[1000:])  # added after training: encoded with the learnt ranges
    stored = store.reconstruct(ids)
    cosines = np.sum(stored * base, axis=1) / np.linalg.norm(stored, axis=1)
    assert cosines.mean() >= 0.9999 and cosines.min() >= 0.999
    # 8 bits per dimension plus the id: about a quarter of the fp32 file
    flat = create_store("flat", dim)
    flat.add(ids, base)
    flat.save(tmp_path / "flat.faiss")
    store.save(tmp_path / "c.faiss")
    assert (tmp_path / "c.faiss").stat().st_size < 0.3 * (tmp_path / "flat.faiss").stat().st_size
    # rankings: each stored vector finds itself first; top-10 of random queries agree with exact search
    _, self_hits = store.search(base[::50], 1)
    np.testing.assert_array_equal(self_hits[:, 0], ids[::50])
    queries = l2_normalize(base[:40] + 0.5 * unit_vectors(40, dim, seed=11))
    _, got = store.search(queries, 10)
    exact = brute_force(base, ids, queries, 10)
    overlap = np.mean([len(set(g) & set(e)) / 10 for g, e in zip(got, exact, strict=True)])
    assert overlap >= 0.95


def test_sq8_ranges_learnt_from_similar_vectors_widen_for_different_ones(tmp_path: Path) -> None:
    """The first folder indexed is often one event (similar photos): ranges learnt from it alone
    would clip later, different vectors (worst cosine ~0.96 here without widening)."""
    dim = 512
    rng = np.random.default_rng(12)
    scales = rng.uniform(0.5, 2.0, dim).astype(np.float32)
    centre = rng.standard_normal(dim).astype(np.float32) * scales
    similar = l2_normalize(centre + 0.8 * rng.standard_normal((256, dim)).astype(np.float32) * scales)
    different = l2_normalize(rng.standard_normal((2000, dim)).astype(np.float32) * scales)
    store = create_store("sq8", dim)
    store.add(np.arange(256), similar)
    store.save(tmp_path / "a.faiss")  # ranges learnt from the similar ones only
    store = load_store("sq8", tmp_path / "a.faiss")
    for start in range(0, 2000, 250):  # later syncs, in batches
        store.add(np.arange(256 + start, 256 + start + 250), different[start : start + 250])
    base = np.concatenate([similar, different])
    stored = store.reconstruct(np.arange(len(base)))
    cosines = np.sum(stored * base, axis=1) / np.linalg.norm(stored, axis=1)
    # the first vectors too: re-encoded on the widened ranges, not spoilt by it
    assert cosines.mean() >= 0.9999 and cosines.min() >= 0.999, (cosines.mean(), cosines.min())
    store.save(tmp_path / "b.faiss")  # the widened ranges are what is saved
    np.testing.assert_array_equal(
        load_store("sq8", tmp_path / "b.faiss").reconstruct(np.arange(10)), stored[:10]
    )
    _, hits = store.search(base[::97], 1)
    np.testing.assert_array_equal(hits[:, 0], np.arange(len(base))[::97])


@pytest.mark.parametrize("kind", ["sq8", "fp16", "fp32"])
def test_rows_read_one_by_one_equal_the_mapped_rows(tmp_path: Path, kind: str, monkeypatch) -> None:
    from clipsearch.store import codes

    vectors = unit_vectors(300, 24, seed=5)
    codec = codes.learn(kind, 24, vectors)
    path = tmp_path / "seg.codes.faiss"
    chunks = [(codec.encode(vectors[:100]), None), (codec.encode(vectors[100:]), None)]
    codes.write_codes(path, codec, chunks, 300)
    stored = codes.CodesFile(path)
    positions = np.array([299, 0, 17, 17, 150, 1])
    read = stored.rows(positions)  # pread, row by row
    monkeypatch.setattr(codes, "PREAD_ROWS", 0)
    assert np.array_equal(read, stored.rows(positions))  # through the memory map
    assert np.allclose(read, vectors[positions], atol=0.02 if kind == "sq8" else 1e-3)
    monkeypatch.undo()
    assert stored.rows(np.array([], np.int64)).shape == (0, 24)
    for outside in (300, -301):
        with pytest.raises(IndexError, match=f"row {outside} of 300"):
            stored.rows(np.array([5, outside]))


def test_fine_bits_quarter_the_error_of_8_bit_codes_and_round_trip_through_files(tmp_path: Path) -> None:
    from clipsearch.store import codes

    dim = 50  # 4 dimensions to a byte of fine bits: 13 bytes, the last one half padding
    vectors = unit_vectors(2000, dim, seed=9)
    codec = codes.learn("sq8", dim, vectors)
    assert codec.refines and codec.fine_size == 13 and not codes.Codec("fp16", dim).refines
    coded = codec.encode(vectors)
    fine = codec.refine(vectors, coded)
    assert fine.shape == (2000, 13) and fine.dtype == np.uint8
    low, high = codec._bounds()
    step = (high - low) / 255
    coarse_error = np.abs(codec.decode(coded) - vectors) / step
    fine_error = np.abs(codec.decode_fine(coded, fine) - vectors) / step
    assert coarse_error.max() <= 0.5 + 1e-3 and fine_error.max() <= 0.125 + 1e-3  # half a step, an eighth
    assert fine_error.mean() < coarse_error.mean() / 3.5
    assert np.array_equal(codec.decode_fine(coded, None), codec.decode(coded))
    # every quarter is used, in every byte position (the packing is not lossy)
    for value in range(4):
        assert ((fine >> (2 * np.arange(4)[:, None, None])) & 3 == value).any(axis=(1, 2)).all()

    path, fine_path = tmp_path / "s.codes.faiss", tmp_path / "s.fine.npy"
    chunks = [(coded[:700], fine[:700]), (coded[700:], fine[700:])]
    codes.write_codes(path, codec, chunks, 2000, fine_path=fine_path)
    assert fine_path.stat().st_size < 2000 * 13 + 200 and not list(tmp_path.glob("*.tmp"))
    stored = codes.CodesFile(path, fine_path)
    positions = np.array([1999, 0, 5, 5, 1234])
    assert stored.refined
    assert np.array_equal(stored.rows(positions), codec.decode_fine(coded, fine)[positions])
    assert np.array_equal(stored.rows(positions, fine=False), codec.decode(coded)[positions])
    assert np.array_equal(np.concatenate([v for _, v in stored.chunks()]), codec.decode_fine(coded, fine))
    assert not codes.CodesFile(path).refined  # a segment from before fine bits: its 8-bit codes alone
    assert np.array_equal(codes.CodesFile(path).rows(positions), codec.decode(coded)[positions])
    with pytest.raises(ValueError, match="without fine bits"):  # rows cannot lack them half-way
        codes.write_codes(path, codec, [(coded, None)], 2000, fine_path=fine_path)
    assert codes.CodesFile(path, fine_path).refined and not list(tmp_path.glob("*.tmp"))
    np.save(fine_path, fine[:10])  # a fine file that does not match its codes is refused
    with pytest.raises(ValueError, match="fine bits for 2000 rows"):
        codes.CodesFile(path, fine_path)
