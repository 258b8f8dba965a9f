"""Indexing on Ray (``clipsearch index --ray``): real Ray, real clusters on this machine, no mocks.

Every Ray these tests start lives in its own short temporary folder (Ray's sockets must fit in
107 bytes): a cluster started with ``ray start --temp-dir``, or a Ray that ``--ray local`` starts,
through ``RAY_TMPDIR``. Each test stops what it started, by process group and by that folder,
never with ``ray stop`` (which would stop every Ray on the machine). Ray's token authentication is
off (``RAY_AUTH_MODE=disabled``): it would write a token into the home folder.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from raycluster import Cluster, committed, kill_ray, ray_env, wait_gone
from test_crash import check_exact
from test_odd_files import write_corpus as write_odd_corpus

from clipsearch.api import Index
from clipsearch.encoders.cache import ModelCache
from clipsearch.encoders.facts import ModelPreview
from clipsearch.ingest.decode import file_digest
from clipsearch.ingest.importer import ImportItem
from clipsearch.ingest.scan import FileRecord
from clipsearch.ingest.sync import SyncOptions
from clipsearch.store.codes import TRAIN_MIN
from videos import scene, write_video

# -- helpers: Ray's processes, clusters, runs ------------------------------------------------


@pytest.fixture
def ray_tmp() -> Iterator[Path]:
    """A short folder for Ray's sessions; whatever Ray left running there is killed after the test."""
    folder = Path(tempfile.mkdtemp(prefix="csray-", dir="/tmp"))
    try:
        yield folder
    finally:
        kill_ray(folder)
        wait_gone(folder, 10)
        shutil.rmtree(folder, ignore_errors=True)


def index_cmd(folder: Path, index: Path, model: str, *extra: str) -> list[str]:
    return [sys.executable, "-m", "clipsearch", "index", str(folder), "--index", str(index),
            "--model", model, "--precision", "fp32", "--json", *extra]  # fmt: skip


@pytest.fixture
def cluster(ray_tmp: Path) -> Iterator[Cluster]:
    made = Cluster(ray_tmp)
    try:
        yield made
    finally:
        made.stop()


def noise_corpus(folder: Path, count: int, size: int, seed: int) -> None:
    """``count`` distinct square PNGs of ``size`` pixels (slow enough to decode to be caught mid-run)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True, exist_ok=True)
    for i in range(count):
        pixels = rng.integers(0, 255, size=(size // 8, size // 8, 3), dtype=np.uint8)
        image = Image.fromarray(pixels).resize((size, size), Image.Resampling.BILINEAR)
        image.save(folder / f"img_{i:04d}.png", compress_level=1)


def vectors_by_path(index: Path, encoder) -> dict[str, np.ndarray]:  # type: ignore[no-untyped-def]
    """Every indexed file's vectors (main, then side views), by path."""
    from conftest import picture_vectors

    with Index.open(index, encoder=encoder) as idx:
        rows = idx.catalog.files_under("/")
        return {p: picture_vectors(idx, p) for p, s in rows.items() if s.content_id is not None}


def assert_same_index(ray_index: Path, local_index: Path, encoder) -> None:  # type: ignore[no-untyped-def]
    """Same files, same skips with the same reasons, vectors within cosine 0.9999."""
    with Index.open(ray_index, encoder=encoder) as a, Index.open(local_index, encoder=encoder) as b:
        # fewer vectors than sq8 ranges are learnt from: stored as fp16, compared closely
        assert len(a.store) < TRAIN_MIN and len(b.store) < TRAIN_MIN
        assert a.skipped() == b.skipped()
        assert sorted(a.catalog.files_under("/")) == sorted(b.catalog.files_under("/"))
    ours, theirs = vectors_by_path(ray_index, encoder), vectors_by_path(local_index, encoder)
    assert sorted(ours) == sorted(theirs)
    for path, vectors in ours.items():
        assert vectors.shape == theirs[path].shape, path  # the same side views
        norms = np.linalg.norm(vectors, axis=1) * np.linalg.norm(theirs[path], axis=1)
        cosines = np.sum(vectors * theirs[path], axis=1) / norms  # stored in fp16: lengths ~1 +- 1e-4
        assert cosines.min() >= 0.9999, (path, cosines)


# -- without Ray, and the option's values (fast) ---------------------------------------------


