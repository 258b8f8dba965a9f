"""Judgements: marks stored by picture, feedback, the fitted cutoff, and `eval` against brute force."""

from __future__ import annotations

import itertools
import json
import math
import os
import shutil
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from clipsearch.api import Index
from clipsearch.cli import app
from clipsearch.errors import BadValueError
from clipsearch.ingest.sync import SyncOptions
from clipsearch.query.evalset import read_eval_file
from clipsearch.query.feedback import Rocchio, refine
from clipsearch.query.grammar import Term, parse_query
from clipsearch.query.judgements import MIN_FIT_JUDGEMENTS, JudgedPathError, query_key
from clipsearch.query.measure import DEPTH, Setting, parse_settings
from clipsearch.shapes import MODEL_DIR
from clipsearch.shapes.world import write_dataset
from clipsearch.web.report import render_report

NO_EXPORT = SyncOptions(export_text=False)  # these tests search in-process: no ONNX text tower needed

runner = CliRunner()
needs_shapes = pytest.mark.skipif(
    not (MODEL_DIR / "open_clip_model.safetensors").exists(), reason="shapes model not trained"
)


def cli(*args: str | Path):  # type: ignore[no-untyped-def]
    return runner.invoke(app, [str(a) for a in args])


# -- the shapes world, with its labels ------------------------------------------------------------


class World:
    """Generated pictures, their labels, and an index of them made with the shapes model."""

    def __init__(self, root: Path, n: int, seed: int) -> None:
        from clipsearch.encoders.loading import load_encoder

        self.photos, self.index = root / "photos", root / "index"
        records = write_dataset(self.photos, n, seed)
        self.labels = {str(r.path): r.scene for r in records}
        with Index.open_for_write(self.index, load_encoder("shapes")) as idx:
            idx.sync([str(self.photos)])

    def relevant(self, *wants: dict[str, str]) -> set[str]:
        """Files in which, for each ``want``, some shape has all its attributes."""
        return {p for p, scene in self.labels.items() if all(scene.matches(**w) for w in wants)}


@pytest.fixture(scope="module")
def small_world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("small-world"), 60, seed=3)


def _jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


# -- storing marks ---------------------------------------------------------------------------------


def test_marks_are_kept_by_picture_through_a_rename_a_resync_and_a_rebuild(
    tmp_path: Path, photos: dict[str, Path], tiny_encoder
) -> None:
    index_dir = tmp_path / "index"
    folder = photos["coffee"].parent
    with Index.open_for_write(index_dir, tiny_encoder) as idx:
        idx.sync([str(folder)], options=NO_EXPORT)
    with Index.open(index_dir) as idx:  # a reader marks: no writer lock, no model
        assert idx.mark("a cup of coffee", [photos["coffee"], photos["chelsea"]], relevant=True) == 2
        assert idx.mark("a cup  of coffee ", [photos["rocket"]], relevant=False) == 1  # the same query
        assert idx.mark("a cup of coffee", [photos["chelsea"]], relevant=None) == 1  # unmarked
        marks = idx.judgements("a cup of coffee")
    assert [(m.relevant, m.content_id is not None) for m in marks] == [(True, True), (False, True)]

    moved = folder / "renamed-coffee.jpg"
    photos["coffee"].rename(moved)
    with Index.open_for_write(index_dir, tiny_encoder) as idx:
        idx.sync(options=NO_EXPORT)
        before = {m.hash: m.content_id for m in idx.judgements()}
        files = idx.catalog.entries_of([c for c in before.values() if c is not None])
    assert str(moved) in {e.path for entries in files.values() for e in entries}

    with Index.open_for_write(index_dir, tiny_encoder, rebuild=True) as idx:
        idx.sync(options=NO_EXPORT)
    with Index.open(index_dir) as idx:
        after = {m.hash: m.content_id for m in idx.judgements()}
        assert set(after) == set(before) and all(after.values())
        assert set(after.values()).isdisjoint(before.values())  # a rebuild hands out new ids
        assert idx.judgements("a cup of coffee")[0].content_id == idx.catalog.file(str(moved)).content_id

    # a picture removed and added again gets a new id, and its marks back
    moved.rename(tmp_path / "away.jpg")
    with Index.open_for_write(index_dir, tiny_encoder) as idx:
        idx.sync(options=NO_EXPORT)
        assert idx.judgements("a cup of coffee")[0].content_id is None
    (tmp_path / "away.jpg").rename(moved)
    with Index.open_for_write(index_dir, tiny_encoder) as idx:
        idx.sync(options=NO_EXPORT)
        assert idx.judgements("a cup of coffee")[0].content_id == idx.catalog.file(str(moved)).content_id


