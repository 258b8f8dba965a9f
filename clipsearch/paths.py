"""How file paths are shown: in JSON (exact, even when a name is not valid UTF-8) and on a terminal.

Paths are ``str`` as Python's ``os`` functions give them: bytes that are not valid UTF-8 are kept as
lone surrogates (``os.fsdecode``), so ``os.fsencode`` gives the file system's bytes back. JSON
cannot carry lone surrogates usefully, and a terminal must not receive control characters.
"""

from __future__ import annotations

import base64
import os
import re


def display(path: str) -> str:
    """``path`` as valid Unicode: bytes that are not UTF-8 become U+FFFD (for reading, not for opening)."""
    return path if path.isascii() else os.fsencode(path).decode("utf-8", "replace")


def json_fields(path: str, key: str = "path") -> dict[str, str]:
    """``{key: path}``, plus ``{key}_bytes`` (the exact bytes, base64) when the name is not valid UTF-8.

    ``key`` then shows U+FFFD where the bytes are not UTF-8; ``base64 -d`` of ``{key}_bytes`` (or
    ``os.fsdecode(base64.b64decode(...))`` in Python) is the path that opens the file.
    """
    raw = os.fsencode(path)
    try:
        return {key: raw.decode("utf-8")}
    except UnicodeDecodeError:
        return {key: raw.decode("utf-8", "replace"), f"{key}_bytes": base64.b64encode(raw).decode("ascii")}


def json_list(paths: list[str], key: str = "paths") -> dict[str, list[str] | list[str | None]]:
    """``{key: [...]}`` as :func:`json_fields` shows each path, plus ``{key}_bytes`` (base64, or None
    for the valid UTF-8 ones) when any is not valid UTF-8."""
    fields = [json_fields(p) for p in paths]
    out: dict[str, list[str] | list[str | None]] = {key: [f["path"] for f in fields]}
    if any("path_bytes" in f for f in fields):
        out[f"{key}_bytes"] = [f.get("path_bytes") for f in fields]
    return out


# C0 controls, DEL, C1 controls, and the C1 bytes of a name that is not UTF-8 (kept as surrogates)
_CONTROL = re.compile("[\x00-\x1f\x7f-\x9f\udc80-\udc9f]")
_NAMED = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def _escape(match: re.Match[str]) -> str:
    ch = match.group()
    code = ord(ch) - 0xDC00 if ord(ch) >= 0xDC00 else ord(ch)
    return _NAMED.get(ch, f"\\x{code:02x}")


def for_terminal(path: str) -> str:
    """``path`` with control characters written as ``\\n``, ``\\t``, ``\\xNN``, so that a name cannot
    break a line of a table or send the terminal an escape sequence; other bytes are kept."""
    return _CONTROL.sub(_escape, path)
