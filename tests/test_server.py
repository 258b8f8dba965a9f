"""The web API on a real index: right results, files only by content id, hostile input gets a 4xx."""

from __future__ import annotations

import base64
import io
import json
import os
import random
import re
import shutil
import signal
import socket
import struct
import subprocess
import sys
import threading
import urllib.request
import zlib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import quote

import numpy as np
import pytest
from fastapi import FastAPI
from fastapi.testclient import TestClient
from PIL import Image

from clipsearch.api import Index
from clipsearch.errors import IndexNotFoundError, UsageError
from clipsearch.query.filters import Filters
from clipsearch.web.server import bind, create_app, is_local_host, serve
from conftest import copy_vector_files, picture_vectors, write_photos

LOCAL = "http://127.0.0.1"


@dataclass
class Served:
    root: Path
    index_dir: Path
    photos: dict[str, Path]
    ids: dict[str, int]
    app: FastAPI
    client: TestClient


def _png(img: Image.Image) -> bytes:
    buf = io.BytesIO()
    img.save(buf, format="PNG")
    return buf.getvalue()


def _upright_marker() -> Image.Image:
    """80x40 pixels, red left half: stored so that EXIF orientation 6 shows it 40x80 with red on top."""
    img = Image.new("RGB", (80, 40), (20, 40, 200))
    img.paste((230, 20, 20), (0, 0, 40, 40))
    return img


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory, tiny_encoder) -> Iterator[Served]:
    root = tmp_path_factory.mktemp("served")
    photos = write_photos(root / "photos")
    extra = root / "photos" / "extra"
    extra.mkdir()
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90° clockwise to display
    photos["portrait"] = extra / "portrait.jpg"
    _upright_marker().save(photos["portrait"], quality=95, exif=exif.tobytes())
    photos["scan"] = extra / "scan.tif"
    Image.new("RGB", (120, 90), (30, 160, 60)).save(photos["scan"])
    photos["latin1"] = Path(os.fsdecode(str(extra).encode() + b"/caf\xe9.png"))  # not valid UTF-8
    Image.new("RGB", (64, 64), (240, 200, 0)).save(photos["latin1"])
    index_dir = root / "index"
    with Index.open_for_write(index_dir, tiny_encoder) as idx:
        idx.sync([str(root / "photos")])
        ids = {name: idx.catalog.file(str(path)).content_id for name, path in photos.items()}
    app = create_app(index_dir)
    with TestClient(app, base_url=LOCAL) as client:
        yield Served(root, index_dir, photos, ids, app, client)


def _stored(served: Served) -> tuple[list[str], np.ndarray, list[np.ndarray]]:
    """The photos' paths, their main (unit) vectors, and every vector of each (side views too)."""
    with Index.open(served.index_dir) as idx:
        paths = sorted(str(p) for p in served.photos.values())
        return (
            paths,
            np.stack([idx.stored_vector(p) for p in paths]),
            [picture_vectors(idx, p) for p in paths],
        )


def _best(vectors: list[np.ndarray], query: np.ndarray) -> np.ndarray:
    """Each picture's score: its best vector's."""
    return np.array([float(np.max(v @ query)) for v in vectors])


def _shown(path: str) -> str:
    """A path as the API shows it (U+FFFD for bytes that are not UTF-8)."""
    return os.fsencode(path).decode("utf-8", "replace")


def _error(response, status: int) -> str:
    assert response.status_code == status, response.text
    body = response.json()
    assert isinstance(body["error"], str) and body["error"]
    return body["error"]


# -- right results --------------------------------------------------------------------------------


def test_text_search_matches_brute_force(served: Served, tiny_encoder) -> None:
    paths, _, vectors = _stored(served)
    scores = _best(vectors, tiny_encoder.encode_texts(["a cup of coffee"])[0])
    order = np.argsort(-scores, kind="stable")[:5]
    body = served.client.get("/api/search", params={"q": "a cup of coffee", "k": 5}).json()
    assert [r["path"] for r in body["results"]] == [_shown(paths[i]) for i in order]
    np.testing.assert_allclose([r["score"] for r in body["results"]], scores[order], atol=1e-5)
    assert [r["rank"] for r in body["results"]] == [1, 2, 3, 4, 5]
    version = body["index_version"]
    for result in body["results"]:
        cid = result["content_id"]
        assert (result["thumb"], result["image"]) == (
            f"/api/thumb/{cid}?v={version}",
            f"/api/image/{cid}?v={version}",
        )


def test_query_grammar_and_filters_match_the_library(served: Served) -> None:
    expr = "coffee + cat:0.5 - rocket"
    cases = [
        ({}, Filters()),
        ({"type": "png"}, Filters(types=("png",))),
        (
            {"in": str(served.photos["portrait"].parent)},
            Filters(folder=str(served.photos["portrait"].parent)),
        ),
        ({"min_side": 400}, Filters(min_side=400)),
    ]
    with Index.open(served.index_dir) as idx:
        for params, filters in cases:
            hits = idx.search(expr, 4, filters=filters)
            body = served.client.get("/api/search", params={"q": expr, "k": 4, **params}).json()
            assert [r["path"] for r in body["results"]] == [_shown(h.path) for h in hits], params
            shown = [r["score"] for r in body["results"]]
            np.testing.assert_allclose(shown, [h.score for h in hits], atol=2e-6, err_msg=str(params))
            assert body["results"], params
    pngs = served.client.get("/api/search", params={"q": "cat", "k": 50, "type": "png"}).json()["results"]
    assert pngs and all(r["path"].endswith(".png") for r in pngs)
    future = served.client.get("/api/search", params={"q": "cat", "after": "2999"}).json()
    assert future["count"] == 0 and future["results"] == []


