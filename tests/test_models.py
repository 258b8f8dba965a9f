"""Model resolution and loading through open_clip, offline, from a pre-populated Hugging Face cache."""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from clipsearch.encoders.loading import load_encoder
from clipsearch.encoders.spec import ModelSpec
from clipsearch.encoders.weights import resolve_weights
from clipsearch.errors import ModelUnavailableError, UsageError


def test_spec_defaults_and_normalisation(tmp_path: Path) -> None:
    assert ModelSpec.parse(None, None) == ModelSpec("ViT-B-32", "laion2b_s34b_b79k")
    assert ModelSpec.parse("shapes", None) == ModelSpec("shapes", "")
    weights = tmp_path / "w.safetensors"
    assert ModelSpec.parse("ViT-B-32", str(weights)).pretrained == str(weights)
    with pytest.raises(UsageError, match="carries its own weights"):
        ModelSpec.parse("hf-hub:org/repo", "laion2b_s34b_b79k")
    with pytest.raises(UsageError, match="needs weights"):
        ModelSpec.parse("RN50", "")


def test_unknown_model_and_tag_are_usage_errors() -> None:
    with pytest.raises(UsageError, match="Unknown model 'ViT-Q-99'"):
        resolve_weights(ModelSpec("ViT-Q-99", "x"))
    with pytest.raises(UsageError, match="laion2b_s34b_b79k"):
        resolve_weights(ModelSpec("ViT-B-32", "no_such_tag"))


def test_missing_local_weights_file(tmp_path: Path) -> None:
    with pytest.raises(ModelUnavailableError, match="does not exist"):
        load_encoder("ViT-B-32", str(tmp_path / "missing.safetensors"))


def test_tiny_hf_hub_model_encodes_unit_float32_rows(tiny_encoder) -> None:
    images = [Image.new("RGB", (50, 40), c) for c in ("red", "blue", "green")]
    vecs = tiny_encoder.encode_images(images, batch_size=2)
    assert vecs.shape == (3, tiny_encoder.dim) and vecs.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vecs, axis=1), 1.0, atol=1e-5)
    again = tiny_encoder.encode_images(images[:1])
    np.testing.assert_allclose(again[0], vecs[0], atol=1e-6)  # eval mode: deterministic
    texts = tiny_encoder.encode_texts(["a cat", "a dog"])
    assert texts.shape == (2, tiny_encoder.dim)
    np.testing.assert_allclose(np.linalg.norm(texts, axis=1), 1.0, atol=1e-5)
    assert tiny_encoder.encode_images([]).shape == (0, tiny_encoder.dim)
    assert not tiny_encoder.model.training


def _stream(weights, precision: str, *, image_only: bool = False, facts: list | None = None):
    from clipsearch.encoders.facts import ModelFacts
    from clipsearch.encoders.loading import _build_streaming

    def built(model, preprocess):
        model.eval()
        found = ModelFacts.of(ModelSpec("test", ""), weights.sha256, model, preprocess)
        (facts if facts is not None else []).append(found)
        return found

    loaded = _build_streaming(weights, precision, "cpu", image_only=image_only, built=built)
    return None if loaded is None else loaded[0]


def test_streamed_weights_equal_open_clip_loading(tiny_model: str, tmp_path: Path) -> None:
    """Our one-tensor-at-a-time loader (no random initialisation) gives exactly open_clip's model."""
    import open_clip
    import torch

    weights = resolve_weights(ModelSpec.parse(tiny_model, None))
    facts: list = []
    streamed = _stream(weights, "fp32", facts=facts)
    reference = open_clip.create_model(tiny_model)
    expected = reference.state_dict()
    for key, value in streamed.state_dict().items():
        assert value.dtype == torch.float32
        torch.testing.assert_close(value, expected[key], rtol=0, atol=0, msg=key)
    assert len(facts) == 1 and facts[0].dim == reference.text_projection.shape[1]
    in_bf16 = _stream(weights, "bf16")
    assert all(p.dtype == torch.bfloat16 for p in in_bf16.parameters())
    # a .bin file, or tensors that do not match the model, go through open_clip's own loader
    torch.save(expected, tmp_path / "weights.bin")
    assert _stream(replace(weights, checkpoint=tmp_path / "weights.bin"), "fp32") is None
    from safetensors.torch import save_file

    save_file(
        {k: v for k, v in expected.items() if k != "logit_scale"}, str(tmp_path / "partial.safetensors")
    )
    assert _stream(replace(weights, checkpoint=tmp_path / "partial.safetensors"), "fp32") is None
    # a truncated file is refused before the model is built (a new index is not created for it)
    data = weights.checkpoint.read_bytes()
    (tmp_path / "cut.safetensors").write_bytes(data[: len(data) - 100])
    facts.clear()
    with pytest.raises(ValueError, match="truncated"):
        _stream(replace(weights, checkpoint=tmp_path / "cut.safetensors"), "fp32", facts=facts)
    assert not facts


def test_image_only_encoder_has_the_image_tower_and_no_text_tower(tiny_model: str, tiny_encoder) -> None:
    from clipsearch.encoders.loading import load_spec

    images = [Image.new("RGB", (50, 40), c) for c in ("red", "blue", "green")]
    image_only = load_spec(tiny_encoder.spec, image_only=True)
    np.testing.assert_allclose(
        image_only.encode_images(images), tiny_encoder.encode_images(images), atol=1e-6
    )
    assert replace(image_only.facts, preprocess=None) == replace(tiny_encoder.facts, preprocess=None)
    text_params = [p for n, p in image_only.model.named_parameters() if not n.startswith("visual.")]
    assert text_params and all(p.is_meta for p in text_params)  # never allocated, never read
    with pytest.raises(RuntimeError, match="without its text tower"):
        image_only.encode_texts(["a cat"])


