"""Tier 2: the library on real image files, a real SQLite catalog and a real FAISS index."""

from __future__ import annotations

import os
import shutil
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.api import Index
from clipsearch.cli import phrase
from clipsearch.encoders.cache import ModelCache
from clipsearch.encoders.facts import DEFAULT_DECODE_SCALE, ModelPreview, draft_side
from clipsearch.encoders.images import open_image
from clipsearch.encoders.loading import load_encoder
from clipsearch.errors import IndexBusyError, IndexNotFoundError, ModelMismatchError
from clipsearch.store.catalog import content_of
from conftest import assert_tidy, picture_vectors, vector_files
from hfcache import add_tiny_model


def sync(index_dir: Path, encoder, *roots: Path):
    from clipsearch.ingest.sync import SyncOptions

    with Index.open_for_write(index_dir, encoder) as idx:  # the text export is test_onnx_text's
        return idx.sync([str(r) for r in roots] if roots else None, options=SyncOptions(export_text=False))


def all_paths(index_dir: Path) -> set[str]:
    with Index.open(index_dir) as idx:
        rows = idx.catalog.conn.execute("SELECT path FROM files WHERE content_id IS NOT NULL")
        return {os.fsdecode(row[0]) for row in rows}


def test_sync_stores_the_right_vector_for_each_path(index_dir, photos, tiny_encoder) -> None:
    report = sync(index_dir, tiny_encoder, photos["coffee"].parent)
    assert (report.added, report.skipped, report.removed) == (len(photos), 0, 0)
    with Index.open(index_dir) as idx:
        assert idx.info()["count"] == len(photos)
        for path in photos.values():
            stored = idx.stored_vector(str(path))
            side = draft_side(tiny_encoder, idx.meta.decode_scale)  # as the index decodes
            fresh = tiny_encoder.encode_images([open_image(path, min_side=side)])[0]
            np.testing.assert_allclose(stored, fresh, atol=1e-3)  # the store keeps fp16 (sq8: 8 bits)


def test_search_matches_brute_force_and_image_finds_itself(index_dir, photos, tiny_encoder) -> None:
    sync(index_dir, tiny_encoder, photos["coffee"].parent)
    with Index.open(index_dir, encoder=tiny_encoder) as idx:
        paths = sorted(str(p) for p in photos.values())
        query = tiny_encoder.encode_texts(["a cup of coffee"])[0]
        best = np.array([max(picture_vectors(idx, p) @ query) for p in paths])  # a picture's best vector
        expected = [paths[i] for i in np.argsort(-best, kind="stable")[:4]]
        hits = idx.search_text("a cup of coffee", k=4)
        assert [h.path for h in hits] == expected
        np.testing.assert_allclose([h.score for h in hits], np.sort(best)[::-1][:4], atol=1e-5)
        for path in paths:
            first = idx.search_image(path, k=3)[0]
            assert first.path == path and first.score == pytest.approx(1.0, abs=1e-3)  # fp16 storage
        # an image that is not indexed: encoded on the fly, a PIL image works too
        outside = idx.search_image(Image.open(photos["rocket"]).rotate(3), k=1)
        assert outside[0].path == str(photos["rocket"])


def test_incremental_sync(index_dir, photos, tiny_encoder, tmp_path) -> None:
    folder = photos["coffee"].parent
    sync(index_dir, tiny_encoder, folder)
    again = sync(index_dir, tiny_encoder)  # no roots: re-sync the recorded ones
    assert again.unchanged == len(photos)
    assert (again.added, again.updated, again.reused, again.removed) == (0, 0, 0, 0)

    with Index.open(index_dir) as idx:
        vectors_before = idx.info()["vectors"]
        coffee_vec = idx.stored_vector(str(photos["coffee"]))
    moved = folder / "sub" / "renamed coffee.jpg"
    moved.parent.mkdir()
    os.rename(photos["coffee"], moved)
    shutil.copy(photos["rocket"], folder / "rocket copy.jpg")
    report = sync(index_dir, tiny_encoder)
    assert (report.reused, report.removed, report.added, report.updated) == (2, 1, 0, 0)
    with Index.open(index_dir) as idx:
        assert idx.info()["vectors"] == vectors_before  # reused by hash, nothing re-encoded
        np.testing.assert_array_equal(idx.stored_vector(str(moved)), coffee_vec)

    Image.new("RGB", (300, 200), "purple").save(photos["astronaut"])  # changed content, same name
    os.remove(photos["camera"])
    Image.new("RGB", (120, 90), "orange").save(folder / "new.png")
    report = sync(index_dir, tiny_encoder)
    assert (report.updated, report.removed, report.added, report.reused) == (1, 1, 1, 0)
    assert str(photos["camera"]) not in all_paths(index_dir)
    with Index.open(index_dir, encoder=tiny_encoder) as idx:
        hit_paths = [h.path for h in idx.search_text("anything", k=100)]
        assert str(photos["camera"]) not in hit_paths
        assert len(hit_paths) == len(set(hit_paths)) == len(photos) + 1
        assert idx.search_image(str(photos["astronaut"]), k=1)[0].path == str(photos["astronaut"])
        # the rewritten vectors file holds exactly the live contents (and their side views)
        assert idx.info()["contents"] == len(photos)
        distinct = {idx.catalog.file(p).content_id: p for p in hit_paths}.values()
        assert idx.info()["vectors"] == len(idx.store) == sum(len(picture_vectors(idx, p)) for p in distinct)
        assert idx.catalog.conn.execute("SELECT count(*) FROM pending").fetchone()[0] == 0
    assert_tidy(index_dir)