def test_threshold_cutoff_and_sort(served: Served) -> None:
    everything = served.client.get("/api/search", params={"q": "cat", "k": 100}).json()["results"]
    middle = (everything[3]["score"] + everything[4]["score"]) / 2
    kept = served.client.get("/api/search", params={"q": "cat", "k": 100, "threshold": middle}).json()
    assert [r["path"] for r in kept["results"]] == [r["path"] for r in everything[:4]]
    by_date = served.client.get("/api/search", params={"q": "cat", "k": 100, "sort": "date"}).json()
    dates = [r["date"] for r in by_date["results"]]
    assert dates == sorted(dates, reverse=True) and len(dates) == len(everything)
    auto = served.client.get("/api/search", params={"q": "cat", "cutoff": "auto"}).json()
    assert 1 <= auto["count"] <= len(everything)


def test_cutoff_auto_is_capped_by_k_not_moved(served: Served) -> None:
    for endpoint in ("/api/search", f"/api/similar/{served.ids['coffee']}"):
        params = {"q": "a cup of coffee", "cutoff": "auto"}
        widest = [
            r["path"] for r in served.client.get(endpoint, params={**params, "k": 100}).json()["results"]
        ]
        assert 0 < len(widest) < len(served.photos), endpoint
        for k in range(1, len(served.photos) + 1):
            body = served.client.get(endpoint, params={**params, "k": k}).json()
            assert [r["path"] for r in body["results"]] == widest[:k], (endpoint, k)


@pytest.mark.parametrize("expr", ["dog:1e20", "cat + dog:1e400", "cat - 1e39*dog", "dog:-100.5"])
def test_weights_out_of_range_are_a_400(served: Served, expr: str) -> None:
    assert "between -100 and 100" in _error(served.client.get("/api/search", params={"q": expr}), 400)


def test_a_word_after_a_colon_is_text_as_in_the_library(served: Served) -> None:
    with Index.open(served.index_dir) as idx:
        expected = [_shown(h.path) for h in idx.search("dog:inf", 3)]
    body = served.client.get("/api/search", params={"q": "dog:inf", "k": 3}).json()
    assert [r["path"] for r in body["results"]] == expected


def test_more_like_this_is_brute_force_without_the_image_itself(served: Served) -> None:
    paths, matrix, vectors = _stored(served)
    for name, cid in served.ids.items():
        own = paths.index(str(served.photos[name]))
        scores = _best(vectors, matrix[own])
        scores[own] = -np.inf
        order = np.argsort(-scores, kind="stable")[:3]
        body = served.client.get(f"/api/similar/{cid}", params={"k": 3}).json()
        assert [r["path"] for r in body["results"]] == [_shown(paths[i]) for i in order], name
        np.testing.assert_allclose([r["score"] for r in body["results"]], scores[order], atol=1e-5)
        assert cid not in [r["content_id"] for r in body["results"]]


def test_uploaded_image_finds_itself_and_its_near_copy(served: Served) -> None:
    def upload(data: bytes, **params: object) -> dict:
        response = served.client.post(
            "/api/search/image", params={"k": 3, **params}, files={"file": ("q.img", data, "image/png")}
        )
        assert response.status_code == 200, response.text
        return response.json()

    for name in ("coffee", "portrait", "chelsea"):  # JPEG, EXIF-rotated JPEG, PNG: decoded as indexed
        first = upload(served.photos[name].read_bytes())["results"][0]
        assert first["path"] == str(served.photos[name])
        assert first["score"] == pytest.approx(1.0, abs=1e-3)
    tilted = _png(Image.open(served.photos["rocket"]).rotate(3))
    assert upload(tilted)["results"][0]["path"] == str(served.photos["rocket"])
    only_png = upload(served.photos["coffee"].read_bytes(), type="png")["results"]
    assert only_png and all(r["path"].endswith(".png") for r in only_png)


