"""Vector -> ranked hits: FAISS ids mapped back to catalogued paths."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from clipsearch.catalog import Catalog
from clipsearch.vectors import Ids, VectorStore


@dataclass(frozen=True)
class Hit:
    """One result: an absolute path and its cosine similarity to the query."""

    path: str
    score: float
    content_id: int

    def to_dict(self) -> dict[str, object]:
        return {"path": self.path, "score": round(self.score, 6), "content_id": self.content_id}


def rank(
    store: VectorStore,
    catalog: Catalog,
    queries: npt.NDArray[np.float32],
    k: int,
    *,
    allowed: Ids | None = None,
) -> list[list[Hit]]:
    """Top-``k`` paths for each query row (exact inner product), best first.

    Identical files share one vector; each of their paths is returned, all with the same score,
    and the list is cut at ``k`` paths.
    """
    if k < 1 or len(store) == 0:
        return [[] for _ in range(len(queries))]
    scores, ids = store.search(queries, k, allowed=allowed)
    wanted = sorted({int(i) for i in ids.ravel() if i >= 0})
    paths = catalog.paths_of(wanted)
    results = []
    for row_scores, row_ids in zip(scores, ids, strict=True):
        hits: list[Hit] = []
        for score, cid in zip(row_scores, row_ids, strict=True):
            # a content deleted after the store was loaded has no paths left: skip it
            hits.extend(Hit(path, float(score), int(cid)) for path in paths.get(int(cid), []))
        results.append(hits[:k])
    return results
