"""The decode stage: read, hash, decode and preprocess files in parallel, ahead of the encoder.

A pure function (``prepare``) over plain records, run by worker processes that never import torch
(``open_decoder``), or by threads for a handful of files. Another engine (Ray Data) can run
``prepare`` the same way.
"""

from __future__ import annotations

import ctypes
import functools
import multiprocessing
import os
import signal
import sys
import threading
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor, ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple, TypeVar

import numpy as np
import numpy.typing as npt

from clipsearch.encoders.images import max_file_bytes, open_image, read_header, read_image_file
from clipsearch.encoders.video import VideoFacts, is_video_name, probe_video
from clipsearch.errors import ImageError
from clipsearch.files import NotRegularFileError, open_regular_file
from clipsearch.ingest.scan import FileRecord
from clipsearch.ingest.video import VideoTask, WindowResult, decode_window, window_cost
from clipsearch.store.catalog import Catalog, FileState

T = TypeVar("T")
R = TypeVar("R")


class Prepared(NamedTuple):
    """A file after the worker stage: pixels to encode, or a known hash, or an error.

    ``pixels`` are ``(H, W, 3)`` uint8 from a :class:`~clipsearch.encoders.pixels.PixelTransform`'s
    ``resize_crop`` (normalised later, a batch at a time), or the model's own ``(3, H, W)`` float32.
    ``views`` are the file's further vectors to encode, as (kind, pixels) in view order 1, 2, ...:
    the side crops of a wide or tall picture when the index covers the whole frame. ``video``: a new
    video (no pixels yet: its frames follow in windows, see :mod:`clipsearch.ingest.video`).
    """

    record: FileRecord
    digest: str | None
    pixels: npt.NDArray[Any] | None
    width: int
    height: int
    taken: float | None
    error: ImageError | None
    views: tuple[tuple[str, npt.NDArray[Any]], ...] = ()
    video: VideoFacts | None = None


def file_digest(data: bytes) -> str:
    """Content hash used to recognise the same file under another name."""
    import xxhash

    return xxhash.xxh3_128_hexdigest(data)


def prepare(
    record: FileRecord,
    *,
    is_known: Callable[[str], bool],
    preprocess: Callable[[object], object],
    min_side: int,
    max_pixels: int,
    views: Callable[[Any], list[tuple[str, Any]]] | None = None,
) -> Prepared:
    """Read, hash and (unless the content is already indexed) decode and preprocess one file, and
    make its further ``views`` (side crops) from the same decoded image."""
    try:  # a regular file of bounded size only: never a FIFO or device named like an image
        data = read_image_file(record.path, max_bytes=max_file_bytes(max_pixels))
    except ImageError as exc:
        return Prepared(record, None, None, 0, 0, None, exc)
    digest = file_digest(data)
    if is_known(digest):
        return Prepared(record, digest, None, 0, 0, None, None)
    try:
        image = open_image(data, max_pixels=max_pixels, min_side=min_side)
        pixels = np.asarray(preprocess(image))
        extra = tuple((kind, np.asarray(p)) for kind, p in views(image)) if views is not None else ()
    except ImageError as exc:
        return Prepared(record, digest, None, 0, 0, None, exc)
    except MemoryError:  # one file the machine cannot hold is skipped, not the end of the run
        error = ImageError("too-large", "not enough memory to decode and resize it")
        return Prepared(record, digest, None, 0, 0, None, error)
    header = read_header(data)  # the size as stored, not as decoded (JPEG draft shrinks it)
    width, height = (header.width, header.height) if header.width else image.size
    return Prepared(record, digest, pixels, width, height, header.taken, None, extra)


def hash_file(path: str, chunk: int = 1 << 20) -> str:
    """:func:`file_digest` of a file read a chunk at a time (a video is never held whole).

    Raises:
        ImageError: ``missing``, ``not-a-file`` or ``unreadable``.
    """
    import xxhash

    digest = xxhash.xxh3_128()
    try:
        with open_regular_file(path) as fh:
            while block := fh.read(chunk):
                digest.update(block)
    except FileNotFoundError as exc:
        raise ImageError("missing", "the file disappeared before it could be read") from exc
    except NotRegularFileError as exc:
        if exc.kind == "a folder":
            raise ImageError("not-an-image", "is a directory") from exc
        raise ImageError("not-a-file", f"{exc.kind}, not a regular file") from exc
    except OSError as exc:
        raise ImageError("unreadable", f"cannot read: {exc.strerror or exc}") from exc
    return digest.hexdigest()


def prepare_video(record: FileRecord, *, is_known: Callable[[str], bool], max_pixels: int) -> Prepared:
    """Hash a video file and, unless its content is indexed already, read its header and first frame."""
    try:
        digest = hash_file(record.path)
    except ImageError as exc:
        return Prepared(record, None, None, 0, 0, None, exc)
    if is_known(digest):
        return Prepared(record, digest, None, 0, 0, None, None)
    try:
        facts = probe_video(record.path, max_pixels=max_pixels)
    except ImageError as exc:
        return Prepared(record, digest, None, 0, 0, None, exc)
    return Prepared(record, digest, None, facts.width, facts.height, facts.taken, None, video=facts)


class _KnownHashes:
    """Thread-safe 'is this content already indexed?' via one read connection per thread."""

    def __init__(self, catalog_path: Path) -> None:
        self._path = catalog_path
        self._local = threading.local()
        self._conns: list[Catalog] = []
        self._lock = threading.Lock()

    def __call__(self, digest: str) -> bool:
        conn: Catalog | None = getattr(self._local, "catalog", None)
        if conn is None:
            conn = Catalog(self._path)
            self._local.catalog = conn
            with self._lock:
                self._conns.append(conn)
        return conn.content_id(digest) is not None

    def close(self) -> None:
        for conn in self._conns:
            conn.close()


