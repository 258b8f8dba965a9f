"""Walk roots and yield the image files under them: symlink-loop safe, with ignore rules.

Ignore rules use gitignore syntax: ``.clipsearchignore`` files (in any folder, patterns relative to
that folder, like ``.gitignore``) plus ``exclude`` patterns given for the whole scan (relative to
each root).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
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
    roots: Iterable[str],
    *,
    include_hidden: bool = False,
    exclude: Sequence[str] = (),
    rules_for: Callable[[str], tuple[bool, Sequence[str]]] | None = None,
    avoid: Iterable[str] = (),
) -> Iterator[FileRecord]:
    """Yield every image file under ``roots`` (absolute paths), one path per file.

    Symlinked folders are followed, except a link whose real path overlaps a root (of ``roots``
    or ``avoid``, the other roots of the index): one that is a root, lies inside one, or holds
    one. Those files are found under the root's own paths, and a link up to a parent cannot walk
    the root again under a second name. A real directory is never entered twice (same device and
    inode), so the walk ends. Broken symlinks and entries that vanish while walking are ignored.

    Args:
        roots: folders (or files) to walk.
        include_hidden: also yield dot-files and files in dot-folders.
        exclude: gitignore-style patterns relative to each root.
        rules_for: ``(include_hidden, exclude)`` of each root, instead of the two arguments above.
        avoid: further roots whose folders links must not lead into.
    """
    roots = [os.path.abspath(r) for r in roots]
    real_roots = tuple({os.path.realpath(r) for r in [*roots, *avoid]})
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        try:
            st = os.stat(root)
        except OSError:
            continue
        if stat.S_ISREG(st.st_mode):
            if is_image_name(root):
                yield FileRecord(root, st.st_size, st.st_mtime_ns)
            continue
        hidden, patterns = rules_for(root) if rules_for is not None else (include_hidden, exclude)
        rules = _Rules(((root, _spec(patterns)),)) if patterns else _Rules()
        yield from _walk(root, rules, seen_dirs, hidden, real_roots)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _overlaps_a_root(link: str, real_roots: tuple[str, ...]) -> bool:
    target = os.path.realpath(link)
    return any(_inside(target, root) or _inside(root, target) for root in real_roots)


def _walk(
    top: str,
    top_rules: _Rules,
    seen_dirs: set[tuple[int, int]],
    include_hidden: bool,
    real_roots: tuple[str, ...],
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
                    if entry.is_symlink() and _overlaps_a_root(entry.path, real_roots):
                        continue
                    if not rules.ignores(entry.path, is_dir=True):
                        subdirs.append((entry.path, rules))
                elif entry.is_file() and is_image_name(entry.name) and not rules.ignores(entry.path, False):
                    est = entry.stat()
                    yield FileRecord(entry.path, est.st_size, est.st_mtime_ns)
            except OSError:
                continue
        stack.extend(reversed(subdirs))
