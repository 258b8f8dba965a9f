"""Seeded procedural generator of captioned shape images (the "shapes world").

A `Scene` holds one or two `ShapeSpec` (colour, shape, size, position) on a `Background`. `render`
draws a scene with Pillow at any size, with the variety real files have (anti-aliasing or not, JPEG
artifacts, blur, slight rotation); `Scene.caption` describes it in varied words; `write_dataset`
writes a folder of real JPEG/PNG files, some stored EXIF-rotated, and returns their labels.
"""

from __future__ import annotations

import colorsys
import io
import math
from collections.abc import Collection
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from PIL import Image, ImageDraw, ImageFilter

RGB = tuple[int, int, int]

COLORS: dict[str, RGB] = {
    "red": (220, 30, 35),
    "green": (40, 170, 60),
    "blue": (35, 75, 220),
    "yellow": (245, 215, 35),
    "purple": (135, 55, 185),
    "orange": (245, 135, 25),
    "white": (248, 248, 248),
    "black": (18, 18, 18),
}
SHAPES: tuple[str, ...] = ("circle", "square", "triangle", "star", "cross")
SIZES: tuple[str, ...] = ("small", "large")
POSITIONS: tuple[str, ...] = ("left", "right", "top", "bottom", "center")
BACKGROUND_KINDS: tuple[str, ...] = ("plain", "noisy", "gradient", "textured")
BACKGROUND_COLORS: dict[str, RGB] = {
    **COLORS,
    "grey": (128, 128, 128),
    "light grey": (200, 200, 200),
    "dark grey": (70, 70, 70),
    "cyan": (70, 200, 220),
    "pink": (250, 165, 195),
    "brown": (125, 80, 40),
    "beige": (230, 215, 180),
    "navy": (20, 30, 95),
    "teal": (25, 120, 120),
}
# A background colour must stay this far (RGB distance) from every shape colour to keep shapes visible.
_MIN_BACKGROUND_DISTANCE = 115.0
# Shape diameter as a fraction of the image's shorter side; the gap keeps "small" and "large" unambiguous.
_SIZE_FRACTION = {"small": (0.17, 0.22), "large": (0.30, 0.35)}
# A free shape ("anywhere", size "any") sits anywhere in the frame, at any size in this range; its
# captions never name a size or a position. Pictures made elsewhere place and size shapes freely.
FREE_SIZE, FREE_POSITION = "any", "anywhere"
_FREE_SIZE_FRACTION = (0.10, 0.42)
# Position cells are the plus-shaped five cells of a 3x3 grid.
_CELL_CENTRES = {
    "left": (1 / 6, 1 / 2),
    "right": (5 / 6, 1 / 2),
    "top": (1 / 2, 1 / 6),
    "bottom": (1 / 2, 5 / 6),
    "center": (1 / 2, 1 / 2),
}
_POSITION_JITTER = 0.03
_POSITION_PHRASES = {
    "left": ("on the left", "on the left side", "at the left"),
    "right": ("on the right", "on the right side", "at the right"),
    "top": ("at the top", "on the top", "at the top of the picture"),
    "bottom": ("at the bottom", "on the bottom", "at the bottom of the picture"),
    "center": ("in the center", "in the middle", "at the center"),
}
_PREFIXES = ("", "", "", "a photo of ", "a picture of ", "an image of ", "a drawing of ", "a rendering of ")
# Stored pixels are the upright image transposed by this; ImageOps.exif_transpose undoes it.
_EXIF_STORE_TRANSPOSE = {
    3: Image.Transpose.ROTATE_180,
    6: Image.Transpose.ROTATE_90,
    8: Image.Transpose.ROTATE_270,
}


@dataclass(frozen=True)
class Look:
    """How differently from the default drawing a shape may look: other programs' proportions and shades.

    Each range is sampled per shape; `render(..., look=None)` draws exactly as before (the held-out
    sets and the demo keep their pixels). Fields are (low, high) ranges unless said otherwise.
    """

    star_depth: tuple[float, float] = (0.36, 0.56)  # inner / outer radius of the star (default 0.45)
    cross_arm: tuple[float, float] = (0.2, 0.45)  # half the arm's width / the radius (default 0.3)
    triangle_width: tuple[float, float] = (0.85, 1.15)  # width scale of the triangle (default 1)
    hue: float = 8.0  # most degrees the colour's hue turns
    saturation: float = 0.15  # most relative change of saturation and of value
    value: float = 0.15


