"""Search filters: parsed once from text (the CLI's options, the web API's parameters) into one record."""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from datetime import datetime, timezone

from clipsearch.encoders.images import IMAGE_EXTENSIONS
from clipsearch.encoders.video import VIDEO_EXTENSIONS
from clipsearch.errors import BadValueError
from clipsearch.store.catalog import FileFilter

#: File types that name the same format (``--type jpeg`` matches ``.jpg``).
_SAME_TYPE = (("jpg", "jpeg", "jpe"), ("tif", "tiff"), ("heic", "heif"))
KNOWN_TYPES = frozenset(ext.lstrip(".") for ext in IMAGE_EXTENSIONS | VIDEO_EXTENSIONS)


@dataclass(frozen=True)
class Filters:
    """Which files may be returned; every filter applies before the top-k cut.

    Args:
        folder: only files under this folder (absolute path).
        after / before: only files dated on/after, before this POSIX time (EXIF date, else mtime).
        types: only these file types (lower case, no dot; a type matches its aliases: jpg, jpeg, jpe).
        min_side: only images whose shorter side has at least this many pixels.
        available: only files that are on disk now (not those of an unplugged drive, nor files
            deleted since the last sync).
    """

    folder: str | None = None
    after: float | None = None
    before: float | None = None
    types: tuple[str, ...] = field(default_factory=tuple)
    min_side: int | None = None
    available: bool = False

    def active(self) -> bool:
        return self.available or self.for_catalog().active()

    def for_catalog(self) -> FileFilter:
        """The catalog's query for these filters."""
        suffixes: set[str] = set()
        for kind in self.types:
            same = next((group for group in _SAME_TYPE if kind in group), (kind,))
            suffixes.update(f".{t}" for t in same)
        return FileFilter(self.folder, self.after, self.before, tuple(sorted(suffixes)), self.min_side)


def parse_date(value: str, *, name: str) -> float:
    """``2019``, ``2019-07``, ``2019-07-14`` or an ISO date-time -> POSIX time (UTC)."""
    for fmt in ("%Y", "%Y-%m", "%Y-%m-%d"):
        try:
            return datetime.strptime(value, fmt).replace(tzinfo=timezone.utc).timestamp()
        except ValueError:
            pass
    try:
        when = datetime.fromisoformat(value)
    except ValueError:
        raise BadValueError(name, value, "not a date; use YYYY, YYYY-MM or YYYY-MM-DD") from None
    return (when if when.tzinfo else when.replace(tzinfo=timezone.utc)).timestamp()


def parse_types(value: str) -> tuple[str, ...]:
    """``jpg,PNG, .heic`` -> ``("jpg", "png", "heic")``; unknown types are refused."""
    types = tuple(dict.fromkeys(t.strip().lower().lstrip(".") for t in value.split(",") if t.strip()))
    unknown = [t for t in types if t not in KNOWN_TYPES]
    if unknown:
        raise BadValueError(
            "type", value, f"unknown file type {', '.join(unknown)}; known: {', '.join(sorted(KNOWN_TYPES))}"
        )
    return types


def parse_filters(
    *,
    folder: str | None = None,
    after: str | None = None,
    before: str | None = None,
    types: str | None = None,
    min_side: int | None = None,
    available: bool = False,
) -> Filters:
    """Filters from text as a user typed them (a relative folder is taken from the working folder).

    Raises:
        BadValueError: naming the parameter (``in``, ``after``, ``before``, ``type``, ``min_side``).
    """
    if min_side is not None and min_side < 1:
        raise BadValueError("min_side", min_side, "give a number of pixels, 1 or more")
    return Filters(
        folder=os.path.normpath(os.path.abspath(os.path.expanduser(folder))) if folder else None,
        after=parse_date(after, name="after") if after else None,
        before=parse_date(before, name="before") if before else None,
        types=parse_types(types) if types else (),
        min_side=min_side,
        available=available,
    )
