"""Shared fixtures. Every data dir points at tmp; the Hugging Face cache is a session folder we fill."""

from __future__ import annotations

import contextlib
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

# OpenMP threads (FAISS's, torch's) sleep while they wait, as under the CLI (``cli.main`` sets it):
# spinning ones make small FAISS jobs (training a test index) several times slower on a busy machine.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
# huggingface_hub reads these when first imported, so they are set before anything imports it.
HF_CACHE = Path(tempfile.mkdtemp(prefix="clipsearch-test-hf-"))
os.environ["HF_HUB_CACHE"] = str(HF_CACHE)
os.environ["HF_HUB_OFFLINE"] = "1"

from hfcache import TINY_REPO, add_tiny_model, add_vit_b_32  # noqa: E402

TINY_MODEL = f"hf-hub:{TINY_REPO}"

# pytester runs pytest inside a test (test_tiers.py); tiers fails a whole-suite run that imports not
# every clipsearch module (see tests/tiers.py)
pytest_plugins = ["pytester", "tiers"]

SETUPS: list[tuple[str, float]] = []  # (what, seconds) of each announced set-up, for the summary


def pytest_sessionfinish(session: pytest.Session) -> None:
    shutil.rmtree(HF_CACHE, ignore_errors=True)


@contextlib.contextmanager
def announced(config: pytest.Config, what: str) -> Iterator[None]:
    """Say on stderr, past pytest's capture, what a set-up that takes tens of seconds is doing.

    The line shows while it runs (with or without -s); its time goes into the "set-ups" summary."""
    capture = config.pluginmanager.getplugin("capturemanager")
    with capture.global_and_fixture_disabled() if capture else contextlib.nullcontext():
        print(f"\n[set-up] {what} ...", file=sys.stderr, flush=True)
    started = time.monotonic()
    yield
    SETUPS.append((what, time.monotonic() - started))


def pytest_terminal_summary(terminalreporter) -> None:  # type: ignore[no-untyped-def]
    if SETUPS:
        terminalreporter.section("set-ups", sep="-")
        for what, seconds in SETUPS:
            terminalreporter.line(f"{seconds:6.1f}s {what}")


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, request: pytest.FixtureRequest) -> None:
    """No test reads or writes the user's real data folders.

    A test of the tiny model finds its text tower already exported in its (own, empty) cache, as a
    user's second index of a model does: the export costs 2 s, and ~40 tests would pay it. Tests of the
    export itself are marked ``fresh_model_cache`` and start with nothing."""
    monkeypatch.setenv("CLIPSEARCH_INDEX", str(tmp_path / "default-index"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))
    uses_tiny = {"tiny_model", "tiny_encoder"} & set(request.fixturenames)
    if uses_tiny and request.node.get_closest_marker("fresh_model_cache") is None:
        from clipsearch.encoders.cache import ModelCache

        exported: Path = request.getfixturevalue("tiny_text_onnx")
        shutil.copytree(exported, ModelCache.default().text_onnx / exported.name)


@pytest.fixture(scope="session")
def tiny_text_onnx(tiny_encoder, tmp_path_factory: pytest.TempPathFactory) -> Path:  # type: ignore[no-untyped-def]
    """The tiny model's text tower exported once for the session (see ``_isolated_dirs``)."""
    from clipsearch.encoders.cache import ModelCache
    from clipsearch.encoders.onnx_export import export_text_encoder

    cache = ModelCache(tmp_path_factory.mktemp("model-cache"))
    outcome = export_text_encoder(cache, tiny_encoder.weights_sha256, tiny_encoder.dim, lambda: tiny_encoder)
    assert outcome.path is not None, outcome.reason
    return outcome.path


@pytest.fixture(scope="session")
def hf_cache() -> Path:
    return HF_CACHE


@pytest.fixture(scope="session")
def tiny_model(hf_cache: Path) -> str:
    """A tiny random open_clip model in the offline Hugging Face cache, as ``hf-hub:`` name."""
    add_tiny_model(hf_cache)
    return TINY_MODEL


@pytest.fixture(scope="session")
def tiny_encoder(tiny_model: str):  # type: ignore[no-untyped-def]
    from clipsearch.encoders.loading import load_encoder

    return load_encoder(tiny_model)


@pytest.fixture(scope="session")
def vit_b_32_cache(hf_cache: Path, pytestconfig: pytest.Config) -> Path:
    """Random weights of the real ViT-B-32 architecture where laion2b_s34b_b79k's weights would be."""
    with announced(pytestconfig, "writing random ViT-B-32 weights (600 MB) into the test Hugging Face cache"):
        add_vit_b_32(hf_cache)
    return hf_cache


SKIMAGE_PHOTOS = ("astronaut", "chelsea", "coffee", "rocket", "camera", "coins")


def write_photos(folder: Path) -> dict[str, Path]:
    """scikit-image's real photos as JPEG/PNG files; returns name -> path."""
    import numpy as np
    import skimage.data
    from PIL import Image

    folder.mkdir(parents=True, exist_ok=True)
    out = {}
    for i, name in enumerate(SKIMAGE_PHOTOS):
        array = np.asarray(getattr(skimage.data, name)())
        path = folder / f"{name}.{'jpg' if i % 2 == 0 else 'png'}"
        Image.fromarray(array).save(path)
        out[name] = path
    return out


@pytest.fixture
def photos(tmp_path: Path) -> dict[str, Path]:
    return write_photos(tmp_path / "photos")


@pytest.fixture
def index_dir(tmp_path: Path) -> Iterator[Path]:
    yield tmp_path / "index"


def picture_vectors(idx, path: str):  # type: ignore[no-untyped-def]
    """Every stored vector of an indexed file: its main one, then its side views' (a picture's
    search score is the best of them)."""
    import numpy as np

    cid = idx.catalog.file(path).content_id
    return idx.store.reconstruct(np.array([cid, *idx.catalog.view_ids_of([cid])], dtype=np.int64))


def vector_files(index_dir: Path) -> dict[str, tuple[int, int]]:
    """The vector files of an index folder (segments, or a version-1 FAISS file): name -> (inode, mtime)."""
    return {
        p.name: (p.stat().st_ino, p.stat().st_mtime_ns)
        for p in index_dir.iterdir()
        if p.name.startswith(("seg-", "vectors-"))
    }


def assert_tidy(index_dir: Path) -> None:
    """The folder holds the files of the segments its catalog lists, and no other vector file."""
    import sqlite3

    from clipsearch.store.segments import name_of

    with sqlite3.connect(f"file:{index_dir / 'catalog.sqlite'}?mode=ro", uri=True) as conn:
        listed = {row[0] for row in conn.execute("SELECT name FROM segments")}
    files = set(vector_files(index_dir))
    assert {name_of(f) for f in files} == listed, (files, listed)
    assert all(f.endswith((".npy", ".faiss")) for f in files), files


def copy_vector_files(source: Path, target: Path) -> None:
    """Copy an index's vector files beside another's (a test swapping catalogs by hand)."""
    for name in vector_files(source):
        shutil.copy(source / name, target / name)
