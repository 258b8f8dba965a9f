"""Does an encoder understand the shapes world? Retrieval metrics on held-out scenes.

Every metric runs on a balanced gallery of single-shape images (each colour x shape x size x position
combination `copies` times) drawn with a seed the model never trained on. An image is *relevant* to a
query when its shape has every attribute the query names. `evaluate_files` repeats the text queries on
real JPEG/PNG files (varied sizes, some EXIF-rotated) read back the way an indexer reads them.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Protocol

import numpy as np
import numpy.typing as npt
from PIL import Image, ImageOps

from clipsearch.shapes import world

Matrix = npt.NDArray[np.float32]
POSITION_WORDS = {
    "left": "on the left",
    "right": "on the right",
    "top": "at the top",
    "bottom": "at the bottom",
    "center": "in the center",
}


class Encoder(Protocol):
    """What the metrics need: images and texts to L2-normalised float32 rows of one space."""

    def encode_images(self, images: Sequence[Image.Image], *, batch_size: int = ...) -> Matrix:
        """Embed images as an (n, d) float32 array of unit rows."""
        ...

    def encode_texts(self, texts: Sequence[str]) -> Matrix:
        """Embed texts as an (n, d) float32 array of unit rows."""
        ...


@dataclass(frozen=True)
class ShapesMetrics:
    """Held-out retrieval scores, each in [0, 1]; `THRESHOLDS` says what passing means."""

    text_to_image: float
    image_to_image: float
    algebra: float
    subtraction: float
    position: float
    size: float
    files_text_to_image: float
    files_position: float
    free_text_to_image: float
    free_image_to_image: float

    def failures(self) -> list[str]:
        """Names of the metrics below their threshold."""
        return [name for name, floor in THRESHOLDS.items() if getattr(self, name) < floor]

    def table(self) -> str:
        """The metrics as a Markdown table with thresholds."""
        rows = ["| metric | value | threshold | what |", "|---|---:|---:|---|"]
        for field in fields(self):
            value = getattr(self, field.name)
            floor = THRESHOLDS.get(field.name)
            rows.append(
                f"| {field.name} | {value:.3f} | {'' if floor is None else f'{floor:.2f}'} "
                f"| {DESCRIPTIONS[field.name]} |"
            )
        return "\n".join(rows)


THRESHOLDS = {
    "text_to_image": 0.9,
    "image_to_image": 0.9,
    "algebra": 0.8,
    "subtraction": 1.0,
    "position": 0.6,
    "size": 0.85,
    "files_text_to_image": 0.85,  # our own addition to the table: two-shape scenes in real files
}
DESCRIPTIONS = {
    "text_to_image": 'precision@10 of "a red circle" queries, every colour x shape',
    "image_to_image": "share of each image's 5 nearest images with the same colour and shape",
    "algebra": 'precision@5 of blue circles for image(red circle) - "red" + "blue", all colour pairs',
    "subtraction": 'share of "circle" - "red" queries with no red shape in the top 10',
    "position": 'precision@10 of "a red circle on the left" queries',
    "size": 'precision@10 of "a large red circle" queries',
    "files_text_to_image": "text_to_image on real JPEG/PNG files (1-2 shapes, some EXIF-rotated)",
    "files_position": "position on those real files (informational: few relevant files per query)",
    "free_text_to_image": "text_to_image on free shapes (anywhere, any size) in frames of 240-600 px",
    "free_image_to_image": "image_to_image on those free shapes",
}


@dataclass(frozen=True)
class Gallery:
    """Labelled held-out images and their embeddings."""

    scenes: list[world.Scene]
    vectors: Matrix


def balanced_scenes(seed: int, copies: int) -> list[world.Scene]:
    """Single-shape scenes, `copies` of every colour x shape x size x position combination."""
    rng = np.random.default_rng(seed)
    combos = itertools.product(world.COLORS, world.SHAPES, world.SIZES, world.POSITIONS)
    return [
        world.sample_scene(rng, n_shapes=1, color=c, shape=s, size=z, position=p)
        for c, s, z, p in combos
        for _ in range(copies)
    ]


def make_gallery(encoder: Encoder, seed: int, copies: int = 6) -> Gallery:
    """Render a balanced gallery at random sizes and aspect ratios, with defects, and embed it."""
    scenes = balanced_scenes(seed, copies)
    rng = np.random.default_rng([seed, 1])
    images = [world.render(scene, rng, world.sample_image_size(rng, (64, 320))) for scene in scenes]
    return Gallery(scenes, encoder.encode_images(images, batch_size=128))


def make_free_gallery(encoder: Encoder, seed: int, copies: int = 5) -> Gallery:
    """Free shapes (anywhere, any size) in large frames, `copies` per colour x shape, drawn with the
    training's variety of proportions and shades (`world.Look`), and embedded."""
    rng = np.random.default_rng([seed, 2])
    scenes = [
        world.sample_free_scene(rng, color=c, shape=s)
        for c, s in itertools.product(world.COLORS, world.SHAPES)
        for _ in range(copies)
    ]
    look = world.Look()
    sizes = [world.sample_image_size(rng, (240, 600)) for _ in scenes]
    images = [world.render(scene, rng, size, look=look) for scene, size in zip(scenes, sizes, strict=True)]
    return Gallery(scenes, encoder.encode_images(images, batch_size=64))


