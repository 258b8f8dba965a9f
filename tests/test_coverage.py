"""Whole-frame coverage: the parts of a wide or tall picture a centre-cropping model does not see get
vectors of their own (side views), searched with the centre one; a file scores its best vector."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsearch.api import Index
from clipsearch.cli import app
from clipsearch.encoders.pixels import PixelTransform
from clipsearch.errors import BadValueError
from clipsearch.ingest.sync import SyncOptions
from clipsearch.query.filters import Filters
from clipsearch.store.catalog import VIEW_FLAG, content_of, view_id, view_of

CROP = PixelTransform(224, 224, (0.5, 0.5, 0.5), (0.5, 0.5, 0.5), "bicubic", "shortest")
NO_EXPORT = SyncOptions(export_text=False)


def bands(width: int, height: int, colours: list[tuple[int, int, int]]) -> Image.Image:
    """Bands of colour along the long side, in order."""
    img = Image.new("RGB", (width, height))
    n = len(colours)
    for i, colour in enumerate(colours):
        if width >= height:
            img.paste(colour, (i * width // n, 0, (i + 1) * width // n, height))
        else:
            img.paste(colour, (0, i * height // n, width, (i + 1) * height // n))
    return img


RED, GREEN, BLUE = (220, 0, 0), (0, 200, 0), (0, 0, 230)


@pytest.mark.parametrize(
    ("size", "kinds"), [((1600, 900), ("left", "right")), ((900, 1600), ("top", "bottom"))]
)
def test_side_views_see_the_ends_a_centre_crop_misses(size: tuple[int, int], kinds: tuple[str, str]) -> None:
    img = bands(*size, [RED, GREEN, BLUE])
    centre = CROP.resize_crop(img)
    assert centre.reshape(-1, 3).mean(0)[0] < 120  # the centre crop: mostly the green middle
    views = CROP.side_views(img)
    assert [kind for kind, _ in views] == list(kinds)
    (_, first), (_, last) = views
    assert first.shape == last.shape == (224, 224, 3)
    assert np.abs(first.reshape(-1, 3).mean(0) - RED).max() < 25  # a third's scale: all red
    assert np.abs(last.reshape(-1, 3).mean(0) - BLUE).max() < 25


@pytest.mark.parametrize(
    ("size", "count"),
    [
        ((100, 100), 0),
        ((1100, 1000), 0),
        ((4000, 3000), 2),
        ((1600, 900), 2),
        ((3200, 900), 4),
        ((9000, 1000), 6),
    ],
)
def test_how_many_side_views(size: tuple[int, int], count: int) -> None:
    img = Image.new("RGB", size, "white")
    assert len(CROP.side_views(img)) == count
    squash = PixelTransform(64, 64, (0.5,) * 3, (0.5,) * 3, "bicubic", "squash")  # sees the whole frame
    assert squash.side_views(img) == []


def test_a_panorama_is_covered_end_to_end() -> None:
    """Full-height squares spread along a 3.5:1 panorama: each colour band is seen by some view."""
    colours = [(40 * i, 255 - 40 * i, (97 * i) % 256) for i in range(7)]
    img = bands(3150, 900, colours)
    views = [v for _, v in CROP.side_views(img)] + [CROP.resize_crop(img)]
    seen = {tuple(int(c) for c in v.reshape(-1, 3)[j]) for v in views for j in range(0, 224 * 224, 997)}
    for colour in colours:
        assert min(np.abs(np.array(s) - colour).max() for s in seen) < 8, colour


def test_view_ids_map_back_to_their_content() -> None:
    ids = np.array([7, view_id(7, 1), view_id(7, 2), view_id(123456789, 65535), -1], dtype=np.int64)
    assert content_of(ids).tolist() == [7, 7, 7, 123456789, -1]
    assert view_of(ids).tolist() == [0, 1, 2, 65535, 0]
    assert all(int(i) & VIEW_FLAG for i in ids[1:4]) and view_id(7, 0) == 7
    with pytest.raises(ValueError):
        view_id(7, 65536)


def write_pictures(folder: Path) -> dict[str, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    pictures = {
        "wide": bands(480, 270, [RED, GREEN, BLUE]),
        "tall": bands(270, 480, [BLUE, RED, GREEN]),
        "square": bands(300, 300, [GREEN, GREEN, RED]),
    }
    out = {}
    for name, img in pictures.items():
        out[name] = folder / f"{name}.png"
        img.save(out[name])
    return out


def test_views_are_stored_searched_and_swept(tmp_path: Path, tiny_encoder) -> None:
    pictures = write_pictures(tmp_path / "pics")
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        assert idx.meta.coverage == "sides"  # the tiny model crops the centre, like ViT-B-32
        idx.sync([str(tmp_path / "pics")], options=NO_EXPORT)
        info = idx.info()
        assert (info["contents"], info["vectors"], info["coverage"]) == (3, 7, "sides")
        wide = idx.catalog.file(str(pictures["wide"])).content_id
        views = idx.catalog.views_of([wide])[wide]
        assert [(v.view, v.kind) for v in views.values()] == [(1, "left"), (2, "right")]
        # a file is found by its best view, once, with that view's score
        left = idx.store.reconstruct(np.array([view_id(wide, 1)], dtype=np.int64))[0]
        hits = idx.search_vectors(left, k=3)[0]
        assert hits[0].path == str(pictures["wide"]) and hits[0].score == pytest.approx(1, abs=1e-3)
        assert len({h.path for h in hits}) == 3
        # filters restrict views too: the wide picture's views never stand in for another file
        only_square = Filters(folder=str(tmp_path / "pics"), types=("png",), min_side=290)
        assert [h.path for h in idx.search_vectors(left, k=3, filters=only_square)[0]] == [
            str(pictures["square"])
        ]
    pictures["wide"].unlink()
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        assert idx.sync(None, options=NO_EXPORT).removed == 1
    with Index.open(tmp_path / "idx") as idx:
        assert len(idx.store) == idx.info()["vectors"] == 4  # the wide picture's 3 vectors are gone
        assert wide not in set(content_of(idx.store.ids()).tolist())
        assert not idx.catalog.view_ids_of([wide])


def test_duplicates_compare_pictures_not_their_parts(tmp_path: Path, tiny_encoder) -> None:
    pictures = write_pictures(tmp_path / "pics")
    shutil.copy(pictures["wide"], tmp_path / "pics" / "wide copy.png")
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        idx.sync([str(tmp_path / "pics")], options=NO_EXPORT)
    result = CliRunner().invoke(app, ["duplicates", "--index", str(tmp_path / "idx"), "--exact", "--json"])
    assert result.exit_code == 0, result.output
    assert '"count": 2' in result.stdout and "wide copy.png" in result.stdout


def test_coverage_none_and_a_changed_coverage(tmp_path: Path, tiny_encoder) -> None:
    write_pictures(tmp_path / "pics")
    with Index.open_for_write(tmp_path / "idx", tiny_encoder, coverage="none") as idx:
        idx.sync([str(tmp_path / "pics")], options=NO_EXPORT)
        assert (idx.meta.coverage, idx.info()["vectors"]) == ("none", 3)
    with pytest.raises(BadValueError, match="changes only with a rebuild"):
        Index.open_for_write(tmp_path / "idx", tiny_encoder, coverage="sides")
    with pytest.raises(BadValueError, match="choose sides or none"):
        Index.open_for_write(tmp_path / "other", tiny_encoder, coverage="everything")
    with Index.open_for_write(tmp_path / "idx", tiny_encoder, coverage="sides", rebuild=True) as idx:
        idx.sync(options=NO_EXPORT)
    with Index.open(tmp_path / "idx") as idx:
        assert (idx.meta.coverage, idx.info()["vectors"]) == ("sides", 7)


def test_cli_coverage_option_and_info(tmp_path: Path, tiny_model: str) -> None:
    write_pictures(tmp_path / "pics")
    runner = CliRunner()
    index = ["--index", str(tmp_path / "idx")]
    made = runner.invoke(
        app, ["index", str(tmp_path / "pics"), *index, "--model", tiny_model, "--coverage", "none"]
    )
    assert made.exit_code == 0, made.output
    info = runner.invoke(app, ["info", *index])
    assert "3 vectors (coverage: none)" in info.stdout
    again = runner.invoke(app, ["index", *index, "--coverage", "sides"])
    assert again.exit_code == 2 and "--coverage 'sides'" in again.stderr and "rebuild" in again.stderr


def edge_photos(folder: Path, count: int) -> list[Path]:
    """16:9 and 9:16 photos made of three different tinted crops of scikit-image's photos."""
    import skimage.data

    rng = np.random.default_rng(7)
    sources = [
        Image.fromarray(getattr(skimage.data, n)()).convert("RGB")
        for n in ("retina", "hubble_deep_field", "immunohistochemistry", "astronaut", "coffee", "rocket")
    ]
    folder.mkdir(parents=True)
    out = []
    for i in range(count):
        size = (1600, 900) if i % 2 == 0 else (900, 1600)
        photo = Image.new("RGB", size)
        for part in range(3):
            source = sources[int(rng.integers(len(sources)))]
            tile = (size[0] // 3 + 1, size[1]) if i % 2 == 0 else (size[0], size[1] // 3 + 1)
            side = int(min(source.size) * rng.uniform(0.3, 0.8))
            x, y = (int(rng.integers(0, s - side + 1)) for s in source.size)
            crop = np.asarray(source.crop((x, y, x + side, y + side)).resize(tile), dtype=np.float32)
            tinted = Image.fromarray((crop * rng.uniform(0.2, 1.0, 3)).clip(0, 255).astype(np.uint8))
            photo.paste(tinted, (part * size[0] // 3, 0) if i % 2 == 0 else (0, part * size[1] // 3))
        out.append(folder / f"photo{i:02d}.jpg")
        photo.save(out[-1], quality=90)
    return out


def edge_third(path: Path, part: int) -> Image.Image:
    img = Image.open(path).convert("RGB")
    w, h = img.size
    box = (part * w // 3, 0, (part + 1) * w // 3, h) if w > h else (0, part * h // 3, w, (part + 1) * h // 3)
    return img.crop(box)


@pytest.mark.slow
def test_an_edge_third_finds_its_photo_with_vit_b_32(tmp_path: Path, vit_b_32_cache) -> None:
    """With ViT-B-32's architecture (random weights: the test is about pixels reaching the index), a
    query made of the left or right third of a 16:9 photo (top or bottom third of a 9:16 one) ranks
    that photo first with coverage; without it, the centre crop never saw most of those pixels."""
    from clipsearch.encoders.loading import load_encoder

    photos = edge_photos(tmp_path / "photos", 16)
    encoder = load_encoder("ViT-B-32", "laion2b_s34b_b79k", precision="bf16")
    found = {}
    for coverage in ("sides", "none"):
        with Index.open_for_write(tmp_path / coverage, encoder, coverage=coverage) as idx:
            idx.sync([str(tmp_path / "photos")], options=NO_EXPORT)
            firsts = [
                idx.search_image(edge_third(p, part), k=1)[0].path == str(p)
                for p in photos
                for part in (0, 2)
            ]
        found[coverage] = sum(firsts) / len(firsts)
    print(f"edge third ranks its photo first: {found}")
    assert found["sides"] >= 0.95
    assert found["none"] < 0.5


def edge_frame(i: int) -> tuple[object, Image.Image]:
    """A 16:9 (even i) or 9:16 (odd i) frame whose one small free shape lies in a strip at a far end
    (left or right, top or bottom), outside the centre crop; returns its scene and the frame."""
    from clipsearch.shapes import world

    rng = np.random.default_rng([19, i])
    short, strip = 180, int(180 * 0.36)
    scene = world.sample_free_scene(rng)
    wide = i % 2 == 0
    tile = world.render(scene, rng, (strip, short) if wide else (short, strip))
    size = (short * 16 // 9, short) if wide else (short, short * 16 // 9)
    frame = Image.new("RGB", size, tile.getpixel((0, 0)))
    far = (size[0] - strip, 0) if wide else (0, size[1] - strip)
    frame.paste(tile, far if i % 4 < 2 else (0, 0))
    return scene, frame


@pytest.mark.slow  # ~5 s: 160 frames drawn, 480 views encoded
def test_small_shapes_at_the_far_ends_are_found_with_coverage_and_not_without() -> None:
    """The shapes model in a cropping configuration (its weights, its transform switched from squash
    to ViT-B-32's kind: short side resized, centre cropped): 16:9 and 9:16 frames whose one small shape
    lies at a far end. Text precision@10 over every colour x shape: from the centre crop alone the shapes
    are not in the pixels; with the side views (a file scores its best vector) they are found about as
    well as from the squashed whole frame the model was trained on (measured: 0.005, 0.69, 0.62)."""
    import dataclasses

    from clipsearch.encoders.loading import load_encoder
    from clipsearch.shapes import world

    encoder = load_encoder("shapes")
    squash = encoder.pixel_transform
    assert (
        squash is not None
        and squash.resize_mode == "squash"
        and squash.side_views(Image.new("RGB", (320, 180))) == []
    )
    cropping = dataclasses.replace(squash, resize_mode="shortest")
    frames = [edge_frame(i) for i in range(160)]
    queries = [(c, s) for c in world.COLORS for s in world.SHAPES]
    texts = encoder.encode_texts([f"a {c} {s}" for c, s in queries])

    def precision_at_10(scores: np.ndarray) -> float:
        out = []
        for q, (color, shape) in enumerate(queries):
            right = {i for i, (scene, _) in enumerate(frames) if scene.matches(color=color, shape=shape)}
            if right:
                top = set(np.argsort(-scores[q])[:10].tolist())
                out.append(len(right & top) / min(10, len(right)))
        return float(np.mean(out))

    centre = encoder.encode_uint8(np.stack([cropping.resize_crop(f) for _, f in frames]))
    views = [encoder.encode_uint8(np.stack([p for _, p in cropping.side_views(f)])) for _, f in frames]
    assert all(len(v) == 2 for v in views)
    best = np.stack(
        [np.max(np.vstack([c[None], v]) @ texts.T, axis=0) for c, v in zip(centre, views, strict=True)]
    )
    whole = encoder.encode_uint8(np.stack([squash.resize_crop(f) for _, f in frames]))
    found = {
        "centre": precision_at_10(texts @ centre.T),
        "sides": precision_at_10(best.T),
        "squash": precision_at_10(texts @ whole.T),
    }
    print(f"far-end shapes, text P@10: {found}")
    assert found["centre"] < 0.1
    assert found["sides"] >= 0.45 and found["sides"] >= 0.8 * found["squash"]
