"""Store kinds over segments: against brute force, filters, deletions across merges, kills mid-merge.

Tier 1 and 2: seeded clustered vectors committed through the real commit path into a real index
folder (SQLite catalog, segment files, FAISS), no model needed.
"""

from __future__ import annotations

import json
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clipsearch.cli import app
from clipsearch.encoders.encoder import l2_normalize
from clipsearch.errors import IndexCorruptError
from clipsearch.ingest.commit import FileRow, NewContent, NewVideo, commit_batch
from clipsearch.ingest.scan import FileRecord
from clipsearch.query.filters import parse_filters
from clipsearch.store import maintain, segmented
from clipsearch.store.catalog import IndexMeta, View, view_id
from clipsearch.store.folder import IndexFolder
from conftest import assert_tidy

DIM = 64
runner = CliRunner()


def clustered(n: int, seed: int, dim: int = DIM) -> np.ndarray:
    """Unit vectors around 24 centres (CLIP embeddings are clustered, not spread evenly)."""
    rng = np.random.default_rng(seed)
    centres = np.random.default_rng(0).standard_normal((24, dim)).astype(np.float32)
    return l2_normalize(
        centres[rng.integers(0, 24, n)] + 0.6 * rng.standard_normal((n, dim)).astype(np.float32)
    )


def new_folder(path: Path, choice: str = "auto") -> IndexFolder:
    folder = IndexFolder.open_for_write(path, lambda: IndexMeta("synthetic", "", "0" * 64, DIM, "sq8"))
    folder.set_store_settings(choice)
    return folder


def add(folder: IndexFolder, vectors: np.ndarray, first: int, *, direct: bool = False) -> list[int]:
    """Commit one file per vector (``/photos/<n>.jpg``, n from ``first``); returns their content ids."""
    digests = [f"{first + i:032x}" for i in range(len(vectors))]
    new = [NewContent(d, 640, 480, None) for d in digests]
    rows = [FileRow(FileRecord(f"/photos/{first + i}.jpg", 1, 1), d, None) for i, d in enumerate(digests)]
    ids = commit_batch(folder, new, vectors, rows, direct=direct)
    return [ids[d] for d in digests]


def delete(folder: IndexFolder, numbers: list[int]) -> None:
    with folder.catalog.transaction():
        folder.catalog.delete_files([f"/photos/{n}.jpg" for n in numbers])
        folder.catalog.drop_orphan_contents()


def brute_force(stored: np.ndarray, ids: np.ndarray, queries: np.ndarray, k: int) -> np.ndarray:
    order = np.argsort(-(queries @ stored.T), axis=1, kind="stable")[:, :k]
    return ids[order]


def recall(got: np.ndarray, exact: np.ndarray) -> float:
    return float(np.mean([len(set(g) & set(e)) / len(e) for g, e in zip(got, exact, strict=True)]))


def three_segments(path: Path, kind: str) -> tuple[IndexFolder, np.ndarray]:
    """3,000 vectors in a big segment (the kind built on it) and two small ones; returns the vectors."""
    x = clustered(3000, seed=1)
    folder = new_folder(path, kind)
    add(folder, x[:2400], 0)
    folder.optimize()  # ivfpq: trained on these
    add(folder, x[2400:2700], 2400)
    folder.checkpoint()
    add(folder, x[2700:], 2700, direct=True)
    return folder, x


@pytest.fixture(scope="module", params=["flat", "sq8", "ivfpq"])
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory):
    folder, x = three_segments(tmp_path_factory.mktemp(request.param) / "idx", request.param)
    yield request.param, folder, x
    folder.close()


