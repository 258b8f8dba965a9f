"""Tier 1: decoding files safely (orientation, modes, broken input)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.encoders.images import open_image
from clipsearch.errors import ImageError


def test_exif_orientation_is_applied(tmp_path: Path) -> None:
    upright = Image.new("RGB", (60, 30), "white")
    upright.paste((255, 0, 0), (0, 0, 30, 30))  # red on the left half
    stored = upright.transpose(Image.Transpose.ROTATE_90)  # 30x60 on disk
    exif = Image.Exif()
    exif[0x0112] = 6  # viewer must rotate 90° clockwise
    stored.save(tmp_path / "r.jpg", exif=exif, quality=95)
    img = open_image(tmp_path / "r.jpg")
    assert img.size == (60, 30)
    left, right = np.asarray(img)[15, 5], np.asarray(img)[15, 55]
    assert left[0] > 200 and left[1] < 60 and right.min() > 200


def test_transparency_becomes_white_and_16_bit_is_scaled(tmp_path: Path) -> None:
    Image.new("RGBA", (8, 8), (0, 0, 255, 0)).save(tmp_path / "t.png")
    assert open_image(tmp_path / "t.png").getpixel((3, 3)) == (255, 255, 255)
    Image.fromarray(np.full((8, 8), 65535, dtype=np.uint16)).save(tmp_path / "g16.png")
    img = open_image(tmp_path / "g16.png")
    assert img.mode == "RGB" and img.getpixel((0, 0)) == (255, 255, 255)


def test_jpeg_draft_keeps_at_least_min_side(tmp_path: Path) -> None:
    Image.new("RGB", (4000, 3000), "green").save(tmp_path / "big.jpg")
    img = open_image(tmp_path / "big.jpg", min_side=448)
    assert 448 <= min(img.size) < 3000


@pytest.mark.parametrize(
    ("content", "reason"),
    [(b"", "empty"), (b"this is not an image", "not-an-image")],
)
def test_bad_bytes_are_typed_errors(tmp_path: Path, content: bytes, reason: str) -> None:
    (tmp_path / "f.jpg").write_bytes(content)
    with pytest.raises(ImageError) as info:
        open_image(tmp_path / "f.jpg")
    assert info.value.reason == reason


def test_truncated_file_is_corrupt(tmp_path: Path) -> None:
    Image.effect_noise((200, 200), 50).convert("RGB").save(tmp_path / "n.png")
    data = (tmp_path / "n.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])
    with pytest.raises(ImageError) as info:
        open_image(tmp_path / "cut.png")
    assert info.value.reason == "corrupt"


def test_pixel_limit_checked_before_decoding(tmp_path: Path) -> None:
    Image.new("RGB", (100, 100)).save(tmp_path / "p.png")
    with pytest.raises(ImageError) as info:
        open_image(tmp_path / "p.png", max_pixels=5000)
    assert info.value.reason == "too-large"


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as info:
        open_image(tmp_path / "gone.jpg")
    assert info.value.reason == "missing"


def test_jpeg_beyond_pillows_own_limit_is_decoded_at_draft_size(tmp_path: Path) -> None:
    """Pillow refuses 179 MP in Image.open; our limit counts a JPEG at its draft size, and only ours."""
    from clipsearch.encoders.images import read_header

    Image.new("RGB", (14000, 13000), (40, 90, 160)).save(tmp_path / "huge.jpg", quality=80)  # 182 MP
    with pytest.raises(Image.DecompressionBombError):  # the limit we must not run into
        Image.open(tmp_path / "huge.jpg")
    img = open_image(tmp_path / "huge.jpg", min_side=448)
    assert img.size == (1750, 1625)  # 1/8 scale, straight from the DCT coefficients
    assert img.getpixel((800, 800)) == pytest.approx((40, 90, 160), abs=3)
    assert read_header((tmp_path / "huge.jpg").read_bytes())[:2] == (14000, 13000)
    with pytest.raises(ImageError) as info:  # without draft: 182 MP, over our limit
        open_image(tmp_path / "huge.jpg")
    assert info.value.reason == "too-large" and "50,000,000" in info.value.detail
    with pytest.raises(ImageError) as info:  # a limit below the draft size still applies
        open_image(tmp_path / "huge.jpg", min_side=448, max_pixels=2_000_000)
    assert info.value.reason == "too-large"


def test_pixel_limit_above_pillows_is_ours_to_set(tmp_path: Path) -> None:
    """A PNG over Pillow's 89.5-MP warning level decodes when the caller's limit allows it."""
    Image.new("L", (10000, 9000)).save(tmp_path / "wide.png")  # 90 MP of one grey, ~90 KB
    with pytest.raises(ImageError) as info:
        open_image(tmp_path / "wide.png")
    assert info.value.reason == "too-large"
    assert open_image(tmp_path / "wide.png", max_pixels=100_000_000).size == (10000, 9000)


# The peak is the process's VmHWM: ru_maxrss would start at the parent's peak (Linux carries it
# over fork and exec), and the test process holds torch.
PEAK_SCRIPT = """
import sys
import numpy as np
from PIL import Image
from clipsearch.encoders.images import open_image
def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))
data = open(sys.argv[1], "rb").read()
before = peak()
img = open_image(data)
print(img.mode, *img.size, peak() - before)
"""


def decoding_peak_per_pixel(path: Path) -> float:
    """Bytes of peak memory per pixel that decoding ``path`` takes, measured in a fresh interpreter."""
    import subprocess
    import sys

    out = subprocess.run(
        [sys.executable, "-c", PEAK_SCRIPT, str(path)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0, out.stderr
    mode, width, height, peak = out.stdout.split()
    assert mode == "RGB"
    return int(peak) / (int(width) * int(height))


@pytest.mark.parametrize("mode", ["RGB", "L", "I;16", "I", "RGBA"])
def test_decoding_memory_per_pixel_does_not_depend_on_the_mode(tmp_path: Path, mode: str) -> None:
    """16 MP, bytes a pixel: RGB 4.4 (Pillow keeps RGB in 4), L 5.3, I;16 7.8, RGBA 8.4, I 9.9.

    Before: float64 copies of 16- and 32-bit greyscale took 26 and 28, an RGBA source's copies 13.4.
    """
    ramp = np.arange(4000, dtype=np.uint32)[None, :] * 9 + np.arange(4000, dtype=np.uint32)[:, None] * 3
    path = tmp_path / ("big.tif" if mode == "I" else "big.png")  # PNG holds no 32-bit greyscale
    if mode in ("I;16", "I"):
        Image.fromarray((ramp % 65536).astype(np.uint16 if mode == "I;16" else np.int32)).save(path)
    else:
        grey = Image.fromarray((ramp % 256).astype(np.uint8))
        (grey if mode == "L" else Image.merge(mode, [grey] * len(mode))).save(path)
    assert Image.open(path).mode == mode
    assert decoding_peak_per_pixel(path) <= 12