def test_names_that_are_not_utf8_come_with_their_exact_bytes(served: Served) -> None:
    response = served.client.get("/api/search", params={"q": "cat", "k": 100})
    response.content.decode("utf-8")  # strict
    results = response.json()["results"]
    assert len(results) == len(served.photos)
    latin1 = [r for r in results if r["content_id"] == served.ids["latin1"]]
    assert latin1[0]["path"] == _shown(str(served.photos["latin1"])) and "\ufffd" in latin1[0]["path"]
    assert base64.b64decode(latin1[0]["path_bytes"]) == os.fsencode(served.photos["latin1"])
    assert all("path_bytes" not in r for r in results if r is not latin1[0])
    assert all(re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\+00:00", r["date"]) for r in results)
    similar = served.client.get(f"/api/similar/{served.ids['coffee']}", params={"k": 100}).json()["results"]
    assert [r.get("path_bytes") for r in similar if r["content_id"] == served.ids["latin1"]] == [
        latin1[0]["path_bytes"]
    ]
    schema = served.client.get("/openapi.json").json()["components"]["schemas"]["Result"]
    assert "path_bytes" in schema["properties"] and "path_bytes" not in schema["required"]


def test_info_describes_the_index(served: Served) -> None:
    info = served.client.get("/api/info").json()
    assert info["count"] == len(served.photos)
    assert info["roots"] == [str(served.root / "photos")]
    assert info["model"] == "hf-hub:clipsearch-test/tiny-clip" and info["dim"] == 32
    assert info["max_upload_bytes"] == 20 * 1024 * 1024


def test_the_page_and_its_assets_are_local(served: Served) -> None:
    page = served.client.get("/")
    assert page.status_code == 200 and "text/html" in page.headers["content-type"]
    assert "default-src 'self'" in page.headers["content-security-policy"]
    for asset in ("/static/app.js", "/static/style.css", "/static/favicon.svg"):
        assert served.client.get(asset).status_code == 200, asset
        assert asset in page.text
    for text in (page.text, served.client.get("/static/app.js").text):
        assert "http://" not in text and "https://" not in text  # no CDN, no remote anything
    schema = served.client.get("/openapi.json").json()
    assert {"/api/search", "/api/similar/{content_id}", "/api/search/image", "/api/info"} <= set(
        schema["paths"]
    )


# -- files by id ----------------------------------------------------------------------------------


def test_thumbnail_is_upright_cached_on_disk_and_reused(served: Served) -> None:
    cid = served.ids["portrait"]
    response = served.client.get(f"/api/thumb/{cid}")
    assert response.status_code == 200 and response.headers["content-type"] == "image/jpeg"
    thumb = Image.open(io.BytesIO(response.content)).convert("RGB")
    assert thumb.size == (40, 80)  # EXIF orientation 6 applied
    top, bottom = thumb.getpixel((20, 10)), thumb.getpixel((20, 70))
    assert top[0] > 180 and top[2] < 80 and bottom[2] > 150  # the red half is on top
    [cached] = (served.index_dir / "thumbnails").glob("*-256.jpg")
    assert cached.read_bytes() == response.content
    marker = io.BytesIO()
    Image.new("RGB", (4, 4), (0, 0, 255)).save(marker, format="JPEG")
    cached.write_bytes(marker.getvalue())
    assert served.client.get(f"/api/thumb/{cid}").content == marker.getvalue()  # served from the cache
    big = served.client.get(f"/api/thumb/{served.ids['astronaut']}", params={"size": 512})
    assert Image.open(io.BytesIO(big.content)).size == (512, 512)
    assert len(list((served.index_dir / "thumbnails").glob("*-512.jpg"))) == 1
    assert not [p for p in (served.index_dir / "thumbnails").iterdir() if p.name.startswith(".tmp")]
    assert "sizes 256, 512" in _error(served.client.get(f"/api/thumb/{cid}", params={"size": 300}), 400)


def test_thumbnails_are_served_uncached_when_the_cache_cannot_be_written(served: Served) -> None:
    blocker = served.root / "not-a-folder"
    blocker.write_text("a file where the cache folder would be")
    with TestClient(create_app(served.index_dir, thumbnail_dir=blocker / "thumbs"), base_url=LOCAL) as c:
        response = c.get(f"/api/thumb/{served.ids['chelsea']}")
    assert response.status_code == 200
    assert Image.open(io.BytesIO(response.content)).size == (256, 170)


def test_full_size_image_is_the_file_or_a_jpeg_of_it(served: Served) -> None:
    for name, media_type in (("coffee", "image/jpeg"), ("chelsea", "image/png"), ("latin1", "image/png")):
        response = served.client.get(f"/api/image/{served.ids[name]}")
        assert response.status_code == 200, name
        assert response.headers["content-type"] == media_type
        assert response.headers["x-content-type-options"] == "nosniff"
        assert response.content == served.photos[name].read_bytes()
    tiff = served.client.get(f"/api/image/{served.ids['scan']}")  # browsers cannot show TIFF
    assert tiff.headers["content-type"] == "image/jpeg"
    assert Image.open(io.BytesIO(tiff.content)).size == (120, 90)


HOSTILE_IDS = [
    "..%2F..%2Fetc%2Fpasswd",
    "..%252F..%252Fetc%252Fpasswd",
    "%2e%2e%2f%2e%2e%2fetc%2fpasswd",
    "%2Fetc%2Fpasswd",
    "/etc/passwd",
    "../../../../etc/passwd",
    "..%5C..%5Cwindows%5Cwin.ini",
    "%00",
    "1%00",
    "1.jpg",
    "0x1",
    "-1",
    "1e0",
    "%201",
    "%EF%BC%91",  # a fullwidth digit one: int() would accept it
    "99999999999999999999",
    "999999",
    "0",
]


@pytest.mark.parametrize("endpoint", ["thumb", "image", "similar"])
def test_anything_but_an_indexed_id_is_not_found(served: Served, endpoint: str) -> None:
    absolute = quote(str(served.photos["coffee"]), safe="")
    for bad in [*HOSTILE_IDS, absolute, absolute.replace("%2F", "/")]:
        response = served.client.get(f"/api/{endpoint}/{bad}")
        assert response.status_code == 404, (bad, response.status_code)
        assert "error" in response.json() and "root:" not in response.text
    for escape in ("/static/..%2Fserver.py", "/static/%2e%2e/server.py", "/static/../server.py"):
        response = served.client.get(escape)
        assert response.status_code == 404 and "def create_app" not in response.text


@pytest.mark.slow
def test_indexed_symlinks_are_served_and_files_changed_since_are_not(tmp_path: Path, tiny_encoder) -> None:
    """What the index holds is served, wherever a symlink leads; a file replaced since it was indexed
    (here by a symlink to a file elsewhere) is not, and neither is its cached thumbnail."""
    root, outside = tmp_path / "photos", tmp_path / "outside"
    root.mkdir()
    outside.mkdir()
    Image.new("RGB", (50, 50), (200, 0, 0)).save(root / "a.png")
    Image.new("RGB", (50, 50), (0, 200, 0)).save(root / "b.png")
    Image.new("RGB", (60, 40), (0, 0, 200)).save(outside / "secret.png")
    Image.new("RGB", (30, 70), (0, 100, 200)).save(outside / "linked-file.png")
    (root / "linked").symlink_to(outside, target_is_directory=True)  # the scanner follows it
    (root / "file-link.png").symlink_to(outside / "linked-file.png")
    with Index.open_for_write(tmp_path / "index", tiny_encoder) as idx:
        idx.sync([str(root)])
        ids = {p: idx.catalog.file(str(root / p)).content_id for p in ("a.png", "linked/secret.png")}
        ids["file-link.png"] = idx.catalog.file(str(root / "file-link.png")).content_id
    with TestClient(create_app(tmp_path / "index"), base_url=LOCAL) as client:
        for name, cid in ids.items():
            assert client.get(f"/api/thumb/{cid}").status_code == 200, name  # now cached
            image = client.get(f"/api/image/{cid}")
            assert image.status_code == 200, name
            assert image.content == (root / name).read_bytes()
        (root / "a.png").unlink()
        (root / "a.png").symlink_to(outside / "secret.png")
        for url in (f"/api/thumb/{ids['a.png']}", f"/api/image/{ids['a.png']}"):
            assert "as it was indexed" in _error(client.get(url), 404)
        assert client.get(f"/api/thumb/{ids['a.png']}", params={"size": 512}).status_code == 404


def test_unplugged_files_are_marked_and_can_be_left_out(tmp_path: Path, tiny_encoder) -> None:
    here, drive = tmp_path / "here", tmp_path / "drive"
    write_photos(here)
    for i in range(4):
        drive.mkdir(exist_ok=True)
        Image.new("RGB", (40 + i, 40), (60 * i, 90, 30)).save(drive / f"d{i}.png")
    with Index.open_for_write(tmp_path / "index", tiny_encoder) as idx:
        idx.sync([str(here), str(drive)])
    drive.rename(tmp_path / "unplugged")
    with TestClient(create_app(tmp_path / "index"), base_url=LOCAL) as client:
        results = client.get("/api/search", params={"q": "cat", "k": 100}).json()["results"]
        assert len(results) == 10
        gone = {r["path"] for r in results if not r["available"]}
        assert gone == {str(drive / f"d{i}.png") for i in range(4)}
        for k in (3, 6, 100):
            kept = client.get("/api/search", params={"q": "cat", "k": k, "available": "true"}).json()[
                "results"
            ]
            assert [r["path"] for r in kept] == [r["path"] for r in results if r["available"]][:k]
        cid = next(r["content_id"] for r in results if r["available"])
        similar = client.get(f"/api/similar/{cid}", params={"k": 5, "available": True}).json()["results"]
        assert len(similar) == 5 and all(r["available"] for r in similar)


# -- bad requests ---------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("expr", "position", "problem"),
    [("dog + + cat", 5, "expected a term"), ('dog - "unclosed', 7, "never closed"), ("", 1, "empty")],
)
def test_malformed_query_is_a_400_pointing_at_the_problem(
    served: Served, expr: str, position: int, problem: str
) -> None:
    response = served.client.get("/api/search", params={"q": expr})
    message = _error(response, 400)
    assert f"position {position}:" in message and problem in message
    assert f"\n  {expr}\n  {' ' * (position - 1)}^" in message
    assert response.json()["position"] == position


