"""Segments: immutable runs of vectors, each a few files, listed in the catalog's ``segments`` table.

A segment ``seg-<hex>`` holds its vectors sorted by FAISS id; a vector's *position* is its row:

- ``seg-<hex>.ids.npy``: the ids (int64, ascending), so an id's position is a binary search;
- ``seg-<hex>.codes.faiss``: the vectors' codes (:mod:`clipsearch.store.codes`), row by row;
- ``seg-<hex>.fine.npy``: the fine bits of ``sq8`` codes, row by row (absent in segments of other
  codes, and in those written before there were fine bits or from such a segment's codes);
- for the approximate kind (:mod:`clipsearch.store.ivf`): ``seg-<hex>.ivf.faiss``, the inverted lists
  labelled by position (the big segment, with the trained quantizer), or ``seg-<hex>.sa.npy``, the
  standalone codes (a small segment; its lists are rebuilt in memory with the big one's quantizer).

Files are written under temporary names, fsynced, renamed, and only then named in the catalog
(one transaction); a file no catalog row names is left over from a crash and deleted by the next
writer. A segment's files are never changed: deleting vectors is a tombstone until a merge writes
the survivors to a new segment.
"""

from __future__ import annotations

import contextlib
import os
import uuid
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import numpy.typing as npt

from clipsearch.files import fsync_path
from clipsearch.store import ivf as ivf_kind
from clipsearch.store.codes import Codec, CodesFile, Rows, write_codes

Ids = npt.NDArray[np.int64]

PREFIX = "seg-"
SUFFIXES = (".ids.npy", ".codes.faiss", ".fine.npy", ".ivf.faiss", ".sa.npy")


class DamagedSegmentError(Exception):
    """A segment's file is there but damaged (truncated, overwritten, not what its name says)."""


@dataclass(frozen=True)
class SegmentInfo:
    """A segment as the catalog lists it: its name, how many vectors it holds, whether it is the big one."""

    name: str
    count: int
    big: bool


def new_name() -> str:
    """A name no other segment has had (so a rebuild's segments can be linked beside the index's)."""
    return PREFIX + uuid.uuid4().hex[:16]


def name_of(file_name: str) -> str | None:
    """The segment a file belongs to (None for other files)."""
    if not file_name.startswith(PREFIX):
        return None
    for suffix in SUFFIXES:
        for ending in (suffix, suffix + ".tmp"):
            if file_name.endswith(ending):
                return file_name[: -len(ending)]
    return None


def files_of(folder: Path, name: str) -> list[Path]:
    """The files of segment ``name`` that exist in ``folder``."""
    return [folder / (name + s) for s in SUFFIXES if (folder / (name + s)).exists()]


class Segment:
    """An opened segment: ids and codes memory-mapped, and its IVF lists if the index is approximate."""

    def __init__(self, folder: Path, info: SegmentInfo, codec: object | None = None) -> None:
        """Open ``info``'s files in ``folder``; ``codec``: the big segment's IVF index, for a small one.

        Raises:
            FileNotFoundError: a file is missing (a merge replaced the segment since the catalog was read).
            DamagedSegmentError: a file is there but cannot be read as what it should hold.
        """
        self.info = info
        self.name = info.name
        self.ivf: object | None = None
        try:
            self.ids: Ids = np.load(folder / f"{info.name}.ids.npy", mmap_mode="r")
            self.codes = CodesFile(folder / f"{info.name}.codes.faiss", folder / f"{info.name}.fine.npy")
            if self.ids.shape != (self.codes.count,) or self.ids.dtype != np.int64:
                raise ValueError(
                    f"{self.ids.size} ids ({self.ids.dtype}) for {self.codes.count} rows of codes"
                )
            if (folder / f"{info.name}.ivf.faiss").exists():
                self.ivf = ivf_kind.read(folder / f"{info.name}.ivf.faiss")
            elif codec is not None:
                self.ivf = ivf_kind.with_codes(codec, np.load(folder / f"{info.name}.sa.npy"))
        except (ValueError, RuntimeError, EOFError) as exc:  # numpy's and FAISS's word for a bad file
            reason = str(exc).strip().splitlines()[-1] if str(exc).strip() else type(exc).__name__
            raise DamagedSegmentError(f"segment {info.name} in {folder} cannot be read: {reason}") from exc

    def __len__(self) -> int:
        return len(self.ids)

    def find(self, ids: Ids) -> tuple[npt.NDArray[np.bool_], Ids]:
        """(found, positions) of ``ids`` in this segment."""
        ids = np.asarray(ids, dtype=np.int64)
        n = len(self.ids)
        if not n or not len(ids):
            return np.zeros(len(ids), bool), np.zeros(len(ids), np.int64)
        positions = np.searchsorted(self.ids, ids)
        clipped = np.minimum(positions, n - 1)
        found = (positions < n) & (np.asarray(self.ids[clipped]) == ids)
        return found, clipped


def write(
    folder: Path,
    name: str,
    ids: Ids,
    codec: Codec,
    codes: Iterable[Rows],
    *,
    fine: bool,
    ivf: object | None = None,
    sa: npt.NDArray[np.uint8] | None = None,
) -> None:
    """Write a segment's files (``ids`` ascending; ``codes`` row by row, in chunks); durable when it returns.

    ``fine``: whether the chunks carry fine bits (written as ``.fine.npy``); ``ivf``: the big
    segment's IVF index (lists labelled by position); ``sa``: a small segment's standalone IVF
    codes, row by row.
    """
    ids = np.ascontiguousarray(ids, dtype=np.int64)
    if len(ids) > 1 and not (np.diff(ids) > 0).all():
        raise ValueError("segment ids must be unique and ascending")
    _save_npy(folder / f"{name}.ids.npy", ids)
    fine_path = folder / f"{name}.fine.npy" if fine else None
    write_codes(folder / f"{name}.codes.faiss", codec, codes, len(ids), fine_path=fine_path)
    if ivf is not None:
        ivf_kind.write(ivf, folder / f"{name}.ivf.faiss")
    if sa is not None:
        _save_npy(folder / f"{name}.sa.npy", sa)
    fsync_path(folder)


def _save_npy(path: Path, array: np.ndarray) -> None:  # type: ignore[type-arg]
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as out:
        np.save(out, array)
    fsync_path(tmp)
    os.replace(tmp, path)


def remove_files(folder: Path, keep: set[str]) -> None:
    """Delete the segment files in ``folder`` of segments not in ``keep`` (and temporary files)."""
    for entry in folder.iterdir():
        name = name_of(entry.name)
        if name is not None and (name not in keep or entry.name.endswith(".tmp")):
            with contextlib.suppress(OSError):
                entry.unlink()