def test_without_ray_the_option_says_how_to_install_it_and_nothing_else_imports_ray(
    tmp_path, photos, monkeypatch
) -> None:
    from typer.testing import CliRunner

    from clipsearch.cli import app

    monkeypatch.setenv("RAY_BACKEND_LOG_LEVEL", "fatal")  # what the CLI sets for Ray: undone after
    runner = CliRunner()
    bad = runner.invoke(app, ["index", str(photos["coffee"].parent), "--ray", "clusterhead"])
    assert bad.exit_code == 2 and "give the Ray cluster's address" in bad.output

    monkeypatch.setitem(sys.modules, "ray", None)  # what `import ray` meets without Ray installed
    monkeypatch.setitem(sys.modules, "ray.data", None)
    result = runner.invoke(app, ["index", str(photos["coffee"].parent), "--ray", "local"])
    assert result.exit_code == 1, result.output
    assert "pip install 'clipsearch[ray]'" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "default-index").exists()  # said before any work

    code = (
        "import sys, pkgutil, importlib, clipsearch\n"
        "for m in pkgutil.walk_packages(clipsearch.__path__, 'clipsearch.'):\n"
        "    importlib.import_module(m.name)\n"
        "print(sorted(n for n in sys.modules if n == 'ray' or n.startswith('ray.')))\n"
    )
    imported = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert imported.returncode == 0, imported.stderr
    assert imported.stdout.strip() == "[]"  # every module of the package imports, none imports Ray


# -- a local Ray ----------------------------------------------------------------------------


@pytest.mark.slow
def test_a_local_ray_indexes_as_the_local_engine_then_reencodes_only_new_content(
    tmp_path, tiny_model, tiny_encoder, ray_tmp
) -> None:
    folder = tmp_path / "odd"
    write_odd_corpus(folder)  # every format and orientation, corrupt files, a bomb; side views
    for name in (
        "exif-2.jpg",
        "exif-3.jpg",
        "exif-4.jpg",
        "exif-5.jpg",
        "exif-7.jpg",
        "cmyk.tif",
        "sixteen-bit.tif",
    ):
        (folder / name).unlink()  # under 64 vectors, kept exact (not 8-bit): compared to 1e-4
    Image.new("RGB", (40, 30), "purple").save(folder / os.fsdecode(b"caf\xe9.png"))  # not UTF-8
    os.mkfifo(folder / "pipe.jpg")  # not-a-file: never opened
    # a video: indexed on this machine by the local engine, its moments as a local run makes them
    write_video(folder / "clip.mp4", [(1.0, scene("yellow", "square")), (1.0, scene("blue", "star"))])
    # unreadable, even by root: a regular file (as stat sees it) whose read fails with EIO
    os.symlink("/proc/self/mem", folder / "unreadable.jpg")
    if os.geteuid() != 0:
        Image.new("RGB", (40, 30), "navy").save(folder / "secret.png")
        (folder / "secret.png").chmod(0)
    local, on_ray = tmp_path / "local", tmp_path / "ray"
    options = SyncOptions(export_text=False)

    def sync_local() -> dict:
        with Index.open_for_write(local, tiny_encoder) as idx:
            return idx.sync([str(folder)], options=options).to_dict()

    def sync_ray() -> dict:
        run = subprocess.run(index_cmd(folder, on_ray, tiny_model, "--ray", "local"),
                             capture_output=True, text=True, timeout=600, env=ray_env(ray_tmp))  # fmt: skip
        assert run.returncode == 0, run.stderr
        assert "Traceback" not in run.stderr
        assert wait_gone(ray_tmp, 30) == []  # the Ray it started is stopped
        return json.loads(run.stdout)

    first, expected = sync_ray(), sync_local()
    counts = (
        "added",
        "updated",
        "reused",
        "removed",
        "unchanged",
        "skipped",
        "skip_reasons",
        "videos",
        "moments",
    )
    assert {k: first[k] for k in counts} == {k: expected[k] for k in counts}
    assert first["skip_reasons"]["not-a-file"] == 1 and first["skipped"] >= 8
    assert first["skip_reasons"]["unreadable"] == (1 if os.geteuid() == 0 else 2)
    assert first["skip_reasons"]["corrupt"] >= 2 and first["skip_reasons"]["too-large"] >= 1
    assert first["videos"] == 1 and first["moments"] >= 1
    read = sum(n["read"] for n in first["nodes"].values())
    assert read == first["added"] + first["reused"] + first["skipped"] - first["videos"]  # photos on Ray
    assert_same_index(on_ray, local, tiny_encoder)

    # a rename, a copy, deletions and two new pictures: only the new ones are encoded
    (folder / "unreadable.jpg").unlink()  # /proc/self: another process each run, another stat
    (folder / "gray.png").rename(folder / "grey.png")
    shutil.copy(folder / "still.webp", folder / "still-copy.webp")
    (folder / "plain.bmp").unlink()
    Image.new("RGB", (48, 48), "orange").save(folder / "new-orange.png")
    Image.new("RGB", (48, 48), "teal").save(folder / "new-teal.png")
    # a content of the index whose hash starts like new-teal's: workers take new-teal for known,
    # and the driver, which checks whole hashes, has it decoded after all
    teal = file_digest((folder / "new-teal.png").read_bytes())
    twin = teal[:16] + ("0" if teal[16] != "0" else "1") + teal[17:]
    stray = ImportItem(FileRecord(str(folder / "gone.png"), 1, 1), twin, tiny_encoder.encode_images(
        [Image.new("RGB", (48, 48), "black")])[0], 48, 48)  # fmt: skip
    with Index.open_for_write(on_ray, tiny_encoder) as idx:
        idx.import_vectors([[stray]], weights_sha256=tiny_encoder.weights_sha256)
    second, expected = sync_ray(), sync_local()
    assert (second["added"], second["reused"], second["removed"]) == (2, 2, 4)  # gone.png went too
    assert {k: second[k] for k in counts if k != "removed"} == {
        k: expected[k] for k in counts if k != "removed"
    }
    assert sum(n["encoded"] for n in second["nodes"].values()) == 2  # two square pictures, a vector each
    assert sum(n["read"] for n in second["nodes"].values()) == 5  # 4 to do, new-teal read twice
    assert_same_index(on_ray, local, tiny_encoder)


