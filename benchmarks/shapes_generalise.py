"""Does the shapes model see shapes drawn by other programs? The table of issue 19, per renderer.

    python benchmarks/shapes_generalise.py                      # the bundled model, 400 pictures each
    python benchmarks/shapes_generalise.py --model DIR --n 400  # a model folder written by shapes.train

Draws N pictures (one shape each, every colour x shape equally often) with each renderer of
`benchmarks/foreign_shapes` (programs that share no drawing code with the training generator), indexes
each folder as a user would (`api.Index.open_for_write(...).sync`, the code behind `clipsearch index
FOLDER --model shapes`), searches it through `Index.search` and prints, per renderer and for the
model's own held-out set (`clipsearch.shapes.evaluate` with the model card's seed):

- text -> image P@10: "a red circle" for every colour x shape; relevant = that colour and shape,
  denominator min(10, number relevant);
- image -> image top-5: each picture's 5 nearest other pictures, share with its colour and shape;
- algebra P@5: image(A-coloured S) - "A" + "B" for every colour pair, 2 source pictures per colour x
  shape; relevant = B-coloured S, the source excluded.

Shape confusions of the text queries go to stderr. Pictures are kept in --folder (reused when the same
renderer, N and seed are asked again); indexes are made in a temporary folder. With --card the table
also goes into the model folder's MODEL_CARD.md (replacing the section an earlier run wrote).
"""

from __future__ import annotations

import argparse
import itertools
import json
import sys
import tempfile
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from benchmarks.foreign_shapes import COLOR_NAMES, SHAPE_NAMES, ForeignScene, renderers, write_pictures  # noqa: E402
from clipsearch.api import Index  # noqa: E402
from clipsearch.encoders.spec import ModelSpec  # noqa: E402
from clipsearch.query.grammar import Term  # noqa: E402

CHECKS = {
    "text_to_image": "text → image P@10, colour+shape",
    "image_to_image": "image → image top-5 same colour+shape",
    "algebra": "algebra img(red circle) − red + blue, P@5",
}


@dataclass(frozen=True)
class Scores:
    """The three checks of the issue's table, each in [0, 1]."""

    text_to_image: float
    image_to_image: float
    algebra: float


def _a(word: str) -> str:
    return "an" if word[0] in "aeiou" else "a"


def measure(index: Index, folder: Path, scenes: dict[str, ForeignScene], *, say=lambda _: None) -> Scores:
    """The three checks on an index of `folder`, whose files `scenes` describes."""
    kind = {str((folder / name).absolute()): (s.color, s.shape) for name, s in scenes.items()}
    count = Counter(kind.values())
    text_scores, confusions = [], Counter()
    for color, shape in itertools.product(COLOR_NAMES, SHAPE_NAMES):
        hits = index.search(f"{_a(color)} {color} {shape}", k=10)
        right = [kind[h.path] == (color, shape) for h in hits]
        text_scores.append(sum(right) / min(10, max(1, count[(color, shape)])))
        confusions.update((shape, kind[h.path][1]) for h in hits if kind[h.path][1] != shape)
    say(
        "shape confusions of the text queries (asked, got): "
        + ", ".join(f"{a}->{b} {n}" for (a, b), n in confusions.most_common(6))
    )
    same = []
    for path, want in kind.items():
        hits = [h for h in index.search([Term("image", path)], k=6) if h.path != path][:5]
        same += [kind[h.path] == want for h in hits]
    algebra = []
    taken: Counter[tuple[str, str]] = Counter()
    for path, (color, shape) in sorted(kind.items()):
        if taken[(color, shape)] == 2:
            continue
        taken[(color, shape)] += 1
        for other in COLOR_NAMES:
            if other == color:
                continue
            query = [Term("image", path), Term("text", color, -1.0), Term("text", other, 1.0)]
            hits = [h for h in index.search(query, k=6) if h.path != path][:5]
            algebra += [kind[h.path] == (other, shape) for h in hits]
    mean = lambda xs: sum(xs) / len(xs)  # noqa: E731
    return Scores(mean(text_scores), mean(same), mean(algebra))


def index_and_measure(
    model: str, folder: Path, scenes: dict[str, ForeignScene], index_path: Path, say
) -> Scores:
    """Index `folder` with `model` from scratch (as `clipsearch index FOLDER --model MODEL`), and measure."""
    from clipsearch.ingest.sync import SyncOptions

    spec = ModelSpec.parse(model, None)
    options = SyncOptions(workers=2, export_text=False)
    with Index.open_for_write(index_path, spec=spec, rebuild=True) as index:
        index.sync([str(folder)], options=options)
        return measure(index, folder, scenes, say=say)


def own_held_out(model_dir: Path) -> Scores:
    """The model card's held-out gallery (same seed), the same three checks."""
    from clipsearch.shapes import evaluate, train

    encoder = train.OpenClipEncoder.from_dir(model_dir)
    gallery = evaluate.make_gallery(encoder, train.EVAL_SEED, copies=6)
    return Scores(
        evaluate.precision_at_k(encoder, gallery, evaluate.color_shape_queries()),
        evaluate.image_to_image(gallery),
        evaluate.algebra(encoder, gallery),
    )


