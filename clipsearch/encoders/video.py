"""Decode video files safely with PyAV (FFmpeg's libraries): probe a header, sample the frames of a
time window, grab one frame. Every problem is a typed ImageError with a reason code.

Streaming: a window seeks to its start (the keyframe before it) and decodes forward to its end, so
memory is one decoder's few frames whatever the length of the video, and windows of one video can
be decoded in parallel. Frames come out upright (the rotation of the stream's display matrix, as
phones record it, applied) at their display aspect ratio (the sample aspect ratio applied).

Times are seconds from the stream's first frame, as an HTML5 ``<video>`` element counts them.
"""

from __future__ import annotations

import math
import os
from collections import deque
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, Any, NamedTuple

import numpy as np
import numpy.typing as npt

from clipsearch.errors import ImageError
from clipsearch.files import FileTooLargeError, NotRegularFileError, open_regular_file

if TYPE_CHECKING:
    from PIL import Image

#: File name extensions of the video containers indexed (lower case, with the dot).
VIDEO_EXTENSIONS = frozenset({".mp4", ".m4v", ".mov", ".mkv", ".webm", ".avi"})
#: Frames are sampled at most this often (seconds), plus the first frame after a cut.
SAMPLE_EVERY = 1.0
#: A cut: the frame's colours differ from the previous frame's by at least this much (mean absolute
#: difference of a coarse grid of Y, U and V samples, 0-255) ...
CUT_MIN_CHANGE = 2.5
#: ... and by this many times the change of the frames just before (a jump, not fast motion).
CUT_JUMP = 3.0
#: A cut adds a sample only this long after the previous sample (seconds): a strobe stays cheap.
MIN_CUT_GAP = 0.25
#: Where the container's index shows keyframes at most this far apart (seconds; phones record one
#: every second or two), only keyframes are decoded and sampled: a sample costs one frame's decoding.
KEYFRAMES_ONLY_GAP = 1.5
#: A video's frames past this time are not read (a header or timestamps may claim anything).
MAX_VIDEO_SECONDS = 24 * 3600.0
#: A sample aspect ratio outside 1/8..8 is a broken header: the pixels are taken as square.
_MAX_SAR = 8
#: Packets read to find a video's first frame before it counts as undecodable.
_FIRST_FRAME_PACKETS = 500
#: Consecutive packets that fail to decode before the rest of a stream counts as unreadable.
_MAX_BAD_PACKETS = 100
#: Pixel formats whose planes hold 8-bit samples (Y, then U and V at some subsampling), read as is.
_PLANAR_8 = frozenset(
    {"yuv420p", "yuvj420p", "yuv422p", "yuvj422p", "yuv444p", "yuvj444p", "yuv440p", "yuvj440p", "yuv411p"}
    | {"yuv410p", "gray"}
)


class VideoFacts(NamedTuple):
    """What a video's header and first frame say: the display size (rotation and sample aspect ratio
    applied), the duration the header claims (None if none; it may lie), and the recording time."""

    width: int
    height: int
    duration: float | None
    taken: float | None


class Sample(NamedTuple):
    """A sampled frame: its time (seconds), the upright picture, and whether it follows a cut."""

    time: float
    image: Image.Image
    cut: bool


class Window(NamedTuple):
    """The samples of one time window of a video.

    ``end`` is the end of the last frame decoded in the window (its time plus its duration), None if
    it decoded none; ``next_time`` the time of the first frame at or after the window's end, None when
    the stream ended inside the window (or became unreadable: ``broken``).
    """

    samples: list[Sample]
    frames: int
    end: float | None
    next_time: float | None
    broken: bool = False


def is_video_name(name: str) -> bool:
    """True if the file name has one of the video extensions indexed."""
    return os.path.splitext(name)[1].lower() in VIDEO_EXTENSIONS


# -- opening --------------------------------------------------------------------------------------


class _Video(NamedTuple):
    container: Any  # av.container.InputContainer
    stream: Any  # av.video.stream.VideoStream
    origin: int  # pts of the stream's start (time 0), in stream time base
    time_base: Fraction
    sar: Fraction


