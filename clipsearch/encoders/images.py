"""Decode one image file safely into an upright RGB PIL image, or raise a typed ImageError."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import NamedTuple

from PIL import Image, ImageOps, UnidentifiedImageError

#: File name extensions of the image formats decoded here (lower case, with the dot).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)

#: Images that would decode to more pixels than this are refused before decoding (decompression-bomb
#: guard). JPEGs count at their reduced ``draft`` size, so a 100-megapixel JPEG is fine, a PNG is not.
DEFAULT_MAX_PIXELS = 50_000_000

_heif_registered = False


def _register_heif() -> None:
    global _heif_registered
    if _heif_registered:
        return
    _heif_registered = True
    try:
        import pillow_heif

        pillow_heif.register_heif_opener()
    except ImportError:  # optional: HEIC/AVIF files are then skipped as undecodable
        pass


def open_image(
    source: str | Path | bytes,
    *,
    max_pixels: int = DEFAULT_MAX_PIXELS,
    min_side: int | None = None,
) -> Image.Image:
    """Decode ``source`` (a path or the file's bytes) to an RGB image with EXIF orientation applied.

    Args:
        source: file path, or the file's content already read into memory.
        max_pixels: refuse images that would decode to more pixels than this (read from the header).
        min_side: if given, JPEGs are decoded at a reduced scale (``draft``) that keeps the
            shorter side at least this large; the model resizes further anyway.

    Raises:
        ImageError: with reason ``missing``, ``unreadable``, ``empty``, ``not-an-image``,
            ``too-large`` or ``corrupt``.
    """
    from clipsearch.errors import ImageError

    _register_heif()
    data = _read(source) if not isinstance(source, bytes) else source
    if not data:
        raise ImageError("empty", "the file is empty (0 bytes)")
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", Image.DecompressionBombWarning)
            img = Image.open(io.BytesIO(data))
            width, height = img.size
            if min_side and img.format == "JPEG":
                scale = min(width, height) / min_side
                if scale >= 2:  # decode at 1/2, 1/4 or 1/8 scale straight from the DCT coefficients
                    img.draft("RGB", (max(1, int(width / scale)), max(1, int(height / scale))))
            if img.size[0] * img.size[1] > max_pixels:  # checked on the header, before decoding
                raise ImageError(
                    "too-large", f"{width}x{height} pixels exceeds the limit of {max_pixels:,} pixels"
                )
            img.load()
            ImageOps.exif_transpose(img, in_place=True)  # without a copy when upright
            return _to_rgb(img)
    except ImageError:
        raise
    except UnidentifiedImageError as exc:
        raise ImageError("not-an-image", "not a recognised image format") from exc
    except (Image.DecompressionBombError, Image.DecompressionBombWarning) as exc:
        raise ImageError("too-large", str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise ImageError("corrupt", f"cannot decode: {exc}") from exc


def _read(path: str | Path) -> bytes:
    from clipsearch.errors import ImageError

    try:
        return Path(path).read_bytes()
    except FileNotFoundError as exc:
        raise ImageError("missing", "the file disappeared before it could be read") from exc
    except IsADirectoryError as exc:
        raise ImageError("not-an-image", "is a directory") from exc
    except OSError as exc:
        raise ImageError("unreadable", f"cannot read: {exc.strerror or exc}") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten any mode to RGB; transparency is composited over white."""
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba.getchannel("A"))
        return background
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        # 16/32-bit greyscale: scale to 8 bits instead of clipping everything above 255 to white
        import numpy as np

        arr = np.asarray(img, dtype=np.float64)
        peak = arr.max() if arr.size else 0
        scaled = (arr * (255.0 / peak) if peak > 255 else arr).clip(0, 255).astype("uint8")
        return Image.fromarray(scaled, "L").convert("RGB")
    return img.convert("RGB")


class Header(NamedTuple):
    """Facts read from a file's header without decoding its pixels."""

    width: int  # as displayed, i.e. after EXIF orientation
    height: int
    taken: float | None  # EXIF DateTimeOriginal (else DateTime) as a POSIX time


def read_header(data: bytes) -> Header:
    """Upright size and EXIF date of an image file's bytes (zeros/None where unreadable).

    EXIF times carry no time zone; they are read as UTC, so date filters may be off by the
    camera's UTC offset at a day's edges.
    """
    try:
        with Image.open(io.BytesIO(data)) as img:
            width, height = img.size
            exif = img.getexif()
            if exif.get(0x0112) in (5, 6, 7, 8):  # rotated a quarter turn: displayed sideways
                width, height = height, width
            value = exif.get_ifd(0x8769).get(0x9003) or exif.get(0x0132)
    except Exception:  # a header we cannot parse: the decoder reports the real problem
        return Header(0, 0, None)
    return Header(width, height, _exif_datetime(value))


def _exif_datetime(value: object) -> float | None:
    from datetime import datetime, timezone

    if not isinstance(value, str):
        return None
    try:
        when = datetime.strptime(value.strip("\x00 ")[:19], "%Y:%m:%d %H:%M:%S")
    except ValueError:
        return None
    return when.replace(tzinfo=timezone.utc).timestamp()