def test_unchanged_files_are_not_opened(index_dir, photos, tiny_encoder) -> None:
    sync(index_dir, tiny_encoder, photos["coffee"].parent)
    target = photos["rocket"]
    st = target.stat()
    target.write_bytes(b"\0" * st.st_size)  # would be skipped as not-an-image if it were read
    os.utime(target, ns=(st.st_atime_ns, st.st_mtime_ns))
    report = sync(index_dir, tiny_encoder)
    assert (report.unchanged, report.skipped) == (len(photos), 0)


@pytest.mark.fresh_model_cache
def test_model_is_loaded_only_when_a_file_needs_encoding(index_dir, photos, tiny_encoder) -> None:
    with Index.open_for_write(index_dir, tiny_encoder) as idx:  # exports the text tower once
        assert idx.sync([str(photos["coffee"].parent)]).text_export == "exported"
    spec = tiny_encoder.spec
    with Index.open_for_write(index_dir, spec=spec) as idx:  # nothing changed: no model
        report = idx.sync(None)
        assert not idx.encoder_loaded
    assert (report.unchanged, report.added) == (len(photos), 0)
    photos["rocket"].unlink()  # a deletion needs no model either
    with Index.open_for_write(index_dir, spec=spec) as idx:
        assert idx.sync(None).removed == 1
        assert not idx.encoder_loaded
    extra = photos["coffee"].parent / "extra.png"
    Image.new("RGB", (40, 30), (200, 10, 10)).save(extra)
    with Index.open_for_write(index_dir, spec=spec) as idx:  # a new file: loaded on demand
        assert idx.sync(None).added == 1
        assert idx.encoder_loaded
        assert not idx.image_encoder.has_text  # syncing loads the image tower alone
        vector = idx.stored_vector(str(extra))
        text = idx.search_text("a red picture", k=1)  # a text query loads the whole model
        assert idx.encoder.has_text and text
    assert vector is not None
    side = draft_side(tiny_encoder, DEFAULT_DECODE_SCALE)
    fresh = tiny_encoder.encode_images([open_image(extra, min_side=side)])[0]
    np.testing.assert_allclose(vector, fresh, atol=1e-3)


def assert_vectors_are_the_models(idx: Index, photos: dict[str, Path], encoder) -> None:
    for path in photos.values():
        vector = idx.stored_vector(str(path))
        assert vector is not None, path
        side = draft_side(encoder, idx.meta.decode_scale)
        fresh = encoder.encode_images([open_image(path, min_side=side)])[0]
        np.testing.assert_allclose(vector, fresh, atol=2e-3)


def test_new_index_from_a_spec_encodes_as_the_loaded_model_does(tmp_path, photos, tiny_encoder) -> None:
    """A new index starts decoding while the weights load; its vectors are the model's own."""
    with Index.open_for_write(tmp_path / "new", spec=tiny_encoder.spec) as idx:
        assert idx.meta.dim == tiny_encoder.dim and idx.meta.weights_sha256 == tiny_encoder.weights_sha256
        idx.sync([str(photos["coffee"].parent)])
        assert_vectors_are_the_models(idx, photos, tiny_encoder)


def test_a_sync_keeps_the_model_preview_and_the_next_new_index_uses_it(
    tmp_path, photos, tiny_encoder
) -> None:
    spec = tiny_encoder.spec
    assert ModelCache.default().preview(spec) is None  # a fresh user cache (conftest)
    with Index.open_for_write(tmp_path / "first", spec=spec) as idx:
        idx.sync([str(photos["coffee"].parent)])
    assert ModelCache.default().preview(spec) == ModelPreview.of(tiny_encoder.facts)
    with Index.open_for_write(tmp_path / "second", spec=spec) as idx:
        assert idx.model_loading and not idx.encoder_loaded  # created from the preview, model still loading
        assert (idx.meta.dim, idx.meta.weights_sha256) == (tiny_encoder.dim, tiny_encoder.weights_sha256)
        idx.sync([str(photos["coffee"].parent)])
        assert_vectors_are_the_models(idx, photos, tiny_encoder)


