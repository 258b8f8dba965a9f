"""Sync roots with an index: scan -> plan -> prepare (read, hash, decode) -> encode -> commit.

Each stage is a plain function over plain records, so another engine (processes, Ray) can run
them. Ordering follows STYLE.md: stat (size, mtime_ns) decides what to open; the content hash
decides what to encode (a moved or copied file reuses its vector); what disappeared is swept last.
A sync takes an :class:`~clipsearch.store.folder.IndexFolder` and a :class:`SyncModel` (the model,
loaded lazily and checked against the index by whoever hands it over), never the façade.
"""

from __future__ import annotations

import os
import sqlite3
import time
from collections import Counter
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field
from typing import TYPE_CHECKING, Any, Protocol, TypeVar

import numpy as np
import numpy.typing as npt

from clipsearch.encoders.facts import ModelFacts, ModelPreview, draft_side
from clipsearch.encoders.images import DEFAULT_MAX_PIXELS
from clipsearch.encoders.video import is_video_name
from clipsearch.errors import (
    ClipsearchError,
    ImageError,
    IndexAccessError,
    MissingRootsError,
    NoRootsError,
    RootInsideRootError,
    UsageError,
)
from clipsearch.ingest.commit import FileRow, NewContent, NewVideo, commit_batch
from clipsearch.ingest.decode import (
    PROCESS_THRESHOLD,
    DecodeJob,
    OrderedStream,
    Prepared,
    open_decoder,
    task_cost,
)
from clipsearch.ingest.moments import MAX_MOMENTS, MOMENT_SIMILARITY, Moment, representative
from clipsearch.ingest.scan import FileRecord, exclude_spec, scan
from clipsearch.ingest.video import VIDEO_WINDOW, VideoInProgress, WindowResult
from clipsearch.store.catalog import Catalog, FileState, RootSettings, View, fsdecode, fsencode
from clipsearch.store.folder import IndexFolder
from clipsearch.store.rebuild import live_root_settings

if TYPE_CHECKING:
    from clipsearch.encoders.encoder import Encoder

T = TypeVar("T")
R = TypeVar("R")


