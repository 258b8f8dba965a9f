"""Tier 3: the bundled shapes model end to end on real files: the demo, and results that must be right."""

from __future__ import annotations

import json
from pathlib import Path
from statistics import mean

import pytest
from typer.testing import CliRunner

from clipsearch.api import Index
from clipsearch.cli import app
from clipsearch.shapes import MODEL_DIR

pytestmark = pytest.mark.skipif(
    not (MODEL_DIR / "open_clip_model.safetensors").exists(), reason="shapes model not trained"
)
runner = CliRunner()


@pytest.fixture(scope="module")
def shapes_index(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path, dict[str, object]]:
    """The demo's own folder and index (generated and indexed once for this module)."""
    work = tmp_path_factory.mktemp("demo")
    result = runner.invoke(
        app, ["demo", str(work / "images"), "--index", str(work / "index"), "--json", "-q"]
    )
    assert result.exit_code == 0, result.stderr
    labels = json.loads((work / "images" / "labels.json").read_text())["files"]
    return work / "images", work / "index", {"results": result.stdout, "labels": labels}


def test_demo_runs_its_three_kinds_of_query(shapes_index) -> None:
    _, _, data = shapes_index
    rows = [json.loads(line) for line in str(data["results"]).splitlines()]
    assert [r["kind"] for r in rows] == ["text", "text", "text", "text", "image", "algebra"]
    assert all(r["of"] == 5 == len(r["hits"]) and 0 <= r["right"] <= 5 for r in rows)
    assert all(sum(h["right"] for h in r["hits"]) == r["right"] for r in rows)


@pytest.mark.slow
def test_demo_rerun_reuses_everything(shapes_index) -> None:
    images, index, _ = shapes_index
    result = runner.invoke(app, ["demo", str(images), "--index", str(index), "-q"])
    assert result.exit_code == 0
    assert (
        "0 added" in result.stdout and "300 unchanged" in result.stdout and "results right" in result.stdout
    )


def matches(labels: dict[str, object], path: str, **want: str) -> bool:
    shapes = labels[Path(path).name]["shapes"]  # type: ignore[index]
    return any(all(s[k] == v for k, v in want.items()) for s in shapes)


COLOR_SHAPE_QUERIES = [
    ("red", "circle"),
    ("blue", "square"),
    ("yellow", "star"),
    ("green", "triangle"),
    ("purple", "cross"),
    ("white", "circle"),
    ("orange", "square"),
    ("black", "star"),
]


def test_demo_reports_mostly_right_answers(shapes_index) -> None:
    _, _, data = shapes_index
    rows = [json.loads(line) for line in str(data["results"]).splitlines()]
    # measured: 22 of 30 (the image and algebra queries also count shapes of the right kind that sit
    # beside another shape in the picture, which the model ranks lower)
    assert sum(r["right"] for r in rows) >= 0.7 * sum(r["of"] for r in rows), rows


def test_colour_and_shape_queries_find_that_shape_first(shapes_index) -> None:
    """On the demo's real files (one or two shapes each): precision@5 over eight queries."""
    _, index, data = shapes_index
    right = 0
    with Index.open(index) as idx:
        for color, shape in COLOR_SHAPE_QUERIES:
            hits = idx.search(f"a {color} {shape}", k=5)
            right += sum(matches(data["labels"], h.path, color=color, shape=shape) for h in hits)  # type: ignore[arg-type]
    assert right >= 0.8 * 5 * len(COLOR_SHAPE_QUERIES)


def test_algebra_and_subtraction_through_the_query_language(shapes_index) -> None:
    images, index, data = shapes_index
    labels = data["labels"]
    singles = {
        name: (lab["shapes"][0]["color"], lab["shapes"][0]["shape"])
        for name, lab in labels.items()  # type: ignore[union-attr]
        if len(lab["shapes"]) == 1
    }
    colors = sorted({color for color, _ in singles.values()})
    with Index.open(index) as idx:
        # image of a red circle - "red" + "blue": blue circles first; for every one-shape picture of
        # the folder, swapped to three other colours (one picture's answer may put a blue cross beside
        # a red circle first). Measured here (347 queries): first hit right 0.94, top 5 right 0.82, of
        # the colour asked 0.94; over all 924 swaps 0.92, 0.81, 0.93 (the model before: 0.72, 0.59).
        firsts, right, colored = [], [], []
        for i, (name, (color, shape)) in enumerate(sorted(singles.items())):
            for step in (1, 3, 5):  # three other colours per picture, each colour as often
                other = colors[(colors.index(color) + step + i) % len(colors)]
                if other == color:
                    continue
                query = f"{images / name} - {color} + {other}"
                hits = [h for h in idx.search(query, k=6) if Path(h.path).name != name][:5]
                ok = [matches(labels, h.path, color=other, shape=shape) for h in hits]  # type: ignore[arg-type]
                firsts.append(ok[0])
                right += ok
                colored += [matches(labels, h.path, color=other) for h in hits]  # type: ignore[arg-type]
        assert mean(firsts) >= 0.85 and mean(right) >= 0.75 and mean(colored) >= 0.9, (
            mean(firsts),
            mean(right),
            mean(colored),
        )
        # "circle" - "red": circles, and no red shape at all
        no_red = idx.search("circle - red", k=10)
        assert not any(matches(labels, h.path, color="red") for h in no_red)  # type: ignore[arg-type]
        assert sum(matches(labels, h.path, shape="circle") for h in no_red) >= 8  # type: ignore[arg-type]
        with_red = idx.search("a red circle", k=10)
        assert any(matches(labels, h.path, color="red") for h in with_red)  # type: ignore[arg-type]
