"""The shapes world: captioned synthetic images and a tiny CLIP model trained on them.

`world` draws seeded scenes of coloured shapes and writes them as real image files, `train` trains a
small open_clip model on fresh scenes and saves it as an open_clip ``local-dir:`` folder, and `evaluate`
measures whether an encoder understands colour, shape, size and position; `tower` is the model's image
tower. Only `train` and `tower` import torch, so importing this package stays cheap.
"""

from __future__ import annotations

from pathlib import Path

#: The trained model, an open_clip ``local-dir:`` folder.
MODEL_DIR = Path(__file__).parent / "model"


def _register_tower() -> None:
    import clipsearch.shapes.tower  # noqa: F401  (registers the image tower with timm)


def register() -> None:
    """Make ``shapes`` a model name (the ``clipsearch.models`` entry point calls this)."""
    from clipsearch.encoders.spec import BundledModel, register_model

    register_model("shapes", BundledModel(MODEL_DIR, prepare=_register_tower))
