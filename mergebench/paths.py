"""Where MergeBench keeps files outside a project: one cache root for converted models and statistics."""

from __future__ import annotations

import os
from pathlib import Path


def cache_root(cache_dir: Path | None = None) -> Path:
    """``cache_dir``, else ``$MERGEBENCH_CACHE``, else ``~/.cache/mergebench``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("MERGEBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mergebench"
