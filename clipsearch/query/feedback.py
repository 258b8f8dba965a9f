"""Relevance feedback (Rocchio): move a query vector towards the pictures marked right, away from the wrong.

``q' = α·q + β·mean(relevant) − γ·mean(irrelevant)``, then re-normalised: the query algebra of
:func:`~clipsearch.query.vector.combine`, with the marked pictures' own vectors as terms. Each
picture counts once, by its main vector (the whole picture, not its side views).

The weights are the textbook ones (α = 1, β = 0.75, γ = 0.15: Manning, Raghavan and Schütze,
*Introduction to Information Retrieval*, §9.1.1): the marked-right pictures pull hard, the
marked-wrong ones push gently, because a wrong result usually shares most of what the query asks
for (a red circle on the right for "a red circle on the left"), and pushing hard away from it
pushes away from the query too.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from clipsearch.errors import UsageError
from clipsearch.query.vector import combine
from clipsearch.store.vectors import VectorStore


@dataclass(frozen=True)
class Rocchio:
    """The weights of the query (``alpha``), the relevant mean (``beta``) and the irrelevant mean
    (``gamma``, subtracted)."""

    alpha: float = 1.0
    beta: float = 0.75
    gamma: float = 0.15


class NoFeedbackError(UsageError):
    """Refinement was asked for a query that has no marks on pictures indexed now."""

    def __init__(self, query: str) -> None:
        super().__init__(f"No results of {query!r} are marked yet, so there is nothing to refine it with.")
        self.query = query


def stored_vectors(
    store: VectorStore, ids: Sequence[int]
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float32]]:
    """(ids, vectors) of those ids still in the store (a sync may have removed some since they were
    looked up)."""
    wanted = np.array(ids, dtype=np.int64)
    try:
        return wanted, store.reconstruct(wanted)
    except RuntimeError:  # faiss: an id is not there; find which, one at a time
        kept = []
        for i in wanted.tolist():
            try:
                kept.append((i, store.reconstruct(np.array([i], dtype=np.int64))[0]))
            except RuntimeError:
                continue
        vectors = np.array([v for _, v in kept], dtype=np.float32).reshape(len(kept), store.dim)
        return np.array([i for i, _ in kept], dtype=np.int64), vectors


def main_vectors(store: VectorStore, content_ids: Sequence[int]) -> npt.NDArray[np.float32]:
    """The main vectors of those contents still in the store (a content's main vector has the
    content's id)."""
    return stored_vectors(store, content_ids)[1]


def refine(
    query: npt.NDArray[np.float32],
    relevant: npt.NDArray[np.float32],
    irrelevant: npt.NDArray[np.float32],
    weights: Rocchio = Rocchio(),
) -> npt.NDArray[np.float32]:
    """The Rocchio update of a unit query vector, re-normalised; an empty side adds nothing."""
    terms = [(weights.alpha, np.asarray(query, dtype=np.float32))]
    if len(relevant) and weights.beta:
        terms.append((weights.beta, relevant.mean(axis=0)))
    if len(irrelevant) and weights.gamma:
        terms.append((-weights.gamma, irrelevant.mean(axis=0)))
    return combine(terms)


def refined_vector(
    store: VectorStore,
    query: npt.NDArray[np.float32],
    relevant: Sequence[int],
    irrelevant: Sequence[int],
    weights: Rocchio = Rocchio(),
) -> npt.NDArray[np.float32]:
    """The query vector moved by the marked contents' main vectors."""
    return refine(query, main_vectors(store, relevant), main_vectors(store, irrelevant), weights)