def test_an_older_catalog_gets_its_table_from_the_first_mark(tmp_path: Path) -> None:
    """An index made by 0.1.0 has no judgements table; a reader lists none, and the first mark (from a
    reader too: the web server is one) creates it in place."""
    index_dir = tmp_path / "index"
    shutil.copytree(Path(__file__).parent / "data" / "index-0.1.0", index_dir)
    with Index.open(index_dir) as idx:
        assert idx.judgements() == [] and not idx.catalog.has_judgements_table()
        picture = "/tmp/fixture/photos/0000_green-star.jpg"  # not on disk here: recorded is enough
        assert idx.mark("a green star", [picture], relevant=True) == 1
    with Index.open(index_dir) as idx:
        (mark,) = idx.judgements()
        assert (mark.query, mark.relevant, mark.content_id) == (
            "a green star",
            True,
            idx.catalog.file(picture).content_id,
        )


def test_query_keys_are_the_query_written_back_in_the_grammar(tmp_path: Path) -> None:
    assert query_key("  a red circle ") == "a red circle"
    assert query_key("red circle -blue") == query_key("red circle - blue") == "red circle - blue"
    assert query_key("dog:0.5 + x/../my  pic.jpg") == "dog:0.5 + x/../my pic.jpg"  # text: no "./"
    key = query_key("dog:0.5 + ./x.jpg")
    assert parse_query(key) == [Term("text", "dog", 0.5), Term("image", os.path.abspath("x.jpg"))]


def test_bad_paths_are_usage_errors_that_say_why_and_mark_nothing(
    tmp_path: Path, photos: dict[str, Path], tiny_encoder
) -> None:
    index_dir = tmp_path / "index"
    folder = photos["coffee"].parent
    (folder / "broken.jpg").write_bytes(b"not a picture")
    with Index.open_for_write(index_dir, tiny_encoder) as idx:
        idx.sync([str(folder)], options=NO_EXPORT)
    (folder / "new.png").write_bytes((folder / "astronaut.jpg").read_bytes())  # after the sync
    outside = tmp_path / "elsewhere.jpg"
    shutil.copy(photos["coffee"], outside)
    cases = {
        tmp_path / "nope.jpg": "no such file",
        outside: f"not inside a folder of the index ({folder})",
        folder / "new.png": "not in the index",
        folder / "broken.jpg": "was skipped when it was indexed",
    }
    for path, problem in cases.items():
        result = cli("judge", "a cup", "--yes", photos["coffee"], "--no", path, "--index", index_dir)
        assert result.exit_code == 2, result.output
        assert problem in result.stderr and "Traceback" not in result.stderr
    assert "clipsearch index" in cli("judge", "q", "--no", folder / "new.png", "--index", index_dir).stderr
    assert cli("judgements", "--index", index_dir, "--json").stdout == ""  # nothing half-written
    for args, problem in [
        (["--yes"], "--yes needs one or more paths"),
        ([str(photos["coffee"])], "put --yes (relevant), --no or --clear before"),
        (["--maybe", "x"], "Unknown option --maybe"),
    ]:
        result = cli("judge", "a cup", *args, "--index", index_dir)
        assert result.exit_code == 2 and problem in result.stderr, result.stderr
    bad_query = cli("judge", "dog + + cat", "--yes", photos["coffee"], "--index", index_dir)
    assert bad_query.exit_code == 2 and "position 5" in bad_query.stderr
    with pytest.raises(JudgedPathError) as caught, Index.open(index_dir) as idx:
        idx.mark("a cup", [outside], relevant=True)
    assert caught.value.reason == "outside" and caught.value.roots == [str(folder)]