def test_each_kind_against_brute_force(built) -> None:
    kind, folder, x = built
    store = folder.store
    assert store.kind == kind and len(folder.catalog.segments()) == 3 and len(store) == 3000
    ids = np.sort(store.ids())
    stored = store.reconstruct(ids)
    queries = clustered(30, seed=2)
    scores, got = store.search(queries, 10)
    exact = brute_force(stored, ids, queries, 10)
    if kind == "ivfpq":
        assert recall(got, exact) >= 0.95
        assert folder.info()["recall_at_10"] >= 0.95  # measured when it was built
    else:  # exhaustive: the very ranking of the stored vectors
        np.testing.assert_array_equal(got, exact)
        np.testing.assert_allclose(scores, np.sort(queries @ stored.T, axis=1)[:, ::-1][:, :10], atol=1e-5)
    if kind == "flat":
        np.testing.assert_array_equal(stored, x)  # 32-bit floats, as given
    else:
        assert (np.sum(stored * x, axis=1) / np.linalg.norm(stored, axis=1)).min() > 0.999


def test_filters_keep_k_results_and_equal_an_exact_filtered_search(built, monkeypatch) -> None:
    kind, folder, _ = built
    store = folder.store
    ids = np.sort(store.ids())
    stored = store.reconstruct(ids)
    queries = clustered(20, seed=3)
    rng = np.random.default_rng(4)
    for share in (0.02, 0.3):
        allowed = rng.choice(ids, size=int(share * len(ids)), replace=False)
        keep = np.isin(ids, allowed)
        exact = brute_force(stored[keep], ids[keep], queries, 10)
        _, got = store.search(queries, 10, allowed=allowed)
        np.testing.assert_array_equal(got, exact)  # few allowed: answered exactly, whatever the kind
        if kind == "ivfpq":  # many allowed: the IVF scan with the filter inside it
            monkeypatch.setattr(segmented, "EXACT_FILTER_MAX", 10)
            _, got = store.search(queries, 10, allowed=allowed)
            monkeypatch.undo()
            assert np.isin(got, allowed).all() and (got >= 0).all()  # 10 hits, all allowed
            assert recall(got, exact) >= 0.95


def add_videos(folder: IndexFolder, moments: np.ndarray, first: int, *, direct: bool = False) -> list[int]:
    """Commit one video per row of ``moments`` (videos x moments x dim; ``/films/<n>/film.mp4``), its
    moments as views 0, 1, ...; returns their content ids."""
    digests = [f"f{first + i:031x}" for i in range(len(moments))]
    videos = [
        NewVideo(
            NewContent(d, 640, 360, None),
            tuple(View(n, "moment", 2.0 * n, 2.0 * n + 2) for n in range(len(m))),
            m,
        )
        for d, m in zip(digests, moments, strict=True)
    ]
    rows = [FileRow(FileRecord(f"/films/{first + i}/film.mp4", 1, 1), d, None) for i, d in enumerate(digests)]
    ids = commit_batch(folder, [], None, rows, videos=videos, direct=direct)
    return [ids[d] for d in digests]


@pytest.mark.parametrize("kind", ["sq8", "ivfpq"])
def test_moments_are_stored_and_searched_by_every_kind(tmp_path, kind) -> None:
    """Videos' moments (views 0, 1, 2 of a content) through the pending log and straight into a
    segment file, then merged into the big segment: each moment is found by its own vector under its own
    FAISS id, a filter on the video's path allows its moments only, and deleting it drops them."""
    folder, _ = three_segments(tmp_path / "idx", kind)
    moments = clustered(60, seed=7).reshape(20, 3, DIM)
    cids = add_videos(folder, moments[:10], 0) + add_videos(folder, moments[10:], 10, direct=True)
    assert folder.catalog.counts()["vectors"] == 3000 + 60
    for _ in ("in small segments", "merged into the big one"):
        store = folder.store
        assert len(store) == 3060 and store.kind == kind
        want = np.array([view_id(c, v) for c in cids for v in range(3)], dtype=np.int64)
        _, got = store.search(moments.reshape(60, DIM), 1)
        assert (got[:, 0] == want).mean() >= (1.0 if kind == "sq8" else 0.95)
        allowed = folder.catalog.vector_ids_matching(parse_filters(folder="/films/3").for_catalog())
        assert sorted(allowed) == sorted(want[9:12])
        _, got = store.search(moments[3], 3, allowed=allowed)
        assert sorted(got[:, 0]) == sorted(want[9:12])
        folder.checkpoint(merges="all")  # moments merged into the big segment (ivfpq: encoded with its PQ)
    with folder.catalog.transaction():
        folder.catalog.delete_files(["/films/3/film.mp4"])
        folder.catalog.drop_orphan_contents()
    folder.checkpoint(merges="all")
    assert len(folder.store) == 3057 and not np.isin(want[9:12], folder.store.ids()).any()
    folder.close()


