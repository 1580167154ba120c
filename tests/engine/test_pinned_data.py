"""A recipe's ``data:`` dataset repos are pinned like its models: the saved recipe names the commit read."""

from __future__ import annotations

from pathlib import Path

import yaml
from huggingface_hub import HfApi

from mergebench.merge import MergeOptions, merge
from tests.engine.test_all_methods import DOMAINS, make_recipe


def test_dataset_repos_in_data_are_pinned_to_their_commit(hub, hub_root: Path, tiny_llama, validation_dir,
                                                          tmp_path: Path) -> None:
    folder = hub_root / "datasets" / "org" / "val-math"
    folder.mkdir(parents=True)
    (folder / "validation.jsonl").write_text((validation_dir / "math.jsonl").read_text())
    sha = HfApi().dataset_info("org/val-math").sha
    config = make_recipe(tiny_llama, validation_dir, "regmean")
    config["data"]["math"] = "org/val-math"
    from_hub = merge(config, tmp_path / "hub", options=MergeOptions(progress=False, cache_dir=tmp_path / "c"))
    assert from_hub.recipe.data["math"] == f"org/val-math@{sha}"
    saved = yaml.safe_load((from_hub.out_dir / "mergebench_config.yaml").read_text())
    assert saved["data"]["math"] == f"org/val-math@{sha}"
    assert f"org/val-math@{sha}" in (from_hub.out_dir / "README.md").read_text()
    # the same rows from a local file: the same merge
    local = merge(make_recipe(tiny_llama, validation_dir, "regmean"), tmp_path / "local",
                  options=MergeOptions(progress=False, cache_dir=tmp_path / "c"))
    files = sorted(p.name for p in local.out_dir.glob("*.safetensors"))
    assert all((local.out_dir / f).read_bytes() == (from_hub.out_dir / f).read_bytes() for f in files)
    assert set(DOMAINS) <= set(from_hub.recipe.data)
