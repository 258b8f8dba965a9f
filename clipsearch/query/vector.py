"""Turn a query (texts and images, added or subtracted, weighted) into one unit vector."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from clipsearch.encoders.facts import draft_side
from clipsearch.encoders.images import open_image
from clipsearch.errors import ImageError, UsageError
from clipsearch.query.grammar import Term

if TYPE_CHECKING:
    from PIL import Image


class QueryEncoder(Protocol):
    """What a query needs from the index it searches: its model, and its stored vectors."""

    @property
    def image_size(self) -> tuple[int, int]:
        """The (height, width) the model's image tower takes (JPEGs are decoded at twice that)."""

    def encode_texts(self, texts: Sequence[str]) -> npt.NDArray[np.float32]: ...

    def encode_images(self, images: Sequence[Image.Image]) -> npt.NDArray[np.float32]: ...

    def stored_vector(self, path: str) -> npt.NDArray[np.float32] | None:
        """The indexed vector of a file that is indexed and unchanged, else None."""


class QueryImageError(UsageError):
    """An image named in a query cannot be used."""

    def __init__(self, path: str, problem: str) -> None:
        super().__init__(f"Query image {path} {problem}.")
        self.path = path
        self.problem = problem


def text_vector(model: QueryEncoder, text: str) -> npt.NDArray[np.float32]:
    """Encode a text query."""
    if not text.strip():
        raise UsageError("The search text is empty. Give some words, e.g. 'a red car'.")
    return model.encode_texts([text])[0]


def image_vector(model: QueryEncoder, image: str | Path | Image.Image) -> npt.NDArray[np.float32]:
    """Encode an image query; an indexed, unchanged file reuses its stored vector."""
    if not isinstance(image, (str, Path)):
        return model.encode_images([image.convert("RGB")])[0]
    path = os.path.abspath(os.path.expanduser(str(image)))
    stored = model.stored_vector(path)
    if stored is not None:
        return stored
    if not os.path.exists(path):
        raise QueryImageError(path, "does not exist")
    try:
        img = open_image(path, min_side=draft_side(model))  # decoded as indexing would
    except ImageError as exc:
        raise QueryImageError(path, f"cannot be used: {exc.detail}") from exc
    return model.encode_images([img])[0]


def combine(terms: list[tuple[float, npt.NDArray[np.float32]]]) -> npt.NDArray[np.float32]:
    """Weighted sum of unit vectors, re-normalised: the "semantic algebra" of the shared space.

    ``combine([(1, img), (-1, text("red")), (1, text("blue"))])`` moves an image of a red
    circle towards blue circles.
    """
    if not terms:
        raise UsageError("A query needs at least one term.")
    total = np.sum([weight * vector for weight, vector in terms], axis=0, dtype=np.float64)
    norm = float(np.linalg.norm(total))
    if not np.isfinite(norm):
        raise UsageError("The query's weights are too large to combine; keep them between -100 and 100.")
    if norm < 1e-6:
        raise UsageError("The query's terms cancel out exactly; there is nothing left to search for.")
    return (total / norm).astype(np.float32)


def query_vector(model: QueryEncoder, terms: list[Term]) -> npt.NDArray[np.float32]:
    """Encode every term (texts in one batch) and combine them into one unit vector."""
    texts = [t.value for t in terms if t.kind == "text"]
    text_vecs = iter(model.encode_texts(texts)) if texts else iter(())
    weighted = [
        (t.weight, next(text_vecs) if t.kind == "text" else image_vector(model, t.value)) for t in terms
    ]
    return combine(weighted)


def query_vectors(model: QueryEncoder, queries: Sequence[list[Term]]) -> list[npt.NDArray[np.float32]]:
    """:func:`query_vector` of many queries, with the texts of them all encoded in one batch."""
    texts = [t.value for terms in queries for t in terms if t.kind == "text"]
    text_vecs = iter(model.encode_texts(texts)) if texts else iter(())
    return [
        combine(
            [(t.weight, next(text_vecs) if t.kind == "text" else image_vector(model, t.value)) for t in terms]
        )
        for terms in queries
    ]
