"""Train the tiny shapes CLIP model from scratch and save it as an open_clip ``local-dir:`` folder.

Usage: ``python -m clipsearch.shapes.train --out DIR [--steps N] [--batch-size B] [--seed S] [--threads T]
[--lr LR] [--warmup-steps W] [--twins N] [--twin-weight W] [--init FOLDER]`` (``--init``: start from a
trained model's weights)

The model is a stock open_clip CLIP built from a config registered with ``open_clip.add_model_config``:
a transformer text tower and, as image tower, the small max-pooling CNN of `tower` (a timm-registered
model that open_clip wraps like any timm tower); it learns from fresh `world` scenes every step with
open_clip's tokenizer and ``ClipLoss``, plus an image-to-image term over "twins" (two pictures of one
colour and shape drawn apart: see ``TrainConfig.twins``). DIR receives ``open_clip_config.json``
(model and preprocess config), ``open_clip_model.safetensors`` (fp16) and ``MODEL_CARD.md`` with the
held-out metrics.
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import json
import math
import os
import resource
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import open_clip
import torch
from open_clip.loss import ClipLoss
from PIL import Image
from safetensors.torch import load_file, save_file

from clipsearch.shapes import evaluate, tower, world

MODEL_NAME = "clipsearch-shapes-cnn"
IMAGE_SIZE = 64
MODEL_CFG: dict[str, Any] = {
    "embed_dim": 128,
    "vision_cfg": {
        "image_size": IMAGE_SIZE,
        "timm_model_name": tower.TOWER_NAME,
        "timm_pool": "max",
        "timm_proj": "linear",
    },
    "text_cfg": {"context_length": 32, "vocab_size": 49408, "width": 64, "heads": 4, "layers": 3},
}
# Squash (not crop) so shapes near the left/right edge of wide images stay in view and in place.
PREPROCESS_CFG: dict[str, Any] = {
    "size": IMAGE_SIZE,
    "mode": "RGB",
    "mean": [0.5, 0.5, 0.5],
    "std": [0.25, 0.25, 0.25],
    "interpolation": "bicubic",
    "resize_mode": "squash",
    "fill_color": 0,
}
# Training frames' shorter side in pixels: around the input side, so the model's own resize (bicubic,
# anti-aliased) makes the last step to 64 px as it does for a large photo; larger renders cost time.
RENDER_SHORT_SIDE = (56, 160)
# Shapes as other programs draw them: star depth, cross arm width, proportions and shades vary.
LOOK = world.Look()
CONFIG_FILE = "open_clip_config.json"
WEIGHTS_FILE = "open_clip_model.safetensors"
CARD_FILE = "MODEL_CARD.md"
EVAL_SEED = 20_240_601  # held-out scenes; training streams come from --seed
# In a hard-negative group every scene equals the first except in one attribute, which every caption names.
# A "binding" group is two scenes of two shapes with their colours swapped (a red circle and a blue
# square; a blue circle and a red square): only a model that ties each colour to its shape tells them
# apart, which is what "a red circle" needs in a picture of several shapes.
_GROUP_ATTRIBUTES = ("shape", "position", "size", "color", "binding")
_VALUES = {
    "position": world.POSITIONS,
    "size": world.SIZES,
    "color": tuple(world.COLORS),
    "shape": world.SHAPES,
}


@dataclass(frozen=True)
class TrainConfig:
    """Everything that determines a training run."""

    steps: int = 1400
    batch_size: int = 128
    seed: int = 0
    threads: int = 2
    lr: float = 1.5e-3
    weight_decay: float = 0.1
    warmup_steps: int = 50
    group_fraction: float = 0.5
    group_size: int = 4
    # How often a group varies shape, position, size, colour, or binds colours to shapes. Contrastive
    # learning otherwise settles on the easy attributes (colour) and never learns the others.
    group_weights: tuple[float, ...] = (0.3, 0.15, 0.1, 0.1, 0.35)
    # Share of two-shape scenes (outside groups) whose caption names only one of the shapes, as a
    # query for one object in a busy picture does.
    partial_captions: float = 0.4
    # Share of the scenes outside groups, and of the shape and colour groups, that are free shapes
    # (anywhere in the frame, any size, captions without position or size): pictures made elsewhere
    # put shapes anywhere, not in five cells at two sizes.
    free_scenes: float = 0.4
    free_groups: float = 0.5
    workers: int = 1
    log_every: int = 50
    # Twins: this many single free shapes per step (each of another colour and shape) get a second
    # picture of the same colour and shape drawn afresh (size, place, background, frame), and every
    # picture of one shape is pulled towards the others of its colour and shape by an image-to-image
    # contrastive term of weight ``twin_weight``: text alone never tells the model that a small red
    # circle in a corner and a large one on a gradient are the same thing to look for.
    # Measured (200-step fine-tunes, pictures of two other programs): weight 0.2 at temperature 0.1
    # lifts image -> image top-5 from 0.80/0.84 to 0.89/0.90 and keeps the algebra (0.83/0.86);
    # weight 0.5 or temperature 0.3 pull pictures of a kind so close that img - "red" + "blue" no
    # longer leaves the red cluster (algebra 0.60-0.80).
    twins: int = 32
    twin_weight: float = 0.2
    twin_temperature: float = 0.1
    # A model folder (this config's architecture) whose weights the run starts from instead of random
    # ones: fine-tuning a trained model on a new mix of scenes costs a fraction of a run from scratch.
    init: str | None = None


class OpenClipEncoder:
    """The encoder protocol of `evaluate` over an open_clip model: eval mode, normalised float32 rows."""

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[Sequence[str]], torch.Tensor],
    ) -> None:
        self.model = model.eval()
        self.preprocess = preprocess
        self.tokenizer = tokenizer

    @classmethod
    def from_dir(cls, path: str | Path) -> OpenClipEncoder:
        """Load a saved shapes model folder through open_clip's ``local-dir:`` schema."""
        spec = f"local-dir:{path}"
        model, _, preprocess = open_clip.create_model_and_transforms(spec)
        return cls(model, preprocess, open_clip.get_tokenizer(spec))

    def encode_images(
        self, images: Sequence[Image.Image], *, batch_size: int = 128
    ) -> npt.NDArray[np.float32]:
        """Embed RGB images; returns (n, d) float32 unit rows."""
        chunks = [np.zeros((0, self.dim), dtype=np.float32)]
        with torch.inference_mode():
            for start in range(0, len(images), batch_size):
                batch = torch.stack([self.preprocess(img) for img in images[start : start + batch_size]])
                chunks.append(self.model.encode_image(batch, normalize=True).float().numpy())
        return np.concatenate(chunks)

    def encode_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]:
        """Embed texts; returns (n, d) float32 unit rows."""
        with torch.inference_mode():
            tokens = self.tokenizer(list(texts))
            return self.model.encode_text(tokens, normalize=True).float().numpy()

    @property
    def dim(self) -> int:
        """Embedding dimension."""
        return int(self.model.text_projection.shape[1])