@dataclass(frozen=True)
class SyncOptions:
    """How to run a sync.

    ``include_hidden``, ``exclude`` and ``max_pixels`` are settings of the roots synced: given
    (not None), they are recorded for those roots (every recorded root when none is given) and
    used by their later syncs; None keeps each root's recorded setting (the default for a new root).

    Args:
        include_hidden: also index dot-files and files in dot-folders.
        exclude: gitignore-style patterns (relative to each root) of files and folders to leave out;
            they replace the root's recorded patterns (``()`` clears them).
        batch_size: images per encoder call.
        workers: processes (or threads) reading and decoding files ahead of the encoder.
        processes: decode in worker processes (true parallelism beside the encoder); threads if
            false, or when there are only a few files to decode.
        encode_threads: torch threads encoding batches while worker processes decode; None:
            every core when ``passive_wait``, else the cores the workers leave, at least 1: OpenMP
            threads that spin while they wait for each other burn the cores the workers need.
        passive_wait: torch's OpenMP threads sleep while they wait (``OMP_WAIT_POLICY=PASSIVE`` was
            set before torch was imported; the CLI does that).
        max_pixels: images larger than this are skipped (decompression-bomb guard); raising a
            root's limit retries the files of it skipped as too large.
        commit_every: most catalog rows held in memory before a commit.
        checkpoint_every: pending vectors after which the FAISS file is rewritten mid-run.
        export_text: after the sync, export the model's text tower for fast cold text searches
            (once per model and machine; see :mod:`clipsearch.encoders.onnx_export`).
        video_window: seconds of a video one decoding task takes (see :mod:`clipsearch.ingest.video`).
        moment_similarity: a video frame joins the moment it follows while their cosine similarity
            is at least this (see :mod:`clipsearch.ingest.moments`).
        max_moments: most moments a video keeps (past it, the most alike neighbours merge).

    Raises:
        BadValueError: ("exclude", pattern) for a pattern that is not valid gitignore syntax.
    """

    include_hidden: bool | None = None
    exclude: tuple[str, ...] | None = None
    batch_size: int = 32
    workers: int = max(1, min(4, os.cpu_count() or 1))
    processes: bool = True
    encode_threads: int | None = None
    passive_wait: bool = False
    max_pixels: int | None = None
    commit_every: int = 512
    checkpoint_every: int = 20_000
    export_text: bool = True
    video_window: float = VIDEO_WINDOW
    moment_similarity: float = MOMENT_SIMILARITY
    max_moments: int = MAX_MOMENTS

    @classmethod
    def for_device(cls, device: str, **given: Any) -> SyncOptions:
        """Options for encoding on ``device`` (``cpu`` or ``cuda``), ``given`` ones kept.

        On a GPU the decoders are the bottleneck: a decoding process on every core
        (``gpu_workers``), larger batches (128), and one torch thread (the GPU computes; the
        main process only hands batches over).
        """
        if device.startswith("cuda"):
            given = {"workers": gpu_workers(), "batch_size": 128, "encode_threads": 1, **given}
        return cls(**given)

    def __post_init__(self) -> None:
        if self.video_window <= 0:
            raise UsageError(f"video_window {self.video_window!r}: give a number of seconds above 0.")
        if self.max_moments < 1:
            raise UsageError(f"max_moments {self.max_moments!r}: a video keeps at least one moment.")
        if self.exclude:
            exclude_spec(self.exclude)  # a bad pattern is a BadValueError now, before any work

    @property
    def sets_settings(self) -> bool:
        """Whether any root setting is given (else each root keeps its recorded ones)."""
        return any(v is not None for v in (self.include_hidden, self.exclude, self.max_pixels))

    def settings_for(self, recorded: RootSettings | None) -> RootSettings:
        """A root's settings for this run: its recorded ones (defaults for a new root), changed by
        those given here."""
        base = recorded or RootSettings()
        return RootSettings(
            base.include_hidden if self.include_hidden is None else self.include_hidden,
            base.exclude if self.exclude is None else tuple(p for p in self.exclude if p.strip()),
            base.max_pixels if self.max_pixels is None else self.max_pixels,
        )


def pixel_limit(settings: RootSettings) -> int:
    """The largest image a root's files may decode to."""
    return settings.max_pixels or DEFAULT_MAX_PIXELS


class Progress(Protocol):
    """Receives progress; the CLI draws it, the library never prints."""

    def start(self, total: int) -> None: ...

    def advance(self, n: int = 1) -> None: ...

    def finish(self) -> None: ...

    def note(self, message: str) -> None:
        """A one-line status, e.g. that the model is being loaded."""


@dataclass
class SyncReport:
    """What a sync did. ``skip_reasons`` counts skipped files per reason code; ``seconds`` is the
    whole call, model load and text export included; ``warnings``: what was left out and why (an
    ignore file's bad line, an ignore file that is not a regular file), one line each."""

    index: str
    added: int = 0
    updated: int = 0
    reused: int = 0
    removed: int = 0
    unchanged: int = 0
    skipped: int = 0
    skip_reasons: dict[str, int] = field(default_factory=dict)
    missing_roots: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    seconds: float = 0.0
    interrupted: bool = False
    #: a rebuild: built beside the index, which it replaced once complete (unless interrupted)
    rebuild: bool = False
    #: "exported" when this sync exported the model's text tower, "unavailable" when it cannot be
    #: (``text_export_reason`` says why), "" when there was nothing to do
    text_export: str = ""
    text_export_reason: str = ""
    #: why the vector files were rebuilt after the sync (another kind, new training), "" if not
    reorganized: str = ""
    #: new videos indexed, their sampled frames, their moments (vectors) and their length in seconds
    videos: int = 0
    video_samples: int = 0
    moments: int = 0
    video_seconds: float = 0.0
    #: CPU seconds spent decoding video windows (in the workers), and seconds encoding their frames
    video_decode_seconds: float = 0.0
    video_encode_seconds: float = 0.0
    #: where the pipeline's time went: seconds encoding batches (model load waits included), and
    #: seconds the encoder waited for the decoders with nothing to encode (starved: more workers or a
    #: faster decode would help; near 0: the encoder is the bottleneck)
    encode_seconds: float = 0.0
    decode_wait_seconds: float = 0.0
    #: per machine, for an engine that spreads the work (Ray; empty for the local engine): how
    #: many files it read and how many vectors it encoded, e.g. ``{"host/1a2b3c4d": {"read": 96,
    #: "encoded": 101}}``
    nodes: dict[str, dict[str, int]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, object]:
        return asdict(self)