def test_judge_and_judgements_on_the_command_line(
    tmp_path: Path, photos: dict[str, Path], tiny_encoder
) -> None:
    """Marking needs no model: the commands only read the catalog and write marks."""
    index_dir = tmp_path / "index"
    folder = photos["coffee"].parent
    with Index.open_for_write(index_dir, tiny_encoder) as idx:
        idx.sync([str(folder)], options=NO_EXPORT)
    done = cli(
        "judge", "a cup of coffee", "--yes", photos["coffee"], photos["camera"], "--no", photos["rocket"],
        "--index", index_dir, "--json",
    )  # fmt: skip
    assert done.exit_code == 0, done.output
    assert json.loads(done.stdout) == {
        "query": "a cup of coffee", "relevant": 2, "irrelevant": 1, "cleared": 0, "marks": 3,
    }  # fmt: skip
    text = cli("judge", "a rocket", "--yes", photos["rocket"], "--index", index_dir)
    assert text.stdout == "Marked 1 right for 'a rocket'; it has 1 marks now.\n"
    cleared = cli("judge", "a cup of coffee", "--clear", photos["camera"], "--index", index_dir)
    assert "1 cleared" in cleared.stdout and "2 marks now" in cleared.stdout
    rows = [
        json.loads(line) for line in cli("judgements", "--index", index_dir, "--json").stdout.splitlines()
    ]
    assert [(r["query"], r["relevant"], Path(r["path"]).name) for r in rows] == [
        ("a cup of coffee", True, "coffee.jpg"),
        ("a cup of coffee", False, "rocket.png"),
        ("a rocket", True, "rocket.png"),
    ]
    assert all(r["time"].endswith("+00:00") and len(r["hash"]) >= 16 for r in rows)
    only = cli("judgements", "--query", "a rocket", "--index", index_dir)
    assert only.stdout.startswith("yes  a rocket") and only.stdout.rstrip().endswith("rocket.png")
    empty = cli("judgements", "--index", tmp_path / "index", "--query", "nothing")
    assert empty.stdout == "" and "clipsearch judge QUERY" in empty.stderr


# -- feedback and settings, as pure functions -------------------------------------------------------


def test_rocchio_is_the_documented_formula() -> None:
    rng = np.random.default_rng(0)
    unit = lambda v: v / np.linalg.norm(v)  # noqa: E731
    q = unit(rng.normal(size=8)).astype(np.float32)
    yes, no = rng.normal(size=(3, 8)).astype(np.float32), rng.normal(size=(2, 8)).astype(np.float32)
    expected = unit(1.0 * q + 0.75 * yes.mean(0) - 0.15 * no.mean(0))
    assert np.allclose(refine(q, yes, no), expected, atol=1e-6)
    assert np.allclose(refine(q, yes[:0], no[:0]), q, atol=1e-6)  # nothing marked: the query itself
    weights = Rocchio(alpha=0.5, beta=1.0, gamma=0.0)
    assert np.allclose(refine(q, yes, no, weights), unit(0.5 * q + yes.mean(0)), atol=1e-6)


def test_compare_settings_parse() -> None:
    base = Setting(cutoff="auto", refine=True)
    assert [s.name for s in parse_settings("cutoffs", base)] == ["k=10", "cutoff=break", "cutoff=auto"]
    fixed = parse_settings("k=10", base)[0]
    assert (fixed.k, fixed.cutoff, fixed.refine) == (10, None, True)  # a cut key replaces the base's cut
    both = parse_settings("precision=bf16, index=/other, name=B", base)[0]
    assert (both.name, both.precision, both.index, both.cutoff) == ("B", "bf16", "/other", "auto")
    assert [s.refine for s in parse_settings("refine")] == [False, True]
    for spec, problem in [
        ("k=0", "whole number"),
        ("cutoff=magic", "choose auto or break"),
        ("precision=fp8", "fp32 or bf16"),
        ("colour=red", "is not a setting"),
        ("", "name a setting"),
    ]:
        with pytest.raises(BadValueError) as caught:
            parse_settings(spec)
        assert problem in str(caught.value), spec


# -- eval ------------------------------------------------------------------------------------------


def brute_force_ranking(idx: Index, query: str) -> list[tuple[str, float]]:
    """Every indexed file by its picture's best vector's cosine with the query, best first (no FAISS
    search): identical files share a score, and keep path order."""
    from clipsearch.query.grammar import parse_query
    from clipsearch.query.vector import query_vector
    from clipsearch.store.catalog import content_of

    q = query_vector(idx, parse_query(query))
    ids = idx.store.ids()
    scores = idx.store.reconstruct(ids) @ q
    best: dict[int, float] = {}
    for cid, score in zip(content_of(ids).tolist(), scores.tolist(), strict=True):
        best[cid] = max(best.get(cid, -2.0), score)
    files = idx.catalog.entries_of(sorted(best))
    ordered = sorted(best, key=lambda c: -best[c])
    return [(e.path, best[c]) for c in ordered for e in files[c]]


