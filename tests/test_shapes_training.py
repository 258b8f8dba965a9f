"""Training the shapes model: batches are reproducible, the loss falls, the folder loads in open_clip."""

from __future__ import annotations

import hashlib
import itertools
import json
import re
from pathlib import Path

import numpy as np
import open_clip
import pytest
import torch
from safetensors.torch import load_file

from clipsearch.shapes import train, world
from conftest import announced

# A short run from scratch on the scenes in cells (no free shapes): with the shipped share of free
# shapes, whose captions say less, the loss of the first 80 steps falls too little to tell a working
# loop from noise (measured 4.26 -> 3.97); the free-shape mix is checked by the batch tests above.
SHORT = train.TrainConfig(
    steps=80,
    batch_size=64,
    warmup_steps=5,
    lr=2e-3,
    log_every=10,
    workers=0,
    threads=2,
    seed=3,
    free_scenes=0.0,
    free_groups=0.0,
    twins=0,
)


@pytest.fixture(scope="module")
def trained(pytestconfig: pytest.Config) -> tuple[torch.nn.Module, list[tuple[int, float]]]:
    torch.set_num_threads(SHORT.threads)
    what = f"training the shapes model for {SHORT.steps} steps of {SHORT.batch_size} images"
    with announced(pytestconfig, what):
        return train.train(SHORT)


def test_batches_are_a_pure_function_of_seed_and_step() -> None:
    images, captions, labels = train.make_batch(SHORT, 4)
    again, captions_again, labels_again = train.make_batch(SHORT, 4)
    other, _, _ = train.make_batch(SHORT, 5)
    assert images.shape == (SHORT.batch_size, 3, train.IMAGE_SIZE, train.IMAGE_SIZE)
    assert torch.equal(images, again) and torch.equal(labels, labels_again)
    assert captions == captions_again
    assert not torch.equal(images, other)


