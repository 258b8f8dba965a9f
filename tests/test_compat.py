"""Indexes written by earlier versions open, search, sync, and are upgraded in place by the first writer.

An index written before the rooms were built (clipsearch 0.1.0 at 1f3fcc9) opens, searches and syncs.

``tests/data/index-0.1.0`` was made by that commit's code with
``clipsearch index PHOTOS --model shapes`` over ``write_dataset(PHOTOS, 12, seed=11)`` in
``/tmp/fixture/photos`` (the pictures and the shapes model weights of today's tree: the fixture was
remade when the shapes model was retrained, since an index cannot be synced with other weights).
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest

from clipsearch.api import Index
from clipsearch.encoders.facts import draft_side
from clipsearch.encoders.images import open_image
from clipsearch.encoders.loading import load_encoder
from clipsearch.ingest.sync import SyncOptions
from clipsearch.shapes.world import write_dataset
from clipsearch.store.folder import IndexFolder
from conftest import assert_tidy

FIXTURE = Path(__file__).parent / "data" / "index-0.1.0"
OLD_ROOT = "/tmp/fixture/photos"


def test_an_index_from_before_the_move_opens_searches_and_syncs(tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(FIXTURE, index_dir)
    photos = tmp_path / "photos"
    write_dataset(photos, 12, seed=11)  # the same pictures, elsewhere
    encoder = load_encoder("shapes")
    with Index.open(index_dir, encoder=encoder) as idx:
        info = idx.info()
        assert (info["model"], info["count"], info["roots"]) == ("shapes", 12, [OLD_ROOT])
        # every stored vector is the model's own vector of that picture
        for path in sorted(photos.iterdir()):
            state = idx.catalog.file(f"{OLD_ROOT}/{path.name}")
            assert state is not None and state.content_id is not None, path.name
            stored = idx.store.reconstruct(np.array([state.content_id], dtype=np.int64))[0]
            fresh = encoder.encode_images([open_image(path, min_side=draft_side(encoder))])[0]
            assert float(stored @ fresh) > 0.99, path.name  # indexed in bf16, encoded here in fp32
        ids = idx.store.ids()
        before = {int(i): v for i, v in zip(ids, idx.store.reconstruct(ids), strict=True)}
        hits = idx.search("a green star", k=3)
        assert Path(hits[0].path).name == "0000_green-star.jpg"  # the one picture of a green star alone
        # its roots had no settings then: a reader (which never writes) shows the defaults
        assert info["root_settings"] == [
            {"path": OLD_ROOT, "include_hidden": False, "exclude": [], "max_pixels": None}
        ]
    # readers never write
    assert [p.name for p in index_dir.glob("vectors-*")] == ["vectors-0000000002.faiss"]
    extra = tmp_path / "more"
    write_dataset(extra, 3, seed=12)
    with Index.open_for_write(index_dir, encoder) as idx:  # upgraded in place by a writer
        # the one FAISS file became one segment, its codes copied as they were
        assert idx.catalog.get("schema_version") == "2" and not list(index_dir.glob("vectors-*"))
        (segment,) = idx.catalog.segments()
        assert segment[1:] == (12, True)
        upgraded = idx.store.reconstruct(np.array(sorted(before), dtype=np.int64))
        np.testing.assert_array_equal(upgraded, np.stack([before[i] for i in sorted(before)]))
        # (no text export: it is not what this test is about, and it costs 2 s)
        report = idx.sync([str(extra)], options=SyncOptions(exclude=("*.png",), export_text=False))
        assert report.added == 1  # the one JPEG of the three
        columns = {row[1] for row in idx.catalog.conn.execute("PRAGMA table_info(roots)")}
        assert {"include_hidden", "exclude", "max_pixels"} <= columns
        count = idx.info()["count"]
        assert count == 13
    with Index.open(index_dir) as idx:
        assert len(idx.search_text("a circle", k=20)) == count
        assert idx.info()["root_settings"] == [
            {"path": OLD_ROOT, "include_hidden": False, "exclude": [], "max_pixels": None},
            {"path": str(extra), "include_hidden": False, "exclude": ["*.png"], "max_pixels": None},
        ]
        # version 2: older versions refuse it with a message naming the version, rather than reading
        # no vectors from the segment files they do not know
        assert idx.catalog.get("schema_version") == "2"
        assert idx.info()["store"] == "sq8" and idx.info()["segments"] >= 1


MAIN_FIXTURE = Path(__file__).parent / "data" / "index-0.2-sq8"
MAIN_ROOT = "/tmp/fixture-main/photos"  # where its files were


def _main_photos(folder: Path) -> None:
    """The files of ``MAIN_FIXTURE`` as they were when its last sync stopped."""
    write_dataset(folder, 80, seed=21)
    for path in sorted(folder.iterdir())[:5]:
        path.unlink()
    write_dataset(folder.parent / "more", 12, seed=22)
    for path in sorted((folder.parent / "more").iterdir()):
        shutil.move(str(path), folder / ("more-" + path.name))


def test_an_index_of_the_one_file_format_with_a_pending_log_upgrades_in_place(tmp_path: Path) -> None:
    """``tests/data/index-0.2-sq8`` was made by clipsearch main at 27cfae9 (the last version that kept
    the vectors in one FAISS file): ``clipsearch index`` of ``write_dataset(PHOTOS, 80, seed=21)`` with
    the ``shapes`` model (sq8, ranges learnt), then 5 files deleted and 12 added
    (``write_dataset(MORE, 12, seed=22)``, moved in as ``more-*``) and synced again, killed before its
    checkpoint: the catalog holds 12 pending vectors and 5 tombstones after the FAISS file."""
    index_dir = tmp_path / "index"
    shutil.copytree(MAIN_FIXTURE, index_dir)
    with Index.open(index_dir) as idx:  # a reader applies the log, writes nothing
        assert idx.catalog.get("schema_version") == "1" and idx.info()["segments"] == 1
        ids = np.sort(idx.store.ids())
        before = idx.store.reconstruct(ids)
        assert len(ids) == idx.info()["vectors"] == 87
        query = before[40]
        hits = [(h.path, round(h.score, 5)) for h in idx.search_vectors(query, k=20)[0]]
    assert sorted(p.name for p in index_dir.iterdir()) == ["catalog.sqlite", "vectors-0000000003.faiss"]
    with IndexFolder.open_for_write(index_dir) as folder:  # the first writer upgrades it in place
        assert folder.catalog.get("schema_version") == "2"
        assert [(n, b) for _, n, b in folder.catalog.segments()] == [(87, True)]
        pending = folder.catalog.conn.execute("SELECT count(*) FROM pending").fetchone()[0]
        tombstones = folder.catalog.conn.execute("SELECT count(*) FROM tombstones").fetchone()[0]
        assert (pending, tombstones) == (0, 0)  # the log is in the segment now
        np.testing.assert_array_equal(np.sort(folder.store.ids()), ids)
        # the 8-bit codes copied as they were; the 12 pending vectors encoded with the same ranges
        np.testing.assert_allclose(folder.store.reconstruct(ids), before, atol=2e-3)
    assert_tidy(index_dir)
    with Index.open(index_dir) as idx:
        assert [(h.path, round(h.score, 5)) for h in idx.search_vectors(query, k=20)[0]][:10] == hits[:10]
    photos = tmp_path / "photos"
    _main_photos(photos)
    with Index.open_for_write(index_dir) as idx:  # and syncs (the same pictures, elsewhere)
        report = idx.sync([str(photos)], options=SyncOptions(export_text=False, processes=False))
        assert (report.added, report.reused) == (0, 87)


SEGMENTS_FIXTURE = Path(__file__).parent / "data" / "index-0.3-segments"


def _segments_fixture_vectors() -> np.ndarray:
    rng = np.random.default_rng(31)
    centres = rng.standard_normal((8, 64)).astype(np.float32)
    x = centres[rng.integers(0, 8, 460)] + 0.3 * rng.standard_normal((460, 64)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def test_an_index_of_segments_without_fine_bits_searches_syncs_and_keeps_its_precision(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """``tests/data/index-0.3-segments`` was made by clipsearch main at 6a017db (segments, before fine
    bits): 460 of these 64-d vectors committed as ``/photos/<n>.jpg`` through ``commit_batch`` into an
    ``IndexFolder`` (meta: model "synthetic", sq8), 400 then checkpointed, 60 then checkpointed (a big
    and a small segment), then ``/photos/3.jpg`` and ``/photos/450.jpg`` deleted (two tombstones)."""
    from clipsearch.ingest.commit import FileRow, NewContent, commit_batch
    from clipsearch.ingest.scan import FileRecord
    from clipsearch.store import maintain

    index_dir = tmp_path / "index"
    shutil.copytree(SEGMENTS_FIXTURE, index_dir)
    x = _segments_fixture_vectors()
    with IndexFolder.open(index_dir) as folder:
        store = folder.store
        assert len(store) == 458 and not any(s.codes.refined for s in store.segments)
        ids = np.sort(store.ids())
        stored = store.reconstruct(ids)
        codec = store.segments[0].codes.codec
        assert np.array_equal(stored, codec.decode(codec.encode(stored)))  # the 8-bit values, as they were
        _, got = store.search(x[[0, 10, 455]], 1)
        assert got[:, 0].tolist() == ids[[0, 9, 453]].tolist()  # each finds itself (3 was deleted)

    def commit(folder: IndexFolder, first: int, vectors: np.ndarray) -> None:
        numbers = range(first, first + len(vectors))
        digests = [f"{i:032x}" for i in numbers]
        rows = [
            FileRow(FileRecord(f"/photos/{i}.jpg", 1, 1), d, None)
            for i, d in zip(numbers, digests, strict=True)
        ]
        commit_batch(folder, [NewContent(d, 640, 480, None) for d in digests], vectors, rows)

    with IndexFolder.open_for_write(index_dir) as folder:
        # vectors inside the old ranges, folded into the big segment: its 8-bit codes are copied as
        # they are, so the new segment has no fine bits (the old rows have none to give)
        near = x[:20] + 0.01 * np.random.default_rng(1).standard_normal((20, 64)).astype(np.float32)
        commit(folder, 460, near / np.linalg.norm(near, axis=1, keepdims=True))
        monkeypatch.setattr(maintain, "FOLD_SHARE", 0.01)
        folder.checkpoint()
        monkeypatch.undo()
        (segment,) = folder.store.segments
        assert not segment.codes.refined and segment.codes.codec == codec and len(folder.store) == 478
        assert not list(index_dir.glob("*.fine.npy"))
        more = -x[:150]  # elsewhere in the space
        commit(folder, 480, more)
        folder.checkpoint()
        # the 150 folded into the big segment (more than a quarter of it); they widened the ranges, so
        # every row was encoded again, the old ones from their 8-bit values (all they have)
        (segment,) = folder.store.segments
        assert segment.codes.refined and segment.codes.codec != codec and len(folder.store) == 628
        np.testing.assert_allclose(folder.store.reconstruct(ids), stored, atol=0.02)  # the old ones kept
        _, got = folder.store.search(more[:3], 1)
        assert len(set(got[:, 0].tolist())) == 3 and (got[:, 0] > ids.max()).all()
    assert_tidy(index_dir)
