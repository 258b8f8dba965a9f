"""Rebuilds: staged beside the index, swapped in atomically when complete, resumed after a crash.

Readers (a search, `clipsearch serve` holding the index open) use the old index until the swap;
a kill -9 at any moment leaves a complete index (old or new), and running the rebuild again
resumes it.
"""

from __future__ import annotations

import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from test_crash import KILL_SEED, write_corpus
from typer.testing import CliRunner

from clipsearch.api import Index, _SyncModel
from clipsearch.cli import app
from clipsearch.encoders.loading import load_encoder
from clipsearch.ingest.sync import SyncOptions, sync
from clipsearch.store import rebuild as staged
from clipsearch.store.catalog import content_of
from clipsearch.store.folder import IndexFolder
from conftest import assert_tidy, write_photos
from hfcache import add_tiny_model

OTHER_REPO = "clipsearch-test/tiny-clip-other"
runner = CliRunner()


def cli(*args: object):
    return runner.invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def other_model(hf_cache: Path) -> str:
    """A second tiny model (other weights, same size), to tell the old index from the rebuilt one."""
    add_tiny_model(hf_cache, repo=OTHER_REPO, seed=1)
    return f"hf-hub:{OTHER_REPO}"


def assert_complete(index_dir: Path, folder: Path) -> str:
    """A reader finds every file of ``folder`` once, each with its vector, and nothing else; returns
    the model of the index it sees."""
    with Index.open(index_dir) as idx:
        rows = idx.catalog.files_under(str(folder))
        assert sorted(rows) == sorted(str(p) for p in folder.iterdir())
        assert all(state.content_id is not None for state in rows.values())
        contents = {r[0] for r in idx.catalog.conn.execute("SELECT id FROM contents")}
        assert {state.content_id for state in rows.values()} == contents
        views = idx.catalog.view_ids_of(sorted(contents))  # wide pictures' side views
        assert sorted(idx.store.ids().tolist()) == sorted([*contents, *views])
        assert idx.info()["count"] == len(rows)
        return idx.meta.model


def test_rebuild_keeps_every_root_its_settings_and_the_model(tmp_path, tiny_model) -> None:
    """`index --rebuild` with no folder rebuilds every recorded folder (it used to forget them all
    and stop with "No folders to index"); without --model it keeps the index's model and settings."""
    a, b = write_photos(tmp_path / "a"), write_photos(tmp_path / "b")
    (tmp_path / "a" / "raw").mkdir()
    shutil.copy(a["coffee"], tmp_path / "a" / "raw" / "left-out.jpg")
    idx = tmp_path / "idx"
    first = cli("index", tmp_path / "a", "--index", idx, "--model", tiny_model, "--exclude", "raw/")
    assert first.exit_code == 0, first.stderr
    assert cli("index", tmp_path / "b", "--index", idx).exit_code == 0
    before = json.loads(cli("info", "--index", idx, "--json").stdout)
    assert before["count"] == len(a) + len(b)

    result = cli("index", "--rebuild", "--index", idx, "--json")
    assert result.exit_code == 0, result.stderr
    report = json.loads(result.stdout)
    assert (report["added"], report["reused"], report["rebuild"]) == (len(a), len(b), True)  # same pictures
    after = json.loads(cli("info", "--index", idx, "--json").stdout)
    assert after["model"] == tiny_model
    assert after["roots"] == before["roots"] == [str(tmp_path / "a"), str(tmp_path / "b")]
    assert after["root_settings"] == before["root_settings"]
    assert after["root_settings"][0]["exclude"] == ["raw/"]
    assert after["count"] == len(a) + len(b)  # raw/ still left out
    assert not (idx / "rebuild").exists()

    result = cli("index", "--rebuild", tmp_path / "a", "--index", idx, "--json")  # these folders only
    assert result.exit_code == 0, result.stderr
    after = json.loads(cli("info", "--index", idx, "--json").stdout)
    assert (after["model"], after["roots"], after["count"]) == (tiny_model, [str(tmp_path / "a")], len(a))
    assert after["root_settings"][0]["exclude"] == ["raw/"]