def test_twins_are_two_pictures_of_one_colour_and_shape_the_first_captioned() -> None:
    config = train.TrainConfig(batch_size=64, twins=16)
    images, captions, labels = train.make_batch(config, 7)
    assert len(captions) == len(set(captions)) == 64
    twins = len(images) - len(captions)
    assert 14 <= twins <= 16  # a twin whose caption was taken already is dropped
    firsts, seconds = labels[64 - twins : 64], labels[64:]
    assert torch.equal(firsts, seconds) and len(set(firsts.tolist())) == twins and (firsts >= 0).all()
    for label, caption in zip(firsts.tolist(), captions[64 - twins :], strict=True):
        color, shape = list(world.COLORS)[label // len(world.SHAPES)], world.SHAPES[label % len(world.SHAPES)]
        assert color in caption and shape in caption
    assert not any(torch.equal(images[i], images[i + twins]) for i in range(64 - twins, 64))  # drawn afresh
    assert set(labels[: 64 - twins].tolist()) >= {-1}  # two-shape scenes have no label


def test_same_kind_loss_pulls_pictures_of_one_label_together() -> None:
    labels = torch.tensor([0, 0, 1, 1, -1, -1])
    rng = torch.Generator().manual_seed(0)
    apart = torch.nn.functional.normalize(torch.randn(6, 16, generator=rng), dim=-1)
    together = apart.clone()
    together[1], together[3] = together[0], together[2]
    assert train.same_kind_loss(together, labels, 0.1) < train.same_kind_loss(apart, labels, 0.1)
    # unlabelled pictures are only negatives: moving them onto an anchor's positive raises the loss
    crowded = together.clone()
    crowded[4] = crowded[0]
    assert train.same_kind_loss(crowded, labels, 0.1) > train.same_kind_loss(together, labels, 0.1)
    alone = torch.tensor([0, 1, -1, -1, 2, 3])
    loss = train.same_kind_loss(apart.requires_grad_(), alone, 0.1)
    assert loss.item() == 0.0 and loss.requires_grad  # no positives: nothing to learn, still a graph


def test_captions_in_a_batch_are_unique_and_groups_name_what_differs() -> None:
    rng = np.random.default_rng(0)
    config = train.TrainConfig(batch_size=64)
    scenes, captions = train.sample_batch(rng, config)
    assert len(scenes) == len(captions) == 64
    assert len(set(captions)) == 64
    position_words = ("left", "right", "top", "bottom", "center", "middle")
    grouped = scenes[: int(64 * config.group_fraction)]
    # Binding pairs: two shapes, the same shapes and places, the colours swapped; captions name colours.
    pairs = [
        (i, a, b)
        for i, (a, b) in enumerate(itertools.pairwise(grouped))
        if len(a.shapes) == len(b.shapes) == 2
        and [(s.shape, s.position) for s in a.shapes] == [(s.shape, s.position) for s in b.shapes]
        and [s.color for s in a.shapes] == [s.color for s in b.shapes][::-1]
    ]
    assert pairs
    for i, a, _ in pairs:
        assert any(s.color in captions[i] for s in a.shapes)
    # Neighbouring grouped scenes alike but for position must both have captions that say where.
    for i in range(len(grouped) - 1):
        x, y = scenes[i].shapes[0], scenes[i + 1].shapes[0]
        if (x.color, x.shape, x.size) == (y.color, y.shape, y.size) and x.position != y.position:
            assert any(w in captions[i] for w in position_words)
            assert any(w in captions[i + 1] for w in position_words)


def test_batches_hold_free_shapes_whose_captions_never_say_where_or_how_large() -> None:
    """Free shapes (anywhere, any size) are a share of the random scenes; the picture cannot tell
    "on the left" or "small" for them, so no caption says it."""
    rng = np.random.default_rng(1)
    config = train.TrainConfig(batch_size=128)
    grouped = int(config.batch_size * config.group_fraction)
    free_single = 0
    for _ in range(4):
        scenes, captions = train.sample_batch(rng, config)
        for i, scene in enumerate(scenes):
            if scene.shapes[0].position == world.FREE_POSITION:
                free_single += i >= grouped
                assert not re.search(r"\b(left|right|top|bottom|center|middle|small|large)\b", captions[i])
    expected = config.free_scenes * 4 * (config.batch_size - grouped)
    assert 0.7 * expected < free_single < 1.3 * expected


def test_shape_and_colour_groups_are_free_shapes_at_the_configured_rate() -> None:
    rng = np.random.default_rng(2)
    only_shape = train.TrainConfig(group_weights=(1.0, 0.0, 0.0, 0.0, 0.0), free_groups=0.5)
    free = 0
    for _ in range(200):
        group = train._group_scenes(rng, only_shape)
        specs = [scene.shapes[0] for scene, _, _ in group]
        assert len({s.color for s in specs}) == 1 and len({s.shape for s in specs}) == len(specs)
        assert all(require == ("shape",) for _, _, require in group)
        placed_freely = {s.position == world.FREE_POSITION for s in specs}
        assert len(placed_freely) == 1  # a group is all free shapes or none
        free += placed_freely.pop()
    assert 70 < free < 130


def test_dataloader_workers_yield_the_same_batches_as_inline() -> None:
    config = train.TrainConfig(steps=3, batch_size=8, workers=1)
    inline = list(train.batches(train.TrainConfig(steps=3, batch_size=8, workers=0)))
    for (images, captions, labels), (expected, expected_captions, expected_labels) in zip(
        train.batches(config), inline, strict=True
    ):
        assert torch.equal(images, expected) and torch.equal(labels, expected_labels)
        assert captions == expected_captions


def test_a_run_can_start_from_a_trained_model_folder(tmp_path: Path) -> None:
    """--init: the run starts from the folder's weights (with a zero learning rate it ends there too),
    and the card names the starting weights by their SHA-256."""
    from clipsearch.shapes import MODEL_DIR

    config = train.TrainConfig(steps=1, batch_size=8, workers=0, lr=0.0, warmup_steps=1, init=str(MODEL_DIR))
    model, _ = train.train(config)
    train.save_model(model, tmp_path)
    start = load_file(str(MODEL_DIR / train.WEIGHTS_FILE))
    end = load_file(str(tmp_path / train.WEIGHTS_FILE))
    assert start.keys() == end.keys()
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    learnt = [key for key in start if not key.endswith(buffers)]
    assert len(learnt) > 50 and all(torch.equal(start[key], end[key]) for key in learnt)
    digest = hashlib.sha256((MODEL_DIR / train.WEIGHTS_FILE).read_bytes()).hexdigest()
    assert digest in train.init_fingerprint(config)
    assert train.init_fingerprint(train.TrainConfig()) == "random (seeded)"


@pytest.mark.slow
def test_loss_falls(trained: tuple[torch.nn.Module, list[tuple[int, float]]]) -> None:
    _, curve = trained
    assert len(curve) == SHORT.steps // SHORT.log_every
    first, last = curve[0][1], curve[-1][1]
    assert last < first - 0.3, curve  # chance level is ln(64) = 4.16; measured 4.27 -> 3.64


@pytest.mark.slow
def test_saved_folder_loads_back_in_open_clip(
    trained: tuple[torch.nn.Module, list[tuple[int, float]]], tmp_path: Path
) -> None:
    model, _ = trained
    train.save_model(model, tmp_path)
    config = json.loads((tmp_path / train.CONFIG_FILE).read_text())
    assert config["preprocess_cfg"]["resize_mode"] == "squash"
    assert (tmp_path / train.WEIGHTS_FILE).stat().st_size < 25 * 2**20

    loaded, _, preprocess = open_clip.create_model_and_transforms(f"local-dir:{tmp_path}")
    assert all(p.dtype == torch.float32 for p in loaded.parameters())
    rng = np.random.default_rng(0)
    image = world.render(world.sample_scene(rng), rng, (150, 100))
    # The loaded folder preprocesses exactly as training did.
    assert torch.equal(preprocess(image), train.inference_transform()(image))

    fresh = train.OpenClipEncoder(
        model, train.inference_transform(), open_clip.get_tokenizer(train.MODEL_NAME)
    )
    reloaded = train.OpenClipEncoder.from_dir(tmp_path)
    texts = ["a red circle", "a large blue star on the left"]
    np.testing.assert_allclose(reloaded.encode_texts(texts), fresh.encode_texts(texts), atol=2e-2)
    vectors = reloaded.encode_images([image, image.convert("L").convert("RGB")])
    np.testing.assert_allclose(
        vectors, fresh.encode_images([image, image.convert("L").convert("RGB")]), atol=2e-2
    )
    assert vectors.dtype == np.float32
    np.testing.assert_allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)


@pytest.mark.slow
def test_command_writes_a_complete_model_folder(tmp_path: Path) -> None:
    out = tmp_path / "model"
    argv = ["--out", str(out), "--steps", "3", "--batch-size", "16", "--workers", "0"]
    assert train.main([*argv, "--eval-copies", "1", "--eval-files", "20"]) == 0
    assert {p.name for p in out.iterdir()} == {train.CONFIG_FILE, train.WEIGHTS_FILE, train.CARD_FILE}
    card = (out / train.CARD_FILE).read_text()
    for metric in ("text_to_image", "image_to_image", "algebra", "subtraction", "position", "size"):
        assert f"| {metric} |" in card
    assert "| 3 |" in card  # the loss table


@pytest.mark.parametrize("bad", [["--twins", "-1"], ["--twin-weight", "-0.5"], ["--twin-temperature", "0"]])
def test_command_refuses_bad_twin_settings(tmp_path: Path, bad: list[str], capsys) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(SystemExit) as exit_info:
        train.main(["--out", str(tmp_path / "model"), *bad])
    assert exit_info.value.code == 2
    assert "--twin-temperature above 0" in capsys.readouterr().err
    assert not (tmp_path / "model").exists()
