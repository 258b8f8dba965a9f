"""Shape pictures drawn with matplotlib patches on an Agg canvas (supersampled, Lanczos-downscaled)."""

from __future__ import annotations

import math

import matplotlib

matplotlib.use("Agg")

import numpy as np
from matplotlib import patches
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from PIL import Image, ImageFilter

from benchmarks.foreign_shapes import ForeignScene


def _background(scene: ForeignScene, rng: np.random.Generator) -> np.ndarray:
    """An (h, w, 3) float image in [0, 1], shown with imshow under the shape."""
    h, w = scene.height // 4 + 2, scene.width // 4 + 2  # imshow interpolates it up to the frame
    base = np.array(scene.bg, dtype=float) / 255
    if scene.background == "plain":
        return np.broadcast_to(base, (h, w, 3)).copy()
    if scene.background == "gradient":
        t = np.linspace(0, 1, w)[None, :] if rng.random() < 0.5 else np.linspace(0, 1, h)[:, None]
        t = np.broadcast_to(t, (h, w))[..., None]
        return base + t * (np.array(scene.bg2, dtype=float) / 255 - base)
    return np.clip(base + rng.normal(0, rng.uniform(0.03, 0.09), (h, w, 3)), 0, 1)


def _patch(scene: ForeignScene, rng: np.random.Generator) -> patches.Patch:
    x, y, r = scene.cx, scene.cy, scene.radius
    turn = math.radians(scene.rotation)
    style = {"facecolor": np.array(scene.rgb) / 255, "edgecolor": "none", "antialiased": True}
    if scene.shape == "circle":
        return patches.Circle((x, y), r, **style)
    if scene.shape == "square":  # RegularPolygon's radius is the circumradius: a side of ~1.2 r
        return patches.RegularPolygon((x, y), 4, radius=r * 0.86, orientation=math.pi / 4 + turn, **style)
    if scene.shape == "triangle":  # y grows downwards: orientation pi points the apex up
        return patches.RegularPolygon((x, y), 3, radius=r, orientation=math.pi + turn, **style)
    if scene.shape == "star":
        inner = rng.uniform(0.36, 0.5)
        angles = [-math.pi / 2 + k * math.pi / 5 + turn for k in range(10)]
        radii = [r if k % 2 == 0 else r * inner for k in range(10)]
        return patches.Polygon(
            [(x + q * math.cos(a), y + q * math.sin(a)) for q, a in zip(radii, angles, strict=True)], **style
        )
    arm = rng.uniform(0.3, 0.42) * r  # half the arm's width
    plus = [(r, arm), (arm, arm), (arm, r), (-arm, r), (-arm, arm), (-r, arm)]
    plus += [(-px, -py) for px, py in plus]
    cos, sin = math.cos(turn), math.sin(turn)
    return patches.Polygon([(x + px * cos - py * sin, y + px * sin + py * cos) for px, py in plus], **style)


def render(scene: ForeignScene) -> Image.Image:
    """Draw the scene at `supersample` times its size, then downscale with Lanczos and maybe blur."""
    rng = np.random.default_rng(scene.seed)
    ss, dpi = scene.supersample, 100
    fig = Figure(figsize=(scene.width * ss / dpi, scene.height * ss / dpi), dpi=dpi)
    canvas = FigureCanvasAgg(fig)
    ax = fig.add_axes((0, 0, 1, 1))
    ax.set_axis_off()
    ax.imshow(_background(scene, rng), extent=(0, scene.width, scene.height, 0), interpolation="bilinear")
    ax.add_patch(_patch(scene, rng))
    ax.set_xlim(0, scene.width)
    ax.set_ylim(scene.height, 0)
    canvas.draw()
    big = Image.fromarray(np.asarray(canvas.buffer_rgba())[..., :3])
    image = big.resize((scene.width, scene.height), Image.Resampling.LANCZOS)
    if scene.blur:
        image = image.filter(ImageFilter.GaussianBlur(scene.blur))
    return image
