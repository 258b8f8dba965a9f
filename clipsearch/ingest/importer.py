"""Import vectors computed elsewhere (another process, a cluster) through the sync's commit path.

An engine that reads, hashes, decodes and encodes files somewhere else hands the results over in
batches of :class:`ImportItem` (and :class:`SkippedItem` for the files it could not use); each batch
is committed like a sync's (one transaction with its vectors,
:func:`clipsearch.ingest.commit.commit_batch`), so a crash or Ctrl-C keeps every batch committed
before it and loses nothing else. The Ray engine (:mod:`clipsearch.ingest.ray_engine`) commits
through :func:`import_batch`. The caller checks the model first (the façade's
``Index.import_vectors`` compares the weights' sha256 with the index's); this module checks the
vectors' length, that they are unit vectors, and that each file lies in a folder of the index.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from clipsearch.errors import BadValueError, VectorDimensionError
from clipsearch.ingest.commit import FileRow, NewContent, commit_batch
from clipsearch.ingest.scan import FileRecord
from clipsearch.ingest.sync import Progress, SyncInterrupted, SyncReport, normalize_roots
from clipsearch.store.catalog import RootSettings
from clipsearch.store.folder import IndexFolder

#: How far from 1 a vector's length may be (encoders return float32 unit vectors).
UNIT_TOLERANCE = 1e-3


class ImportItem(NamedTuple):
    """One file as another engine indexed it.

    Args:
        record: the file's absolute path, size and mtime (ns) as ``os.stat`` gave them; a later
            sync re-reads the file only if these change.
        digest: the content hash of the file's bytes, as the sync computes it
            (:func:`clipsearch.ingest.decode.file_digest`, xxh3-128 hex): files with the same hash
            share one content and its vectors.
        vector: the picture's unit vector (``(dim,)`` float32), from the index's model; None for a
            content the index holds already (a renamed or copied file: the batch fails if the
            index does not hold it, or if an earlier item of the batch does not bring it).
        width, height: the picture's size in pixels.
        taken: when the picture was taken (EXIF DateTimeOriginal, POSIX time), if known.
        views: further vectors of the picture, ``(kind, vector)`` in view order (``left``,
            ``right``... as :meth:`~clipsearch.encoders.pixels.PixelTransform.side_views` makes
            them); only for an index whose coverage is ``sides``.
    """

    record: FileRecord
    digest: str
    vector: npt.NDArray[np.float32] | None
    width: int
    height: int
    taken: float | None = None
    views: tuple[tuple[str, npt.NDArray[np.float32]], ...] = ()


class SkippedItem(NamedTuple):
    """A file another engine could not use, recorded as skipped with its reason (retried when it changes).

    Args:
        record: the file's absolute path, size and mtime (ns).
        reason: a short code, as the sync records them (``corrupt``, ``too-large``, ``unreadable``...).
        detail: what was wrong, in words.
    """

    record: FileRecord
    reason: str
    detail: str


def import_vectors(
    folder: IndexFolder,
    batches: Iterable[Sequence[ImportItem | SkippedItem]],
    *,
    roots: Sequence[str] = (),
    checkpoint_every: int = 20_000,
    progress: Progress | None = None,
) -> SyncReport:
    """Commit batches of files indexed elsewhere; each batch is one transaction.

    A file already indexed with the same content is counted unchanged; a file whose content
    changed gets the new content (the old one's vectors go once no file uses them); a content
    already indexed under another name reuses its vectors. Files the index holds but the batches
    do not name are left alone (a sync of their folder sweeps them).

    Args:
        folder: the index, opened for writing.
        batches: lists of :class:`ImportItem` and :class:`SkippedItem`; a batch may hold any number
            of files (thousands is right).
        roots: folders to record in the index (with default settings, unless recorded already);
            every file must lie inside a recorded folder.
        checkpoint_every: vectors after which they are folded into the vector files mid-run.
        progress: told how many files each batch held.

    Raises:
        VectorDimensionError: a vector is not of the index's dimension (nothing of its batch is kept).
        BadValueError: ``vectors`` (not a unit vector), ``path`` (not absolute, or not in a folder
            of the index), ``views`` (the index records no side views): nothing of that batch is kept.
        SyncInterrupted: Ctrl-C; the batches committed before are kept.
    """
    started = time.monotonic()
    report = SyncReport(index=str(folder.path), rebuild=folder.rebuilding)
    _record_roots(folder, roots)
    recorded = folder.catalog.roots()
    since_checkpoint = 0
    try:
        for batch in batches:
            since_checkpoint += import_batch(folder, list(batch), recorded, report)
            if progress is not None:
                progress.advance(len(batch))
            if since_checkpoint >= checkpoint_every:
                folder.checkpoint()
                since_checkpoint = 0
        folder.check_present()
        with folder.catalog.transaction():  # contents no file uses any more (files given new contents)
            folder.catalog.drop_orphan_contents()
    except KeyboardInterrupt:
        report.interrupted = True
        raise SyncInterrupted(report) from None
    finally:
        folder.checkpoint()
        report.seconds = round(time.monotonic() - started, 3)
    return report


def _record_roots(folder: IndexFolder, roots: Sequence[str]) -> None:
    recorded = set(folder.catalog.roots())
    new = [r for r in normalize_roots(roots) if r not in recorded]
    if not new:
        return
    folder.check_present()
    with folder.catalog.transaction():
        for root in new:
            folder.catalog.set_root(root, RootSettings())


def import_batch(
    folder: IndexFolder, batch: list[ImportItem | SkippedItem], roots: list[str], report: SyncReport
) -> int:
    """Check and commit one batch (one transaction), counting its files in ``report``; ``roots``: the
    folders of the index (every file must lie in one). Returns how many vectors it added.

    Raises:
        VectorDimensionError, BadValueError: as :func:`import_vectors`; nothing of the batch is kept.
    """
    if not batch:
        return 0
    items = [item for item in batch if isinstance(item, ImportItem)]
    skipped = [item for item in batch if isinstance(item, SkippedItem)]
    _check_items(folder, items, skipped, roots)
    catalog = folder.catalog
    paths = [item.record.path for item in batch]
    old_files = catalog.files_by_path(paths)
    known = catalog.content_ids_of(sorted({item.digest for item in items}))
    new: dict[str, ImportItem] = {}
    rows = [FileRow(s.record, None, f"{s.reason}: {s.detail}") for s in skipped]
    counts = {"added": 0, "updated": 0, "reused": 0, "unchanged": 0}
    for item in items:
        old = old_files.get(item.record.path)
        if item.digest in known or item.digest in new:
            same = old is not None and old.content_id is not None and old.content_id == known.get(item.digest)
            counts["unchanged" if same else "reused"] += 1
        elif item.vector is None:
            raise BadValueError(
                "vector", item.record.path, f"none given, and no file brings content {item.digest}"
            )
        else:
            counts["added" if old is None or old.content_id is None else "updated"] += 1
            new[item.digest] = item
        rows.append(FileRow(item.record, item.digest, None))
    firsts = list(new.values())
    contents = [
        NewContent(i.digest, i.width, i.height, i.taken, tuple(k for k, _ in i.views)) for i in firsts
    ]
    vectors = None
    if firsts:
        views = [v for i in firsts for _, v in i.views]
        vectors = np.stack([i.vector for i in firsts] + views).astype(np.float32, copy=False)
    commit_batch(folder, contents, vectors, rows)
    for key, n in counts.items():
        setattr(report, key, getattr(report, key) + n)
    report.skipped += len(skipped)
    for s in skipped:
        report.skip_reasons[s.reason] = report.skip_reasons.get(s.reason, 0) + 1
    return 0 if vectors is None else len(vectors)


def _check_items(
    folder: IndexFolder, items: list[ImportItem], skipped: list[SkippedItem], roots: list[str]
) -> None:
    dim = folder.meta.dim
    given = [item for item in items if item.vector is not None]
    for item in given:
        for vector in (item.vector, *(v for _, v in item.views)):
            shape = np.shape(vector)
            if len(shape) != 1 or shape[0] != dim:
                raise VectorDimensionError(folder.path, dim, shape[-1] if shape else 0)
        if item.views and folder.meta.coverage != "sides":
            raise BadValueError(
                "views",
                item.record.path,
                f"the index records coverage {folder.meta.coverage!r}: no side views",
            )
    if given:
        vectors = np.stack([item.vector for item in given] + [v for item in given for _, v in item.views])
        lengths = np.linalg.norm(vectors.astype(np.float64), axis=1)
        bad = np.flatnonzero(~(np.abs(lengths - 1.0) <= UNIT_TOLERANCE))  # NaN counts as bad
        if len(bad):
            raise BadValueError(
                "vectors",
                f"row {int(bad[0])}",
                f"length {lengths[bad[0]]:.4f}, not a unit (L2-normalised) vector",
            )
    prefixes = [r.rstrip("/") + "/" for r in roots]
    for item in (*items, *skipped):
        path = item.record.path
        if not os.path.isabs(path):
            raise BadValueError("path", path, "give absolute paths")
        if not any(path == r or path.startswith(p) for r, p in zip(roots, prefixes, strict=True)):
            raise BadValueError(
                "path",
                path,
                f"not inside a folder of the index ({', '.join(roots) or 'none'}); add it to roots",
            )