@pytest.mark.parametrize(
    "expr", ["/etc/passwd", "./holiday.jpg", '"../x.png" + beach', "cat - ~/.ssh/id_rsa"]
)
def test_image_paths_in_a_web_query_are_refused(served: Served, expr: str) -> None:
    assert "not accepted" in _error(served.client.get("/api/search", params={"q": expr}), 400)


@pytest.mark.parametrize(
    ("params", "status", "words"),
    [
        ({"k": 0}, 422, "k:"),
        ({"k": -5}, 422, "k:"),
        ({"k": 10**30}, 422, "k:"),
        ({"k": "ten"}, 422, "k:"),
        ({"min_side": 10**30}, 422, "min_side:"),
        ({"threshold": 2}, 400, "between -1 and 1"),
        ({"threshold": "nan"}, 400, "between -1 and 1"),
        ({"cutoff": "sometimes"}, 400, "choose auto or break"),
        ({"sort": "size"}, 400, "score or date"),
        ({"after": "yesterday"}, 400, "not a date"),
        ({"before": "2019-13"}, 400, "not a date"),
        ({"in": "relative/folder"}, 400, "absolute folder"),
        ({"in": "/somewhere/else"}, 400, "not inside an indexed folder"),
        ({"type": "foo"}, 400, "unknown file type foo; known: "),
        ({"type": "jpg,pgn"}, 400, "unknown file type pgn"),
    ],
)
def test_bad_parameters_are_4xx_json(served: Served, params: dict, status: int, words: str) -> None:
    assert words in _error(served.client.get("/api/search", params={"q": "cat", **params}), status)


def test_type_aliases_and_a_folder_typo(served: Served) -> None:
    jpegs = sorted(_shown(str(p)) for p in served.photos.values() if p.suffix == ".jpg")
    for types in ("jpeg", "JPG", "jpe,jpeg"):
        body = served.client.get("/api/search", params={"q": "cat", "k": 100, "type": types}).json()
        assert sorted(r["path"] for r in body["results"]) == jpegs, types
    typo = str(served.root / "photos" / "extr")
    assert "no such folder" in _error(served.client.get("/api/search", params={"q": "cat", "in": typo}), 400)


