"""The ``eval --html`` report: a self-contained page with each setting's numbers, per query, and
thumbnails of what each setting got wrong (relevant files it missed, files it kept that are not)."""

from __future__ import annotations

import html
import os
from pathlib import Path
from urllib.parse import quote

from clipsearch.errors import OutputFileError
from clipsearch.files import write_atomic
from clipsearch.query.measure import SettingReport
from clipsearch.web.gallery import thumbnail_data_uri

#: Thumbnails shown per query and setting, of each kind (missed, wrong).
SHOWN = 8
HEADINGS = {
    "p@10": "p@10",
    "r@10": "r@10",
    "ndcg@10": "nDCG@10",
    "mrr": "MRR",
    "precision": "precision",
    "recall": "recall",
    "f1": "F1",
    "new p@10": "new p@10",
}

_STYLE = """
body { font-family: system-ui, sans-serif; margin: 1.5rem; background: #fafafa; color: #222; }
h1 { font-size: 1.25rem; } h2 { font-size: 1.05rem; margin: 2rem 0 .5rem; } .meta { color: #666; }
table { border-collapse: collapse; background: #fff; margin: .5rem 0; font-variant-numeric: tabular-nums; }
th, td { padding: .3rem .6rem; border-bottom: 1px solid #e5e5e5; text-align: right; }
th:first-child, td:first-child { text-align: left; }
.strip { display: flex; flex-wrap: wrap; gap: .4rem; margin: .3rem 0 .8rem; align-items: flex-end; }
.strip figure { margin: 0; width: 104px; font-size: .7rem; color: #555; word-break: break-all; }
.strip img { width: 104px; height: 104px; object-fit: cover; border-radius: 4px; display: block; }
.missed img { outline: 3px solid #d97706; } .wrong img { outline: 3px solid #b42318; }
.label { font-size: .8rem; color: #555; margin-top: .4rem; }
"""


def _table(rows: list[tuple[str, dict[str, float]]], keys: list[str]) -> str:
    head = "".join(f"<th>{HEADINGS.get(k, html.escape(k))}</th>" for k in keys)
    body = "".join(
        f"<tr><td>{html.escape(name)}</td>" + "".join(f"<td>{values[k]:.3f}</td>" for k in keys) + "</tr>"
        for name, values in rows
    )
    return f"<table><tr><th></th>{head}</tr>{body}</table>"


def _strip(kind: str, paths: list[str], thumbs: dict[str, str | None]) -> str:
    figures = []
    for path in paths[:SHOWN]:
        if path not in thumbs:
            thumbs[path] = thumbnail_data_uri(path, 160)
        name = html.escape(os.path.basename(path).encode("utf-8", "replace").decode())
        link = "file://" + quote(os.fsencode(path))
        uri = thumbs[path]
        image = f'<img src="{uri}" alt="{name}">' if uri else "<div>unreadable</div>"
        figures.append(f'<figure><a href="{link}">{image}</a>{name}</figure>')
    more = f" (first {SHOWN} of {len(paths)})" if len(paths) > SHOWN else ""
    title = {"missed": "relevant, not kept", "wrong": "kept, not relevant"}[kind]
    return f'<div class="label">{title}{more}</div><div class="strip {kind}">{"".join(figures)}</div>'


def render_report(source: str, reports: list[SettingReport]) -> str:
    """The page for these reports (one per setting, over the same queries)."""
    keys = list(reports[0].mean())
    parts = [f"<h1>clipsearch eval: {html.escape(source)}</h1>"]
    parts.append(f'<p class="meta">{len(reports[0].results)} queries · {len(reports)} setting(s)</p>')
    parts.append(_table([(r.name, r.mean()) for r in reports], keys))
    thumbs: dict[str, str | None] = {}
    by_query = [{res.score.query: res for res in r.results} for r in reports]
    for query in [res.score.query for res in reports[0].results]:
        parts.append(f"<h2>{html.escape(query)}</h2>")
        rows = [
            (r.name, found[query].score.scores)
            for r, found in zip(reports, by_query, strict=True)
            if query in found
        ]
        parts.append(_table(rows, keys))
        for report, found in zip(reports, by_query, strict=True):
            result = found.get(query)
            if result is None or not (result.missed or result.wrong):
                continue
            if len(reports) > 1:
                parts.append(f'<div class="label"><b>{html.escape(report.name)}</b></div>')
            if result.missed:
                parts.append(_strip("missed", result.missed, thumbs))
            if result.wrong:
                parts.append(_strip("wrong", result.wrong, thumbs))
    return (
        '<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>clipsearch eval</title>'
        f"<style>{_STYLE}</style></head><body>{''.join(parts)}</body></html>\n"
    )


def write_report(target: Path, source: str, reports: list[SettingReport]) -> None:
    """Write the report atomically.

    Raises:
        OutputFileError: ``target`` cannot be written.
    """
    page = render_report(source, reports).encode("utf-8")
    try:
        write_atomic(target, page)
    except OSError as exc:
        raise OutputFileError(target, exc.strerror or str(exc)) from exc
