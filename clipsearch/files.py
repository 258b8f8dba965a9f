"""File access shared by every room: durable writes (fsync, write-to-temp-then-rename) and bounded reads."""

from __future__ import annotations

import contextlib
import io
import os
import stat
import tempfile
from pathlib import Path

_KINDS = (
    (stat.S_ISDIR, "a folder"),
    (stat.S_ISFIFO, "a FIFO (named pipe)"),
    (stat.S_ISCHR, "a character device"),
    (stat.S_ISBLK, "a block device"),
    (stat.S_ISSOCK, "a socket"),
)


class NotRegularFileError(OSError):
    """A path that was to be read is a folder, FIFO, device or socket; ``kind`` says which."""

    def __init__(self, path: str | os.PathLike[str], kind: str) -> None:
        super().__init__(f"{os.fspath(path)} is {kind}, not a regular file")
        self.path = os.fspath(path)
        self.kind = kind


class FileTooLargeError(OSError):
    """A file holds more than the reader's limit of ``limit`` bytes (``size``: at least that many)."""

    def __init__(self, path: str | os.PathLike[str], size: int, limit: int) -> None:
        super().__init__(f"{os.fspath(path)} holds {size:,} bytes, more than the limit of {limit:,} bytes")
        self.path = os.fspath(path)
        self.size = size
        self.limit = limit


def file_kind(mode: int) -> str:
    """What a ``stat`` mode is, in words ("a regular file", "a FIFO (named pipe)", ...)."""
    return next((kind for test, kind in _KINDS if test(mode)), "a regular file")


def read_regular_file(path: str | os.PathLike[str], max_bytes: int) -> bytes:
    """The content of the regular file at ``path``, at most ``max_bytes`` of it.

    A FIFO, device or socket is refused without being read, and opening never blocks (a FIFO
    with no writer, a device that waits): the file is opened non-blocking and checked with
    ``fstat`` before the first read, so one swapped in after a check is refused too.

    Raises:
        NotRegularFileError: ``path`` is not a regular file.
        FileTooLargeError: it holds more than ``max_bytes``.
        OSError: it cannot be opened or read (FileNotFoundError, PermissionError, ...).
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):  # not even opened: opening some devices has effects of its own
        raise NotRegularFileError(path, file_kind(mode))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(path, file_kind(st.st_mode))
        if st.st_size > max_bytes:
            raise FileTooLargeError(path, st.st_size, max_bytes)
        chunks, total = [], 0
        while total <= max_bytes:  # one read of the whole file, one more to see its end
            chunk = os.read(fd, min(max_bytes + 1 - total, max(st.st_size + 1 - total, 1 << 16)))
            if not chunk:
                break
            chunks.append(chunk)
            total += len(chunk)
    finally:
        os.close(fd)
    if total > max_bytes:  # it grew while we read
        raise FileTooLargeError(path, total, max_bytes)
    return chunks[0] if len(chunks) == 1 else b"".join(chunks)


def open_regular_file(path: str | os.PathLike[str]) -> io.BufferedReader:
    """The regular file at ``path`` opened for reading (binary), checked as :func:`read_regular_file`
    checks it: a FIFO, device or socket is refused, and opening never blocks.

    Raises:
        NotRegularFileError: ``path`` is not a regular file.
        OSError: it cannot be opened (FileNotFoundError, PermissionError, ...).
    """
    mode = os.stat(path).st_mode
    if not stat.S_ISREG(mode):
        raise NotRegularFileError(path, file_kind(mode))
    fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC | os.O_NOCTTY)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise NotRegularFileError(path, file_kind(st.st_mode))
        os.set_blocking(fd, True)  # a regular file: reads never wait anyway
        return open(fd, "rb", buffering=1 << 16)
    except BaseException:
        os.close(fd)
        raise


#: Below this much free space, messages about a failed write mention it (SQLite often says only
#: "disk I/O error" when a disk fills up).
LOW_SPACE_BYTES = 64 * 1024 * 1024


def free_space_note(folder: Path) -> str:
    """ " The disk holding it has only 96 KB free: free some space, then run the command again." when
    the disk holding ``folder`` (or its nearest existing parent) is nearly full, else ""."""
    for candidate in (folder, *folder.parents):
        try:
            st = os.statvfs(candidate)
        except OSError:
            continue
        free = st.f_bavail * st.f_frsize
        if free >= LOW_SPACE_BYTES:
            return ""
        amount = f"{free // 1024:,} KB" if free < 1024 * 1024 else f"{free / 2**20:.0f} MB"
        return f" The disk holding it has only {amount} free: free some space, then run the command again."
    return ""


def fsync_path(path: Path) -> None:
    """Flush a file's or a directory's entries to disk (a directory fsync makes a rename durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_atomic(target: Path, data: bytes, *, durable: bool = False) -> None:
    """Write ``data`` to ``target`` through a unique temporary file and a rename.

    Readers see the old file or the new one, never half of it. ``durable``: fsync the file and
    its folder, so the new content survives a power cut. Raises OSError; no temporary is left.
    """
    fd, tmp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as out:
            out.write(data)
            if durable:
                out.flush()
                os.fsync(out.fileno())
        os.replace(tmp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    if durable:
        fsync_path(target.parent)