def test_deleted_vectors_are_skipped_then_dropped_by_a_merge(tmp_path) -> None:
    folder, x = three_segments(tmp_path / "idx", "ivfpq")
    gone = list(range(0, 2400, 3)) + list(range(2400, 3000, 2))  # in the big and in the small segments
    delete(folder, gone)
    store = folder.store
    live = np.sort(store.ids())
    assert len(live) == 3000 - len(gone) and len(store) == len(live)
    queries = x[gone[:20]]  # each deleted vector would find itself first
    _, got = store.search(queries, 10)
    assert not np.isin(got, folder.catalog.tombstone_ids()).any()
    assert len(folder.catalog.tombstone_ids()) == len(gone)
    folder.checkpoint()  # over a fifth of the big segment deleted: merged, the deleted left out
    assert len(folder.catalog.segments()) == 1 and len(folder.catalog.tombstone_ids()) == 0
    assert_tidy(folder.path)
    store = folder.store
    np.testing.assert_array_equal(np.sort(store.ids()), live)
    _, got = store.search(queries, 10)
    exact = brute_force(store.reconstruct(live), live, queries, 10)
    assert recall(got, exact) >= 0.95
    folder.close()


def test_a_reader_keeps_searching_its_files_across_a_merge(tmp_path) -> None:
    folder = new_folder(tmp_path / "idx", "sq8")
    x = clustered(1400, seed=5)
    add(folder, x[:1000], 0)
    folder.checkpoint()
    add(folder, x[1000:1100], 1000)
    folder.checkpoint()
    reader = IndexFolder.open(tmp_path / "idx")
    before = reader.store.search(x[:5], 10)[1]
    names = {name for name, _, _ in folder.catalog.segments()}
    add(folder, x[1100:], 1100)
    folder.checkpoint()  # 400 small > a quarter of 1,000: everything merged into a new big segment
    assert not names & {name for name, _, _ in folder.catalog.segments()}
    assert not any((tmp_path / "idx" / f"{n}.ids.npy").exists() for n in names)  # deleted, still mapped
    np.testing.assert_array_equal(reader._store.search(x[:5], 10)[1], before)  # type: ignore[union-attr]
    assert len(reader.store) == 1400  # and it takes up the new files when it looks again
    reader.close()
    folder.close()


def test_the_kind_follows_the_size_and_the_budget(tmp_path, monkeypatch) -> None:
    monkeypatch.setattr(maintain, "EXHAUSTIVE_MAX", 1500)
    folder = new_folder(tmp_path / "idx")
    x = clustered(4000, seed=6)
    add(folder, x[:1000], 0)
    assert folder.optimize() is None and folder.store.kind == "sq8"
    add(folder, x[1000:2000], 1000)
    assert "sq8 -> ivfpq" in (folder.optimize() or "")
    params = json.loads(folder.catalog.get("store_params") or "{}")
    assert folder.store.kind == "ivfpq" and params["trained_count"] == 2000 and params["m"] == 32
    assert params["recall_at_10"] >= 0.95
    add(folder, x[2000:4000], 2000)
    assert folder.optimize() is None  # not grown fourfold: segments, no training
    folder.set_store_settings(memory_budget=2000 * 12)  # 8-byte codes at most
    assert "memory budget" in (folder.optimize() or "")
    assert json.loads(folder.catalog.get("store_params") or "{}")["m"] == 4
    folder.set_store_settings("flat")
    folder.optimize()
    store = folder.store
    assert store.kind == "flat" and len(store) == 4000 and len(folder.catalog.segments()) == 1
    folder.close()


# -- kill -9 during a merge and during a rebuild ----------------------------------------------------

