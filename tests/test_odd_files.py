"""Real photo folders: a corpus of odd files written by Pillow, with the expected outcome per file."""

from __future__ import annotations

import json
import os
import resource
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw

from clipsearch.api import Index
from clipsearch.encoders.images import open_image
from clipsearch.errors import ImageError
from clipsearch.ingest.decode import prepare
from clipsearch.ingest.scan import FileRecord


def scene(size: tuple[int, int] = (96, 64)) -> Image.Image:
    img = Image.new("RGB", size, (30, 120, 200))
    ImageDraw.Draw(img).ellipse((10, 10, 50, 50), fill=(250, 200, 0))
    return img


def write_corpus(folder: Path) -> dict[str, str | None]:
    """Write every odd file; return file name -> expected skip reason (None: indexed)."""
    import pillow_heif

    pillow_heif.register_heif_opener()
    folder.mkdir(parents=True)
    expected: dict[str, str | None] = {}
    base = scene()

    def ok(name: str) -> Path:
        expected[name] = None
        return folder / name

    for orientation in range(1, 9):
        exif = Image.Exif()
        exif[0x0112] = orientation
        base.save(ok(f"exif-{orientation}.jpg"), exif=exif)
    base.save(ok("progressive.jpg"), progressive=True)
    base.convert("CMYK").save(ok("cmyk.jpg"))
    base.convert("P").save(ok("palette.png"))
    palette = base.convert("P")
    palette.info["transparency"] = 0
    palette.save(ok("palette-transparent.png"), transparency=0)
    rgba = base.convert("RGBA")
    rgba.putalpha(128)
    rgba.save(ok("rgba.png"))
    Image.fromarray((np.arange(96 * 64).reshape(64, 96) * 10).astype(np.uint16)).save(ok("sixteen-bit.png"))
    base.convert("L").save(ok("gray.png"))
    base.convert("LA").save(ok("gray-alpha.png"))
    frames = [scene(), Image.new("RGB", (96, 64), "red")]
    frames[0].save(ok("animated.gif"), save_all=True, append_images=frames[1:], duration=100, loop=0)
    frames[0].save(ok("animated.webp"), save_all=True, append_images=frames[1:], duration=100)
    base.save(ok("still.webp"))
    frames[0].save(ok("multipage.tif"), save_all=True, append_images=frames[1:])
    Image.fromarray((np.arange(96 * 64).reshape(64, 96) * 10).astype(np.uint16)).save(ok("sixteen-bit.tif"))
    base.convert("CMYK").save(ok("cmyk.tif"))
    base.save(ok("plain.bmp"))
    base.save(ok("phone.heic"))
    base.save(ok("modern.avif"))
    (folder / "name with spaces.png").write_bytes((folder / "gray.png").read_bytes())
    expected["name with spaces.png"] = None

    def bad(name: str, reason: str) -> Path:
        expected[name] = reason
        return folder / name

    full = (folder / "progressive.jpg").read_bytes()
    Image.effect_noise((300, 300), 60).convert("RGB").save(folder / "noise.jpg", quality=95)
    noise = (folder / "noise.jpg").read_bytes()
    (folder / "noise.jpg").unlink()
    bad("truncated.jpg", "corrupt").write_bytes(noise[: len(noise) // 3])
    png = bytearray((folder / "rgba.png").read_bytes())
    png[60:120] = b"\0" * 60
    bad("damaged.png", "corrupt").write_bytes(bytes(png))
    bad("empty.jpg", "empty").write_bytes(b"")
    bad("notes.png", "not-an-image").write_text("just text with an image extension")
    bad("page.jpg", "not-an-image").write_bytes(b"%PDF-1.4\n" + full[:50])
    Image.new("L", (8000, 7000)).save(bad("bomb.png", "too-large"))  # 56 MP, compresses to ~50 KB
    return expected


def test_every_odd_file_is_indexed_or_skipped_with_its_reason(tmp_path, tiny_encoder) -> None:
    folder = tmp_path / "odd"
    expected = write_corpus(folder)
    started = time.monotonic()
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        report = idx.sync([str(folder)])
        skipped = {Path(p).name: reason.split(":")[0] for p, reason in idx.catalog.skipped()}
        indexed = {Path(p).name for p in idx.catalog.files_under(str(folder)) if Path(p).name not in skipped}
        sizes = {
            Path(h.path).name: (h.width, h.height) for h in idx.search_text("x", k=100)
        }  # as displayed: EXIF orientations 5-8 turn the stored 96x64 picture sideways
    assert sizes["exif-1.jpg"] == (96, 64) and sizes["exif-6.jpg"] == (64, 96)
    assert time.monotonic() - started < 60  # the 56-megapixel PNG is refused from its header
    assert skipped == {name: reason for name, reason in expected.items() if reason}
    assert indexed == {name for name, reason in expected.items() if reason is None}
    assert report.skip_reasons == {"corrupt": 2, "empty": 1, "not-an-image": 2, "too-large": 1}


@pytest.mark.parametrize("orientation", range(1, 9))
def test_every_exif_orientation_decodes_upright(tmp_path: Path, orientation: int) -> None:
    upright = scene((90, 60))
    transpose = {
        2: Image.Transpose.FLIP_LEFT_RIGHT,
        3: Image.Transpose.ROTATE_180,
        4: Image.Transpose.FLIP_TOP_BOTTOM,
        5: Image.Transpose.TRANSPOSE,
        6: Image.Transpose.ROTATE_90,
        7: Image.Transpose.TRANSVERSE,
        8: Image.Transpose.ROTATE_270,
    }
    stored = upright.transpose(transpose[orientation]) if orientation in transpose else upright
    exif = Image.Exif()
    exif[0x0112] = orientation
    stored.save(tmp_path / "o.png", exif=exif)  # PNG: lossless, so pixels compare exactly
    decoded = open_image(tmp_path / "o.png")
    assert decoded.size == upright.size
    assert np.array_equal(np.asarray(decoded), np.asarray(upright))


def test_file_vanishing_between_scan_and_decode(tmp_path: Path) -> None:
    path = tmp_path / "gone.jpg"
    scene().save(path)
    st = path.stat()
    record = FileRecord(str(path), st.st_size, st.st_mtime_ns)
    path.unlink()
    prep = prepare(record, is_known=lambda _: False, preprocess=lambda im: im, min_side=64, max_pixels=10**8)
    assert isinstance(prep.error, ImageError) and prep.error.reason == "missing"


@pytest.mark.skipif(os.geteuid() == 0, reason="root reads files whatever their permissions")
def test_unreadable_file(tmp_path: Path) -> None:
    path = tmp_path / "secret.jpg"
    scene().save(path)
    path.chmod(0)
    with pytest.raises(ImageError) as info:
        open_image(path)
    assert info.value.reason == "unreadable"


def test_big_jpeg_is_decoded_reduced_not_refused(tmp_path: Path) -> None:
    Image.new("RGB", (9000, 6000), "green").save(tmp_path / "panorama.jpg", quality=50)  # 54 MP
    img = open_image(tmp_path / "panorama.jpg", min_side=448)
    assert 448 <= min(img.size) <= 1000
    with pytest.raises(ImageError):
        open_image(tmp_path / "panorama.jpg")  # without draft it would decode all 54 MP: refused


@pytest.mark.slow
def test_skips_cross_process_boundaries(tmp_path, tiny_encoder) -> None:
    """Enough files for worker processes; the skipped ones' errors travel back intact."""
    from clipsearch.ingest.decode import PROCESS_THRESHOLD

    folder = tmp_path / "many"
    folder.mkdir()
    for i in range(PROCESS_THRESHOLD + 6):
        scene((64 + i, 48)).save(folder / f"ok{i}.png")
    (folder / "broken.jpg").write_bytes(b"\xff\xd8\xff not really")
    (folder / "empty.png").write_bytes(b"")
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        report = idx.sync([str(folder)])
    assert report.added == PROCESS_THRESHOLD + 6
    assert report.skip_reasons == {"not-an-image": 1, "empty": 1}


def test_jpeg_over_pillows_limit_is_indexed_and_searchable(tmp_path, tiny_encoder) -> None:
    """95 MP: over Pillow's 89.5-MP warning level, which must not refuse it before the draft step."""
    from typer.testing import CliRunner

    from clipsearch.cli import app

    folder = tmp_path / "big"
    folder.mkdir()
    Image.new("RGB", (10000, 9500), (40, 90, 160)).save(folder / "panorama.jpg", quality=80)
    scene((300, 200)).save(folder / "small.png")
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        report = idx.sync([str(folder)])
        sizes = {Path(h.path).name: (h.width, h.height) for h in idx.search_text("x", k=10)}
    assert (report.added, report.skipped) == (2, 0), report.skip_reasons
    assert sizes["panorama.jpg"] == (10000, 9500)  # the size as stored, not as decoded
    query = tmp_path / "copy.jpg"  # not indexed: decoded for the query, as indexing decodes
    query.write_bytes((folder / "panorama.jpg").read_bytes())
    result = CliRunner().invoke(
        app, ["search", "--image", str(query), "--index", str(tmp_path / "idx"), "--json"]
    )
    assert result.exit_code == 0, result.output
    best = json.loads(result.stdout.splitlines()[0])
    assert Path(best["path"]).name == "panorama.jpg" and best["score"] > 0.999


def run_bounded(*args: str, seconds: float = 15, memory: int = 2 << 30) -> subprocess.CompletedProcess[str]:
    """Run Python with ``args`` in a fresh interpreter allowed ``memory`` bytes of address space."""

    def limit() -> None:
        resource.setrlimit(resource.RLIMIT_AS, (memory, memory))

    try:
        return subprocess.run(
            [sys.executable, *args], capture_output=True, text=True, timeout=seconds, preexec_fn=limit
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"still running after {seconds} s (blocked, or reading without end): {args}")


def special_file(path: Path, kind: str) -> Path:
    """A FIFO with no writer (opening it to read blocks), or a link to an endless device."""
    if kind == "fifo":
        os.mkfifo(path)
    else:
        os.symlink("/dev/zero", path)
    return path


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_special_files_are_refused_never_opened_blocking_nor_read_without_end(tmp_path, kind) -> None:
    path = special_file(tmp_path / "x.jpg", kind)
    code = f"""
from clipsearch.encoders.images import open_image
from clipsearch.errors import ImageError
from clipsearch.ingest.decode import prepare
from clipsearch.ingest.scan import FileRecord
try:
    open_image({str(path)!r})
except ImageError as exc:
    print(exc.reason)
prep = prepare(FileRecord({str(path)!r}, 0, 0), is_known=lambda _: False, preprocess=lambda im: im,
               min_side=64, max_pixels=10**8)
print(prep.error.reason)
from clipsearch.encoders.images import image_format
print(image_format({str(path)!r}))
"""
    result = run_bounded("-c", code)
    assert result.stdout.split() == ["not-a-file", "not-a-file", "None"], result.stderr


def test_image_file_size_is_capped(tmp_path) -> None:
    from clipsearch.encoders.images import read_image_file

    path = tmp_path / "padded.png"
    scene().save(path)
    with path.open("ab") as fh:
        fh.write(b"\0" * 5000)
    assert len(read_image_file(path, max_bytes=10_000)) == path.stat().st_size
    with pytest.raises(ImageError) as info:
        read_image_file(path, max_bytes=4000)
    assert info.value.reason == "too-large" and "4,000" in info.value.detail


def test_walk_skips_fifos_and_devices_with_a_reason(tmp_path, tiny_encoder) -> None:
    folder = tmp_path / "odd"
    folder.mkdir()
    scene().save(folder / "fine.png")
    special_file(folder / "pipe.jpg", "fifo")
    special_file(folder / "zero.png", "dev-zero")
    started = time.monotonic()
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        report = idx.sync([str(folder)])
        skipped = {Path(p).name: reason for p, reason in idx.catalog.skipped()}
    assert time.monotonic() - started < 30
    assert (report.added, report.skip_reasons) == (1, {"not-a-file": 2})
    assert "FIFO" in skipped["pipe.jpg"] and "device" in skipped["zero.png"]


@pytest.mark.parametrize("kind", ["fifo", "dev-zero"])
def test_special_ignore_files_are_not_read(tmp_path, kind) -> None:
    (tmp_path / "keep.jpg").write_bytes(b"x")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "also.jpg").write_bytes(b"x")
    special_file(tmp_path / "sub" / ".clipsearchignore", kind)
    code = f"""
from clipsearch.ingest.scan import scan
print(sorted(r.path.rsplit("/", 1)[1] for r in scan([{str(tmp_path)!r}])))
"""
    result = run_bounded("-c", code)
    assert result.stdout.strip() == "['also.jpg', 'keep.jpg']", result.stderr


@pytest.mark.slow  # 8-23 s: the fast tier leaves it to the full suite
def test_search_by_a_fifo_or_device_is_a_usage_error(tmp_path, tiny_encoder) -> None:
    folder = tmp_path / "photos"
    folder.mkdir()
    scene().save(folder / "a.png")
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        idx.sync([str(folder)])
    for kind in ("fifo", "dev-zero"):
        query = special_file(tmp_path / f"query-{kind}.jpg", kind)
        command = ("search", "--image", str(query), "--index", str(tmp_path / "idx"))
        result = run_bounded("-m", "clipsearch", *command, seconds=90, memory=8 << 30)  # torch: 4 GB
        assert result.returncode == 2, result.stderr
        assert "not a regular file" in result.stderr and "Traceback" not in result.stderr


def test_a_file_that_runs_out_of_memory_is_skipped_not_fatal(tmp_path: Path) -> None:
    path = tmp_path / "fine.png"
    scene().save(path)
    st = path.stat()

    def greedy(image: Image.Image) -> np.ndarray:  # a preprocess step asking for 2**62 bytes
        return np.zeros((1 << 31, 1 << 31), dtype=np.uint8)

    prep = prepare(
        FileRecord(str(path), st.st_size, st.st_mtime_ns),
        is_known=lambda _: False,
        preprocess=greedy,
        min_side=64,
        max_pixels=10**8,
    )
    assert prep.error is not None and prep.error.reason == "too-large" and prep.digest
