"""Shape pictures drawn by programs that share no drawing code with `clipsearch.shapes.world`.

The shapes model is trained on `world`'s Pillow drawings; these renderers test whether it learnt
*shapes* or that program's pixels. Both draw the same vocabulary (8 colours x 5 shapes, one shape per
picture) from a `ForeignScene`, with the variety of pictures made elsewhere: colours drawn from each
colour name's range (never `world.COLORS`' exact RGB), shapes anywhere in the frame at 10-40% of the
short side, slight rotation, supersampled anti-aliasing, plain / gradient / noise backgrounds, frames
of 4:3, 1:1, 16:9 and 3:4 at 320-800 px, ~30% blurred, saved as JPEG at quality 70-92.

- `mpl`: matplotlib patches on an Agg canvas, downscaled with Lanczos (Pillow).
- `skdraw`: scikit-image `draw` polygons and discs on a numpy canvas, downscaled with
  `skimage.transform.resize` (Gaussian anti-aliasing), blurred with `skimage.filters.gaussian`.

Each renderer has its own geometry (star depth, cross arm width, square proportion) and its own
background painting; they share only the scene sampler below. Never train or tune on their pictures.
Needs the dev dependencies (matplotlib, scikit-image).
"""

from __future__ import annotations

import colorsys
import hashlib
import json
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np
from PIL import Image

COLOR_NAMES = ("red", "green", "blue", "yellow", "purple", "orange", "white", "black")
SHAPE_NAMES = ("circle", "square", "triangle", "star", "cross")
# What a person would call the colour, as HSV ranges: hue in degrees, saturation and value in [0, 1].
COLOR_RANGES: dict[str, tuple[tuple[float, float], tuple[float, float], tuple[float, float]]] = {
    "red": ((-8, 6), (0.75, 1.0), (0.72, 1.0)),
    "orange": ((22, 34), (0.8, 1.0), (0.85, 1.0)),
    "yellow": ((47, 57), (0.72, 1.0), (0.85, 1.0)),
    "green": ((100, 145), (0.55, 0.9), (0.45, 0.8)),
    "blue": ((212, 235), (0.7, 0.95), (0.65, 0.95)),
    "purple": ((268, 292), (0.5, 0.8), (0.5, 0.8)),
    "white": ((0, 360), (0.0, 0.05), (0.93, 1.0)),
    "black": ((0, 360), (0.0, 0.3), (0.0, 0.12)),
}
ASPECTS = ((4, 3), (1, 1), (16, 9), (3, 4))
BACKGROUNDS = ("plain", "gradient", "noise")
RGB = tuple[int, int, int]


@dataclass(frozen=True)
class ForeignScene:
    """One picture: what to draw and how. Geometry is in output pixels, y down."""

    color: str
    rgb: RGB
    shape: str
    width: int
    height: int
    cx: float
    cy: float
    radius: float  # half the shape's extent
    rotation: float  # degrees, counter-clockwise
    background: str
    bg: RGB
    bg2: RGB
    blur: float  # Gaussian sigma in output pixels; 0: none
    quality: int  # JPEG quality
    supersample: int
    seed: int  # for the renderer's own randomness (noise, geometry details)


def _hsv_rgb(h: float, s: float, v: float) -> RGB:
    r, g, b = colorsys.hsv_to_rgb((h % 360) / 360, s, v)
    return (round(r * 255), round(g * 255), round(b * 255))


def sample_color(rng: np.random.Generator, name: str) -> RGB:
    """A shade from the colour name's range."""
    (h0, h1), (s0, s1), (v0, v1) = COLOR_RANGES[name]
    return _hsv_rgb(rng.uniform(h0, h1), rng.uniform(s0, s1), rng.uniform(v0, v1))


def _background_color(rng: np.random.Generator, avoid: RGB) -> RGB:
    """A muted colour (greys, pastels, dark tones) far from the shape's colour."""
    while True:
        rgb = _hsv_rgb(rng.uniform(0, 360), rng.uniform(0, 0.35), rng.uniform(0.2, 0.95))
        if math.dist(rgb, avoid) >= 120:
            return rgb