def register_model_config() -> None:
    """Make MODEL_NAME known to open_clip (add_model_config reads a json file named after the model)."""
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"{MODEL_NAME}.json"
        path.write_text(json.dumps(MODEL_CFG))
        open_clip.add_model_config(path)


def _unique_caption(
    scene: world.Scene, rng: np.random.Generator, require: Sequence[str], seen: set[str]
) -> str | None:
    """A caption of scene not yet in seen (duplicates would be false negatives for the CLIP loss)."""
    for attempt in range(4):
        wanted = (*require, "color", "shape", "size", "position") if attempt == 3 else require
        caption = scene.caption(rng, require=wanted)
        if caption not in seen:
            seen.add(caption)
            return caption
    return None


def _only(scene: world.Scene, index: int) -> world.Scene:
    """The scene as described when a caption names only its shape number ``index``."""
    return world.Scene((scene.shapes[index],), scene.background)


# A group: (scene, what its caption describes, attributes the caption must name) per member.
_Group = list[tuple[world.Scene, world.Scene, tuple[str, ...]]]


def _group_scenes(rng: np.random.Generator, config: TrainConfig) -> _Group:
    """Hard negatives: scenes that differ in one attribute only (or in which colour goes with which shape)."""
    attribute = str(rng.choice(_GROUP_ATTRIBUTES, p=config.group_weights))
    if attribute == "binding":
        return _binding_scenes(rng)
    options = _VALUES[attribute]
    values = rng.choice(options, size=min(config.group_size, len(options)), replace=False)
    if attribute in ("shape", "color") and rng.random() < config.free_groups:
        return _free_group(rng, attribute, [str(value) for value in values])
    base = world.sample_scene(rng, n_shapes=1).shapes[0]
    kind = str(rng.choice(world.BACKGROUND_KINDS))
    fixed = {key: getattr(base, key) for key in _VALUES}
    scenes = [
        world.sample_scene(rng, n_shapes=1, background_kind=kind, **{**fixed, attribute: str(value)})
        for value in values
    ]
    return [(scene, scene, (attribute,)) for scene in scenes]