_DIE = r"""
import os, signal, sys
from clipsearch.store import codes, maintain, vectorfiles
from clipsearch.store.catalog import Catalog
from clipsearch.store.folder import IndexFolder
path, step, action = sys.argv[1:4]
die = lambda *a, **k: os.kill(os.getpid(), signal.SIGKILL)
if step == "writing":  # in the middle of the new codes file
    real = codes.write_codes
    def write_codes(path, codec, chunks, count, **kw):
        def first_then_die():
            for n, chunk in enumerate(chunks):
                if n:
                    die()
                yield chunk
        real(path, codec, first_then_die(), count, **kw)
    codes.write_codes = write_codes
    import clipsearch.store.segments as segments
    segments.write_codes = write_codes
    codes.CHUNK = maintain.CHUNK = 100
elif step == "listing":  # files written, the catalog not switched yet
    real_replace = Catalog.replace_segments
    def replace_segments(self, remove, add):
        if list(remove):
            die()
        real_replace(self, remove, add)
    Catalog.replace_segments = replace_segments
elif step == "sweep":  # the catalog switched, the old files not deleted yet
    real_sweep = vectorfiles.sweep_unlisted
    calls = []
    def sweep(folder, catalog):
        calls.append(1)
        if len(calls) > 2:  # after opening, after the checkpoint: after the merge or the rebuild
            die()
        real_sweep(folder, catalog)
    vectorfiles.sweep_unlisted = sweep
folder = IndexFolder.open_for_write(path)
if action == "merge":
    folder.checkpoint()
else:
    folder.set_store_settings("ivfpq")
    folder.optimize()
print("finished without dying")
"""


@pytest.mark.parametrize("action", ["merge", "rebuild"])
@pytest.mark.parametrize("step", ["writing", "listing", "sweep"])
def test_kill_9_during_a_merge_or_a_rebuild_loses_nothing(tmp_path, step, action) -> None:
    path = tmp_path / "idx"
    x = clustered(2000, seed=7)
    folder = new_folder(path, "sq8")
    add(folder, x[:1200], 0)
    folder.checkpoint()
    ids = add(folder, x[1200:1600], 1200)  # pending: the child's checkpoint writes it, then merges
    delete(folder, [1, 5, 1201])
    expected = np.sort(folder.store.ids())
    assert len(expected) == 1597
    folder.close()
    child = subprocess.run([sys.executable, "-c", _DIE, str(path), step, action], capture_output=True)
    assert child.returncode == -signal.SIGKILL, (child.stdout, child.stderr.decode())
    with IndexFolder.open(path) as reader:  # a reader sees every vector once, before or after
        np.testing.assert_array_equal(np.sort(reader.store.ids()), expected)
        _, got = reader.store.search(x[[0, 1300, 10]], 1)
        assert got[:, 0].tolist() == [expected[0], ids[100], expected[8]]  # each finds itself
    with IndexFolder.open_for_write(path) as writer:  # the next writer cleans up and carries on
        assert_tidy(path)
        if action == "rebuild":
            writer.set_store_settings("ivfpq")
        writer.optimize()
        assert writer.store.kind == ("ivfpq" if action == "rebuild" else "sq8")
        np.testing.assert_array_equal(np.sort(writer.store.ids()), expected)
        assert len(writer.catalog.segments()) == 1 and not len(writer.catalog.tombstone_ids())
    assert_tidy(path)


# -- what info and index say about it ---------------------------------------------------------------


def test_info_reports_the_kind_its_parameters_bytes_and_measured_recall(tmp_path) -> None:
    folder, _ = three_segments(tmp_path / "idx", "ivfpq")
    folder.close()
    result = runner.invoke(app, ["info", "--index", str(tmp_path / "idx"), "--json"])
    assert result.exit_code == 0, result.stderr
    info = json.loads(result.stdout)
    assert (info["store"], info["store_choice"], info["segments"], info["vectors"]) == (
        "ivfpq",
        "ivfpq",
        3,
        3000,
    )
    assert set(info["store_params"]) == {"nlist", "m", "nprobe", "rerank"}
    assert info["recall_at_10"] >= 0.95 and info["filtered_recall_at_10"] >= 0.9
    assert info["recall_measured_at"] == 2400
    per, total = info["bytes_per_vector"], info["bytes"]
    # 8-bit codes and their 2 fine bits per dimension, kept on disk for re-ranking
    assert DIM + DIM / 4 <= per["codes"] < DIM + DIM / 4 + 2
    # 32-byte PQ codes and 8-byte ids searched, plus the quantizer and PQ tables (64 KB here)
    assert 40 < per["search"] < 40 + 100_000 / 3000 and 8 <= per["ids"] < 9
    segment_files = [p for p in (tmp_path / "idx").iterdir() if p.name.startswith("seg-")]
    assert total["search"] + total["codes"] + total["ids"] == sum(p.stat().st_size for p in segment_files)
    text = runner.invoke(app, ["info", "--index", str(tmp_path / "idx")]).stdout
    assert "Vectors:  ivfpq, approximate (" in text and "recall@10 0." in text and "3 segments" in text