def sample_scene(rng: np.random.Generator, color: str, shape: str, seed: int) -> ForeignScene:
    """A random picture of one `color` `shape`, anywhere in a random frame."""
    aw, ah = ASPECTS[int(rng.integers(len(ASPECTS)))]
    long_side = int(rng.integers(320, 801))
    width, height = (
        (long_side, round(long_side * ah / aw)) if aw >= ah else (round(long_side * aw / ah), long_side)
    )
    radius = 0.5 * rng.uniform(0.10, 0.40) * min(width, height)
    margin = radius * 1.05 + 2
    cx, cy = rng.uniform(margin, width - margin), rng.uniform(margin, height - margin)
    rgb = sample_color(rng, color)
    return ForeignScene(
        color=color,
        rgb=rgb,
        shape=shape,
        width=width,
        height=height,
        cx=float(cx),
        cy=float(cy),
        radius=float(radius),
        rotation=float(rng.uniform(-12, 12)),
        background=BACKGROUNDS[int(rng.integers(len(BACKGROUNDS)))],
        bg=_background_color(rng, rgb),
        bg2=_background_color(rng, rgb),
        blur=float(rng.uniform(0.5, 1.6)) if rng.random() < 0.3 else 0.0,
        quality=int(rng.integers(70, 93)),
        supersample=int(rng.integers(2, 5)),
        seed=seed,
    )


def balanced_scenes(n: int, seed: int) -> list[ForeignScene]:
    """n scenes, every colour x shape equally often (n / 40 each, the remainder spread), shuffled."""
    rng = np.random.default_rng([seed, n])
    combos = [(c, s) for c in COLOR_NAMES for s in SHAPE_NAMES]
    wanted = [combos[i % len(combos)] for i in range(n)]
    order = rng.permutation(n)
    return [sample_scene(rng, *wanted[i], seed=seed * 100_000 + k) for k, i in enumerate(order)]


Renderer = Callable[[ForeignScene], Image.Image]


def renderers() -> dict[str, Renderer]:
    """The renderers by name (imported lazily: each needs its own dev dependency)."""
    from benchmarks.foreign_shapes import mpl, skdraw

    return {"matplotlib": mpl.render, "skimage": skdraw.render}


LABELS_FILE = "labels.json"


def code_fingerprint() -> str:
    """SHA-256 (first 16 hex digits) of the renderers' source files: pictures drawn by other code differ."""
    digest = hashlib.sha256()
    for path in sorted(Path(__file__).parent.glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:16]


def write_pictures(folder: Path, renderer: str, n: int, seed: int) -> dict[str, ForeignScene]:
    """Draw n pictures with one renderer into folder as JPEG files; return file name -> scene.

    A folder that already holds this renderer's n pictures of this seed, drawn by the same renderer
    code (a hash of this package's sources), is reused untouched.
    """
    folder.mkdir(parents=True, exist_ok=True)
    labels_path = folder / LABELS_FILE
    code = code_fingerprint()
    if labels_path.is_file():
        saved = json.loads(labels_path.read_text())
        if (saved.get("renderer"), saved.get("n"), saved.get("seed"), saved.get("code")) == (
            renderer,
            n,
            seed,
            code,
        ):
            return {
                name: ForeignScene(
                    **{**d, "rgb": tuple(d["rgb"]), "bg": tuple(d["bg"]), "bg2": tuple(d["bg2"])}
                )
                for name, d in saved["files"].items()
            }
    draw = renderers()[renderer]
    scenes = {}
    own_seed = seed * 10 + sorted(renderers()).index(renderer)  # each renderer draws other scenes
    for i, scene in enumerate(balanced_scenes(n, own_seed)):
        name = f"{i:04d}_{scene.color}-{scene.shape}.jpg"
        draw(scene).save(folder / name, format="JPEG", quality=scene.quality)
        scenes[name] = scene
    files = {name: asdict(scene) for name, scene in scenes.items()}
    saved = {"renderer": renderer, "n": n, "seed": seed, "code": code, "files": files}
    labels_path.write_text(json.dumps(saved, indent=1))
    return scenes