#: Below this many files to decode, worker processes cost more to start than they save.
PROCESS_THRESHOLD = 64


@dataclass(frozen=True)
class DecodeJob:
    """Everything a decoding worker needs; picklable, so workers need not import torch."""

    catalog: Path
    transform: Callable[[Any], Any]
    min_side: int
    max_pixels: int
    #: (root, pixel limit of its files) where a root's limit is not ``max_pixels``
    root_limits: tuple[tuple[str, int], ...] = ()
    #: a picture's further views (side crops), or None for one vector per picture
    views: Callable[[Any], list[tuple[str, Any]]] | None = None
    parent_pid: int = field(default_factory=os.getpid)
    #: shorter side video frames are decoded at, before ``transform``; 0: ``min_side``
    frame_side: int = 0

    def limit_for(self, path: str) -> int:
        """The pixel limit of the file at ``path`` (its root's)."""
        for root, limit in self.root_limits:
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return limit
        return self.max_pixels

    def decode(self, item: Task, is_known: Callable[[str], bool]) -> Decoded:
        """``prepare`` one (record, catalogued state) pair (the state rides along for the committer),
        or decode one window of a video."""
        if isinstance(item, VideoTask):
            limit = self.limit_for(item.record.path)
            side = self.frame_side or self.min_side
            return decode_window(item, transform=self.transform, side=side, max_pixels=limit)
        if is_video_name(item[0].path):
            return prepare_video(item[0], is_known=is_known, max_pixels=self.limit_for(item[0].path)), item[1]
        prep = prepare(
            item[0],
            is_known=is_known,
            preprocess=self.transform,
            min_side=self.min_side,
            max_pixels=self.limit_for(item[0].path),
            views=self.views,
        )
        return prep, item[1]


#: What the decoders are given: a file (with its catalogued state), or a window of a video.
Task = tuple[FileRecord, FileState | None] | VideoTask
#: What they return: the file prepared (with that state), or the window's samples.
Decoded = tuple[Prepared, FileState | None] | WindowResult


def task_cost(item: Task) -> int:
    """What a task weighs in the look-ahead, in decoded pictures (a video window: its most samples)."""
    return window_cost(item.end - item.start) if isinstance(item, VideoTask) else 1


_worker_job: DecodeJob | None = None
_worker_known: _KnownHashes | None = None


def _init_worker(job: DecodeJob) -> None:
    global _worker_job, _worker_known
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C is the parent's to handle
    if sys.platform.startswith("linux"):  # a kill -9 of the indexer must not leave workers behind
        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != job.parent_pid:  # the parent died before prctl took effect
        os._exit(1)
    _worker_job, _worker_known = job, _KnownHashes(job.catalog)


def _decode_in_worker(item: Task) -> Decoded:
    assert _worker_job is not None and _worker_known is not None  # set by _init_worker
    return _worker_job.decode(item, _worker_known)


def _spawn_can_start() -> bool:
    """Spawned workers re-import the parent's main script: impossible for one piped into stdin."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


def open_decoder(
    job: DecodeJob, workers: int, *, processes: bool
) -> tuple[Executor, Callable[[Task], Decoded], Callable[[], None]]:
    """A pool that reads, hashes, decodes and preprocesses files: (executor, work function, cleanup).

    Worker processes (fresh interpreters, not forks of this torch-laden process; they die with
    it) when ``processes``; otherwise threads of this process.
    """
    if processes and _spawn_can_start():
        context = multiprocessing.get_context("spawn")
        pool = ProcessPoolExecutor(workers, mp_context=context, initializer=_init_worker, initargs=(job,))
        return pool, _decode_in_worker, lambda: None
    known = _KnownHashes(job.catalog)
    work = functools.partial(job.decode, is_known=known)
    return ThreadPoolExecutor(workers, thread_name_prefix="clipsearch-decode"), work, known.close


class OrderedStream:
    """``pool.map`` in order with a bounded look-ahead, to which the consumer adds follow-up tasks.

    Tasks weigh ``cost(task)``; tasks are submitted while less than ``budget`` is in flight (so memory
    stays flat). :meth:`follow` queues an iterator of further tasks (a video's windows, made lazily)
    that run before the rest of ``items``, after the follow-ups queued before it.
    """

    def __init__(
        self,
        pool: Executor,
        fn: Callable[[T], R],
        items: Iterable[T],
        budget: int,
        cost: Callable[[T], int] = lambda _: 1,
    ) -> None:
        self.pool, self.fn, self.budget, self.cost = pool, fn, budget, cost
        self.items = iter(items)
        self.follow_ups: deque[Iterator[T]] = deque()
        self.in_flight: deque[tuple[Future[R], int]] = deque()
        self.load = 0

    def follow(self, tasks: Iterable[T]) -> None:
        self.follow_ups.append(iter(tasks))

    def _next_task(self) -> tuple[bool, T | None]:
        while self.follow_ups:
            for task in self.follow_ups[0]:
                return True, task
            self.follow_ups.popleft()
        for task in self.items:
            return True, task
        return False, None

    def _fill(self) -> None:
        while self.load < self.budget:
            found, task = self._next_task()
            if not found:
                return
            weight = self.cost(task)  # type: ignore[arg-type]
            self.in_flight.append((self.pool.submit(self.fn, task), weight))  # type: ignore[arg-type]
            self.load += weight

    def __iter__(self) -> Iterator[R]:
        while True:
            self._fill()
            if not self.in_flight:
                return
            future, weight = self.in_flight.popleft()
            result = future.result()
            self.load -= weight
            self._fill()  # the workers go on while the consumer handles this result
            yield result
