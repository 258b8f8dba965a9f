"""The model's image preprocessing in numpy + Pillow, so decoding workers need not import torch.

open_clip builds a torchvision pipeline from the model's preprocess config (resize, centre crop,
scale to [0, 1], normalise). ``PixelTransform`` reads that same config and performs the same
steps with Pillow's resampling (which torchvision itself calls for PIL images) and numpy. A test
checks it against the model's own transform; configurations it does not cover return None from
``pixel_transform_for`` and the caller keeps the torch transform.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt
from PIL import Image

#: A picture gets side views (see ``PixelTransform.side_views``) from this aspect ratio on.
SIDE_VIEW_ASPECT = 1.2
#: Most side views a picture gets (a panorama of more than 7:1 has gaps between them).
MAX_SIDE_VIEWS = 6

_RESAMPLE = {"bicubic": Image.Resampling.BICUBIC, "bilinear": Image.Resampling.BILINEAR}


@dataclass(frozen=True)
class PixelTransform:
    """Picklable image -> ``(3, H, W)`` float32 array: open_clip's eval transform, to within one
    8-bit step in about 1 value in 10,000 (see ``_resize_shortest_and_crop``), in memory bounded
    by the input size whatever the image's aspect ratio."""

    height: int
    width: int
    mean: tuple[float, float, float]
    std: tuple[float, float, float]
    interpolation: str
    resize_mode: str  # "shortest" (resize + centre crop) or "squash"

    def __call__(self, image: Image.Image) -> npt.NDArray[np.float32]:
        return self.normalize(self.resize_crop(image)[None])[0]

    def resize_crop(self, image: Image.Image) -> npt.NDArray[np.uint8]:
        """The geometric half: ``(H, W, 3)`` uint8 pixels, a quarter of the float32 size to ship."""
        image = image.convert("RGB") if image.mode != "RGB" else image
        resample = _RESAMPLE[self.interpolation]
        if self.resize_mode == "squash":
            image = image.resize((self.width, self.height), resample)
        else:
            image = self._resize_shortest_and_crop(image, resample)
        return np.asarray(image, dtype=np.uint8)

    def side_views(self, image: Image.Image) -> list[tuple[str, npt.NDArray[np.uint8]]]:
        """Square crops at the ends of a wide or tall picture, each resized to the model's input,
        beside its centre crop (``resize_crop``): what a centre-cropping model would never see.

        A model that crops the centre of a 16:9 frame never sees 44% of its width. The squares'
        side is a third of the long side, but at least 0.55 of the short side (and at most all of it),
        centred across: the scale at which a part of the picture (its left third, say) is seen as
        itself rather than shrunk inside a larger square. For 16:9 the two squares and the centre
        crop leave out only the four corners outside the centre crop (18% of the frame); for 4:3,
        11%; a panorama of 3:1 or wider gets full-height squares spread along it (at most
        ``MAX_SIDE_VIEWS``, so more than 7:1 leaves gaps). A picture whose long side is under
        ``SIDE_VIEW_ASPECT`` times its short side gets none (the centre crop loses under 9% each
        side), as does a transform that does not crop (``squash``). The end squares are
        ``left``/``right`` (or ``top``/``bottom``), those between ``part``.
        """
        if self.resize_mode != "shortest":
            return []
        width, height = image.size
        short, long = min(width, height), max(width, height)
        if short == 0 or long < SIDE_VIEW_ASPECT * short:
            return []
        side = min(short, max(round(long / 3), round(0.55 * short)))
        count = 2 if side < short else min(math.ceil(long / short), MAX_SIDE_VIEWS + 1)
        offsets = [round(i * (long - side) / (count - 1)) for i in range(count)]
        across = (short - side) // 2
        centre = round((long - side) / 2)
        ends = ("left", "right") if width > height else ("top", "bottom")
        image = image.convert("RGB") if image.mode != "RGB" else image
        resample = _RESAMPLE[self.interpolation]
        views = []
        for i, offset in enumerate(offsets):
            if side == short and count % 2 and i == count // 2 and abs(offset - centre) <= 1:
                continue  # the centre crop is the picture's main vector already
            kind = ends[0] if i == 0 else ends[1] if i == count - 1 else "part"
            if width > height:
                box = (offset, across, offset + side, across + side)
            else:
                box = (across, offset, across + side, offset + side)
            pixels = image.resize((self.width, self.height), resample, box=box)
            views.append((kind, np.asarray(pixels, dtype=np.uint8)))
        return views

    def normalize(self, pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """The arithmetic half, for a batch: ``(n, H, W, 3)`` uint8 -> ``(n, 3, H, W)`` float32."""
        out = np.empty((pixels.shape[0], 3, *pixels.shape[1:3]), dtype=np.float32)
        for c, (mean, std) in enumerate(zip(self.mean, self.std, strict=True)):  # no batch-sized temporaries
            np.multiply(pixels[..., c], np.float32(1.0 / (255.0 * std)), out=out[:, c], casting="unsafe")
            out[:, c] -= np.float32(mean / std)
        return out

    def _resize_shortest_and_crop(self, image: Image.Image, resample: Image.Resampling) -> Image.Image:
        """Resize the shorter side to the input size, then take the centre (torchvision's rounding).

        Only the pixels the crop keeps are computed: the crop's box, in source coordinates, is
        resized at the whole image's scale (the filter still reads source pixels outside the box).
        Memory is therefore bounded by the model's input size whatever the aspect ratio (a 1x300000
        image enlarged whole would be 224 x 67 million pixels), and shrinking a 4:3 photo takes
        20-45% less time. The pixels are those of resizing everything and cropping after but for
        float rounding in Pillow's filter weights: about 1 value in 10,000 differs, by one 8-bit
        level. Enlarging both ways, Pillow may run its two passes (each rounded to 8 bits) in the
        other order for the box than for the whole image, and values differ by a few levels: there
        the whole image is enlarged and cropped, as open_clip does, while that stays under
        ``ENLARGE_WHOLE_FACTOR`` times the input size (up to an aspect ratio of 64:1).
        """
        width, height = image.size
        target = self.height
        if width <= height:
            size = (target, int(target * height / width))
        else:
            size = (int(target * width / height), target)
        top = round((size[1] - self.height) / 2.0)
        left = round((size[0] - self.width) / 2.0)
        crop = (left, top, left + self.width, top + self.height)  # in the resized image
        if size == image.size:
            return image.crop(crop)
        if (
            min(width, height) < target
            and size[0] * size[1] <= ENLARGE_WHOLE_FACTOR * self.width * self.height
        ):
            return image.resize(size, resample).crop(crop)
        sx, sy = width / size[0], height / size[1]
        box = (  # the same, in the source (clamped: float rounding must not step outside it)
            max(0.0, crop[0] * sx),
            max(0.0, crop[1] * sy),
            min(float(width), crop[2] * sx),
            min(float(height), crop[3] * sy),
        )
        return image.resize((self.width, self.height), resample, box=box)


#: An image enlarged for the crop is enlarged whole (open_clip's exact pixels) while the result holds
#: at most this many times the model's input pixels; beyond, only the crop's box is computed.
ENLARGE_WHOLE_FACTOR = 64


def pixel_transform_for(preprocess_cfg: dict[str, Any]) -> PixelTransform | None:
    """The numpy transform for an open_clip preprocess config, or None where it is not covered."""
    size = preprocess_cfg.get("size", 224)
    height, width = (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))
    resize_mode = preprocess_cfg.get("resize_mode") or "shortest"
    interpolation = preprocess_cfg.get("interpolation") or "bicubic"
    if interpolation not in _RESAMPLE or resize_mode not in ("shortest", "squash"):
        return None
    if resize_mode == "shortest" and height != width:
        return None
    mean, std = preprocess_cfg.get("mean"), preprocess_cfg.get("std")
    if not (
        isinstance(mean, (list, tuple)) and isinstance(std, (list, tuple)) and len(mean) == len(std) == 3
    ):
        return None
    return PixelTransform(
        height,
        width,
        tuple(map(float, mean)),
        tuple(map(float, std)),
        interpolation,
        resize_mode,  # type: ignore[arg-type]
    )