@pytest.mark.parametrize("files", ["photos", "none"])
def test_a_wrong_model_preview_is_caught_before_anything_is_committed(
    tmp_path, photos, tiny_encoder, files: str
) -> None:
    """A cached preview that is not the model's (say, the weights file was replaced) costs time, never
    correctness: the files are decoded again with the model's own preprocessing, a new index made
    from the preview gets the model's own metadata, and the cache is corrected."""
    spec, transform = tiny_encoder.spec, tiny_encoder.pixel_transform
    wrong = ModelPreview("0" * 64, tiny_encoder.dim + 1, (48, 48), replace(transform, height=48, width=48))
    ModelCache.default().remember_preview(spec, wrong)
    folder = photos["coffee"].parent if files == "photos" else tmp_path / "empty"
    folder.mkdir(exist_ok=True)
    with Index.open_for_write(tmp_path / "idx", spec=spec) as idx:
        assert idx.meta.dim == tiny_encoder.dim + 1  # made from the (wrong) preview
        report = idx.sync([str(folder)])
        assert (idx.meta.dim, idx.meta.weights_sha256) == (tiny_encoder.dim, tiny_encoder.weights_sha256)
        if files == "photos":
            assert report.added == len(photos) and report.skipped == 0
            assert_vectors_are_the_models(idx, photos, tiny_encoder)
    with Index.open(tmp_path / "idx") as idx:  # the corrected metadata is on disk
        assert (idx.meta.dim, idx.meta.weights_sha256) == (tiny_encoder.dim, tiny_encoder.weights_sha256)
    assert ModelCache.default().preview(spec) == ModelPreview.of(tiny_encoder.facts)


def test_many_copies_of_one_content_across_batches(index_dir, photos, tiny_encoder, tmp_path) -> None:
    from clipsearch.ingest.sync import SyncOptions

    folder = tmp_path / "copies"
    folder.mkdir()
    for i in range(90):  # decoded ahead of the commit that records their content
        shutil.copy(photos[["coffee", "rocket", "chelsea"][i % 3]], folder / f"copy_{i:03d}.jpg")
    with Index.open_for_write(index_dir, tiny_encoder) as idx:
        report = idx.sync([str(folder)], options=SyncOptions(batch_size=2, workers=2, processes=False))
    assert (report.added, report.reused, report.skipped) == (3, 87, 0)
    with Index.open(index_dir) as idx:
        assert idx.info()["contents"] == 3  # one content (and its views) per distinct picture
        assert len(idx.store) == idx.info()["vectors"]
        assert len({tuple(idx.stored_vector(str(p))) for p in folder.iterdir()}) == 3


def test_checkpoint_gives_the_pending_vectors_space_back(index_dir, tmp_path, tiny_encoder) -> None:
    import sqlite3

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(60):
        Image.new("RGB", (48, 32), (4 * i, 255 - 4 * i, (37 * i) % 256)).save(folder / f"{i:02d}.png")
    with Index.open_for_write(index_dir, tiny_encoder) as idx:
        assert idx.sync([str(folder)]).added == 60  # ends with a checkpoint
    conn = sqlite3.connect(index_dir / "catalog.sqlite")
    (pending,) = conn.execute("SELECT count(*) FROM pending").fetchone()
    (free,) = conn.execute("PRAGMA freelist_count").fetchone()
    conn.close()
    assert (pending, free) == (0, 0)


def test_lazy_writer_still_refuses_another_model(index_dir, photos, tiny_encoder) -> None:
    from clipsearch.encoders.spec import ModelSpec

    sync(index_dir, tiny_encoder, photos["coffee"].parent)
    with pytest.raises(ModelMismatchError, match="cannot be mixed") as caught:
        Index.open_for_write(index_dir, spec=ModelSpec.parse("shapes", None))
    assert (caught.value.have, caught.value.want) == (tiny_encoder.spec.label(), "shapes")
    assert "--" not in str(caught.value)  # the library names no flag; the CLI adds --rebuild


