"""``mergebench data build DOMAIN``: sources on the Hub → one clean, pinned, documented dataset repo.

Steps, in order, each failing before anything is written or pushed:

1. resolve every source's revision to a commit sha and load it with ``datasets.load_dataset`` at that
   sha (:mod:`~mergebench.data.load`); check columns and emptiness of *all* sources before any work;
2. in one streaming pass (:mod:`~mergebench.data.clean`), ``batch_rows`` rows at a time: convert rows to the
   project schema (:mod:`~mergebench.data.convert`), failing on the first bad cell with the source and row;
   deduplicate (exact, then MinHash near-duplicates); decontaminate against every evaluation set (13-gram
   overlap);
3. carve the fixed-seed validation split from the kept rows' prompt-group digests;
4. write parquet shards (read back one shard at a time from the pass's scratch copy of the converted rows),
   the card and ``mergebench_build.json`` into a temporary folder, check the card with the Hub when pushing,
   then rename the folder into place;
5. push the folder in one commit (``--push-to``).

No step holds a whole split in memory: the sources stay memory-mapped Arrow tables, the scratch files go in a
temporary folder beside ``out_dir`` (removed at the end, or by the next build of ``out_dir`` if this one is killed:
:func:`~mergebench.data.publish.exclusive_build`), and what is kept across batches is a few bytes per row
(see :mod:`~mergebench.data.clean`; measured in ``benchmarks/data_scale.py``).
"""

from __future__ import annotations

import dataclasses
import json
import logging
import tempfile
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import DatasetCard, HfApi

from mergebench.data.card import domain_card
from mergebench.data.clean import Cleaned, clean
from mergebench.data.decontaminate import DecontamConfig, NgramIndex
from mergebench.data.dedup import DedupConfig
from mergebench.data.evalsets import EvalCorpus
from mergebench.data.load import LoadedSource, load_source
from mergebench.data.publish import (
    TableRows,
    atomic_folder,
    check_output,
    exclusive_build,
    validate_card,
    write_parquet,
)
from mergebench.data.sources import DomainSpec, SourceSpec, get_domain
from mergebench.data.split import SplitReport, validation_mask
from mergebench.errors import ConfigError, DataError
from mergebench.hub.push import push_folder

logger = logging.getLogger(__name__)
FORMAT_VERSION = 1


@dataclass(frozen=True)
class BuildOptions:
    """How to build. ``revisions``/``repos`` map a source key to a revision / a replacement repo id;
    ``eval_sets`` is the ``mergebench-eval`` repo (``org/name[@rev]`` or a folder) to decontaminate against
    (default: the packaged evaluation sets and stand-ins)."""

    revisions: Mapping[str, str] = field(default_factory=dict)
    repos: Mapping[str, str] = field(default_factory=dict)
    cache_dir: Path | None = None
    eval_sets: str | None = None
    dedup: DedupConfig = field(default_factory=DedupConfig)
    decontam: DecontamConfig = field(default_factory=DecontamConfig)
    validation_rows: int | None = None  # None: the domain's (1,000)
    seed: int | None = None  # None: the domain's (42)
    batch_rows: int = 10_000  # rows held as Python objects at a time; the result does not depend on it
    overwrite: bool = False
    progress: bool = False


@dataclass(frozen=True)
class BuildResult:
    domain: str
    out_dir: Path
    report: dict[str, Any]
    card: DatasetCard
    commit_url: str | None = None

    @property
    def train_rows(self) -> int:
        return self.report["split"]["train_rows"]

    @property
    def validation_rows(self) -> int:
        return self.report["split"]["validation_rows"]


def domain_source_specs(domain: DomainSpec, options: BuildOptions) -> tuple[SourceSpec, ...]:
    """The domain's sources with ``--source KEY=REPO`` overrides applied; unknown keys are an error."""
    from mergebench.data.sources import SOURCES

    for key in [*options.revisions, *options.repos]:
        if key not in domain.sources:
            raise ConfigError(f"'{key}' is not a source of domain '{domain.name}'; its sources are "
                              f"{list(domain.sources)}.", hint=f"Use KEY=VALUE with KEY in {list(domain.sources)}.")
    return tuple(dataclasses.replace(SOURCES[k], repo_id=options.repos[k]) if k in options.repos else SOURCES[k]
                 for k in domain.sources)


