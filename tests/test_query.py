"""The query language, filters against brute force, result options and output formats."""

from __future__ import annotations

import json
import math
import os
import re
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
from conftest import picture_vectors

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


@pytest.mark.parametrize("expr", ["dog:1e20", "dog:1e400", "cat + dog:-101", "3.5e38*dog", "dog:0"])
def test_weights_outside_the_range_are_refused_where_they_are(expr: str) -> None:
    with pytest.raises(QuerySyntaxError) as info:
        parse_query(expr)
    term_start = expr.rfind(" ") + 2  # the position of the term that carries the weight
    assert f"position {term_start}:" in str(info.value)
    assert "between -100 and 100" in str(info.value) or "weight of 0" in str(info.value)


def test_weights_at_the_limits_and_words_after_a_colon() -> None:
    assert parse_query("dog:100 - cat:1e2") == [Term("text", "dog", 100), Term("text", "cat", -100)]
    assert parse_query("dog:inf") == [Term("text", "dog:inf")]  # not a number: text, here and on the web
    assert parse_query("red circle -blue") == [Term("text", "red circle"), Term("text", "blue", -1)]
    assert parse_query("t-shirt -2019") == [Term("text", "t-shirt"), Term("text", "2019", -1)]


@pytest.mark.parametrize("weight", [1e20, -1e20, float("inf"), float("-inf"), float("nan"), 0.0, 100.5])
def test_terms_built_in_python_are_held_to_the_same_range(weight: float) -> None:
    with pytest.raises(UsageError, match="weight"):
        Term("text", "dog", weight)
    with pytest.raises(UsageError):  # the same weight written in an option (inf and nan as 1e400)
        build_terms(None, add=[f"dog:{weight!r}" if math.isfinite(weight) else "dog:1e400"])


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


def test_the_cutoff_break_does_not_move_with_k() -> None:
    """-k only caps --cutoff auto: the break is found among the same 100 candidates for every k."""
    from clipsearch.query.rank import Hit

    rng = np.random.default_rng(7)
    scores = np.sort(np.concatenate([0.30 + 0.01 * rng.random(3), 0.2 + 0.06 * rng.random(400)]))[::-1]
    ranked = [Hit(f"/p{i}", float(s), i) for i, s in enumerate(scores)]  # what the index ranks, best first
    widest = finish(ranked[:100], SearchOptions.parse(top=100, threshold=None, cutoff="auto", sort="score"))
    assert 0 < len(widest) < 100
    for k in (1, 2, 3, 5, 10, 20, 40, 100, 1000):
        options = SearchOptions.parse(top=k, threshold=None, cutoff="auto", sort="score")
        assert finish(ranked[: options.candidates], options) == widest[:k], k
        assert finish(ranked, options) == widest[:k], k  # more hits than candidates: the same break


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
        expected = sorted((float(max(picture_vectors(idx, t[0]) @ vec)) for t in kept), reverse=True)[:10]
    assert len(hits) == 10
    assert {h.path for h in hits} <= {t[0] for t in kept}  # every hit passes the filter
    np.testing.assert_allclose([h.score for h in hits], expected, atol=1e-5)  # and they are the best ten


def test_in_folder_outside_the_roots_is_a_usage_error(mixed_index, tiny_encoder, tmp_path) -> None:
    index_dir, _, _ = mixed_index
    with Index.open(index_dir, encoder=tiny_encoder) as idx, pytest.raises(UsageError, match="not inside"):
        idx.search("x", filters=Filters(folder=str(tmp_path / "elsewhere")))


@pytest.fixture(scope="module")
def library(tmp_path_factory, tiny_encoder):
    """120 small images (png, jpg, jpeg, JPG) in two folders, indexed: more than the 100 cutoff candidates."""
    rng = np.random.default_rng(11)
    root = tmp_path_factory.mktemp("library") / "lib"
    for i in range(120):
        folder = root / ("a", "b")[i % 2]
        folder.mkdir(parents=True, exist_ok=True)
        ext = ("png", "jpg", "jpeg", "JPG")[i % 4]
        base = rng.integers(0, 255, 3)
        pixels = np.clip(base + rng.integers(-40, 40, (24, 32, 3)), 0, 255).astype(np.uint8)
        Image.fromarray(pixels).save(folder / f"img{i:03d}.{ext}", format="PNG" if ext == "png" else "JPEG")
    index_dir = root.parent / "idx"
    with Index.open_for_write(index_dir, tiny_encoder) as idx:
        idx.sync([str(root)])
    return index_dir, root