def test_roots_are_synced_independently(index_dir, tmp_path, tiny_encoder) -> None:
    from conftest import write_photos

    a = write_photos(tmp_path / "a")
    b = write_photos(tmp_path / "b")
    sync(index_dir, tiny_encoder, tmp_path / "a")
    sync(index_dir, tiny_encoder, tmp_path / "b")
    os.remove(a["coins"])
    report = sync(index_dir, tiny_encoder, tmp_path / "a")  # only a is re-scanned; b stays
    assert report.removed == 1
    assert {str(p) for p in b.values()} <= all_paths(index_dir)
    with Index.open(index_dir) as idx:
        assert idx.catalog.roots() == [str(tmp_path / "a"), str(tmp_path / "b")]


def test_bad_files_are_skipped_with_reason(index_dir, photos, tiny_encoder) -> None:
    folder = photos["coffee"].parent
    (folder / "empty.jpg").write_bytes(b"")
    (folder / "notes.png").write_text("hello")
    report = sync(index_dir, tiny_encoder, folder)
    assert report.skipped == 2 and report.skip_reasons == {"empty": 1, "not-an-image": 1}
    with Index.open(index_dir) as idx:
        assert [(Path(p).name, r.split(":")[0]) for p, r in idx.catalog.skipped()] == [
            ("empty.jpg", "empty"),
            ("notes.png", "not-an-image"),
        ]
    assert sync(index_dir, tiny_encoder).skipped == 0  # retried only when they change


def test_reader_sees_later_commits(index_dir, photos, tiny_encoder) -> None:
    folder = photos["coffee"].parent
    sync(index_dir, tiny_encoder, folder)
    with Index.open(index_dir, encoder=tiny_encoder) as reader:
        assert len(reader.search_text("x", k=50)) == len(photos)
        Image.new("RGB", (64, 64), "yellow").save(folder / "late.png")
        sync(index_dir, tiny_encoder)
        assert len(reader.search_text("x", k=50)) == len(photos) + 1


def test_other_model_is_refused_and_rebuild_replaces(index_dir, photos, tiny_encoder, hf_cache) -> None:
    sync(index_dir, tiny_encoder, photos["coffee"].parent)
    add_tiny_model(hf_cache, repo="clipsearch-test/tiny-clip-other", seed=1)
    other = load_encoder("hf-hub:clipsearch-test/tiny-clip-other")
    with pytest.raises(ModelMismatchError, match="tiny-clip-other") as info:
        Index.open_for_write(index_dir, other)
    message = str(info.value)
    assert "built with model hf-hub:clipsearch-test/tiny-clip," in message
    assert "--rebuild" in phrase(info.value)  # the CLI says what to do
    with Index.open_for_write(index_dir, other, rebuild=True) as idx:
        report = idx.sync([str(photos["coffee"].parent)])
    assert report.added == len(photos)
    with Index.open(index_dir) as idx:
        assert idx.meta.model == "hf-hub:clipsearch-test/tiny-clip-other"


def test_one_writer_at_a_time(index_dir, tiny_encoder) -> None:
    with Index.open_for_write(index_dir, tiny_encoder), pytest.raises(IndexBusyError, match="pid") as info:
        Index.open_for_write(index_dir, tiny_encoder)
    assert info.value.pid == str(os.getpid()) and "Wait for it" in phrase(info.value)
    Index.open_for_write(index_dir, tiny_encoder).close()  # released


def test_open_missing_index(tmp_path) -> None:
    with pytest.raises(IndexNotFoundError, match="No index at") as info:
        Index.open(tmp_path / "nothing")
    assert info.value.index == tmp_path / "nothing"
    assert "clipsearch index PHOTO_FOLDER" in phrase(info.value)


def _gen(index_dir: Path) -> int:
    with Index.open(index_dir) as idx:
        return idx.catalog.get_int("gen")


def test_a_sync_with_nothing_to_do_writes_no_vectors(index_dir, photos, tiny_encoder) -> None:
    """A no-op sync used to bump the generation in its sweep, then rewrite and fsync the FAISS file."""
    sync(index_dir, tiny_encoder, photos["coffee"].parent)
    before, gen = vector_files(index_dir), _gen(index_dir)
    assert before
    os.utime(photos["rocket"])  # touched, same bytes: its row changes, not the vectors
    report = sync(index_dir, tiny_encoder)
    assert (report.unchanged, report.added, report.removed) == (len(photos), 0, 0)
    assert sync(index_dir, tiny_encoder).unchanged == len(photos)
    assert vector_files(index_dir) == before  # the same files, untouched
    assert _gen(index_dir) == gen


