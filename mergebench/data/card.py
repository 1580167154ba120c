"""Dataset cards for the domain datasets and ``mergebench-eval``: the ``domain``/``eval`` templates of
:mod:`mergebench.cards`.

The front matter is what the Hub and ``datasets`` read: ``configs`` with ``data_files`` (so
``load_dataset(repo)`` finds the splits and named configs without guessing), ``license`` inherited from
the sources (a list when they differ), ``language``, ``task_categories``, ``size_categories``,
``source_datasets`` and a ``mergebench`` block with the pinned source revisions and the deduplication,
decontamination and split report. The body repeats all of it for people, with citations.

The inputs are typed records (:class:`DomainReport`, :class:`EvalConfig`: the JSON files a build writes beside
the data); ``python -m mergebench.docs`` renders fixed ones into ``datasets_cards/`` as examples.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, NotRequired, TypedDict

from huggingface_hub import DatasetCard, DatasetCardData

from mergebench.cards import template_path
from mergebench.data.schema import SCHEMA_DOC
from mergebench.data.sources import DomainSpec, SourceSpec


class SourceRow(TypedDict):
    """One pinned source of a domain build (``mergebench_build.json`` → ``sources``)."""

    key: str
    repo_id: str
    config: str | None
    split: str
    requested_revision: str | None
    sha: str
    license: str
    rows_loaded: int
    rows_read: int
    rows_filtered: int
    rows_kept: int


class DedupSummary(TypedDict):
    rows_in: int
    exact_removed: int
    near_removed: int
    ngram: int
    num_perm: int
    bands: int
    threshold: float
    removed_by_source: dict[str, int]
    duplicates: list[dict[str, Any]]


class EvalSetRemoval(TypedDict):
    """How much of one evaluation set the decontamination index covered, and the training rows it removed."""

    texts: int
    indexed: int
    too_short: int
    removed: int


class DecontaminationSummary(TypedDict):
    ngram: int
    min_words: int
    rows_in: int
    removed: int
    eval_origin: str
    eval_sets: dict[str, EvalSetRemoval]
    removed_ids: dict[str, list[str]]


class SplitSummary(TypedDict):
    seed: int
    requested: int
    train_rows: int
    validation_rows: int
    rule: str


class DomainReport(TypedDict):
    """The build report of one domain dataset: what its card and ``mergebench_build.json`` say."""

    format_version: int
    domain: str
    mergebench_version: str
    sources: list[SourceRow]
    dedup: DedupSummary
    decontamination: DecontaminationSummary
    split: SplitSummary
    languages: dict[str, int]


class UpstreamPart(TypedDict):
    """One (repo, config, split) a config built ``--from-hub`` was read from, at the commit read."""

    repo_id: str
    config: str | None
    split: str
    sha: str
    chosen_by: str  # what chose the commit: the pin table, a pins file, or main (unpinned)
    license: str
    gated: bool
    rows: int
    published_rows: int | None
    data_files: str | None


class EvalConfig(TypedDict):
    """One config of ``mergebench-eval`` as its card lists it (``mergebench_eval.json`` plus the citation).

    Configs built from their upstream Hub datasets (``origin: hub``) also record where every row came from
    (``upstream_parts``), what the build filtered, and the upstream task definition that names the data.
    """

    name: str
    domain: str
    role: str
    origin: str
    upstream: str
    license: str
    shipped_license: str
    citation: str
    package: str | None
    note: str
    languages: list[str]
    text_fields: list[str]
    rows: dict[str, int]
    upstream_parts: NotRequired[list[UpstreamPart]]
    filtered: NotRequired[str]
    defined_by: NotRequired[str]


_SIZES = ((1_000, "n<1K"), (10_000, "1K<n<10K"), (100_000, "10K<n<100K"), (1_000_000, "100K<n<1M"),
          (10_000_000, "1M<n<10M"), (100_000_000, "10M<n<100M"))


def size_category(n: int) -> str:
    """The Hub's ``size_categories`` bucket for ``n`` rows."""
    return next((label for limit, label in _SIZES if n < limit), "n>1T")


def _one_or_list(values: Sequence[str]) -> str | list[str]:
    unique = sorted(set(values))
    return unique[0] if len(unique) == 1 else unique