def build_domain(domain: str, out_dir: Path, *, options: BuildOptions = BuildOptions(), push_to: str | None = None,
                 private: bool = False, corpus: EvalCorpus | None = None, api: HfApi | None = None) -> BuildResult:
    """Build (and optionally push) the dataset of one domain.

    Args:
        domain: one of ``instruction, math, multilingual, coding, safety``.
        out_dir: the dataset folder to write (replaced atomically; must be empty unless ``overwrite``).
        push_to: dataset repo to upload to in one commit, e.g. ``org/mergebench-math``.
        corpus: evaluation texts to decontaminate against (default: ``options.eval_sets``' configs, else every
            packaged set of :data:`~mergebench.data.evalsets.EVAL_SETS`).

    Raises:
        DataError: a source is unusable (names the source, and the row when one row is at fault).
        OutputExistsError: ``out_dir`` is not empty and ``options.overwrite`` is false.
    """
    dspec = get_domain(domain)
    specs = domain_source_specs(dspec, options)
    seed = dspec.seed if options.seed is None else options.seed
    out_dir = Path(out_dir)
    check_output(out_dir, overwrite=options.overwrite)  # fail before downloading anything
    if corpus is None:
        corpus = EvalCorpus.from_repo(options.eval_sets, api=api) if options.eval_sets else EvalCorpus.default()
    started = time.perf_counter()
    loaded = [load_source(s, revision=options.revisions.get(s.key), cache_dir=options.cache_dir, seed=seed,
                          api=api) for s in specs]
    logger.info("loaded %d rows of %d source(s) in %.1f s", sum(len(s.indices) for s in loaded), len(loaded),
                time.perf_counter() - started)
    with exclusive_build(out_dir), tempfile.TemporaryDirectory(prefix=f".{out_dir.name}.scratch-",
                                                                dir=out_dir.parent) as scratch:
        cleaned = clean(loaded, domain=domain, dedup=options.dedup, index=NgramIndex(corpus.texts, options.decontam),
                        scratch=Path(scratch), batch_rows=options.batch_rows, progress=options.progress)
        if not cleaned.dedup.rows_in:
            raise DataError(f"No rows of domain '{domain}' survive the source filters.",
                            source=",".join(s.key for s in specs))
        size = options.validation_rows or dspec.validation_rows
        validation, split_report = validation_mask(cleaned.groups, size=size, seed=seed)
        report = _report(domain, loaded, cleaned, split_report, corpus)
        repo_id = push_to or f"<org>/mergebench-{domain}"
        card = domain_card(report, dspec, specs, repo_id=repo_id)
        kept = np.flatnonzero(cleaned.kept)
        with atomic_folder(out_dir, overwrite=options.overwrite) as tmp:
            write_parquet(TableRows(cleaned.table, kept[~validation]), tmp / "data", "train")
            write_parquet(TableRows(cleaned.table, kept[validation]), tmp / "data", "validation")
            (tmp / "README.md").write_text(str(card), encoding="utf-8")
            (tmp / "mergebench_build.json").write_text(json.dumps(report, indent=1, ensure_ascii=False),
                                                       encoding="utf-8")
            if push_to:
                validate_card(card)  # an invalid card fails here: nothing written, nothing pushed
    logger.info("%s: %d train + %d validation rows written to %s in %.1f s", domain, split_report.train_rows,
                split_report.validation_rows, out_dir, time.perf_counter() - started)
    commit_url = None
    if push_to:
        shas = ", ".join(f"{s['repo_id']}@{s['sha'][:12]}" for s in report["sources"])
        commit_url = push_folder(out_dir, push_to, repo_type="dataset", private=private, api=api,
                                 delete_patterns=("*.parquet",),
                                 commit_message=f"MergeBench {domain} dataset from {shas}")
    return BuildResult(domain, out_dir, report, card, commit_url)


def _mergebench_version() -> str:
    try:
        return version("mergebench")
    except PackageNotFoundError:
        return "unknown"


def _report(domain: str, loaded: list[LoadedSource], cleaned: Cleaned, split: SplitReport,
            corpus: EvalCorpus) -> dict[str, Any]:
    """Everything the card and ``mergebench_build.json`` say about a build (JSON-serialisable)."""
    sources = [{
        "key": s.spec.key, "repo_id": s.spec.repo_id, "config": s.spec.config, "split": s.spec.split,
        "requested_revision": s.requested_revision, "sha": s.sha, "license": s.spec.license,
        "rows_loaded": s.rows_loaded, "rows_read": len(s.indices),
        "rows_filtered": cleaned.filtered[s.spec.key], "rows_kept": cleaned.kept_by_source[s.spec.key],
    } for s in loaded]
    dedup, decon = cleaned.dedup, cleaned.decontam
    cfg = dedup.config
    return {
        "format_version": FORMAT_VERSION, "domain": domain, "mergebench_version": _mergebench_version(),
        "sources": sources,
        "dedup": {"rows_in": dedup.rows_in, "exact_removed": dedup.exact_removed, "near_removed": dedup.near_removed,
                  "ngram": cfg.ngram, "num_perm": cfg.num_perm, "bands": cfg.bands, "threshold": cfg.threshold,
                  "removed_by_source": dedup.removed_by_source,
                  "duplicates": [dataclasses.asdict(d) for d in dedup.duplicates]},
        "decontamination": {
            "ngram": decon.config.ngram, "min_words": decon.config.min_words, "rows_in": decon.rows_in,
            "removed": decon.removed, "eval_origin": corpus.origin,
            "eval_sets": {name: {**dataclasses.asdict(cov), "removed": decon.removed_by_eval_set.get(name, 0)}
                          for name, cov in decon.coverage.items()},
            "removed_ids": {k: list(v) for k, v in decon.removed_ids.items()}},
        "split": dataclasses.asdict(split),
        "languages": cleaned.languages,
    }