def _unit(rows: Matrix) -> Matrix:
    return (rows / np.linalg.norm(rows, axis=-1, keepdims=True)).astype(np.float32)


def _top_k(queries: Matrix, gallery: Matrix, k: int, exclude: Sequence[int] | None = None) -> np.ndarray:
    """Indices of the k best gallery rows per query, best first; `exclude[i]` is dropped for query i."""
    scores = queries @ gallery.T
    if exclude is not None:
        scores[np.arange(len(queries)), np.asarray(exclude)] = -np.inf
    return np.argsort(-scores, axis=1, kind="stable")[:, :k]


def precision_at_k(
    encoder: Encoder, gallery: Gallery, queries: dict[str, dict[str, str]], k: int = 10
) -> float:
    """Mean precision@k of text queries; relevance = a shape with all the query's attributes.

    The denominator is min(k, number of relevant images), so a perfect ranking always scores 1.
    """
    texts = list(queries)
    top = _top_k(encoder.encode_texts(texts), gallery.vectors, k)
    scores = []
    for row, text in zip(top, texts, strict=True):
        relevant = [scene.matches(**queries[text]) for scene in gallery.scenes]
        hits = sum(relevant[i] for i in row)
        scores.append(hits / min(k, max(1, sum(relevant))))
    return float(np.mean(scores))


def color_shape_queries() -> dict[str, dict[str, str]]:
    """'a red circle' for every colour and shape."""
    return {f"{_a(c)} {c} {s}": {"color": c, "shape": s} for c in world.COLORS for s in world.SHAPES}


def position_queries() -> dict[str, dict[str, str]]:
    """'a red circle on the left' for every colour, shape and position."""
    return {
        f"{_a(c)} {c} {s} {POSITION_WORDS[p]}": {"color": c, "shape": s, "position": p}
        for c in world.COLORS
        for s in world.SHAPES
        for p in world.POSITIONS
    }


def size_queries() -> dict[str, dict[str, str]]:
    """'a large red circle' for every size, colour and shape."""
    return {
        f"a {z} {c} {s}": {"color": c, "shape": s, "size": z}
        for z in world.SIZES
        for c in world.COLORS
        for s in world.SHAPES
    }


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def image_to_image(gallery: Gallery, k: int = 5) -> float:
    """Share of each image's k nearest other images that have its colour and shape."""
    top = _top_k(gallery.vectors, gallery.vectors, k, exclude=range(len(gallery.scenes)))
    same = [_same_kind(gallery.scenes[i], gallery.scenes[j]) for i, row in enumerate(top) for j in row]
    return float(np.mean(same))


def _same_kind(a: world.Scene, b: world.Scene) -> bool:
    return b.matches(color=a.shapes[0].color, shape=a.shapes[0].shape)


