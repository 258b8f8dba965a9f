"""Can an image tower learn *shape* from the shapes world at all? A supervised probe, no text.

    python benchmarks/shape_probe.py --tower shapes        # clipsearch.shapes.tower (max pooling)
    python benchmarks/shape_probe.py --tower shapes-avg    # the same CNN with average pooling
    python benchmarks/shape_probe.py --tower modified-resnet --size 96

Trains the tower plus a linear head to classify the shape (5 classes, chance 0.2) of single-shape
scenes rendered like the training data (noisy, gradient and textured backgrounds, varied sizes and
aspect ratios, the model's squash preprocessing), on fresh batches, and prints held-out accuracy
every 50 steps. This is how the shapes model's tower was chosen (see clipsearch/shapes/tower.py).
"""

from __future__ import annotations

import argparse
import math
import time

import numpy as np
import open_clip
import torch
from open_clip.modified_resnet import ModifiedResNet

from clipsearch.shapes import world
from clipsearch.shapes.tower import ShapesCNN


def build_tower(name: str, size: int) -> tuple[torch.nn.Module, int]:
    """The tower and the width of its output."""
    if name == "shapes":
        tower = ShapesCNN(global_pool="max")
        return tower, tower.num_features
    if name == "shapes-avg":
        tower = ShapesCNN(global_pool="avg")
        return tower, tower.num_features
    if name == "modified-resnet":  # the shipped model's first tower: [2,2,2,2], width 8
        return ModifiedResNet(layers=[2, 2, 2, 2], output_dim=128, heads=4, image_size=size, width=8), 128
    raise SystemExit(f"unknown tower {name!r}")


def batch(seed: object, n: int, size: int) -> tuple[torch.Tensor, torch.Tensor]:
    transform = open_clip.image_transform(
        size, is_train=False, mean=(0.5,) * 3, std=(0.25,) * 3, resize_mode="squash", interpolation="bicubic"
    )
    rng = np.random.default_rng(seed)  # type: ignore[arg-type]
    images, labels = [], []
    for _ in range(n):
        scene = world.sample_scene(rng, n_shapes=1)
        images.append(transform(world.render(scene, rng, world.sample_image_size(rng, (56, 160)))))
        labels.append(world.SHAPES.index(scene.shapes[0].shape))
    return torch.stack(images), torch.tensor(labels)


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--tower", default="shapes", help="shapes, shapes-avg or modified-resnet")
    parser.add_argument("--size", type=int, default=64, help="input size in pixels")
    parser.add_argument("--steps", type=int, default=200, help="training steps")
    parser.add_argument("--batch-size", type=int, default=128, help="scenes per step")
    args = parser.parse_args()

    torch.manual_seed(0)
    torch.set_num_threads(2)
    tower, width = build_tower(args.tower, args.size)
    model = torch.nn.Sequential(tower, torch.nn.Linear(width, len(world.SHAPES)))
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-3, weight_decay=0.1)
    test_x, test_y = batch(999_999, 512, args.size)
    started = time.monotonic()
    for step in range(args.steps):
        x, y = batch([1, step], args.batch_size, args.size)
        for group in optimizer.param_groups:
            group["lr"] = 1e-3 * 0.5 * (1 + math.cos(math.pi * step / args.steps))
        with torch.autocast("cpu", dtype=torch.bfloat16):
            loss = torch.nn.functional.cross_entropy(model(x).float(), y)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        if (step + 1) % 50 == 0:
            model.eval()
            with torch.no_grad():
                accuracy = (model(test_x).argmax(1) == test_y).float().mean().item()
            model.train()
            print(
                f"{args.tower} step {step + 1}: loss {loss.item():.3f}, held-out shape accuracy "
                f"{accuracy:.3f} "
                f"(chance 0.2), {time.monotonic() - started:.0f}s",
                flush=True,
            )


if __name__ == "__main__":
    main()
