"""The shipped shapes model understands its world: every threshold of the metric table holds.

The metrics run on held-out scenes (a seed the model never trained on), rendered in memory and
written to real JPEG/PNG files that are read back EXIF-transposed, as an indexer would read them.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch

from clipsearch.shapes import evaluate, train, world
from clipsearch.shapes.train import CONFIG_FILE, WEIGHTS_FILE, OpenClipEncoder
from conftest import announced

MODEL_DIR = Path(world.__file__).parent / "model"
HELD_OUT_SEED = 777  # differs from training (0) and from the model card's evaluation seed


@pytest.fixture(scope="module")
def encoder() -> evaluate.Encoder:
    """The shipped model, through the package's loader when it exists, else through open_clip directly."""
    assert (MODEL_DIR / CONFIG_FILE).is_file() and (MODEL_DIR / WEIGHTS_FILE).is_file()
    try:
        from clipsearch.encoders.loading import load_encoder
    except ImportError:
        return OpenClipEncoder.from_dir(MODEL_DIR)
    return load_encoder("shapes")


@pytest.fixture(scope="module")
def metrics(
    encoder: evaluate.Encoder, tmp_path_factory: pytest.TempPathFactory, pytestconfig: pytest.Config
) -> evaluate.ShapesMetrics:
    files = tmp_path_factory.mktemp("shapes-files")
    what = "evaluating the shapes model: a gallery of 6 images per scene kind, then 600 real files"
    with announced(pytestconfig, what):
        return evaluate.evaluate(encoder, seed=HELD_OUT_SEED, files_dir=files, copies=6, n_files=600)


@pytest.mark.slow  # the metrics fixture encodes a gallery of 6 images per scene kind and 600 files
@pytest.mark.parametrize("name", sorted(evaluate.THRESHOLDS))
def test_metric_meets_threshold(metrics: evaluate.ShapesMetrics, name: str) -> None:
    value, floor = getattr(metrics, name), evaluate.THRESHOLDS[name]
    assert value >= floor, f"{name} = {value:.3f} < {floor}\n{metrics.table()}"


def test_adapter_and_package_encoder_agree(encoder: evaluate.Encoder) -> None:
    adapter = OpenClipEncoder.from_dir(MODEL_DIR)
    rng = np.random.default_rng(1)
    images = [world.render(world.sample_scene(rng), rng, (200, 120)) for _ in range(4)]
    texts = ["a red circle", "a small blue star at the top"]
    np.testing.assert_allclose(encoder.encode_texts(texts), adapter.encode_texts(texts), atol=1e-5)
    np.testing.assert_allclose(
        encoder.encode_images(images, batch_size=2), adapter.encode_images(images), atol=1e-5
    )


def test_red_circle_query_ranks_red_circles_first(encoder: evaluate.Encoder) -> None:
    rng = np.random.default_rng(2)
    wanted = [world.sample_scene(rng, n_shapes=1, color="red", shape="circle") for _ in range(5)]
    others = [world.sample_scene(rng, n_shapes=1) for _ in range(40)]
    others = [s for s in others if not s.matches(color="red", shape="circle")]
    scenes = wanted + others
    images = [world.render(s, rng, world.sample_image_size(rng, (80, 400))) for s in scenes]
    scores = encoder.encode_images(images) @ encoder.encode_texts(["a red circle"])[0]
    assert set(np.argsort(-scores)[: len(wanted)]) == set(range(len(wanted)))


@pytest.mark.slow  # renders and encodes a 400-image gallery with a random model
def test_metrics_fail_for_an_untrained_model() -> None:
    """The metric code can fail: the same architecture with random weights scores near chance."""
    torch.manual_seed(0)
    train.register_model_config()
    model = open_clip.create_model(train.MODEL_NAME)
    untrained = OpenClipEncoder(model, train.inference_transform(), open_clip.get_tokenizer(train.MODEL_NAME))
    gallery = evaluate.make_gallery(untrained, seed=5, copies=1)
    assert evaluate.precision_at_k(untrained, gallery, evaluate.color_shape_queries()) < 0.3
    assert evaluate.precision_at_k(untrained, gallery, evaluate.position_queries()) < 0.3
