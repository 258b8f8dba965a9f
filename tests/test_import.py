"""Vectors computed elsewhere, imported through the sync's commit path (``Index.import_vectors``)."""

from __future__ import annotations

import os
from pathlib import Path

import numpy as np
import pytest

from clipsearch.api import Index
from clipsearch.encoders.encoder import l2_normalize
from clipsearch.encoders.facts import draft_side
from clipsearch.encoders.images import open_image
from clipsearch.errors import BadValueError, ModelMismatchError, VectorDimensionError
from clipsearch.ingest.decode import file_digest
from clipsearch.ingest.importer import ImportItem, SkippedItem
from clipsearch.ingest.scan import FileRecord
from clipsearch.ingest.sync import SyncOptions
from clipsearch.store.catalog import content_of

NO_EXPORT = SyncOptions(export_text=False)


def item_of(path: Path, encoder) -> ImportItem:
    """What another engine would hand over for ``path``: stat, hash, the model's vector, size."""
    st = os.stat(path)
    image = open_image(path, min_side=draft_side(encoder))
    vector = encoder.encode_images([image])[0]
    with open_image(path) as full:
        width, height = full.size
    return ImportItem(FileRecord(str(path), st.st_size, st.st_mtime_ns), file_digest(path.read_bytes()),
                      vector, width, height)  # fmt: skip


def random_items(folder: Path, n: int, dim: int, seed: int) -> list[ImportItem]:
    vectors = l2_normalize(np.random.default_rng(seed).standard_normal((n, dim)).astype(np.float32))
    return [
        ImportItem(
            FileRecord(f"{folder}/{seed}-{i}.jpg", 100 + i, 1_000_000 + i),
            f"{seed:08x}{i:024x}",
            vectors[i],
            640,
            480,
        )
        for i in range(n)
    ]


def test_imported_files_search_like_synced_ones_and_a_sync_then_finds_them_unchanged(
    index_dir, photos, tiny_encoder
) -> None:
    folder = photos["coffee"].parent
    items = [item_of(p, tiny_encoder) for p in sorted(photos.values())]
    with Index.open_for_write(index_dir, tiny_encoder, coverage="none") as idx:
        report = idx.import_vectors(
            [items[:4], items[4:]], weights_sha256=tiny_encoder.facts.weights_sha256, roots=[folder]
        )
        assert (report.added, report.reused, report.unchanged) == (len(items), 0, 0)
    with Index.open(index_dir, encoder=tiny_encoder) as idx:
        assert (idx.info()["count"], idx.info()["roots"]) == (len(items), [str(folder)])
        for path in photos.values():
            assert idx.search_image(str(path), k=1)[0].path == str(path)
    with Index.open_for_write(index_dir, tiny_encoder) as idx:  # the sync's own planning agrees
        report = idx.sync(options=NO_EXPORT)
    assert (report.added, report.updated, report.unchanged, report.removed) == (0, 0, len(items), 0)


def test_copies_reuse_a_content_and_a_changed_file_gets_its_new_one(
    index_dir, tiny_encoder, tmp_path
) -> None:
    dim, sha = tiny_encoder.facts.dim, tiny_encoder.facts.weights_sha256
    first = random_items(tmp_path, 3, dim, seed=1)
    copy = first[0]._replace(record=FileRecord(f"{tmp_path}/copy.jpg", 5, 6))
    with Index.open_for_write(index_dir, tiny_encoder, coverage="none") as idx:
        idx.import_vectors([first, [copy]], weights_sha256=sha, roots=[tmp_path])
        changed = random_items(tmp_path, 1, dim, seed=2)[0]._replace(record=first[1].record)
        report = idx.import_vectors([[changed, first[2]]], weights_sha256=sha)
        assert (report.added, report.updated, report.unchanged) == (0, 1, 1)
        ids = idx.catalog.content_ids_of([i.digest for i in (*first, changed)])
        assert set(ids) == {first[0].digest, first[2].digest, changed.digest}  # first[1]'s content went
        assert sorted(content_of(idx.store.ids()).tolist()) == sorted(ids.values())
        assert idx.catalog.file(copy.record.path).content_id == ids[first[0].digest]
        np.testing.assert_allclose(idx.store.reconstruct(np.array([ids[changed.digest]]))[0], changed.vector,
                                   atol=1e-3)  # fmt: skip


