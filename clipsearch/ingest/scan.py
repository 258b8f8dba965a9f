"""Walk roots and yield the image and video files under them: symlink-loop safe, with ignore rules.

Ignore rules use gitignore syntax: ``.clipsearchignore`` files (in any folder, patterns relative to
that folder, like ``.gitignore``) plus ``exclude`` patterns given for the whole scan (relative to
each root). A bad ``exclude`` pattern is an error before the walk; a bad line in an ignore file,
or an ignore file that is not a regular file of reasonable size, is a warning and is left out.
"""

from __future__ import annotations

import operator
import os
import re
import stat
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass
from typing import Any

from clipsearch.encoders.images import IMAGE_EXTENSIONS
from clipsearch.encoders.video import VIDEO_EXTENSIONS
from clipsearch.errors import BadValueError
from clipsearch.files import FileTooLargeError, NotRegularFileError, read_regular_file

IGNORE_FILE = ".clipsearchignore"
#: An ignore file larger than this is not read (a real one holds a few lines).
IGNORE_FILE_MAX_BYTES = 4 * 1024 * 1024

Warn = Callable[[str], None]


@dataclass(frozen=True)
class FileRecord:
    """One candidate file as seen by ``stat``: enough to decide whether it changed."""

    path: str
    size: int
    mtime_ns: int


#: Extensions of every file indexed: pictures and videos.
INDEXED_EXTENSIONS = IMAGE_EXTENSIONS | VIDEO_EXTENSIONS


def is_image_name(name: str) -> bool:
    """True if the file name has one of the image extensions we index."""
    return os.path.splitext(name)[1].lower() in IMAGE_EXTENSIONS


def is_indexed_name(name: str) -> bool:
    """True if the file name has one of the extensions indexed (an image's or a video's).

    As ``os.path.splitext(name)[1].lower() in INDEXED_EXTENSIONS`` (leading dots start no
    extension), without its calls: a scan asks it of every file.
    """
    base = name[name.rfind("/") + 1 :]
    dot = base.rfind(".")
    return dot > 0 and base[dot:].lower() in INDEXED_EXTENSIONS and base[:dot].strip(".") != ""


def _compile(lines: Iterable[str]) -> Any:
    import pathspec

    return pathspec.GitIgnoreSpec.from_lines(lines)


def pattern_problem(pattern: str) -> str | None:
    """Why ``pattern`` is not a usable gitignore pattern, or None if it is."""
    try:
        _compile([pattern])
    except re.error as exc:  # e.g. a character range backwards: [z-a]
        return f"not a valid gitignore pattern ({exc.msg})"
    except ValueError:  # pathspec's GitIgnorePatternError, e.g. a lone "!"
        return "not a valid gitignore pattern"
    return None


def exclude_spec(patterns: Sequence[str]) -> Any:
    """The compiled ``exclude`` patterns of a scan.

    Raises:
        BadValueError: ("exclude", pattern) for the first pattern that is not valid gitignore syntax.
    """
    for pattern in patterns:
        problem = pattern_problem(pattern)
        if problem:
            raise BadValueError("exclude", pattern, problem)
    return _compile(patterns)


def _ignore_file_spec(path: str, warn: Warn) -> Any | None:
    """The rules of one ignore file, bad lines left out with a warning; None if there is none."""
    try:
        text = read_regular_file(path, IGNORE_FILE_MAX_BYTES).decode("utf-8", "replace")
    except FileNotFoundError:
        return None
    except (NotRegularFileError, FileTooLargeError) as exc:
        warn(f"{path} was not read: {_after_path(exc, path)}; its rules do not apply.")
        return None
    except OSError as exc:
        warn(f"{path} cannot be read ({exc.strerror or exc}); its rules do not apply.")
        return None
    good = []
    for number, line in enumerate(text.splitlines(), 1):
        problem = pattern_problem(line)
        if problem:
            warn(f"{path}, line {number}: {line!r} is {problem}; that line is skipped.")
        else:
            good.append(line)
    return _compile(good)