def table(columns: dict[str, Scores], before: dict[str, Scores] | None = None) -> str:
    """Markdown: one row per check, one column per picture source; with `before`, "old → new" cells."""

    def cell(source: str, name: str) -> str:
        new = f"{getattr(columns[source], name):.3f}"
        if before is None or source not in before:
            return new
        return f"{getattr(before[source], name):.3f} → {new}"

    head = "| check | " + " | ".join(columns) + " |"
    rule = "|---|" + "---:|" * len(columns)
    rows = [
        f"| {label} | " + " | ".join(cell(c, name) for c in columns) + " |" for name, label in CHECKS.items()
    ]
    return "\n".join([head, rule, *rows])


CARD_HEADING = "## Pictures drawn by other programs"
BEFORE_NOTE = "Each cell: the first shapes model (trained on five positions and two sizes only) → this one."


def card_section(
    columns: dict[str, Scores], n: int, seed: int, before: dict[str, Scores] | None = None
) -> str:
    """The model card's section on the renderers of `benchmarks/foreign_shapes`."""
    return f"""{CARD_HEADING}

Shapes drawn by programs that share no drawing code with the training generator
(`benchmarks/foreign_shapes`: matplotlib patches; scikit-image `draw`), never trained or tuned on: {n}
pictures per renderer (seed {seed}), one shape each, every colour x shape equally often, anywhere in
frames of 4:3, 1:1, 16:9 and 3:4 at 320-800 px, 10-40% of the short side, each colour's shade drawn
from a range, supersampled, 30% blurred, JPEG quality 70-92. Indexed and searched as a user would
(`Index.sync`, `Index.search`) by `python benchmarks/shapes_generalise.py --model DIR --card`.
{"" if before is None else chr(10) + BEFORE_NOTE}

{table(columns, before)}
"""


def write_card_section(card: Path, section: str) -> None:
    """Put `section` into the card, replacing the one an earlier run wrote (it runs to the next heading)."""
    text = card.read_text()
    if CARD_HEADING in text:
        before, _, rest = text.partition(CARD_HEADING)
        after = rest[rest.find("\n## ") + 1 :] if "\n## " in rest else ""
        text = before + section + ("\n" + after if after else "")
    else:
        text = text.rstrip("\n") + "\n\n" + section
    card.write_text(text)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument(
        "--model", default="shapes", help="'shapes' (bundled) or a model folder from shapes.train"
    )
    parser.add_argument("--n", type=int, default=400, help="pictures per renderer")
    parser.add_argument("--seed", type=int, default=19, help="seed of the pictures")
    parser.add_argument("--renderers", default=",".join(sorted(renderers())), help="comma-separated")
    parser.add_argument(
        "--folder",
        type=Path,
        default=Path(tempfile.gettempdir()) / "clipsearch-foreign-shapes",
        help="where the pictures are drawn (kept and reused)",
    )
    parser.add_argument("--no-own", action="store_true", help="skip the own held-out set")
    parser.add_argument("--json", action="store_true", help="print the scores as one JSON object")
    parser.add_argument("--card", action="store_true", help="also write the table into the model's card")
    parser.add_argument(
        "--before", type=Path, help="JSON (--json output) of an earlier model, shown as 'old → new' cells"
    )
    args = parser.parse_args()

    import clipsearch.shapes.tower  # noqa: F401  (a model folder's image tower, registered with timm)
    from clipsearch.shapes import MODEL_DIR

    model_dir = MODEL_DIR if args.model == "shapes" else Path(args.model).absolute()
    model = "shapes" if args.model == "shapes" else f"local-dir:{model_dir}"
    say = lambda text: print(text, file=sys.stderr, flush=True)  # noqa: E731
    columns: dict[str, Scores] = {}
    if not args.no_own:
        say("own held-out set ...")
        columns["own held-out set"] = own_held_out(model_dir)
    with tempfile.TemporaryDirectory() as tmp:
        for name in args.renderers.split(","):
            say(f"{name}: drawing {args.n} pictures into {args.folder / name} ...")
            scenes = write_pictures(args.folder / name, name, args.n, args.seed)
            say(f"{name}: indexing and searching ...")
            columns[name] = index_and_measure(model, args.folder / name, scenes, Path(tmp) / name, say)
    before = None
    if args.before is not None:
        before = {name: Scores(**s) for name, s in json.loads(args.before.read_text()).items()}
    if args.json:
        print(json.dumps({name: vars(s) for name, s in columns.items()}))
    else:
        print(table(columns, before))
    if args.card:
        write_card_section(model_dir / "MODEL_CARD.md", card_section(columns, args.n, args.seed, before))


if __name__ == "__main__":
    main()
