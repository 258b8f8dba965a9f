"""Index a generated 1080p H.264 film with ViT-B-32 and print issue 18's targets.

    python benchmarks/video.py --minutes 60     # speed: an hour indexed in <= 3 min (>= 20x real time)
    python benchmarks/video.py --minutes 120    # peak RSS while indexing a 2-hour film: <= 1.5 GB
    python benchmarks/video.py --minutes 1      # a quick check of the script

The film: a 2-minute clip (``--clip-seconds``) of shapes-world scenes at 1920x1080, 30 fps (a cut
every 4 to 20 s, slow pans, sensor grain; x264 ``veryfast``, CRF 20, CABAC and B-frames, a
keyframe at least every second (``--gop``) as phones write them, about 10 Mbit/s), made once and
kept in ``--cache``, then repeated by stream copy up to ``--minutes``.
``clipsearch index`` runs on it as a user runs it (random ViT-B-32 weights, the Hugging Face cache
offline, ``--precision auto``) with the peak RSS of its process tree sampled every 50 ms. Printed:
real time / index time, where the time goes (CPU seconds decoding in the workers, seconds encoding
in the main process), samples and moments per minute, the index size per hour of video.

Then merging against one vector per sampled frame, on generated films the bundled shapes model
understands (``--films``, 60 s each, scenes of random length): vectors kept, and recall@1/@5 of
"a large COLOUR SHAPE" queries (a hit counts when it is a moment of the right film that overlaps
the scene).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import sys
import tempfile
from pathlib import Path

import numpy as np
from _common import ROOT, add_random_vit_b_32, run_measured, tree_bytes

sys.path.insert(0, str(ROOT / "tests"))

CLIP_SECONDS = 120
FPS = 30
SIZE = (1920, 1080)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


# -- the 1080p film -------------------------------------------------------------------------------


def make_clip(path: Path, seconds: int, gop: int, seed: int = 18) -> None:
    """The 2-minute 1080p clip (see the module's docstring)."""
    import av

    from clipsearch.shapes import world
    from videos import scene

    rng = np.random.default_rng(seed)
    colours, shapes = list(world.COLORS), list(world.SHAPES)
    backgrounds = ["grey", "beige", "navy", "teal", "light grey", "brown"]
    grain = rng.normal(0, 2.5, size=(SIZE[1] + 64, SIZE[0] + 64, 1)).astype(np.float32)
    frames = seconds * FPS
    with av.open(str(path), "w") as container:
        stream = container.add_stream("libx264", rate=FPS)
        stream.width, stream.height, stream.pix_fmt = *SIZE, "yuv420p"
        # a keyframe every ``gop`` frames exactly (the grain would make x264 add many more at "scene cuts")
        stream.options = {"preset": "veryfast", "crf": "20", "g": str(gop), "x264-params": "scenecut=0"}
        done = 0
        while done < frames:
            shot = min(frames - done, int(rng.integers(4, 21)) * FPS)
            picture = scene(
                str(rng.choice(colours)),
                str(rng.choice(shapes)),
                position=str(rng.choice(world.POSITIONS)),
                size=str(rng.choice(world.SIZES)),
                background=str(rng.choice(backgrounds)),
                frame=(SIZE[0] + 256, SIZE[1]),
                seed=done,
            )
            base = np.asarray(picture, dtype=np.float32)
            pan = rng.choice([0, 1])  # a slow pan across the wider picture, or a still camera
            for i in range(shot):
                x = int(256 * i / shot) if pan else 128
                dx, dy = rng.integers(0, 64, size=2)
                pixels = base[:, x : x + SIZE[0]] + grain[dy : dy + SIZE[1], dx : dx + SIZE[0]]
                frame = av.VideoFrame.from_ndarray(np.clip(pixels, 0, 255).astype(np.uint8), format="rgb24")
                for packet in stream.encode(frame):
                    container.mux(packet)
            done += shot
        for packet in stream.encode():
            container.mux(packet)


def repeat(clip: Path, target: Path, minutes: float, seconds: int) -> None:
    """``clip`` repeated (packets copied, timestamps shifted) until the film lasts ``minutes``."""
    import av

    with av.open(str(clip)) as source, av.open(str(target), "w") as out:
        stream = source.streams.video[0]
        copy = out.add_stream_from_template(stream)
        length = int(seconds / stream.time_base)
        for n in range(math.ceil(minutes * 60 / seconds)):
            source.seek(0)
            for packet in source.demux(stream):
                if packet.dts is None:
                    continue
                shift = n * length
                if (packet.pts + shift) * stream.time_base >= minutes * 60:
                    continue
                packet.pts, packet.dts = packet.pts + shift, packet.dts + shift
                packet.stream = copy
                out.mux(packet)


def ensure_film(cache: Path, minutes: float, seconds: int, gop: int) -> Path:
    clip = cache / f"clip-1080p-{seconds}s-gop{gop}-v2.mp4"
    if not clip.is_file():
        log(f"making the {seconds}-s 1080p clip {clip} (minutes, once) ...")
        make_clip(clip.with_suffix(".tmp.mp4"), seconds, gop)
        clip.with_suffix(".tmp.mp4").rename(clip)
    folder = cache / f"film-{minutes:g}min-of-{seconds}s-gop{gop}-v2"
    film = folder / "film.mp4"
    if not film.is_file():
        folder.mkdir(parents=True, exist_ok=True)
        log(f"repeating it to {minutes:g} minutes: {film} ...")
        repeat(clip, film.with_suffix(".tmp.mp4"), minutes, seconds)
        film.with_suffix(".tmp.mp4").rename(film)
    return folder


def index_film(folder: Path, cache: Path, work: Path) -> dict[str, object]:
    hf_cache = cache / "hf"
    if not any(hf_cache.glob("models--laion--CLIP-ViT-B-32-laion2B-s34B-b79K/snapshots/*/*.safetensors")):
        log(f"writing random ViT-B-32 weights to {hf_cache} ...")
        add_random_vit_b_32(hf_cache)
    env = {
        **os.environ,
        "HF_HUB_CACHE": str(hf_cache),
        "HF_HUB_OFFLINE": "1",
        "CLIPSEARCH_CACHE": str(cache / "clipsearch"),
    }
    model = ["--model", "ViT-B-32", "--pretrained", "laion2b_s34b_b79k", "--quiet", "--json"]
    warm = work / "warm-up"  # the text tower's export (once per model and machine) is not timed
    (warm / "media").mkdir(parents=True)
    from videos import scene, write_video

    write_video(warm / "media" / "second.mp4", [(1.0, scene("red", "circle"))])
    command = [
        sys.executable,
        "-m",
        "clipsearch",
        "index",
        str(warm / "media"),
        "--index",
        str(warm / "index"),
    ]
    run_measured([*command, *model], env=env)
    index = work / "index"
    command = [sys.executable, "-m", "clipsearch", "index", str(folder), "--index", str(index), *model]
    log("indexing: " + " ".join(command))
    run = run_measured(command, env=env)
    if run.returncode != 0:
        raise SystemExit(f"clipsearch index failed ({run.returncode}):\n{run.stderr}")
    report = json.loads(run.stdout.strip().splitlines()[-1])
    return {"report": report, "wall": run.seconds, "peak_rss": run.peak_rss, "index_bytes": tree_bytes(index)}


def print_speed(result: dict[str, object]) -> None:
    report: dict[str, float] = result["report"]  # type: ignore[assignment]
    seconds, wall = float(report["video_seconds"]), float(result["wall"])  # type: ignore[arg-type]
    minutes = seconds / 60
    print(f"film: {minutes:.1f} min of 1080p H.264 at {FPS} fps")
    speed = seconds / wall
    print(f"index time: {wall:.1f} s from process start to exit ({speed:.1f}x real time; target >= 20x)")
    samples = max(1, int(report["video_samples"]))
    print(
        f"  decoding: {report['video_decode_seconds']:.1f} CPU s in the workers; "
        f"encoding: {report['video_encode_seconds']:.1f} s in the main process "
        f"({samples} frames, {1000 * float(report['video_encode_seconds']) / samples:.1f} ms each)"
    )
    print(
        f"samples: {report['video_samples'] / minutes:.1f} per minute; "
        f"moments: {report['moments']} ({report['moments'] / minutes:.1f} per minute)"
    )
    per_hour = int(result["index_bytes"]) / (seconds / 3600)  # type: ignore[call-overload]
    size = int(result["index_bytes"])  # type: ignore[call-overload]
    print(f"index size: {size / 1e6:.2f} MB ({per_hour / 1e6:.2f} MB per hour of video)")
    peak = int(result["peak_rss"]) / 2**20  # type: ignore[call-overload]
    print(f"peak RSS (process tree): {peak:.0f} MiB (target <= 1536 MiB for 2 hours)")


# -- merging against one vector per frame ------------------------------------------------------------


def make_films(
    folder: Path, count: int, seed: int = 7
) -> list[tuple[Path, list[tuple[str, str, float, float]]]]:
    """``count`` 60-s films of random scenes (160x120, 10 fps); each with its (colour, shape, start, end)."""
    from clipsearch.shapes import world
    from videos import scene, write_video

    rng = np.random.default_rng(seed)
    films = []
    for n in range(count):
        timeline, truth, t = [], [], 0.0
        while t < 60:
            length = float(min(60 - t, rng.integers(1, 16)))
            colour, shape = str(rng.choice(list(world.COLORS))), str(rng.choice(world.SHAPES))
            background = str(rng.choice(["grey", "beige", "navy", "teal"]))
            timeline.append((length, scene(colour, shape, background=background, seed=int(t))))
            truth.append((colour, shape, t, t + length))
            t += length
        films.append((write_video(folder / f"film{n}.mp4", timeline), truth))
    return films


def compare_merging(work: Path, count: int) -> None:
    from clipsearch.api import Index
    from clipsearch.encoders.loading import load_encoder
    from clipsearch.ingest.sync import SyncOptions

    folder = work / "films"
    folder.mkdir()
    films = make_films(folder, count)
    encoder = load_encoder("shapes")
    print(f"\nmerging vs one vector per sampled frame ({count} films of 60 s, shapes model):")
    for name, similarity in (("merged (0.9)", None), ("one per frame", 1.01)):
        options = SyncOptions() if similarity is None else SyncOptions(moment_similarity=similarity)
        with Index.open_for_write(work / f"index-{similarity}", encoder) as idx:
            report = idx.sync([str(folder)], options=options)
            found = {1: 0, 5: 0}
            queries = 0
            for film, truth in films:
                for colour, shape, start, end in truth:
                    queries += 1
                    hits = idx.search_text(f"a large {colour} {shape}", 5)
                    right = [h.path == str(film) and h.t_start < end and start < h.t_end for h in hits]
                    found[1] += any(right[:1])
                    found[5] += any(right)
        print(
            f"  {name:>14}: {report.moments} vectors ({report.moments / (count * 60) * 60:.1f} per minute); "
            f"recall@1 {found[1] / queries:.3f}, recall@5 {found[5] / queries:.3f} over {queries} scenes"
        )


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--minutes", type=float, default=60.0, help="length of the 1080p film (default 60)")
    parser.add_argument("--cache", type=Path, default=Path(tempfile.gettempdir()) / "clipsearch-bench-video")
    parser.add_argument("--films", type=int, default=6, help="generated films for the merging comparison")
    parser.add_argument(
        "--clip-seconds",
        type=int,
        default=CLIP_SECONDS,
        help="length of the clip the film repeats (default 120)",
    )
    parser.add_argument("--skip-film", action="store_true", help="only the merging comparison")
    parser.add_argument(
        "--gop",
        type=int,
        default=30,
        help="frames between keyframes at most (default 30: one a second, as phones record; x264's own "
        "default, 250, makes a film's long GOPs, where most frames must be decoded)",
    )
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="clipsearch-video-"))
    try:
        if not args.skip_film:
            folder = ensure_film(args.cache, args.minutes, args.clip_seconds, args.gop)
            print_speed(index_film(folder, args.cache, work))
        if args.films:
            compare_merging(work, args.films)
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
