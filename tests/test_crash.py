"""Crashes and concurrency: kill -9 at random moments, searching while indexing, broken index folders."""

from __future__ import annotations

import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.api import Index
from clipsearch.errors import IndexAccessError, IndexCorruptError, IndexGoneError
from conftest import assert_tidy

KILL_SEED = int(os.environ.get("CLIPSEARCH_KILL_SEED", "20261125"))


def write_corpus(folder: Path, count: int, seed: int) -> None:
    """``count`` small distinct images (noise + a coloured block), half JPEG, half PNG."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 255, size=(48 + i % 32, 64, 3), dtype=np.uint8)
        pixels[8:24, 8:40] = rng.integers(0, 255, size=3)
        Image.fromarray(pixels).save(folder / f"img_{i:04d}.{'jpg' if i % 2 else 'png'}")


def index_cmd(folder: Path, index: Path, model: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "clipsearch", "index", str(folder), "--index", str(index),
            "--model", model, "--quiet", "--json", *extra]  # fmt: skip


def check_exact(index_dir: Path, folder: Path, encoder) -> None:
    """Every file once, catalog and FAISS ids one-to-one, and each file's vector its own."""
    files = sorted(str(p) for p in folder.iterdir())
    with Index.open(index_dir, encoder=encoder) as idx:
        catalog = idx.catalog
        rows = catalog.files_under(str(folder))
        assert sorted(rows) == files
        assert all(state.content_id is not None and state.error is None for state in rows.values())
        content_ids = {r[0] for r in catalog.conn.execute("SELECT id FROM contents")}
        assert {state.content_id for state in rows.values()} == content_ids  # no orphan contents
        store_ids = idx.store.ids()
        assert len(store_ids) == len(set(store_ids.tolist()))  # no duplicate vectors
        views = set(catalog.view_ids_of(sorted(content_ids)))  # wide pictures' side views
        assert set(store_ids.tolist()) == content_ids | views  # no orphan or missing vectors
        for path in random.Random(0).sample(files, 15):
            first = idx.search_image(path, k=1)[0]
            assert first.path == path and first.score > 0.999
    assert_tidy(index_dir)


def rewrite_some(folder: Path, rng: random.Random, count: int) -> None:
    """New pixels in ``count`` of the folder's images (names and formats kept): work for the next run."""
    for path in rng.sample(sorted(p for p in folder.iterdir() if p.is_file()), count):
        pixels = np.random.default_rng(rng.randrange(1 << 30)).integers(
            0, 255, size=(56, 64, 3), dtype=np.uint8
        )
        Image.fromarray(pixels).save(path, format="JPEG" if path.suffix == ".jpg" else "PNG")


