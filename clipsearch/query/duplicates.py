"""Exact duplicates (same bytes) and near-duplicates (vectors closer than a cosine threshold)."""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from clipsearch.store.catalog import Entry
from clipsearch.store.folder import IndexFolder
from clipsearch.store.vectors import VectorStore

#: Default cosine similarity above which two different files count as near-duplicates.
NEAR_THRESHOLD = 0.95


@dataclass(frozen=True)
class DuplicateGroup:
    """Files that are the same picture: ``exact`` when all share one content hash."""

    kind: str  # "exact" or "near"
    paths: list[str]
    min_score: float

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "count": len(self.paths),
            "min_score": round(self.min_score, 6),
            "paths": self.paths,
        }


def find_duplicates(
    index: IndexFolder, *, threshold: float = NEAR_THRESHOLD, near: bool = True
) -> list[DuplicateGroup]:
    """Groups of duplicate files, largest first.

    Exact groups: several files with identical bytes. Near groups: contents whose vectors have a
    cosine similarity of at least ``threshold`` to another member (single-link, via union-find),
    listing every file of those contents.
    """
    store = index.store
    ids = store.ids()
    files = index.catalog.entries_of(sorted(int(i) for i in ids))
    groups = [
        DuplicateGroup("exact", [h.path for h in hits], 1.0) for hits in files.values() if len(hits) > 1
    ]
    if near and len(ids) > 1:
        groups += _near_groups(store, ids, files, threshold)
    return sorted(groups, key=lambda g: (-len(g.paths), g.kind, g.paths))


def _near_groups(
    store: VectorStore, ids: npt.NDArray[np.int64], files: dict[int, list[Entry]], threshold: float
) -> list[DuplicateGroup]:
    parent = {int(i): int(i) for i in ids}

    def find(x: int) -> int:
        while parent[x] != x:
            parent[x] = parent[parent[x]]
            x = parent[x]
        return x

    lowest: dict[int, float] = {}  # root -> lowest linking score seen in its group
    for start in range(0, len(ids), 1024):  # blocks of queries keep memory flat
        block = ids[start : start + 1024]
        for cid, (scores, found) in zip(
            block, store.range_search(store.reconstruct(block), threshold), strict=True
        ):
            for score, other in zip(scores, found, strict=True):
                a, b = find(int(cid)), find(int(other))
                if int(other) == int(cid):
                    continue
                low = min(float(score), lowest.get(a, 1.0), lowest.get(b, 1.0))
                parent[a] = b
                lowest[b] = low
    members: dict[int, list[int]] = {}
    for cid in parent:
        members.setdefault(find(cid), []).append(cid)
    groups = []
    for root, group in members.items():
        if len(group) > 1:
            paths = sorted(h.path for cid in group for h in files.get(cid, []))
            groups.append(DuplicateGroup("near", paths, lowest.get(root, threshold)))
    return groups