class SyncModel(Protocol):
    """The model a sync encodes with, as the façade hands it over.

    It loads lazily (in the background once :meth:`start` is called) and is checked against the
    index by its provider: the sync only asks for what it needs, when it needs it.
    """

    @property
    def label(self) -> str:
        """The model's name for messages."""

    @property
    def in_memory(self) -> bool:
        """Whether the model is loaded or loading already (no status line needed)."""

    def start(self) -> None:
        """Start loading the image tower in the background, unless it is in memory."""

    def preview(self) -> ModelPreview | None:
        """The preview kept on this machine from the model's last build (None if in memory or none)."""

    def facts(self) -> ModelFacts:
        """The built model's facts (waits until it is built, not for its weights)."""

    def confirm(self, preview: ModelPreview | None) -> bool:
        """Whether ``preview`` (None: the one a new index was made from) is the model's own."""

    def confirmed(self, preview: ModelPreview) -> None:
        """``preview`` was found to be the model's own where the model was built (another machine
        that loaded the same weights): nothing is left to check here."""

    def encoder(self) -> Encoder:
        """The loaded image encoder (waits for its weights)."""


class StalePreview(Exception):
    """The model preview decoding started with is not the model's: nothing was committed, decode again."""


class SyncInterrupted(ClipsearchError):
    """Ctrl-C during a sync: what was committed is kept; running the sync again resumes."""

    exit_code = 130

    def __init__(self, report: SyncReport) -> None:
        if report.rebuild:
            message = (
                f"Interrupted. The rebuild so far is saved beside the index at {report.index}, which "
                "searches still use until the rebuild is complete; run the same rebuild again to resume it."
            )
        else:
            message = (
                f"Interrupted. The batches already done are saved in {report.index}; sync again to resume."
            )
        super().__init__(message)
        self.report = report


@dataclass
class Work:
    """A sync's files to read, decode, encode and commit, with what an engine needs to do it."""

    folder: IndexFolder
    model: SyncModel
    todo: list[tuple[FileRecord, FileState | None]]
    options: SyncOptions
    progress: Progress | None
    #: (root, pixel limit of its files), for every root of the run
    limits: tuple[tuple[str, int], ...]
    #: counted into as files are committed (added, updated, reused, unchanged, skipped and why)
    report: SyncReport


class Engine(Protocol):
    """Runs the decode -> encode -> commit part of a sync: in this process (:class:`LocalEngine`),
    or elsewhere (:mod:`clipsearch.ingest.ray_engine`); the plan before it and the sweep after it
    are the sync's own."""

    def run(self, work: Work) -> None:
        """Commit every to-do file (its vectors, or why it was skipped), counting them in ``work.report``.

        On Ctrl-C, commit what is complete and let the KeyboardInterrupt through."""


@dataclass(frozen=True)
class Plan:
    """Result of comparing a scan with the catalog."""

    todo: list[tuple[FileRecord, FileState | None]]
    unchanged: int
    gone: list[str]