def test_store_and_memory_budget_options_are_checked_before_anything_runs(tmp_path) -> None:
    result = runner.invoke(app, ["index", str(tmp_path), "--index", str(tmp_path / "i"), "--store", "hnsw"])
    assert result.exit_code == 2 and "--store 'hnsw': choose auto, flat, sq8, ivfpq" in result.stderr
    result = runner.invoke(
        app, ["index", str(tmp_path), "--index", str(tmp_path / "i"), "--memory-budget", "1X"]
    )
    assert result.exit_code == 2 and "--memory-budget '1X'" in result.stderr
    assert not (tmp_path / "i").exists()
    assert maintain.parse_budget("1G") == 1024**3 and maintain.parse_budget("512m") == 512 * 1024**2
    assert maintain.parse_budget("1.5GB") == int(1.5 * 1024**3)


# -- real files through the sync ----------------------------------------------------------------------


def test_add_remove_rename_across_a_segment_merge(tmp_path, tiny_model, tiny_encoder) -> None:
    from test_crash import check_exact, write_corpus

    from clipsearch.api import Index
    from clipsearch.ingest.sync import SyncOptions

    folder, index_dir = tmp_path / "photos", tmp_path / "idx"
    write_corpus(folder, 40, seed=1)
    options = SyncOptions(export_text=False, processes=False)

    def sync() -> None:
        with Index.open_for_write(index_dir, tiny_encoder) as idx:
            idx.sync([str(folder)], options=options)

    sync()
    with IndexFolder.open(index_dir) as reader:
        (first,) = reader.catalog.segments()
        moved = {p: reader.stored_vector(str(p)) for p in sorted(folder.iterdir())[:5]}
    for path in moved:
        path.rename(path.with_name("renamed-" + path.name))
    for path in sorted(folder.iterdir())[5:10]:
        path.unlink()
    write_corpus(tmp_path / "new", 15, seed=2)
    for path in (tmp_path / "new").iterdir():
        path.rename(folder / ("new-" + path.name))
    sync()  # a small segment of 15 pictures (and views) > a quarter of the big one: merged at once
    with IndexFolder.open(index_dir) as reader:
        (merged,) = reader.catalog.segments()
        assert merged[0] != first[0] and merged[2]
        assert not len(reader.catalog.tombstone_ids())  # the deleted ones left out of the files
        for path, vector in moved.items():  # renamed: the same vector, not encoded again
            np.testing.assert_array_equal(
                reader.stored_vector(str(path.with_name("renamed-" + path.name))), vector
            )
    check_exact(index_dir, folder, tiny_encoder)  # every file once, each finds itself, nothing else


