"""The shapes world: deterministic scenes, true captions, real files that decode upright."""

from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageOps

from clipsearch.shapes import world


def _scenes(seed: int, n: int = 300) -> list[world.Scene]:
    rng = np.random.default_rng(seed)
    return [world.sample_scene(rng) for _ in range(n)]


def _one_shape(spec: world.ShapeSpec, background: str = "grey") -> world.Scene:
    return world.Scene((spec,), world.Background("plain", background))


def _pixels(img: Image.Image) -> np.ndarray:
    return np.asarray(img, dtype=np.int16)


def test_same_seed_same_scenes_and_pixels() -> None:
    assert _scenes(7) == _scenes(7)
    assert _scenes(7) != _scenes(8)
    scene = _scenes(7, 1)[0]
    first = world.render(scene, np.random.default_rng(1), (120, 90))
    again = world.render(scene, np.random.default_rng(1), (120, 90))
    other = world.render(scene, np.random.default_rng(2), (120, 90))
    assert np.array_equal(_pixels(first), _pixels(again))
    assert not np.array_equal(_pixels(first), _pixels(other))


def test_scenes_cover_the_vocabulary() -> None:
    specs = [spec for scene in _scenes(3, 1000) for spec in scene.shapes]
    assert {s.color for s in specs} == set(world.COLORS)
    assert {s.shape for s in specs} == set(world.SHAPES)
    assert {s.size for s in specs} == set(world.SIZES)
    assert {s.position for s in specs} == set(world.POSITIONS)
    counts = {len(scene.shapes) for scene in _scenes(3, 1000)}
    assert counts == {1, 2}


def test_background_never_has_a_shape_colour() -> None:
    for scene in _scenes(11, 2000):
        names = {scene.background.color, scene.background.color2}
        assert not names & {spec.color for spec in scene.shapes}


def test_two_shapes_never_share_a_position_or_a_description() -> None:
    for scene in _scenes(12, 2000):
        if len(scene.shapes) == 2:
            a, b = scene.shapes
            assert a.position != b.position
            assert (a.color, a.shape) != (b.color, b.shape)


def test_fixed_attributes_are_respected() -> None:
    rng = np.random.default_rng(0)
    scene = world.sample_scene(rng, n_shapes=1, color="red", shape="star", size="small", position="top")
    assert scene.shapes == (world.ShapeSpec("red", "star", "small", "top"),)
    assert scene.matches(color="red", shape="star")
    assert not scene.matches(color="red", shape="circle")


def test_impossible_scenes_are_refused() -> None:
    rng = np.random.default_rng(0)
    with pytest.raises(ValueError, match="no room"):
        world.sample_scene(rng, n_shapes=2, size="large", position="center")
    with pytest.raises(ValueError, match="1 or 2"):
        world.sample_scene(rng, n_shapes=3)
    scene = world.sample_scene(rng, n_shapes=2, size="large")
    assert len(scene.shapes) == 2


def _mentioned(caption: str, vocabulary: tuple[str, ...]) -> set[str]:
    return {word for word in vocabulary if re.search(rf"\b{word}\b", caption)}


def test_captions_only_mention_true_attributes() -> None:
    rng = np.random.default_rng(5)
    for scene in _scenes(5, 500):
        caption = scene.caption(rng)
        assert _mentioned(caption, tuple(world.SHAPES)) <= {s.shape for s in scene.shapes}
        assert _mentioned(caption, world.SIZES) <= {s.size for s in scene.shapes}
        shape_colors = _mentioned(caption.split(" on a")[0], tuple(world.COLORS))
        assert shape_colors <= {s.color for s in scene.shapes}


def test_required_attributes_are_always_mentioned() -> None:
    rng = np.random.default_rng(6)
    scene = _one_shape(world.ShapeSpec("blue", "cross", "large", "left"))
    for _ in range(50):
        caption = scene.caption(rng, require=("color", "shape", "size", "position"))
        assert {"blue", "cross", "large"} <= set(caption.replace(",", "").split())
        assert "left" in caption


def test_captions_are_varied() -> None:
    rng = np.random.default_rng(9)
    scene = _one_shape(world.ShapeSpec("red", "circle", "large", "left"))
    captions = {scene.caption(rng) for _ in range(200)}
    assert len(captions) > 40
    assert "a red circle" in captions