def plan_sync(catalog: Catalog, roots: list[str], records: Iterable[FileRecord]) -> Plan:
    """Split scanned files into to-do (new or changed) and unchanged; list catalogued files gone."""
    known: dict[bytes, tuple[int, int, int | None, str | None]] = {}
    for root in roots:
        known.update(catalog.file_rows_under(root))  # rows as stored: millions, most unchanged
    todo: list[tuple[FileRecord, FileState | None]] = []
    unchanged = 0
    pop = known.pop
    for record in records:
        row = pop(fsencode(record.path), None)
        if row is not None and row[0] == record.size and row[1] == record.mtime_ns:
            unchanged += 1
        else:
            todo.append((record, None if row is None else FileState(*row)))
    return Plan(todo, unchanged, sorted(fsdecode(path) for path in known))


class _Committer:
    """Accumulates prepared files and commits them in transactions: vectors and rows together."""

    def __init__(
        self, folder: IndexFolder, model: SyncModel, report: SyncReport, options: SyncOptions
    ) -> None:
        self.folder = folder
        self.model = model
        self.catalog = folder.catalog
        self.report = report
        self.options = options
        self.queue: dict[str, Prepared] = {}  # digest -> first file with that new content
        self.queued_vectors = 0  # the queue's pictures and their views: what the next encode takes
        self.rows: list[tuple[FileRecord, str | None, str | None]] = []  # record, digest, error
        self.since_checkpoint = 0
        self.reasons: Counter[str] = Counter()
        self.threads: int | None = None  # torch threads per encode; set while workers decode
        self.unverified: ModelPreview | None = None  # the cached preview the files were decoded with
        # new videos whose windows are being decoded (digest -> video, and its file as first prepared)
        self.videos: dict[str, tuple[VideoInProgress, Prepared, str]] = {}
        self.finished: list[tuple[Prepared, list[Moment]]] = []  # complete videos, for the next commit

    def take(self, prep: Prepared, old: FileState | None) -> VideoInProgress | None:
        """Take a prepared file; a new video is returned, its windows to decode next (``plan``)."""
        record, report = prep.record, self.report
        started = None
        if prep.error is not None:
            self._skip(record, prep.error)
        elif prep.digest in self.videos:  # a copy of a video being decoded: committed with it
            report.reused += 1
            self.videos[prep.digest][0].copies.append(record)
        elif prep.video is not None and not self._known(prep.digest):
            assert prep.digest is not None
            counter = "added" if old is None or old.content_id is None else "updated"
            setattr(report, counter, getattr(report, counter) + 1)
            started = VideoInProgress.start(
                record,
                prep.digest,
                window=self.options.video_window,
                threshold=self.options.moment_similarity,
                max_moments=self.options.max_moments,
            )
            self.videos[prep.digest] = (started, prep, counter)
        elif prep.pixels is None or prep.digest in self.queue or self._known(prep.digest):
            assert prep.digest is not None
            if (
                old is not None
                and old.content_id is not None
                and old.content_id == self.catalog.content_id(prep.digest)
            ):
                report.unchanged += 1  # touched, same bytes
            else:
                report.reused += 1
            self.rows.append((record, prep.digest, None))
        else:
            assert prep.digest is not None
            if old is None or old.content_id is None:
                report.added += 1
            else:
                report.updated += 1
            self.queue[prep.digest] = prep
            self.queued_vectors += 1 + len(prep.views)
            self.rows.append((record, prep.digest, None))
        if self.queued_vectors >= self.options.batch_size or len(self.rows) >= self.options.commit_every:
            self.commit()
        return started

    def _skip(self, record: FileRecord, error: ImageError) -> None:
        self.report.skipped += 1
        self.reasons[error.reason] += 1
        self.rows.append((record, None, f"{error.reason}: {error.detail}"))

    def take_window(self, result: WindowResult) -> bool:
        """Encode a video window's frames into its moments; whether that completed the video (it is
        then committed, with its copies)."""
        entry = self.videos.get(result.task.digest)
        if entry is None:  # a window decoded past the end of a video already complete
            return False
        video, prep, counter = entry
        if not video.take(result, self._encode_frames):
            return False
        del self.videos[result.task.digest]
        report = self.report
        report.video_decode_seconds = round(report.video_decode_seconds + video.decode_seconds, 3)
        moments = video.moments()
        if video.error is not None or not moments:
            error = video.error or ImageError("corrupt", "no video frame could be decoded")
            setattr(report, counter, getattr(report, counter) - 1)
            report.reused -= len(video.copies)
            for record in (prep.record, *video.copies):
                self._skip(record, error)
        else:
            self.finished.append((prep, moments))
            self.rows += [(record, prep.digest, None) for record in (prep.record, *video.copies)]
            report.videos += 1
            report.moments += len(moments)
            report.video_seconds = round(report.video_seconds + (moments[-1].end or 0.0), 3)
        self.commit()  # now: a crash later loses nothing of this video
        return True

    def _encode_frames(self, pixels: npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        started = time.monotonic()
        self.report.video_samples += len(pixels)
        size = self.options.batch_size
        vectors = np.concatenate([self._encode(pixels[i : i + size]) for i in range(0, len(pixels), size)])
        self.report.video_encode_seconds = round(
            self.report.video_encode_seconds + time.monotonic() - started, 3
        )
        return vectors

    def _known(self, digest: str | None) -> bool:
        """Content committed since a worker decoded this file (a copy met earlier in this run)."""
        return digest is not None and self.catalog.content_id(digest) is not None

    def commit(self, *, encode: bool = True) -> None:
        """Encode the queued contents and commit them with every accumulated file row.

        Raises:
            StalePreview: the files were decoded with a cached model preview that is not the
                model's (checked before the first commit, so nothing decoded with it is stored).
        """
        if self.unverified is not None:
            if not encode:  # interrupted before the model was checked: keep nothing, redo on resume
                return
            if not self.model.confirm(self.unverified):
                raise StalePreview
            self.unverified = None
        new = list(self.queue.values()) if encode else []
        videos = self.finished if encode else []
        waiting = set(self.queue) | {p.digest for p, _ in self.finished}
        rows = self.rows if encode else [r for r in self.rows if r[1] is None or r[1] not in waiting]
        if not new and not rows and not videos:
            return
        # every picture's main vector, then its views: one encoder batch
        pixels = [p.pixels for p in new] + [view for p in new for _, view in p.views]
        vectors = self._encode(pixels) if new else None
        contents = [
            NewContent(p.digest, p.width, p.height, p.taken, tuple(k for k, _ in p.views))
            for p in new
            if p.digest
        ]
        news = [self._new_video(prep, moments) for prep, moments in videos]
        commit_batch(self.folder, contents, vectors, [FileRow(*r) for r in rows], videos=news)
        if encode:
            self.queue.clear()
            self.finished = []
            self.queued_vectors = 0
        self.rows = [] if encode else [r for r in self.rows if r not in rows]
        self.since_checkpoint += len(new) + sum(len(m) for _, m in videos)
        if self.since_checkpoint >= self.options.checkpoint_every:
            self.folder.checkpoint()
            self.since_checkpoint = 0

    @staticmethod
    def _new_video(prep: Prepared, moments: list[Moment]) -> NewVideo:
        """A video's moments as its views, with their vectors.

        The moment most like the whole video is view 0, the content's main vector (what duplicates
        and "more like this" of the file compare); the others are views 1, 2, ... in time order.
        """
        assert prep.digest is not None
        main = representative(moments)
        order = [main] + [i for i in range(len(moments)) if i != main]
        views = tuple(View(n, "moment", moments[i].start, moments[i].end) for n, i in enumerate(order))
        content = NewContent(prep.digest, prep.width, prep.height, prep.taken)
        return NewVideo(content, views, np.stack([moments[i].vector for i in order]))

    def _encode(self, pixels: list[Any] | npt.NDArray[Any]) -> npt.NDArray[np.float32]:
        """Vectors of prepared pixels: uint8 from the numpy transform are normalised here, a batch at once."""
        started = time.monotonic()
        try:
            encoder = self.model.encoder()  # waits for the model if it is still loading
            batch = np.stack(pixels) if isinstance(pixels, list) else pixels
            if batch.dtype == np.uint8 and encoder.device != "cpu":  # normalised on the GPU
                return encoder.encode_uint8(batch)
            if batch.dtype == np.uint8:
                assert encoder.pixel_transform is not None  # the only source of uint8 pixels
                batch = encoder.pixel_transform.normalize(batch)
            return encoder.encode_pixels(batch, threads=self.threads)
        finally:
            self.report.encode_seconds = round(self.report.encode_seconds + time.monotonic() - started, 3)


def _sweep(folder: IndexFolder, gone: list[str], report: SyncReport) -> None:
    """Forget files that disappeared, and the vectors no file uses any more."""
    folder.check_present()
    with folder.catalog.transaction():
        folder.catalog.delete_files(gone)
        folder.catalog.drop_orphan_contents()
    report.removed = len(gone)


def _decoding_work(todo: list[tuple[FileRecord, FileState | None]]) -> int:
    """Roughly how many pictures' worth of decoding the to-do files hold (a video: one per 256 KB)."""
    return sum(1 + (record.size >> 18 if is_video_name(record.path) else 0) for record, _ in todo)


def gpu_workers() -> int:
    """Decoding processes to feed a GPU: one per core (the encoder leaves the CPU to them)."""
    return max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1)


