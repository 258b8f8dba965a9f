"""Ask a running ``clipsearch serve`` to answer a search: no torch import, no model load in this process.

``serve`` writes ``server.json`` (its pid and URL) into the index folder while it runs on a
loopback address. ``search`` uses it for text-only queries when present and alive, and falls back
to searching locally on any problem, so the answer is the same either way, only faster.
"""

from __future__ import annotations

import json
import os
from datetime import datetime
from pathlib import Path
from typing import Any

from clipsearch.search import Hit

SERVER_FILE = "server.json"  # the name server.py writes


def server_url(index_path: Path) -> str | None:
    """URL of a live local server for this index, or None."""
    try:
        record = json.loads((index_path / SERVER_FILE).read_text())
        pid, url = int(record["pid"]), str(record["url"])
        os.kill(pid, 0)  # raises if that process is gone
    except (OSError, ValueError, KeyError, TypeError):
        return None
    return url if url.startswith(("http://127.", "http://localhost", "http://[::1]")) else None


def search_remote(index_path: Path, params: dict[str, Any], *, timeout: float = 5.0) -> list[Hit] | None:
    """The server's hits for these /api/search parameters, or None to search locally instead."""
    url = server_url(index_path)
    if url is None:
        return None
    # only now: urllib.request costs a cold search 20 ms when no server runs
    from urllib.error import URLError
    from urllib.parse import urlencode
    from urllib.request import urlopen

    query = urlencode({k: v for k, v in params.items() if v is not None})
    try:
        with urlopen(f"{url}api/search?{query}", timeout=timeout) as response:
            body = json.loads(response.read())
    except (URLError, OSError, ValueError):
        return None
    try:
        hits = [
            Hit(
                r["path"],
                float(r["score"]),
                int(r["content_id"]),
                int(r["size"]),
                int(r["width"]),
                int(r["height"]),
                datetime.fromisoformat(r["date"]).timestamp(),
            )
            for r in body["results"]
        ]
    except (KeyError, TypeError, ValueError):
        return None
    # the page shows names that are not valid UTF-8 with replacement characters: use our own answer
    return hits if all(os.path.lexists(h.path) for h in hits) else None