@pytest.mark.slow
def test_kill_9_of_the_driver_then_a_local_run_finishes_the_same_index(tmp_path, tiny_model, tiny_encoder,
                                                                         ray_tmp) -> None:  # fmt: skip
    folder, index = tmp_path / "photos", tmp_path / "idx"
    noise_corpus(folder, 480, 320, seed=1)  # enough for several commits of the run
    command = index_cmd(folder, index, tiny_model, "--ray", "local", "--batch-size", "4")
    driver = subprocess.Popen(
        command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=ray_env(ray_tmp)
    )
    deadline = time.monotonic() + 300
    while committed(index) < 8 and driver.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert driver.poll() is None, f"the run ended before it could be killed: {driver.stderr.read()[-2000:]}"
    driver.send_signal(signal.SIGKILL)
    driver.communicate()
    done = committed(index)
    assert 0 < done < 480
    # the Ray that the driver started shares its fate (its processes end with it)
    assert wait_gone(ray_tmp, 60) == []
    final = subprocess.run(index_cmd(folder, index, tiny_model), capture_output=True, text=True, timeout=600)
    assert final.returncode == 0, final.stderr
    report = json.loads(final.stdout)
    assert report["added"] + report["unchanged"] == 480 and report["unchanged"] >= done
    check_exact(index, folder, tiny_encoder)  # nothing lost, nothing twice


# -- a cluster of two nodes on this machine ---------------------------------------------------


@pytest.mark.slow
def test_a_two_node_cluster_indexes_everything_once_though_a_node_dies_mid_run(
    tmp_path, tiny_model, tiny_encoder, cluster
) -> None:
    folder, index = tmp_path / "photos", tmp_path / "idx"
    noise_corpus(folder, 240, 320, seed=2)
    cluster.start("head", head=True)
    cluster.start("second")
    driver = subprocess.Popen(index_cmd(folder, index, tiny_model, "--ray", "auto", "--batch-size", "4"),
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                              env=ray_env(cluster.folder, RAY_ADDRESS=cluster.address))  # fmt: skip
    deadline = time.monotonic() + 300
    while committed(index) == 0 and driver.poll() is None and time.monotonic() < deadline:  # ~1 s of results
        time.sleep(0.2)
    assert driver.poll() is None, f"the run ended before a node could be killed: {driver.stderr.read()}"
    cluster.kill("second")  # its raylet's process group: the node and its workers are gone
    killed_at = committed(index)
    out, err = driver.communicate(timeout=600)
    assert driver.returncode == 0, err
    assert killed_at < 240
    print(f"the second node was killed after {killed_at} of 240 files were committed")
    assert out.strip(), err
    report = json.loads(out)
    assert report["added"] == 240 and report["skipped"] == 0
    assert len(report["nodes"]) == 2  # work landed on both nodes
    assert all(n["read"] > 0 for n in report["nodes"].values()), report["nodes"]
    assert sum(n["read"] for n in report["nodes"].values()) == 240
    check_exact(index, folder, tiny_encoder)  # every file once, every vector once


