"""The query language, filters against brute force, result options and output formats."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import numpy as np
import pytest
from PIL import Image, ImageDraw
from typer.testing import CliRunner

from clipsearch.api import Index
from clipsearch.cli import app
from clipsearch.errors import UsageError
from clipsearch.query.filters import Filters, parse_date
from clipsearch.query.grammar import QuerySyntaxError, Term, build_terms, describe, parse_query
from clipsearch.query.rank import SearchOptions, adaptive_cutoff, finish
from clipsearch.query.vector import combine, query_vector

runner = CliRunner()


@pytest.mark.parametrize(
    ("expr", "terms"),
    [
        ("a dog on a beach - people", [Term("text", "a dog on a beach", 1), Term("text", "people", -1)]),
        (
            "beach + dog:0.5 - 2*people + ./holiday.jpg",
            [
                Term("text", "beach"),
                Term("text", "dog", 0.5),
                Term("text", "people", -2),
                Term("image", "./holiday.jpg"),
            ],
        ),
        ("t-shirt", [Term("text", "t-shirt")]),
        ("time: 5pm", [Term("text", "time: 5pm")]),
        ('"rock + roll" - guitar', [Term("text", "rock + roll"), Term("text", "guitar", -1)]),
        ('"./my photos/cat.jpg" + ~/x.png', [Term("image", "./my photos/cat.jpg"), Term("image", "~/x.png")]),
        ("- people", [Term("text", "people", -1)]),
        (
            'beach + "x y" - "./a b.jpg"',
            [Term("text", "beach"), Term("text", "x y"), Term("image", "./a b.jpg", -1)],
        ),
    ],
)
def test_grammar(expr: str, terms: list[Term]) -> None:
    assert parse_query(expr) == terms


@pytest.mark.parametrize(
    ("expr", "position", "problem"),
    [
        ("dog + + cat", 5, "expected a term"),
        ("dog +", 5, "expected a term after"),
        ('dog - "unclosed', 7, "never closed"),
        ("", 1, "empty"),
        ("dog:0", 1, "weight of 0"),
        ('a "b"', 3, "stand alone"),
    ],
)
def test_grammar_errors_point_at_the_problem(expr: str, position: int, problem: str) -> None:
    with pytest.raises(QuerySyntaxError) as info:
        parse_query(expr)
    message = str(info.value)
    assert f"position {position}:" in message and problem in message
    assert f"\n  {expr}\n  {' ' * (position - 1)}^" in message
    assert info.value.exit_code == 2


def test_options_build_terms_and_describe_round_trips() -> None:
    terms = build_terms(
        "a beach at sunset", images=["./ref.jpg:0.5"], add=["dog"], sub=["people:2"], sub_images=["/x.png"]
    )
    assert terms == [
        Term("text", "a beach at sunset"),
        Term("image", "./ref.jpg", 0.5),
        Term("text", "dog"),
        Term("text", "people", -2),
        Term("image", "/x.png", -1),
    ]
    assert parse_query(describe(terms)) == terms
    with pytest.raises(UsageError, match="Nothing to search for"):
        build_terms(None)


def test_combine_is_the_renormalised_weighted_sum() -> None:
    rng = np.random.default_rng(0)
    a, b = (v / np.linalg.norm(v) for v in rng.standard_normal((2, 16)).astype(np.float32))
    out = combine([(1.0, a), (-0.5, b)])
    expected = (a - 0.5 * b) / np.linalg.norm(a - 0.5 * b)
    np.testing.assert_allclose(out, expected, atol=1e-6)
    with pytest.raises(UsageError, match="cancel out"):
        combine([(1.0, a), (-1.0, a)])


def test_adaptive_cutoff_finds_the_break() -> None:
    scores = [0.31, 0.30, 0.30, 0.29, 0.28] + [0.15 - 0.001 * i for i in range(60)]
    assert adaptive_cutoff(scores) == 5
    assert adaptive_cutoff([0.5]) == 1 and adaptive_cutoff([]) == 0


def test_dates() -> None:
    assert parse_date("2019", name="after") == parse_date("2019-01-01", name="after")
    assert parse_date("2019-07", name="after") < parse_date("2019-07-14", name="after")
    with pytest.raises(UsageError, match="not a date"):
        parse_date("last summer", name="after")


@pytest.fixture(scope="module")
def mixed_index(tmp_path_factory: pytest.TempPathFactory, tiny_encoder):
    """60 files in 3 folders, 2 types, 3 sizes, dated 2015..2024 (some by EXIF, the rest by mtime).

    Built once for the module: the tests only read it."""
    tmp_path = tmp_path_factory.mktemp("mixed")
    rng = np.random.default_rng(3)
    root = tmp_path / "lib"
    truth = []
    for i in range(60):
        folder = root / ("a", "b", "c")[i % 3]
        folder.mkdir(parents=True, exist_ok=True)
        ext = "jpg" if i % 2 else "png"
        side = (40, 120, 300)[i % 5 % 3]
        img = Image.fromarray(rng.integers(0, 255, (side, side + 10, 3), dtype=np.uint8))
        year = 2015 + i % 10
        path = folder / f"img{i}.{ext}"
        when = time.mktime((year, 6, 1, 12, 0, 0, 0, 0, -1))
        if ext == "jpg" and i % 4 == 1:
            exif = Image.Exif()
            exif.get_ifd(0x8769)[0x9003] = f"{year}:06:01 12:00:00"
            img.save(path, exif=exif)
            os.utime(path, (0, 0))  # mtime says 1970: the EXIF date must win
        else:
            img.save(path)
            os.utime(path, (when, when))
        truth.append((str(path), folder.name, ext, min(img.size), year))
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        idx.sync([str(root)])
    return tmp_path / "idx", root, truth


FILTER_CASES = {
    "folder": (lambda root: Filters(folder=str(root / "b")), lambda t: t[1] == "b"),
    "after": (lambda root: Filters(after=parse_date("2020", name="after")), lambda t: t[4] >= 2020),
    "before": (lambda root: Filters(before=parse_date("2018", name="before")), lambda t: t[4] < 2018),
    "types": (lambda root: Filters(types=("jpg",)), lambda t: t[2] == "jpg"),
    "min_side": (lambda root: Filters(min_side=100), lambda t: t[3] >= 100),
    "combined": (
        lambda root: Filters(types=("png",), min_side=100, after=parse_date("2016", name="after")),
        lambda t: t[2] == "png" and t[3] >= 100 and t[4] >= 2016,
    ),
}


@pytest.mark.parametrize("case", sorted(FILTER_CASES))
def test_filters_apply_before_top_k(mixed_index, tiny_encoder, case: str) -> None:
    index_dir, root, truth = mixed_index
    make_filters, keep = FILTER_CASES[case]
    kept = [t for t in truth if keep(t)]
    assert len(kept) >= 10
    with Index.open(index_dir, encoder=tiny_encoder) as idx:
        hits = idx.search("a photo", k=10, filters=make_filters(root))
        vec = query_vector(idx, parse_query("a photo"))
        expected = sorted((float(idx.stored_vector(t[0]) @ vec) for t in kept), reverse=True)[:10]
    assert len(hits) == 10
    assert {h.path for h in hits} <= {t[0] for t in kept}  # every hit passes the filter
    np.testing.assert_allclose([h.score for h in hits], expected, atol=1e-5)  # and they are the best ten


def test_in_folder_outside_the_roots_is_a_usage_error(mixed_index, tiny_encoder, tmp_path) -> None:
    index_dir, _, _ = mixed_index
    with Index.open(index_dir, encoder=tiny_encoder) as idx, pytest.raises(UsageError, match="not inside"):
        idx.search("x", filters=Filters(folder=str(tmp_path / "elsewhere")))


def test_threshold_cap_and_date_sort() -> None:
    from clipsearch.query.rank import Hit

    hits = [Hit(f"/p{i}", 1 - i / 10, i, date=float(i % 3)) for i in range(8)]
    options = SearchOptions.parse(top=5, threshold=0.45, cutoff=None, sort="date")
    out = finish(hits, options)
    assert {h.path for h in out} == {f"/p{i}" for i in range(5)}
    assert [h.date for h in out] == sorted((h.date for h in out), reverse=True)
    assert len(finish(hits, SearchOptions.parse(top=None, threshold=0.75, cutoff=None, sort="score"))) == 3
    with pytest.raises(UsageError):
        SearchOptions.parse(top=None, threshold=None, cutoff="magic", sort="score")


def test_cli_outputs(mixed_index, tmp_path) -> None:
    index_dir, root, _ = mixed_index
    base = ["search", "a photo", "--index", str(index_dir), "-k", "5"]
    rows = [json.loads(x) for x in runner.invoke(app, [*base, "--json"]).stdout.splitlines()]
    assert len(rows) == 5 and {"path", "score", "size", "width", "height", "date"} <= set(rows[0])
    paths = runner.invoke(app, [*base, "--paths"]).stdout.splitlines()
    assert paths == [r["path"] for r in rows]
    nul = runner.invoke(app, [*base, "-0"]).stdout_bytes
    assert nul.split(b"\0")[:-1] == [os.fsencode(p) for p in paths] and nul.endswith(b"\0")
    in_b = runner.invoke(app, [*base, "--in", str(root / "b"), "--type", "png", "--json"]).stdout.splitlines()
    assert all("/b/" in json.loads(x)["path"] and json.loads(x)["path"].endswith(".png") for x in in_b)
    page = tmp_path / "gallery.html"
    result = runner.invoke(app, [*base, "--sub", "noise:0.5", "--html", str(page)])
    assert result.exit_code == 0 and "Wrote gallery" in result.stderr
    text = page.read_text()
    assert text.count("data:image/jpeg;base64,") == 5 and "a photo - noise:0.5" in text
    bad = runner.invoke(app, ["search", "dog + + cat", "--index", str(index_dir)])
    assert bad.exit_code == 2 and "position 5" in bad.stderr
    assert runner.invoke(app, [*base, "--sort", "size"]).exit_code == 2
    assert runner.invoke(app, [*base, "--after", "yesterday"]).exit_code == 2


def test_duplicates(tmp_path, tiny_encoder) -> None:
    folder = tmp_path / "dups"
    folder.mkdir()
    for i, color in enumerate(["red", "blue", "green", "black", "white", "yellow"]):
        img = Image.new("RGB", (64, 64), color)
        ImageDraw.Draw(img).ellipse((10 + i * 5, 10, 40 + i * 3, 50), fill="gray")
        img.save(folder / f"u{i}.png")
    (folder / "copy-of-u0.png").write_bytes((folder / "u0.png").read_bytes())
    (folder / "copy2-of-u0.png").write_bytes((folder / "u0.png").read_bytes())
    Image.open(folder / "u1.png").save(folder / "u1-recompressed.jpg", quality=92)
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        idx.sync([str(folder)])
    result = runner.invoke(
        app, ["duplicates", "--index", str(tmp_path / "idx"), "--json", "--threshold", "0.99"]
    )
    groups = [json.loads(x) for x in result.stdout.splitlines()]
    exact = [g for g in groups if g["kind"] == "exact"]
    assert [sorted(Path(p).name for p in g["paths"]) for g in exact] == [
        ["copy-of-u0.png", "copy2-of-u0.png", "u0.png"]
    ]
    near = [sorted(Path(p).name for p in g["paths"]) for g in groups if g["kind"] == "near"]
    assert ["u1-recompressed.jpg", "u1.png"] in near
    assert groups[0]["count"] >= groups[-1]["count"]
    only_exact = runner.invoke(app, ["duplicates", "--index", str(tmp_path / "idx"), "--exact"]).stdout
    assert "near" not in only_exact and "exact (3 files" in only_exact