@pytest.mark.slow
def test_kill_9_at_random_moments_then_resume(tmp_path, tiny_model, tiny_encoder) -> None:
    """kill -9 at random moments of runs that add, change and remove files; then one run resumes.

    Each kill falls at a random share of how long the last run that was let finish took, so kills
    land inside runs however fast the machine is; every run finds files changed since the last."""
    folder, index_dir = tmp_path / "photos", tmp_path / "idx"
    write_corpus(folder, 300, seed=1)
    rng = random.Random(KILL_SEED)
    kills, duration = 0, 8.0
    for attempt in range(60):
        if kills >= 10:
            break
        started = time.monotonic()
        proc = subprocess.Popen(index_cmd(folder, index_dir, tiny_model, "--batch-size", "8"),
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
        try:
            proc.wait(timeout=rng.uniform(0.15, 0.95) * duration)
            duration = time.monotonic() - started  # it finished first: kill sooner next time
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            kills += 1
        proc.communicate()
        rewrite_some(folder, rng, 40)
        if attempt % 4 == 3:  # now and then add and remove files between crashes
            write_corpus(folder / "more", 10, seed=attempt)
            for extra in sorted((folder / "more").iterdir())[: rng.randint(0, 5)]:
                extra.unlink()
    assert kills >= 10, f"only {kills} kills landed during a run (seed {KILL_SEED})"
    final = subprocess.run(
        index_cmd(folder, index_dir, tiny_model), capture_output=True, text=True, timeout=300
    )
    assert final.returncode == 0, final.stderr
    (folder / "more").exists() and shutil.move(str(folder / "more"), str(tmp_path / "more"))
    subprocess.run(index_cmd(folder, index_dir, tiny_model), capture_output=True, check=True, timeout=300)
    check_exact(index_dir, folder, tiny_encoder)


@pytest.mark.slow
def test_search_and_info_while_indexing(tmp_path, tiny_model) -> None:
    folder, index_dir = tmp_path / "photos", tmp_path / "idx"
    write_corpus(folder, 400, seed=2)
    write_corpus(tmp_path / "first", 5, seed=3)
    subprocess.run(index_cmd(tmp_path / "first", index_dir, tiny_model), check=True, capture_output=True)
    writer = subprocess.Popen(index_cmd(folder, index_dir, tiny_model, "--batch-size", "4"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    counts = []
    second = None
    while writer.poll() is None:
        with Index.open(index_dir) as idx:
            counts.append(idx.info()["count"])
            assert len(idx.search_vectors(np.ones(32, dtype=np.float32) / 32**0.5, k=3)[0]) == 3
        if second is None and counts[-1] > 5:
            second = subprocess.run(index_cmd(folder, index_dir, tiny_model), capture_output=True, text=True)
    out, err = writer.communicate()
    assert writer.returncode == 0, err
    assert json.loads(out)["added"] == 400
    assert counts == sorted(counts)  # never went back
    assert any(5 < c < 405 for c in counts), counts  # saw batches land while the writer ran
    assert second is not None and second.returncode == 1 and "is writing to the index" in second.stderr
    with Index.open(index_dir) as idx:
        assert idx.info()["count"] == 405


def test_corrupt_or_foreign_file_where_the_index_should_be(tmp_path) -> None:
    index_dir = tmp_path / "idx"
    index_dir.mkdir()
    (index_dir / "catalog.sqlite").write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(IndexCorruptError, match=r"catalog\.sqlite"):
        Index.open(index_dir)
    result = subprocess.run([sys.executable, "-m", "clipsearch", "info", "--index", str(index_dir)],
                            capture_output=True, text=True)  # fmt: skip
    assert result.returncode == 1 and "is not a clipsearch catalog" in result.stderr
    assert "Traceback" not in result.stderr
    assert (index_dir / "catalog.sqlite").read_bytes() == b"this is not sqlite" * 100  # left alone


def test_index_folder_removed_mid_run(tmp_path, tiny_encoder) -> None:
    write_corpus(tmp_path / "photos", 20, seed=4)
    with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:
        shutil.rmtree(tmp_path / "idx")
        with pytest.raises(IndexGoneError) as info:
            idx.sync([str(tmp_path / "photos")])
    assert str(tmp_path / "idx") in str(info.value) and "was deleted" in str(info.value)
    assert "intact" not in str(info.value)


def _limit_file_size() -> None:
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # writes past the limit fail with EFBIG instead
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))


@pytest.mark.slow
def test_full_disk_keeps_the_existing_index(tmp_path, tiny_model) -> None:
    folder, index_dir = tmp_path / "photos", tmp_path / "idx"
    write_corpus(folder, 30, seed=5)
    subprocess.run(index_cmd(folder, index_dir, tiny_model), check=True, capture_output=True)
    write_corpus(folder / "big", 400, seed=6)
    result = subprocess.run(index_cmd(folder, index_dir, tiny_model), capture_output=True, text=True,
                            preexec_fn=_limit_file_size)  # fmt: skip
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(index_dir) in result.stderr
    with Index.open(index_dir) as idx:
        assert idx.info()["count"] >= 30
    done = subprocess.run(index_cmd(folder, index_dir, tiny_model), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with Index.open(index_dir) as idx:
        assert idx.info()["count"] == 430


@pytest.mark.slow
def test_ctrl_c_stops_fast_keeps_work_and_says_how_to_resume(tmp_path, tiny_model, tiny_encoder) -> None:
    folder, index_dir = tmp_path / "photos", tmp_path / "idx"
    write_corpus(folder, 300, seed=7)
    proc = subprocess.Popen(index_cmd(folder, index_dir, tiny_model, "--batch-size", "4"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # wait until some batches are committed
        time.sleep(0.2)
        if (index_dir / "catalog.sqlite").exists():
            with Index.open(index_dir) as idx:
                if idx.info()["count"] >= 20:
                    break
    proc.send_signal(signal.SIGINT)
    sent = time.monotonic()
    out, err = proc.communicate(timeout=30)
    assert time.monotonic() - sent < 3
    assert proc.returncode == 130, err
    assert "run the same command again to resume" in err and "Traceback" not in err
    report = json.loads(out)
    assert report["interrupted"] is True
    with Index.open(index_dir) as idx:
        kept = idx.info()["count"]
    assert kept >= 20
    resumed = subprocess.run(index_cmd(folder, index_dir, tiny_model), capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr
    assert json.loads(resumed.stdout)["unchanged"] >= kept
    check_exact(index_dir, folder, tiny_encoder)


def test_ctrl_c_while_the_model_loads_exits_cleanly(tmp_path, tiny_model) -> None:
    """The model loads in a background thread; an interrupt then must not abort inside torch."""
    folder, index_dir = tmp_path / "photos", tmp_path / "idx"
    write_corpus(folder, 80, seed=3)
    proc = subprocess.Popen(index_cmd(folder, index_dir, tiny_model),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    time.sleep(1.0)  # importing torch: the loader thread has started, nothing is encoded yet
    proc.send_signal(signal.SIGINT)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == 130, err
    assert "Interrupted" in err and "Traceback" not in err and "terminate called" not in err


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 3 MB file system (tmpfs), where mounting one is allowed (root, no container restriction)."""
    disk = tmp_path / "disk"
    disk.mkdir()
    mount = ["mount", "-t", "tmpfs", "-o", "size=3m", "tmpfs", str(disk)]
    mounted = subprocess.run(mount, capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(f"cannot mount a small file system here: {mounted.stderr.decode().strip()}")
    try:
        yield disk
    finally:
        if subprocess.run(["umount", str(disk)], capture_output=True).returncode != 0:
            subprocess.run(["umount", "--lazy", str(disk)], check=True)  # still busy: detach it anyway


def _fill(disk: Path, leave: int) -> Path:
    """Fill ``disk`` up to ``leave`` bytes of free space."""
    st = os.statvfs(disk)
    filler = disk / "filler"
    filler.write_bytes(b"\0" * max(0, st.f_bavail * st.f_frsize - leave))
    return filler


def test_a_new_index_on_a_nearly_full_disk_is_whole_or_not_there(small_disk: Path) -> None:
    """Creating the catalog used to rename it into place though SQLite could not fold its WAL into
    it, leaving a catalog without tables: every later run said "database disk image is malformed"."""
    from clipsearch.store.catalog import IndexMeta
    from clipsearch.store.folder import IndexFolder

    def meta() -> IndexMeta:
        return IndexMeta("m", "", "0" * 64, 32)

    index_dir = small_disk / "idx"
    outcomes = []
    for free_kb in range(20, 260, 20):
        filler = _fill(small_disk, free_kb * 1024)
        try:
            IndexFolder.open_for_write(index_dir, meta).close()
            outcomes.append("created")
        except IndexAccessError as exc:
            outcomes.append("refused")
            assert str(index_dir) in str(exc)
            assert not index_dir.exists()  # a failed creation leaves nothing behind
        filler.unlink()
        with IndexFolder.open_for_write(index_dir, meta) as folder:  # the next run works
            assert folder.meta == meta()
        with IndexFolder.open(index_dir) as folder:
            assert folder.meta == meta() and folder.info()["count"] == 0
        shutil.rmtree(index_dir)
    assert "refused" in outcomes and "created" in outcomes, outcomes


@pytest.mark.slow  # 8-23 s: the fast tier leaves it to the full suite
def test_index_on_a_nearly_full_disk_says_so_and_the_next_run_completes(
    tmp_path: Path, small_disk: Path, tiny_model: str
) -> None:
    folder, index_dir = tmp_path / "photos", small_disk / "idx"
    write_corpus(folder, 30, seed=12)
    filler = _fill(small_disk, 120 * 1024)
    result = subprocess.run(index_cmd(folder, index_dir, tiny_model), capture_output=True, text=True)
    assert result.returncode == 1 and "Traceback" not in result.stderr, result.stderr
    assert str(index_dir) in result.stderr and "malformed" not in result.stderr
    filler.unlink()
    done = subprocess.run(index_cmd(folder, index_dir, tiny_model), capture_output=True, text=True)
    assert done.returncode == 0, done.stderr
    with Index.open(index_dir) as idx:
        assert idx.info()["count"] == 30


def test_index_folder_deleted_while_indexing_stops_and_says_so(tmp_path: Path, tiny_model: str) -> None:
    """The run used to go on for a minute into the deleted catalog, then claim that everything
    committed before was intact."""
    folder, index_dir = tmp_path / "photos", tmp_path / "idx"
    write_corpus(folder, 300, seed=13)
    proc = subprocess.Popen(index_cmd(folder, index_dir, tiny_model, "--batch-size", "4"),
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if (index_dir / "catalog.sqlite").exists():
            with Index.open(index_dir) as idx:
                if idx.info()["count"] >= 8:
                    break
    shutil.rmtree(index_dir)
    deleted = time.monotonic()
    _, err = proc.communicate(timeout=60)
    assert time.monotonic() - deleted < 5, err
    assert proc.returncode == 1 and "Traceback" not in err, err
    assert f"The index folder {index_dir} was deleted" in err and "intact" not in err
