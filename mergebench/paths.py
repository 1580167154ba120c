"""Where MergeBench keeps files outside a project: one cache root for converted models and statistics."""

from __future__ import annotations

import os
from pathlib import Path

from mergebench.errors import ConfigError


def cache_root(cache_dir: Path | None = None) -> Path:
    """``cache_dir``, else ``$MERGEBENCH_CACHE``, else ``~/.cache/mergebench``."""
    if cache_dir is not None:
        return Path(cache_dir)
    env = os.environ.get("MERGEBENCH_CACHE")
    return Path(env) if env else Path.home() / ".cache" / "mergebench"


STATS_CACHE_GB = 20.0
"""Default bound of the statistics cache (``$MERGEBENCH_STATS_CACHE_GB`` overrides it): a MergeBench-Tiny run's
RegMean, Fisher and trained-mask statistics take about 8 GB, so two runs' worth are kept."""


def stats_cache_limit_bytes() -> int:
    """``$MERGEBENCH_STATS_CACHE_GB`` (decimal GB), else :data:`STATS_CACHE_GB`, in bytes.

    Raises:
        ConfigError: the variable is not a number ≥ 0.
    """
    text = os.environ.get("MERGEBENCH_STATS_CACHE_GB")
    try:
        gb = float(text) if text else STATS_CACHE_GB
    except ValueError:
        gb = -1.0
    if not gb >= 0:
        raise ConfigError(f"MERGEBENCH_STATS_CACHE_GB={text!r} is not a size.",
                          hint="Set it to the statistics cache's bound in decimal GB, e.g. 20, or unset it.")
    return int(gb * 1e9)
