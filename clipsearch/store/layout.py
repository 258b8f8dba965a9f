"""The files of an index folder: their names, the writer lock, and creating a catalog durably.

Shared by :mod:`clipsearch.store.folder` (an open index) and :mod:`clipsearch.store.rebuild` (a
rebuild staged beside it). The on-disk format is described in ``indexes/README.md``.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import shutil
import sqlite3
from pathlib import Path

from clipsearch.errors import IndexAccessError, IndexBusyError, IndexCorruptError
from clipsearch.files import free_space_note, fsync_path
from clipsearch.store import segments
from clipsearch.store.catalog import Catalog, IndexMeta

CATALOG_FILE = "catalog.sqlite"
LOCK_FILE = "write.lock"
#: The sub-folder a rebuild is staged in, under the writer lock, until it replaces the index.
STAGING_DIR = "rebuild"
#: Folders older versions exported the text encoder into, inside the index (now in the model cache).
_LEGACY_GLOBS = ("text-onnx-*", ".text-onnx-tmp-*")


def vectors_file(gen: int) -> str:
    """Name of the FAISS checkpoint holding every vector committed up to ``gen``."""
    return f"vectors-{gen:010d}.faiss"


def index_root(path: str | Path) -> Path:
    """The absolute folder of an index, from what a caller gave."""
    return Path(path).expanduser().absolute()


def exists(path: str | Path) -> bool:
    """Whether an index (its catalog) is at ``path``."""
    return (index_root(path) / CATALOG_FILE).is_file()


def check_is_folder(root: Path) -> None:
    if root.exists() and not root.is_dir():
        raise IndexCorruptError(root, f"{root} is a file, not an index folder.", rebuildable=False)


def create_catalog(
    path: Path, meta: IndexMeta, *, index: Path, extra: dict[str, object] | None = None, first_id: int = 0
) -> None:
    """Create a catalog with its metadata under a temporary name, then rename it into place.

    A reader therefore never sees a catalog without tables or metadata. The catalog is complete in
    its one file before the rename (see :meth:`Catalog.create`); if it cannot be written, nothing
    is left behind.

    Raises:
        IndexAccessError: the catalog could not be written (full disk, permissions); ``index`` names
            the index in the message.
    """
    tmp = path.with_name(path.name + ".new")
    remove_catalog_files(tmp)
    try:
        Catalog.create(tmp, meta, extra=extra, first_id=first_id)
        fsync_path(tmp)
        os.replace(tmp, path)
        fsync_path(path.parent)
    except (sqlite3.Error, OSError) as exc:
        with contextlib.suppress(OSError):
            remove_catalog_files(tmp)
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else str(exc)
        raise IndexAccessError(
            index,
            f"Cannot create the index at {index}: {reason}. Nothing was written;"
            + (
                free_space_note(index)
                or " free some disk space (or fix the folder's permissions), try again."
            ),
        ) from exc


def remove_catalog_files(catalog: Path) -> None:
    """Delete a catalog and its SQLite side files, where present."""
    for suffix in ("", "-wal", "-shm", "-journal"):
        catalog.with_name(catalog.name + suffix).unlink(missing_ok=True)


def check_not_busy(path: str | Path) -> None:
    """Fail fast (before loading any model) if another process is writing to the index at ``path``.

    Raises:
        IndexBusyError: another process holds the lock.
        IndexAccessError: the folder is read-only (its lock file cannot be opened to write).
    """
    root = index_root(path)
    if (root / LOCK_FILE).is_file():
        try:
            fd = acquire_lock(root)
        except OSError as exc:
            raise not_writable(root, exc) from exc
        os.close(fd)


def not_writable(root: Path, exc: OSError) -> IndexAccessError:
    """The error for an index folder that cannot be written (read-only media, a full disk)."""
    return IndexAccessError(
        root,
        f"Cannot write to the index folder {root}: {exc.strerror or exc}."
        + (
            free_space_note(root)
            or " Searching it works as before; to update it, make the folder writable, or write the "
            "index to another folder."
        ),
    )


def acquire_lock(root: Path) -> int:
    fd = os.open(root / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        holder = os.pread(fd, 32, 0).decode(errors="replace").strip() or "unknown"
        os.close(fd)
        raise IndexBusyError(root, holder) from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, str(os.getpid()).encode(), 0)
    return fd


def sweep_vector_files(folder: Path, keep: str) -> None:
    """Delete the version-1 FAISS files (and their temporary files) in ``folder`` other than ``keep``."""
    for entry in folder.glob("vectors-*.faiss*"):
        if entry.name != keep:
            with contextlib.suppress(OSError):
                entry.unlink()


def sweep_unlisted(folder: Path, catalog: Catalog) -> None:
    """Delete the vector files in ``folder`` that ``catalog`` does not name: left by a crash, or
    replaced by a checkpoint, a merge or a rebuild (a reader that opened them keeps them open)."""
    listed = catalog.segments()
    if int(catalog.get("schema_version") or 1) < 2:
        sweep_vector_files(folder, keep=vectors_file(catalog.get_int("vectors_gen")))
        return
    sweep_vector_files(folder, keep="")
    segments.remove_files(folder, keep={name for name, _, _ in listed})


def remove_derived_files(root: Path) -> None:
    """Delete what an index folder holds besides its catalog and vectors: thumbnails, legacy exports."""
    thumbs = root / "thumbnails"
    if thumbs.is_dir():
        shutil.rmtree(thumbs, ignore_errors=True)
    for pattern in _LEGACY_GLOBS:
        for entry in root.glob(pattern):
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry, ignore_errors=True)
            else:
                with contextlib.suppress(OSError):
                    entry.unlink()


def vector_files(folder: Path, catalog: Catalog, vectors: int) -> dict[str, object]:
    """What the vector files of an index take on disk, by role, in all and per vector.

    ``search``: what a search reads (the IVF lists; for an exhaustive kind, the codes themselves);
    ``codes``: the codes kept for re-ranking and rebuilds (approximate kinds), and the fine bits of
    ``sq8`` codes (every kind: read for the best few candidates only); ``ids``: the
    segments' id lists; ``catalog``: the SQLite catalog (files, contents, log).
    """
    sizes = {"search": 0, "codes": 0, "ids": 0, "catalog": 0}
    names = {name for name, _, _ in catalog.segments()}
    approximate = any((folder / f"{n}.ivf.faiss").exists() for n in names)
    for entry in folder.iterdir():
        try:
            size = entry.stat().st_size
        except OSError:
            continue
        name = segments.name_of(entry.name)
        if entry.name.startswith(CATALOG_FILE):
            sizes["catalog"] += size
        elif entry.name.startswith("vectors-") and entry.name.endswith(".faiss"):
            sizes["search"] += size  # a version-1 index: one file searched whole
        elif name in names:
            if entry.name.endswith((".ivf.faiss", ".sa.npy")):
                sizes["search"] += size
            elif entry.name.endswith(".codes.faiss"):
                sizes["codes" if approximate else "search"] += size
            elif entry.name.endswith(".fine.npy"):
                sizes["codes"] += size  # read for the best few candidates only
            elif entry.name.endswith(".ids.npy"):
                sizes["ids"] += size
    per = {key: round(value / vectors, 1) if vectors else 0.0 for key, value in sizes.items()}
    return {"bytes": sizes, "bytes_per_vector": per}