def _search(index_dir: Path, *args: str):
    return runner.invoke(app, ["search", *args, "--index", str(index_dir)])


def _json_paths(result) -> list[str]:
    assert result.exit_code == 0, result.stderr
    return [json.loads(line)["path"] for line in result.stdout.splitlines()]


def test_cli_refuses_weights_out_of_range(library) -> None:
    index_dir, _ = library
    for args in (["dog:1e20"], ["cat", "--add", "dog:1e400"], ["cat", "--sub", "dog:-1e39"], ["3.5e38*dog"]):
        result = _search(index_dir, *args)
        assert result.exit_code == 2, (args, result.stdout)
        assert "between -100 and 100" in result.stderr and "No results" not in result.stderr, args
        assert "Traceback" not in result.stderr and result.stdout == ""
    assert len(_json_paths(_search(index_dir, "dog:100 - cat:0.5", "--json"))) == 10


def test_cli_cutoff_auto_is_capped_by_k_not_moved(library) -> None:
    index_dir, _ = library
    widest = _json_paths(_search(index_dir, "a photo", "--cutoff", "auto", "-k", "100", "--json"))
    assert 0 < len(widest) < 100
    assert _json_paths(_search(index_dir, "a photo", "--cutoff", "auto", "--json")) == widest  # default cap
    for k in ("1", "3", "5", "10", "20", "40"):
        found = _json_paths(_search(index_dir, "a photo", "--cutoff", "auto", "-k", k, "--json"))
        assert found == widest[: int(k)], k


def test_cli_type_aliases_and_typos(library) -> None:
    index_dir, root = library
    jpegs = {str(p) for p in root.rglob("*") if p.suffix.lower() in (".jpg", ".jpeg")}
    for types in ("jpeg", "jpg", "JPG", ".jpe", "jpeg,jpg"):
        found = _json_paths(_search(index_dir, "a photo", "--type", types, "-k", "500", "--json"))
        assert set(found) == jpegs, types
    both = _json_paths(_search(index_dir, "a photo", "--type", "png, tiff,jpeg", "-k", "500", "--json"))
    assert len(both) == 120
    for types, unknown in (("foo", "foo"), ("jpg,pgn", "pgn"), ("mp3", "mp3")):
        result = _search(index_dir, "a photo", "--type", types)
        assert result.exit_code == 2 and result.stdout == "", types
        assert f"--type '{types}': unknown file type {unknown}; known: " in result.stderr
        assert "jpeg" in result.stderr and "mp4" in result.stderr and "No results" not in result.stderr


def test_cli_in_a_folder_that_is_not_indexed_is_a_usage_error(library, tmp_path) -> None:
    index_dir, root = library
    assert (
        len(_json_paths(_search(index_dir, "a photo", "--in", str(root / "a"), "-k", "500", "--json"))) == 60
    )
    elsewhere = _search(index_dir, "a photo", "--in", str(tmp_path))
    assert elsewhere.exit_code == 2 and elsewhere.stdout == ""
    assert f"--in {tmp_path} is not inside an indexed folder ({root})" in elsewhere.stderr
    typo = _search(index_dir, "a photo", "--in", str(root / "aa"))  # inside the root, but no such folder
    assert typo.exit_code == 2 and typo.stdout == ""
    assert f"--in {root / 'aa'}: no such folder, and no indexed file lies under it" in typo.stderr
    (root / "empty").mkdir()
    empty = _search(index_dir, "a photo", "--in", str(root / "empty"))  # a real folder, nothing in it yet
    assert empty.exit_code == 0 and "No results match the filters or the threshold." in empty.stderr


