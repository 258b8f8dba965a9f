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
def _isolated_dirs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """No test reads or writes the user's real data folders."""
    monkeypatch.setenv("CLIPSEARCH_INDEX", str(tmp_path / "default-index"))
    monkeypatch.setenv("XDG_DATA_HOME", str(tmp_path / "xdg-data"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg-cache"))


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