@pytest.mark.slow
def test_a_node_that_cannot_see_the_photos_is_named_before_any_work(tmp_path, tiny_model, cluster) -> None:
    folder, index = tmp_path / "photos", tmp_path / "idx"
    noise_corpus(folder, 4, 64, seed=3)
    cluster.start("head", head=True)
    # the second node runs in its own mount namespace, where an empty file system hides the photos
    hidden = f'mount -t tmpfs none "{folder}" && exec "$@"'
    hide = ["unshare", "--mount", "--propagation", "private", "sh", "-c", hidden, "sh"]
    cluster.start("blind", wrap=hide)
    env = ray_env(cluster.folder, RAY_ADDRESS=cluster.address)
    command = index_cmd(folder, index, tiny_model, "--ray", "auto")
    run = subprocess.run(command, capture_output=True, text=True, timeout=600, env=env)
    assert run.returncode == 1, run.stderr
    assert "cannot read " + str(folder) in run.stderr and "same path on every machine" in run.stderr
    assert "without --ray" in run.stderr and "Traceback" not in run.stderr
    assert committed(index) == 0


# -- the model: checked where it is loaded, never loaded here ---------------------------------


@pytest.mark.slow
def test_the_driver_never_loads_the_model_and_a_wrong_preview_is_caught_before_any_commit(
    tmp_path, photos, tiny_encoder, ray_tmp, monkeypatch
) -> None:
    """The files are decoded with the preview of the model kept on this machine, and each actor
    checks it against the model it loaded: a wrong one (the weights file was replaced) costs a
    second pass, never a wrong vector; a right one means this machine never loads the model."""
    import ray
    from test_index import assert_vectors_are_the_models

    from clipsearch.ingest.ray_engine import RayOptions

    for key, value in ray_env(ray_tmp).items():
        monkeypatch.setenv(key, value)
    spec, transform = tiny_encoder.spec, tiny_encoder.pixel_transform
    wrong = ModelPreview("0" * 64, tiny_encoder.dim + 1, (48, 48), replace(transform, height=48, width=48))
    ModelCache.default().remember_preview(spec, wrong)
    folder = photos["coffee"].parent
    ray.init(address="local", num_cpus=2, include_dashboard=False, log_to_driver=False)
    try:  # a process already connected to Ray: the engine uses that connection, and leaves it open
        with Index.open_for_write(tmp_path / "first", spec=spec, encode_here=False) as idx:
            assert idx.meta.dim == tiny_encoder.dim + 1  # made from the (wrong) preview
            report = idx.sync([str(folder)], options=SyncOptions(export_text=False), ray=RayOptions())
            assert (idx.meta.dim, idx.meta.weights_sha256) == (tiny_encoder.dim, tiny_encoder.weights_sha256)
            assert report.added == len(photos) and report.skipped == 0
            assert_vectors_are_the_models(idx, photos, tiny_encoder)
        assert ModelCache.default().preview(spec) == ModelPreview.of(tiny_encoder.facts)  # corrected
        notes: list[str] = []
        gone = folder / "gone-before-read.png"
        Image.new("RGB", (40, 30), "olive").save(gone)

        class Notes:  # the driver's progress: a note with the rate of each node, the time left
            def start(self, total: int) -> None:
                gone.unlink()  # planned, then gone before a worker reads it: skipped as locally

            def advance(self, n: int = 1) -> None: ...
            def finish(self) -> None: ...
            def note(self, message: str) -> None:
                notes.append(message)

        with Index.open_for_write(tmp_path / "second", spec=spec, encode_here=False) as idx:
            options = SyncOptions(export_text=False, batch_size=2)  # three result batches
            report = idx.sync(
                [str(folder)], options=options, progress=Notes(), ray=RayOptions(report_every=0)
            )
            assert report.added == len(photos) and report.skip_reasons == {"missing": 1}
            assert idx.skipped() == [(str(gone), "missing: the file disappeared before it could be read")]
            assert not idx.encoder_loaded and not idx.model_loading  # the model was loaded on Ray only
            assert_vectors_are_the_models(idx, photos, tiny_encoder)
        rates = [n for n in notes if "files/s per node" in n]
        assert rates and all(" left;" in n and "files/s, about " in n for n in rates), notes
        assert ray.is_initialized()
    finally:
        ray.shutdown()