def brute_force_metrics(ranked: list[str], relevant: set[str], kept: list[str]) -> dict[str, float]:
    top = ranked[:10]
    hits = [p in relevant for p in top]
    dcg = sum(1 / math.log2(i + 2) for i, h in enumerate(hits) if h)
    ideal = sum(1 / math.log2(i + 2) for i in range(min(10, len(relevant))))
    first = next((i for i, p in enumerate(ranked[:DEPTH], 1) if p in relevant), None)
    tp = len(set(kept) & relevant)
    precision = tp / len(kept) if kept else 0.0
    recall = tp / len(relevant)
    return {
        "p@10": sum(hits) / 10,
        "r@10": sum(hits) / len(relevant),
        "ndcg@10": dcg / ideal,
        "mrr": 1 / first if first else 0.0,
        "precision": precision,
        "recall": recall,
        "f1": 2 * precision * recall / (precision + recall) if tp else 0.0,
    }


@needs_shapes
def test_eval_numbers_equal_brute_force(small_world: World, tmp_path: Path) -> None:
    """A JSONL file of labelled queries (paths and patterns), and the same relevance as stored marks:
    every metric of every query, and their means, equal a brute-force computation."""
    world = small_world
    queries = {
        "a red circle": [{"color": "red", "shape": "circle"}],
        "a blue shape": [{"color": "blue"}],
        "a star": [{"shape": "star"}],
        "a large square": [{"size": "large", "shape": "square"}],
        "a circle and a square": [{"shape": "circle"}, {"shape": "square"}],
    }
    relevant = {q: world.relevant(*wants) for q, wants in queries.items()}
    relevant = {q: r for q, r in relevant.items() if r}
    assert len(relevant) >= 4
    rows = [
        {"query": q, "relevant": [os.path.relpath(p, tmp_path) for p in sorted(r)]}
        for q, r in relevant.items()
    ]
    rows[0]["relevant"] = ["*red-circle*"]  # a name pattern: the file names carry the labels
    assert {p for p in world.labels if "red-circle" in Path(p).name} == relevant["a red circle"]
    evalfile = _jsonl(tmp_path / "queries.jsonl", rows)
    index_dir = tmp_path / "index"
    shutil.copytree(world.index, index_dir)

    with Index.open(index_dir) as idx:
        ranked = {q: brute_force_ranking(idx, q) for q in relevant}
        for (
            q,
            r,
        ) in relevant.items():  # the same relevance as marks: right for the relevant, wrong for 5 others
            wrong = [p for p, _ in ranked[q] if p not in r][:5]
            idx.mark_many(q, {True: sorted(r), False: wrong})

    result = cli("eval", evalfile, "-k", "10", "--index", index_dir, "--json", "--precision", "fp32")
    assert result.exit_code == 0, result.output
    reports = {("file", "-k"): json.loads(result.stdout)}
    with Index.open(index_dir) as idx:  # the other three through the library: one model load
        for source, evalset in (("file", read_eval_file(evalfile)), ("marks", None)):
            for cut, setting in (("-k", Setting(k=10)), ("--threshold", Setting(threshold=0.45))):
                if (source, cut) not in reports:
                    made = idx.evaluate(evalset, [setting])[0]
                    reports[source, cut] = made.to_dict()
    for (source, cut), report in reports.items():
        order = list(relevant) if source == "file" else sorted(relevant)  # stored marks: by query
        assert [row["query"] for row in report["queries"]] == order
        for row in report["queries"]:
            paths = [p for p, _ in ranked[row["query"]]]
            thresholded = [p for p, s in ranked[row["query"]] if s >= 0.45][:10]  # -k caps it
            kept = paths[:10] if cut == "-k" else thresholded
            expected = brute_force_metrics(paths, relevant[row["query"]], kept)
            assert {k: row[k] for k in expected} == pytest.approx(expected, abs=1e-4), row["query"]
            assert row["relevant"] == len(relevant[row["query"]]) and row["returned"] == len(kept)
        means = {k: float(np.mean([row[k] for row in report["queries"]])) for k in expected}
        assert {k: report["mean"][k] for k in means} == pytest.approx(means, abs=1e-4)

    page = render_report("judgements", [made])  # the last: stored marks, with a threshold
    assert all(f"<h2>{q}</h2>" in page for q in relevant) and "kept, not relevant" in page
    table = cli("eval", evalfile, "--index", index_dir)
    assert table.stdout.splitlines()[0].split()[:5] == ["query", "rel", "kept", "p@10", "r@10"]
    assert table.stdout.splitlines()[-1].startswith(f"mean of {len(relevant)} queries")