def test_index_store_options_are_recorded_and_shown(tmp_path, tiny_model) -> None:
    photos = tmp_path / "photos"
    from test_crash import write_corpus

    write_corpus(photos, 6, seed=3)
    index = ["index", str(photos), "--index", str(tmp_path / "idx"), "--quiet"]
    result = runner.invoke(app, [*index, "--model", tiny_model, "--store", "flat", "--memory-budget", "512M"])
    assert result.exit_code == 0, result.stderr
    info = json.loads(runner.invoke(app, ["info", "--index", str(tmp_path / "idx"), "--json"]).stdout)
    assert (info["store"], info["store_choice"], info["memory_budget"]) == ("flat", "flat", 512 * 1024**2)
    assert info["recall_at_10"] == 1.0 and info["bytes_per_vector"]["search"] > 4 * 32
    with IndexFolder.open_for_write(tmp_path / "idx") as folder:  # back to auto (sq8): vectors rewritten
        folder.set_store_settings("auto")
        assert "flat -> sq8" in (folder.optimize() or "")
    info = json.loads(runner.invoke(app, ["info", "--index", str(tmp_path / "idx"), "--json"]).stdout)
    assert (info["store"], info["store_choice"], info["memory_budget"]) == ("sq8", "auto", 512 * 1024**2)
    assert info["bytes_per_vector"]["search"] < 2 * 32 + 10  # fp16 codes (fewer than 64 vectors)