def _free_group(rng: np.random.Generator, attribute: str, values: Sequence[str]) -> _Group:
    """Free shapes of one colour and different shapes (or one shape and different colours)."""
    other = "color" if attribute == "shape" else "shape"
    fixed = {other: str(rng.choice(_VALUES[other]))}
    kind = str(rng.choice(world.BACKGROUND_KINDS))
    scenes = [
        world.sample_free_scene(rng, background_kind=kind, **{**fixed, attribute: value}) for value in values
    ]
    return [(scene, scene, (attribute,)) for scene in scenes]


def _binding_scenes(rng: np.random.Generator) -> _Group:
    """Two two-shape scenes with the shapes' colours swapped; captions name colour and shape."""
    scene = world.sample_scene(rng, n_shapes=2)
    while len({s.color for s in scene.shapes}) < 2 or len({s.shape for s in scene.shapes}) < 2:
        scene = world.sample_scene(rng, n_shapes=2)
    a, b = scene.shapes
    swapped = world.Scene((replace(a, color=b.color), replace(b, color=a.color)), scene.background)
    focus = int(rng.integers(3))  # describe shape 0, shape 1, or both
    require = ("color", "shape")
    if focus == 2:
        return [(scene, scene, require), (swapped, swapped, require)]
    return [(scene, _only(scene, focus), require), (swapped, _only(swapped, focus), require)]


def sample_twins(rng: np.random.Generator, count: int) -> list[tuple[world.Scene, world.Scene]]:
    """``count`` pairs of single free shapes, one pair per colour x shape (none repeated), the two
    pictures of a pair alike in colour and shape only."""
    kinds = [(color, shape) for color in world.COLORS for shape in world.SHAPES]
    chosen = rng.choice(len(kinds), size=min(count, len(kinds)), replace=False)
    return [
        (
            world.sample_free_scene(rng, color=kinds[k][0], shape=kinds[k][1]),
            world.sample_free_scene(rng, color=kinds[k][0], shape=kinds[k][1]),
        )
        for k in chosen
    ]


def sample_batch(rng: np.random.Generator, config: TrainConfig) -> tuple[list[world.Scene], list[str]]:
    """Scenes and unique captions for one step: hard-negative groups first, then random scenes."""
    scenes: list[world.Scene] = []
    captions: list[str] = []
    seen: set[str] = set()
    grouped = int(config.batch_size * config.group_fraction)
    while len(scenes) < config.batch_size:
        if len(scenes) < grouped:
            candidates = _group_scenes(rng, config)
        elif rng.random() < config.free_scenes:
            scene = world.sample_free_scene(rng)
            candidates = [(scene, scene, ())]
        else:
            scene = world.sample_scene(rng)
            described = scene
            if len(scene.shapes) == 2 and rng.random() < config.partial_captions:
                described = _only(scene, int(rng.integers(2)))
            candidates = [(scene, described, ())]
        for scene, described, require in candidates[: config.batch_size - len(scenes)]:
            caption = _unique_caption(described, rng, require, seen)
            if caption is not None:
                scenes.append(scene)
                captions.append(caption)
    return scenes, captions