def _template(name: str, template_dir: Path | None) -> str:
    if template_dir is None:
        return str(template_path(Path(name).stem))
    path = template_dir / name
    if not path.is_file():
        raise FileNotFoundError(f"Dataset card template '{path}' is missing.")
    return str(path)


def domain_card(report: DomainReport | Mapping[str, Any], domain: DomainSpec, sources: Sequence[SourceSpec], *,
                repo_id: str, template_dir: Path | None = None) -> DatasetCard:
    """The card of one domain dataset, from the build report (see :func:`mergebench.data.build.build_domain`)."""
    split = report["split"]
    languages = sorted({lang for s in sources for lang in s.languages})
    data = DatasetCardData(
        pretty_name=domain.pretty_name,
        license=_one_or_list([s["license"] for s in report["sources"]]),
        language=languages,
        task_categories=list(domain.task_categories),
        size_categories=[size_category(split["train_rows"] + split["validation_rows"])],
        source_datasets=list(dict.fromkeys(s["repo_id"] for s in report["sources"])),
        tags=["mergebench", domain.name],
        configs=[{"config_name": "default", "data_files": [
            {"split": "train", "path": "data/train-*"}, {"split": "validation", "path": "data/validation-*"}]}],
        mergebench=_front_matter_report(report),
    )
    return DatasetCard.from_template(data, template_path=_template("domain.md", template_dir),
                                     pretty_name=domain.pretty_name, description=domain.description,
                                     domain=domain.name, repo_id=repo_id, report=report, schema=SCHEMA_DOC,
                                     sources=sources, eval_sets=domain.eval_sets)


def _front_matter_report(report: DomainReport | Mapping[str, Any]) -> dict[str, Any]:
    """The machine-readable part of the report (revisions and counts; no per-row lists)."""
    dec = report["decontamination"]
    return {
        "format_version": report["format_version"],
        "domain": report["domain"],
        "sources": [{k: s[k] for k in ("key", "repo_id", "config", "split", "requested_revision", "sha",
                                       "rows_read", "rows_filtered", "rows_kept")} for s in report["sources"]],
        "dedup": {k: report["dedup"][k] for k in ("rows_in", "exact_removed", "near_removed", "ngram", "threshold")},
        "decontamination": {"ngram": dec["ngram"], "min_words": dec["min_words"], "rows_in": dec["rows_in"],
                            "removed": dec["removed"], "eval_origin": dec["eval_origin"],
                            "eval_sets": len(dec["eval_sets"]),
                            "removed_by_eval_set": {k: v["removed"] for k, v in dec["eval_sets"].items()
                                                    if v["removed"]}},
        "split": dict(report["split"]),
    }


def eval_card(configs: Sequence[EvalConfig | Mapping[str, Any]], *, repo_id: str,
              template_dir: Path | None = None) -> DatasetCard:
    """The card of ``mergebench-eval``: one ``configs`` entry per evaluation set, with its data files."""
    total = sum(n for c in configs for n in c["rows"].values())
    licenses = sorted({c["shipped_license"] for c in configs})
    data = DatasetCardData(
        pretty_name="MergeBench evaluation sets",
        license=_one_or_list(licenses),
        language=sorted({lang for c in configs for lang in c["languages"]}),
        task_categories=["text-generation", "question-answering", "multiple-choice", "translation"],
        size_categories=[size_category(total)],
        tags=["mergebench", "evaluation"],
        configs=[{"config_name": c["name"], "data_files": [
            {"split": s, "path": f"{c['name']}/{s}-*"} for s in c["rows"]]} for c in configs],
        mergebench={"format_version": 1, "configs": {c["name"]: {
            "role": c["role"], "domain": c["domain"], "origin": c["origin"], "upstream": c["upstream"],
            "license": c["license"], "package": c["package"], "rows": dict(c["rows"]),
            **({"upstream_parts": [{k: p[k] for k in ("repo_id", "config", "split", "sha", "rows")}
                                   for p in c["upstream_parts"]]} if c.get("upstream_parts") else {})}
            for c in configs}},
    )
    citations = list(dict.fromkeys(c["citation"] for c in configs))
    return DatasetCard.from_template(data, template_path=_template("eval.md", template_dir),
                                     pretty_name="MergeBench evaluation sets", repo_id=repo_id, configs=configs,
                                     licenses=licenses, citations=citations,
                                     hub_configs=[c for c in configs if c.get("upstream_parts")])
