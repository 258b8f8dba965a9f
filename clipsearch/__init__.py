"""clipsearch: local-first CLIP text-image search.

The public API is imported lazily so that ``import clipsearch`` (and ``clipsearch --help``) never
pulls in torch::

    from clipsearch import Index, load_encoder
    index = Index.open("indexes/demo")
    for hit in index.search_text("a red circle", k=5):
        print(hit.score, hit.path)
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

__all__ = [
    "Filters",
    "Hit",
    "Index",
    "ModelCache",
    "ModelSpec",
    "SyncOptions",
    "SyncReport",
    "__version__",
    "load_encoder",
]

if TYPE_CHECKING:
    from clipsearch.api import Index
    from clipsearch.encoders.cache import ModelCache
    from clipsearch.encoders.loading import load_encoder
    from clipsearch.encoders.spec import ModelSpec
    from clipsearch.ingest.sync import SyncOptions, SyncReport
    from clipsearch.query.filters import Filters
    from clipsearch.query.rank import Hit

_LAZY = {
    "Index": "clipsearch.api",
    "ModelCache": "clipsearch.encoders.cache",
    "load_encoder": "clipsearch.encoders.loading",
    "ModelSpec": "clipsearch.encoders.spec",
    "SyncOptions": "clipsearch.ingest.sync",
    "SyncReport": "clipsearch.ingest.sync",
    "Filters": "clipsearch.query.filters",
    "Hit": "clipsearch.query.rank",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipsearch' has no attribute {name!r}")
