"""Videos on the page's API and in the --html gallery: moments with their times, frames as thumbnails,
the file played with range requests, "more like this" from a moment."""

from __future__ import annotations

import io
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from clipsearch.api import Index
from clipsearch.ingest.sync import SyncOptions
from clipsearch.web.gallery import render_gallery
from clipsearch.web.server import create_app
from videos import blue_star_film, scene

LOCAL = "http://127.0.0.1"
FAST = SyncOptions(export_text=False)  # no text export: each test run has its own cache


@dataclass
class Site:
    folder: Path
    film: Path
    client: TestClient


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    from clipsearch.encoders.loading import load_encoder

    root = tmp_path_factory.mktemp("site")
    folder = root / "media"
    folder.mkdir()
    film = blue_star_film(folder / "film.webm", codec="libvpx-vp9")
    scene("blue", "star", size="small", position="right").save(folder / "star.png")
    with Index.open_for_write(root / "index", load_encoder("shapes")) as idx:
        idx.sync([str(folder)], options=FAST)
    with TestClient(create_app(root / "index"), base_url=LOCAL) as client:
        yield Site(folder, film, client)


def _blue(image: Image.Image) -> bool:
    """Whether the middle of the picture is the blue star (35, 75, 220)."""
    r, _, b = np.asarray(image.convert("RGB"))[image.height // 2, image.width // 2].astype(int)
    return b > 150 and r < 100


def test_a_video_result_is_a_moment_with_its_frame_and_its_file(site: Site) -> None:
    body = site.client.get("/api/search", params={"q": "a large blue star", "k": 3}).json()
    best = body["results"][0]
    assert best["path"] == str(site.film)
    assert best["t_start"] >= 9 and best["t_end"] <= 21 and isinstance(best["moment"], int)
    assert best["video"] == f"/api/video/{best['content_id']}?v={body['index_version']}"
    assert best["thumb"].endswith(f"&moment={best['moment']}")
    picture = [r for r in body["results"] if r["path"].endswith(".png")]
    assert picture and "t_start" not in picture[0] and "video" not in picture[0]

    thumb = site.client.get(best["thumb"])
    assert thumb.status_code == 200 and thumb.headers["content-type"] == "image/jpeg"
    assert _blue(Image.open(io.BytesIO(thumb.content)))
    again = site.client.get(best["thumb"])  # cached: the same bytes
    assert again.content == thumb.content
    frame = Image.open(io.BytesIO(site.client.get(best["image"]).content))
    assert frame.size == (160, 120) and _blue(frame)
    plain = site.client.get(f"/api/thumb/{best['content_id']}")  # a video's own thumbnail: its main moment
    assert plain.status_code == 200


def test_the_video_is_served_with_range_requests(site: Site) -> None:
    cid = site.client.get("/api/search", params={"q": "a large blue star"}).json()["results"][0]["content_id"]
    whole = site.client.get(f"/api/video/{cid}")
    assert whole.status_code == 200 and whole.headers["content-type"] == "video/webm"
    assert whole.content == site.film.read_bytes()
    part = site.client.get(f"/api/video/{cid}", headers={"Range": "bytes=100-199"})
    assert part.status_code == 206 and part.content == site.film.read_bytes()[100:200]
    assert part.headers["content-range"] == f"bytes 100-199/{site.film.stat().st_size}"


def test_files_only_by_id_and_only_as_indexed(site: Site, tmp_path: Path) -> None:
    body = site.client.get("/api/search", params={"q": "a blue star", "k": 10}).json()
    png = next(r for r in body["results"] if r["path"].endswith(".png"))
    assert site.client.get(f"/api/video/{png['content_id']}").status_code == 404  # a picture is no video
    assert site.client.get(f"/api/thumb/{png['content_id']}?moment=0").status_code == 404
    film = next(r for r in body["results"] if r["path"].endswith(".webm"))
    assert site.client.get(f"/api/thumb/{film['content_id']}?moment=999").status_code == 404
    for bad in ("../film.webm", "-1", str(site.film), "99999999"):
        assert site.client.get(f"/api/video/{bad}").status_code in (404, 422)
    stat = site.film.stat()
    site.film.write_bytes(site.film.read_bytes() + b"\0")  # changed since indexed: not served
    try:
        assert site.client.get(f"/api/video/{film['content_id']}").status_code == 404
    finally:
        site.film.write_bytes(site.film.read_bytes()[:-1])
        os.utime(site.film, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert site.client.get(f"/api/video/{film['content_id']}").status_code == 200


def test_more_like_this_from_a_moment(site: Site) -> None:
    body = site.client.get("/api/search", params={"q": "a large yellow square", "k": 1}).json()
    square = body["results"][0]
    assert square["t_start"] >= 19 and square["t_end"] <= 31
    similar = site.client.get(
        f"/api/similar/{square['content_id']}", params={"moment": square["moment"], "k": 20}
    ).json()
    moments = [(r["content_id"], r.get("moment")) for r in similar["results"]]
    assert (square["content_id"], square["moment"]) not in moments  # itself left out
    assert (square["content_id"], 0) in moments or any(
        m is not None for _, m in moments
    )  # its video's others
    once = site.client.get(f"/api/similar/{square['content_id']}", params={"moment": 0, "per_file": 1}).json()
    assert len([r for r in once["results"] if r["content_id"] == square["content_id"]]) <= 1


def test_the_gallery_shows_a_moments_frame_and_time(site: Site) -> None:
    from clipsearch.encoders.loading import load_encoder

    with Index.open(site.folder.parent / "index", encoder=load_encoder("shapes")) as idx:
        hits = idx.search_text("a large blue star", 2)
    page = render_gallery("a large blue star", hits)
    assert "0:00:10–0:00:20" in page and page.count("data:image/jpeg;base64,") == 2
    assert f"#t={hits[0].t_start:g}" in page