def test_cli_says_when_the_index_itself_is_empty(tmp_path, tiny_encoder) -> None:
    (tmp_path / "nothing").mkdir()
    with Index.open_for_write(tmp_path / "index", tiny_encoder) as idx:
        idx.sync([str(tmp_path / "nothing")])
    result = _search(tmp_path / "index", "a photo")
    assert result.exit_code == 0 and result.stdout == ""
    assert "is empty. Add photos with: clipsearch index FOLDER" in result.stderr


def test_cli_marks_files_not_on_disk_and_available_leaves_them_out(tmp_path, photos, tiny_encoder) -> None:
    drive = tmp_path / "drive"
    drive.mkdir()
    for i in range(5):
        Image.new("RGB", (40, 40 + i), (50 * i, 20, 90)).save(drive / f"d{i}.png")
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        idx.sync([str(photos["coffee"].parent), str(drive)])
    drive.rename(tmp_path / "unplugged")
    rows = [json.loads(x) for x in _search(tmp_path / "idx", "x", "-k", "50", "--json").stdout.splitlines()]
    assert len(rows) == 11
    assert {r["path"] for r in rows if not r["available"]} == {str(drive / f"d{i}.png") for i in range(5)}
    on_disk = [r["path"] for r in rows if r["available"]]
    for k in ("2", "6", "50"):
        result = _search(tmp_path / "idx", "x", "-k", k, "--available", "--json")
        assert _json_paths(result) == on_disk[: int(k)], k


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


def test_duplicates_put_each_file_in_one_group(tmp_path, tiny_encoder) -> None:
    folder = tmp_path / "dups"
    folder.mkdir()
    for i, color in enumerate(["red", "blue", "green", "black", "white", "yellow"]):
        img = Image.new("RGB", (64, 64), color)
        ImageDraw.Draw(img).ellipse((10 + i * 5, 10, 40 + i * 3, 50), fill="gray")
        img.save(folder / f"u{i}.png")
    for copy in ("copy-of-u0.png", "copy2-of-u0.png"):
        (folder / copy).write_bytes((folder / "u0.png").read_bytes())
    Image.open(folder / "u0.png").save(folder / "u0-recompressed.jpg", quality=92)  # near u0, not identical
    (folder / "copy-of-u2.png").write_bytes((folder / "u2.png").read_bytes())  # identical, near nothing else
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        idx.sync([str(folder)])
    base = ["duplicates", "--index", str(tmp_path / "idx"), "--threshold", "0.99"]
    groups = [json.loads(x) for x in runner.invoke(app, [*base, "--json"]).stdout.splitlines()]
    names = [[Path(p).name for p in g["paths"]] for g in groups]
    everyone = [name for group in names for name in group]
    assert len(everyone) == len(set(everyone))  # no file in two groups
    assert [g["kind"] for g in groups] == ["near", "exact"]
    assert names[0] == ["copy-of-u0.png", "copy2-of-u0.png", "u0-recompressed.jpg", "u0.png"]
    assert groups[0]["identical"] == [[0, 1, 3]] and groups[0]["count"] == 4
    assert groups[0]["min_score"] >= 0.99 and groups[1]["min_score"] == 1
    assert names[1] == ["copy-of-u2.png", "u2.png"] and groups[1]["identical"] == [[0, 1]]

    text = runner.invoke(app, base).stdout
    assert "exact (2 identical files):\n" in text
    assert not [line for line in text.splitlines() if line.startswith("exact") and "similarity" in line]
    assert re.search(
        r"^near \(4 files, similarity >= (0\.99\d|1\.000); the same letter marks identical files\):$",
        text,
        re.M,
    )
    lines = text.splitlines()
    near_lines = lines[1:5]  # the near group comes first: a mark (or blanks), then the path
    marks = {Path(line.split()[-1]).name: line[:5] for line in near_lines}
    assert marks == {n: "  A  " for n in ("copy-of-u0.png", "copy2-of-u0.png", "u0.png")} | {
        "u0-recompressed.jpg": "     "  # not identical to the others: no mark
    }

    only_exact = runner.invoke(app, [*base, "--exact"]).stdout
    assert "near" not in only_exact and "exact (3 identical files):" in only_exact
    assert "exact (2 identical files):" in only_exact
