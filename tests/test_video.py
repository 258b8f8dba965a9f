"""Videos: real files made with PyAV from the shapes world, decoded, indexed as moments, searched."""

from __future__ import annotations

import itertools
import json
import os
import shutil
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsearch.api import Index
from clipsearch.cli import app
from clipsearch.encoders.video import frame_at, probe_video, sample_window
from clipsearch.errors import ImageError
from clipsearch.ingest.decode import OrderedStream
from clipsearch.ingest.moments import MomentMerger, representative
from clipsearch.ingest.sync import SyncOptions
from clipsearch.query.filters import parse_filters
from videos import blue_star_film, scene, write_video

LIMIT = 50_000_000
#: Syncs here skip the text export (once per model and machine; every test has its own cache).
FAST = SyncOptions(export_text=False)


@pytest.fixture(scope="module")
def shapes():  # type: ignore[no-untyped-def]
    from clipsearch.encoders.loading import load_encoder

    return load_encoder("shapes")


def _unit(v: np.ndarray) -> np.ndarray:
    return (v / np.linalg.norm(v)).astype(np.float32)


def _like(direction: np.ndarray, rng: np.random.Generator, noise: float = 0.02) -> np.ndarray:
    return _unit(direction + noise * rng.standard_normal(direction.shape))


def _close(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference of two pictures' pixels (0-255)."""
    return float(
        np.abs(np.asarray(a, dtype=np.float32) - np.asarray(b.resize(a.size), dtype=np.float32)).mean()
    )


# -- moments from frames (pure) ---------------------------------------------------------------------


def test_frames_that_stay_close_make_one_moment_each_scene_its_own() -> None:
    rng = np.random.default_rng(0)
    scenes = [_unit(rng.standard_normal(64)) for _ in range(3)]
    merger = MomentMerger(threshold=0.9)
    lengths = (5, 12, 7)
    t = 0
    for direction, length in zip(scenes, lengths, strict=True):
        for _ in range(length):
            merger.add(float(t), _like(direction, rng))
            t += 1
    moments = merger.finish(float(t))
    assert [(m.start, m.end, m.frames) for m in moments] == [(0, 5, 5), (5, 17, 12), (17, 24, 7)]
    for moment, direction in zip(moments, scenes, strict=True):
        assert float(moment.vector @ direction) > 0.99
    assert representative(moments) == 1  # the longest scene, nearest the whole video's mean


def test_a_slow_drift_does_not_stay_one_moment() -> None:
    """Each frame is close to the one before, but the mean moves on: the pan becomes several moments."""
    a, b = np.eye(32, dtype=np.float32)[:2]
    merger = MomentMerger(threshold=0.9)
    for i in range(50):
        angle = i / 49 * np.pi / 2
        merger.add(float(i), _unit(np.cos(angle) * a + np.sin(angle) * b))
    moments = merger.finish(50.0)
    assert len(moments) >= 2
    assert moments[0].start == 0 and moments[-1].end == 50.0
    assert all(m.end == n.start for m, n in itertools.pairwise(moments))


def test_past_the_cap_the_most_alike_neighbours_merge() -> None:
    rng = np.random.default_rng(1)
    base = [_unit(rng.standard_normal(64)) for _ in range(5)]
    base[3] = _unit(base[2] + 0.8 * base[3])  # scenes 2 and 3 alike (cosine ~0.8), below the threshold
    merger = MomentMerger(threshold=0.95, max_moments=4)
    for i, direction in enumerate(base):
        for j in range(4):
            merger.add(float(4 * i + j), _like(direction, rng, 0.01))
    moments = merger.finish(20.0)
    assert [(m.start, m.end) for m in moments] == [(0, 4), (4, 8), (8, 16), (16, 20)]
    with pytest.raises(ValueError):
        MomentMerger(max_moments=0)


def test_ordered_stream_runs_follow_ups_next_and_stays_within_budget() -> None:
    load, peak, lock = [0], [0], threading.Lock()

    def work(item: int) -> int:
        with lock:
            load[0] += 1
            peak[0] = max(peak[0], load[0])
        time.sleep(0.01)
        with lock:
            load[0] -= 1
        return item

    with ThreadPoolExecutor(4) as pool:
        stream = OrderedStream(pool, work, range(6), budget=3)
        seen = []
        for item in stream:
            seen.append(item)
            if item == 1:
                stream.follow(iter([10, 11, 12]))
    assert sorted(seen) == [0, 1, 2, 3, 4, 5, 10, 11, 12]
    assert seen.index(10) < seen.index(11) < seen.index(12) < seen.index(5)  # before the rest of the items
    assert seen[:2] == [0, 1] and peak[0] <= 3


# -- decoding -----------------------------------------------------------------------------------------


def test_a_frame_each_second_and_the_first_after_each_cut(tmp_path: Path) -> None:
    red, blue, yellow = scene("red", "circle"), scene("blue", "star"), scene("yellow", "square")
    path = write_video(tmp_path / "cuts.mp4", [(3.5, red), (2.5, blue), (4.0, yellow)])
    facts = probe_video(path, max_pixels=LIMIT)
    assert (facts.width, facts.height) == (160, 120) and facts.duration == pytest.approx(10.0, abs=0.11)
    window = sample_window(path, 0, 100, side=240, max_pixels=LIMIT)
    times = [round(s.time, 1) for s in window.samples]
    assert 3.5 in times and 6.0 in times
    assert [s.cut for s in window.samples if round(s.time, 1) in (3.5, 6.0)] == [True, True]
    assert not any(s.cut for s in window.samples if round(s.time, 1) not in (3.5, 6.0))
    grid = [t for t in times if t not in (3.5,)]
    assert len(grid) == 10 and all(abs(t - round(t)) <= 0.15 for t in grid)  # about once a second
    assert window.next_time is None and window.end == pytest.approx(10.0, abs=0.11)
    assert _close(window.samples[times.index(3.5)].image, blue) < 6


def test_with_a_keyframe_each_second_only_keyframes_are_decoded(tmp_path: Path) -> None:
    """A phone's video (a keyframe every second): a sample costs one frame's decoding, and a cut,
    where the encoder starts a keyframe, is still sampled at once."""
    red, blue = scene("red", "circle"), scene("blue", "star")
    timeline = [(3.5, red), (6.5, blue)]
    phone = write_video(tmp_path / "phone.mp4", timeline, options={"g": "10"})  # 10 fps: 1 s GOPs
    film = write_video(tmp_path / "film.mp4", timeline)  # x264's default: a keyframe every 25 s here
    cheap = sample_window(phone, 0, 60, side=120, max_pixels=LIMIT)
    full = sample_window(film, 0, 60, side=120, max_pixels=LIMIT)
    assert cheap.frames <= 13 < 50 <= full.frames  # the keyframes (and the cut's) against most frames
    times = [round(s.time, 1) for s in cheap.samples]
    assert times == [0.0, 1.0, 2.0, 3.0, 3.5, 4.5, 5.5, 6.5, 7.5, 8.5, 9.5]
    assert [s.cut for s in cheap.samples] == [t == 3.5 for t in times]
    assert _close(cheap.samples[4].image, blue) < 6 and cheap.end == pytest.approx(10.0, abs=0.11)


def test_windows_sample_the_same_frames_as_one_pass(tmp_path: Path) -> None:
    timeline = [(1.3, scene(c, "circle")) for c in ("red", "blue", "green", "yellow", "purple", "white")]
    path = write_video(tmp_path / "montage.mp4", timeline)
    whole = [s.time for s in sample_window(path, 0, 60, side=120, max_pixels=LIMIT).samples]
    pieces = []
    for start in (0, 2, 4, 6):
        window = sample_window(path, start, start + 2, side=120, max_pixels=LIMIT)
        pieces += [s.time for s in window.samples]
        assert (window.next_time is None) == (start == 6)
    assert pieces == whole


def test_rotation_metadata_and_the_sample_aspect_ratio_are_honoured(tmp_path: Path) -> None:
    upright = scene("blue", "star", position="left", frame=(160, 96))
    for rotation in (90, 180, 270):
        path = write_video(tmp_path / f"phone-{rotation}.mp4", [(1.0, upright)], rotation=rotation)
        assert probe_video(path, max_pixels=LIMIT)[:2] == (160, 96)
        assert _close(frame_at(path, 0.5, max_pixels=LIMIT), upright) < 6, rotation
    squeezed = upright.resize((120, 96))  # stored 120 wide, shown 160 wide: pixels 4:3 wide
    path = write_video(tmp_path / "anamorphic.mkv", [(1.0, squeezed)], sar=Fraction(4, 3))
    assert probe_video(path, max_pixels=LIMIT)[:2] == (160, 96)
    shown = frame_at(path, 0.0, max_pixels=LIMIT)
    assert shown.size == (160, 96) and _close(shown, upright) < 8


def test_variable_frame_rate_samples_the_frames_there_are(tmp_path: Path) -> None:
    stamps = [0.0, 0.1, 0.15, 2.7, 2.75, 2.8, 5.5, 9.25]
    pictures = [scene("red", "circle")] * 3 + [scene("blue", "star")] * 3 + [scene("green", "cross")] * 2
    path = write_video(tmp_path / "vfr.mkv", [(0.1, p) for p in pictures], times=stamps)
    window = sample_window(path, 0, 60, side=120, max_pixels=LIMIT)
    assert [round(s.time, 2) for s in window.samples] == [0.0, 2.7, 5.5, 9.25]


def test_ten_bit_hdr_video_decodes_to_the_right_colours(tmp_path: Path) -> None:
    import av

    codec = next((c for c in ("libx265", "libvpx-vp9") if c in av.codecs_available), None)
    if codec is None:
        pytest.skip("this FFmpeg build has no 10-bit encoder")
    picture = scene("orange", "triangle", background="navy")
    path = write_video(tmp_path / "hdr.mkv", [(1.0, picture)], codec=codec, pix_fmt="yuv420p10le")
    with av.open(str(path)) as container:
        assert container.streams.video[0].codec_context.pix_fmt == "yuv420p10le"
    window = sample_window(path, 0, 10, side=120, max_pixels=LIMIT)
    assert window.samples and _close(window.samples[0].image, picture) < 8


def test_a_one_frame_video_is_one_moment(tmp_path: Path, shapes) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    write_video(folder / "one.mp4", [(0.1, scene("blue", "star"))])
    with Index.open_for_write(tmp_path / "index", shapes) as idx:
        report = idx.sync([str(folder)], options=FAST)
        assert (report.added, report.videos, report.moments) == (1, 1, 1)
        (hit,) = idx.search_text("a blue star", 5)
        assert hit.t_start == 0.0 and hit.t_end == pytest.approx(0.1)


# -- bad input ----------------------------------------------------------------------------------------


def _patch(path: Path, old: bytes, new: bytes) -> None:
    data = path.read_bytes()
    assert data.count(old) >= 1, old
    path.write_bytes(data.replace(old, new, 1))


def write_bad_videos(folder: Path) -> dict[str, str | None]:
    """Every bad video file; file name -> expected skip reason (None: indexed)."""
    import av

    folder.mkdir(parents=True)
    expected: dict[str, str | None] = {}
    good = [(1.0, scene("red", "circle")), (1.0, scene("blue", "star"))]
    whole = write_video(folder / "whole.mp4", good)
    expected["whole.mp4"] = None
    (folder / "truncated.mp4").write_bytes(
        whole.read_bytes()[: whole.stat().st_size // 2]
    )  # index at the end
    expected["truncated.mp4"] = "corrupt"
    cut = write_video(folder / "cut-short.mkv", [(1.0, scene("red", "circle")), (9.0, scene("blue", "star"))])
    cut.write_bytes(cut.read_bytes()[: cut.stat().st_size * 2 // 3])  # streamable: the first part indexes
    expected["cut-short.mkv"] = None
    (folder / "empty.mp4").write_bytes(b"")
    expected["empty.mp4"] = "empty"
    (folder / "noise.mov").write_bytes(np.random.default_rng(0).bytes(20_000))
    expected["noise.mov"] = "corrupt"
    with av.open(str(folder / "song.mp4"), "w") as container:  # audio only
        stream = container.add_stream("aac", rate=16000)
        for i in range(20):
            frame = av.AudioFrame.from_ndarray(np.zeros((1, 1024), np.float32), format="fltp", layout="mono")
            frame.sample_rate, frame.pts = 16000, i * 1024
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    expected["song.mp4"] = "no-video"
    alien = write_video(folder / "alien.mp4", good)  # a codec FFmpeg does not know
    alien.write_bytes(alien.read_bytes().replace(b"avc1", b"zzzz").replace(b"avcC", b"zzzC"))
    expected["alien.mp4"] = "undecodable"
    giant = write_video(folder / "giant.mkv", good)  # the header claims 12000x12000 pixels
    _patch(giant, b"\xb0\x81\xa0", b"\xb0\x82\x2e\xe0")
    _patch(giant, b"\xba\x81\x78", b"\xba\x82\x2e\xe0")
    expected["giant.mkv"] = "too-large"
    forever = write_video(folder / "forever.mkv", good)  # the header claims a duration of 3000 years
    info = forever.read_bytes()
    at = info.index(b"\x44\x89\x88") + 3
    forever.write_bytes(info[:at] + np.array([1e17], ">f8").tobytes() + info[at + 8 :])
    expected["forever.mkv"] = None
    frames = [scene("red", "circle"), scene("blue", "star")]
    frames[0].save(folder / "animated.gif", save_all=True, append_images=frames[1:], duration=500, loop=0)
    expected["animated.gif"] = None
    frames[0].save(folder / "animated.webp", save_all=True, append_images=frames[1:], duration=500, loop=0)
    expected["animated.webp"] = None
    os.mkfifo(folder / "pipe.mp4")
    expected["pipe.mp4"] = "not-a-file"
    return expected


def test_every_bad_video_is_skipped_with_its_reason_or_indexed(tmp_path: Path, shapes) -> None:
    expected = write_bad_videos(tmp_path / "bad")
    with Index.open_for_write(tmp_path / "index", shapes) as idx:
        started = time.monotonic()
        report = idx.sync([str(tmp_path / "bad")], options=FAST)
        assert time.monotonic() - started < 60  # no header makes it hang
        skipped = {Path(p).name: reason.split(":")[0] for p, reason in idx.skipped()}
        assert skipped == {name: why for name, why in expected.items() if why}
        assert report.added == sum(why is None for why in expected.values())
        views = idx.catalog.views_of(
            [idx.catalog.file(str(tmp_path / "bad" / n)).content_id for n in expected if not expected[n]]
        )
        kinds = {
            n: {
                v.kind for v in views.get(idx.catalog.file(str(tmp_path / "bad" / n)).content_id, {}).values()
            }
            for n in expected
            if not expected[n]
        }
        assert kinds["animated.gif"] == kinds["animated.webp"] == set()  # animations stay pictures
        assert kinds["whole.mp4"] == kinds["cut-short.mkv"] == kinds["forever.mkv"] == {"moment"}
        forever = idx.search_text("a blue star", 20, filters=parse_filters(types="mkv"))
        assert max(h.t_end for h in forever if h.path.endswith("forever.mkv")) == pytest.approx(2.0, abs=0.11)


def test_the_pixel_limit_applies_to_videos(tmp_path: Path, shapes) -> None:
    folder = tmp_path / "clips"
    folder.mkdir()
    write_video(folder / "small.mp4", [(1.0, scene("red", "circle"))])
    with Index.open_for_write(tmp_path / "index", shapes) as idx:
        report = idx.sync([str(folder)], options=SyncOptions(max_pixels=10_000, export_text=False))
        assert report.skip_reasons == {"too-large": 1}
        assert "19,200 pixels" not in idx.skipped()[0][1] and "160x120" in idx.skipped()[0][1]
        retry = SyncOptions(max_pixels=20_000, export_text=False)  # raised: the file is retried
        report = idx.sync([str(folder)], options=retry)
        assert (report.added, report.videos) == (1, 1)


# -- indexing and searching -------------------------------------------------------------------------


@pytest.mark.parametrize("codec", ["libx264", "libvpx-vp9"])
def test_a_blue_star_is_found_inside_its_moment(tmp_path: Path, shapes, codec: str) -> None:
    folder = tmp_path / "films"
    folder.mkdir()
    film = blue_star_film(folder / ("film.mp4" if codec == "libx264" else "film.webm"), codec=codec)
    scene("blue", "star", position="left", size="small").save(folder / "small-star.png")
    with Index.open_for_write(tmp_path / "index", shapes) as idx:
        report = idx.sync([str(folder)], options=FAST)
        assert (report.videos, report.video_seconds) == (1, pytest.approx(40.0, abs=0.11))
        best = idx.search_text("a large blue star", 10)[0]
        assert best.path == str(film) and best.is_moment
        assert best.t_start >= 9.0 and best.t_end <= 21.0
        exported = frame_at(film, 25.0, max_pixels=LIMIT)  # "search video by image"
        exported.save(tmp_path / "frame.png")
        found = idx.search_image(tmp_path / "frame.png", 3)[0]
        assert found.path == str(film) and found.t_start <= 25.0 < found.t_end and found.score > 0.95


def test_a_static_shot_is_one_or_two_moments_a_montage_one_per_scene(tmp_path: Path, shapes) -> None:
    folder = tmp_path / "films"
    folder.mkdir()
    rng = np.random.default_rng(3)
    still = np.asarray(scene("purple", "cross", background="beige"), dtype=np.float32)
    grainy = [
        Image.fromarray((still + rng.normal(0, 4, still.shape)).clip(0, 255).astype(np.uint8))
        for _ in range(120)
    ]
    write_video(folder / "static.mp4", [(0.5, g) for g in grainy], fps=2)
    montage = [
        ("red", "circle"),
        ("blue", "star"),
        ("yellow", "square"),
        ("green", "triangle"),
        ("white", "cross"),
        ("orange", "circle"),
    ]
    write_video(folder / "montage.mp4", [(1.0, scene(c, s, background="navy")) for c, s in montage])
    with Index.open_for_write(tmp_path / "index", shapes) as idx:
        idx.sync([str(folder)], options=FAST)
        static = idx.catalog.views_of([idx.catalog.file(str(folder / "static.mp4")).content_id])
        assert 1 <= len(next(iter(static.values()))) <= 2
        cuts = idx.catalog.views_of([idx.catalog.file(str(folder / "montage.mp4")).content_id])
        starts = sorted(v.t_start for v in next(iter(cuts.values())).values())
        assert starts == pytest.approx([0, 1, 2, 3, 4, 5], abs=0.11)


def test_rotated_phone_video_is_indexed_upright(tmp_path: Path, shapes) -> None:
    folder = tmp_path / "phone"
    folder.mkdir()
    upright = scene("blue", "star", position="left", frame=(96, 160))
    write_video(folder / "portrait.mov", [(2.0, upright)], rotation=90)
    with Index.open_for_write(tmp_path / "index", shapes) as idx:
        idx.sync([str(folder)], options=FAST)
        hit = idx.search_image(upright, 1)[0]
        assert (hit.width, hit.height) == (96, 160) and hit.score > 0.97
        sideways = upright.transpose(Image.Transpose.ROTATE_270)
        assert float(shapes.encode_images([sideways])[0] @ shapes.encode_images([upright])[0]) < 0.9


def test_moments_per_file_and_filters(tmp_path: Path, shapes) -> None:
    folder = tmp_path / "mixed"
    folder.mkdir()
    star = scene("blue", "star")
    small = scene("blue", "star", position="left", size="small")
    write_video(folder / "stars.mp4", [(2.0, star), (2.0, scene("red", "star")), (2.0, small)])
    star.save(folder / "star.png")
    with Index.open_for_write(tmp_path / "index", shapes) as idx:
        idx.sync([str(folder)], options=FAST)
        hits = idx.search_text("a blue star", 10)
        assert [h.path.endswith("stars.mp4") for h in hits].count(True) == 3  # every moment ranks
        once = idx.search_text("a large blue star in the center", 10, per_file=1)
        assert sorted(Path(h.path).name for h in once) == ["star.png", "stars.mp4"]
        assert [h.t_start for h in once if h.is_moment] == [0.0]  # its best moment
        videos = idx.search_text("a blue star", 10, filters=parse_filters(types="mp4"))
        assert {Path(h.path).name for h in videos} == {"stars.mp4"}
        pictures = idx.search_text("a blue star", 10, filters=parse_filters(types="png"))
        assert [Path(h.path).name for h in pictures] == ["star.png"]
        algebra = idx.search(f"{folder / 'star.png'} - blue + red", 1)[0]
        assert algebra.path.endswith("stars.mp4") and algebra.t_start == pytest.approx(2.0, abs=0.11)


def test_windows_give_the_same_moments_as_one_pass(tmp_path: Path, shapes) -> None:
    folder = tmp_path / "films"
    folder.mkdir()
    blue_star_film(folder / "film.mp4")
    moments = []
    for window in (3.0, 7.0, 60.0):
        with Index.open_for_write(tmp_path / f"index-{window}", shapes) as idx:
            idx.sync([str(folder)], options=SyncOptions(video_window=window, export_text=False))
            views = idx.catalog.views_of([idx.catalog.file(str(folder / "film.mp4")).content_id])
            moments.append(sorted((v.t_start, v.t_end) for v in next(iter(views.values())).values()))
    assert moments[0] == moments[1] == moments[2]


def test_videos_sync_incrementally(tmp_path: Path, shapes) -> None:
    folder = tmp_path / "films"
    folder.mkdir()
    film = blue_star_film(folder / "film.mp4")
    with Index.open_for_write(tmp_path / "index", shapes) as idx:
        first = idx.sync([str(folder)], options=FAST)
        cid = idx.catalog.file(str(film)).content_id
        moments = idx.catalog.views_of([cid])[cid]
        vectors = len(idx.store)
        again = idx.sync([str(folder)], options=FAST)
        assert (again.unchanged, again.videos, again.video_decode_seconds) == (1, 0, 0.0)  # not opened
        moved = film.rename(folder / "renamed.mp4")
        renamed = idx.sync([str(folder)], options=FAST)
        assert (renamed.reused, renamed.removed, renamed.videos) == (1, 1, 0)
        assert idx.catalog.file(str(moved)).content_id == cid and len(idx.store) == vectors
        write_video(moved, [(3.0, scene("yellow", "square"))])
        changed = idx.sync([str(folder)], options=FAST)
        new = idx.catalog.file(str(moved)).content_id
        assert (changed.updated, changed.videos) == (1, 1) and new != cid
        assert cid not in idx.catalog.views_of([cid]) and len(idx.catalog.views_of([new])[new]) == 1
        moved.unlink()
        gone = idx.sync([str(folder)], options=FAST)
        assert gone.removed == 1 and len(idx.store) == 0 and idx.catalog.views_of([new]) == {}
    assert first.moments == len(moments) >= 4


def test_info_and_search_on_the_command_line(tmp_path: Path, shapes) -> None:
    folder = tmp_path / "films"
    folder.mkdir()
    blue_star_film(folder / "film.mp4")
    index = tmp_path / "index"
    with Index.open_for_write(index, shapes) as idx:
        idx.sync([str(folder)], options=FAST)
    runner = CliRunner()
    info = json.loads(runner.invoke(app, ["info", "--index", str(index), "--json"]).stdout)
    assert (info["videos"], info["video_seconds"]) == (1, pytest.approx(40.0, abs=0.11)) and info[
        "moments"
    ] >= 4
    text = runner.invoke(app, ["info", "--index", str(index)]).stdout
    assert f"Videos:   1 files, {info['moments']} moments, 0:00:40 in all" in text
    result = runner.invoke(app, ["search", "a large blue star", "--index", str(index), "--json", "-k", "2"])
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert rows[0]["t_start"] == pytest.approx(10.0, abs=1) and rows[0]["t_end"] == pytest.approx(20.0, abs=1)
    assert "moment" in rows[0] and len(rows) == 2
    single = runner.invoke(
        app, ["search", "a large blue star", "--index", str(index), "--per-file", "1", "--json"]
    )
    assert len(single.stdout.splitlines()) == 1
    bad = runner.invoke(app, ["search", "a star", "--index", str(index), "--per-file", "0"])
    assert bad.exit_code == 2


@pytest.mark.slow  # a CLI subprocess on a pseudo-terminal
def test_the_table_shows_a_moment_as_path_at_start_to_end(tmp_path: Path, shapes) -> None:
    """On a terminal (a pseudo-terminal here), a video's hit reads ``path @ 0:00:10–0:00:20``."""
    import pty
    import subprocess
    import sys

    folder = tmp_path / "films"
    folder.mkdir()
    film = blue_star_film(folder / "film.mp4")
    index = tmp_path / "index"
    with Index.open_for_write(index, shapes) as idx:
        idx.sync([str(folder)], options=FAST)
    leader, follower = pty.openpty()
    command = [
        sys.executable,
        "-m",
        "clipsearch",
        "search",
        "a large blue star",
        "--index",
        str(index),
        "-k",
        "1",
    ]
    proc = subprocess.run(command, stdout=follower, stderr=subprocess.PIPE, timeout=120, env=os.environ)
    os.close(follower)
    out = b""
    while True:
        try:
            chunk = os.read(leader, 4096)
        except OSError:
            break
        if not chunk:
            break
        out += chunk
    os.close(leader)
    assert proc.returncode == 0, proc.stderr
    line = out.decode().strip()
    assert line.endswith(f"{film} @ 0:00:10–0:00:20"), line


def test_a_copy_met_while_its_video_decodes_is_committed_with_it(tmp_path: Path, shapes) -> None:
    folder = tmp_path / "films"
    folder.mkdir()
    film = blue_star_film(folder / "a.mp4")
    shutil.copy(film, folder / "b.mp4")
    with Index.open_for_write(tmp_path / "index", shapes) as idx:
        report = idx.sync([str(folder)], options=FAST)
        assert (report.added, report.reused, report.videos) == (1, 1, 1)
        ids = {idx.catalog.file(str(folder / n)).content_id for n in ("a.mp4", "b.mp4")}
        assert len(ids) == 1
        hits = idx.search_text("a large blue star", 2)
        assert {Path(h.path).name for h in hits} == {"a.mp4", "b.mp4"} and hits[0].t_start == hits[1].t_start


def test_an_unreadable_window_skips_the_video_with_its_reason(tmp_path: Path) -> None:
    with pytest.raises(ImageError) as caught:
        sample_window(tmp_path / "missing.mp4", 0, 10, side=100, max_pixels=LIMIT)
    assert caught.value.reason == "missing"


KILL_SCRIPT = """
import sys
from clipsearch.api import Index
from clipsearch.encoders.spec import ModelSpec
from clipsearch.ingest.sync import SyncOptions
with Index.open_for_write(sys.argv[1], spec=ModelSpec.parse("shapes", None)) as idx:
    idx.sync([sys.argv[2]], options=SyncOptions(video_window=1.0, batch_size=4, workers=1, export_text=False))
"""


@pytest.mark.slow
def test_kill_9_mid_video_loses_only_that_videos_work(tmp_path: Path, shapes) -> None:
    import signal
    import sqlite3
    import subprocess
    import sys

    folder, index = tmp_path / "media", tmp_path / "index"
    folder.mkdir()
    for i in range(12):
        scene(("red", "blue", "green")[i % 3], ("circle", "star", "cross", "square")[i % 4], seed=i).save(
            folder / f"a{i:02d}.png"
        )
    scenes = [scene(c, "triangle", background=b) for c in ("red", "blue") for b in ("grey", "beige", "navy")]
    write_video(folder / "z.mp4", [(25.0, s) for s in scenes] * 2, fps=2)  # 5 minutes
    proc = subprocess.Popen(
        [sys.executable, "-c", KILL_SCRIPT, str(index), str(folder)], stderr=subprocess.PIPE
    )
    deadline = time.monotonic() + 120
    pictures = 0
    while pictures < 12 and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.2)
        try:
            with sqlite3.connect(f"file:{index / 'catalog.sqlite'}?mode=ro", uri=True) as db:
                pictures = db.execute("SELECT count(*) FROM files WHERE content_id IS NOT NULL").fetchone()[0]
        except sqlite3.Error:
            continue
    time.sleep(0.5)
    assert proc.poll() is None, (
        proc.stderr.read().decode() if proc.stderr else "the video was done: make it longer"
    )
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    with Index.open(index, encoder=shapes) as idx:
        assert idx.catalog.file(str(folder / "z.mp4")) is None  # none of the video...
        assert len(idx.catalog.files_under(str(folder))) == 12  # ...and every picture committed before
        assert not idx.catalog.has_views()
        contents = {r[0] for r in idx.catalog.conn.execute("SELECT id FROM contents")}
        assert set(idx.store.ids().tolist()) == contents
    with Index.open_for_write(index, shapes) as idx:
        report = idx.sync([str(folder)], options=FAST)
        assert (report.added, report.unchanged, report.videos) == (1, 12, 1)
        cid = idx.catalog.file(str(folder / "z.mp4")).content_id
        views = idx.catalog.views_of([cid])[cid]
        assert len(views) >= 4 and max(v.t_end for v in views.values()) == pytest.approx(300, abs=0.6)
        ids = set(idx.store.ids().tolist())
        assert ids == contents | {cid} | set(idx.catalog.view_ids_of([cid]))


def test_worker_processes_decode_windows_as_threads_do(tmp_path: Path, shapes) -> None:
    """Enough files for worker processes: a video's windows are decoded there (tasks and samples
    pickled across), giving the moments threads give."""
    from clipsearch.ingest.decode import PROCESS_THRESHOLD

    folder = tmp_path / "many"
    folder.mkdir()
    blue_star_film(folder / "film.mp4")
    for i in range(PROCESS_THRESHOLD):
        Image.new("RGB", (16, 12), (i * 3, 255 - i * 3, 90)).save(folder / f"p{i:02d}.png")
    moments = []
    for processes in (True, False):
        with Index.open_for_write(tmp_path / f"index-{processes}", shapes) as idx:
            options = SyncOptions(processes=processes, workers=2, video_window=10.0, export_text=False)
            report = idx.sync([str(folder)], options=options)
            assert (report.added, report.videos) == (PROCESS_THRESHOLD + 1, 1)
            cid = idx.catalog.file(str(folder / "film.mp4")).content_id
            moments.append(sorted((v.t_start, v.t_end) for v in idx.catalog.views_of([cid])[cid].values()))
    assert moments[0] == moments[1]
