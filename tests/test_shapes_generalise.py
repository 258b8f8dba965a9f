"""The shipped shapes model sees shapes drawn by other programs, found through an index as a user finds them.

The pictures come from `benchmarks/foreign_shapes` (matplotlib patches; scikit-image `draw`), which
share no drawing code with the training generator and are never trained on: one shape each, anywhere
in frames of 4:3 to 16:9 at 320-800 px, 10-40% of the short side. One picture of every colour x shape
per renderer, both renderers in one index (80 files), so that each check is sharp and fast:

- text: "a red circle" ranks the two red circles (one per renderer) in its top 2, P@2;
- image: a picture's nearest other picture is its twin from the other renderer (same colour and shape);
- algebra: image(A-coloured S) - "A" + "B" ranks a B-coloured S first (the source excluded).

`benchmarks/shapes_generalise.py` prints the full table (400 pictures per renderer) for the model card.
"""

from __future__ import annotations

import itertools
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
pytest.importorskip("skimage")

from benchmarks.foreign_shapes import COLOR_NAMES, SHAPE_NAMES, renderers, write_pictures
from clipsearch.api import Index
from clipsearch.encoders.spec import ModelSpec
from clipsearch.ingest.sync import SyncOptions
from clipsearch.query.grammar import Term

pytestmark = pytest.mark.slow  # ~26 s of set-up: renders 80 pictures and indexes them

# Measured on these 80 pictures (text P@2 / image top-1 / algebra top-1): the first shapes model
# (trained on the generator's five positions and two sizes only) 0.863 / 0.575 / 0.731, the one after
# it (fine-tuned on free shapes) 0.963 / 0.788 / 0.838, the shipped one (trained with twins) 0.975 /
# 0.925 / 0.938. The floors sit a little below the shipped model's figures.
FLOORS = {"text": 0.94, "image": 0.88, "algebra": 0.9}


@pytest.fixture(scope="module")
def scores(tmp_path_factory: pytest.TempPathFactory) -> dict[str, float]:
    root = tmp_path_factory.mktemp("foreign")
    kinds: dict[str, tuple[str, str]] = {}
    for name in sorted(renderers()):
        scenes = write_pictures(root / name, name, 40, seed=5)
        kinds |= {str((root / name / file).absolute()): (s.color, s.shape) for file, s in scenes.items()}
    spec = ModelSpec.parse("shapes", None)
    with Index.open_for_write(tmp_path_factory.mktemp("index"), spec=spec) as index:
        index.sync([str(root)], options=SyncOptions(workers=1, processes=False, export_text=False))
        return _measure(index, kinds)


def _measure(index: Index, kinds: dict[str, tuple[str, str]]) -> dict[str, float]:
    text = []
    for color, shape in itertools.product(COLOR_NAMES, SHAPE_NAMES):
        text += [kinds[h.path] == (color, shape) for h in index.search(f"a {color} {shape}", k=2)]
    image, algebra = [], []
    for path, (color, shape) in sorted(kinds.items()):
        nearest = next(h for h in index.search([Term("image", path)], k=2) if h.path != path)
        image.append(kinds[nearest.path] == (color, shape))
        for other in COLOR_NAMES[:4] if color not in COLOR_NAMES[:4] else COLOR_NAMES[4:]:
            query = [Term("image", path), Term("text", color, -1.0), Term("text", other, 1.0)]
            best = next(h for h in index.search(query, k=2) if h.path != path)
            algebra.append(kinds[best.path] == (other, shape))
    return {name: sum(v) / len(v) for name, v in (("text", text), ("image", image), ("algebra", algebra))}


@pytest.mark.parametrize("check", sorted(FLOORS))
def test_the_shapes_model_finds_shapes_other_programs_drew(scores: dict[str, float], check: str) -> None:
    assert scores[check] >= FLOORS[check], f"{check}: {scores[check]:.3f} (all: {scores})"


def test_the_pictures_come_from_two_renderers_and_cover_every_colour_and_shape(tmp_path: Path) -> None:
    for name in sorted(renderers()):
        scenes = write_pictures(tmp_path / name, name, 40, seed=5).values()
        assert {(s.color, s.shape) for s in scenes} == set(itertools.product(COLOR_NAMES, SHAPE_NAMES))