def test_searches_use_the_old_index_until_the_rebuild_replaces_it(
    tmp_path, photos, tiny_encoder, other_model
) -> None:
    folder, idx = photos["coffee"].parent, tmp_path / "idx"
    options = SyncOptions(export_text=False, batch_size=2, processes=False)
    with Index.open_for_write(idx, tiny_encoder) as writer:
        writer.sync([str(folder)], options=options)
    held = Index.open(idx, encoder=tiny_encoder)  # as `clipsearch serve` holds it, across the rebuild
    old_hits = [h.path for h in held.search_image(str(photos["rocket"]), k=len(photos))]
    old_ids = set(held.store.ids().tolist())
    seen: list[tuple[str, str, int, bool]] = []

    class SearchMeanwhile:  # the progress callback of the rebuild: searches while it runs
        def start(self, total: int) -> None: ...
        def finish(self) -> None: ...
        def note(self, message: str) -> None: ...

        def advance(self, n: int = 1) -> None:
            with Index.open(idx) as fresh:
                hits = [h.path for h in fresh.search_image(str(photos["rocket"]), k=len(photos))]
                seen.append((fresh.meta.model, held.meta.model, fresh.info()["count"], hits == old_hits))
            assert [h.path for h in held.search_image(str(photos["rocket"]), k=len(photos))] == old_hits

    other = load_encoder(other_model)
    with Index.open_for_write(idx, other, rebuild=True) as writer:
        assert writer.folder.rebuilding and (idx / "rebuild" / "catalog.sqlite").is_file()
        report = writer.sync(None, options=options, progress=SearchMeanwhile())
    assert report.rebuild and report.added == len(photos)
    old = tiny_encoder.spec.name
    assert len(seen) == len(photos) and set(seen) == {(old, old, len(photos), True)}

    assert held.meta.model == old  # the held reader takes up the new index on its next search
    hit = held.search_image(str(photos["rocket"]), k=1)[0]
    assert hit.path == str(photos["rocket"]) and hit.score > 0.99
    assert held.meta.model == other_model and held.search_text("a rocket", k=len(photos))
    assert min(content_of(held.store.ids()).tolist()) > max(
        content_of(np.array(sorted(old_ids))).tolist()
    )  # no reuse
    held.close()
    assert assert_complete(idx, folder) == other_model
    assert not (idx / "rebuild").exists()
    assert_tidy(idx)


def _staged_count(index_dir: Path) -> int:
    info = staged.staged_info(index_dir)
    return -1 if info is None else info["count"]


