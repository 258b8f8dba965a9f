"""Walk roots and yield the image files under them: symlink-loop safe, with ignore rules.

Ignore rules use gitignore syntax: ``.clipsearchignore`` files (in any folder, patterns relative to
that folder, like ``.gitignore``) plus ``exclude`` patterns given for the whole scan (relative to
each root).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from clipsearch.encoders.images import IMAGE_EXTENSIONS

IGNORE_FILE = ".clipsearchignore"


@dataclass(frozen=True)
class FileRecord:
    """One candidate file as seen by ``stat``: enough to decide whether it changed."""

    path: str
    size: int
    mtime_ns: int


def is_image_name(name: str) -> bool:
    """True if the file name has one of the image extensions we index."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def _spec(lines: Iterable[str]) -> Any:
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(lines)


@dataclass(frozen=True)
class _Rules:
    """Ignore specs in force for a folder: (folder they are relative to, compiled spec)."""

    specs: tuple[tuple[str, Any], ...] = ()

    def ignores(self, path: str, is_dir: bool) -> bool:
        for base, spec in self.specs:
            rel = os.path.relpath(path, base) + ("/" if is_dir else "")
            if spec.match_file(rel):
                return True
        return False

    def entering(self, directory: str) -> _Rules:
        try:
            with open(os.path.join(directory, IGNORE_FILE), encoding="utf-8", errors="replace") as fh:
                lines = fh.read().splitlines()
        except OSError:
            return self
        return _Rules((*self.specs, (directory, _spec(lines))))


def scan(
    roots: Iterable[str], *, include_hidden: bool = False, exclude: Sequence[str] = ()
) -> Iterator[FileRecord]:
    """Yield every image file under ``roots`` (absolute paths), each real directory visited once.

    Symlinked directories are followed, but a directory already visited (same device and inode)
    is never entered twice, so symlink loops terminate. Broken symlinks and entries that vanish
    while walking are ignored. Hidden entries (dot-names) are skipped unless ``include_hidden``.
    ``exclude`` holds gitignore-style patterns relative to each root.
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
        rules = _Rules(((root, _spec(exclude)),)) if exclude else _Rules()
        yield from _walk(root, rules, seen_dirs, include_hidden)


def _walk(
    top: str, top_rules: _Rules, seen_dirs: set[tuple[int, int]], include_hidden: bool
) -> Iterator[FileRecord]:
    stack = [(top, top_rules)]
    while stack:
        directory, rules = stack.pop()
        try:
            st = os.stat(directory)
        except OSError:
            continue
        key = (st.st_dev, st.st_ino)
        if key in seen_dirs:
            continue
        seen_dirs.add(key)
        rules = rules.entering(directory)
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
                    if not rules.ignores(entry.path, is_dir=True):
                        subdirs.append((entry.path, rules))
                elif entry.is_file() and is_image_name(entry.name) and not rules.ignores(entry.path, False):
                    est = entry.stat()
                    yield FileRecord(entry.path, est.st_size, est.st_mtime_ns)
            except OSError:
                continue
        stack.extend(reversed(subdirs))