@contextmanager
def _opened(path: str | Path, max_pixels: int) -> Iterator[_Video]:
    """The video stream of the file at ``path``, its size checked against ``max_pixels``.

    Raises:
        ImageError: ``missing``, ``not-a-file``, ``unreadable``, ``empty``, ``corrupt`` (not a container
            FFmpeg reads), ``no-video`` (audio only, say), ``undecodable`` (a codec FFmpeg cannot
            decode) or ``too-large``.
    """
    import av

    try:
        fh = open_regular_file(path)
    except FileNotFoundError as exc:
        raise ImageError("missing", "the file disappeared before it could be read") from exc
    except NotRegularFileError as exc:
        raise ImageError("not-a-file", f"{exc.kind}, not a regular file") from exc
    except (FileTooLargeError, OSError) as exc:
        raise ImageError("unreadable", f"cannot read: {exc.strerror or exc}") from exc
    try:
        if os.fstat(fh.fileno()).st_size == 0:
            raise ImageError("empty", "the file is empty (0 bytes)")
        try:
            container = av.open(fh, "r", metadata_errors="ignore")
        except (av.FFmpegError, ValueError, OSError, EOFError) as exc:
            raise ImageError("corrupt", f"not a video FFmpeg can read ({_why(exc)})") from exc
        try:
            yield _video_stream(container, max_pixels)
        finally:
            container.close()
    finally:
        fh.close()


def _why(exc: BaseException) -> str:
    return str(getattr(exc, "strerror", None) or exc).strip() or type(exc).__name__


def _video_stream(container: Any, max_pixels: int) -> _Video:
    streams = [s for s in container.streams.video if not _is_cover_art(s)]
    if not streams:
        raise ImageError("no-video", "holds no video stream (audio only?)")
    stream = streams[0]
    ctx = stream.codec_context
    if ctx is None or ctx.codec is None:
        raise ImageError("undecodable", "its video codec cannot be decoded by FFmpeg")
    width, height = int(ctx.width or 0), int(ctx.height or 0)
    if width * height > max_pixels:
        raise ImageError("too-large", f"{width}x{height} pixels exceeds the limit of {max_pixels:,} pixels")
    ctx.thread_count = 1  # one core per decoding worker: the workers are the parallelism
    sar = stream.sample_aspect_ratio or ctx.sample_aspect_ratio
    if not sar or not Fraction(1, _MAX_SAR) <= sar <= _MAX_SAR:
        sar = Fraction(1)
    return _Video(container, stream, int(stream.start_time or 0), stream.time_base, Fraction(sar))


def _is_cover_art(stream: Any) -> bool:
    """An attached picture (an album cover in an audio file) is no video."""
    disposition = getattr(stream, "disposition", None)
    try:
        return bool(disposition is not None and disposition & disposition.attached_pic)
    except (AttributeError, TypeError):
        return False


def _frames(
    video: _Video, wanted: Callable[[float], bool] | None = None, *, keys_only_gap: float = 0.0
) -> Iterator[Any]:
    """The stream's decoded frames from where the container stands; a stream that turns unreadable
    (truncated, damaged) ends. Packets that fail to decode are skipped, up to a run of them.

    ``wanted``: whether a packet whose frame shows at that time may hold a frame to sample; where
    not, frames that no other frame refers to (B-frames, mostly: half the frames of a film) are not
    decoded at all. ``keys_only_gap``: from a keyframe whose next keyframe (in the container's
    index) is at most this many seconds later, only the keyframes are decoded.
    """
    import av

    bad = 0
    ctx = video.stream.codec_context
    skipping = False
    keys_only = False
    index = video.stream.index_entries if keys_only_gap > 0 else None
    try:
        for packet in video.container.demux(video.stream):
            if index is not None and packet.size:
                if packet.is_keyframe:
                    keys_only = _next_keyframe_gap(video, index, packet) <= keys_only_gap
                elif keys_only:
                    continue  # never decoded: no sample comes from it, and no keyframe refers to it
            if wanted is not None:
                skip = packet.pts is not None and not wanted(
                    float((packet.pts - video.origin) * video.time_base)
                )
                if skip != skipping:  # read per packet by a single-threaded decoder
                    ctx.skip_frame = "NONREF" if skip else "DEFAULT"
                    skipping = skip
            try:
                frames = packet.decode()
            except (av.FFmpegError, ValueError) as exc:
                bad += 1
                if bad > _MAX_BAD_PACKETS:
                    raise _Unreadable from exc
                continue
            bad = 0
            yield from frames
    except (av.FFmpegError, OSError, EOFError) as exc:  # demuxing failed: the rest cannot be read
        raise _Unreadable from exc