def encode_threads_beside(workers: int, *, passive_wait: bool) -> int:
    """Torch threads to encode with while ``workers`` processes decode; see SyncOptions.encode_threads.

    On 2 cores, 2 workers, 256 12-MP and 1000 0.8-MP photos, three interleaved rounds: 1 thread
    with spinning OpenMP took 15.8-19.7 s and 30.3-34.5 s, 2 passive threads 13.9-16.9 s and
    27.0-28.8 s.
    """
    cores = os.cpu_count() or 1
    if passive_wait:
        return cores
    return max(1, cores - workers + 1)


def normalize_roots(roots: Iterable[str]) -> list[str]:
    """Absolute, de-duplicated roots, dropping any root nested inside another."""
    absolute = sorted({os.path.abspath(os.path.expanduser(r)) for r in roots})
    kept: list[str] = []
    for root in absolute:
        if not any(root == k or root.startswith(k.rstrip("/") + "/") for k in kept):
            kept.append(root)
    return kept


def sync(
    folder: IndexFolder,
    model: SyncModel,
    roots: list[str] | None,
    options: SyncOptions,
    progress: Progress | None,
    engine: Engine | None = None,
) -> SyncReport:
    """Bring the index in ``folder`` in line with the image files under ``roots``.

    Args:
        folder: the index, opened for writing.
        model: what encodes new images (see :class:`SyncModel`).
        roots: folders or files to index; None: every root the index records.
        engine: what reads, decodes and encodes the files to do (default: :class:`LocalEngine`).

    Raises:
        UsageError: a root does not exist.
        NoRootsError: no roots given and none recorded.
        IndexAccessError: the index could not be written (full disk, permissions, folder removed);
            what was committed before stays intact.
        SyncInterrupted: Ctrl-C; committed batches are kept.
    """
    try:
        return _sync(folder, model, roots, options, progress, engine)
    except (sqlite3.Error, OSError) as exc:
        folder.check_present()  # a deleted index folder: say so, not that anything is intact
        raise IndexAccessError(
            folder.path,
            f"Writing the index at {folder.path} failed: {exc}. Everything committed before is intact; "
            "fix the cause (free disk space, permissions, the folder) and sync again to resume.",
        ) from exc


