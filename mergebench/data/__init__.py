"""MergeBench data: the five domain training sets, their validation splits, and the evaluation sets.

Flow: :mod:`sources` (what to load) → :mod:`load` (pin + load from the Hub) → :mod:`convert` (project
schema, :mod:`schema`) → :mod:`dedup` → :mod:`decontaminate` (against :mod:`evalsets`) → :mod:`split` →
:mod:`publish` (parquet, atomic folder, one-commit push) with a card from :mod:`card`. :mod:`build` runs
it for a domain, converting, deduplicating and decontaminating in one pass of bounded batches (:mod:`clean`,
with the per-row digests of :mod:`seen`); :mod:`evalrepo` writes ``mergebench-eval`` (from the packaged sets, or
with ``--from-hub`` from each set's upstream Hub dataset: :mod:`upstream`, the pin table, one converter per upstream
schema and the loader); :mod:`fixture_sources` provides offline stand-ins of the sources in their exact schemas.

>>> from mergebench.data import build_domain, BuildOptions
>>> result = build_domain("math", "build/math", push_to="my-org/mergebench-math")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mergebench.data.evalsets import EVAL_SETS, EvalCorpus, EvalSetSpec, load_eval_set
from mergebench.data.sources import DOMAIN_SPECS, SOURCES, DomainSpec, SourceSpec, get_domain
from mergebench.domains import DOMAINS

if TYPE_CHECKING:
    from mergebench.data.build import BuildOptions, BuildResult, build_domain
    from mergebench.data.evalrepo import EvalRepoResult, build_eval_repo
    from mergebench.data.fixture_sources import publish_fixture_sources

_LAZY = {"BuildOptions": "build", "BuildResult": "build", "build_domain": "build", "EvalRepoResult": "evalrepo",
         "build_eval_repo": "evalrepo", "publish_fixture_sources": "fixture_sources"}

__all__ = ["DOMAINS", "DOMAIN_SPECS", "EVAL_SETS", "SOURCES", "BuildOptions", "BuildResult", "DomainSpec",
           "EvalCorpus", "EvalRepoResult", "EvalSetSpec", "SourceSpec", "build_domain", "build_eval_repo",
           "get_domain", "load_eval_set", "publish_fixture_sources"]


def __getattr__(name: str) -> Any:
    """Import the build modules (which pull in ``datasets``/``pyarrow``) only when used."""
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(f"mergebench.data.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mergebench.data' has no attribute '{name}'")