@pytest.mark.slow  # 8-23 s: the fast tier leaves it to the full suite
def test_kill_9_during_a_rebuild_leaves_a_complete_index_and_rerunning_resumes(
    tmp_path, tiny_model, other_model
) -> None:
    folder, idx = tmp_path / "photos", tmp_path / "idx"
    write_corpus(folder, 60, seed=8)
    subprocess.run([sys.executable, "-m", "clipsearch", "index", str(folder), "--index", str(idx),
                    "--model", tiny_model, "--quiet"], check=True, capture_output=True)  # fmt: skip
    rebuild = [sys.executable, "-m", "clipsearch", "index", "--rebuild", "--index", str(idx), "--model",
               other_model, "--quiet", "--json", "--batch-size", "2", "--workers", "1"]  # fmt: skip
    held = Index.open(idx)  # a reader that stays open, as `clipsearch serve` does
    rng = random.Random(KILL_SEED)
    resumed_from = []
    # kill moments: while the model loads, once the staging folder exists, after some batches
    # (one of them Ctrl-C, which says how to resume)
    for wait_for, sig in (
        (None, signal.SIGKILL),
        (0, signal.SIGKILL),
        (8, signal.SIGINT),
        (26, signal.SIGKILL),
    ):
        proc = subprocess.Popen(rebuild, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        deadline = time.monotonic() + 60
        if wait_for is None:
            time.sleep(rng.uniform(0.2, 1.0))
        while wait_for is not None and time.monotonic() < deadline and proc.poll() is None:
            if _staged_count(idx) >= wait_for:
                assert assert_complete(idx, folder) == tiny_model  # searched during the rebuild
                break
            time.sleep(0.01)
        proc.send_signal(sig)
        _, err = proc.communicate(timeout=60)
        if sig == signal.SIGINT:
            assert proc.returncode == 130 and "Traceback" not in err, err
            assert "searches still use" in err and "run the same command again to resume" in err
        assert assert_complete(idx, folder) == tiny_model  # the old index, whole, until the swap
        assert len(held.search_vectors(held.store.reconstruct(held.store.ids()[:1]), k=3)[0]) == 3
        assert held.meta.model == tiny_model
        resumed_from.append(_staged_count(idx))
    assert resumed_from[-1] >= 26, resumed_from  # the last kill came mid-rebuild, with files done
    info = json.loads(cli("info", "--index", idx, "--json").stdout)
    assert info["rebuild"] == {"model": other_model, "pretrained": "", "count": resumed_from[-1]}

    final = subprocess.run(rebuild, capture_output=True, text=True, timeout=300)
    assert final.returncode == 0, final.stderr
    report = json.loads(final.stdout)
    assert report["unchanged"] == resumed_from[-1] and report["added"] == 60 - resumed_from[-1]
    assert assert_complete(idx, folder) == other_model
    assert held.search_text("anything", k=60) and held.meta.model == other_model
    held.close()
    assert not (idx / "rebuild").exists()


def _complete_staged_rebuild(index_dir: Path, folder: Path, old, new) -> None:
    """An index built with ``old``, and beside it a complete rebuild with ``new``, not swapped in yet."""
    options = SyncOptions(export_text=False, processes=False)
    with Index.open_for_write(index_dir, old) as writer:
        writer.sync([str(folder)], options=options)
    with Index.open_for_write(index_dir, new, rebuild=True) as writer:
        sync(writer.folder, _SyncModel(writer), None, options, None)  # the sync, without the swap
        writer.folder.checkpoint()
        staged.mark_complete(writer.folder.catalog)


#: Run the swap in a child process that kills itself (SIGKILL) at one of its steps.
_SWAP_AND_DIE = """
import os, signal, sys
from pathlib import Path
from clipsearch.store import rebuild
from clipsearch.store.catalog import Catalog

root, step = Path(sys.argv[1]), sys.argv[2]

def die(*_):
    os.kill(os.getpid(), signal.SIGKILL)

def after(function, *, when=lambda *a: True):
    def wrapped(*args, **kwargs):
        result = function(*args, **kwargs)
        if when(*args):
            die()
        return result
    return wrapped

if step == "link":  # the new vectors file is in the index folder, the catalog not yet swapped
    rebuild._link_durably = after(rebuild._link_durably)
elif step == "in-transaction":  # inside the swap's transaction, before its commit
    Catalog.set = after(Catalog.set, when=lambda self, key, value: key == rebuild.REBUILD_ID)
elif step == "committed":  # the swap committed, nothing cleaned up
    Catalog.replace_with = after(Catalog.replace_with)
elif step == "sweep":  # old vectors files deleted, the staging folder still there
    rebuild.remove_derived_files = die
elif step == "cleanup":  # the staging folder half deleted: its catalog gone, its vectors left
    rebuild.shutil.rmtree = lambda path, **_: ((Path(path) / "catalog.sqlite").unlink(), die())
rebuild.swap_in(root)
"""


@pytest.mark.parametrize(
    ("step", "swapped"),
    [("link", False), ("in-transaction", False), ("committed", True), ("sweep", True), ("cleanup", True)],
)
def test_kill_9_at_each_step_of_the_swap(tmp_path, tiny_encoder, other_model, step, swapped) -> None:
    folder, index_dir = tmp_path / "photos", tmp_path / "idx"
    write_corpus(folder, 12, seed=9)
    other = load_encoder(other_model)
    _complete_staged_rebuild(index_dir, folder, tiny_encoder, other)
    child = subprocess.run([sys.executable, "-c", _SWAP_AND_DIE, str(index_dir), step], capture_output=True)
    assert child.returncode == -signal.SIGKILL, child.stderr.decode()
    expected = other_model if swapped else tiny_encoder.spec.name
    assert assert_complete(index_dir, folder) == expected  # a reader sees one whole index
    IndexFolder.open_for_write(index_dir).close()  # the next writer finishes the swap, or cleans up
    assert assert_complete(index_dir, folder) == other_model
    assert not (index_dir / "rebuild").exists()
    assert_tidy(index_dir)


def test_a_rebuild_with_another_model_starts_an_unfinished_one_over(
    tmp_path, tiny_encoder, other_model
) -> None:
    folder, index_dir = tmp_path / "photos", tmp_path / "idx"
    write_corpus(folder, 6, seed=10)
    options = SyncOptions(export_text=False, processes=False)
    with Index.open_for_write(index_dir, tiny_encoder) as writer:
        writer.sync([str(folder)], options=options)
    other = load_encoder(other_model)
    with Index.open_for_write(index_dir, other, rebuild=True) as writer:  # interrupted after its sync
        sync(writer.folder, _SyncModel(writer), None, options, None)
    assert staged.staged_info(index_dir) == {"model": other_model, "pretrained": "", "count": 6}
    with Index.open_for_write(index_dir, tiny_encoder, rebuild=True) as writer:  # another model: anew
        report = writer.sync(None, options=options)
    assert (report.added, report.unchanged) == (6, 0)
    assert assert_complete(index_dir, folder) == tiny_encoder.spec.name


def test_a_rebuild_refuses_to_drop_a_missing_folder(tmp_path, tiny_model) -> None:
    idx = tmp_path / "idx"
    a = write_photos(tmp_path / "a")
    write_photos(tmp_path / "b")
    assert cli("index", tmp_path / "a", tmp_path / "b", "--index", idx, "--model", tiny_model).exit_code == 0
    os.rename(tmp_path / "b", tmp_path / "b-unplugged")
    result = cli("index", "--rebuild", "--index", idx)
    assert result.exit_code == 1 and "missing" in result.stderr and "clipsearch forget" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (idx / "rebuild").exists()  # nothing was started
    assert json.loads(cli("info", "--index", idx, "--json").stdout)["count"] == 2 * len(a)


def test_a_running_server_answers_from_the_old_index_then_from_the_new_one(
    tmp_path, photos, tiny_encoder, other_model
) -> None:
    from fastapi.testclient import TestClient

    from clipsearch.web.server import create_app

    folder, idx = photos["coffee"].parent, tmp_path / "idx"
    options = SyncOptions(export_text=False, processes=False)
    with Index.open_for_write(idx, tiny_encoder) as writer:
        writer.sync([str(folder)], options=options)
    old = tiny_encoder.spec.name

    def answers(client: TestClient) -> tuple[str, list[str]]:
        search = client.get("/api/search", params={"q": "a rocket", "k": 10})
        assert search.status_code == 200, search.text
        first = search.json()["results"][0]["content_id"]
        similar = client.get(f"/api/similar/{first}")
        assert similar.status_code == 200, similar.text
        return client.get("/api/info").json()["model"], sorted(r["path"] for r in search.json()["results"])

    with TestClient(create_app(idx), base_url="http://127.0.0.1") as client:
        assert answers(client) == (old, sorted(str(p) for p in photos.values()))

        class AskTheServer:  # while the rebuild runs
            def start(self, total: int) -> None: ...
            def finish(self) -> None: ...
            def note(self, message: str) -> None: ...

            def advance(self, n: int = 1) -> None:
                assert answers(client)[0] == old

        with Index.open_for_write(idx, load_encoder(other_model), rebuild=True) as writer:
            writer.sync(None, options=options, progress=AskTheServer())
        assert answers(client) == (other_model, sorted(str(p) for p in photos.values()))