def _next_keyframe_gap(video: _Video, index: Any, packet: Any) -> float:
    """Seconds from this keyframe to the next one the container's index knows (inf: none)."""
    stamp = packet.dts if packet.dts is not None else packet.pts
    if stamp is None or not len(index):
        return math.inf
    found = index.search_timestamp(stamp + 1, backward=False)
    if found < 0:
        return math.inf
    return float((index[found].timestamp - stamp) * video.time_base)


class _Unreadable(Exception):
    """The rest of a stream cannot be read."""


def _time(frame: Any, video: _Video, previous: float | None) -> float:
    if frame.pts is None:
        return 0.0 if previous is None else previous + _duration(frame, video)
    return float((frame.pts - video.origin) * video.time_base)


def _duration(frame: Any, video: _Video) -> float:
    if getattr(frame, "duration", None):
        return float(frame.duration * video.time_base)
    rate = video.stream.average_rate or video.stream.guessed_rate
    return float(1 / rate) if rate else 0.0


# -- what a header says ---------------------------------------------------------------------------


def probe_video(path: str | Path, *, max_pixels: int) -> VideoFacts:
    """The display size, claimed duration and recording time of the video at ``path``; decodes its
    first frame, so a file that opens but cannot be decoded fails here.

    Raises:
        ImageError: see :func:`_opened`; ``corrupt`` also when no frame can be decoded.
    """
    with _opened(path, max_pixels) as video:
        first = None
        try:
            first = next(_frames_from_packets(video, _FIRST_FRAME_PACKETS), None)
        except _Unreadable as exc:
            why = _why(exc.__cause__ or exc)
            raise ImageError("corrupt", f"its video cannot be decoded ({why})") from exc
        if first is None:
            raise ImageError("corrupt", "no video frame could be decoded")
        width, height = _display_size(first.width, first.height, video.sar, _rotation(first))
        return VideoFacts(width, height, _claimed_duration(video), _creation_time(video.container))


def _frames_from_packets(video: _Video, most: int) -> Iterator[Any]:
    """Decoded frames from at most ``most`` packets (a stream of nothing but undecodable packets ends)."""
    import av

    try:
        for n, packet in enumerate(video.container.demux(video.stream)):
            if n >= most:
                return
            try:
                yield from packet.decode()
            except (av.FFmpegError, ValueError):
                continue
    except (av.FFmpegError, OSError, EOFError) as exc:
        raise _Unreadable from exc


def _claimed_duration(video: _Video) -> float | None:
    if video.stream.duration:
        return float(video.stream.duration * video.time_base)
    if video.container.duration:
        return video.container.duration / 1_000_000
    return None


def _creation_time(container: Any) -> float | None:
    value = (container.metadata or {}).get("creation_time")
    if not value:
        return None
    try:
        when = datetime.fromisoformat(str(value).replace("Z", "+00:00"))
    except ValueError:
        return None
    if when.year < 1971:  # 1904 or 1970: a camera that wrote zero
        return None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def _rotation(frame: Any) -> int:
    """The counter-clockwise quarter turns (0-3) that show a decoded frame upright."""
    try:
        degrees = float(frame.rotation or 0)
    except (AttributeError, TypeError, ValueError):
        return 0
    return round(degrees / 90) % 4


def _display_size(width: int, height: int, sar: Fraction, turns: int) -> tuple[int, int]:
    shown = (max(1, round(width * sar)), height)
    return (shown[1], shown[0]) if turns % 2 else shown


