"""Real video files for the tests, made with PyAV from the shapes world (which the bundled model knows)."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from fractions import Fraction
from pathlib import Path

import numpy as np
from PIL import Image

from clipsearch.shapes import world

#: (seconds, picture) pieces of a film, in order.
Timeline = Sequence[tuple[float, Image.Image]]


def scene(
    color: str,
    shape: str,
    *,
    position: str = "center",
    size: str = "large",
    background: str = "grey",
    frame: tuple[int, int] = (160, 120),
    seed: int = 0,
) -> Image.Image:
    """One clean picture of one shape on a plain background."""
    spec = world.ShapeSpec(color, shape, size, position)
    scene = world.Scene((spec,), world.Background("plain", background))
    return world.render(scene, np.random.default_rng(seed), frame, augment=False)


def write_video(
    path: Path,
    timeline: Timeline,
    *,
    codec: str = "libx264",
    fps: int = 10,
    rotation: int | None = None,
    sar: Fraction | None = None,
    pix_fmt: str = "yuv420p",
    times: Iterable[float] | None = None,
    options: dict[str, str] | None = None,
) -> Path:
    """Write the timeline as a video (``fps`` frames a second, or frames at ``times``: variable frame
    rate); ``rotation``: display-matrix rotation (counter-clockwise degrees) stored with it, the
    pictures stored turned the other way, so that a player that honours it shows them upright."""
    import av

    frames: list[Image.Image] = []
    for seconds, picture in timeline:
        frames += [picture] * max(1, round(seconds * fps))
    if rotation:
        turn = {
            90: Image.Transpose.ROTATE_270,
            180: Image.Transpose.ROTATE_180,
            270: Image.Transpose.ROTATE_90,
        }
        frames = [f.transpose(turn[rotation % 360]) for f in frames]
    stamps = list(times) if times is not None else None
    with av.open(str(path), "w") as container:
        stream = container.add_stream(codec, rate=fps)
        stream.width, stream.height = frames[0].size
        stream.pix_fmt = pix_fmt
        if options:
            stream.options = options
        if sar is not None:
            stream.codec_context.sample_aspect_ratio = sar
        if rotation is not None:
            stream.set_display_rotation(rotation)
        if stamps is not None:
            stream.codec_context.time_base = Fraction(1, 1000)
        for i, picture in enumerate(frames):
            frame = av.VideoFrame.from_image(picture)
            if stamps is not None:
                frame.pts, frame.time_base = round(stamps[i] * 1000), Fraction(1, 1000)
            for packet in stream.encode(frame):
                container.mux(packet)
        for packet in stream.encode():
            container.mux(packet)
    return path


def blue_star_film(path: Path, *, codec: str = "libx264") -> Path:
    """40 s: a red circle for 10 s, a blue star for 10 s, a cut to a yellow square for 10 s, then a slow
    pan of a green triangle across the frame."""
    pan = [(1.0, scene("green", "triangle", position=p, size="small")) for p in ("left",) * 3]
    pan += [(1.0, scene("green", "triangle", position="center", size="small")) for _ in range(4)]
    pan += [(1.0, scene("green", "triangle", position="right", size="small")) for _ in range(3)]
    timeline = [
        (10.0, scene("red", "circle")),
        (10.0, scene("blue", "star")),
        (10.0, scene("yellow", "square")),
        *pan,
    ]
    return write_video(path, timeline, codec=codec)
