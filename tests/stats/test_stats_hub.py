"""Statistics stages of Hub models stream their weights: the Hub cache stays empty and the statistics are those
of the same models read locally (regression: they used to ``snapshot_download`` every model whole)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from huggingface_hub import constants

from mergebench.fixtures import Family, write_family_to_hub_root
from mergebench.hubserver import LoopbackHub
from mergebench.merge import MergeOptions, merge
from mergebench.merge.engine import _statistics
from mergebench.merge.inputs import prepare
from mergebench.stats import load_statistics
from tests.engine.test_all_methods import DOMAINS, make_recipe


def cache_files() -> list[Path]:
    cache = Path(constants.HF_HUB_CACHE)
    return [p for p in cache.rglob("*") if p.is_file()] if cache.exists() else []


@pytest.mark.parametrize("key", ["regmean", pytest.param("fisher", marks=pytest.mark.slow),
                                 pytest.param("localize_stitch_trained", marks=pytest.mark.slow)])
def test_statistics_of_hub_models_leave_the_hub_cache_empty(key: str, hub: LoopbackHub, hub_root: Path,
                                                            tiny_llama: Family, validation_dir: Path,
                                                            tmp_path: Path) -> None:
    repos = write_family_to_hub_root(tiny_llama, hub_root)
    local = make_recipe(tiny_llama, validation_dir, key)
    remote = {**local, "base_model": repos["base"], "models": [{"model": repos[d], "domain": d} for d in DOMAINS]}
    options = MergeOptions(progress=False, cache_dir=tmp_path / "cache")
    hub.stats.reset()
    result = merge(remote, tmp_path / "remote", options=options)
    assert result.stats_seconds > 0
    assert cache_files() == []
    assert hub.stats.bytes_for("*.safetensors") > 0  # the weights came through the streaming sources

    # the same statistics as from the local folders (cache keys differ: commit vs local fingerprint)
    remote_reader = _statistics(prepare(remote), options)
    local_reader = _statistics(prepare(local), options)
    assert remote_reader is not None and local_reader is not None
    assert remote_reader.paths != local_reader.paths
    for a, b in zip(remote_reader.paths, local_reader.paths, strict=True):
        ours, theirs = load_statistics(a), load_statistics(b)
        assert set(ours) == set(theirs)
        assert all(torch.equal(ours[name], theirs[name]) for name in ours)
    assert cache_files() == []
