"""Turn a query (texts and images, added or subtracted, weighted) into one unit vector."""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from clipsearch.errors import ImageError, UsageError
from clipsearch.grammar import Term

if TYPE_CHECKING:
    from PIL import Image

    from clipsearch.index import Index


def text_vector(index: Index, text: str) -> npt.NDArray[np.float32]:
    """Encode a text query."""
    if not text.strip():
        raise UsageError("The search text is empty. Give some words, e.g. clipsearch search 'a red car'.")
    return index.text_encoder.encode_texts([text])[0]


def image_vector(index: Index, image: str | Path | Image.Image) -> npt.NDArray[np.float32]:
    """Encode an image query; an indexed, unchanged file reuses its stored vector."""
    if not isinstance(image, (str, Path)):
        return index.encoder.encode_images([image.convert("RGB")])[0]
    path = os.path.abspath(os.path.expanduser(str(image)))
    stored = index.stored_vector(path)
    if stored is not None:
        return stored
    from clipsearch.images import open_image

    if not os.path.exists(path):
        raise UsageError(f"Query image {path} does not exist.")
    from clipsearch.decode import draft_side

    try:
        img = open_image(path, min_side=draft_side(index.encoder))  # decoded as indexing would
    except ImageError as exc:
        raise UsageError(f"Query image {path} cannot be used: {exc.detail}.") from exc
    return index.encoder.encode_images([img])[0]


def combine(terms: list[tuple[float, npt.NDArray[np.float32]]]) -> npt.NDArray[np.float32]:
    """Weighted sum of unit vectors, re-normalised: the "semantic algebra" of the shared space.

    ``combine([(1, img), (-1, text("red")), (1, text("blue"))])`` moves an image of a red
    circle towards blue circles.
    """
    if not terms:
        raise UsageError("A query needs at least one term.")
    total = np.sum([weight * vector for weight, vector in terms], axis=0).astype(np.float32)
    norm = float(np.linalg.norm(total))
    if norm < 1e-6:
        raise UsageError("The query's terms cancel out exactly; there is nothing left to search for.")
    return total / norm


def query_vector(index: Index, terms: list[Term]) -> npt.NDArray[np.float32]:
    """Encode every term (texts in one batch) and combine them into one unit vector."""
    texts = [t.value for t in terms if t.kind == "text"]
    text_vecs = iter(index.text_encoder.encode_texts(texts)) if texts else iter(())
    weighted = [
        (t.weight, next(text_vecs) if t.kind == "text" else image_vector(index, t.value)) for t in terms
    ]
    return combine(weighted)