def test_missing_query_and_unknown_routes_are_json_errors(served: Served) -> None:
    assert "q:" in _error(served.client.get("/api/search"), 422)
    _error(served.client.get("/api/nothing-here"), 404)
    _error(served.client.post("/api/info"), 405)


@pytest.fixture(scope="module")
def bomb() -> bytes:
    """A small PNG whose pixels would take 56 MP once decoded: above the 50 MP upload limit."""
    return _png(Image.new("L", (8000, 7000)))


def _forged_png(width: int, height: int) -> bytes:
    """A 1x1 PNG whose header claims ``width`` x ``height`` (valid CRC, so only the size is a lie)."""
    data = bytearray(_png(Image.new("L", (1, 1))))
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def test_bad_uploads_are_4xx_json(served: Served, bomb: bytes) -> None:
    def upload(data: bytes, field: str = "file") -> object:
        return served.client.post("/api/search/image", files={field: ("x.png", data, "image/png")})

    assert _forged_png(3, 2)[:16] == _png(Image.new("L", (1, 1)))[:16]
    for data, reason in [
        (b"", "empty"),
        (b"hello, I am not an image", "not-an-image"),
        (served.photos["coffee"].read_bytes()[:2000], "corrupt"),
        (bomb, "too-large"),
        (_forged_png(20000, 20000), "too-large"),
    ]:
        response = upload(data)
        _error(response, 422)
        assert response.json()["reason"] == reason
    assert "'file'" in _error(upload(served.photos["coffee"].read_bytes(), field="image"), 400)
    raw = served.client.post("/api/search/image", content=b"\x89PNG", headers={"content-type": "image/png"})
    assert "multipart" in _error(raw, 415)
    garbage = served.client.post(
        "/api/search/image",
        content=b"--xyz\r\nnot a header line\r\n\r\n",
        headers={"content-type": "multipart/form-data; boundary=xyz"},
    )
    assert garbage.status_code in (400, 422)


def test_upload_size_limit_is_413(served: Served) -> None:
    small = _png(Image.open(served.photos["chelsea"]).resize((40, 30)))
    with TestClient(create_app(served.index_dir, max_upload_bytes=len(small) + 100), base_url=LOCAL) as c:
        assert c.post("/api/search/image", files={"file": ("s.png", small)}).status_code == 200
        too_big = small + b"\0" * 200
        assert "larger than the limit" in _error(
            c.post("/api/search/image", files={"file": ("b.png", too_big)}), 413
        )
        flood = c.post("/api/search/image", files={"file": ("f.png", os.urandom(300_000))})
        _error(flood, 413)
    over_default = served.client.post("/api/search/image", files={"file": ("h.png", bytes(21 * 1024 * 1024))})
    _error(over_default, 413)


SECURITY_HEADERS = ("x-content-type-options", "referrer-policy", "cross-origin-resource-policy")


def test_other_host_names_are_refused(served: Served) -> None:
    for host in ("evil.example", "[", "[::1", "[::1]x", "127.0.0.1:bad", "[fe80::1%eth0", "a:1:2"):
        response = served.client.get("/api/info", headers={"host": host})
        assert "Host" in _error(response, 400), host
        assert all(name in response.headers for name in SECURITY_HEADERS), host
        assert "default-src 'self'" in response.headers["content-security-policy"]
    for base in ("http://localhost:8000", "http://127.0.0.1:9999", "http://[::1]:8000"):
        assert TestClient(served.app, base_url=base).get("/api/info").status_code == 200, base
    with TestClient(create_app(served.index_dir, allowed_hosts=None), base_url="http://my-nas.lan") as c:
        assert c.get("/api/info").status_code == 200


def test_fuzzed_requests_never_get_a_server_error(served: Served) -> None:
    """200 seeded random and hostile requests to every endpoint: each one answers below 500."""
    rng = random.Random(20240611)
    pieces = [
        "..", "/", "%2F", "%00", "\\", "~", "+", " - ", ":", "*", '"', "'", "0", "-1", "1e309", "nan",
        "9" * 40, "é", "日本", "🙂", "\u202e", "\u0301", "\t", "<script>", "%", "?", "#", "&", "=", ";",
        "/etc/passwd", "./x.jpg", "C:\\Windows", str(served.photos["coffee"]), str(served.ids["coffee"]),
    ]  # fmt: skip

    def text() -> str:
        return "".join(rng.choice(pieces) if rng.random() < 0.6 else chr(rng.randint(32, 0x2FFF))
                       for _ in range(rng.randint(0, 8)))  # fmt: skip

    def params() -> dict[str, str]:
        names = ["k", "in", "after", "before", "type", "min_side", "threshold", "cutoff", "sort", "size"]
        return {name: text() for name in rng.sample(names, rng.randint(0, 4))}

    statuses = []
    for i in range(200):
        kind = i % 5
        if kind == 0:
            response = served.client.get("/api/search", params={"q": text(), **params()})
        elif kind in (1, 2, 3):
            endpoint = ("similar", "thumb", "image")[kind - 1]
            raw = text() if rng.random() < 0.7 else str(rng.randint(-(10**20), 10 ** rng.randint(0, 40)))
            segment = (
                quote(raw, safe="") if rng.random() < 0.8 else "".join(c for c in raw if c.isprintable())
            )
            segment = segment.replace("#", "").replace("?", "")
            response = served.client.get(f"/api/{endpoint}/{segment or '_'}", params=params())
        else:
            data = os.urandom(rng.randint(0, 3000))
            if rng.random() < 0.5:
                data = (
                    b"\x89PNG\r\n\x1a\n" + data
                    if rng.random() < 0.5
                    else _forged_png(rng.randint(0, 2**31), 7)
                )
            response = served.client.post("/api/search/image", params=params(), files={"file": ("f", data)})
        assert response.status_code < 500, (i, response.request.url, response.text)
        if response.status_code >= 400:
            assert response.json()["error"]
        statuses.append(response.status_code)
    assert {200, 400, 404, 422} <= set(statuses)  # the fuzz reached past validation, too


