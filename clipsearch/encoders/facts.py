"""What is known of a model before its weights are in: its facts once built, its preview before that."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

from clipsearch.encoders.pixels import PixelTransform, pixel_transform_for
from clipsearch.encoders.spec import ModelSpec


class HasImageSize(Protocol):
    @property
    def image_size(self) -> tuple[int, int]: ...


#: Decode scales an index may record: JPEGs are decoded (``draft``, straight from the DCT at 1/2, 1/4
#: or 1/8) at the largest reduction whose shorter side stays at least this many times the model's
#: input. 2: the careful path (fine patterns stay sharp), 1.5 and 1: faster, the encoder's resize
#: shrinks less. See benchmarks/decode_scale.py for what each costs in fidelity and saves in time.
DECODE_SCALES = (2.0, 1.5, 1.0)
#: The decode scale of a new index (measured in benchmarks/decode_scale.py: see the README's "Speed").
DEFAULT_DECODE_SCALE = 1.5


def draft_side(model: HasImageSize, scale: float = 2.0) -> int:
    """Shortest side JPEGs are decoded at (``draft``): ``scale`` times the model's input (see
    ``DECODE_SCALES``), so the model's own resize does the rest of the shrinking."""
    return math.ceil(scale * min(model.image_size))


@dataclass(frozen=True)
class ModelFacts:
    """What is known of a model as soon as it is built, before its weights are read."""

    spec: ModelSpec
    weights_sha256: str
    dim: int  # length of the embeddings
    image_size: tuple[int, int]  # (height, width) the image tower takes
    preprocess: Callable[[Any], Any]  # open_clip's own eval transform (PIL image -> tensor)
    pixel_transform: PixelTransform | None  # the same in numpy, where open_clip's config allows

    @classmethod
    def of(cls, spec: ModelSpec, weights_sha256: str, model: Any, preprocess: Any) -> ModelFacts:
        import open_clip
        import torch

        size = model.visual.image_size
        height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
        param = next(model.visual.parameters())
        with torch.inference_mode():  # the embedding's length, whatever the weights hold yet (or on meta)
            probe = torch.zeros(1, 3, height, width, dtype=param.dtype, device=param.device)
            dim = int(model.encode_image(probe).shape[-1])
        return cls(
            spec,
            weights_sha256,
            dim,
            (height, width),
            preprocess,
            pixel_transform_for(open_clip.get_model_preprocess_cfg(model)),
        )


@dataclass(frozen=True)
class ModelPreview:
    """What a sync needs of a model before it is built: what a new index records, and the numpy
    preprocessing that decoding needs. Kept per machine from the model's last build (see
    :class:`~clipsearch.encoders.cache.ModelCache`), so a sync can start decoding at once instead of
    after the seconds torch takes to import; the sync checks it against the built model before it
    commits anything."""

    weights_sha256: str
    dim: int
    image_size: tuple[int, int]
    pixel_transform: PixelTransform

    @classmethod
    def of(cls, facts: ModelFacts) -> ModelPreview | None:
        """The preview of a built model, or None where its preprocessing needs torch."""
        if facts.pixel_transform is None:
            return None
        return cls(facts.weights_sha256, facts.dim, facts.image_size, facts.pixel_transform)
