"""The one transaction that commits a batch: new contents, their vectors, and the file rows.

Shared by the sync (:mod:`clipsearch.ingest.sync`, vectors it encodes) and the import of vectors
computed elsewhere (:mod:`clipsearch.ingest.importer`), so both keep the same guarantees: a batch is
in the catalog with its vectors, or not at all (``indexes/README.md``, "The commit protocol").
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import NamedTuple

import numpy as np
import numpy.typing as npt

from clipsearch.ingest.scan import FileRecord
from clipsearch.store.catalog import Catalog, NewFile, View, view_id
from clipsearch.store.folder import IndexFolder


class NewContent(NamedTuple):
    """A content seen for the first time: its hash, facts, and the kinds of its extra views (view 1, 2...)."""

    digest: str
    width: int
    height: int
    taken: float | None
    views: tuple[str, ...] = ()


class NewVideo(NamedTuple):
    """A video seen for the first time: its content, and its moments as views with their vectors.

    ``views`` has every moment, view 0 first (the moment most like the whole video: its vector is the
    content's main one), then views 1, 2, ...; ``vectors`` one row per view, in that order.
    """

    content: NewContent
    views: tuple[View, ...]
    vectors: npt.NDArray[np.float32]


class FileRow(NamedTuple):
    """A file row to write: its content hash, or None with the reason it was skipped."""

    record: FileRecord
    digest: str | None
    error: str | None


def commit_batch(
    folder: IndexFolder,
    new: Sequence[NewContent],
    vectors: npt.NDArray[np.float32] | None,
    rows: Sequence[FileRow],
    *,
    videos: Sequence[NewVideo] = (),
    direct: bool = False,
    merges: str = "tiers",
) -> dict[str, int]:
    """Commit ``new`` contents with their ``vectors``, new ``videos`` with their moments, and the
    file ``rows``, in one transaction.

    ``vectors`` holds every new content's main vector in order, then their views' vectors (content
    by content, view 1 first); None when there are no new contents. The vector set moves to a new
    generation only when vectors are added. ``direct``: the vectors go straight to a new segment
    file, written before the transaction that names it (a large batch: an import), instead of the
    pending log that the next checkpoint writes out; ``merges``: the segment merges after it
    (``tiers``, or ``none`` for an import that leaves them to its end). Returns the ids given to the
    new contents.

    Raises:
        IndexGoneError: the index folder was deleted since it was opened.
    """
    catalog = folder.catalog
    folder.check_present()  # SQLite would go on writing into a deleted catalog
    if direct and ((vectors is not None and len(new)) or videos):
        everyone = [*new, *(v.content for v in videos)]
        first = catalog.last_content_id() + 1  # free under the writer lock
        ids = {c.digest: first + n for n, c in enumerate(everyone)}
        vector_ids, views = _vector_ids(new, ids)
        video_ids, video_views = _video_ids(videos, ids)
        parts = ([vectors] if vectors is not None and len(new) else []) + [v.vectors for v in videos]

        def write_rows(catalog: Catalog) -> None:
            catalog.insert_contents([(ids[c.digest], c.digest, c.width, c.height, c.taken) for c in everyone])
            _write_rows(catalog, views + video_views, rows, ids)

        all_ids = np.array(vector_ids + video_ids, dtype=np.int64)
        stacked = parts[0] if len(parts) == 1 else np.concatenate(parts)  # a copy only when needed
        folder.commit_vectors(all_ids, stacked.astype(np.float32, copy=False), write_rows, merges=merges)
        return ids
    with catalog.transaction():
        ids = {c.digest: catalog.insert_content(c.digest, c.width, c.height, c.taken) for c in new}
        vector_ids, views = _vector_ids(new, ids)
        for video in videos:
            c = video.content
            ids[c.digest] = catalog.insert_content(c.digest, c.width, c.height, c.taken)
        video_ids, video_views = _video_ids(videos, ids)
        gen = catalog.next_gen() if (vectors is not None and len(new)) or videos else 0
        if vectors is not None and len(new):
            catalog.add_pending(gen, vector_ids, vectors)
        if videos:
            catalog.add_pending(gen, video_ids, np.concatenate([v.vectors for v in videos]))
        _write_rows(catalog, views + video_views, rows, ids)
    return ids


def _vector_ids(
    new: Sequence[NewContent], ids: dict[str, int]
) -> tuple[list[int], list[tuple[int, list[View]]]]:
    """The FAISS ids of ``new``'s vectors in the order :func:`commit_batch` takes them (main vectors,
    then views), and each content's views to record."""
    main = [ids[c.digest] for c in new]
    extra: list[int] = []
    views: list[tuple[int, list[View]]] = []
    if not any(c.views for c in new):
        return main, views
    for c in new:
        if c.views:
            cid = ids[c.digest]
            mine = [View(n, kind) for n, kind in enumerate(c.views, 1)]
            views.append((cid, mine))
            extra += [view_id(cid, v.view) for v in mine]
    return main + extra, views


def _video_ids(
    videos: Sequence[NewVideo], ids: dict[str, int]
) -> tuple[list[int], list[tuple[int, list[View]]]]:
    """The FAISS ids of the videos' moments (video by video, view 0 first) and the views to record."""
    out: list[int] = []
    views: list[tuple[int, list[View]]] = []
    for video in videos:
        cid = ids[video.content.digest]
        views.append((cid, list(video.views)))
        out += [view_id(cid, v.view) for v in video.views]
    return out, views


def _write_rows(
    catalog: Catalog, views: list[tuple[int, list[View]]], rows: Sequence[FileRow], ids: dict[str, int]
) -> None:
    for cid, mine in views:
        catalog.insert_views(cid, mine)
    catalog.upsert_files(_file_rows(catalog, rows, ids))


def _file_rows(catalog: Catalog, rows: Sequence[FileRow], new_ids: dict[str, int]) -> list[NewFile]:
    new_id = new_ids.get
    out = []
    for record, digest, error in rows:
        content_id = None
        if digest is not None and error is None:
            content_id = new_id(digest) or catalog.content_id(digest)
        out.append(NewFile(record.path, record.size, record.mtime_ns, content_id, error))
    return out
