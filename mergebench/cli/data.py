"""``mergebench data …``: build the domain datasets and the evaluation repo (results on stdout)."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from mergebench.cli.options import (
    CacheDirOpt,
    DatasetOutOpt,
    DatasetPushOpt,
    Domain,
    FormatOpt,
    OverwriteOpt,
    PrivateOpt,
    checked_by,
)
from mergebench.cli.output import print_fields
from mergebench.errors import ConfigError

data_app = typer.Typer(help="Build the training datasets and the evaluation sets as Hub datasets.",
                       no_args_is_help=True)


def _check_eval_set(value: str) -> None:
    from mergebench.data.evalsets import EVAL_SETS
    from mergebench.eval.data_source import EXTRA_SETS

    for name in split_names([value]):
        if name not in EVAL_SETS and name not in EXTRA_SETS:
            raise ConfigError(f"Unknown evaluation set '{name}'.",
                              hint=f"Choose from {', '.join([*EVAL_SETS, *EXTRA_SETS])}.")


def split_names(values: list[str]) -> list[str]:
    """``["a,b", "c"]`` → ``["a", "b", "c"]``: a list option given comma-separated, repeated, or both."""
    return [name.strip() for value in values for name in value.split(",") if name.strip()]


def parse_pairs(values: list[str], *, what: str, sources: tuple[str, ...]) -> dict[str, str]:
    """``["KEY=VALUE", ...]`` → dict; a bare ``VALUE`` is allowed when the domain has a single source."""
    pairs = {}
    for value in values:
        key, sep, rest = value.partition("=")
        if not sep:
            if len(sources) != 1:
                raise ConfigError(f"{what} '{value}' must be KEY={value} for a domain with several sources.",
                                  hint=f"Sources: {', '.join(sources)}.")
            key, rest = sources[0], value
        if not key or not rest:
            raise ConfigError(f"Cannot read {what} '{value}'.", hint="Write KEY=VALUE, e.g. aya=main.")
        pairs[key] = rest
    return pairs


@data_app.command("build")
def build(
    domain: Annotated[Domain, typer.Argument(help="instruction, math, multilingual, coding or safety.")],
    out_dir: DatasetOutOpt,
    source_revision: Annotated[list[str] | None, typer.Option(
        "--source-revision",
        help="KEY=REV (branch, tag or sha) per source; a bare REV for one-source domains.")] = None,
    source: Annotated[list[str] | None, typer.Option(
        "--source", help="KEY=ORG/NAME: read a source from another dataset repo (same schema).")] = None,
    eval_sets: Annotated[str | None, typer.Option(
        "--eval-sets", help="Decontaminate against this mergebench-eval repo, ORG/NAME[@REV] (pinned to a commit) "
                            "or a folder written by `data eval-sets`; default: the packaged sets.")] = None,
    push_to: DatasetPushOpt = None,
    private: PrivateOpt = False,
    overwrite: OverwriteOpt = False,
    cache_dir: CacheDirOpt = None,
    format: FormatOpt = "table",
) -> None:
    """Load the domain's sources from the Hub, clean them, write parquet and a card, and optionally push.

    EXAMPLES: mergebench data build math --out build/math --push-to my-org/mergebench-math
              mergebench data build math --out build/math --eval-sets my-org/mergebench-eval@v1
    """
    from mergebench.data.build import BuildOptions, build_domain
    from mergebench.data.sources import get_domain

    keys = get_domain(domain).sources
    options = BuildOptions(revisions=parse_pairs(source_revision or [], what="--source-revision", sources=keys),
                           repos=parse_pairs(source or [], what="--source", sources=keys), cache_dir=cache_dir,
                           eval_sets=eval_sets,
                           overwrite=overwrite, progress=sys.stderr.isatty())
    r = build_domain(domain, out_dir, options=options, push_to=push_to, private=private)
    summary = {"domain": r.domain, "out_dir": str(r.out_dir), "train_rows": r.train_rows,
               "validation_rows": r.validation_rows, "sources": {s["repo_id"]: s["sha"] for s in r.report["sources"]},
               "duplicates_removed": r.report["dedup"]["exact_removed"] + r.report["dedup"]["near_removed"],
               "contaminated_removed": r.report["decontamination"]["removed"],
               "eval_sets": r.report["decontamination"]["eval_origin"], "commit_url": r.commit_url}
    print_fields(summary, format)


@data_app.command("eval-sets")
def eval_sets(
    out_dir: DatasetOutOpt,
    tasks: Annotated[list[str] | None, typer.Option(
        "--tasks", callback=checked_by(_check_eval_set),
        help="Build only these configs (comma-separated or repeated), e.g. gsm8k,mmlu.")] = None,
    from_hub: Annotated[bool, typer.Option(
        "--from-hub", help="Read each set from its upstream Hub dataset at its pinned commit (needs a token for "
                           "gated sets) instead of the packaged data and stand-ins.")] = False,
    unpinned: Annotated[bool, typer.Option(
        "--unpinned", help="With --from-hub: read each repo's current main commit instead of the pin table; the "
                           "commits read are recorded per set.")] = False,
    pins: Annotated[Path | None, typer.Option(
        "--pins", exists=True, dir_okay=False,
        help="With --from-hub: the mergebench_eval.json of an earlier --from-hub build, whose commits and row "
             "counts replace the pin table's.")] = None,
    cache_dir: CacheDirOpt = None,
    push_to: DatasetPushOpt = None,
    private: PrivateOpt = False,
    overwrite: OverwriteOpt = False,
    format: FormatOpt = "table",
) -> None:
    """Write the evaluation sets as one dataset repo (one config per task) with the eval.yaml that makes it a
    benchmark on the Hub (one leaderboard per task), and optionally push it.

    EXAMPLES: mergebench data eval-sets --out build/eval --push-to my-org/mergebench-eval
              mergebench data eval-sets --from-hub --out build/eval --push-to my-org/mergebench-eval
              mergebench data eval-sets --from-hub --unpinned --tasks gsm8k,mmlu --out build/eval
    """
    from mergebench.data.evalrepo import build_eval_repo
    from mergebench.data.upstream.load import HubBuild
    from mergebench.eval.benchmark import benchmark_tasks, extra_eval_sets

    if (unpinned or pins is not None or cache_dir is not None) and not from_hub:
        raise ConfigError("--unpinned, --pins and --cache-dir choose how --from-hub reads the upstream datasets.",
                          hint="Add --from-hub, or drop them to build from the packaged data and stand-ins.")
    hub = HubBuild(unpinned=unpinned, pins=pins, cache_dir=cache_dir, progress=sys.stderr.isatty()) \
        if from_hub else None
    r = build_eval_repo(out_dir, names=split_names(tasks or []) or None, push_to=push_to, private=private,
                        overwrite=overwrite, tasks=benchmark_tasks(), extra_sets=extra_eval_sets(), from_hub=hub)
    summary = {"out_dir": str(r.out_dir), "configs": {c["name"]: c["rows"] for c in r.configs}}
    if from_hub:
        summary["upstream"] = {c["name"]: list(dict.fromkeys(f"{p['repo_id']}@{p['sha']}" for p in c["upstream_parts"]))
                               for c in r.configs if "upstream_parts" in c}
    print_fields(summary | {"commit_url": r.commit_url}, format)


@data_app.command("fixtures")
def fixtures(hub_root: Annotated[Path, typer.Argument(help="Loopback Hub root folder.")]) -> None:
    """Write the offline fixtures of the training sources and of the evaluation sets' upstream datasets as dataset
    repos under HUB_ROOT/datasets/, with their real ids and file layouts.

    EXAMPLES: mergebench data fixtures /tmp/hub
    """
    from mergebench.data.fixture_sources import publish_fixture_sources
    from mergebench.fixtures.upstream import publish_upstream_fixtures

    written = {k: str(v) for k, v in publish_fixture_sources(hub_root).items()}
    written |= {k: str(v) for k, v in publish_upstream_fixtures(hub_root).items()}
    print_fields(written, "table")

