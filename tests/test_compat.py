"""An index written before the rooms were built (clipsearch 0.1.0 at 1f3fcc9) opens, searches and syncs.

``tests/data/index-0.1.0`` was made by that commit with
``clipsearch index PHOTOS --model shapes`` over ``write_dataset(PHOTOS, 12, seed=11)`` in
``/tmp/fixture/photos``.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np

from clipsearch.api import Index
from clipsearch.encoders.facts import draft_side
from clipsearch.encoders.images import open_image
from clipsearch.encoders.loading import load_encoder
from clipsearch.ingest.sync import SyncOptions
from clipsearch.shapes.world import write_dataset

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
        hits = idx.search("a green star", k=3)
        assert Path(hits[0].path).name == "0000_green-star.jpg"  # the one picture of a green star alone
        # its roots had no settings then: a reader (which never writes) shows the defaults
        assert info["root_settings"] == [
            {"path": OLD_ROOT, "include_hidden": False, "exclude": [], "max_pixels": None}
        ]
    extra = tmp_path / "more"
    write_dataset(extra, 3, seed=12)
    with Index.open_for_write(index_dir, encoder) as idx:  # upgraded in place by a writer
        report = idx.sync([str(extra)], options=SyncOptions(exclude=("*.png",)))
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
        assert idx.catalog.get("schema_version") == "1"  # columns added; older versions still read it
