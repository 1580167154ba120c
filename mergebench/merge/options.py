"""The records of a merge: how to run it (:class:`MergeOptions`) and what it produced (:class:`MergeResult`)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from mergebench.merge.compute import CHUNK_ENTRIES
from mergebench.merge.plan import DEFAULT_SHARD_SIZE, MergePlan
from mergebench.merge.recipe import MergeRecipe
from mergebench.stream.reader import CHUNK_BYTES


@dataclass(frozen=True)
class MergeOptions:
    """How to run a merge (not what to merge: that is the recipe)."""

    threads: int | None = None
    """Read threads (network and page-in overlap compute); ``None``: one per core, 2–4
    (:func:`mergebench.stream.reader.default_read_threads`)."""
    compute_threads: int | None = None
    """Threads for the merge arithmetic of elementwise methods and the top-k passes (``None``: every core)."""
    compute_chunk: int = CHUNK_ENTRIES
    """Entries per model merged at once by those threads (results do not depend on it)."""
    shard_size: int = DEFAULT_SHARD_SIZE
    """Largest output shard in bytes: 5 GB, decimal as on the Hub (``mergebench merge --shard-size 5GB``)."""
    read_ahead_bytes: int = 512 << 20
    """Read-ahead budget in bytes, 512 MiB (binary; not a CLI option): tensors read but not yet merged."""
    chunk_bytes: int = CHUNK_BYTES
    """Largest coalesced read in bytes, 64 MiB (binary; not a CLI option): one HTTP Range request
    (:data:`mergebench.stream.reader.CHUNK_BYTES`)."""
    topk_sample: bool | None = None
    """Global top-k: bound the thresholds from a sample and merge while counting, reading the inputs once
    (:mod:`mergebench.merge.passes`); else count first and read them twice. ``None``: when an input is on the Hub,
    where a second read is a second download (a local one comes from the page cache and costs less than the
    sample and the set-aside positions)."""
    resume: bool = False
    progress: bool = True
    stats_device: str = "cpu"
    """Device for the statistics stage of data-dependent methods (``"cuda"`` on a GPU machine)."""
    cache_dir: Path | None = None
    """Root of the statistics cache (default: ``$MERGEBENCH_CACHE`` or ``~/.cache/mergebench``)."""


@dataclass(frozen=True)
class MergeResult:
    out_dir: Path
    recipe: MergeRecipe
    """The recipe with every Hub reference pinned to its commit sha."""
    plan: MergePlan
    seconds: float
    peak_rss_bytes: int
    bytes_read: int
    """Input bytes read by every pass (statistics passes included)."""
    stats_seconds: float = 0.0
    """Wall time of the data statistics stage (included in ``seconds``; zero when cached or not needed)."""
    resumed_shards: tuple[str, ...] = ()
    commit_url: str | None = None
