"""A self-contained HTML page of search results: thumbnails inlined, opens from disk in any browser."""

from __future__ import annotations

import base64
import html
import io
import os
from datetime import datetime, timezone
from pathlib import Path
from urllib.parse import quote

from clipsearch.encoders.images import DEFAULT_MAX_PIXELS, open_image
from clipsearch.encoders.video import frame_at
from clipsearch.errors import ImageError, OutputFileError
from clipsearch.files import write_atomic
from clipsearch.query.rank import Hit, moment_span

THUMB_SIDE = 256

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }
h1 { font-size: 1.2rem; font-weight: 600; } .meta { color: #666; font-size: .85rem; }
.grid { display: grid; grid-template-columns: repeat(auto-fill, minmax(220px, 1fr)); gap: 1rem; }
figure { margin: 0; background: #fff; border-radius: 8px; box-shadow: 0 1px 3px #0002; overflow: hidden; }
figure img { width: 100%; height: 200px; object-fit: contain; background: #eee; display: block; }
figcaption { padding: .5rem; font-size: .8rem; word-break: break-all; }
.score { font-weight: 600; } .missing { height: 200px; display: grid; place-items: center; color: #999; }
"""


def thumbnail_data_uri(path: str, side: int = THUMB_SIDE, *, at: float | None = None) -> str | None:
    """A JPEG thumbnail of ``path`` (EXIF orientation applied; of a video, its frame at ``at`` seconds)
    as a data: URI, or None if unreadable."""
    try:
        if at is not None:
            img = frame_at(path, at, max_pixels=DEFAULT_MAX_PIXELS, side=side)
        else:
            img = open_image(path, min_side=side)
    except ImageError:
        return None
    img.thumbnail((side, side))
    buf = io.BytesIO()
    img.save(buf, format="JPEG", quality=82)
    return "data:image/jpeg;base64," + base64.b64encode(buf.getvalue()).decode()


def render_gallery(query: str, hits: list[Hit]) -> str:
    """The HTML page for ``hits`` of ``query``."""
    cards = []
    for rank_no, hit in enumerate(hits, 1):
        uri = thumbnail_data_uri(hit.path, at=hit.t_start if hit.is_moment else None)
        link = "file://" + quote(os.fsencode(hit.path)) + (f"#t={hit.t_start:g}" if hit.is_moment else "")
        when = f" · {moment_span(hit)}" if hit.is_moment else ""
        name = html.escape(hit.path.encode("utf-8", "replace").decode())
        image = f'<img src="{uri}" alt="{name}">' if uri else '<div class="missing">unreadable</div>'
        date = datetime.fromtimestamp(hit.date, timezone.utc).strftime("%Y-%m-%d")
        cards.append(
            f'<figure><a href="{link}">{image}</a><figcaption><span class="score">#{rank_no} · '
            f"{hit.score:.3f}</span>{when} · {hit.width}×{hit.height} · {date}<br>{name}"
            "</figcaption></figure>"
        )
    title = html.escape(query)
    return (
        f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>clipsearch: {title}</title>'
        f"<style>{_STYLE}</style></head><body><h1>{title}</h1>"
        f'<p class="meta">{len(hits)} results · clipsearch</p><div class="grid">{"".join(cards)}</div>'
        "</body></html>\n"
    )


def write_gallery(target: Path, query: str, hits: list[Hit]) -> None:
    """Write the page atomically (a unique temp file beside it, then a rename).

    Raises:
        OutputFileError: ``target`` cannot be written (its folder is missing, it is a folder, the
            disk is full...); no temp file is left behind.
    """
    page = render_gallery(query, hits).encode("utf-8")
    try:
        write_atomic(target, page)
    except OSError as exc:
        raise OutputFileError(target, exc.strerror or str(exc)) from exc