def _sync(
    folder: IndexFolder,
    model: SyncModel,
    roots: list[str] | None,
    options: SyncOptions,
    progress: Progress | None,
    engine: Engine | None,
) -> SyncReport:
    started = time.monotonic()
    catalog = folder.catalog
    report = SyncReport(index=str(folder.path), rebuild=folder.rebuilding)
    settings = _record_roots(folder, _roots_of_run(folder, roots, options, report), options)
    records = scan(
        list(settings),
        rules_for=lambda root: (settings[root].include_hidden, settings[root].exclude),
        avoid=catalog.roots(),
        warn=report.warnings.append,
    )
    plan = plan_sync(catalog, list(settings), records)
    report.unchanged = plan.unchanged
    limits = tuple(sorted((root, pixel_limit(s)) for root, s in settings.items()))
    try:
        if plan.todo:  # else nothing to decode or encode, and the model is never loaded
            (engine or LocalEngine()).run(Work(folder, model, plan.todo, options, progress, limits, report))
        model.confirm(None)  # a new index made from a preview, with nothing to encode
        _sweep(folder, plan.gone, report)
    except KeyboardInterrupt:
        report.interrupted = True
        raise SyncInterrupted(report) from None
    finally:
        folder.checkpoint()
        report.seconds = round(time.monotonic() - started, 3)
    return report


