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

__all__ = ["Hit", "Index", "ModelSpec", "SyncReport", "__version__", "load_encoder"]

if TYPE_CHECKING:
    from clipsearch.index import Index
    from clipsearch.ingest import SyncReport
    from clipsearch.models import ModelSpec, load_encoder
    from clipsearch.search import Hit

_LAZY = {
    "Index": "clipsearch.index",
    "SyncReport": "clipsearch.ingest",
    "ModelSpec": "clipsearch.models",
    "load_encoder": "clipsearch.models",
    "Hit": "clipsearch.search",
}


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'clipsearch' has no attribute {name!r}")