def test_model_loader_gives_facts_then_the_encoder_and_hands_errors_over(
    tiny_model: str, tiny_encoder, tmp_path: Path
) -> None:
    from clipsearch.encoders.loading import ModelLoader

    loader = ModelLoader(tiny_encoder.spec, image_only=True)
    facts = loader.facts()
    assert (facts.dim, facts.image_size, facts.weights_sha256) == (
        tiny_encoder.dim,
        tiny_encoder.image_size,
        tiny_encoder.weights_sha256,
    )
    assert loader.encoder().facts is facts and not loader.encoder().has_text
    missing = ModelLoader(ModelSpec("ViT-B-32", str(tmp_path / "missing.safetensors")))
    for wait in (missing.facts, missing.encoder):
        with pytest.raises(ModelUnavailableError, match="does not exist"):
            wait()


def test_hf_hub_weights_checksum_is_the_blob_sha256(tiny_model: str, hf_cache: Path) -> None:
    weights = resolve_weights(ModelSpec.parse(tiny_model, None))
    assert weights.checkpoint.resolve().parent.name == "blobs"
    assert weights.sha256 == weights.checkpoint.resolve().name


@pytest.mark.slow
def test_vit_b_32_loads_offline_from_cache_and_from_a_file(vit_b_32_cache: Path) -> None:
    encoder = load_encoder("ViT-B-32", "laion2b_s34b_b79k")
    assert encoder.dim == 512 and encoder.image_size == (224, 224)
    # preprocessing comes from the pretrained tag's config (OpenAI mean/std, bicubic, 224 px)
    pixels = encoder.preprocess(Image.new("RGB", (640, 480), (128, 128, 128)))
    assert tuple(pixels.shape) == (3, 224, 224)
    image_vec = encoder.encode_images([Image.new("RGB", (300, 200), "red")])
    np.testing.assert_allclose(np.linalg.norm(image_vec), 1.0, atol=1e-5)
    # the same weights passed as a local file load too, with the same checksum
    snapshot_file = resolve_weights(encoder.spec).checkpoint  # snapshots/<commit>/open_clip_model.safetensors
    from_file = load_encoder("ViT-B-32", str(snapshot_file))
    assert from_file.weights_sha256 == encoder.weights_sha256
    red = from_file.encode_images([Image.new("RGB", (300, 200), "red")])
    np.testing.assert_allclose(red, image_vec, atol=1e-5)


def run_cli(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "clipsearch", *args], capture_output=True, text=True, env=env, timeout=300
    )


@pytest.mark.slow
def test_missing_weights_offline_gives_one_clear_message(tmp_path: Path, photos: dict[str, Path]) -> None:
    env = {**os.environ, "HF_HUB_CACHE": str(tmp_path / "empty-cache"), "HF_HUB_OFFLINE": "1"}
    result = run_cli(["index", str(photos["coffee"].parent), "--index", str(tmp_path / "idx")], env)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    message = result.stderr
    for needle in (
        "ViT-B-32 (laion2b_s34b_b79k)",  # which model
        "laion/CLIP-ViT-B-32-laion2B-s34B-b79K",  # what was tried
        str(tmp_path / "empty-cache"),  # where it looked
        "--pretrained /path/to/open_clip_model.safetensors",  # how to provide a file
        "HF_HUB_CACHE",  # or a cache
    ):
        assert needle in message, needle
    assert not (tmp_path / "idx").exists() or not any((tmp_path / "idx").iterdir())


def test_building_for_a_checkpoint_allocates_nothing_and_changes_no_global_state(tiny_model: str) -> None:
    """The model is built on the meta device (no memory, no random numbers), in this thread only: torch's
    init functions and default dtype stay as they were, and the weights then fill every tensor."""
    import threading

    import torch
    import torch.nn.modules.activation as activation

    weights = resolve_weights(ModelSpec.parse(tiny_model, None))
    before = (torch.nn.init.normal_, activation.xavier_uniform_, torch.get_default_dtype())
    seen: dict[str, object] = {}

    def other_thread() -> None:  # a module built meanwhile elsewhere gets real, initialised weights
        seen["linear"] = torch.nn.Linear(4, 4)

    def built(model, preprocess):  # type: ignore[no-untyped-def]
        from clipsearch.encoders.facts import ModelFacts

        seen["meta"] = all(p.is_meta for p in model.parameters())
        seen["default_dtype"] = torch.get_default_dtype()
        worker = threading.Thread(target=other_thread)
        worker.start()
        worker.join()
        return ModelFacts.of(ModelSpec("test", ""), weights.sha256, model, preprocess)

    from clipsearch.encoders.loading import _build_streaming

    loaded = _build_streaming(weights, "bf16", "cpu", image_only=False, built=built)
    assert loaded is not None
    model = loaded[0]
    assert seen["meta"] is True and seen["default_dtype"] == torch.float32
    linear = seen["linear"]
    assert not linear.weight.is_meta and linear.weight.abs().sum() > 0  # type: ignore[attr-defined]
    assert (torch.nn.init.normal_, activation.xavier_uniform_, torch.get_default_dtype()) == before
    assert not any(t.is_meta for t in [*model.parameters(), *model.buffers()])
    assert model.attn_mask.shape[0] == model.context_length and torch.isinf(model.attn_mask[0, 1])