def test_wrong_model_dimension_length_or_folder_is_refused_and_keeps_nothing(
    index_dir, tiny_encoder, tmp_path
):
    dim, sha = tiny_encoder.facts.dim, tiny_encoder.facts.weights_sha256
    good = random_items(tmp_path, 4, dim, seed=3)
    with Index.open_for_write(index_dir, tiny_encoder, coverage="none") as idx:
        idx.import_vectors([good[:2]], weights_sha256=sha, roots=[tmp_path])
        with pytest.raises(ModelMismatchError, match="weights sha256 0000000000"):
            idx.import_vectors([good[2:]], weights_sha256="0" * 64)
        short = good[3]._replace(vector=good[3].vector[:-1])
        with pytest.raises(VectorDimensionError) as info:
            idx.import_vectors([[good[2], short]], weights_sha256=sha)
        assert (info.value.expected, info.value.got) == (dim, dim - 1)
        with pytest.raises(BadValueError, match="not a unit"):
            idx.import_vectors([[good[2], good[3]._replace(vector=good[3].vector * 2)]], weights_sha256=sha)
        with pytest.raises(BadValueError, match="not a unit"):
            idx.import_vectors(
                [[good[3]._replace(vector=np.full(dim, np.nan, np.float32))]], weights_sha256=sha
            )
        elsewhere = good[3]._replace(record=FileRecord("/elsewhere/x.jpg", 1, 1))
        with pytest.raises(BadValueError, match="not inside a folder of the index"):
            idx.import_vectors([[good[2], elsewhere]], weights_sha256=sha)
        with pytest.raises(BadValueError, match="coverage"):
            idx.import_vectors([[good[2]._replace(views=(("left", good[2].vector),))]], weights_sha256=sha)
        assert idx.info()["count"] == 2 and len(idx.store) == 2


def test_skipped_files_and_files_of_known_content_need_no_vector(index_dir, tiny_encoder, tmp_path) -> None:
    """An engine that hashed a file and found its content indexed sends the hash alone; a file it
    could not use is recorded with its reason, as a sync records it (and retried when it changes)."""
    dim, sha = tiny_encoder.facts.dim, tiny_encoder.facts.weights_sha256
    first = random_items(tmp_path, 2, dim, seed=4)
    renamed = first[0]._replace(record=FileRecord(f"{tmp_path}/renamed.jpg", 7, 8), vector=None)
    broken = SkippedItem(FileRecord(f"{tmp_path}/broken.jpg", 9, 10), "corrupt", "truncated file")
    with Index.open_for_write(index_dir, tiny_encoder, coverage="none") as idx:
        idx.import_vectors([first], weights_sha256=sha, roots=[tmp_path])
        report = idx.import_vectors([[renamed, broken]], weights_sha256=sha)
        assert (report.added, report.reused, report.skipped, report.skip_reasons) == (0, 1, 1, {"corrupt": 1})
        assert idx.catalog.file(renamed.record.path).content_id == idx.catalog.content_id(first[0].digest)
        assert idx.skipped() == [(broken.record.path, "corrupt: truncated file")]
        # within a batch, a later file may lean on the content an earlier one brings
        new = random_items(tmp_path, 1, dim, seed=5)[0]
        twin = new._replace(record=FileRecord(f"{tmp_path}/twin.jpg", 11, 12), vector=None)
        report = idx.import_vectors([[new, twin]], weights_sha256=sha)
        assert (report.added, report.reused) == (1, 1)
        unknown = random_items(tmp_path, 1, dim, seed=6)[0]._replace(vector=None)
        with pytest.raises(BadValueError, match="no file brings content"):
            idx.import_vectors([[unknown]], weights_sha256=sha)
        assert idx.info()["count"] == 5 and len(idx.store) == 3


def test_relative_paths_and_sibling_folders_are_refused(index_dir, tiny_encoder, tmp_path) -> None:
    dim, sha = tiny_encoder.facts.dim, tiny_encoder.facts.weights_sha256
    root = tmp_path / "photos"
    good = random_items(root, 2, dim, seed=4)
    with Index.open_for_write(index_dir, tiny_encoder, coverage="none") as idx:
        idx.import_vectors([good[:1]], weights_sha256=sha, roots=[root])
        relative = good[1]._replace(record=FileRecord("photos/x.jpg", 1, 1))
        with pytest.raises(BadValueError, match="give absolute paths"):
            idx.import_vectors([[relative]], weights_sha256=sha)
        sibling = good[1]._replace(record=FileRecord(f"{root}-old/x.jpg", 1, 1))  # a prefix, not inside
        with pytest.raises(BadValueError, match="not inside a folder of the index"):
            idx.import_vectors([[sibling]], weights_sha256=sha)
        assert idx.info()["count"] == 1


def test_an_import_writes_each_batch_once_and_merges_at_the_end(tmp_path) -> None:
    """Each batch becomes a segment and none is merged while the import runs (a merge per tier would
    copy every vector again and again); the optimize that ends Index.import_vectors merges them once."""
    from clipsearch.ingest.importer import import_vectors
    from clipsearch.store.catalog import IndexMeta
    from clipsearch.store.folder import IndexFolder

    dim = 32
    folder = IndexFolder.open_for_write(
        tmp_path / "idx", lambda: IndexMeta("synthetic", "", "0" * 64, dim, "sq8")
    )
    root = tmp_path / "photos"
    batches = [random_items(root, 1100, dim, seed=10 + n) for n in range(9)]  # tier merges at 8 of a size
    report = import_vectors(folder, batches, roots=[str(root)])
    assert report.added == 9900 and len(folder.catalog.segments()) == 9 and len(folder.store) == 9900
    assert folder.optimize() is None  # 9,900 vectors: sq8 still, the segments merged into one
    assert len(folder.catalog.segments()) == 1 and len(folder.store) == 9900
    stored = folder.store.reconstruct(
        np.array([folder.catalog.content_ids_of([batches[8][5].digest])[batches[8][5].digest]])
    )
    assert float(stored[0] @ batches[8][5].vector) > 0.999
    folder.close()
