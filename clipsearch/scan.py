"""Walk roots and yield the image files under them, symlink-loop safe."""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".jpe", ".png", ".gif", ".webp", ".bmp", ".tif", ".tiff", ".heic", ".heif", ".avif"}
)


@dataclass(frozen=True)
class FileRecord:
    """One candidate file as seen by ``stat``: enough to decide whether it changed."""

    path: str
    size: int
    mtime_ns: int


def is_image_name(name: str) -> bool:
    """True if the file name has one of the image extensions we index."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def scan(roots: Iterable[str], *, include_hidden: bool = False) -> Iterator[FileRecord]:
    """Yield every image file under ``roots`` (absolute paths), each real directory visited once.

    Symlinked directories are followed, but a directory already visited (same device and inode)
    is never entered twice, so symlink loops terminate. Broken symlinks and entries that vanish
    while walking are ignored. Hidden entries (dot-names) are skipped unless ``include_hidden``.
    """
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        root = os.path.abspath(root)
        try:
            st = os.stat(root)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            if is_image_name(root):
                yield FileRecord(root, st.st_size, st.st_mtime_ns)
            continue
        yield from _walk(root, seen_dirs, include_hidden)


def _walk(top: str, seen_dirs: set[tuple[int, int]], include_hidden: bool) -> Iterator[FileRecord]:
    stack = [top]
    while stack:
        directory = stack.pop()
        try:
            st = os.stat(directory)
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            continue
        seen_dirs.add(key)
        try:
            with os.scandir(directory) as entries:
                children = sorted(entries, key=lambda e: e.name)
        except OSError:
            continue
        subdirs = []
        for entry in children:
            if not include_hidden and entry.name.startswith("."):
                continue
            try:
                if entry.is_dir():
                    subdirs.append(entry.path)
                elif entry.is_file() and is_image_name(entry.name):
                    est = entry.stat()
                    yield FileRecord(entry.path, est.st_size, est.st_mtime_ns)
            except OSError:
                continue
        stack.extend(reversed(subdirs))
