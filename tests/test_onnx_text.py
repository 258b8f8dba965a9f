"""The exported ONNX text encoder: same embeddings and rankings as torch, used only when valid, and a
cold CLI search that never imports torch."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from clipsearch.api import Index
from clipsearch.cli import app
from clipsearch.encoders.cache import ModelCache
from clipsearch.encoders.onnx_export import export_text_encoder
from clipsearch.encoders.onnx_text import (
    SETTINGS_FILE,
    OnnxTextEncoder,
    export_pending,
    load_text_encoder,
    onnx_dir,
    unsupported_file,
)
from clipsearch.ingest.sync import SyncOptions
from clipsearch.store.catalog import IndexMeta

pytestmark = pytest.mark.fresh_model_cache  # these test the export itself


def _cache() -> ModelCache:
    return ModelCache.default()  # the tests' user cache (conftest points XDG_CACHE_HOME at tmp)


def _key(meta: IndexMeta) -> tuple[str, int]:
    return meta.weights_sha256, meta.dim


QUERIES = [
    "a red car",
    "a cat sleeping on a sofa",
    "an astronaut in a space suit",
    "a cup of coffee",
    "coins on a table",
    "a man with a camera",
    "a rocket launch at night",
    "Café crème, naïve façade 🚗 東京",
    "&amp; <b>html</b> entities",
    "",
    "word " * 60,
    "grey",
    "3 dogs and 12 cats",
    "a photo",
]


def write_many_photos(folder: Path, n_crops: int = 6) -> list[Path]:
    """Crops of scikit-image's real photos: enough files for a top-10 to mean something."""
    from conftest import write_photos

    originals = write_photos(folder / "originals")
    out = []
    for name, path in originals.items():
        with Image.open(path) as img:
            full = img.convert("RGB")
        w, h = full.size
        for i in range(n_crops):
            j = i + 1  # never the whole photo: no two files share their bytes
            box = (
                j * w // (3 * n_crops),
                j * h // (4 * n_crops),
                w - j * w // (5 * n_crops),
                h - j * h // 40,
            )
            crop = folder / f"{name}-{i}.png"
            full.crop(box).rotate(90 * (i % 4), expand=True).save(crop)
            out.append(crop)
    return out


def build(index_dir: Path, folder: Path, encoder: object) -> Index:
    from clipsearch.encoders.onnx_text import usable_settings

    with Index.open_for_write(index_dir, encoder) as idx:  # type: ignore[arg-type]
        report = idx.sync([str(folder)])  # the sync exports the text tower once per model and machine
    assert report.text_export == "exported", report
    settings = usable_settings(onnx_dir(_cache(), idx.meta.weights_sha256), *_key(idx.meta))
    assert settings is not None and settings.variable_length  # open_clip's CLIP: only real tokens computed
    return idx


def assert_same_as_torch(index_dir: Path, encoder: object, min_cosine: float = 0.999) -> None:
    with Index.open(index_dir) as fast, Index.open(index_dir, encoder=encoder) as slow:  # type: ignore[arg-type]
        onnx = fast.text_encoder
        assert isinstance(onnx, OnnxTextEncoder)
        assert slow.text_encoder is encoder
        a, b = onnx.encode_texts(QUERIES), encoder.encode_texts(QUERIES)  # type: ignore[attr-defined]
        assert a.dtype == np.float32 and a.shape == b.shape
        np.testing.assert_allclose(np.linalg.norm(a, axis=1), 1.0, atol=1e-5)
        cosines = np.sum(a * b, axis=1)
        assert cosines.min() >= min_cosine, cosines
        for text in [q for q in QUERIES if q.strip()]:
            fast_hits, slow_hits = fast.search_text(text, k=10), slow.search_text(text, k=10)
            assert len(fast_hits) == 10
            assert [h.path for h in fast_hits] == [h.path for h in slow_hits], text
            np.testing.assert_allclose(
                [h.score for h in fast_hits], [h.score for h in slow_hits], atol=1e-4, err_msg=text
            )
        assert fast._encoder is None  # the torch model was never needed


