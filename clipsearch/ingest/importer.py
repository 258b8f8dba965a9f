"""Import vectors computed elsewhere (another process, a cluster) through the sync's commit path.

An engine that reads, hashes, decodes and encodes files somewhere else hands the results over in
batches of :class:`ImportItem` (and :class:`SkippedItem` for the files it could not use); each
batch is committed like a sync's (one transaction with its vectors,
:func:`clipsearch.ingest.commit.commit_batch`), so a crash or Ctrl-C keeps every batch committed
before it and loses nothing else. A batch's vectors go straight to a segment file of their own,
written before the transaction that names it (no pending log to copy them through). The Ray
engine (:mod:`clipsearch.ingest.ray_engine`) commits its smaller batches through
:func:`import_batch` as a sync does, through the pending log that checkpoints write out.

The caller checks the model first (the façade's ``Index.import_vectors`` compares the weights'
sha256 with the index's); this module checks the vectors' length, that they are unit vectors, and
that each file lies in a folder of the index.
"""

from __future__ import annotations

import os
import time
from collections.abc import Iterable, Sequence
from itertools import repeat
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from clipsearch.errors import BadValueError, VectorDimensionError
from clipsearch.ingest.commit import FileRow, NewContent, commit_batch
from clipsearch.ingest.scan import FileRecord
from clipsearch.ingest.sync import Progress, SyncInterrupted, SyncReport, normalize_roots
from clipsearch.store.catalog import FileState, RootSettings
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
    progress: Progress | None = None,
) -> SyncReport:
    """Commit batches of files indexed elsewhere; each batch is one transaction.

    A file already indexed with the same content is counted unchanged; a file whose content
    changed gets the new content (the old one's vectors go once no file uses them); a content
    already indexed under another name reuses its vectors. Files the index holds but the batches
    do not name are left alone (a sync of their folder sweeps them).

    Args:
        folder: the index, opened for writing.
        batches: lists of items; a batch may hold any number of files (thousands is right).
        roots: folders to record in the index (with default settings, unless recorded already);
            every file must lie inside a recorded folder.
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
    folder.checkpoint(merges="none")  # what an earlier sync left pending, first
    replaced = False
    try:
        for batch in batches:
            replaced |= import_batch(folder, list(batch), recorded, report)
            if progress is not None:
                progress.advance(len(batch))
        if replaced:  # contents no file uses any more (files given new contents): a scan of them all
            folder.check_present()
            with folder.catalog.transaction():
                folder.catalog.drop_orphan_contents()
    except KeyboardInterrupt:
        report.interrupted = True
        raise SyncInterrupted(report) from None
    finally:  # the segments merge (or are rewritten) after: Index.import_vectors optimizes the index
        folder.checkpoint(merges="none")
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
    folder: IndexFolder,
    batch: Sequence[ImportItem | SkippedItem],
    roots: list[str],
    report: SyncReport,
    *,
    direct: bool = True,
) -> bool:
    """Check and commit one batch (one transaction), counting its files in ``report``; ``roots``: the
    folders of the index (every file must lie in one). ``direct``: its new vectors become one
    segment (merged with others later), else they go through the pending log that checkpoints
    write out (the small batches of a sync). Returns whether a file known before got another
    content (whose vectors may be left unused).

    Raises:
        VectorDimensionError, BadValueError: as :func:`import_vectors`; nothing of the batch is kept.
    """
    if not batch:
        return False
    items: list[ImportItem] = [item for item in batch if isinstance(item, ImportItem)]
    skipped = [item for item in batch if isinstance(item, SkippedItem)]
    given = [item.vector for item in items if item.vector is not None]
    main = _vectors(folder, given) if given else np.zeros((0, folder.meta.dim), np.float32)
    _check_items(folder, items, skipped, roots)
    catalog = folder.catalog
    paths = [item.record.path for item in items]
    digests = [item.digest for item in items]
    old_files = catalog.files_by_path(paths + [s.record.path for s in skipped])
    known = catalog.content_ids_of(sorted(set(digests)))
    rows = [FileRow(s.record, None, f"{s.reason}: {s.detail}") for s in skipped]
    rows += [FileRow(item.record, item.digest, None) for item in items]
    replaced = any(_had_content(old_files, s.record.path) for s in skipped)
    if (
        not old_files and not known and len(set(digests)) == len(items) == len(given)
    ):  # all new: no row by row
        counts = {"added": len(items)}
        firsts, vectors = items, main
    else:
        counts, changed, first_rows = _classify(items, old_files, known)
        replaced |= changed
        firsts = [items[row] for row in first_rows]
        if len(given) != len(items):  # rows of ``main``: items without a vector have none
            place = np.cumsum([item.vector is not None for item in items]) - 1
            first_rows = [int(place[row]) for row in first_rows]
        vectors = main[first_rows] if len(first_rows) != len(main) else main
    contents = [
        NewContent(i.digest, i.width, i.height, i.taken, tuple(k for k, _ in i.views) if i.views else ())
        for i in firsts
    ]
    views = [v for i in firsts for _, v in i.views]
    if views:
        vectors = np.concatenate([vectors, _vectors(folder, views)])
    # no merges between batches: the optimize that ends Index.import_vectors (a rewrite, or merges)
    # reads each batch's segment once, not once per merge tier
    commit_batch(folder, contents, vectors if firsts else None, rows, direct=direct, merges="none")
    for key, n in counts.items():
        setattr(report, key, getattr(report, key) + n)
    report.skipped += len(skipped)
    for s in skipped:
        report.skip_reasons[s.reason] = report.skip_reasons.get(s.reason, 0) + 1
    return replaced


def _had_content(old_files: dict[str, FileState], path: str) -> bool:
    old = old_files.get(path)
    return old is not None and old.content_id is not None


def _classify(
    items: list[ImportItem], old_files: dict[str, FileState], known: dict[str, int]
) -> tuple[dict[str, int], bool, list[int]]:
    """Count a batch's files as added, updated, reused or unchanged; whether a file known before got
    another content; the rows of the items whose contents are new (the first of each)."""
    new: dict[str, int] = {}  # digest -> the row of its first item
    counts = {"added": 0, "updated": 0, "reused": 0, "unchanged": 0}
    replaced = False
    for row, item in enumerate(items):
        old = old_files.get(item.record.path)
        if item.digest in known or item.digest in new:
            same = old is not None and old.content_id is not None and old.content_id == known.get(item.digest)
            counts["unchanged" if same else "reused"] += 1
            replaced |= old is not None and old.content_id is not None and not same
        elif item.vector is None:
            raise BadValueError(
                "vector", item.record.path, f"none given, and no file brings content {item.digest}"
            )
        else:
            replaced |= old is not None and old.content_id is not None
            counts["added" if old is None or old.content_id is None else "updated"] += 1
            new[item.digest] = row
    return counts, replaced, list(new.values())


def _vectors(folder: IndexFolder, vectors: list[npt.NDArray[np.float32]]) -> npt.NDArray[np.float32]:
    """The vectors as one float32 array, checked: the index's dimension, unit length."""
    dim = folder.meta.dim
    try:
        stacked = np.stack(vectors).astype(np.float32, copy=False)
    except ValueError:  # not all of one shape
        stacked = np.zeros((0, 0), np.float32)
    if stacked.ndim != 2 or stacked.shape[1] != dim:
        bad = next((np.shape(v) for v in vectors if np.shape(v) != (dim,)), stacked.shape)
        raise VectorDimensionError(folder.path, dim, bad[-1] if bad else 0)
    lengths = np.sqrt(np.einsum("ij,ij->i", stacked, stacked))
    bad_rows = np.flatnonzero(~(np.abs(lengths - 1.0) <= UNIT_TOLERANCE))  # NaN counts as bad
    if len(bad_rows):
        raise BadValueError(
            "vectors",
            f"row {int(bad_rows[0])}",
            f"length {lengths[bad_rows[0]]:.4f}, not a unit (L2-normalised) vector",
        )
    return stacked


def _check_items(
    folder: IndexFolder, items: list[ImportItem], skipped: list[SkippedItem], roots: list[str]
) -> None:
    if folder.meta.coverage != "sides":
        with_views = next((item for item in items if item.views), None)
        if with_views is not None:
            raise BadValueError(
                "views",
                with_views.record.path,
                f"the index records coverage {folder.meta.coverage!r}: no side views",
            )
    prefixes = tuple(r.rstrip("/") + "/" for r in roots)
    exact = set(roots)
    # one pass in C for the usual case (every path inside a root, so absolute); the loop names the bad one
    everyone = (*items, *skipped)
    if all(map(str.startswith, (i.record.path for i in everyone), repeat(prefixes))):
        return
    for item in everyone:
        path = item.record.path
        if not os.path.isabs(path):
            raise BadValueError("path", path, "give absolute paths")
        if path not in exact and not path.startswith(prefixes):
            raise BadValueError(
                "path",
                path,
                f"not inside a folder of the index ({', '.join(roots) or 'none'}); add it to roots",
            )
