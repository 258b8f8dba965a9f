"""Encoder: the one place where images and texts become L2-normalised float32 vectors."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    import torch
    from PIL import Image

    from clipsearch.encoders.facts import ModelFacts
    from clipsearch.encoders.pixels import PixelTransform
    from clipsearch.encoders.spec import ModelSpec, RunPrecision


def l2_normalize(vectors: npt.NDArray[np.float32]) -> npt.NDArray[np.float32]:
    """Row-wise L2 normalisation that leaves all-zero rows at zero instead of NaN."""
    vectors = np.asarray(vectors, dtype=np.float32)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    return np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)


class Encoder:
    """A CLIP model with its own preprocessing and tokenizer.

    ``encode_images`` / ``encode_texts`` always return a 2-D float32 array of unit rows, computed
    in eval mode under ``torch.inference_mode()``; callers never touch the torch model. An encoder
    loaded ``image_only`` (for indexing) has no text tower and no tokenizer (``tokenizer`` None),
    and refuses ``encode_texts``.
    """

    def __init__(
        self,
        model: torch.nn.Module,
        preprocess: Callable[[Image.Image], torch.Tensor],
        tokenizer: Callable[[list[str]], torch.Tensor] | None,
        *,
        facts: ModelFacts,
        device: str = "cpu",
        precision: RunPrecision = "fp32",
    ) -> None:
        import torch

        model.eval()  # open_clip returns models in train mode
        if precision not in ("fp32", "bf16", "fp16"):
            raise ValueError(f"precision must be fp32, bf16 or fp16, not {precision!r}")
        self.dtype = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}[precision]
        self.model: Any = model.to(dtype=self.dtype)
        self.precision = precision
        self.preprocess = preprocess
        self.tokenizer = tokenizer
        self.facts = facts
        self.device = device

    @property
    def has_text(self) -> bool:
        """Whether texts can be encoded (not loaded ``image_only``)."""
        return self.tokenizer is not None

    @property
    def spec(self) -> ModelSpec:
        return self.facts.spec

    @property
    def weights_sha256(self) -> str:
        return self.facts.weights_sha256

    @property
    def dim(self) -> int:
        """Length of the embeddings."""
        return self.facts.dim

    @property
    def pixel_transform(self) -> PixelTransform | None:
        """The model's preprocessing in numpy (picklable, torch-free), where open_clip's config allows."""
        return self.facts.pixel_transform

    @property
    def image_size(self) -> tuple[int, int]:
        """The (height, width) the image tower expects."""
        return self.facts.image_size

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

    def encode_pixels(
        self, pixels: torch.Tensor | npt.NDArray[np.float32], *, threads: int | None = None
    ) -> npt.NDArray[np.float32]:
        """Encode an already preprocessed batch ``(n, 3, H, W)``; lets decoding happen elsewhere.

        ``threads``: torch's intra-op threads for this call (default: torch's setting).
        """
        import torch

        batch = torch.as_tensor(pixels).to(self.device, dtype=self.dtype)
        previous = torch.get_num_threads()
        if threads:
            torch.set_num_threads(threads)
        try:
            with torch.inference_mode():
                features = self.model.encode_image(batch)
        finally:
            if threads:
                torch.set_num_threads(previous)
        return l2_normalize(features.float().cpu().numpy())

    def encode_uint8(self, pixels: npt.NDArray[np.uint8]) -> npt.NDArray[np.float32]:
        """Encode ``(n, H, W, 3)`` uint8 crops (``PixelTransform.resize_crop``'s), normalised on the
        model's device: on a GPU a quarter of the bytes cross the bus and the CPU is left to decode."""
        import torch

        transform = self.pixel_transform
        if transform is None:
            raise RuntimeError(f"{self.spec.label()} preprocesses in torch: encode its pixels, not crops")
        batch = torch.from_numpy(np.ascontiguousarray(pixels))
        if self.device != "cpu":
            batch = batch.pin_memory().to(self.device, non_blocking=True)
        scale = torch.tensor([1.0 / (255.0 * s) for s in transform.std], device=batch.device)
        means = zip(transform.mean, transform.std, strict=True)
        shift = torch.tensor([m / s for m, s in means], device=batch.device)
        with torch.inference_mode():
            floats = batch.permute(0, 3, 1, 2).float() * scale[:, None, None] - shift[:, None, None]
            features = self.model.encode_image(floats.to(self.dtype))
        return l2_normalize(features.float().cpu().numpy())

    def encode_texts(self, texts: Sequence[str], *, batch_size: int = 256) -> npt.NDArray[np.float32]:
        """Encode texts with the model's own tokenizer (truncated to its context length)."""
        import torch

        if self.tokenizer is None:
            raise RuntimeError(
                f"This encoder of {self.spec.label()} was loaded image_only, without its text tower; "
                "load it with load_spec(spec) to encode texts."
            )

        if not texts:
            return np.zeros((0, self.dim), dtype=np.float32)
        out = []
        for start in range(0, len(texts), batch_size):
            tokens = self.tokenizer(list(texts[start : start + batch_size])).to(self.device)
            with torch.inference_mode():
                features = self.model.encode_text(tokens)
            out.append(l2_normalize(features.float().cpu().numpy()))
        return np.concatenate(out)