@pytest.mark.slow  # 3-5 s; the fast tier exports the tiny model once anyway (conftest), with the check
def test_tiny_model_onnx_matches_torch(tmp_path: Path, tiny_encoder) -> None:
    folder = tmp_path / "photos"
    write_many_photos(folder)
    build(tmp_path / "index", folder, tiny_encoder)
    assert_same_as_torch(tmp_path / "index", tiny_encoder)


@pytest.mark.slow
def test_shapes_model_onnx_matches_torch(tmp_path: Path) -> None:
    from clipsearch.encoders.loading import load_encoder

    encoder = load_encoder("shapes")
    folder = tmp_path / "photos"
    write_many_photos(folder, n_crops=3)
    build(tmp_path / "index", folder, encoder)
    assert_same_as_torch(tmp_path / "index", encoder)


@pytest.mark.slow
def test_vit_b_32_onnx_matches_torch(tmp_path: Path, vit_b_32_cache: Path) -> None:
    from clipsearch.encoders.loading import load_encoder

    encoder = load_encoder("ViT-B-32", precision="fp32")
    folder = tmp_path / "photos"
    write_many_photos(folder, n_crops=3)
    build(tmp_path / "index", folder, encoder)
    assert_same_as_torch(tmp_path / "index", encoder)


@pytest.mark.slow
def test_full_length_graph_where_the_padding_matters(tmp_path: Path, tiny_encoder) -> None:
    """Pooled at the last position, the padding is part of the answer: the graph must take whole rows."""
    import copy

    from clipsearch.encoders.encoder import Encoder
    from clipsearch.encoders.onnx_export import MIN_COSINE, _causal_text_tower, _export_graph, _min_cosine
    from clipsearch.encoders.onnx_text import open_session, usable_settings
    from clipsearch.encoders.tokenizer import clip_tokenizer
    from clipsearch.store.catalog import IndexMeta

    model = copy.deepcopy(tiny_encoder.model)
    model.text_pool_type = "last"
    encoder = Encoder(
        model,
        tiny_encoder.preprocess,
        tiny_encoder.tokenizer,
        facts=dataclasses.replace(tiny_encoder.facts, weights_sha256="f" * 64),
    )
    assert not _causal_text_tower(model) and _causal_text_tower(tiny_encoder.model)
    meta = IndexMeta(model="test", pretrained="", weights_sha256="f" * 64, dim=encoder.dim)
    (tmp_path / "index").mkdir()
    outcome = export_text_encoder(_cache(), *_key(meta), lambda: encoder)
    assert outcome.created, outcome
    settings = usable_settings(outcome.path, *_key(meta))
    assert settings is not None and not settings.variable_length
    onnx = load_text_encoder(_cache(), *_key(meta))
    assert np.sum(onnx.encode_texts(QUERIES) * encoder.encode_texts(QUERIES), axis=1).min() >= 0.999

    # the check that decides between the graphs does catch a cut graph here
    tokenizer = clip_tokenizer(16)
    cut = tmp_path / "cut.onnx"
    _export_graph(model, tokenizer(["a red car", ""]), cut, variable_length=True)
    assert (
        _min_cosine(OnnxTextEncoder(open_session(cut), tokenizer, encoder.dim, variable_length=True), encoder)
        < MIN_COSINE
    )


@pytest.mark.slow
def test_batches_of_any_size(tmp_path: Path, photos, tiny_encoder) -> None:
    build(tmp_path / "index", photos["coffee"].parent, tiny_encoder)
    with Index.open(tmp_path / "index") as idx:
        onnx = idx.text_encoder
        texts = [f"photo number {i} of a {w}" for i, w in enumerate(["cat", "dog", "car"] * 100)]
        a = onnx.encode_texts(texts, batch_size=256)  # 256 then 44
        assert a.shape == (300, tiny_encoder.dim)
        assert onnx.encode_texts([]).shape == (0, tiny_encoder.dim)
    b = tiny_encoder.encode_texts(texts)
    assert np.sum(a * b, axis=1).min() >= 0.999


