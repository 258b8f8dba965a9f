"""Videos in the ingest pipeline: windows of frames decoded in the workers, moments grown in the committer.

A new video is handed on in windows (``VIDEO_WINDOW`` seconds of it each): a worker decodes one
window and returns its sampled frames, preprocessed (a few MB); the committer encodes them and feeds
the video's :class:`~clipsearch.ingest.moments.MomentMerger`, then drops them. A few windows are in
flight at once, so memory stays that of a few windows whatever the video's length, and the windows of
one video decode in parallel. The video is committed whole once its last window is in: a crash
mid-video loses that video's work, nothing else.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import numpy.typing as npt

from clipsearch.encoders.video import MAX_VIDEO_SECONDS, SAMPLE_EVERY, sample_window
from clipsearch.errors import ImageError
from clipsearch.ingest.moments import MAX_MOMENTS, MOMENT_SIMILARITY, Moment, MomentMerger
from clipsearch.ingest.scan import FileRecord

#: Seconds of a video a worker decodes per task: long enough that seeking to the keyframe before
#: each window costs little, short enough that several windows decode in parallel.
VIDEO_WINDOW = 30.0


class VideoTask(NamedTuple):
    """One window of a video to decode: frames with times in ``[start, end)``."""

    record: FileRecord
    digest: str
    start: float
    end: float


class WindowResult(NamedTuple):
    """A decoded window: its samples' times, whether each follows a cut, their preprocessed pixels
    (stacked; None without samples), frames decoded, the end of its last frame, the time of the first
    frame after it (None: the stream ended, ``broken`` if it became unreadable), the worker's CPU
    seconds, and the error that stopped it from opening the file at all."""

    task: VideoTask
    times: list[float]
    cuts: list[bool]
    pixels: npt.NDArray[Any] | None
    frames: int
    end: float | None
    next_time: float | None
    broken: bool = False
    seconds: float = 0.0
    error: ImageError | None = None


def window_cost(window: float) -> int:
    """Most samples a window can hold: what it weighs in the decoders' look-ahead, in pictures."""
    return max(1, math.ceil(2 * window / SAMPLE_EVERY))


def decode_window(
    task: VideoTask, *, transform: Callable[[Any], Any], side: int, max_pixels: int
) -> WindowResult:
    """Sample one window of a video and preprocess its frames with ``transform`` (in a worker)."""
    started = time.thread_time()
    try:
        window = sample_window(task.record.path, task.start, task.end, side=side, max_pixels=max_pixels)
        samples = [np.asarray(transform(s.image)) for s in window.samples]
    except ImageError as exc:
        seconds = time.thread_time() - started
        return WindowResult(task, [], [], None, 0, None, None, error=exc, seconds=seconds)
    except MemoryError:
        error = ImageError("too-large", "not enough memory to decode its frames")
        return WindowResult(task, [], [], None, 0, None, None, error=error)
    return WindowResult(
        task,
        [s.time for s in window.samples],
        [s.cut for s in window.samples],
        np.stack(samples) if samples else None,
        window.frames,
        window.end,
        window.next_time,
        window.broken,
        time.thread_time() - started,
    )


class VideoPlan:
    """The windows of a video, made as they are asked for (lazily), until the video is known to end.

    The committer tells it what each window found: where the stream ended, or that the next frame
    comes much later (timestamps that jump), so windows with nothing in them are not decoded.
    """

    def __init__(self, record: FileRecord, digest: str, window: float) -> None:
        self.record = record
        self.digest = digest
        self.window = window
        self.next_start = 0.0
        self.done = False

    def __iter__(self) -> Iterator[VideoTask]:
        while not self.done and self.next_start < MAX_VIDEO_SECONDS:
            start = self.next_start
            self.next_start = start + self.window
            yield VideoTask(self.record, self.digest, start, start + self.window)

    def found(self, result: WindowResult) -> None:
        """What a window found (results come in window order)."""
        if result.next_time is None or result.error is not None:
            self.done = True
        elif result.next_time >= self.next_start + self.window:  # a gap: skip the empty windows
            self.next_start = math.floor(result.next_time / self.window) * self.window


@dataclass
class VideoInProgress:
    """A new video whose windows are being decoded: its moments so far, and the files that hold the
    same content (copies met meanwhile), to be committed with it."""

    plan: VideoPlan
    merger: MomentMerger
    copies: list[FileRecord] = field(default_factory=list)
    end: float | None = None
    frames: int = 0
    decode_seconds: float = 0.0
    finished: bool = False
    error: ImageError | None = None

    @classmethod
    def start(
        cls,
        record: FileRecord,
        digest: str,
        *,
        window: float = VIDEO_WINDOW,
        threshold: float = MOMENT_SIMILARITY,
        max_moments: int = MAX_MOMENTS,
    ) -> VideoInProgress:
        merger = MomentMerger(threshold=threshold, max_moments=max_moments)
        return cls(VideoPlan(record, digest, window), merger)

    def take(
        self, result: WindowResult, encode: Callable[[npt.NDArray[Any]], npt.NDArray[np.float32]]
    ) -> bool:
        """Add a window's frames (encoded with ``encode``); whether the video is complete now."""
        if self.finished:  # a window decoded ahead of the one that found the end
            return True
        self.decode_seconds += result.seconds
        if result.error is not None:
            self.error = result.error
            self.finished = True
            return True
        if result.pixels is not None:
            for t, vector in zip(result.times, encode(result.pixels), strict=True):
                self.merger.add(t, vector)
        self.frames += result.frames
        if result.end is not None:
            self.end = result.end if self.end is None else max(self.end, result.end)
        self.plan.found(result)
        last = result.next_time is None or result.task.end >= MAX_VIDEO_SECONDS
        self.finished = last
        return last

    def moments(self) -> list[Moment]:
        """The video's moments, in time order (none when no frame could be decoded)."""
        return self.merger.finish(self.end)
