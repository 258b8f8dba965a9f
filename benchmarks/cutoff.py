"""Adaptive cutoff (--cutoff auto) versus a fixed k on the shapes world, with the bundled shapes model.

    python benchmarks/cutoff.py [--count 600] [--seed 7]

For every colour+shape query ("a red circle"), the relevant images are those showing a shape of
that colour and kind; for every colour query ("a red shape"), those showing a shape of that colour.
Prints mean precision, recall and F1 of each strategy.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np

from clipsearch.api import Index
from clipsearch.encoders.loading import load_encoder
from clipsearch.query.rank import SearchOptions, finish
from clipsearch.shapes import world


def evaluate(
    index: Index, labels: dict[str, world.Scene], strategies: dict[str, SearchOptions], *, with_shape: bool
) -> dict[str, tuple[float, float, float]]:
    """Mean (precision, recall, F1) per strategy over every colour+shape (or colour) query."""
    scores: dict[str, list[tuple[float, float, float]]] = {name: [] for name in strategies}
    shapes: tuple[str | None, ...] = world.SHAPES if with_shape else (None,)
    for color in world.COLORS:
        for shape in shapes:
            relevant = {name for name, scene in labels.items() if scene.matches(color=color, shape=shape)}
            if not relevant:
                continue
            ranked = index.search(f"a {color} {shape or 'shape'}", k=100)
            for name, options in strategies.items():
                kept = {Path(h.path).name for h in finish(ranked, options)}
                hits = len(kept & relevant)
                p = hits / len(kept) if kept else 0.0
                r = hits / len(relevant)
                scores[name].append((p, r, 2 * p * r / (p + r) if p + r else 0.0))
    return {name: tuple(np.mean(rows, axis=0)) for name, rows in scores.items()}  # type: ignore[misc]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--count", type=int, default=600, help="images in the gallery")
    parser.add_argument("--seed", type=int, default=7, help="gallery seed (the model trained on others)")
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="clipsearch-cutoff-"))
    records = world.write_dataset(work / "images", args.count, args.seed)
    labels = {r.path.name: r.scene for r in records}
    with Index.open_for_write(work / "index", load_encoder("shapes")) as index:
        index.sync([str(work / "images")])
        strategies = {
            "fixed k=10": SearchOptions.parse(top=10, threshold=None, cutoff=None, sort="score"),
            "fixed k=20": SearchOptions.parse(top=20, threshold=None, cutoff=None, sort="score"),
            "--cutoff auto": SearchOptions.parse(top=None, threshold=None, cutoff="auto", sort="score"),
        }
        for with_shape in (True, False):
            report(args, evaluate(index, labels, strategies, with_shape=with_shape), with_shape)


def report(
    args: argparse.Namespace, results: dict[str, tuple[float, float, float]], with_shape: bool
) -> None:
    kind = "colour+shape" if with_shape else "colour"
    print(
        f"\n{args.count} shapes-world images (seed {args.seed}), {kind} queries "
        "('a red circle' / 'a red shape')"
    )
    print(f"{'strategy':<16}{'precision':>10}{'recall':>10}{'F1':>10}")
    for name, (p, r, f1) in results.items():
        print(f"{name:<16}{p:>10.3f}{r:>10.3f}{f1:>10.3f}")


if __name__ == "__main__":
    main()