@needs_shapes
def test_eval_input_errors_name_the_file_and_line(small_world: World, tmp_path: Path) -> None:
    photo = sorted(small_world.labels)[0]
    good = json.dumps({"query": "a red circle", "relevant": [photo]})
    cases = {
        "{not json": "line 2: not a JSON object",
        "[1, 2]": "line 2: not a JSON object",
        json.dumps({"relevant": [photo]}): 'line 2: "query" must be a non-empty string',
        json.dumps({"query": "a dog", "relevant": []}): 'line 2: "relevant" must be a non-empty list',
        json.dumps({"query": "dog + + cat", "relevant": [photo]}): "line 2: the query is malformed",
        json.dumps(
            {"query": "a dog", "relevant": ["*unicorn*"]}
        ): "line 2: no indexed file matches '*unicorn*'",
        json.dumps(
            {"query": "a dog", "relevant": ["/etc/passwd"]}
        ): "line 2: /etc/passwd is not inside a folder",
        json.dumps({"query": "a dog", "relevant": ["gone.jpg"]}): "line 2: " + str(tmp_path / "gone.jpg"),
    }
    for line, problem in cases.items():
        path = tmp_path / "bad.jsonl"
        path.write_text(f"{good}\n{line}\n")
        result = cli("eval", path, "--index", small_world.index)
        assert result.exit_code == 2, (line, result.output)
        assert f"{path}, {problem}" in result.stderr and "Traceback" not in result.stderr, result.stderr
    (tmp_path / "empty.jsonl").write_text("\n\n")
    empty = cli("eval", tmp_path / "empty.jsonl", "--index", small_world.index)
    assert empty.exit_code == 2 and "holds no queries" in empty.stderr
    missing = cli("eval", tmp_path / "nope.jsonl", "--index", small_world.index)
    assert missing.exit_code == 2 and "cannot be read" in missing.stderr

    # an index without judgements, and one whose judgements mark nothing relevant
    bare = tmp_path / "bare"
    shutil.copytree(small_world.index, bare)
    with Index.open(bare) as idx:
        idx.catalog.conn.execute("DROP TABLE IF EXISTS judgements")
    nothing = cli("eval", "--index", bare)
    assert nothing.exit_code == 2
    assert "holds no judgements yet" in nothing.stderr and "clipsearch judge QUERY" in nothing.stderr
    assert cli("judge", "a red circle", "--no", photo, "--index", bare).exit_code == 0
    no_yes = cli("eval", "--index", bare)
    assert no_yes.exit_code == 2 and "mark no picture relevant" in no_yes.stderr
    unknown = cli("eval", "--index", bare, "--compare", "store=hnsw")
    assert unknown.exit_code == 2 and "give exact, approximate or the index's own kind" in unknown.stderr
    approximate = cli("eval", "--index", bare, "--compare", "store")
    assert approximate.exit_code == 2 and "has no approximate search to compare" in approximate.stderr


# -- the fitted cutoff ------------------------------------------------------------------------------


@needs_shapes
def test_the_fitted_cutoff_is_the_f1_best_threshold_of_the_marks(small_world: World, tmp_path: Path) -> None:
    from clipsearch.query.evaluate import best_f1_threshold

    index_dir = tmp_path / "index"
    shutil.copytree(small_world.index, index_dir)
    queries = {
        "a red shape": {"color": "red"},
        "a circle": {"shape": "circle"},
        "a blue shape": {"color": "blue"},
    }
    pooled: list[tuple[float, bool]] = []
    with Index.open(index_dir) as idx:
        assert idx.fitted_cutoff() is None
        for i, (query, want) in enumerate(queries.items()):
            ranked = brute_force_ranking(idx, query)[:15]
            right = small_world.relevant(want)
            marks = {
                True: [p for p, _ in ranked if p in right],
                False: [p for p, _ in ranked if p not in right],
            }
            idx.mark_many(query, marks)
            pooled += [(s, p in right) for p, s in ranked]
            if i == 0:  # too few marks so far: no fitted cutoff, --cutoff auto is the break
                assert len(pooled) < MIN_FIT_JUDGEMENTS and idx.fitted_cutoff() is None
        fitted = idx.fitted_cutoff()
    assert fitted is not None and fitted.judgements == len(pooled) == 45
    assert (fitted.threshold, fitted.f1) == pytest.approx(best_f1_threshold(pooled), abs=1e-5)
    assert set(fitted.queries) == set(queries)

    # fp32 as the library's brute force (the command's own default, bf16 here, moves scores by ~1e-3,
    # and the shapes model has pictures that close)
    auto = cli(
        "search", "a green shape", "--cutoff", "auto", "--index", index_dir, "--json", "--precision", "fp32"
    )
    assert f"Cutoff: scores >= {fitted.threshold:.3f}, fitted to 45 judgements of 3 queries" in auto.stderr
    with Index.open(index_dir) as idx:
        expected = [p for p, s in brute_force_ranking(idx, "a green shape")[:100] if s >= fitted.threshold]
        cached = json.loads(idx.catalog.get("cutoff_fit"))
    assert [json.loads(line)["path"] for line in auto.stdout.splitlines()] == expected
    assert cached["fit"][0] == pytest.approx(fitted.threshold)
    plain = cli("search", "a green shape", "--cutoff", "break", "--index", index_dir, "--json")
    assert "Cutoff" not in plain.stderr

    # a new mark changes what the fit depends on: it is fitted again
    last = sorted(small_world.labels)[-1]
    assert cli("judge", "a green shape", "--yes", last, "--index", index_dir).exit_code == 0
    with Index.open(index_dir) as idx:
        refitted = idx.fitted_cutoff()
        assert refitted is not None and refitted.judgements == 46
        assert json.loads(idx.catalog.get("cutoff_fit"))["state"][0] == 46