@dataclass(frozen=True)
class ShapeSpec:
    """One shape in a scene: every field is a word from the vocabulary."""

    color: str
    shape: str
    size: str
    position: str

    def matches(
        self,
        color: str | None = None,
        shape: str | None = None,
        size: str | None = None,
        position: str | None = None,
    ) -> bool:
        """Return True if every given attribute equals this shape's."""
        wanted = {"color": color, "shape": shape, "size": size, "position": position}
        return all(value is None or getattr(self, key) == value for key, value in wanted.items())


@dataclass(frozen=True)
class Background:
    """The scene background: a kind (plain, noisy, gradient, textured) and its named colour(s)."""

    kind: str
    color: str
    color2: str | None = None

    def phrase(self, rng: np.random.Generator) -> str:
        """Describe the background, e.g. "on a noisy grey background"."""
        if self.kind == "gradient":
            return f"on a {self.color} to {self.color2} gradient"
        adjective = {"plain": "", "noisy": "noisy ", "textured": str(rng.choice(["textured ", "patterned "]))}
        words = f"{adjective[self.kind]}{self.color} background"
        return f"on {_article(words)} {words}"


@dataclass(frozen=True)
class Scene:
    """One or two shapes on a background; the ground truth behind an image and its captions."""

    shapes: tuple[ShapeSpec, ...]
    background: Background

    def caption(self, rng: np.random.Generator, *, require: Collection[str] = ()) -> str:
        """Return a randomly worded, true description of the scene.

        Args:
            rng: source of randomness for the wording.
            require: attributes ("color", "shape", "size", "position", "background") the caption must
                mention; the others are mentioned at random.
        """
        phrases = [_describe(spec, rng, require, may_lead=i == 0) for i, spec in enumerate(self.shapes)]
        text = " and ".join(phrase for phrase, _ in phrases)
        if "background" in require or rng.random() < 0.12:
            text += " " + self.background.phrase(rng)
        leads_with_position = phrases[0][1]
        return text if leads_with_position else str(rng.choice(_PREFIXES)) + text

    def matches(self, **attributes: str | None) -> bool:
        """Return True if some shape in the scene has all the given attributes."""
        return any(spec.matches(**attributes) for spec in self.shapes)

    def to_dict(self) -> dict[str, Any]:
        """Return the labels as plain JSON-ready data."""
        shapes = [vars(spec).copy() for spec in self.shapes]
        return {"shapes": shapes, "background": vars(self.background).copy()}


@dataclass(frozen=True)
class DatasetRecord:
    """A file written by `write_dataset` and the scene it shows (upright, after EXIF transpose)."""

    path: Path
    scene: Scene
    size: tuple[int, int]
    orientation: int


def _article(word: str) -> str:
    return "an" if word[:1] in "aeiou" else "a"


def _describe(
    spec: ShapeSpec, rng: np.random.Generator, require: Collection[str], may_lead: bool
) -> tuple[str, bool]:
    """Describe one shape with a random subset of its attributes (always colour or shape).

    Returns the phrase and whether it starts with the position ("on the left, a red circle").
    """
    use_color = "color" in require or rng.random() < 0.85
    use_shape = "shape" in require or not use_color or rng.random() < 0.9
    sized = spec.size != FREE_SIZE and ("size" in require or rng.random() < 0.45)
    words = [spec.size] if sized else []
    if use_color:
        words.append(spec.color)
    article = str(rng.choice(["a", "one", ""], p=[0.75, 0.05, 0.2]))
    nouns = ["shape", "object", "thing"] + ([""] if article == "" else [])
    noun = spec.shape if use_shape else str(rng.choice(nouns))
    phrase = " ".join(word for word in (*words, noun) if word)
    if article:
        phrase = f"{_article(phrase) if article == 'a' else article} {phrase}"
    if spec.position == FREE_POSITION or ("position" not in require and rng.random() >= 0.5):
        return phrase, False
    where = str(rng.choice(_POSITION_PHRASES[spec.position]))
    if may_lead and rng.random() < 0.1:
        return f"{where}, {phrase}", True
    return f"{phrase} {where}", False