@functools.cache
def inference_transform() -> Callable[[Image.Image], torch.Tensor]:
    """open_clip's inference transform for PREPROCESS_CFG, the one a loaded model folder gets.

    Training uses it too: augmentation happens in the renderer, and one resize/normalise path at train
    and query time keeps positions and colours calibrated.
    """
    cfg = PREPROCESS_CFG
    return open_clip.image_transform(
        cfg["size"],
        is_train=False,
        mean=tuple(cfg["mean"]),
        std=tuple(cfg["std"]),
        resize_mode=cfg["resize_mode"],
        interpolation=cfg["interpolation"],
    )


#: A training step: the pictures (the captioned ones first, then the twins' second pictures), the
#: captions of the first ones, and per picture the colour x shape label of a single shape (-1 otherwise).
Batch = tuple[torch.Tensor, list[str], torch.Tensor]


def _label(scene: world.Scene) -> int:
    if len(scene.shapes) != 1:
        return -1
    spec = scene.shapes[0]
    return tuple(world.COLORS).index(spec.color) * len(world.SHAPES) + world.SHAPES.index(spec.shape)


def make_batch(config: TrainConfig, step: int) -> Batch:
    """The images (preprocessed), captions and labels of one step; a pure function of seed and step."""
    rng = np.random.default_rng([config.seed, step])
    # twins (at most a quarter of the batch) take their place in it: batch_size captions, plus one
    # uncaptioned picture per twin
    twins = min(config.twins, config.batch_size // 4)
    scenes, captions = sample_batch(rng, replace(config, batch_size=config.batch_size - twins))
    seconds = []
    seen = set(captions)
    for first, second in sample_twins(rng, twins) if twins else ():
        caption = _unique_caption(first, rng, ("color", "shape"), seen)
        if caption is not None:
            scenes.append(first)
            captions.append(caption)
            seconds.append(second)
    scenes += seconds
    sizes = (world.sample_image_size(rng, RENDER_SHORT_SIDE) for _ in scenes)
    images = [world.render(scene, rng, size, look=LOOK) for scene, size in zip(scenes, sizes, strict=True)]
    labels = torch.tensor([_label(scene) for scene in scenes], dtype=torch.long)
    return torch.stack([inference_transform()(img) for img in images]), captions, labels


class _Batches(torch.utils.data.Dataset[Batch]):
    """Step i's batch is item i, so a DataLoader renders upcoming steps in worker processes."""

    def __init__(self, config: TrainConfig) -> None:
        self.config = config

    def __len__(self) -> int:
        return self.config.steps

    def __getitem__(self, step: int) -> Batch:
        return make_batch(self.config, step)


def batches(config: TrainConfig) -> Iterator[Batch]:
    """Yield the training batches in step order, rendered by `config.workers` processes ahead of use."""
    if config.workers == 0:
        return (make_batch(config, step) for step in range(config.steps))
    loader = torch.utils.data.DataLoader(
        _Batches(config), batch_size=None, num_workers=config.workers, prefetch_factor=2
    )
    return iter(loader)


def _lr_at(step: int, config: TrainConfig) -> float:
    """Linear warmup then cosine decay to zero."""
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, config.steps - config.warmup_steps)
    return config.lr * 0.5 * (1 + math.cos(math.pi * progress))