# -- running the server ---------------------------------------------------------------------------


@pytest.mark.parametrize("host", ["127.0.0.1", "localhost", "::1", "[::1]", "127.0.0.2"])
def test_loopback_hosts_are_local(host: str) -> None:
    assert is_local_host(host)


@pytest.mark.parametrize("host", ["0.0.0.0", "::", "192.168.1.5", "my-nas.lan", ""])
def test_other_hosts_are_not_local(host: str) -> None:
    assert not is_local_host(host)


def test_a_port_in_use_is_a_usage_error(tmp_path: Path) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        with pytest.raises(UsageError, match="choose another port") as caught:
            bind("127.0.0.1", taken.getsockname()[1])
        assert caught.value.name == "port"  # the CLI names it --port
    with pytest.raises(IndexNotFoundError):
        serve(tmp_path / "nothing-here", port=0)


def _start_serving(
    index_dir: Path, host: str, *, cli: bool = False
) -> tuple[subprocess.Popen[str], str, list[str]]:
    code = f"import sys; from clipsearch.web.server import serve; serve(sys.argv[1], {host!r}, 0)"
    if cli:  # the console script's path: main() -> typer -> serve
        code = (
            "import sys; from clipsearch.cli import main; "
            f"sys.argv = ['clipsearch', 'serve', '--index', sys.argv[1], '--host', {host!r}, '--port', '0']; "
            "main()"
        )
    proc = subprocess.Popen([sys.executable, "-c", code, str(index_dir)], stderr=subprocess.PIPE, text=True)
    watchdog = threading.Timer(90, proc.kill)  # never hang the suite
    watchdog.daemon = True
    watchdog.start()
    lines: list[str] = []
    while not lines or not lines[-1].startswith("Serving "):
        line = proc.stderr.readline()
        assert line, f"serve() exited early:\n{''.join(lines)}"
        lines.append(line)
    return proc, lines[-1].split(" at ")[1].split()[0], lines


def _stop(proc: subprocess.Popen[str], sig: int = signal.SIGINT) -> tuple[int, str]:
    proc.send_signal(sig)
    _, rest = proc.communicate(timeout=30)
    return proc.returncode, rest


@pytest.mark.slow
def test_serve_answers_on_loopback_and_stops_cleanly_on_ctrl_c(served: Served) -> None:
    local, url, lines = _start_serving(served.index_dir, "127.0.0.1")
    shared, shared_url, shared_lines = _start_serving(served.index_dir, "0.0.0.0")
    try:
        assert url.startswith("http://127.0.0.1:") and not any("Warning" in line for line in lines)
        with urllib.request.urlopen(url + "api/search?q=cat&k=2", timeout=30) as response:
            assert response.status == 200 and b'"count":2' in response.read()
        assert any("Warning: listening on 0.0.0.0" in line for line in shared_lines)
        port = shared_url.rsplit(":", 1)[1].strip("/")
        request = urllib.request.Request(f"http://127.0.0.1:{port}/api/info", headers={"Host": "my-nas.lan"})
        with urllib.request.urlopen(request, timeout=30) as response:
            assert response.status == 200  # shared on purpose: any host name is answered
    finally:
        code, rest = _stop(local)
        assert code == 0 and f"Stopped serving {served.index_dir}." in rest, rest
        assert _stop(shared)[0] == 0


def _has_torch(pid: int) -> bool:
    return "libtorch" in Path(f"/proc/{pid}/maps").read_text()


@pytest.mark.slow
@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="reads /proc/PID/maps")
def test_serve_answers_text_without_torch_and_loads_the_image_tower_at_the_first_image_query(
    served: Served,
) -> None:
    proc, url, lines = _start_serving(served.index_dir, "127.0.0.1", cli=True)
    try:
        assert any("Text queries use the exported text encoder" in line for line in lines), lines
        with urllib.request.urlopen(url + "api/search?q=cat&k=3", timeout=30) as response:
            text_hits = json.loads(response.read())["results"]
        assert len(text_hits) == 3 and not _has_torch(proc.pid)  # about 0.75 GB not in the server
        body, boundary = _multipart(served.photos["coffee"].read_bytes(), "coffee.jpg")
        request = urllib.request.Request(
            url + "api/search/image?k=1",
            data=body,
            headers={"Content-Type": f"multipart/form-data; boundary={boundary}"},
        )
        with urllib.request.urlopen(request, timeout=60) as response:
            image_hits = json.loads(response.read())["results"]
        assert image_hits[0]["path"] == str(served.photos["coffee"]) and _has_torch(proc.pid)
        with urllib.request.urlopen(url + "api/search?q=cat&k=3", timeout=30) as response:
            assert json.loads(response.read())["results"] == text_hits  # the same encoder still
    finally:
        assert _stop(proc)[0] == 0


def _multipart(data: bytes, name: str) -> tuple[bytes, str]:
    boundary = "clipsearch-test-boundary"
    head = (
        f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="{name}"\r\n'
        "Content-Type: application/octet-stream\r\n\r\n"
    )
    return head.encode() + data + f"\r\n--{boundary}--\r\n".encode(), boundary


