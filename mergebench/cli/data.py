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


def _check_eval_set(name: str) -> None:
    from mergebench.data.evalsets import EVAL_SETS

    if name not in EVAL_SETS:
        raise ConfigError(f"Unknown evaluation set '{name}'.", hint=f"Choose from {', '.join(EVAL_SETS)}.")


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
    push_to: DatasetPushOpt = None,
    private: PrivateOpt = False,
    overwrite: OverwriteOpt = False,
    cache_dir: CacheDirOpt = None,
    format: FormatOpt = "table",
) -> None:
    """Load the domain's sources from the Hub, clean them, write parquet and a card, and optionally push.

    EXAMPLES: mergebench data build math --out build/math --push-to my-org/mergebench-math
    """
    from mergebench.data.build import BuildOptions, build_domain
    from mergebench.data.sources import get_domain

    keys = get_domain(domain).sources
    options = BuildOptions(revisions=parse_pairs(source_revision or [], what="--source-revision", sources=keys),
                           repos=parse_pairs(source or [], what="--source", sources=keys), cache_dir=cache_dir,
                           overwrite=overwrite, progress=sys.stderr.isatty())
    r = build_domain(domain, out_dir, options=options, push_to=push_to, private=private)
    summary = {"domain": r.domain, "out_dir": str(r.out_dir), "train_rows": r.train_rows,
               "validation_rows": r.validation_rows, "sources": {s["repo_id"]: s["sha"] for s in r.report["sources"]},
               "duplicates_removed": r.report["dedup"]["exact_removed"] + r.report["dedup"]["near_removed"],
               "contaminated_removed": r.report["decontamination"]["removed"], "commit_url": r.commit_url}
    print_fields(summary, format)


@data_app.command("eval-sets")
def eval_sets(
    out_dir: DatasetOutOpt,
    only: Annotated[list[str] | None, typer.Option(
        "--only", callback=checked_by(_check_eval_set), help="Build only these configs (repeat).")] = None,
    push_to: DatasetPushOpt = None,
    private: PrivateOpt = False,
    overwrite: OverwriteOpt = False,
    format: FormatOpt = "table",
) -> None:
    """Write the evaluation sets as one dataset repo (one config per task), and optionally push it.

    EXAMPLES: mergebench data eval-sets --out build/eval --push-to my-org/mergebench-eval
    """
    from mergebench.data.evalrepo import build_eval_repo

    r = build_eval_repo(out_dir, names=only or None, push_to=push_to, private=private, overwrite=overwrite)
    print_fields({"out_dir": str(r.out_dir), "configs": {c["name"]: c["rows"] for c in r.configs},
                  "commit_url": r.commit_url}, format)


@data_app.command("fixtures")
def fixtures(hub_root: Annotated[Path, typer.Argument(help="Loopback Hub root folder.")]) -> None:
    """Write the offline fixture sources as dataset repos under HUB_ROOT/datasets/, with their real ids.

    EXAMPLES: mergebench data fixtures /tmp/hub
    """
    from mergebench.data.fixture_sources import publish_fixture_sources

    print_fields({k: str(v) for k, v in publish_fixture_sources(hub_root).items()}, "table")