def _colour_at(img: Image.Image, fx: float, fy: float) -> np.ndarray:
    """Median colour of a small patch around a fractional position."""
    w, h = img.size
    x, y = int(fx * w), int(fy * h)
    r = max(1, min(w, h) // 40)
    return np.median(_pixels(img)[y - r : y + r + 1, x - r : x + r + 1].reshape(-1, 3), axis=0)


@pytest.mark.parametrize("position", world.POSITIONS)
def test_shape_is_drawn_where_its_label_says(position: str) -> None:
    rng = np.random.default_rng(1)
    scene = _one_shape(world.ShapeSpec("red", "circle", "large", position), "white")
    img = world.render(scene, rng, (300, 200), augment=False)
    centres = {"left": (1 / 6, 1 / 2), "right": (5 / 6, 1 / 2), "top": (1 / 2, 1 / 6)}
    centres |= {"bottom": (1 / 2, 5 / 6), "center": (1 / 2, 1 / 2)}
    for other, (fx, fy) in centres.items():
        distance = np.abs(_colour_at(img, fx, fy) - world.COLORS["red"]).max()
        assert (distance < 40) == (other == position), other


def test_render_size_and_mode_for_any_aspect_ratio() -> None:
    rng = np.random.default_rng(2)
    for size in [(17, 300), (300, 17), (64, 64), (640, 360)]:
        img = world.render(world.sample_scene(rng), rng, size)
        assert img.size == size
        assert img.mode == "RGB"


def test_sampled_sizes_respect_bounds() -> None:
    rng = np.random.default_rng(4)
    for _ in range(200):
        w, h = world.sample_image_size(rng, (50, 90), max_aspect=2.0)
        assert 50 <= min(w, h) <= 90
        assert max(w, h) / min(w, h) <= 2.0 + 0.05


def test_written_files_decode_and_exif_rotated_ones_come_out_upright(tmp_path: Path) -> None:
    records = world.write_dataset(tmp_path, 40, seed=3, exif_fraction=0.6)
    assert len(records) == 40
    assert {r.path.suffix for r in records} == {".jpg", ".png"}
    assert {r.orientation for r in records} <= {1, 3, 6, 8}
    assert any(r.orientation in (6, 8) for r in records)
    for index, record in enumerate(records):
        with Image.open(record.path) as raw:
            stored_size = raw.size
            upright = ImageOps.exif_transpose(raw).convert("RGB")
        assert upright.size == record.size
        rotated = record.orientation in (6, 8)
        assert stored_size == ((record.size[1], record.size[0]) if rotated else record.size)
        scene, expected = world.dataset_image(3, index)
        assert scene == record.scene
        if record.path.suffix == ".png":
            assert np.array_equal(_pixels(upright), _pixels(expected))
        else:  # compare at 1/4 scale, where JPEG's high-frequency error averages out
            error = np.abs(_pixels(upright.reduce(4)) - _pixels(expected.reduce(4))).mean()
            assert error < 4, (record, error)


def test_written_labels_are_checkable(tmp_path: Path) -> None:
    records = world.write_dataset(tmp_path, 10, seed=4)
    for record in records:
        labels = record.scene.to_dict()
        for spec in labels["shapes"]:
            assert spec["color"] in world.COLORS
            assert spec["shape"] in world.SHAPES
            assert spec["size"] in world.SIZES
            assert spec["position"] in world.POSITIONS
        assert labels["background"]["kind"] in world.BACKGROUND_KINDS


_PLAIN = world.Background("plain", "grey")


def _shape_mask(img: Image.Image) -> np.ndarray:
    return np.abs(_pixels(img) - np.asarray(world.BACKGROUND_COLORS["grey"])).max(axis=2) > 60


def _shape_box(img: Image.Image) -> tuple[int, int, int, int]:
    """Bounding box (left, top, right, bottom) of the pixels that differ from the grey background."""
    ys, xs = np.nonzero(_shape_mask(img))
    return int(xs.min()), int(ys.min()), int(xs.max()) + 1, int(ys.max()) + 1


def test_free_shapes_go_anywhere_at_any_size_and_stay_whole() -> None:
    rng = np.random.default_rng(13)
    scene = world.Scene((world.ShapeSpec("red", "square", world.FREE_SIZE, world.FREE_POSITION),), _PLAIN)
    quadrants, sizes = set(), []
    for _ in range(120):
        img = world.render(scene, rng, (320, 180), augment=False)
        left, top, right, bottom = _shape_box(img)
        assert left > 0 and top > 0 and right < 320 and bottom < 180  # never cut by the frame
        x, y = (left + right) / 2 / 320, (top + bottom) / 2 / 180
        if min(x, 1 - x) < 0.25 and min(y, 1 - y) < 0.25:  # a corner, where none of the five cells is
            quadrants.add((x < 0.5, y < 0.5))
        sizes.append((bottom - top) / 180)
    assert len(quadrants) == 4
    assert min(sizes) < 0.16 and max(sizes) > 0.36  # beyond both "small" and "large"


def test_free_scenes_are_never_described_by_position_or_size() -> None:
    rng = np.random.default_rng(14)
    where = ("left", "right", "top", "bottom", "center", "middle", "small", "large", "any")
    for _ in range(300):
        scene = world.sample_free_scene(rng)
        assert scene.shapes[0].position == world.FREE_POSITION and scene.shapes[0].size == world.FREE_SIZE
        caption = scene.caption(rng, require=("color", "shape"))
        assert not _mentioned(caption.split(" on a")[0], where), caption
        assert scene.shapes[0].color in caption and scene.shapes[0].shape in caption
    fixed = world.sample_free_scene(rng, color="blue", shape="star", background_kind="noisy")
    assert fixed.matches(color="blue", shape="star") and fixed.background.kind == "noisy"


@pytest.mark.parametrize("shape", ["star", "cross", "triangle"])
def test_a_look_varies_a_shapes_proportions_and_keeps_its_colour_name(shape: str) -> None:
    """How much of its bounding box a star or cross fills (star depth, arm width), and a triangle's
    width to height, vary with a Look far more than the default drawing's rotation makes them vary."""

    def fills(look: world.Look | None) -> list[float]:
        rng = np.random.default_rng(15)
        scene = world.Scene((world.ShapeSpec("blue", shape, "large", "center"),), _PLAIN)
        out = []
        for _ in range(16):
            img = world.render(scene, rng, (200, 200), augment=False, look=look)
            mask = _shape_mask(img)
            red, green, blue = np.median(_pixels(img)[mask], axis=0)
            assert blue > max(red, green) + 60  # still blue
            left, top, right, bottom = _shape_box(img)
            width, height = right - left, bottom - top
            out.append(width / height if shape == "triangle" else mask.sum() / (width * height))
        return out

    plain, varied = fills(None), fills(world.Look())
    assert np.ptp(varied) > 2 * np.ptp(plain), (np.ptp(varied), np.ptp(plain))