def algebra(encoder: Encoder, gallery: Gallery, per_combo: int = 2, k: int = 5) -> float:
    """Mean precision@k of B-coloured S for image(A-coloured S) - text(A) + text(B), all A != B."""
    colors = list(world.COLORS)
    words = dict(zip(colors, encoder.encode_texts(colors), strict=True))
    sources, queries, targets = [], [], []
    taken: dict[tuple[str, str], int] = {}
    for index in np.random.default_rng(0).permutation(len(gallery.scenes)):
        spec = gallery.scenes[index].shapes[0]
        key = (spec.color, spec.shape)
        if taken.setdefault(key, 0) == per_combo:
            continue
        taken[key] += 1
        for other in colors:
            if other != spec.color:
                sources.append(int(index))
                queries.append(gallery.vectors[index] - words[spec.color] + words[other])
                targets.append({"color": other, "shape": spec.shape})
    top = _top_k(_unit(np.stack(queries)), gallery.vectors, k, exclude=sources)
    hits = [
        [gallery.scenes[j].matches(**target) for j in row] for row, target in zip(top, targets, strict=True)
    ]
    return float(np.mean(hits))


def subtraction(encoder: Encoder, gallery: Gallery, k: int = 10) -> float:
    """Share of text(shape) - text(colour) queries whose top k hold no shape of that colour."""
    pairs = list(itertools.product(world.SHAPES, world.COLORS))
    shapes = encoder.encode_texts([s for s, _ in pairs])
    colors = encoder.encode_texts([c for _, c in pairs])
    top = _top_k(_unit(shapes - colors), gallery.vectors, k)
    clean = [
        not any(gallery.scenes[j].matches(color=c) for j in row)
        for row, (_, c) in zip(top, pairs, strict=True)
    ]
    return float(np.mean(clean))


def load_upright(path: Path) -> Image.Image:
    """Decode an image file as RGB, turned upright by its EXIF orientation."""
    with Image.open(path) as img:
        return ImageOps.exif_transpose(img).convert("RGB")


def evaluate_files(encoder: Encoder, folder: Path, seed: int, n: int = 600) -> tuple[float, float]:
    """Write n real files, read them back upright; return their (colour+shape, position) precision."""
    records = world.write_dataset(folder, n, seed)
    images = [load_upright(record.path) for record in records]
    gallery = Gallery([record.scene for record in records], encoder.encode_images(images, batch_size=64))
    return (
        precision_at_k(encoder, gallery, color_shape_queries()),
        precision_at_k(encoder, gallery, position_queries()),
    )


def evaluate(
    encoder: Encoder,
    *,
    seed: int,
    files_dir: Path,
    copies: int = 6,
    n_files: int = 600,
    progress: Callable[[str], None] | None = None,
) -> ShapesMetrics:
    """Compute every metric on held-out data.

    Args:
        encoder: the model under test.
        seed: seed of the held-out scenes (use one the model did not train on).
        files_dir: empty folder to write the real image files into.
        copies: gallery images per colour x shape x size x position combination.
        n_files: number of real files for the file-path metrics.
        progress: optional callback told which stage is running.
    """
    say = progress or (lambda _: None)
    say("rendering and embedding the gallery")
    gallery = make_gallery(encoder, seed, copies)
    say("writing and reading real files")
    files_text, files_position = evaluate_files(encoder, files_dir, seed + 1, n_files)
    say("rendering and embedding free shapes in large frames")
    free = make_free_gallery(encoder, seed)
    return ShapesMetrics(
        text_to_image=precision_at_k(encoder, gallery, color_shape_queries()),
        image_to_image=image_to_image(gallery),
        algebra=algebra(encoder, gallery),
        subtraction=subtraction(encoder, gallery),
        position=precision_at_k(encoder, gallery, position_queries()),
        size=precision_at_k(encoder, gallery, size_queries()),
        files_text_to_image=files_text,
        files_position=files_position,
        free_text_to_image=precision_at_k(encoder, free, color_shape_queries()),
        free_image_to_image=image_to_image(free),
    )
