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
from clipsearch.errors import ImageError
from clipsearch.ingest.scan import FileRecord
from clipsearch.store.catalog import Catalog, FileState

T = TypeVar("T")
R = TypeVar("R")


class Prepared(NamedTuple):
    """A file after the worker stage: pixels to encode, or a known hash, or an error.

    ``pixels`` are ``(H, W, 3)`` uint8 from a :class:`~clipsearch.encoders.pixels.PixelTransform`'s
    ``resize_crop`` (normalised later, a batch at a time), or the model's own ``(3, H, W)`` float32.
    ``views`` are the file's further vectors to encode, as (kind, pixels) in view order 1, 2, ...:
    the side crops of a wide or tall picture when the index covers the whole frame.
    """

    record: FileRecord
    digest: str | None
    pixels: npt.NDArray[Any] | None
    width: int
    height: int
    taken: float | None
    error: ImageError | None
    views: tuple[tuple[str, npt.NDArray[Any]], ...] = ()


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

    def limit_for(self, path: str) -> int:
        """The pixel limit of the file at ``path`` (its root's)."""
        for root, limit in self.root_limits:
            if path == root or path.startswith(root.rstrip("/") + "/"):
                return limit
        return self.max_pixels

    def decode(
        self, item: tuple[FileRecord, FileState | None], is_known: Callable[[str], bool]
    ) -> tuple[Prepared, FileState | None]:
        """``prepare`` one (record, catalogued state) pair; the state rides along for the committer."""
        prep = prepare(
            item[0],
            is_known=is_known,
            preprocess=self.transform,
            min_side=self.min_side,
            max_pixels=self.limit_for(item[0].path),
            views=self.views,
        )
        return prep, item[1]


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


def _decode_in_worker(item: tuple[FileRecord, FileState | None]) -> tuple[Prepared, FileState | None]:
    assert _worker_job is not None and _worker_known is not None  # set by _init_worker
    return _worker_job.decode(item, _worker_known)


def _spawn_can_start() -> bool:
    """Spawned workers re-import the parent's main script: impossible for one piped into stdin."""
    main_file = getattr(sys.modules.get("__main__"), "__file__", None)
    return main_file is None or os.path.exists(main_file)


def open_decoder(
    job: DecodeJob, workers: int, *, processes: bool
) -> tuple[
    Executor,
    Callable[[tuple[FileRecord, FileState | None]], tuple[Prepared, FileState | None]],
    Callable[[], None],
]:
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


def bounded_map(
    pool: ThreadPoolExecutor, fn: Callable[[T], R], items: Iterable[T], window: int
) -> Iterator[R]:
    """``pool.map`` in order, but with at most ``window`` items in flight (flat memory)."""
    queue: deque[Future[R]] = deque()
    iterator = iter(items)
    for item in iterator:
        queue.append(pool.submit(fn, item))
        if len(queue) >= window:
            break
    while queue:
        result = queue.popleft().result()
        for item in iterator:
            queue.append(pool.submit(fn, item))
            break
        yield result
