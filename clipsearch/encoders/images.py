"""Decode one image file safely into an upright RGB PIL image, or raise a typed ImageError."""

from __future__ import annotations

import io
import os
import stat
import struct
from pathlib import Path
from typing import IO, NamedTuple

from PIL import Image, ImageFile, ImageOps, UnidentifiedImageError

from clipsearch.files import FileTooLargeError, NotRegularFileError, read_regular_file

#: File name extensions of the image formats decoded here (lower case, with the dot).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)

#: Images that would decode to more pixels than this are refused before decoding (decompression-bomb
#: guard). JPEGs count at their reduced ``draft`` size, so a 100-megapixel JPEG is fine, a PNG is not.
DEFAULT_MAX_PIXELS = 50_000_000

#: Image files holding more bytes than this are not read (unless the pixel limit allows more, see
#: ``max_file_bytes``): far above any photo's file, and a bound on what a runaway file can cost.
MAX_FILE_BYTES = 512 * 1024 * 1024

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
            This is the only pixel limit: Pillow's own (``Image.MAX_IMAGE_PIXELS``, 89.5 MP) is
            not consulted, and not changed either.
        min_side: if given, JPEGs are decoded at a reduced scale (``draft``) that keeps the
            shorter side at least this large; the model resizes further anyway.

    Raises:
        ImageError: with reason ``missing``, ``unreadable``, ``not-a-file``, ``empty``,
            ``not-an-image``, ``too-large`` or ``corrupt``.
    """
    from clipsearch.errors import ImageError

    _register_heif()
    if isinstance(source, bytes):
        data = source
    else:
        data = read_image_file(source, max_bytes=max_file_bytes(max_pixels))
    if not data:
        raise ImageError("empty", "the file is empty (0 bytes)")
    try:
        img = _open(io.BytesIO(data))
        width, height = img.size
        if min_side and img.format in ("JPEG", "MPO"):
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
    except Image.DecompressionBombError as exc:  # a plugin's own check while loading (TIFF tiles)
        raise ImageError("too-large", str(exc)) from exc
    except (OSError, SyntaxError, ValueError, EOFError, IndexError, TypeError) as exc:
        raise ImageError("corrupt", f"cannot decode: {exc}") from exc


def _open(fp: IO[bytes]) -> ImageFile.ImageFile:
    """``Image.open`` of a seekable binary file, without its process-wide decompression-bomb check.

    ``Image.open`` refuses anything over ``Image.MAX_IMAGE_PIXELS`` (warns over 89.5 MP, raises
    over 179 MP) before a JPEG's ``draft`` can shrink it; our callers apply their own limit
    instead. Setting that global (or a warnings filter) per call is no option: both are
    process-wide, and the web server decodes in several threads. So the format is identified as
    ``Image.open`` does, from the plugins Pillow registers (HEIF's included), minus the check.

    Raises:
        UnidentifiedImageError: no plugin recognises the bytes.
    """
    fp.seek(0)
    prefix = fp.read(16)
    tried: set[str] = set()
    for load_plugins in (Image.preinit, Image.init):
        load_plugins()
        for name in [f for f in Image.ID if f not in tried]:
            tried.add(name)
            factory, accept = Image.OPEN[name]
            result = accept(prefix) if accept else True
            if not result or isinstance(result, str):  # a str: "looks like it, but unsupported"
                continue
            fp.seek(0)
            try:
                return factory(fp, "")
            except (SyntaxError, IndexError, TypeError, struct.error):  # not this format after all
                continue
    raise UnidentifiedImageError("cannot identify image file")


def image_format(path: str | Path) -> str | None:
    """Pillow's name of the format of the image file at ``path`` ("JPEG", "PNG"...), from its header;
    None if it is not an image Pillow knows. Reads the header only, whatever the pixel count."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)  # a FIFO must not block
        with os.fdopen(fd, "rb") as fh:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                return None
            return _open(fh).format
    except (OSError, SyntaxError, ValueError, UnidentifiedImageError):
        return None


def max_file_bytes(max_pixels: int) -> int:
    """The most bytes an image file may hold to be read: ``MAX_FILE_BYTES``, or 8 per allowed pixel."""
    return max(MAX_FILE_BYTES, 8 * max_pixels)  # 8: uncompressed 16-bit RGBA, the largest usual


def read_image_file(path: str | Path, *, max_bytes: int = MAX_FILE_BYTES) -> bytes:
    """The bytes of an image file: a regular file of at most ``max_bytes``, read without blocking.

    Raises:
        ImageError: with reason ``missing``, ``not-an-image`` (a folder), ``not-a-file`` (a FIFO,
            device or socket: never read), ``too-large`` or ``unreadable``.
    """
    from clipsearch.errors import ImageError

    try:
        return read_regular_file(path, max_bytes)
    except FileNotFoundError as exc:
        raise ImageError("missing", "the file disappeared before it could be read") from exc
    except NotRegularFileError as exc:
        if exc.kind == "a folder":
            raise ImageError("not-an-image", "is a directory") from exc
        raise ImageError("not-a-file", f"{exc.kind}, not a regular file") from exc
    except FileTooLargeError as exc:
        raise ImageError(
            "too-large", f"the file holds {exc.size:,} bytes, more than the limit of {exc.limit:,} bytes"
        ) from exc
    except OSError as exc:
        raise ImageError("unreadable", f"cannot read: {exc.strerror or exc}") from exc


def _to_rgb(img: Image.Image) -> Image.Image:
    """Flatten any mode to RGB; transparency is composited over white.

    Memory stays near the source plus its RGB result whatever the mode (no float copies, no
    copy of an RGBA source): at most about 10 bytes a pixel.
    """
    if img.mode == "RGB":
        return img
    if img.mode == "P" and "transparency" in img.info:
        img = img.convert("RGBA")
    if img.mode in ("RGBA", "LA", "PA", "RGBa", "La"):
        rgba = img if img.mode == "RGBA" else img.convert("RGBA")
        background = Image.new("RGB", rgba.size, (255, 255, 255))
        background.paste(rgba, mask=rgba)  # an RGBA mask: its alpha band, without a copy of it
        return background
    if img.mode in _DEEP_GREY:
        return _deep_grey_to_8_bits(img).convert("RGB")
    return img.convert("RGB")


#: 16- and 32-bit integer greyscale modes, scaled (not clipped) to 8 bits.
_DEEP_GREY = ("I;16", "I;16B", "I;16L", "I;16N", "I")
#: Pixels of a deep greyscale image converted at once (as float64: 8 MB).
_BAND_PIXELS = 1 << 20


def _deep_grey_to_8_bits(img: Image.Image) -> Image.Image:
    """16/32-bit greyscale to 8 bits ("L"): scaled by the brightest pixel when it is over 255, so
    bright images do not clip to white. A band of rows at a time, so memory is the 8-bit result
    plus one band, never a float copy of the whole image."""
    import numpy as np

    width, height = img.size
    step = max(1, _BAND_PIXELS // max(1, width))
    bands = [(0, top, width, min(height, top + step)) for top in range(0, height, step)]
    peak = max((int(np.asarray(img.crop(box)).max()) for box in bands if box[3] > box[1]), default=0)
    out = np.empty((height, width), dtype=np.uint8)
    for box in bands:
        band = np.asarray(img.crop(box), dtype=np.float64)
        if peak > 255:
            band *= 255.0 / peak
        out[box[1] : box[3]] = band.clip(0, 255)  # truncated to uint8, as astype would
    return Image.fromarray(out)


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
        with _open(io.BytesIO(data)) as img:
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