def _optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.AdamW:
    """AdamW with weight decay only on matrices (not gains, biases, norms or the logit scale)."""
    decay = [p for p in model.parameters() if p.ndim >= 2]
    no_decay = [p for p in model.parameters() if p.ndim < 2]
    groups = [
        {"params": decay, "weight_decay": config.weight_decay},
        {"params": no_decay, "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr, betas=(0.9, 0.98), eps=1e-6)


def build_model(seed: int) -> torch.nn.Module:
    """A freshly initialised shapes model, built by open_clip from the registered config."""
    torch.manual_seed(seed)
    register_model_config()
    model = open_clip.create_model(MODEL_NAME, force_preprocess_cfg=PREPROCESS_CFG)
    return model.to(memory_format=torch.channels_last)


def load_weights(model: torch.nn.Module, folder: Path) -> None:
    """Put the weights of a model folder written by `save_model` (same architecture) into model."""
    state = load_file(str(folder / WEIGHTS_FILE))
    own = model.state_dict()
    model.load_state_dict({key: value.to(own[key].dtype) for key, value in state.items()}, strict=True)


def init_fingerprint(config: TrainConfig) -> str:
    """How the card names the starting weights: none, or the folder's weights file and its SHA-256."""
    if config.init is None:
        return "random (seeded)"
    weights = Path(config.init) / WEIGHTS_FILE
    return f"`{weights}`, SHA-256 `{hashlib.sha256(weights.read_bytes()).hexdigest()}`"


def _loss(
    model: torch.nn.Module,
    batch: Batch,
    tokenizer: Callable[[list[str]], torch.Tensor],
    loss_fn: ClipLoss,
    twin_weight: float,
    twin_temperature: float,
) -> torch.Tensor:
    """CLIP loss of one batch (plus the twins' term); the towers run in bfloat16 autocast (fast on CPUs
    with AMX/AVX-512)."""
    images, captions, labels = batch
    with torch.autocast("cpu", dtype=torch.bfloat16):
        image_features = model.encode_image(images.contiguous(memory_format=torch.channels_last))
        text_features = model.encode_text(tokenizer(captions))
    image_features = torch.nn.functional.normalize(image_features.float(), dim=-1)
    text_features = torch.nn.functional.normalize(text_features.float(), dim=-1)
    loss = loss_fn(image_features[: len(captions)], text_features, model.logit_scale.exp())
    if twin_weight and len(images) > len(captions):  # twins' second pictures follow the captioned ones
        loss = loss + twin_weight * same_kind_loss(image_features, labels, twin_temperature)
    return loss


def same_kind_loss(features: torch.Tensor, labels: torch.Tensor, temperature: float) -> torch.Tensor:
    """Supervised contrastive loss over pictures: each labelled picture's others of its label are its
    positives, every other picture a negative (Khosla et al. 2020, the "out" form)."""
    similarity = features @ features.T / temperature
    own = torch.eye(len(labels), dtype=torch.bool)
    similarity = similarity.masked_fill(own, float("-inf"))
    log_prob = similarity - torch.logsumexp(similarity, dim=1, keepdim=True)
    positive = (labels[:, None] == labels[None, :]) & (labels[:, None] >= 0) & ~own
    anchors = positive.any(dim=1)
    if not anchors.any():
        return features.sum() * 0.0
    per_anchor = log_prob.masked_fill(~positive, 0.0).sum(dim=1) / positive.sum(dim=1).clamp(min=1)
    return -per_anchor[anchors].mean()


def train(config: TrainConfig) -> tuple[torch.nn.Module, list[tuple[int, float]]]:
    """Train a fresh model; returns it (in eval mode) and the (step, mean loss) curve."""
    model = build_model(config.seed)
    if config.init is not None:
        load_weights(model, Path(config.init))
    tokenizer = open_clip.get_tokenizer(MODEL_NAME)
    loss_fn = ClipLoss()
    optimizer = _optimizer(model, config)
    curve: list[tuple[int, float]] = []
    window: list[float] = []
    start = time.monotonic()
    model.train()
    for step, batch in enumerate(batches(config)):
        for group in optimizer.param_groups:
            group["lr"] = _lr_at(step, config)
        loss = _loss(model, batch, tokenizer, loss_fn, config.twin_weight, config.twin_temperature)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
        with torch.no_grad():
            model.logit_scale.clamp_(0, math.log(100))
        window.append(loss.item())
        _progress(step + 1, config.steps, window[-1], time.monotonic() - start)
        if (step + 1) % config.log_every == 0 or step + 1 == config.steps:
            curve.append((step + 1, sum(window) / len(window)))
            window.clear()
    print(file=sys.stderr)
    return model.to(memory_format=torch.contiguous_format).eval(), curve


def _progress(step: int, steps: int, loss: float, elapsed: float) -> None:
    eta = elapsed / step * (steps - step)
    print(
        f"\rstep {step}/{steps}  loss {loss:.3f}  elapsed {elapsed:5.0f}s  eta {eta:4.0f}s",
        end="",
        file=sys.stderr,
        flush=True,
    )


def save_model(model: torch.nn.Module, out: Path) -> None:
    """Write the open_clip local-dir folder: config with model and preprocess cfg, fp16 safetensors."""
    out.mkdir(parents=True, exist_ok=True)
    config = {"model_cfg": MODEL_CFG, "preprocess_cfg": PREPROCESS_CFG}
    (out / CONFIG_FILE).write_text(json.dumps(config, indent=2) + "\n")
    state = {
        key: (value.half() if value.is_floating_point() else value).contiguous()
        for key, value in model.state_dict().items()
    }
    save_file(state, str(out / WEIGHTS_FILE), metadata={"format": "pt"})


@dataclass(frozen=True)
class Timing:
    """Wall-clock seconds spent training (and saving) and evaluating."""

    train_s: float
    eval_s: float
    cpu_s: float = 0.0  # CPU seconds of training (this process and its rendering workers)
    load: tuple[float, float] = (0.0, 0.0)  # the machine's 15-minute load average at start and end


def model_card(
    config: TrainConfig,
    timing: Timing,
    curve: Sequence[tuple[int, float]],
    metrics: evaluate.ShapesMetrics,
    n_params: int,
) -> str:
    """Markdown describing how the model was made and how well it does."""
    loss_rows = "\n".join(f"| {step} | {loss:.4f} |" for step, loss in curve)
    return f"""# clipsearch shapes model

A tiny CLIP model (open_clip `CLIP`; image tower: the small max-pooling CNN of `clipsearch.shapes.tower`)
trained from scratch on the procedural shapes world of `clipsearch.shapes.world`: 8 colours, 5 shapes,
2 sizes, 5 positions, varied backgrounds, one or two shapes per image. It knows nothing else. Load it with
`open_clip.create_model_and_transforms("local-dir:<this folder>")` after `import clipsearch.shapes.tower`
(which registers the tower with timm).

## Training

- command: `python -m clipsearch.shapes.train --out DIR --steps {config.steps} --batch-size \
{config.batch_size} --seed {config.seed} --threads {config.threads} --workers {config.workers} \
--lr {config.lr} --warmup-steps {config.warmup_steps} --twins {config.twins} \
--twin-weight {config.twin_weight} --twin-temperature {config.twin_temperature}\
{"" if config.init is None else " --init INIT"}`
- starting weights (INIT): {init_fingerprint(config)}
- settings: `{json.dumps(asdict(config))}`
- parameters: {n_params:,} (weights stored as fp16)
- wall time: {timing.train_s / 60:.1f} min training + {timing.eval_s / 60:.1f} min evaluation, \
{config.threads} torch threads and {config.workers} rendering process(es); {timing.cpu_s / 60:.1f} CPU-min \
of training; machine load (15-min average, {os.cpu_count()} CPUs) {timing.load[0]:.1f} at start, \
{timing.load[1]:.1f} at the end
- model config: `{json.dumps(MODEL_CFG)}`
- preprocess config: `{json.dumps(PREPROCESS_CFG)}`

## Held-out metrics (scenes generated with seed {EVAL_SEED}, never seen in training)

{metrics.table()}

## Loss (mean over the preceding {config.log_every} steps)

| step | loss |
|---:|---:|
{loss_rows}
"""


def run(
    out: Path, config: TrainConfig, *, eval_copies: int = 6, eval_files: int = 600
) -> evaluate.ShapesMetrics:
    """Train, save, reload the saved folder through open_clip, evaluate it and write the model card.

    Args:
        out: folder to write the model into.
        config: the training run.
        eval_copies: held-out gallery images per colour x shape x size x position combination.
        eval_files: held-out real image files for the file-path metrics.
    """
    torch.set_num_threads(config.threads)
    start, load_start = time.monotonic(), os.getloadavg()[2]
    model, curve = train(config)
    save_model(model, out)
    train_s = time.monotonic() - start
    cpu_s = sum(
        usage.ru_utime + usage.ru_stime
        for usage in (resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN))
    )
    load = (load_start, os.getloadavg()[2])
    encoder = OpenClipEncoder.from_dir(out)
    with tempfile.TemporaryDirectory() as tmp:
        metrics = evaluate.evaluate(
            encoder,
            seed=EVAL_SEED,
            files_dir=Path(tmp),
            copies=eval_copies,
            n_files=eval_files,
            progress=lambda stage: print(f"evaluating: {stage}", file=sys.stderr),
        )
    timing = Timing(train_s, time.monotonic() - start - train_s, cpu_s, load)
    n_params = sum(p.numel() for p in model.parameters())
    (out / CARD_FILE).write_text(model_card(config, timing, curve, metrics, n_params))
    return metrics


def main(argv: Sequence[str] | None = None) -> int:
    """Command-line entry point: train, save to --out, print the metric table on stderr."""
    parser = argparse.ArgumentParser(
        prog="python -m clipsearch.shapes.train", description=__doc__.split("\n")[0]
    )
    parser.add_argument("--out", type=Path, required=True, help="folder to write the model into")
    parser.add_argument("--steps", type=int, default=TrainConfig.steps, help="optimisation steps")
    parser.add_argument("--batch-size", type=int, default=TrainConfig.batch_size, help="scenes per step")
    parser.add_argument("--seed", type=int, default=TrainConfig.seed, help="seed of weights and data")
    parser.add_argument("--threads", type=int, default=TrainConfig.threads, help="torch CPU threads")
    parser.add_argument(
        "--workers", type=int, default=TrainConfig.workers, help="processes rendering batches (0: inline)"
    )
    parser.add_argument("--lr", type=float, default=TrainConfig.lr, help="peak learning rate")
    parser.add_argument(
        "--warmup-steps", type=int, default=TrainConfig.warmup_steps, help="steps of linear warmup"
    )
    parser.add_argument(
        "--init", type=Path, default=None, help="model folder to start from (same architecture)"
    )
    parser.add_argument(
        "--twins",
        type=int,
        default=TrainConfig.twins,
        help="pairs of one colour and shape per step (0: none)",
    )
    parser.add_argument(
        "--twin-weight", type=float, default=TrainConfig.twin_weight, help="weight of the twins' image term"
    )
    parser.add_argument(
        "--twin-temperature",
        type=float,
        default=TrainConfig.twin_temperature,
        help="temperature of the twins' image term",
    )
    parser.add_argument("--eval-copies", type=int, default=6, help="held-out images per attribute combo")
    parser.add_argument("--eval-files", type=int, default=600, help="held-out real files to write and read")
    args = parser.parse_args(argv)
    if args.twins < 0 or args.twin_weight < 0 or args.twin_temperature <= 0:
        parser.error("--twins and --twin-weight must be 0 or more, --twin-temperature above 0")
    config = TrainConfig(
        steps=args.steps,
        batch_size=args.batch_size,
        seed=args.seed,
        threads=args.threads,
        workers=args.workers,
        lr=args.lr,
        warmup_steps=args.warmup_steps,
        twins=args.twins,
        twin_weight=args.twin_weight,
        twin_temperature=args.twin_temperature,
        init=None if args.init is None else str(args.init.absolute()),
    )
    metrics = run(args.out, config, eval_copies=args.eval_copies, eval_files=args.eval_files)
    print(metrics.table(), file=sys.stderr)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