def test_the_known_hash_keys_find_every_known_hash_and_few_others() -> None:
    """The set workers check before decoding: a content hash is found by its 64-bit key (any hash
    an imported content has, hex or not); the driver checks whole hashes after."""
    from clipsearch.ingest.ray_workers import digest_key, has_key, known_keys

    rng = np.random.default_rng(0)
    known = [file_digest(rng.bytes(64)) for _ in range(2000)] + ["not-hex-at-all", "ff" * 16]
    other = [file_digest(rng.bytes(64)) for _ in range(2000)]
    keys = known_keys(iter(known))
    assert keys.dtype == np.uint64 and list(keys) == sorted(keys)
    assert all(has_key(keys, d) for d in known)
    assert not any(has_key(keys, d) for d in other)  # 2^-64 each
    assert has_key(keys, known[0][:16] + "0" * 16)  # a shared key: the driver sends it again
    assert digest_key("ff" * 16) == 2**64 - 1 and not has_key(known_keys([]), "00" * 16)


# -- GPUs: one model copy per GPU, on the GPU Ray gives it -------------------------------------


@pytest.mark.slow
def test_a_cluster_with_gpus_gets_a_model_copy_per_gpu_and_a_gpu_torch_cannot_use_is_named(
    tmp_path, photos, tiny_encoder, ray_tmp, monkeypatch
) -> None:
    """A Ray that offers GPUs gets its actors scheduled on them (num_gpus=1 each, encoding on
    ``cuda``). This machine has no GPU torch can use: Ray is told it has two, and the run must
    stop at once with a message naming the node and the GPU, not hang or retry."""
    import ray

    from clipsearch.errors import ClusterError
    from clipsearch.ingest.ray_engine import RayEngine, RayOptions, _cluster

    for key, value in ray_env(ray_tmp).items():
        monkeypatch.setenv(key, value)
    spec = tiny_encoder.spec
    ray.init(address="local", num_cpus=2, num_gpus=2, include_dashboard=False, log_to_driver=False)
    try:
        cluster = _cluster(ray)
        engine = RayEngine(RayOptions(), spec, "fp32")
        assert (cluster.gpus, engine._gpus_per_actor(cluster), engine._actors(cluster)) == (2, 1.0, 2)
        assert RayEngine(RayOptions(gpus_per_actor=0.5), spec, "fp32")._actors(cluster) == 4
        with Index.open_for_write(tmp_path / "idx", spec=spec, encode_here=False) as idx:
            started = time.monotonic()
            with pytest.raises(ClusterError) as info:
                idx.sync([str(photos["coffee"].parent)], options=SyncOptions(export_text=False),
                         ray=RayOptions(retries=1))  # fmt: skip
            assert time.monotonic() - started < 120
        message = str(info.value)
        assert info.value.node and info.value.node in message
        assert "gave the model a GPU there (GPU ids: " in message and "no CUDA device" in message, message
        assert "GPU ids: none" not in message  # scheduled on one of the GPUs Ray was told of
        assert "weights" not in message  # not blamed on the weights file
        assert committed(tmp_path / "idx") == 0
    finally:
        ray.shutdown()


