"""The per-machine cache: files any index may reuse (exported text encoders, decoding settings)."""

from __future__ import annotations

import os
from pathlib import Path


def user_cache_dir() -> Path:
    """``$CLIPSEARCH_CACHE``, else the user's cache folder (e.g. ``~/.cache/clipsearch``)."""
    configured = os.environ.get("CLIPSEARCH_CACHE")
    if configured:
        return Path(configured).expanduser()
    import platformdirs

    return Path(platformdirs.user_cache_dir("clipsearch"))
