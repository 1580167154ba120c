"""``mergebench data eval-sets``: write (and push) the ``mergebench-eval`` dataset repo.

Layout: ``{config}/{split}-00000-of-00001.parquet`` per evaluation set, a card whose ``configs`` maps
each config to its files (``load_dataset(repo, "gsm8k", split="test")``), and ``mergebench_eval.json``
recording, per config, its origin, upstream, license, row counts and — for packaged data — the exact
package version the rows were read from.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterable
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard, HfApi

from mergebench.data.card import eval_card
from mergebench.data.evalsets import EVAL_SETS, EvalSetSpec, load_eval_set
from mergebench.data.publish import atomic_folder, check_output, validate_card, write_parquet
from mergebench.errors import ConfigError
from mergebench.hub.push import push_folder

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalRepoResult:
    out_dir: Path
    configs: list[dict[str, Any]]
    card: DatasetCard
    commit_url: str | None = None


def installed_requirement(requirement: str | None) -> str | None:
    """``name==version`` of the installed distribution behind a pinned requirement (the pin if absent)."""
    if requirement is None:
        return None
    name = requirement.split("==")[0]
    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:
        return requirement


def _config_entry(spec: EvalSetSpec, data: dict[str, list[dict]]) -> dict[str, Any]:
    return {"name": spec.name, "domain": spec.domain, "role": spec.role, "origin": spec.origin,
            "upstream": spec.upstream, "license": spec.license, "shipped_license": spec.shipped_license,
            "citation": spec.citation, "package": installed_requirement(spec.package), "note": spec.note,
            "languages": list(spec.languages), "text_fields": list(spec.text_fields),
            "rows": {split: len(rows) for split, rows in data.items()}}


def build_eval_repo(out_dir: Path, *, names: Iterable[str] | None = None, push_to: str | None = None,
                    private: bool = False, overwrite: bool = False, api: HfApi | None = None) -> EvalRepoResult:
    """Write every evaluation set (or ``names``) as one config of a dataset folder; optionally push it."""
    chosen = list(names) if names is not None else list(EVAL_SETS)
    unknown = [n for n in chosen if n not in EVAL_SETS]
    if unknown:
        raise ConfigError(f"Unknown evaluation set(s) {unknown}.", hint=f"Choose from {list(EVAL_SETS)}.")
    check_output(Path(out_dir), overwrite=overwrite)
    loaded = {n: load_eval_set(n) for n in chosen}
    configs = [_config_entry(EVAL_SETS[n], loaded[n]) for n in chosen]
    card = eval_card(configs, repo_id=push_to or "<org>/mergebench-eval")
    with atomic_folder(Path(out_dir), overwrite=overwrite) as tmp:
        for name, splits in loaded.items():
            for split, rows in splits.items():
                write_parquet(rows, tmp / name, split)
        (tmp / "README.md").write_text(str(card), encoding="utf-8")
        manifest = [{k: v for k, v in c.items() if k != "citation"} for c in configs]
        (tmp / "mergebench_eval.json").write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        if push_to:
            validate_card(card)
    logger.info("wrote %d evaluation sets to %s", len(configs), out_dir)
    commit_url = None
    if push_to:
        commit_url = push_folder(Path(out_dir), push_to, repo_type="dataset", private=private, api=api,
                                 delete_patterns=("*.parquet",),
                                 commit_message=f"MergeBench evaluation sets ({len(configs)} configs)")
    return EvalRepoResult(Path(out_dir), configs, card, commit_url)
