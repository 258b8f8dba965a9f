"""The JPEG decode scale is an index setting: a new index decodes at the default (1.5x the model's
input), an index keeps the scale it was built with (one made before it was recorded: 2x), and it
changes only with a rebuild. Measured in benchmarks/decode_scale.py."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsearch.api import Index
from clipsearch.cli import app
from clipsearch.encoders.facts import DEFAULT_DECODE_SCALE, draft_side
from clipsearch.encoders.images import open_image
from clipsearch.errors import BadValueError
from clipsearch.ingest.sync import SyncOptions

NO_EXPORT = SyncOptions(export_text=False)


def photo(path: Path, seed: int) -> Path:
    """A 600x400 JPEG of fine random detail: for the tiny model (input 32) it decodes at 1/4
    (150x100) at scale 2 and at 1/8 (75x50) at scale 1.5, and the two give different vectors."""
    rng = np.random.default_rng(seed)
    small = rng.integers(0, 256, size=(100, 150, 3), dtype=np.uint8)
    detail = rng.integers(-60, 60, size=(400, 600, 3))
    smooth = Image.fromarray(small).resize((600, 400), Image.Resampling.BICUBIC)
    pixels = np.asarray(smooth, dtype=int) + detail
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(np.clip(pixels, 0, 255).astype(np.uint8)).save(path, quality=90)
    return path


def vector_at(encoder, path: Path, scale: float) -> np.ndarray:  # type: ignore[no-untyped-def]
    return encoder.encode_images([open_image(path, min_side=draft_side(encoder, scale))])[0]


def stored(idx: Index, path: Path) -> np.ndarray:
    return idx.folder.stored_vector(str(path))


def decoded_at(idx: Index, path: Path, encoder, scale: float) -> bool:  # type: ignore[no-untyped-def]
    """Whether the index's vector of ``path`` is the one decoding at ``scale`` gives (to the index's
    storage rounding), and far from the other scale's."""
    other = 2.0 if scale != 2.0 else 1.5
    vector = stored(idx, path)
    near = float(np.abs(vector - vector_at(encoder, path, scale)).max())
    far = float(np.abs(vector - vector_at(encoder, path, other)).max())
    return near < 1e-3 and far > 5 * near


def test_a_new_index_records_the_default_scale_and_decodes_at_it(tmp_path: Path, tiny_encoder) -> None:
    first = photo(tmp_path / "pics" / "a.jpg", 1)
    assert open_image(first, min_side=draft_side(tiny_encoder, 2.0)).size == (150, 100)
    assert open_image(first, min_side=draft_side(tiny_encoder, 1.5)).size == (75, 50)
    at_2, at_15 = vector_at(tiny_encoder, first, 2.0), vector_at(tiny_encoder, first, 1.5)
    assert float(at_2 @ at_15) < 0.9999  # the scales differ, so the test can tell them apart
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        idx.sync([str(tmp_path / "pics")], options=NO_EXPORT)
        assert idx.meta.decode_scale == DEFAULT_DECODE_SCALE == 1.5
        assert idx.info()["decode_scale"] == 1.5
        assert decoded_at(idx, first, tiny_encoder, 1.5)
        assert idx.decode_side == draft_side(tiny_encoder, 1.5)  # image queries decode as indexing did


def test_an_index_keeps_its_scale_and_an_old_index_decodes_at_2(tmp_path: Path, tiny_encoder) -> None:
    photo(tmp_path / "pics" / "a.jpg", 1)
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        idx.sync([str(tmp_path / "pics")], options=NO_EXPORT)
    with sqlite3.connect(tmp_path / "idx" / "catalog.sqlite") as conn:  # as an index made before 0.3
        conn.execute("DELETE FROM meta WHERE key = 'decode_scale'")
    later = photo(tmp_path / "pics" / "b.jpg", 2)
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        assert idx.meta.decode_scale == 2.0
        idx.sync(options=NO_EXPORT)
        assert decoded_at(idx, later, tiny_encoder, 2.0)
        assert idx.decode_side == draft_side(tiny_encoder, 2.0)
    with pytest.raises(BadValueError, match=r"records decode scale 2 .*changes only with a rebuild"):
        Index.open_for_write(tmp_path / "idx", tiny_encoder, decode_scale=1.5)
    with pytest.raises(BadValueError, match=r"choose 2, 1\.5, 1"):
        Index.open_for_write(tmp_path / "other", tiny_encoder, decode_scale=3)
    with Index.open_for_write(tmp_path / "idx", tiny_encoder, decode_scale=1.5, rebuild=True) as idx:
        idx.sync(options=NO_EXPORT)
    with Index.open(tmp_path / "idx") as idx:
        assert idx.meta.decode_scale == 1.5
        assert decoded_at(idx, later, tiny_encoder, 1.5)


def test_cli_decode_scale_option_and_info(tmp_path: Path, tiny_model: str) -> None:
    photo(tmp_path / "pics" / "a.jpg", 1)
    runner = CliRunner()
    index = ["--index", str(tmp_path / "idx")]
    made = runner.invoke(
        app, ["index", str(tmp_path / "pics"), *index, "--model", tiny_model, "--decode-scale", "2"]
    )
    assert made.exit_code == 0, made.output
    info = runner.invoke(app, ["info", *index])
    assert "JPEGs decoded at ≥ 2× the model's input" in info.stdout
    again = runner.invoke(app, ["index", *index, "--decode-scale", "1.5"])
    assert again.exit_code == 2 and "--decode-scale 1.5" in again.stderr and "rebuild" in again.stderr
    bad = runner.invoke(app, ["index", *index, "--decode-scale", "3"])
    assert bad.exit_code == 2 and "choose 2, 1.5, 1" in bad.stderr