@pytest.mark.slow
def test_the_node_check_does_not_blame_a_node_for_a_file_gone_here_too(
    tmp_path, photos, tiny_encoder, ray_tmp, monkeypatch
) -> None:
    """A file deleted (or changed) between the plan and the check is so for every machine: the
    check compares what the nodes see with what this machine sees then, not at the plan."""
    import ray

    from clipsearch.errors import ClusterError
    from clipsearch.ingest.ray_engine import RayEngine, RayOptions, _cluster
    from clipsearch.ingest.sync import SyncReport, Work

    for key, value in ray_env(ray_tmp).items():
        monkeypatch.setenv(key, value)
    folder = photos["coffee"].parent
    gone, changed = folder / "gone.png", folder / "changed.png"
    Image.new("RGB", (40, 30), "olive").save(gone)
    Image.new("RGB", (40, 30), "olive").save(changed)
    records = [FileRecord(str(p), p.stat().st_size, p.stat().st_mtime_ns) for p in sorted(folder.iterdir())]
    gone.unlink()
    Image.new("RGB", (80, 60), "red").save(changed)
    ray.init(address="local", num_cpus=1, include_dashboard=False, log_to_driver=False)
    try:
        engine = RayEngine(RayOptions(), tiny_encoder.spec, "fp32")
        with Index.open_for_write(tmp_path / "idx", tiny_encoder) as idx:

            def check(root: Path) -> None:
                todo = [(r, None) for r in records]
                work = Work(idx.folder, None, todo, SyncOptions(), None, ((str(root), 10**8),),  # type: ignore[arg-type]
                            SyncReport(index=str(idx.path)))  # fmt: skip
                engine._check_nodes(ray, _cluster(ray), work)

            check(folder)  # gone or changed here too: not the node's fault
            with pytest.raises(ClusterError, match="cannot read"):  # what the check is for
                check(tmp_path / "not-mounted")
    finally:
        ray.shutdown()


def result_rows(root: str, start: int, n: int, dim: int, rng: np.random.Generator) -> dict[str, np.ndarray]:
    """A result batch as the encoder actors send it: ``n`` new photos of one vector each."""
    vectors = rng.standard_normal((n, dim)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    column = np.empty(n, dtype=object)
    for i in range(n):
        column[i] = vectors[i : i + 1]
    rows, text = np.arange(start, start + n), np.full(n, "", dtype=object)
    return {
        "path": np.array([f"{root}/p{r:06d}.jpg".encode() for r in rows], dtype=object),
        "size": rows + 1000,
        "mtime_ns": rows + 10**18,
        "digest": np.array([f"{r:032x}" for r in rows], dtype=object),
        "known": np.zeros(n, bool),
        "reason": text,
        "detail": text,
        "width": np.full(n, 400),
        "height": np.full(n, 300),
        "taken": np.full(n, np.nan),
        "views": text,
        "vectors": column,
    }


def test_the_driver_commits_in_large_transactions_or_every_second(tmp_path, tiny_encoder) -> None:
    """The driver's commits are its bottleneck on a large cluster: a transaction costs ~5 ms
    whatever it holds, so results are committed when ``commit_vectors`` (at least ``batch_size``)
    new vectors or ``commit_every`` files are pending, or ``commit_seconds`` after the last
    commit, whichever comes first: few transactions at full speed, a commit a second when slow."""
    from clipsearch.ingest.ray_engine import RayOptions, _Commits
    from clipsearch.ingest.sync import SyncReport, Work

    root = tmp_path / "photos"
    rng = np.random.default_rng(0)
    with Index.open_for_write(tmp_path / "idx", tiny_encoder, coverage="none") as idx:
        idx.import_vectors([], weights_sha256=tiny_encoder.weights_sha256, roots=[root])
        folder = idx.folder

        def commits(ray: RayOptions, rows: int, every: int = 16) -> tuple[int, int]:
            """Transactions (vector generations) and files committed for ``rows`` rows."""
            work = Work(folder, None, [], SyncOptions(batch_size=32), None, (), SyncReport(str(idx.path)))  # type: ignore[arg-type]
            before = folder.catalog.get_int("gen")
            done = _Commits(work, ray)
            start = committed(idx.path)
            for n in range(0, rows, every):
                done.take(result_rows(str(root), start + n, every, tiny_encoder.dim, rng))
            done.flush()
            return folder.catalog.get_int("gen") - before, work.report.added

        assert commits(RayOptions(), 640) == (2, 640)  # 512 vectors, then the rest (not 20 of 32)
        assert commits(RayOptions(commit_vectors=0), 640) == (20, 640)  # at least batch_size
        assert commits(RayOptions(commit_seconds=0), 64) == (4, 64)  # slow results: each as it comes