@pytest.mark.slow
def test_a_bf16_index_is_exported_from_fp32_weights(tmp_path: Path, tiny_model) -> None:
    from clipsearch.encoders.loading import load_encoder

    bf16 = load_encoder(tiny_model, precision="bf16")
    write_many_photos(tmp_path / "photos", n_crops=2)
    build(tmp_path / "index", tmp_path / "photos", bf16)
    assert_same_as_torch(tmp_path / "index", load_encoder(tiny_model, precision="fp32"), min_cosine=0.99999)


@pytest.mark.slow
def test_export_runs_once_and_is_only_used_for_its_own_weights(tmp_path: Path, photos, tiny_encoder) -> None:
    index_dir = tmp_path / "index"
    idx = build(index_dir, photos["coffee"].parent, tiny_encoder)
    folder = onnx_dir(_cache(), idx.meta.weights_sha256)
    files = ["bpe_merges.json", "model.onnx", "model.onnx.data"]
    assert sorted(p.name for p in folder.iterdir()) == [*files, SETTINGS_FILE]
    assert sorted(json.loads((folder / SETTINGS_FILE).read_text())["files"]) == files
    assert not export_pending(_cache(), *_key(idx.meta))

    def must_not_load() -> None:
        raise AssertionError("the model was loaded although the export exists")

    again = export_text_encoder(_cache(), *_key(idx.meta), must_not_load)  # type: ignore[arg-type]
    assert again.path == folder and not again.created

    settings = json.loads((folder / SETTINGS_FILE).read_text())
    (folder / SETTINGS_FILE).write_text(json.dumps({**settings, "weights_sha256": "0" * 64}))
    assert load_text_encoder(_cache(), *_key(idx.meta)) is None
    assert export_pending(_cache(), *_key(idx.meta))
    with Index.open(index_dir, encoder=tiny_encoder) as reader:
        assert reader.text_encoder is tiny_encoder
    with Index.open(index_dir) as reader:  # falls back to loading the torch model, no error
        assert reader.search_text("a red car", k=3) and reader._encoder is not None

    (folder / SETTINGS_FILE).write_text(json.dumps(settings))
    assert load_text_encoder(_cache(), *_key(idx.meta)) is not None
    graph = folder / "model.onnx"
    graph.write_bytes(b"\0" * graph.stat().st_size)  # damaged in place: onnxruntime refuses it
    assert load_text_encoder(_cache(), *_key(idx.meta)) is None
    with Index.open(index_dir) as reader:  # torch answers, no error
        assert len(reader.search_text("a red car", k=3)) == 3
    graph.write_bytes(b"truncated")
    assert load_text_encoder(_cache(), *_key(idx.meta)) is None and export_pending(_cache(), *_key(idx.meta))

    stale = _cache().text_onnx / ".text-onnx-tmp-999999"  # a crashed export leaves this behind
    stale.mkdir()
    (stale / "model.onnx").write_bytes(b"half")
    with Index.open_for_write(index_dir, tiny_encoder) as writer:
        redone = writer.export_text_encoder()  # replaces the damaged folder
    assert redone.created and load_text_encoder(_cache(), *_key(idx.meta)) is not None
    assert not stale.exists()


