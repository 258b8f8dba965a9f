"""The search page in a real browser (Debian's chromium driven by Playwright) against a live server.

Skipped when chromium or Playwright is missing, unless CLIPSEARCH_REQUIRE_BROWSER is set (CI sets it,
so there a missing browser fails). CLIPSEARCH_SCREENSHOT=path also saves the results page there
(that is how docs/serve.png is made).
"""

from __future__ import annotations

import os
import re
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from fastapi import FastAPI

from clipsearch.api import Index
from clipsearch.web.server import bind, create_app

pytestmark = pytest.mark.slow  # starts chromium and a live server
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _require_browser() -> None:
    problems = []
    if not CHROMIUM.is_file():
        problems.append(f"{CHROMIUM} is missing (apt-get install -y chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("Playwright is missing (pip install playwright)")
    if problems:
        message = "; ".join(problems)
        if os.environ.get("CLIPSEARCH_REQUIRE_BROWSER"):
            pytest.fail(f"CLIPSEARCH_REQUIRE_BROWSER is set but {message}")
        pytest.skip(message)


@contextmanager
def running(app: FastAPI) -> Iterator[str]:
    """Serve ``app`` with uvicorn on a free loopback port in a background thread; yield its URL."""
    import uvicorn

    sock = bind("127.0.0.1", 0)
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        assert thread.is_alive() and time.monotonic() < deadline, "the server did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/"
    finally:
        server.should_exit = True
        thread.join(timeout=15)
        sock.close()


def test_search_page_in_a_real_browser(tmp_path: Path, photos: dict[str, Path], tiny_encoder) -> None:
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    index_dir = tmp_path / "index"
    with Index.open_for_write(index_dir, tiny_encoder) as idx:
        idx.sync([str(photos["coffee"].parent)])
        ids = {name: idx.catalog.file(str(path)).content_id for name, path in photos.items()}
        expected = [h.content_id for h in idx.search("a cup of coffee", 30)]
    app = create_app(index_dir)

    with running(app) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        problems: list[str] = []  # console errors include CSP violations: everything must be local
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.on("requestfailed", lambda req: problems.append(f"{req.url} failed"))
        page.goto(url)
        expect(page.locator("#footer")).to_contain_text(f"{len(photos)} images indexed")

        # a text query: the cards come in the library's order, with their thumbnails loaded
        page.fill("#q", "a cup of coffee")
        page.press("#q", "Enter")
        cards = page.locator("#grid .card")
        expect(cards).to_have_count(len(photos))
        assert [int(c) for c in cards.evaluate_all("cs => cs.map(c => c.dataset.contentId)")] == expected
        page.wait_for_function(
            "() => [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"
        )
        expect(page.locator("#status")).to_contain_text(f"{len(photos)} results")
        assert "q=a+cup+of+coffee" in page.url
        if os.environ.get("CLIPSEARCH_SCREENSHOT"):
            page.screenshot(path=os.environ["CLIPSEARCH_SCREENSHOT"])

        # the full-size view shows the original file and its facts; Escape closes it
        first = cards.first
        first_id = int(first.get_attribute("data-content-id"))
        first.locator(".thumb").click()
        viewer = page.locator("#viewer")
        expect(viewer).to_be_visible()
        path = next(str(p) for name, p in photos.items() if ids[name] == first_id)
        expect(page.locator("#viewer-path")).to_have_text(path)
        page.wait_for_function("() => document.getElementById('viewer-img').naturalWidth > 0")
        width = page.evaluate("() => document.getElementById('viewer-img').naturalWidth")
        with Index.open(index_dir) as idx:
            hit = next(h for h in idx.search("a cup of coffee", 30) if h.content_id == first_id)
        assert width == hit.width
        expect(page.locator("#viewer-meta")).to_contain_text(f"{hit.width} × {hit.height}")
        page.screenshot(path=str(tmp_path / "viewer.png"))
        page.keyboard.press("Escape")
        expect(viewer).to_be_hidden()

        # "more like this" on the cat: every other photo, the cat itself left out
        cat = page.locator(f'#grid .card[data-content-id="{ids["chelsea"]}"]')
        cat.locator(".more").click()
        expect(page.locator("#context")).to_contain_text("More like")
        expect(cards).to_have_count(len(photos) - 1)
        shown = {int(c) for c in cards.evaluate_all("cs => cs.map(c => c.dataset.contentId)")}
        assert shown == set(ids.values()) - {ids["chelsea"]}
        assert f"similar={ids['chelsea']}" in page.url

        # an image from the file picker: the same photo, indexed, comes first
        page.set_input_files("#file", str(photos["rocket"]))
        expect(page.locator("#context")).to_contain_text("uploaded image")
        expect(cards.first).to_have_attribute("data-content-id", str(ids["rocket"]))
        expect(cards.first.locator(".score")).to_have_text("1.000")

        # dropping an image file on the page does the same
        page.evaluate(
            """async (id) => {
                const blob = await (await fetch(`/api/image/${id}`)).blob();
                const data = new DataTransfer();
                data.items.add(new File([blob], "dropped.jpg", {type: blob.type}));
                const init = {dataTransfer: data, bubbles: true, cancelable: true};
                window.dispatchEvent(new DragEvent("drop", init));
            }""",
            ids["coffee"],
        )
        expect(page.locator("#context")).to_contain_text("dropped.jpg")
        expect(cards.first).to_have_attribute("data-content-id", str(ids["coffee"]))

        # filters narrow the results; a malformed query shows where it is wrong
        page.click("#toggle-filters")
        page.fill("#filters input[name=type]", "png")
        page.fill("#q", "a cup of coffee")
        page.press("#q", "Enter")
        expect(cards).to_have_count(sum(p.suffix == ".png" for p in photos.values()))
        names = cards.locator(".name").all_inner_texts()
        assert all(name.endswith(".png") for name in names), names
        assert not problems, problems
        page.fill("#q", "dog + + cat")
        page.press("#q", "Enter")
        expect(page.locator("#error")).to_contain_text("position 5")
        expect(cards).to_have_count(0)
        assert [p for p in problems if "status of 400" not in p] == []  # the browser logs the 400

        page.screenshot(path=str(tmp_path / "page.png"))
        browser.close()
    assert (tmp_path / "viewer.png").stat().st_size > 0


def test_page_marks_files_not_on_disk_and_follows_a_rebuild(
    tmp_path: Path, photos: dict[str, Path], tiny_encoder
) -> None:
    """Grey tiles for an unplugged drive, "On disk only", and a rebuild swapped in under the open page:
    no picture of the old index is shown for an id of the new one."""
    _require_browser()
    import shutil

    from PIL import Image
    from playwright.sync_api import expect, sync_playwright

    drive, fresh = tmp_path / "drive", tmp_path / "fresh-photos"
    drive.mkdir()
    fresh.mkdir()
    for i in range(2):
        Image.new("RGB", (60, 50 + i), (40, 90 * i, 200)).save(drive / f"away{i}.png")
    for i in range(3):
        Image.new("RGB", (50 + i, 40), (220, 60 * i, 30)).save(fresh / f"new{i}.png")
    index_dir = tmp_path / "index"
    with Index.open_for_write(index_dir, tiny_encoder) as idx:
        idx.sync([str(photos["coffee"].parent), str(drive)])
    with Index.open_for_write(tmp_path / "rebuilt", tiny_encoder) as idx:
        idx.sync([str(fresh)])
    drive.rename(tmp_path / "unplugged")

    with running(create_app(index_dir)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        page.goto(url)
        page.fill("#q", "a cup of coffee")
        page.press("#q", "Enter")
        cards = page.locator("#grid .card")
        expect(cards).to_have_count(len(photos) + 2)
        expect(page.locator("#grid .card.unavailable")).to_have_count(2)
        expect(page.locator("#grid .card.unavailable .away").first).to_have_text("not on disk")

        page.click("#toggle-filters")
        page.check("#filters input[name=available]")
        expect(cards).to_have_count(len(photos))
        expect(page.locator("#grid .card.unavailable")).to_have_count(0)
        assert "available=true" in page.url
        page.reload()
        expect(page.locator("#filters input[name=available]")).to_be_checked()
        expect(cards).to_have_count(len(photos))
        page.wait_for_function(
            "() => [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"
        )

        # a rebuild swaps a new catalog in: ids the page holds now name other pictures
        for vectors in (tmp_path / "rebuilt").glob("vectors-*.faiss"):
            shutil.copy(vectors, index_dir / vectors.name)
        os.replace(tmp_path / "rebuilt" / "catalog.sqlite", index_dir / "catalog.sqlite")
        cards.first.locator(".more").click()  # "more like this" of an old id: refused, not answered
        expect(page.locator("#error")).to_contain_text("rebuilt")
        expect(cards).to_have_count(0)
        page.click("#context-clear")
        page.fill("#q", "a cup of coffee")
        page.press("#q", "Enter")
        expect(cards).to_have_count(3)
        names = cards.locator(".name").all_inner_texts()
        assert sorted(names) == ["new0.png", "new1.png", "new2.png"]

        # a picture of results shown before a rebuild fails to load: the page searches again
        for vectors in (tmp_path / "index").glob("vectors-*.faiss"):
            vectors.unlink()
        with Index.open_for_write(tmp_path / "again", tiny_encoder) as idx:
            idx.sync([str(photos["coffee"].parent)])
        for vectors in (tmp_path / "again").glob("vectors-*.faiss"):
            shutil.copy(vectors, index_dir / vectors.name)
        os.replace(tmp_path / "again" / "catalog.sqlite", index_dir / "catalog.sqlite")
        cards.first.locator(".thumb").click()  # the viewer asks for an image by an id of the old index
        expect(cards).to_have_count(len(photos))
        expect(page.locator("#viewer")).to_be_hidden()
        assert all(
            name in {p.name for p in photos.values()} for name in cards.locator(".name").all_inner_texts()
        )
        browser.close()


ALL_LOADED = "() => [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"


def _grid_rows(page) -> tuple[float, list[list[dict[str, float]]]]:  # type: ignore[no-untyped-def]
    """The grid's width, and its tiles grouped by row: each tile's box, its picture's box, and the
    aspect ratio the tile was given."""
    data = page.evaluate(
        """() => {
            const grid = document.getElementById('grid');
            const tiles = [...grid.querySelectorAll('.card')].map((card) => {
                const box = card.getBoundingClientRect();
                const img = card.querySelector('img').getBoundingClientRect();
                const ar = parseFloat(card.style.getPropertyValue('--ar'));
                return {x: box.x, y: box.y, w: box.width, h: box.height, iw: img.width, ih: img.height, ar};
            });
            return {width: grid.getBoundingClientRect().width, tiles};
        }"""
    )
    rows: list[list[dict[str, float]]] = []
    for tile in data["tiles"]:
        if rows and abs(rows[-1][0]["y"] - tile["y"]) < 1:
            rows[-1].append(tile)
        else:
            rows.append([tile])
    return data["width"], rows


def test_results_are_justified_rows_at_two_window_sizes(tmp_path: Path, tiny_encoder) -> None:
    """Each photo keeps its shape: every tile of a row has the row's height and its picture's aspect
    ratio, its picture fills it (no white gap under a wide photo), and every row but the last spans
    the grid's width. Checked, with screenshots, on a wide and on a phone-sized window."""
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    from clipsearch.shapes.world import write_dataset

    records = write_dataset(tmp_path / "photos", 36, seed=21)  # sizes and aspect ratios up to 2:1
    index_dir = tmp_path / "index"
    with Index.open_for_write(index_dir, tiny_encoder) as idx:
        idx.sync([str(tmp_path / "photos")])
    shots = Path(os.environ.get("CLIPSEARCH_GRID_SCREENSHOTS", tmp_path))
    with running(create_app(index_dir)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        for width, height in ((1280, 900), (390, 844)):
            page = browser.new_page(viewport={"width": width, "height": height})
            page.goto(f"{url}#q=a+shape&k=100")
            expect(page.locator("#grid .card")).to_have_count(len(records))
            page.evaluate(
                "() => document.querySelectorAll('#grid img').forEach(i => { i.loading = 'eager'; })"
            )
            page.wait_for_function(ALL_LOADED)  # the lazy pictures below the fold too, for the screenshot
            grid_width, rows = _grid_rows(page)
            assert len(rows) >= 3, rows
            for row in rows:
                heights = [t["h"] for t in row]
                assert max(heights) - min(heights) < 1.5, (width, heights)
                for tile in row:
                    assert abs(tile["w"] / tile["h"] - tile["ar"]) < 0.03 * tile["ar"] + 0.02, (width, tile)
                    assert abs(tile["iw"] - tile["w"]) < 1 and abs(tile["ih"] - tile["h"]) < 1, (width, tile)
            for row in rows[:-1]:
                spanned = row[-1]["x"] + row[-1]["w"] - row[0]["x"]
                assert abs(spanned - grid_width) < 2, (width, spanned, grid_width)
            last = rows[-1]
            assert last[-1]["x"] + last[-1]["w"] <= rows[0][0]["x"] + grid_width + 1
            page.screenshot(path=str(shots / f"grid-{width}x{height}.png"), full_page=True)
            assert (shots / f"grid-{width}x{height}.png").stat().st_size > 10_000
            page.close()
        browser.close()


def test_tick_cross_keys_and_refine_in_a_real_browser(
    tmp_path: Path, photos: dict[str, Path], tiny_encoder
) -> None:
    """Marks made with the mouse and the keys are stored in the index, stay shown after a reload and
    after "Refine", which searches with the query moved by them (the library's refined ranking)."""
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    index_dir = tmp_path / "index"
    with Index.open_for_write(index_dir, tiny_encoder) as idx:
        idx.sync([str(photos["coffee"].parent)])
        ids = {name: idx.catalog.file(str(path)).content_id for name, path in photos.items()}
    query = "a cup of coffee"
    with running(create_app(index_dir)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        problems: list[str] = []
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        page.goto(url)
        page.fill("#q", query)
        page.press("#q", "Enter")
        cards = page.locator("#grid .card")
        expect(cards).to_have_count(len(photos))
        refine = page.locator("#refine")
        expect(refine).to_be_visible()
        expect(refine).to_be_disabled()

        coffee = page.locator(f'#grid .card[data-content-id="{ids["coffee"]}"]')
        coffee.locator(".mark-yes").click()  # the tick
        expect(coffee).to_have_class(re.compile("judged-yes"))
        expect(refine).to_be_enabled()
        rocket = page.locator(f'#grid .card[data-content-id="{ids["rocket"]}"]')
        rocket.locator(".thumb").focus()
        page.keyboard.press("n")  # the key for a cross, on the focused result
        expect(rocket).to_have_class(re.compile("judged-no"))
        camera = page.locator(f'#grid .card[data-content-id="{ids["camera"]}"]')
        camera.locator(".mark-yes").click()
        camera.locator(".mark-yes").click()  # a second tick takes it back
        expect(camera).not_to_have_class(re.compile("judged"))
        chelsea = page.locator(f'#grid .card[data-content-id="{ids["chelsea"]}"]')
        chelsea.locator(".thumb").click()  # in the viewer: y marks the picture shown
        expect(page.locator("#viewer")).to_be_visible()
        page.keyboard.press("y")
        expect(page.locator("#viewer-yes")).to_have_attribute("aria-pressed", "true")
        page.keyboard.press("Escape")
        expect(chelsea).to_have_class(re.compile("judged-yes"))
        expect(refine).to_have_text("Refine (3 marked)")
        with Index.open(index_dir) as idx:
            stored = {m.content_id: m.relevant for m in idx.judgements(query)}
        assert stored == {ids["coffee"]: True, ids["rocket"]: False, ids["chelsea"]: True}

        page.reload()  # the marks come back from the index
        expect(coffee).to_have_class(re.compile("judged-yes"))
        expect(rocket).to_have_class(re.compile("judged-no"))

        page.locator("body").click(position={"x": 5, "y": 5})
        page.keyboard.press("r")  # refine
        expect(page.locator("#status")).to_contain_text("refined by your marks")
        assert "refine=1" in page.url
        with Index.open(index_dir) as idx:
            expected = [h.content_id for h in idx.search_refined(query, 30)]
        expect(cards).to_have_count(len(expected))
        assert [int(c) for c in cards.evaluate_all("cs => cs.map(c => c.dataset.contentId)")] == expected
        expect(coffee).to_have_class(re.compile("judged-yes"))  # marked results stay marked
        expect(rocket).to_have_class(re.compile("judged-no"))
        page.screenshot(path=str(tmp_path / "refined.png"))
        assert not problems, problems
        browser.close()


def test_a_video_tile_plays_its_moment(tmp_path: Path) -> None:
    """A video's result is a tile per moment with its time; the viewer plays the file from the moment
    (the browser fetches it in ranges), and "more like this" starts from the moment."""
    _require_browser()
    from playwright.sync_api import expect, sync_playwright

    from clipsearch.encoders.loading import load_encoder
    from clipsearch.ingest.sync import SyncOptions
    from videos import blue_star_film, scene

    folder = tmp_path / "media"
    folder.mkdir()
    film = blue_star_film(folder / "film.webm", codec="libvpx-vp9")  # WebM: every Chromium build plays it
    scene("blue", "star", size="small", position="right").save(folder / "star.png")
    index_dir = tmp_path / "index"
    with Index.open_for_write(index_dir, load_encoder("shapes")) as idx:
        idx.sync([str(folder)], options=SyncOptions(export_text=False))
        best = idx.search_text("a large blue star", 1)[0]
    assert best.is_moment

    with running(create_app(index_dir)) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1280, "height": 800})
        problems: list[str] = []
        page.on("console", lambda msg: problems.append(msg.text) if msg.type == "error" else None)
        page.on("pageerror", lambda exc: problems.append(str(exc)))
        ranges: list[str] = []
        page.on(
            "request",
            lambda req: ranges.append(req.headers.get("range", "")) if "/api/video/" in req.url else None,
        )
        page.goto(url)
        expect(page.locator("#footer")).to_contain_text("1 videos")
        page.fill("#q", "a large blue star")
        page.press("#q", "Enter")
        tile = page.locator("#grid .card.moment").first
        expect(tile.locator(".time")).to_have_text("0:10–0:20")
        assert tile.get_attribute("data-moment") == str(best.moment)
        page.wait_for_function(
            "() => [...document.querySelectorAll('#grid img')].every(i => i.complete && i.naturalWidth > 0)"
        )

        tile.locator(".thumb").click()
        video = page.locator("#viewer-video")
        expect(video).to_be_visible()
        expect(page.locator("#viewer-img")).to_be_hidden()
        expect(page.locator("#viewer-meta")).to_contain_text("0:10–0:20")
        page.wait_for_function("() => document.getElementById('viewer-video').readyState >= 1")
        at = page.evaluate("() => document.getElementById('viewer-video').currentTime")
        assert 9.5 <= at <= 20, at  # the player stands at the moment, not at the start
        assert any(r.startswith("bytes=") for r in ranges), ranges  # it asked for ranges of the file
        page.screenshot(path=str(tmp_path / "video.png"))
        page.keyboard.press("Escape")
        expect(page.locator("#viewer")).to_be_hidden()

        tile.locator(".more").click()
        expect(page.locator("#context")).to_contain_text(f"More like {film} @ 0:10–0:20")
        expect(page).to_have_url(re.compile(rf"similar={best.content_id}&moment={best.moment}"))
        expect(page.locator("#status")).to_contain_text("result")
        shown = page.locator("#grid .card").evaluate_all(
            "cs => cs.map(c => [c.dataset.contentId, c.dataset.moment ?? null])"
        )
        assert [str(best.content_id), str(best.moment)] not in shown  # the moment itself left out
        assert not problems, problems
        browser.close()