# -- refinement -------------------------------------------------------------------------------------


@needs_shapes
def test_search_refine_uses_the_marks_and_shows_them(small_world: World, tmp_path: Path) -> None:
    from clipsearch.query.grammar import parse_query
    from clipsearch.query.vector import query_vector

    index_dir = tmp_path / "index"
    shutil.copytree(small_world.index, index_dir)
    query = "a circle and a square"
    none = cli("search", query, "--refine", "--index", index_dir)
    assert none.exit_code == 2 and "No results of 'a circle and a square' are marked" in none.stderr
    right = small_world.relevant({"shape": "circle"}, {"shape": "square"})
    with Index.open(index_dir) as idx:
        top = [p for p, _ in brute_force_ranking(idx, query)[:10]]
        idx.mark_many(
            query, {True: [p for p in top if p in right], False: [p for p in top if p not in right]}
        )
        yes = [idx.catalog.file(p).content_id for p in top if p in right]
        no = [idx.catalog.file(p).content_id for p in top if p not in right]
        q = query_vector(idx, parse_query(query))
        moved = (
            q
            + 0.75 * idx.store.reconstruct(np.array(yes)).mean(0)
            - 0.15 * idx.store.reconstruct(np.array(no)).mean(0)
        )
        moved /= np.linalg.norm(moved)
        assert np.allclose(idx.refined_vector(query), moved, atol=1e-5)
        expected = [h.path for h in idx.search_vectors(moved, 10)[0]]
    result = cli("search", query, "--refine", "--index", index_dir, "--json")
    rows = [json.loads(line) for line in result.stdout.splitlines()]
    assert [r["path"] for r in rows] == expected
    assert {r["path"]: r["judged"] for r in rows if r["path"] in top} == {
        p: p in right for p in top if p in expected
    }
    assert all(r["judged"] is None for r in rows if r["path"] not in top)


# -- comparing settings ----------------------------------------------------------------------------


