"""Shape pictures drawn with scikit-image's `draw` on a supersampled numpy canvas."""

from __future__ import annotations

import math

import numpy as np
from PIL import Image
from skimage import draw, filters, transform

from benchmarks.foreign_shapes import ForeignScene


def _background(scene: ForeignScene, rng: np.random.Generator) -> np.ndarray:
    """The (h, w, 3) float background in [0, 1], at output resolution."""
    h, w = scene.height, scene.width
    base = np.array(scene.bg, dtype=np.float32) / 255
    if scene.background == "plain":
        return np.broadcast_to(base, (h, w, 3)).copy()
    if scene.background == "gradient":  # radial, from a random point
        oy, ox = rng.uniform(0, h), rng.uniform(0, w)
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        t = np.hypot(yy - oy, xx - ox)
        t = (t / t.max())[..., None]
        return base + t * (np.array(scene.bg2, dtype=np.float32) / 255 - base)
    coarse = rng.normal(0, 1, (max(h // 40, 2), max(w // 40, 2), 3)).astype(np.float32)
    blotches = transform.resize(coarse, (h, w, 3), order=1)
    grain = rng.normal(0, 1, (h, w, 3)).astype(np.float32)
    return np.clip(base + 0.05 * blotches + rng.uniform(0.02, 0.07) * grain, 0, 1)


def _vertices(scene: ForeignScene, rng: np.random.Generator, ss: int) -> np.ndarray:
    """(n, 2) polygon vertices as (row, col) on the supersampled canvas."""
    r = scene.radius
    if scene.shape == "square":
        half = r * rng.uniform(0.78, 0.85)
        points = [(-half, -half), (half, -half), (half, half), (-half, half)]
    elif scene.shape == "triangle":  # apex up, base a little wider or narrower than equilateral
        spread = math.radians(rng.uniform(55, 65))
        points = [(0.0, -r), (r * math.sin(2 * spread), r * 0.75), (-r * math.sin(2 * spread), r * 0.75)]
    elif scene.shape == "star":
        inner = rng.uniform(0.42, 0.55)
        points = [
            (
                (r if k % 2 == 0 else r * inner) * math.sin(k * math.pi / 5),
                -(r if k % 2 == 0 else r * inner) * math.cos(k * math.pi / 5),
            )
            for k in range(10)
        ]
    else:
        arm = rng.uniform(0.25, 0.36) * r
        quarter = [(r, -arm), (r, arm), (arm, arm), (arm, r)]
        points = []
        for _ in range(4):  # turn the quarter by 90 degrees each time: (x, y) -> (-y, x)
            points += quarter
            quarter = [(-y, x) for x, y in quarter]
    turn = math.radians(-scene.rotation)
    cos, sin = math.cos(turn), math.sin(turn)
    xs = np.array([scene.cx + x * cos - y * sin for x, y in points]) * ss
    ys = np.array([scene.cy + x * sin + y * cos for x, y in points]) * ss
    return np.stack([ys, xs], axis=1)


def _coverage(scene: ForeignScene, rng: np.random.Generator) -> tuple[np.ndarray, int, int]:
    """The shape's anti-aliased coverage in [0, 1] over its bounding box, and the box's top-left corner.

    The shape is filled on a grid `supersample` times finer, then shrunk with anti-aliasing.
    """
    ss = scene.supersample
    pad = int(scene.radius * 1.1) + 3
    top, left = max(int(scene.cy) - pad, 0), max(int(scene.cx) - pad, 0)
    bottom, right = min(int(scene.cy) + pad, scene.height), min(int(scene.cx) + pad, scene.width)
    h, w = (bottom - top) * ss, (right - left) * ss
    mask = np.zeros((h, w), dtype=np.float32)
    if scene.shape == "circle":
        centre = ((scene.cy - top) * ss, (scene.cx - left) * ss)
        rows, cols = draw.disk(centre, scene.radius * ss, shape=(h, w))
    else:
        poly = _vertices(scene, rng, ss) - np.array([top * ss, left * ss])
        rows, cols = draw.polygon(poly[:, 0], poly[:, 1], shape=(h, w))
    mask[rows, cols] = 1.0
    small = transform.resize(mask, (bottom - top, right - left), order=1, anti_aliasing=True)
    return np.clip(small, 0, 1), top, left


def render(scene: ForeignScene) -> Image.Image:
    """Composite the supersampled shape over the background, then maybe blur."""
    rng = np.random.default_rng(scene.seed)
    canvas = _background(scene, rng)
    alpha, top, left = _coverage(scene, rng)
    box = canvas[top : top + alpha.shape[0], left : left + alpha.shape[1]]
    colour = np.array(scene.rgb, dtype=np.float32) / 255
    box += alpha[..., None] * (colour - box)
    if scene.blur:
        canvas = filters.gaussian(canvas, sigma=scene.blur, channel_axis=-1)
    return Image.fromarray((np.clip(canvas, 0, 1) * 255 + 0.5).astype(np.uint8))
