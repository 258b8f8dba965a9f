"""The demo: a generated folder of shape images, indexed with the bundled shapes model, then searched.

It runs the same library calls as ``clipsearch index`` and ``clipsearch search`` and checks each
result against the generator's ground truth, so it shows both how to use clipsearch and that the
results are right.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from clipsearch.api import Index
from clipsearch.ingest.sync import Progress, SyncReport
from clipsearch.query.rank import Hit

if TYPE_CHECKING:
    from clipsearch.encoders.cache import ModelCache

LABELS_FILE = "labels.json"


@dataclass(frozen=True)
class DemoQuery:
    """One demo query and how to tell a right answer: the attributes a matching shape has."""

    kind: str  # "text", "image" or "algebra"
    description: str
    want: dict[str, str]
    text: str = ""
    image: str = ""  # file name inside the demo folder
    minus: str = ""
    plus: str = ""


@dataclass
class DemoResult:
    """Hits of one query, each marked right or wrong."""

    query: DemoQuery
    hits: list[Hit]
    right: list[bool] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.query.kind,
            "query": self.query.description,
            "right": sum(self.right),
            "of": len(self.hits),
            "hits": [{**h.to_dict(), "right": r} for h, r in zip(self.hits, self.right, strict=True)],
        }


def ensure_images(folder: Path, n: int, seed: int) -> dict[str, dict[str, object]]:
    """Generate the demo images once (file name -> labels); a re-run reuses them untouched."""
    labels_path = folder / LABELS_FILE
    if labels_path.is_file():
        saved = json.loads(labels_path.read_text())
        if saved.get("seed") == seed and saved.get("n") == n:
            return dict(saved["files"])
    from clipsearch.shapes.world import write_dataset

    records = write_dataset(folder, n, seed)
    files = {r.path.name: r.scene.to_dict() for r in records}
    labels_path.write_text(json.dumps({"seed": seed, "n": n, "files": files}, indent=1))
    return files


def _matches(labels: dict[str, object], want: dict[str, str]) -> bool:
    shapes = labels["shapes"]
    assert isinstance(shapes, list)
    return any(all(shape.get(k) == v for k, v in want.items()) for shape in shapes)


def demo_queries(labels: dict[str, dict[str, object]]) -> list[DemoQuery]:
    """A few text, image and algebra queries, the image ones picked from the generated files."""

    def first_single(color: str, shape: str) -> str:
        return next(
            name
            for name, lab in sorted(labels.items())
            if len(lab["shapes"]) == 1 and _matches(lab, {"color": color, "shape": shape})  # type: ignore[arg-type]
        )

    red_circle, green_star = first_single("red", "circle"), first_single("green", "star")
    return [
        DemoQuery("text", '"a red circle"', {"color": "red", "shape": "circle"}, text="a red circle"),
        DemoQuery("text", '"a blue square"', {"color": "blue", "shape": "square"}, text="a blue square"),
        DemoQuery("text", '"a yellow star"', {"color": "yellow", "shape": "star"}, text="a yellow star"),
        DemoQuery(
            "text",
            '"a large green triangle"',
            {"color": "green", "shape": "triangle", "size": "large"},
            text="a large green triangle",
        ),
        DemoQuery("image", f"--image {green_star}", {"color": "green", "shape": "star"}, image=green_star),
        DemoQuery(
            "algebra",
            f'--image {red_circle} - "red" + "blue"',
            {"color": "blue", "shape": "circle"},
            image=red_circle,
            minus="red",
            plus="blue",
        ),
    ]


def run_queries(index: Index, folder: Path, labels: dict[str, dict[str, object]], k: int) -> list[DemoResult]:
    """Run every demo query against the index and check each hit against the labels."""
    from clipsearch.query.vector import combine, image_vector, text_vector

    results = []
    for query in demo_queries(labels):
        if query.kind == "text":
            vector = text_vector(index, query.text)
        elif query.kind == "image":
            vector = image_vector(index, folder / query.image)
        else:
            vector = combine(
                [
                    (1.0, image_vector(index, folder / query.image)),
                    (-1.0, text_vector(index, query.minus)),
                    (1.0, text_vector(index, query.plus)),
                ]
            )
        hits = [h for h in index.search_vectors(vector, k + 1)[0] if Path(h.path).name != query.image][:k]
        right = [_matches(labels.get(Path(h.path).name, {"shapes": []}), query.want) for h in hits]
        results.append(DemoResult(query, hits, right))
    return results


def run_demo(
    folder: Path,
    index_path: Path,
    *,
    n: int = 300,
    seed: int = 2026,
    k: int = 5,
    progress: Progress | None = None,
    say: Callable[[str], None] = lambda _: None,
    cache: ModelCache | None = None,
) -> tuple[SyncReport, list[DemoResult]]:
    """Generate (once), index (incrementally) and search the demo folder with the shapes model."""
    from clipsearch.encoders.loading import load_encoder

    folder = folder.expanduser().absolute()
    say(f"Generating {n} shape images in {folder} ...")
    labels = ensure_images(folder, n, seed)
    say("Loading the bundled shapes model ...")
    encoder = load_encoder("shapes")
    say(f"Writing index {index_path}")
    with Index.open_for_write(index_path, encoder, cache=cache) as index:
        report = index.sync([str(folder)], progress=progress)
        results = run_queries(index, folder, labels, k)
    return report, results