@needs_shapes
@pytest.mark.slow
def test_compare_settings_over_two_indexes_and_precisions(
    small_world: World, tmp_path: Path, tiny_encoder
) -> None:
    """Two models over the same photos: the marks of the first index are matched by picture in the
    second; the JSON contract holds for every setting."""
    other = tmp_path / "other"
    with Index.open_for_write(other, tiny_encoder) as idx:
        idx.sync([str(small_world.photos)], options=NO_EXPORT)
    index_dir = tmp_path / "index"
    shutil.copytree(small_world.index, index_dir)
    right = small_world.relevant({"color": "red"})
    with Index.open(index_dir) as idx:
        idx.mark("a red shape", sorted(right), relevant=True)
    result = cli(
        "eval", "--index", index_dir, "--json",
        "--compare", "k=10", "--compare", f"index={other},name=tiny", "--compare", "precision",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert [s["name"] for s in report["settings"]] == ["k=10", "tiny", "precision=fp32", "precision=bf16"]
    for setting in report["settings"]:
        assert {"p@10", "r@10", "ndcg@10", "mrr"} <= set(setting["mean"])
        (row,) = setting["queries"]
        assert row["query"] == "a red shape" and row["relevant"] == len(right)
        assert {"query", "p@10", "r@10", "ndcg@10", "mrr"} <= set(row)
    shapes, tiny = report["settings"][0]["mean"], report["settings"][1]["mean"]
    assert shapes["ndcg@10"] > 0.9 and tiny["ndcg@10"] < 0.6  # the trained model against a random one
    fp32, bf16 = report["settings"][2]["mean"], report["settings"][3]["mean"]
    assert fp32["p@10"] == shapes["p@10"] and abs(bf16["ndcg@10"] - fp32["ndcg@10"]) < 0.1
    table = cli("eval", "--index", index_dir, "--compare", "cutoffs")
    assert [line.split()[0] for line in table.stdout.splitlines()] == [
        "setting",
        "k=10",
        "cutoff=break",
        "cutoff=auto",
    ]


@needs_shapes
def test_eval_html_report_shows_the_misses(small_world: World, tmp_path: Path) -> None:
    index_dir = tmp_path / "index"
    shutil.copytree(small_world.index, index_dir)
    right = sorted(small_world.relevant({"shape": "star"}))
    with Index.open(index_dir) as idx:
        idx.mark("a star", right, relevant=True)
    page = tmp_path / "report.html"
    result = cli(
        "eval", "--index", index_dir, "-k", "3", "--html", page, "--compare", "k=3", "--compare", "k=20"
    )
    assert result.exit_code == 0, result.output
    text = page.read_text()
    assert "<h2>a star</h2>" in text and text.count("data:image/jpeg;base64,") >= len(right) - 3
    assert "relevant, not kept" in text and ">k=20<" in text


# -- measured on the shapes world (slow: 600 pictures) ---------------------------------------------

POSITION = {"left": "on the left", "right": "on the right", "top": "at the top", "bottom": "at the bottom"}


@pytest.fixture(scope="module")
def world(tmp_path_factory: pytest.TempPathFactory) -> World:
    return World(tmp_path_factory.mktemp("world"), 600, seed=8)


def _judge_top(idx: Index, world: World, query: str, wants: list[dict[str, str]], depth: int) -> None:
    """Mark a query's first ``depth`` results right or wrong by the labels, as a person would."""
    right = world.relevant(*wants)
    top = [h.path for h in idx.search(query, depth)]
    idx.mark_many(query, {True: [p for p in top if p in right], False: [p for p in top if p not in right]})


@needs_shapes
@pytest.mark.slow
def test_one_round_of_feedback_raises_precision_of_two_shape_queries(world: World, tmp_path: Path) -> None:
    """The hardest queries of the shapes world name two shapes ("a circle and a square"): mark their
    first 10 results, refine once, and precision@10 rises (measured: 0.37 -> 0.51 over 10 queries)."""
    from clipsearch.shapes.world import SHAPES

    queries = {f"a {a} and a {b}": [{"shape": a}, {"shape": b}] for a, b in itertools.combinations(SHAPES, 2)}
    rows = [{"query": q, "relevant": sorted(world.relevant(*w))} for q, w in queries.items()]
    evalfile = _jsonl(tmp_path / "two-shapes.jsonl", rows)
    index_dir = tmp_path / "index"
    shutil.copytree(world.index, index_dir)
    with Index.open(index_dir) as idx:
        for query, wants in queries.items():
            _judge_top(idx, world, query, wants, 10)
    result = cli("eval", evalfile, "--index", index_dir, "--compare", "refine", "--json")
    assert result.exit_code == 0, result.output
    before, after = (s["mean"] for s in json.loads(result.stdout)["settings"])
    gain = after["p@10"] - before["p@10"]
    print(f"two-shape queries, p@10 {before['p@10']:.3f} -> {after['p@10']:.3f}; new p@10 "
          f"{before['new p@10']:.3f} -> {after['new p@10']:.3f}")  # fmt: skip
    # measured: 0.49 -> 0.63 with the shipped model (0.37 -> 0.51 with the one before it)
    assert before["p@10"] < 0.6 and gain >= 0.1, (before, after)
    assert after["ndcg@10"] > before["ndcg@10"]


@needs_shapes
@pytest.mark.slow
def test_the_fitted_cutoff_beats_k10_and_the_break_on_held_out_queries(world: World, tmp_path: Path) -> None:
    """Fit on the marked first 30 results of half the queries; on the other half (never marked), F1
    of --cutoff auto (fitted) beats -k 10 and the uncalibrated break."""
    from clipsearch.shapes.world import COLORS, SHAPES, SIZES

    queries: dict[str, list[dict[str, str]]] = {}
    for color, shape in itertools.product(COLORS, SHAPES):
        queries[f"a {color} {shape}"] = [{"color": color, "shape": shape}]
        for size in SIZES:
            queries[f"a {size} {color} {shape}"] = [{"color": color, "shape": shape, "size": size}]
        for where, words in POSITION.items():
            queries[f"a {color} {shape} {words}"] = [{"color": color, "shape": shape, "position": where}]
    names = sorted(q for q, w in queries.items() if world.relevant(*w))
    rng = np.random.default_rng(0)
    rng.shuffle(names)
    fit_on, held_out = names[::2], names[1::2]
    index_dir = tmp_path / "index"
    shutil.copytree(world.index, index_dir)
    with Index.open(index_dir) as idx:
        for query in fit_on:
            _judge_top(idx, world, query, queries[query], 30)
    rows = [{"query": q, "relevant": sorted(world.relevant(*queries[q]))} for q in held_out]
    evalfile = _jsonl(tmp_path / "held-out.jsonl", rows)
    result = cli("eval", evalfile, "--index", index_dir, "--compare", "cutoffs", "--json")
    assert result.exit_code == 0, result.output
    assert "fitted on none of these queries" in result.stderr
    k10, brk, auto = (s["mean"]["f1"] for s in json.loads(result.stdout)["settings"])
    print(f"held-out F1: k=10 {k10:.3f}, break {brk:.3f}, fitted {auto:.3f}")
    assert auto > k10 and auto > brk, (k10, brk, auto)


# -- the web API --------------------------------------------------------------------------------------


def test_the_page_api_marks_results_and_refines(
    tmp_path: Path, photos: dict[str, Path], tiny_encoder
) -> None:
    from fastapi.testclient import TestClient

    from clipsearch.web.server import create_app

    index_dir = tmp_path / "index"
    with Index.open_for_write(index_dir, tiny_encoder) as idx:
        idx.sync([str(photos["coffee"].parent)], options=NO_EXPORT)
        ids = {name: idx.catalog.file(str(p)).content_id for name, p in photos.items()}
    client = TestClient(create_app(index_dir), base_url="http://127.0.0.1")
    with client:
        first = client.get("/api/search", params={"q": "a  cup", "k": 30}).json()
        assert (first["key"], first["marks"], first["refined"]) == ("a cup", 0, False)
        assert all(r["judged"] is None for r in first["results"])
        refused = client.get("/api/search", params={"q": "a cup", "refine": "true"})
        assert refused.status_code == 400 and "No results of 'a cup' are marked" in refused.json()["error"]

        v = first["index_version"]
        for name, relevant in (("coffee", True), ("camera", True), ("rocket", False)):
            body = {"q": "a cup", "content_id": ids[name], "relevant": relevant, "v": v}
            marked = client.post("/api/judge", json=body)
            assert marked.status_code == 200, marked.text
        assert marked.json() == {"key": "a cup", "content_id": ids["rocket"], "relevant": False, "marks": 3}
        cleared = client.post(
            "/api/judge", json={"q": "a cup", "content_id": ids["camera"], "relevant": None}
        )
        assert cleared.json()["marks"] == 2

        again = client.get("/api/search", params={"q": "a cup", "k": 30}).json()
        judged = {r["content_id"]: r["judged"] for r in again["results"]}
        assert (
            judged[ids["coffee"]] is True and judged[ids["rocket"]] is False and judged[ids["camera"]] is None
        )
        refined = client.get("/api/search", params={"q": "a cup", "k": 30, "refine": "true"}).json()
        assert refined["refined"] is True and refined["marks"] == 2
        with Index.open(index_dir) as idx:
            expected = [h.content_id for h in idx.search_refined("a cup", 30)]
        assert [r["content_id"] for r in refined["results"]] == expected
        assert {r["content_id"]: r["judged"] for r in refined["results"]} == judged  # still shown as marked

        for body, status, problem in [
            (
                {"q": "./x.jpg", "content_id": ids["coffee"], "relevant": True},
                400,
                "Image paths are not accepted",
            ),
            ({"q": "dog + + cat", "content_id": ids["coffee"], "relevant": True}, 400, "position 5"),
            ({"q": "a cup", "content_id": 99999, "relevant": True}, 404, "No image with this id"),
            ({"q": "a cup", "content_id": ids["coffee"], "relevant": True, "v": "stale"}, 409, "rebuilt"),
            ({"q": "a cup", "content_id": "x", "relevant": True}, 422, "content_id"),
            ({"q": "a cup", "content_id": -1, "relevant": True}, 422, "content_id"),
        ]:
            answer = client.post("/api/judge", json=body)
            assert answer.status_code == status and problem in answer.json()["error"], (body, answer.text)
    with Index.open(index_dir) as idx:
        assert len(idx.judgements()) == 2