def _color_distance(a: RGB, b: RGB) -> float:
    return math.dist(a, b)


def _compatible(a: ShapeSpec, b: ShapeSpec) -> bool:
    """Whether two shapes can share a scene unambiguously and without overlapping."""
    # A centre shape sits 1/3 of the shorter side from its neighbours: only two small shapes fit apart.
    crowded = "center" in (a.position, b.position) and "large" in (a.size, b.size)
    return a.position != b.position and (a.color, a.shape) != (b.color, b.shape) and not crowded


def sample_background(
    rng: np.random.Generator, shape_colors: Collection[str], kind: str | None = None
) -> Background:
    """Pick a background whose colours are far from every shape colour."""
    allowed = [
        name
        for name, rgb in BACKGROUND_COLORS.items()
        if all(_color_distance(rgb, COLORS[c]) >= _MIN_BACKGROUND_DISTANCE for c in shape_colors)
    ]
    kind = kind or str(rng.choice(BACKGROUND_KINDS, p=[0.4, 0.2, 0.25, 0.15]))
    first, second = (str(name) for name in rng.choice(allowed, size=2, replace=False))
    return Background(kind, first, second if kind == "gradient" else None)


def sample_scene(
    rng: np.random.Generator,
    *,
    n_shapes: int | None = None,
    color: str | None = None,
    shape: str | None = None,
    size: str | None = None,
    position: str | None = None,
    background_kind: str | None = None,
) -> Scene:
    """Sample a random scene; the given attributes fix the first shape.

    Args:
        rng: source of randomness.
        n_shapes: 1 or 2; random (mostly 1) when None.
        color, shape, size, position: fixed attributes of the first shape.
        background_kind: one of BACKGROUND_KINDS; random when None.

    Raises:
        ValueError: n_shapes is not 1 or 2, or a second shape cannot fit beside the fixed first one.
    """
    if n_shapes not in (None, 1, 2):
        raise ValueError(f"n_shapes must be 1 or 2, not {n_shapes}")
    count = n_shapes or (1 if rng.random() < 0.65 else 2)
    if count == 2 and (size, position) == ("large", "center"):
        raise ValueError("a large shape in the center leaves no room for a second shape")
    fixed = {"color": color, "shape": shape, "size": size, "position": position}
    shapes = [_sample_spec(rng, **fixed)]
    while count == 2 and (shapes[0].size, shapes[0].position) == ("large", "center"):
        shapes = [_sample_spec(rng, **fixed)]
    while len(shapes) < count:
        candidate = _sample_spec(rng)
        if all(_compatible(candidate, other) for other in shapes):
            shapes.append(candidate)
    background = sample_background(rng, [s.color for s in shapes], background_kind)
    return Scene(tuple(shapes), background)


def sample_free_scene(
    rng: np.random.Generator,
    *,
    color: str | None = None,
    shape: str | None = None,
    background_kind: str | None = None,
) -> Scene:
    """One free shape (any size, anywhere in the frame) on a background; given attributes are fixed."""
    spec = ShapeSpec(
        color or str(rng.choice(tuple(COLORS))), shape or str(rng.choice(SHAPES)), FREE_SIZE, FREE_POSITION
    )
    return Scene((spec,), sample_background(rng, [spec.color], background_kind))


def _sample_spec(rng: np.random.Generator, **fixed: str | None) -> ShapeSpec:
    choices = {"color": tuple(COLORS), "shape": SHAPES, "size": SIZES, "position": POSITIONS}
    values = {key: fixed.get(key) or str(rng.choice(options)) for key, options in choices.items()}
    return ShapeSpec(**values)


def sample_image_size(
    rng: np.random.Generator, short_side: tuple[int, int] = (64, 256), max_aspect: float = 2.0
) -> tuple[int, int]:
    """Sample a (width, height) with the shorter side in range and aspect ratio up to max_aspect."""
    short = int(rng.integers(short_side[0], short_side[1] + 1))
    aspect = math.exp(rng.uniform(-math.log(max_aspect), math.log(max_aspect)))
    long_side = round(short * max(aspect, 1 / aspect))
    return (long_side, short) if aspect >= 1 else (short, long_side)


