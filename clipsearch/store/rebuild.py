"""A rebuild staged beside the index it replaces, then swapped in atomically.

A rebuild (``IndexFolder.open_for_write(rebuild=True)``) builds a whole new index in the
sub-folder ``rebuild/`` of the index folder, under the index's writer lock, with the ordinary
commit protocol: a crash or Ctrl-C keeps what it committed, and the next rebuild resumes it.
Readers never look there; they use the index as it was until the rebuild is complete. Then
:func:`swap_in` replaces it:

1. the staged catalog is checkpointed (no pending vectors) and marked ``rebuild_complete``;
2. its FAISS file is linked (or copied) into the index folder under a generation the index has
   not used, and made durable;
3. one SQLite transaction replaces every row of the index's catalog with the staged rows, points
   ``vectors_gen`` at that file and records the staged ``rebuild_id``;
4. the old FAISS files, the thumbnails and the staging folder are deleted.

A crash before 3 leaves the index as it was; the next writer of the index finishes a complete
rebuild, and the next rebuild resumes an incomplete one. After 3, the index is the new one and the
staging folder, whose ``rebuild_id`` the index now records, is deleted by the next writer.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import sqlite3
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

from clipsearch.errors import IndexAccessError, IndexCorruptError
from clipsearch.files import fsync_path
from clipsearch.store.catalog import Catalog, IndexMeta, RootSettings
from clipsearch.store.layout import (
    CATALOG_FILE,
    STAGING_DIR,
    create_catalog,
    remove_catalog_files,
    remove_derived_files,
    sweep_vector_files,
    vectors_file,
)

#: Meta keys: the id of a rebuild (staged catalog; the index once swapped in), and its readiness.
REBUILD_ID = "rebuild_id"
COMPLETE = "rebuild_complete"


def staging_dir(root: Path) -> Path:
    return root / STAGING_DIR


def open_staging(
    root: Path, new_meta: Callable[[], IndexMeta], accepts: Callable[[IndexMeta], bool]
) -> Catalog:
    """The staged rebuild's catalog, opened to write: the unfinished one if ``accepts`` its model, else
    a new one made from ``new_meta()`` (its content ids start above every id the index handed out)."""
    staging = staging_dir(root)
    catalog_path = staging / CATALOG_FILE
    if catalog_path.is_file():
        with contextlib.suppress(IndexCorruptError):  # a damaged staging area is only started over
            catalog = Catalog(catalog_path, writer=True)
            meta = catalog.meta()
            if meta is not None and accepts(meta):
                return catalog
            catalog.close()
    if staging.exists():
        shutil.rmtree(staging)
    staging.mkdir()
    extra: dict[str, object] = {REBUILD_ID: uuid.uuid4().hex}
    create_catalog(catalog_path, new_meta(), index=root, extra=extra, first_id=_read_live(root, _last_id, 0))
    return Catalog(catalog_path, writer=True)


def settle(root: Path) -> None:
    """Under the writer lock, before anything else: finish a complete rebuild that a crash
    interrupted while it replaced the index, or delete a staging folder that replaced it already."""
    staging = staging_dir(root)
    if not staging.is_dir():
        return
    state = _staged_state(staging)
    if state is None or state[0] == _read_live(root, lambda c: c.get(REBUILD_ID), None):
        shutil.rmtree(staging, ignore_errors=True)  # never finished its creation, or swapped in already
    elif state[1]:
        swap_in(root)


def mark_complete(staged: Catalog) -> None:
    """Record that the staged rebuild is ready (checkpointed: no pending vectors) to replace the index."""
    with staged.transaction():
        staged.set(COMPLETE, 1)


def swap_in(root: Path) -> None:
    """Replace the index at ``root`` with its complete staged rebuild (steps 2 to 4 above)."""
    staging = staging_dir(root)
    staged = Catalog(staging / CATALOG_FILE, writer=True)
    try:
        meta = staged.meta()
        gen, vectors_gen, rebuild_id = (
            staged.get_int("gen"),
            staged.get_int("vectors_gen"),
            staged.get(REBUILD_ID),
        )
    finally:
        staged.close()  # its WAL is folded into the file: the catalog is one file to read
    if meta is None or gen != vectors_gen:
        raise IndexCorruptError(root, f"The staged rebuild in {staging} is incomplete.")
    live = _open_live(root, meta)
    try:
        new_gen = max(live.get_int("gen"), gen) + 1
        if vectors_gen:
            _link_durably(staging / vectors_file(vectors_gen), root / vectors_file(new_gen))
        live.replace_with(
            staging / CATALOG_FILE,
            {
                "gen": new_gen,
                "vectors_gen": new_gen if vectors_gen else 0,
                COMPLETE: None,
                REBUILD_ID: rebuild_id,
            },
        )
        live.reclaim_space()
    finally:
        live.close()
    sweep_vector_files(root, keep=vectors_file(new_gen) if vectors_gen else "")
    remove_derived_files(root)  # thumbnails of the old contents (their ids are never reused)
    shutil.rmtree(staging, ignore_errors=True)
    fsync_path(root)


def staged_info(root: Path) -> dict[str, Any] | None:
    """What an unfinished rebuild holds so far (None when there is none)."""
    staging = staging_dir(root)
    if not (staging / CATALOG_FILE).is_file():
        return None
    try:
        catalog = Catalog(staging / CATALOG_FILE)
    except (IndexCorruptError, IndexAccessError):
        return None
    try:
        meta = catalog.meta()
        if meta is None:
            return None
        return {"model": meta.model, "pretrained": meta.pretrained, "count": catalog.counts()["files"]}
    except sqlite3.Error:
        return None
    finally:
        catalog.close()


def live_root_settings(root: Path) -> dict[str, RootSettings]:
    """The roots (and their settings) of the index a rebuild replaces; none if it cannot be read."""
    return _read_live(root, lambda c: c.root_settings(), {})


def _staged_state(staging: Path) -> tuple[str | None, bool] | None:
    """(rebuild id, complete) of a staged rebuild; None if it has no usable catalog."""
    if not (staging / CATALOG_FILE).is_file():
        return None
    try:
        catalog = Catalog(staging / CATALOG_FILE)
    except IndexCorruptError:
        return None
    try:
        if catalog.meta() is None:
            return None
        return catalog.get(REBUILD_ID), catalog.get(COMPLETE) is not None
    finally:
        catalog.close()


def _read_live(root: Path, read: Callable[[Catalog], Any], default: Any) -> Any:
    """``read`` the index's own catalog; ``default`` if it is missing or cannot be read."""
    path = root / CATALOG_FILE
    if not path.is_file():
        return default
    try:
        catalog = Catalog(path)
    except (IndexCorruptError, IndexAccessError):
        return default
    try:
        return read(catalog) if catalog.meta() is not None else default
    except sqlite3.Error:
        return default
    finally:
        catalog.close()


def _last_id(catalog: Catalog) -> int:
    return catalog.last_content_id()


def _open_live(root: Path, meta: IndexMeta) -> Catalog:
    """The index's catalog to write the swap into; a damaged or missing one is created anew first."""
    path = root / CATALOG_FILE
    if path.is_file():
        try:
            catalog = Catalog(path, writer=True)
            if catalog.meta() is not None:
                return catalog
            catalog.close()
        except IndexCorruptError:
            pass
        remove_catalog_files(path)  # the damaged index the rebuild was made to replace
    create_catalog(path, meta, index=root)
    return Catalog(path, writer=True)


def _link_durably(source: Path, target: Path) -> None:
    """``target`` becomes a durable second name (or, where links are not possible, a copy) of ``source``."""
    tmp = target.with_name(target.name + ".tmp")
    tmp.unlink(missing_ok=True)
    try:
        os.link(source, tmp)
    except OSError:
        shutil.copyfile(source, tmp)
        fsync_path(tmp)
    os.replace(tmp, target)
    fsync_path(target.parent)
