"""Exact duplicates (same bytes) and near-duplicates (vectors closer than a cosine threshold)."""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from clipsearch.paths import json_list
from clipsearch.store.catalog import VIEW_FLAG, Entry
from clipsearch.store.folder import IndexFolder
from clipsearch.store.vectors import VectorStore

#: Default cosine similarity above which two different files count as near-duplicates.
NEAR_THRESHOLD = 0.95


@dataclass(frozen=True)
class DuplicateGroup:
    """Files that are the same picture; every file is in one group at most.

    ``kind`` is ``exact`` when all the files have identical bytes, else ``near`` (their vectors are
    linked by cosine similarities of at least ``min_score``). ``identical`` lists the sets of
    byte-identical files inside the group, as positions in ``paths`` (an exact group is one set).
    """

    kind: str  # "exact" or "near"
    paths: list[str]
    min_score: float
    identical: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict[str, object]:
        return {
            "kind": self.kind,
            "count": len(self.paths),
            "min_score": round(self.min_score, 6),
            **json_list(self.paths),
            "identical": self.identical,
        }


def find_duplicates(
    index: IndexFolder, *, threshold: float = NEAR_THRESHOLD, near: bool = True
) -> list[DuplicateGroup]:
    """Groups of duplicate files, largest first; a file belongs to one group at most.

    Near groups: contents whose vectors have a cosine similarity of at least ``threshold`` to
    another member (single-link, via union-find), listing every file of those contents and which
    of them are byte-identical. Exact groups: several files with identical bytes that near-match no
    other content (with ``near=False``: every set of identical files).
    """
    store = index.store
    ids = store.ids()
    ids = ids[(ids & VIEW_FLAG) == 0]  # pictures by their main vectors (side views are parts of them)
    files = index.catalog.entries_of(sorted(int(i) for i in ids))
    linked = _near_components(store, ids, threshold) if near and len(ids) > 1 else []
    in_near = {cid for component, _ in linked for cid in component}
    groups = [
        _group("near", [c for c in component if c in files], files, low)
        for component, low in linked
        if sum(len(files.get(c, ())) for c in component) > 1
    ]
    groups += [
        _group("exact", [cid], files, 1.0)
        for cid, hits in files.items()
        if len(hits) > 1 and cid not in in_near
    ]
    return sorted(groups, key=lambda g: (-len(g.paths), g.kind, g.paths))


def _group(kind: str, contents: list[int], files: dict[int, list[Entry]], low: float) -> DuplicateGroup:
    paths = sorted(h.path for cid in contents for h in files[cid])
    where = {path: i for i, path in enumerate(paths)}
    identical = sorted(sorted(where[h.path] for h in files[cid]) for cid in contents if len(files[cid]) > 1)
    return DuplicateGroup(kind, paths, low, identical)


def _near_components(
    store: VectorStore, ids: npt.NDArray[np.int64], threshold: float
) -> list[tuple[list[int], float]]:
    """Contents linked by similarities >= ``threshold``: (content ids, lowest linking score), 2+ each."""
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
                if int(other) == int(cid) or int(other) not in parent:  # itself, or a side view
                    continue
                a, b = find(int(cid)), find(int(other))
                low = min(float(score), lowest.get(a, 1.0), lowest.get(b, 1.0))
                parent[a] = b
                lowest[b] = low
    members: dict[int, list[int]] = {}
    for cid in parent:
        members.setdefault(find(cid), []).append(cid)
    return [(sorted(group), lowest.get(root, threshold)) for root, group in members.items() if len(group) > 1]