def _after_path(exc: OSError, path: str) -> str:
    """An error's message without the path it starts with."""
    return str(exc).removeprefix(path).strip()


def _ignore_nothing(message: str) -> None:
    """The default ``warn``: the scan goes on without telling anyone."""


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

    def entering(self, directory: str, warn: Warn) -> _Rules:
        spec = _ignore_file_spec(os.path.join(directory, IGNORE_FILE), warn)
        return self if spec is None else _Rules((*self.specs, (directory, spec)))


def scan(
    roots: Iterable[str],
    *,
    include_hidden: bool = False,
    exclude: Sequence[str] = (),
    rules_for: Callable[[str], tuple[bool, Sequence[str]]] | None = None,
    avoid: Iterable[str] = (),
    warn: Warn = _ignore_nothing,
) -> Iterator[FileRecord]:
    """Yield every image and video file under ``roots`` (absolute paths), one path per file.

    Symlinked folders are followed, except a link whose real path overlaps a root (of ``roots``
    or ``avoid``, the other roots of the index): one that is a root, lies inside one, or holds
    one. Those files are found under the root's own paths, and a link up to a parent cannot walk
    the root again under a second name. A real directory is never entered twice (same device and
    inode), so the walk ends. Broken symlinks and entries that vanish while walking are ignored.
    A FIFO, device or socket with an image's (or video's) name is yielded too (never opened here), so the
    decoder skips it with a reason.

    Args:
        roots: folders (or files) to walk.
        include_hidden: also yield dot-files and files in dot-folders.
        exclude: gitignore-style patterns relative to each root.
        rules_for: ``(include_hidden, exclude)`` of each root, instead of the two arguments above.
        avoid: further roots whose folders links must not lead into.
        warn: receives a line for each ignore file, or line of one, left out.

    Raises:
        BadValueError: an ``exclude`` pattern is not valid gitignore syntax (before any file is seen).
    """
    roots = [os.path.abspath(r) for r in roots]
    rules: dict[str, tuple[bool, Any]] = {}
    for root in roots:
        hidden, patterns = rules_for(root) if rules_for is not None else (include_hidden, exclude)
        rules[root] = (hidden, exclude_spec(patterns) if patterns else None)
    real_roots = tuple({os.path.realpath(r) for r in [*roots, *avoid]})
    return _scan(roots, rules, real_roots, warn)


def _scan(
    roots: list[str], rules: dict[str, tuple[bool, Any]], real_roots: tuple[str, ...], warn: Warn
) -> Iterator[FileRecord]:
    seen_dirs: set[tuple[int, int]] = set()
    for root in roots:
        try:
            st = os.stat(root)
        except OSError:
            continue
        if not stat.S_ISDIR(st.st_mode):
            if is_indexed_name(root):
                yield FileRecord(root, st.st_size, st.st_mtime_ns)
            continue
        hidden, excluded = rules[root]
        top_rules = _Rules(((root, excluded),)) if excluded is not None else _Rules()
        yield from _walk(root, top_rules, seen_dirs, hidden, real_roots, warn)


def _inside(path: str, folder: str) -> bool:
    return path == folder or path.startswith(folder.rstrip("/") + "/")


def _overlaps_a_root(link: str, real_roots: tuple[str, ...]) -> bool:
    target = os.path.realpath(link)
    return any(_inside(target, root) or _inside(root, target) for root in real_roots)


_NAME = operator.attrgetter("name")


def _walk(
    top: str,
    top_rules: _Rules,
    seen_dirs: set[tuple[int, int]],
    include_hidden: bool,
    real_roots: tuple[str, ...],
    warn: Warn,
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
        rules = rules.entering(directory, warn)
        try:
            with os.scandir(directory) as entries:
                children = sorted(entries, key=_NAME)
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
                elif is_indexed_name(entry.name) and not rules.ignores(entry.path, False):
                    est = entry.stat()  # a broken link raises: ignored
                    yield FileRecord(entry.path, est.st_size, est.st_mtime_ns)
            except OSError:
                continue
        stack.extend(reversed(subdirs))