def test_unsupported_tokenizer_is_remembered(tmp_path: Path, photos, tiny_encoder) -> None:
    from open_clip.tokenizer import SimpleTokenizer

    from clipsearch.encoders.encoder import Encoder

    index_dir = tmp_path / "index"
    with Index.open_for_write(index_dir, tiny_encoder) as idx:
        idx.sync([str(photos["coffee"].parent)], options=SyncOptions(export_text=False))
    other = Encoder(
        tiny_encoder.model,
        tiny_encoder.preprocess,
        SimpleTokenizer(context_length=16, clean="canonicalize"),
        facts=tiny_encoder.facts,
    )
    loads = []
    outcome = export_text_encoder(_cache(), *_key(idx.meta), lambda: loads.append(1) or other)
    assert outcome.path is None and "tokenizer" in outcome.reason and loads == [1]
    assert not export_pending(_cache(), *_key(idx.meta))  # a re-index will not load the model for it again
    second = export_text_encoder(_cache(), *_key(idx.meta), lambda: loads.append(1) or other)
    assert second.path is None and second.reason == outcome.reason and loads == [1]
    with Index.open(index_dir, encoder=tiny_encoder) as reader:
        assert reader.text_encoder is tiny_encoder and reader.search_text("a cat", k=2)
    assert unsupported_file(onnx_dir(_cache(), idx.meta.weights_sha256)).is_file()  # in the cache
    assert not list(index_dir.glob("*onnx*"))


@pytest.mark.slow
def test_index_command_exports_once_and_keeps_stdout_for_results(tmp_path: Path, photos, tiny_model) -> None:
    runner = CliRunner()
    index_dir = tmp_path / "index"
    first = runner.invoke(
        app, ["index", str(photos["coffee"].parent), "--index", str(index_dir), "--model", tiny_model]
    )
    assert first.exit_code == 0, first.stderr
    lines = first.stdout.splitlines()
    assert len(lines) == 2 and lines[0].startswith("Indexed in") and lines[1] == f"Index: {index_dir}"
    assert "Exporting the text encoder" in first.stderr
    assert len(list(_cache().text_onnx.glob("text-onnx-*/model.onnx"))) == 1  # shared, outside the index
    assert not list(index_dir.glob("*onnx*"))
    second = runner.invoke(app, ["index", "--index", str(index_dir)])
    assert second.exit_code == 0 and "Exporting" not in second.stderr and "Loading model" not in second.stderr


PROBE = """
import json, sys
from clipsearch.cli import app
try:
    app(sys.argv[1:], standalone_mode=False)
finally:
    heavy = sorted({m.split('.')[0] for m in sys.modules} & {'torch', 'open_clip', 'torchvision'})
    print(json.dumps(heavy), file=sys.stderr)
"""


def cold_search(*args: str) -> tuple[list[dict[str, object]], list[str]]:
    """`clipsearch search ... --json` in a fresh interpreter: its hits and the heavy modules it imported."""
    result = subprocess.run(
        [sys.executable, "-c", PROBE, "search", *args, "--json"],
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parents[1])},
    )
    assert result.returncode == 0, result.stderr
    return [json.loads(line) for line in result.stdout.splitlines()], json.loads(
        result.stderr.splitlines()[-1]
    )


@pytest.mark.slow
def test_cold_cli_search_does_not_import_torch(tmp_path: Path, tiny_encoder) -> None:
    folder, index_dir = tmp_path / "photos", tmp_path / "index"
    crops = write_many_photos(folder, n_crops=2)
    build(index_dir, folder, tiny_encoder)
    queries = [
        ["a red car", "-k", "10"],
        ["a cat + coffee:0.5 - rocket", "-k", "5"],
        ["grey", "--image", str(crops[3]), "-k", "5"],  # an indexed image reuses its stored vector
    ]
    fast = []
    for query in queries:
        hits, heavy = cold_search(*query, "--index", str(index_dir))
        assert heavy == [], query
        fast.append(hits)

    shutil.move(next(_cache().text_onnx.glob("text-onnx-*")), tmp_path / "moved-away")
    for query, onnx_hits in zip(queries, fast, strict=True):
        hits, heavy = cold_search(*query, "--index", str(index_dir), "--precision", "fp32")
        assert "torch" in heavy  # the probe does see torch when it is imported
        assert [h["path"] for h in hits] == [h["path"] for h in onnx_hits], query
        np.testing.assert_allclose([h["score"] for h in hits], [h["score"] for h in onnx_hits], atol=1e-4)