class LocalEngine:
    """Decode in worker processes of this machine, encode here (:func:`_decode_and_encode`)."""

    def run(self, work: Work) -> None:
        report, unchanged = work.report, work.report.unchanged
        committer = _Committer(work.folder, work.model, report, work.options)
        try:
            try:
                _decode_and_encode(work, committer, cached=True)
            except StalePreview:
                report.added = report.updated = report.reused = report.skipped = 0
                report.unchanged = unchanged
                committer = _Committer(work.folder, work.model, report, work.options)
                _decode_and_encode(work, committer, cached=False)
        except KeyboardInterrupt:
            committer.commit(encode=False)
            raise
        finally:
            count_reasons(report, committer.reasons)


def count_reasons(report: SyncReport, reasons: Counter[str]) -> None:
    """Add skipped files' reasons to the report's ``skip_reasons``."""
    for reason, count in reasons.items():
        report.skip_reasons[reason] = report.skip_reasons.get(reason, 0) + count


def _roots_of_run(
    folder: IndexFolder, roots: list[str] | None, options: SyncOptions, report: SyncReport
) -> dict[str, RootSettings | None]:
    """The roots this run syncs, each with its recorded settings (None: a new root).

    A root given inside a recorded root syncs that root. A rebuild syncs the roots given, else
    every root of the index it replaces (all of them must be there).
    """
    recorded: dict[str, RootSettings | None] = dict(folder.catalog.root_settings())
    previous: dict[str, RootSettings | None] = (
        dict(live_root_settings(folder.path)) if folder.rebuilding else {}
    )
    if roots:
        chosen = normalize_roots(roots)
        missing = [r for r in chosen if not os.path.exists(r)]
        if missing:
            raise UsageError(f"No such file or folder: {', '.join(missing)}")
        if folder.rebuilding:
            return {r: recorded.get(r) or previous.get(r) for r in chosen}
        out: dict[str, RootSettings | None] = {}
        for root in chosen:
            enclosing = next((r for r in recorded if r != root and _inside(root, r)), None)
            if enclosing is not None and options.sets_settings:
                raise RootInsideRootError(root, enclosing)
            out[enclosing or root] = recorded.get(enclosing or root)
        return out
    base = (previous or recorded) if folder.rebuilding else recorded
    if not base:
        raise NoRootsError(folder.path)
    missing = [r for r in base if not os.path.exists(r)]
    if missing and folder.rebuilding:
        raise MissingRootsError(folder.path, missing)
    report.missing_roots = missing  # e.g. an unplugged drive: its entries are kept
    return {r: s for r, s in base.items() if r not in missing}