# -- frames as pictures -----------------------------------------------------------------------------


def _picture(frame: Any, video: _Video, side: int | None) -> Image.Image:
    """The frame, upright, at its display aspect ratio, its shorter side shrunk to ``side`` (None:
    the display size)."""
    from PIL import Image

    width, height = max(1, round(frame.width * video.sar)), frame.height
    scale = 1.0 if side is None else min(1.0, side / min(width, height))
    size = (max(1, round(width * scale)), max(1, round(height * scale)))
    image = frame.reformat(width=size[0], height=size[1], format="rgb24", interpolation="AREA").to_image()
    turns = _rotation(frame)
    if turns:
        transpose = (Image.Transpose.ROTATE_90, Image.Transpose.ROTATE_180, Image.Transpose.ROTATE_270)
        image = image.transpose(transpose[turns - 1])
    return image


def _signature(frame: Any) -> npt.NDArray[np.float32]:
    """A coarse grid of the frame's Y, U and V samples (0-255), for telling cuts from motion.

    Read straight from the decoded planes, a few thousand samples, without converting the frame.
    """
    name = frame.format.name
    if name in _PLANAR_8:
        planes, depth = frame.planes, 8
    elif name.startswith("yuv") and name.endswith(("p9le", "p10le", "p12le", "p14le", "p16le")):
        planes, depth = frame.planes, int(name.removesuffix("le").rsplit("p", 1)[1])
    else:  # packed or exotic formats: converted, small
        planes = frame.reformat(width=64, height=36, format="yuv444p").planes
        depth = 8
    grids = []
    for plane in planes[:3]:
        dtype = np.dtype(np.uint8) if depth == 8 else np.dtype("<u2")
        values = np.frombuffer(plane, dtype=dtype)
        rows = values.reshape(plane.height, plane.line_size // dtype.itemsize)[:, : plane.width]
        step_y, step_x = max(1, -(-plane.height // 36)), max(1, -(-plane.width // 64))
        grid = rows[::step_y, ::step_x].astype(np.float32)  # the whole plane, up to 36 x 64 samples
        if depth > 8:
            grid *= 255.0 / ((1 << depth) - 1)
        grids.append(_blocks(grid))
    return np.concatenate([g.ravel() for g in grids])


def _blocks(grid: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Means of 4x4 blocks of a grid (averages out grain); a small grid is kept as is."""
    h, w = (grid.shape[0] // 4) * 4, (grid.shape[1] // 4) * 4
    if not h or not w:
        return grid
    return grid[:h, :w].reshape(h // 4, 4, w // 4, 4).mean(axis=(1, 3))


def _change(a: npt.NDArray[np.float32], b: npt.NDArray[np.float32]) -> float:
    return float(np.abs(a - b).mean()) if a.shape == b.shape else 255.0


# -- sampling a window ------------------------------------------------------------------------------


def sample_window(
    path: str | Path,
    start: float,
    end: float,
    *,
    side: int,
    max_pixels: int,
    every: float = SAMPLE_EVERY,
    max_samples: int | None = None,
) -> Window:
    """The sampled frames of the video at ``path`` with times in ``[start, end)``.

    The first frame at or after each multiple of ``every`` seconds is a sample, and so is the first
    frame after a cut (a jump in colour much larger than the motion before it, at least
    ``MIN_CUT_GAP`` after the previous sample); cuts add at most as many samples as leave the window
    ``max_samples`` in all (default: two per ``every``). Where keyframes come at least every
    ``KEYFRAMES_ONLY_GAP`` times ``every`` seconds, only keyframes are decoded, so the samples are
    the first keyframes at or after those times (encoders start a cut with a keyframe).
    Samples depend only on the video, not on where windows begin: windows of one video can be
    sampled in parallel and their samples put side by side. Pictures have their shorter side
    shrunk to ``side``.

    Raises:
        ImageError: the file cannot be opened as a video (see :func:`probe_video`).
    """
    limit = max_samples if max_samples is not None else max(1, math.ceil(2 * (end - start) / every))
    with _opened(path, max_pixels) as video:
        if start > 0:
            _seek(video, start)
        return _sample(video, start, end, side=side, every=every, limit=limit)


def _seek(video: _Video, start: float) -> None:
    """Go to the keyframe at or before ``start`` (else stay at the start: frames before are skipped)."""
    import av

    target = video.origin + int(start / video.time_base)
    try:
        video.container.seek(target, stream=video.stream, backward=True, any_frame=False)
    except (av.FFmpegError, OSError, ValueError):  # a file without an index: decode from the start
        video.container.seek(0)


class _Sampler:
    """Picks the samples of one window from its frames, in order (see :func:`sample_window`)."""

    def __init__(self, start: float, every: float, cut_budget: int) -> None:
        self.every = every
        self.due = math.ceil(start / every - 1e-9) * every  # the next grid time
        self.cut_budget = cut_budget
        self.last_sample = -math.inf
        self.previous: npt.NDArray[np.float32] | None = None
        self.changes: deque[float] = deque(maxlen=5)

    def wanted(self, shown: float) -> bool:
        """Whether a frame shown then may be sampled (if not, it is decoded only if others refer to it)."""
        return shown >= self.due - 1e-6

    def after_cut(self, frame: Any) -> bool:
        """Whether the frame follows a cut: its colours jump, far more than the motion just before."""
        signature = _signature(frame)
        previous, self.previous = self.previous, signature
        if previous is None:
            return False
        change = _change(signature, previous)
        jump = change >= CUT_MIN_CHANGE and change >= CUT_JUMP * _mean(self.changes)
        self.changes.append(change)
        return jump

    def take(self, t: float, cut: bool) -> bool:
        """Whether the frame at ``t`` (``cut``: after a cut) is a sample."""
        on_grid = t >= self.due - 1e-6
        by_cut = not on_grid and cut and t - self.last_sample >= MIN_CUT_GAP and self.cut_budget > 0
        if on_grid:
            self.due = (math.floor(t / self.every + 1e-6) + 1) * self.every
        if by_cut:
            self.cut_budget -= 1
        if on_grid or by_cut:
            self.last_sample = t
        return on_grid or by_cut


def _sample(video: _Video, start: float, end: float, *, side: int, every: float, limit: int) -> Window:
    samples: list[Sample] = []
    frames = 0
    last_end: float | None = None
    next_time: float | None = None
    sampler = _Sampler(start, every, cut_budget=max(0, limit - math.ceil((end - start) / every)))
    t: float | None = None
    broken = False
    try:
        for frame in _frames(video, wanted=sampler.wanted, keys_only_gap=KEYFRAMES_ONLY_GAP * every):
            t = _time(frame, video, t)
            if t >= end:
                next_time = t
                break
            cut = sampler.after_cut(frame)
            if t < start:  # decoded from the keyframe before the window: only sets the scene
                continue
            frames += 1
            last_end = t + _duration(frame, video)
            if sampler.take(t, cut):
                samples.append(Sample(t, _picture(frame, video, side), cut))
    except _Unreadable:
        broken = True
    return Window(samples, frames, last_end, next_time, broken)


def _mean(values: deque[float]) -> float:
    return sum(values) / len(values) if values else 0.0


# -- one frame --------------------------------------------------------------------------------------


def frame_at(path: str | Path, time: float, *, max_pixels: int, side: int | None = None) -> Image.Image:
    """The frame shown at ``time`` seconds (the first at or after it, else the last), upright, its
    shorter side shrunk to ``side`` (None: the display size).

    Raises:
        ImageError: the file cannot be opened as a video, or holds no decodable frame.
    """
    with _opened(path, max_pixels) as video:
        if time > 0:
            _seek(video, time)
        found = None
        t: float | None = None
        try:
            for frame in _frames(video):
                t = _time(frame, video, t)
                if t > time + 1e-3:  # past it: the frame before is the one shown (else this first one)
                    if found is None:
                        found = frame
                    break
                found = frame
        except _Unreadable:
            pass
        if found is None:
            raise ImageError("corrupt", "no video frame could be decoded")
        return _picture(found, video, side)