def _jitter(rgb: RGB, rng: np.random.Generator, amount: int) -> RGB:
    shifted = np.clip(np.asarray(rgb) + rng.integers(-amount, amount + 1, 3), 0, 255)
    return (int(shifted[0]), int(shifted[1]), int(shifted[2]))


def _background(bg: Background, rng: np.random.Generator, w: int, h: int) -> Image.Image:
    """Paint the background."""
    base = _jitter(BACKGROUND_COLORS[bg.color], rng, 12)
    if bg.kind == "plain":
        return Image.new("RGB", (w, h), base)
    ys, xs = np.arange(h, dtype=np.float32)[:, None], np.arange(w, dtype=np.float32)[None, :]
    arr = np.asarray(base, dtype=np.float32)
    if bg.kind == "gradient":
        end = np.asarray(_jitter(BACKGROUND_COLORS[str(bg.color2)], rng, 12), dtype=np.float32)
        angle = rng.uniform(0, 2 * math.pi)
        t = xs / w * math.cos(angle) + ys / h * math.sin(angle)
        t = (t - t.min()) / max(float(t.max() - t.min()), 1e-6)
        arr = arr + t[..., None] * (end - arr)
    elif bg.kind == "noisy":
        coarse = rng.standard_normal((max(h // 8, 2), max(w // 8, 2)), dtype=np.float32)
        blotches = np.asarray(Image.fromarray(coarse).resize((w, h), Image.Resampling.BILINEAR))
        fine = rng.standard_normal((h, w, 3), dtype=np.float32)
        arr = arr + rng.uniform(3, 15) * fine + rng.uniform(0, 20) * blotches[..., None]
    else:
        arr = arr + _pattern(rng, xs, ys)[..., None] * rng.choice([-1.0, 1.0]) * rng.uniform(12, 30)
    return Image.fromarray(np.clip(arr, 0, 255).astype(np.uint8))


def _pattern(rng: np.random.Generator, xs: np.ndarray, ys: np.ndarray) -> np.ndarray:
    """A 0/1 stripe, checker or dot pattern over the pixel grid, its period scaled to the image."""
    period = max(2.0, min(xs.size, ys.size) * rng.uniform(0.03, 0.12))
    kind = rng.integers(3)
    if kind == 0:
        angle = rng.uniform(0, math.pi)
        return (xs * math.cos(angle) + ys * math.sin(angle)) // period % 2
    if kind == 1:
        return (xs // period + ys // period) % 2
    return (np.hypot(xs % period - period / 2, ys % period - period / 2) < period / 4).astype(np.float32)


@dataclass(frozen=True)
class _Geometry:
    """A shape's proportions (see `Look`); the defaults are the generator's own drawing."""

    star_depth: float = 0.45
    cross_arm: float = 0.3
    triangle_width: float = 1.0

    @classmethod
    def sample(cls, look: Look, rng: np.random.Generator) -> _Geometry:
        ranges = (look.star_depth, look.cross_arm, look.triangle_width)
        return cls(*(float(rng.uniform(*bounds)) for bounds in ranges))


def _outline(
    shape: str, cx: float, cy: float, r: float, angle: float, geometry: _Geometry = _Geometry()
) -> list[tuple[float, float]]:
    """Polygon vertices of a shape of radius r centred at (cx, cy), rotated by angle radians."""
    stretch = 1.0
    if shape == "square":
        unit = [(math.sqrt(2) * 0.85, math.pi / 4 + k * math.pi / 2) for k in range(4)]
    elif shape == "triangle":
        unit = [(1.05, -math.pi / 2 + k * 2 * math.pi / 3) for k in range(3)]
        stretch = geometry.triangle_width
    elif shape == "star":
        unit = [
            (1.0 if k % 2 == 0 else geometry.star_depth, -math.pi / 2 + k * math.pi / 5) for k in range(10)
        ]
    else:  # cross: a plus sign with arms 2 * cross_arm * r wide
        arm = geometry.cross_arm
        corners = [(1.0, arm), (arm, arm), (arm, 1.0)]
        points = []
        for quarter in range(4):
            points += [(math.hypot(x, y), math.atan2(y, x) + quarter * math.pi / 2) for x, y in corners]
        unit = points
    flat = [(rho * math.cos(theta) * stretch, rho * math.sin(theta)) for rho, theta in unit]
    cos, sin = math.cos(angle), math.sin(angle)
    return [(cx + r * (x * cos - y * sin), cy + r * (x * sin + y * cos)) for x, y in flat]


def _shade(rgb: RGB, rng: np.random.Generator, look: Look) -> RGB:
    """Another shade of the same colour name: hue turned, saturation and value scaled (see `Look`)."""
    h, s, v = colorsys.rgb_to_hsv(*(c / 255 for c in rgb))
    h = (h + rng.uniform(-look.hue, look.hue) / 360) % 1.0
    s = min(1.0, s * rng.uniform(1 - look.saturation, 1 + look.saturation))
    v = min(1.0, v * rng.uniform(1 - look.value, 1 + look.value))
    r, g, b = colorsys.hsv_to_rgb(h, s, v)
    return _jitter((round(r * 255), round(g * 255), round(b * 255)), rng, 8)


def _place(spec: ShapeSpec, rng: np.random.Generator, w: int, h: int) -> tuple[float, float, float]:
    """Centre (x, y) and radius of a shape in a w x h frame, whole inside it."""
    if spec.size == FREE_SIZE:
        radius = 0.5 * rng.uniform(*_FREE_SIZE_FRACTION) * min(w, h)
    else:
        radius = 0.5 * rng.uniform(*_SIZE_FRACTION[spec.size]) * min(w, h)
    if spec.position == FREE_POSITION:
        return (
            float(rng.uniform(radius + 1, w - radius - 1)),
            float(rng.uniform(radius + 1, h - radius - 1)),
            radius,
        )
    fx, fy = _CELL_CENTRES[spec.position]
    jitter = rng.uniform(-_POSITION_JITTER, _POSITION_JITTER, 2)
    cx = float(np.clip((fx + jitter[0]) * w, radius + 1, w - radius - 1))
    cy = float(np.clip((fy + jitter[1]) * h, radius + 1, h - radius - 1))
    return cx, cy, radius


def _draw_shape(
    img: Image.Image, spec: ShapeSpec, rng: np.random.Generator, supersample: int, look: Look | None
) -> None:
    """Paint one shape onto img in place, anti-aliased by drawing its mask supersampled."""
    w, h = img.size
    cx, cy, radius = _place(spec, rng, w, h)
    box = (
        max(int(cx - radius) - 2, 0),
        max(int(cy - radius) - 2, 0),
        min(int(cx + radius) + 3, w),
        min(int(cy + radius) + 3, h),
    )
    s = supersample
    mask = Image.new("L", ((box[2] - box[0]) * s, (box[3] - box[1]) * s), 0)
    draw = ImageDraw.Draw(mask)
    lx, ly = (cx - box[0]) * s, (cy - box[1]) * s
    if spec.shape == "circle":
        draw.ellipse((lx - radius * s, ly - radius * s, lx + radius * s, ly + radius * s), fill=255)
    else:
        angle = math.radians(rng.uniform(-15, 15))
        geometry = _Geometry() if look is None else _Geometry.sample(look, rng)
        draw.polygon(_outline(spec.shape, lx, ly, radius * s, angle, geometry), fill=255)
    if s > 1:
        mask = mask.resize((box[2] - box[0], box[3] - box[1]), Image.Resampling.BOX)
    color = _jitter(COLORS[spec.color], rng, 18) if look is None else _shade(COLORS[spec.color], rng, look)
    img.paste(color, box, mask)


def _augment(img: Image.Image, rng: np.random.Generator, fill: RGB) -> Image.Image:
    """Apply the defects of real files: slight rotation, blur, sensor noise, JPEG artifacts."""
    if rng.random() < 0.25:
        img = img.rotate(rng.uniform(-5, 5), resample=Image.Resampling.BILINEAR, fillcolor=fill)
    if rng.random() < 0.3:
        img = img.filter(ImageFilter.GaussianBlur(rng.uniform(0.3, 1.0) * max(1.0, min(img.size) / 128)))
    if rng.random() < 0.15:
        noise = rng.standard_normal((img.height, img.width, 3), dtype=np.float32) * rng.uniform(2, 8)
        img = Image.fromarray(np.clip(np.asarray(img, dtype=np.float32) + noise, 0, 255).astype(np.uint8))
    if rng.random() < 0.4:
        img = jpeg_roundtrip(img, int(rng.integers(40, 96)))
    return img


def jpeg_roundtrip(img: Image.Image, quality: int) -> Image.Image:
    """Encode img as JPEG at the given quality and decode it again."""
    buffer = io.BytesIO()
    img.save(buffer, format="JPEG", quality=quality)
    buffer.seek(0)
    with Image.open(buffer) as decoded:
        return decoded.convert("RGB")


def render(
    scene: Scene,
    rng: np.random.Generator,
    size: tuple[int, int] = (128, 128),
    *,
    augment: bool = True,
    look: Look | None = None,
) -> Image.Image:
    """Draw a scene as an RGB image.

    Args:
        scene: what to draw.
        rng: source of randomness (exact placement, colour shades, texture, defects).
        size: (width, height) of the image; any aspect ratio works.
        augment: when True, vary anti-aliasing and add rotation, blur, noise and JPEG artifacts at
            random; when False, draw a clean anti-aliased image.
        look: vary the shapes' proportions and shades as other programs draw them (training);
            None draws the generator's own shapes (held-out sets, the demo).
    """
    w, h = size
    img = _background(scene.background, rng, w, h)
    supersample = int(rng.choice([1, 2, 4])) if augment else 4
    for spec in scene.shapes:
        _draw_shape(img, spec, rng, supersample, look)
    if augment:
        img = _augment(img, rng, BACKGROUND_COLORS[scene.background.color])
    return img


def dataset_image(
    seed: int, index: int, *, max_shapes: int = 2, short_side: tuple[int, int] = (96, 480)
) -> tuple[Scene, Image.Image]:
    """Return the scene and upright image number `index` of the dataset with this seed."""
    rng = np.random.default_rng([seed, index])
    scene = sample_scene(rng, n_shapes=int(rng.integers(1, max_shapes + 1)))
    return scene, render(scene, rng, sample_image_size(rng, short_side))


def write_dataset(
    out_dir: str | Path,
    n: int,
    seed: int,
    *,
    max_shapes: int = 2,
    short_side: tuple[int, int] = (96, 480),
    exif_fraction: float = 0.25,
    png_fraction: float = 0.35,
) -> list[DatasetRecord]:
    """Write n captioned scenes as real image files and return their labels.

    Files are PNG or JPEG (random quality) at varied sizes and aspect ratios; a share of the JPEGs
    store their pixels rotated with an EXIF Orientation tag (3, 6 or 8), so only a viewer that honours
    EXIF (e.g. PIL.ImageOps.exif_transpose) shows the scene upright.

    Args:
        out_dir: folder to write into (created if missing).
        n: number of images.
        seed: dataset seed; image i is `dataset_image(seed, i, ...)`.
        max_shapes: 1 or 2 shapes per image at most.
        short_side: range of the images' shorter side in pixels.
        exif_fraction: share of JPEGs stored EXIF-rotated.
        png_fraction: share of images written as PNG.
    """
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    records = []
    for index in range(n):
        scene, image = dataset_image(seed, index, max_shapes=max_shapes, short_side=short_side)
        rng = np.random.default_rng([seed, index, 1])
        slug = "_".join(f"{s.color}-{s.shape}" for s in scene.shapes)
        upright_size, orientation = image.size, 1
        if rng.random() < png_fraction:
            path = out / f"{index:04d}_{slug}.png"
            image.save(path, format="PNG")
        else:
            path = out / f"{index:04d}_{slug}.jpg"
            exif = Image.Exif()
            if rng.random() < exif_fraction:
                orientation = int(rng.choice(list(_EXIF_STORE_TRANSPOSE)))
                image = image.transpose(_EXIF_STORE_TRANSPOSE[orientation])
                exif[0x0112] = orientation
            image.save(path, format="JPEG", quality=int(rng.integers(60, 96)), exif=exif.tobytes())
        records.append(DatasetRecord(path, scene, upright_size, orientation))
    return records
