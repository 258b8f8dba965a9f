"""The shapes model's image tower: a small plain CNN with coordinate channels and global max pooling.

Registered with timm (``clipsearch_shapes_cnn``), so an open_clip config names it like any timm tower
(``vision_cfg.timm_model_name``) and open_clip builds the CLIP model around it with its own pooling head
and projection; nothing in open_clip is changed.

Why not open_clip's ModifiedResNet: trained as CLIP on the shapes world, it learnt colour but stayed
near chance on shape (held-out precision@10 of "a red circle" queries 0.39 after 800 steps; this tower
reaches 0.995). A supervised probe shows why (``python benchmarks/shape_probe.py --tower T --steps 150``,
held-out shape accuracy, chance 0.20): this CNN 0.62, the same CNN with global *average* pooling 0.34,
ModifiedResNet at 96 px 0.40. A shape is a small local pattern; averaging drowns it in background
features. Max pooling is translation invariant, so two coordinate channels (CoordConv) give the
features the absolute position ("on the left") that the queries ask for.
"""

from __future__ import annotations

from typing import Any

import torch
from timm.models import register_model
from torch import nn

TOWER_NAME = "clipsearch_shapes_cnn"


def _block(cin: int, cout: int) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout), nn.ReLU())


class ShapesCNN(nn.Module):
    """Conv-BN-ReLU stages (each followed by 2x2 max pooling but the last), then global max pooling.

    Implements the part of timm's model interface open_clip's TimmModel uses: ``num_features``,
    ``default_cfg``, ``reset_classifier`` and a forward that returns pooled features (or class logits).
    """

    def __init__(
        self, widths: tuple[int, ...] = (32, 64, 128, 256), num_classes: int = 0, global_pool: str = "max"
    ) -> None:
        super().__init__()
        stages: list[nn.Module] = []
        cin = 3 + 2  # RGB + (x, y) coordinates
        for i, width in enumerate(widths):
            stages.append(_block(cin, width))
            if i < len(widths) - 1:
                stages.append(nn.MaxPool2d(2))
            cin = width
        self.features = nn.Sequential(*stages)
        self.num_features = widths[-1]
        self.default_cfg: dict[str, Any] = {"pool_size": None}
        self.global_pool = global_pool
        self.head: nn.Module = nn.Identity()
        self.reset_classifier(num_classes, global_pool)

    def reset_classifier(self, num_classes: int, global_pool: str | None = None) -> None:
        """Replace the classifier (0: none, forward returns features) and optionally the pooling."""
        if global_pool is not None:
            if global_pool not in ("max", "avg"):
                raise ValueError(f"global_pool must be 'max' or 'avg', not {global_pool!r}")
            self.global_pool = global_pool
        self.head = nn.Linear(self.num_features, num_classes) if num_classes else nn.Identity()

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map (n, C, h, w) of images (n, 3, H, W)."""
        n, _, h, w = x.shape
        ys = torch.linspace(-1, 1, h, dtype=x.dtype, device=x.device).view(1, 1, h, 1).expand(n, 1, h, w)
        xs = torch.linspace(-1, 1, w, dtype=x.dtype, device=x.device).view(1, 1, 1, w).expand(n, 1, h, w)
        return self.features(torch.cat([x, xs, ys], dim=1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled features (n, num_features), or logits when a classifier is set."""
        fmap = self.forward_features(x)
        pooled = fmap.amax(dim=(2, 3)) if self.global_pool == "max" else fmap.mean(dim=(2, 3))
        return self.head(pooled)


@register_model  # type: ignore[misc]
def clipsearch_shapes_cnn(pretrained: bool = False, **kwargs: Any) -> ShapesCNN:
    """timm entry point; there are no pretrained weights (the CLIP training writes the whole model)."""
    if pretrained:
        raise ValueError(f"{TOWER_NAME} has no pretrained weights")
    allowed = {key: kwargs[key] for key in ("num_classes", "global_pool", "widths") if key in kwargs}
    return ShapesCNN(**allowed)