@pytest.mark.slow  # two server processes, 4 s each
@pytest.mark.parametrize("cli", [False, True])
def test_serve_stops_cleanly_on_sigterm(served: Served, cli: bool) -> None:
    proc, url, _ = _start_serving(served.index_dir, "127.0.0.1", cli=cli)
    with urllib.request.urlopen(url + "api/info", timeout=30) as response:
        assert response.status == 200
    code, rest = _stop(proc, signal.SIGTERM)
    assert code == 0, rest
    assert rest.rstrip().endswith(f"Stopped serving {served.index_dir}.") and "Traceback" not in rest


def _build(index_dir: Path, folder: Path, encoder) -> dict[str, int]:  # type: ignore[no-untyped-def]
    with Index.open_for_write(index_dir, encoder) as idx:
        idx.sync([str(folder)])
        return {p.name: idx.catalog.file(str(p)).content_id for p in sorted(folder.iterdir())}


def test_a_rebuilt_index_is_reopened_and_ids_of_the_old_one_are_refused(tmp_path: Path, tiny_encoder) -> None:
    """The catalog replaced under a running app by a freshly built index (as a rebuild swaps it in):
    answers come from the new index, and ids the page got from the old one are not taken for others."""
    old_photos, new_photos = tmp_path / "old", tmp_path / "new"
    write_photos(old_photos)
    new_photos.mkdir()
    for i in range(3):
        Image.new("RGB", (30 + i, 30), (80 * i, 200, 40)).save(new_photos / f"n{i}.png")
    old_ids = _build(tmp_path / "index", old_photos, tiny_encoder)
    new_ids = _build(tmp_path / "fresh", new_photos, tiny_encoder)
    assert set(old_ids.values()) & set(new_ids.values())  # the same ids name other pictures
    with TestClient(create_app(tmp_path / "index"), base_url=LOCAL) as client:
        before = client.get("/api/search", params={"q": "cat", "k": 100}).json()
        assert before["count"] == len(old_ids)
        version = before["index_version"]
        assert client.get("/api/info").json()["index_version"] == version
        stale = before["results"][0]
        assert client.get(stale["thumb"]).status_code == 200
        copy_vector_files(tmp_path / "fresh", tmp_path / "index")
        os.replace(tmp_path / "fresh" / "catalog.sqlite", tmp_path / "index" / "catalog.sqlite")

        after = client.get("/api/search", params={"q": "cat", "k": 100}).json()
        assert sorted(Path(r["path"]).name for r in after["results"]) == sorted(new_ids)
        assert after["index_version"] != version
        info = client.get("/api/info").json()
        assert (info["count"], info["roots"], info["index_version"]) == (
            3,
            [str(new_photos)],
            after["index_version"],
        )
        for url in (stale["thumb"], stale["image"], f"/api/similar/{stale['content_id']}?v={version}"):
            assert "rebuilt" in _error(client.get(url), 409), url
        fresh = after["results"][0]
        assert client.get(fresh["thumb"]).status_code == 200
        assert client.get(fresh["image"]).content == Path(fresh["path"]).read_bytes()
        similar = client.get(f"/api/similar/{fresh['content_id']}", params={"v": after["index_version"]})
        assert similar.status_code == 200 and similar.json()["count"] == 2


def test_a_rebuild_swapped_in_changes_the_index_version(tmp_path: Path, photos, tiny_encoder) -> None:
    """`clipsearch index --rebuild` replaces the index inside its catalog file (same file, new rows):
    the server answers from the new index, under a new index_version, and refuses the old one's."""
    from clipsearch.ingest.sync import SyncOptions

    _build(tmp_path / "index", photos["coffee"].parent, tiny_encoder)
    with TestClient(create_app(tmp_path / "index"), base_url=LOCAL) as client:
        before = client.get("/api/search", params={"q": "cat", "k": 3}).json()
        with Index.open_for_write(tmp_path / "index", tiny_encoder, rebuild=True) as writer:
            writer.sync(options=SyncOptions(export_text=False))
        after = client.get("/api/search", params={"q": "cat", "k": 3}).json()
        assert after["index_version"] != before["index_version"]
        assert {r["content_id"] for r in after["results"]}.isdisjoint(
            r["content_id"] for r in before["results"]
        )
        stale = before["results"][0]
        assert "rebuilt" in _error(client.get(stale["thumb"]), 409)
        assert client.get(after["results"][0]["thumb"]).status_code == 200


def test_an_index_folder_removed_under_the_app_is_a_503(tmp_path: Path, photos, tiny_encoder) -> None:
    ids = _build(tmp_path / "index", photos["coffee"].parent, tiny_encoder)
    with TestClient(create_app(tmp_path / "index"), base_url=LOCAL) as client:
        assert client.get("/api/info").status_code == 200
        shutil.rmtree(tmp_path / "index")
        cid = next(iter(ids.values()))
        for url in (
            "/api/info",
            "/api/search?q=cat",
            f"/api/thumb/{cid}",
            f"/api/image/{cid}",
            f"/api/similar/{cid}",
        ):
            assert "removed" in _error(client.get(url), 503), url