def _record_roots(
    folder: IndexFolder, run: dict[str, RootSettings | None], options: SyncOptions
) -> dict[str, RootSettings]:
    """Record the run's roots with their settings; return the settings each root is synced with.

    Recorded roots inside a root of the run become part of it. A rebuild's roots are exactly the
    run's: a root an earlier, interrupted run of it indexed is dropped with its files. Files
    skipped as too large are forgotten (so retried) where a root's pixel limit rises.
    """
    catalog = folder.catalog
    recorded = catalog.root_settings()
    settings = {root: options.settings_for(old) for root, old in run.items()}
    if folder.rebuilding:
        dropped = [r for r in recorded if r not in settings]
    else:
        dropped = [r for r in recorded if r not in settings and any(_inside(r, root) for root in settings)]
    changed = {r: s for r, s in settings.items() if recorded.get(r) != s}
    if not dropped and not changed:
        return settings  # nothing to write: a sync with nothing to do leaves the index as it was
    folder.check_present()
    with catalog.transaction():
        for root in dropped:
            catalog.remove_root(root)
            if folder.rebuilding:
                catalog.delete_files_under(root)
        if folder.rebuilding and dropped:
            catalog.drop_orphan_contents()
        for root, new in changed.items():
            catalog.set_root(root, new)
            old = recorded.get(root)
            if old is not None and pixel_limit(new) > pixel_limit(old):
                catalog.delete_skipped_under(root, "too-large")
    return settings


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def decode_job(
    folder: IndexFolder, known: ModelFacts | ModelPreview, limits: tuple[tuple[str, int], ...]
) -> DecodeJob:
    """What a decoding worker needs for this index and model: the model's preprocessing (the numpy
    resize and crop where there is one), and the side views where the index records them."""
    transform: Callable[[Any], Any]
    if known.pixel_transform is not None:
        transform = known.pixel_transform.resize_crop
    else:
        assert isinstance(known, ModelFacts)  # a preview always has a pixel transform
        transform = known.preprocess
    sides = folder.meta.coverage == "sides" and known.pixel_transform is not None
    views = known.pixel_transform.side_views if sides and known.pixel_transform is not None else None
    side = draft_side(known, folder.meta.decode_scale)  # the index's: its vectors were made so
    return DecodeJob(folder.catalog.path, transform, side, DEFAULT_MAX_PIXELS, limits, views)


def _decode_and_encode(work: Work, committer: _Committer, *, cached: bool) -> None:
    """Read and decode the to-do files in workers, encode them in batches, hand them to the committer.

    The model loads in the background meanwhile. Decoding starts once it is built, or at once with
    the model's preview kept from an earlier build (``cached``), checked before the first commit.
    """
    model, todo, options, progress = work.model, work.todo, work.options, work.progress
    if progress and not model.in_memory:
        progress.note(f"Loading model {model.label} ...")
    model.start()
    preview = model.preview() if cached else None
    known: ModelFacts | ModelPreview
    if preview is not None:
        committer.unverified = known = preview
    else:
        known = model.facts()
    job = decode_job(committer.folder, known, work.limits)
    use_processes = (
        options.processes and known.pixel_transform is not None and _decoding_work(todo) >= PROCESS_THRESHOLD
    )
    if progress:
        progress.start(len(todo))
    pool, decode, cleanup = open_decoder(job, options.workers, processes=use_processes)
    if use_processes:
        committer.threads = options.encode_threads or encode_threads_beside(
            options.workers, passive_wait=options.passive_wait
        )
    # decoded files wait here while the model loads or a batch encodes: 4 batches of uint8
    # pixels (150 KB per ViT-B-32 image) keep the workers busy and the memory flat
    # (a video's window weighs its most samples: two or three windows are in flight)
    window = max(4 * options.batch_size, 4 * options.workers)
    stream = OrderedStream(pool, decode, todo, window, task_cost)
    try:
        for result in stream:
            if isinstance(result, WindowResult):
                done = committer.take_window(result)
            else:
                video = committer.take(*result)
                if video is not None:
                    stream.follow(video.plan)
                done = video is None
            if progress and done:
                progress.advance()
        committer.commit()
    except KeyboardInterrupt:
        pool.shutdown(wait=False, cancel_futures=True)  # stop feeding workers before committing
        raise
    finally:
        report = committer.report
        report.decode_wait_seconds = round(report.decode_wait_seconds + stream.waited, 3)
        pool.shutdown(wait=True, cancel_futures=True)
        cleanup()
        if progress:
            progress.finish()