def test_ctrl_c_while_the_vectors_are_rewritten_keeps_the_index_as_it_was(tmp_path, monkeypatch) -> None:
    from clipsearch.api import Index
    from clipsearch.ingest.importer import ImportItem
    from clipsearch.ingest.sync import SyncInterrupted

    new_folder(tmp_path / "idx", "ivfpq").close()
    x = clustered(1200, seed=9)
    items = [
        ImportItem(FileRecord(f"/photos/{i}.jpg", 1, 1), f"{i:032x}", v, 640, 480) for i, v in enumerate(x)
    ]

    def interrupted(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt

    real = maintain.rebuild
    monkeypatch.setattr(maintain, "rebuild", interrupted)
    with Index.open_for_write(tmp_path / "idx") as idx:  # the model it records is never needed
        with pytest.raises(SyncInterrupted) as info:
            idx.import_vectors([items], weights_sha256="0" * 64, roots=["/photos"])
        assert info.value.report.interrupted and info.value.report.added == 1200
    with IndexFolder.open(tmp_path / "idx") as reader:  # imported, searchable, the kind unchanged
        assert reader.store.kind == "sq8" and len(reader.store) == 1200
        assert reader.store.search(x[:1], 1)[1][0, 0] == 1
    monkeypatch.setattr(maintain, "rebuild", real)
    with Index.open_for_write(tmp_path / "idx") as idx:  # the next run does it
        assert "sq8 -> ivfpq" in (idx.optimize() or "")
        assert idx.store.kind == "ivfpq" and len(idx.store) == 1200
    assert_tidy(tmp_path / "idx")


def test_a_segment_whose_vectors_are_all_deleted_is_dropped(tmp_path) -> None:
    folder = new_folder(tmp_path / "idx", "sq8")
    x = clustered(1100, seed=10)
    add(folder, x[:1000], 0)
    folder.checkpoint()
    add(folder, x[1000:], 1000)
    folder.checkpoint()
    assert len(folder.catalog.segments()) == 2
    delete(folder, list(range(1000, 1100)))
    folder.checkpoint()  # nothing rewritten: the big segment is as it was
    (segment,) = folder.catalog.segments()
    assert segment[1:] == (1000, True) and not len(folder.catalog.tombstone_ids())
    assert len(folder.store) == 1000
    assert_tidy(tmp_path / "idx")
    folder.close()


def test_an_approximate_store_searched_exactly_for_a_measurement(built) -> None:
    """``eval --compare store=exact`` on an approximate index: every stored vector compared, then the
    approximate search back as it was. The IVF search is made coarse (one cell, no re-ranking depth)
    so that it misses some of the exact answers: the exact side must not."""
    from dataclasses import replace

    kind, folder, _ = built
    store = folder.store
    ids = np.sort(store.ids())
    exact = brute_force(store.reconstruct(ids), ids, clustered(30, seed=5), 10)
    queries = clustered(30, seed=5)
    saved = store.params
    if kind == "ivfpq":
        store.params = replace(saved, nprobe=1, rerank=10)
    try:
        coarse = store.search(queries, 10)[1]
        with segmented.searching_exactly(store):
            assert not getattr(store, "approximate", False)
            np.testing.assert_array_equal(store.search(queries, 10)[1], exact)
        assert getattr(store, "approximate", False) == (kind == "ivfpq")
        np.testing.assert_array_equal(store.search(queries, 10)[1], coarse)
        assert np.array_equal(coarse, exact) == (kind != "ivfpq")
    finally:
        store.params = saved


def test_a_filters_ids_are_kept_until_the_catalog_changes(tmp_path) -> None:
    """A reader asked again with the same filter answers from memory (millions of rows otherwise),
    until a commit, of another connection or its own, changes the catalog."""
    writer = new_folder(tmp_path / "idx", "sq8")
    add(writer, clustered(40, seed=8), 0)
    reader = IndexFolder.open(tmp_path / "idx")
    where = parse_filters(folder="/photos").for_catalog()
    first = reader.catalog.vector_ids_matching(where)
    assert len(first) == 40 and reader.catalog.vector_ids_matching(where) is first  # kept
    assert not first.flags.writeable
    other = parse_filters(types="png").for_catalog()
    assert len(reader.catalog.vector_ids_matching(other)) == 0
    delete(writer, [3])  # another connection commits
    after = reader.catalog.vector_ids_matching(where)
    assert len(after) == 39 and after is not first
    with writer.catalog.transaction():  # the writer's own commit
        writer.catalog.delete_files(["/photos/4.jpg"])
    assert len(writer.catalog.vector_ids_matching(where)) == 38  # kept by the writer now
    with writer.catalog.transaction():
        writer.catalog.delete_files(["/photos/5.jpg"])
    assert (
        len(writer.catalog.vector_ids_matching(where)) == 37 == len(reader.catalog.vector_ids_matching(where))
    )
    reader.close()
    writer.close()


def test_tuning_skips_searches_that_cannot_win_and_chooses_as_a_full_sweep() -> None:
    """The tuning's choice is the cheapest (nprobe, rerank) reaching the target, as a sweep of every
    setting finds it; settings that would cost more than the best found, or that re-rank fewer
    candidates than one that missed the target with as many cells, are never searched; and when no
    setting reaches the target, it stops where more cells find nothing more."""
    from clipsearch.store import ivf

    shape = ivf.IvfParams(nlist=2048, m=64)
    count, dim = 10_000_000, 512
    truth = np.tile(np.arange(10, dtype=np.int64), (100, 1))

    def recall_of(p: ivf.IvfParams) -> float:  # deeper re-ranking and more cells: more found, up to a cap
        return round(min(0.97, 0.5 + 0.06 * np.log2(p.nprobe) + 0.05 * np.log2(p.rerank / 20)), 2)

    searched: list[tuple[int, int]] = []

    def search(queries, k, params, allowed):  # type: ignore[no-untyped-def]
        searched.append((params.nprobe, params.rerank))
        hits = round(100 * recall_of(params))  # that many queries find their 10, the others none
        return np.where(np.arange(100)[:, None] < hits, truth, -1)

    def tune(target: float) -> tuple[ivf.IvfParams, float]:
        searched.clear()
        return ivf.tune(shape, count, dim, search, np.zeros((100, dim), np.float32), truth, target=target)

    def cost(p: ivf.IvfParams) -> float:
        return p.nprobe * count / shape.nlist * shape.m + p.candidates(10) * dim * 4

    grid = [ivf.IvfParams(shape.nlist, shape.m, 2**e, r) for r in ivf.RERANK_CHOICES for e in range(12)]
    best = min((p for p in grid if recall_of(p) >= 0.9), key=cost)
    chosen, recall = tune(0.9)
    assert (chosen.nprobe, chosen.rerank) == (best.nprobe, best.rerank) and recall >= 0.9
    assert len(searched) < 20 and max(n for n, _ in searched) < 64  # no search of many cells
    unreachable, recall = tune(0.99)  # the cap is 0.97
    assert recall == 0.97 and unreachable.rerank == 1280 and recall_of(unreachable) == 0.97
    assert len(searched) <= 8 and max(n for n, _ in searched) <= 64  # not every cell, not every depth


# -- fine bits: re-ranking as the float vectors would ----------------------------------------------


def _recall_vs_floats(got: np.ndarray, x: np.ndarray, ids: np.ndarray, queries: np.ndarray) -> float:
    return recall(got, ids[np.argsort(-(queries @ x.T), axis=1)[:, :10]])


def test_fine_bits_rank_as_the_floats_do_and_survive_merges_widening_and_rebuilds(
    tmp_path, monkeypatch
) -> None:
    x = clustered(7000, seed=1)  # crowded: the 8-bit codes alone lose some of each top 10
    queries = clustered(100, seed=2)
    folder = new_folder(tmp_path / "idx", "sq8")
    ids = np.array(add(folder, x[:5000], 0))
    folder.checkpoint()
    (segment,) = folder.store.segments
    assert segment.codes.refined
    _, positions = segment.codes.index.search(queries, 10)  # the 8-bit codes alone
    coarse = _recall_vs_floats(np.asarray(segment.ids)[positions], x[:5000], ids, queries)
    fine = _recall_vs_floats(folder.store.search(queries, 10)[1], x[:5000], ids, queries)
    assert fine >= 0.97 and fine >= coarse + 0.02, (fine, coarse)

    # vectors outside the learnt ranges: the next segment widens them, and a merge re-encodes the
    # first one's rows from their 10-bit values (not from the 8-bit ones)
    far = l2_normalize(x[5000:] * np.where(np.arange(DIM) < 8, 3.0, 1.0).astype(np.float32))
    ids = np.concatenate([ids, add(folder, far, 5000)])
    folder.checkpoint()
    store = folder.store
    assert len(store.segments) == 1 and store.segments[0].codes.refined
    everything = np.concatenate([x[:5000], far])
    codec = store.segments[0].codes.codec
    low, high = codec._bounds()
    error = np.abs(store.reconstruct(ids) - everything) / ((high - low) / 255)
    # at most an eighth of a step off, plus the eighth of the old step the first rows' 10-bit values
    # were off (from their 8-bit codes, up to five eighths)
    assert error[5000:].max() <= 0.125 + 1e-3 and error[:5000].max() <= 0.25 + 1e-3, error.max()
    assert _recall_vs_floats(store.search(queries, 10)[1], everything, ids, queries) >= 0.97

    folder.set_store_settings("ivfpq")  # a rebuild keeps them too
    folder.optimize()
    store = folder.store
    assert store.kind == "ivfpq" and store.segments[0].codes.refined
    # (0.956 here with the 8-bit codes alone)
    assert _recall_vs_floats(store.search(queries, 10)[1], everything, ids, queries) >= 0.97
    # more candidates than get fine bits: the best by their 8-bit codes are ordered by them
    monkeypatch.setattr(segmented, "refine_depth", lambda k: k + 2)
    assert store.params is not None and store.params.candidates(10) > 12
    assert _recall_vs_floats(store.search(queries, 10)[1], everything, ids, queries) >= 0.97
    monkeypatch.undo()
    assert all((tmp_path / "idx" / f"{s.name}.fine.npy").exists() for s in store.segments)
    folder.close()
    assert_tidy(tmp_path / "idx")


@pytest.mark.parametrize("damaged", [".ids.npy", ".codes.faiss", ".fine.npy", ".ivf.faiss", "ids of another"])
def test_a_damaged_segment_file_is_a_clear_error_naming_the_segment(tmp_path, damaged) -> None:
    folder = new_folder(tmp_path / "idx", "ivfpq")
    add(folder, clustered(1500, seed=5), 0)
    folder.optimize()
    (name,) = [s.name for s in folder.store.segments]
    folder.close()
    if damaged == "ids of another":  # a whole file, not this segment's
        np.save(tmp_path / "idx" / f"{name}.ids.npy", np.arange(3))
        reason = "3 ids \\(int64\\) for 1500 rows of codes"
    else:  # truncated (a copy cut short, a disk error)
        path = tmp_path / "idx" / f"{name}{damaged}"
        path.write_bytes(path.read_bytes()[:100])
        reason = ""
    message = f"vector files are damaged: segment {name} in .* cannot be read: {reason}"
    with IndexFolder.open(tmp_path / "idx") as reader, pytest.raises(IndexCorruptError, match=message):
        _ = reader.store