@pytest.mark.slow
def test_a_sync_while_serving_shows_up_without_a_restart(tmp_path: Path, photos, tiny_encoder) -> None:
    folder = photos["coffee"].parent
    moved = tmp_path / "later.png"
    photos["coins"].rename(moved)
    with Index.open_for_write(tmp_path / "index", tiny_encoder) as idx:
        idx.sync([str(folder)])
        rocket_id = idx.catalog.file(str(photos["rocket"])).content_id
    with TestClient(create_app(tmp_path / "index"), base_url=LOCAL) as client:
        assert client.get("/api/info").json()["count"] == len(photos) - 1
        assert client.get(f"/api/thumb/{rocket_id}").status_code == 200
        moved.rename(photos["coins"])
        photos["rocket"].unlink()
        with Index.open_for_write(tmp_path / "index", tiny_encoder) as idx:
            idx.sync()
            coins_id = idx.catalog.file(str(photos["coins"])).content_id
        assert client.get("/api/info").json()["count"] == len(photos) - 1
        paths = {
            r["path"] for r in client.get("/api/search", params={"q": "coins", "k": 50}).json()["results"]
        }
        assert str(photos["coins"]) in paths and str(photos["rocket"]) not in paths
        assert client.get(f"/api/thumb/{coins_id}").status_code == 200
        for gone in (f"/api/thumb/{rocket_id}", f"/api/image/{rocket_id}", f"/api/similar/{rocket_id}"):
            _error(client.get(gone), 404)


def test_a_jpeg_over_pillows_pixel_limit_is_served_thumbnailed_and_searchable(
    tmp_path: Path, tiny_encoder
) -> None:
    """182 MP: over the limit at which Pillow's Image.open refuses, which must not decide for us."""
    root = tmp_path / "photos"
    root.mkdir()
    Image.new("RGB", (14000, 13000), (40, 90, 160)).save(root / "huge.jpg", quality=80)
    Image.new("RGB", (50, 50), (200, 0, 0)).save(root / "small.png")
    with Index.open_for_write(tmp_path / "index", tiny_encoder) as idx:
        assert idx.sync([str(root)]).added == 2
        huge = idx.catalog.file(str(root / "huge.jpg")).content_id
    with TestClient(create_app(tmp_path / "index"), base_url=LOCAL) as client:
        full = client.get(f"/api/image/{huge}")
        assert full.status_code == 200 and full.headers["content-type"] == "image/jpeg"
        assert full.content == (root / "huge.jpg").read_bytes()  # the file itself: browsers show JPEGs
        thumb = client.get(f"/api/thumb/{huge}")
        assert thumb.status_code == 200 and Image.open(io.BytesIO(thumb.content)).size == (256, 238)
        data = (root / "huge.jpg").read_bytes()
        found = client.post("/api/search/image", files={"file": ("h.jpg", data, "image/jpeg")})
        assert found.status_code == 200, found.text
        assert found.json()["results"][0]["content_id"] == huge


UPLOADS_SCRIPT = """
import sys, threading
from pathlib import Path
from fastapi.testclient import TestClient
from clipsearch.web.server import create_app

def peak():
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) * 1024 for line in status if line.startswith("VmHWM:"))

index, upload = Path(sys.argv[1]), Path(sys.argv[2]).read_bytes()
small = (Path(sys.argv[1]).parent / "photos" / "small.png").read_bytes()
with TestClient(create_app(index), base_url="http://127.0.0.1") as client:
    assert client.post("/api/search/image", files={"file": ("s.png", small)}).status_code == 200  # model in
    before, codes = peak(), []
    files = {"file": ("g.png", upload)}
    post = lambda: codes.append(client.post("/api/search/image", files=files).status_code)
    threads = [threading.Thread(target=post) for _ in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    print(*codes, peak() - before)
"""


@pytest.mark.slow  # 8-23 s: the fast tier leaves it to the full suite
def test_concurrent_uploads_are_decoded_within_the_indexing_memory_bound(
    tmp_path: Path, tiny_encoder
) -> None:
    """Three 16-MP 16-bit greyscale PNGs (300 KB each) uploaded at once: each decode within 12 bytes
    a pixel, as indexing's (see test_images). Before: 1.14 GB, a float64 copy each (26 bytes a pixel)."""
    (tmp_path / "photos").mkdir()
    Image.new("RGB", (50, 50), (200, 0, 0)).save(tmp_path / "photos" / "small.png")
    with Index.open_for_write(tmp_path / "index", tiny_encoder) as idx:
        idx.sync([str(tmp_path / "photos")])
    ramp = np.arange(4000, dtype=np.uint32)[None, :] * 9 + np.arange(4000, dtype=np.uint32)[:, None] * 3
    Image.fromarray((ramp % 65536).astype(np.uint16)).save(tmp_path / "grey16.png")  # 16 MP, ~300 KB
    script = [sys.executable, "-c", UPLOADS_SCRIPT, str(tmp_path / "index"), str(tmp_path / "grey16.png")]
    out = subprocess.run(script, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    *codes, grown = out.stdout.split()
    assert codes == ["200"] * 3
    assert int(grown) <= 3 * 12 * 4000 * 4000  # measured: 269 MB with 2 decoding slots


def test_decoding_waits_for_a_free_slot(served: Served) -> None:
    """However many uploads arrive, at most ``decode_slots`` images are decoded (and held) at once."""
    app = create_app(served.index_dir, decode_slots=1)
    data = _png(Image.open(served.photos["chelsea"]))
    codes: list[int] = []
    with TestClient(app, base_url=LOCAL) as client:
        slots = app.state.clipsearch.decode_slots
        slots.acquire()  # the one slot is busy
        upload = threading.Thread(
            target=lambda: codes.append(
                client.post("/api/search/image", files={"file": ("c.png", data)}).status_code
            )
        )
        upload.start()
        upload.join(timeout=1.5)
        waited = upload.is_alive()
        slots.release()
        upload.join(timeout=30)
    assert waited and codes == [200]
