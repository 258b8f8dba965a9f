"""Encoder: the one place where images and texts become L2-normalised float32 vectors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from clipsearch.models import ModelSpec


def l2_normalize(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Row-wise L2 normalisation that leaves all-zero rows at zero instead of NaN."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


class Encoder:
    """A CLIP model with its own preprocessing and tokenizer.

    ``encode_images`` / ``encode_texts`` always return a 2-D float32 array of unit rows, computed
    in eval mode under ``torch.inference_mode()``; callers never touch the torch model.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor],
        *,
        spec: ModelSpec,
        weights_sha256: str,
        device: str = "cpu",
        precision: str = "fp32",
    ) -> None:
        import open_clip
        import torch

        from clipsearch.pixels import pixel_transform_for

        model.eval()  # open_clip returns models in train mode
        if precision not in ("fp32", "bf16"):
            raise ValueError(f"precision must be fp32 or bf16, not {precision!r}")
        self.dtype = torch.bfloat16 if precision == "bf16" else torch.float32
        self.model: Any = model.to(dtype=self.dtype)
        self.precision = precision
        self.preprocess = preprocess
        #: the same preprocessing in numpy (picklable, torch-free) where open_clip's config allows
        self.pixel_transform = pixel_transform_for(open_clip.get_model_preprocess_cfg(model))
        self.tokenizer = tokenizer
        self.spec = spec
        self.weights_sha256 = weights_sha256
        self.device = device
        self.dim = int(self.encode_texts([""]).shape[1])

    @property
    def image_size(self) -> tuple[int, int]:
        """The (height, width) the image tower expects."""
        size = self.model.visual.image_size
        return (size, size) if isinstance(size, int) else (int(size[0]), int(size[1]))

    def encode_images(
        self, images: Sequence[Image.Image], *, batch_size: int = 32
    ) -> npt.NDArray[np.float32]:
        """Encode RGB PIL images (any size; the model's preprocessing resizes them)."""
        import torch

        if not images:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        for start in range(0, len(images), batch_size):
            chunk = images[start : start + batch_size]
            if self.pixel_transform is not None:
                pixels = torch.from_numpy(np.stack([self.pixel_transform(img) for img in chunk]))
            else:
                pixels = torch.stack([self.preprocess(img) for img in chunk])
            out.append(self.encode_pixels(pixels))
        return np.concatenate(out)

    def encode_pixels(self, pixels: torch.Tensor | npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
        """Encode an already preprocessed batch ``(n, 3, H, W)``; lets decoding happen elsewhere."""
        import torch

        batch = torch.as_tensor(pixels).to(self.device, dtype=self.dtype)
        with torch.inference_mode():
            features = self.model.encode_image(batch)
        return l2_normalize(features.float().cpu().numpy())

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> npt.NDArray[np.float32]:
        """Encode texts with the model's own tokenizer (truncated to its context length)."""
        import torch

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            with torch.inference_mode():
                features = self.model.encode_text(tokens)
            out.append(l2_normalize(features.float().cpu().numpy()))
        return np.concatenate(out)