def test_root_settings_are_recorded_and_used_by_later_syncs(index_dir, tmp_path, tiny_encoder) -> None:
    from clipsearch.ingest.sync import SyncOptions
    from clipsearch.store.catalog import RootSettings
    from conftest import write_photos

    folder = tmp_path / "p"
    photos = write_photos(folder)
    (folder / "raw").mkdir()
    Image.new("RGB", (40, 30), (10, 200, 30)).save(folder / "raw" / "r.png")
    Image.new("RGB", (40, 30), (200, 10, 130)).save(folder / ".hidden.png")
    Image.new("RGB", (700, 500), (90, 90, 250)).save(folder / "big.png")  # 350,000 pixels

    def run(roots, **settings):
        with Index.open_for_write(index_dir, tiny_encoder) as idx:
            report = idx.sync(roots, options=SyncOptions(export_text=False, **settings))
            return report, idx.catalog.root_settings()

    report, recorded = run([str(folder)], exclude=("raw/",), max_pixels=300_000)
    assert (report.added, report.skip_reasons) == (len(photos), {"too-large": 1})
    assert recorded == {str(folder): RootSettings(False, ("raw/",), 300_000)}
    report, recorded = run(None)  # a plain re-sync keeps to the recorded settings
    assert (report.added, report.unchanged, report.removed) == (0, len(photos) + 1, 0)
    assert str(folder / "raw" / "r.png") not in all_paths(index_dir)
    report, recorded = run(None, max_pixels=1_000_000)  # a higher limit retries the too-large file
    assert (report.added, report.skipped) == (1, 0) and str(folder / "big.png") in all_paths(index_dir)
    assert recorded == {str(folder): RootSettings(False, ("raw/",), 1_000_000)}
    report, recorded = run([str(folder)], include_hidden=True, exclude=())
    assert report.added == 2 and recorded[str(folder)] == RootSettings(True, (), 1_000_000)
    report, recorded = run(None, include_hidden=False)
    assert report.removed == 1 and str(folder / ".hidden.png") not in all_paths(index_dir)


def test_forget_removes_a_root_its_files_and_the_vectors_no_file_uses(
    index_dir, tmp_path, tiny_encoder
) -> None:
    from clipsearch.errors import NotARootError
    from conftest import write_photos

    a = write_photos(tmp_path / "a")
    b = tmp_path / "b"
    b.mkdir()
    for i in range(4):
        Image.new("RGB", (40, 30), (60 * i, 20, 200)).save(b / f"{i}.png")
    shutil.copy(a["coffee"], b / "coffee again.jpg")  # the same content as a file of a
    sync(index_dir, tiny_encoder, tmp_path / "a")
    sync(index_dir, tiny_encoder, b)
    with Index.open_for_write(index_dir) as idx:  # the recorded model, never loaded
        assert idx.forget(b) == 5
        assert not idx.encoder_loaded and not idx.model_loading
        assert idx.catalog.roots() == [str(tmp_path / "a")]
        contents = {r[0] for r in idx.catalog.conn.execute("SELECT id FROM contents")}
        assert len(contents) == len(a) and set(content_of(idx.store.ids()).tolist()) == contents
        with pytest.raises(NotARootError, match="is not one of the folders"):
            idx.forget(tmp_path / "a" / "sub")
    assert all_paths(index_dir) == {str(p) for p in a.values()}
    os.rename(tmp_path / "a", tmp_path / "a-unplugged")  # a missing folder can be forgotten too
    with Index.open_for_write(index_dir) as idx:
        assert idx.forget(tmp_path / "a") == len(a)
        assert idx.info()["count"] == idx.info()["vectors"] == len(idx.store) == 0
    assert_tidy(index_dir)


def test_a_nested_root_with_a_link_to_its_parent_gives_each_file_one_path(
    index_dir, tmp_path, tiny_encoder
) -> None:
    photos = tmp_path / "photos"
    (photos / "2019").mkdir(parents=True)
    Image.new("RGB", (40, 30), "red").save(photos / "a.png")
    Image.new("RGB", (40, 30), "blue").save(photos / "2019" / "b.png")
    os.symlink("..", photos / "2019" / "loop")
    inner, outer = {str(photos / "2019" / "b.png")}, {str(photos / "a.png"), str(photos / "2019" / "b.png")}
    sync(index_dir, tiny_encoder, photos / "2019")
    assert all_paths(index_dir) == inner  # the link up to photos/ is not followed
    sync(index_dir, tiny_encoder, photos)  # the parent takes the nested root in
    assert all_paths(index_dir) == outer
    for roots in ([photos / "2019"], []):  # whichever command runs, the same paths
        report = sync(index_dir, tiny_encoder, *roots)
        assert (report.added, report.removed, report.reused) == (0, 0, 0)
        assert all_paths(index_dir) == outer
    with Index.open(index_dir) as idx:
        assert idx.catalog.roots() == [str(photos)]
