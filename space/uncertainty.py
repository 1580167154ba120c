"""Standard errors of the leaderboard's numbers, as columns next to them: ``normalised_se``, ``math_se``, …,
``forgetting_se`` and ``task:<name>_se``.

The propagation is :mod:`mergebench.eval.scores`' (first order, from each task's recorded standard error;
see its docstring), so the Space and the CLI agree. One case is the Space's own: a row compared with
itself (an expert in its own domain, the base on the general tasks) is exactly 1 by construction and has
no error, where treating the two sides as independent samples would invent one. A number whose inputs
lack a standard error has none (``NaN``), never a made-up 0.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

import pandas as pd

from mergebench.domains import DOMAINS
from mergebench.eval.leaderboard import TASK_PREFIX, latest
from mergebench.eval.results import Results
from mergebench.eval.scores import Ratios, forgetting, mean_stderr, normalised, task_stderr
from mergebench.eval.scores import within_noise as _intervals_overlap

SE = "_se"
"""Suffix of a standard-error column: ``normalised_se``, ``math_se``, ``task:mb_gsm8k_cot_se``."""
SCORED = ("normalised", *DOMAINS, "forgetting")
"""Leaderboard columns that get a standard error."""


@dataclass(frozen=True)
class References:
    """What one base's rows are normalised by."""

    experts: dict[str, Results]
    base: Results | None


def _stderr(ratios: Ratios, model: Results, reference: Results | None) -> float | None:
    if ratios.mean is None:
        return None
    if reference is not None and reference.run.get("id") == model.run.get("id"):
        return 0.0  # the run against itself: every ratio is exactly 1
    return ratios.stderr


def row_errors(r: Results, refs: References) -> dict[str, float | None]:
    """Standard errors of one leaderboard row: ``normalised``, each domain, ``forgetting``, raw tasks."""
    _, domains = normalised(r, refs.experts)
    out: dict[str, float | None] = {d: _stderr(ratios, r, refs.experts.get(d)) for d, ratios in domains.items()
                                    if ratios.mean is not None}
    out["normalised"] = mean_stderr(list(out.values()))  # as scores.normalised_stderr, over the domains above
    out["forgetting"] = _stderr(forgetting(r, refs.base), r, refs.base)
    out |= {f"{TASK_PREFIX}{name}": task_stderr(r, name) for name in r.tasks}
    return out


def _base_of(r: Results) -> str | None:
    return r.model.get("base_model") or (r.model.get("id") if r.model.get("role") == "base" else None)


def references(results: Iterable[Results]) -> dict[str | None, References]:
    """Per base: its experts (by domain) and its base run, as :func:`mergebench.eval.leaderboard.table`
    pairs them (the latest run of each)."""
    out: dict[str | None, References] = {}
    for r in latest(results):
        refs = out.setdefault(_base_of(r), References({}, None))
        if r.model.get("role") == "expert" and r.model.get("domain"):
            refs.experts[r.model["domain"]] = r
        elif r.model.get("role") == "base":
            out[_base_of(r)] = References(refs.experts, r)
    return out


def with_errors(df: pd.DataFrame, results: Iterable[Results]) -> pd.DataFrame:
    """``df`` (a :func:`~mergebench.eval.leaderboard.table`) plus ``<column>_se`` for every scored column and
    raw task score, matched to its row by ``run_id``; ``NaN`` where the results carry no standard error."""
    runs = list(results)
    by_run = {r.run.get("id"): r for r in runs}
    refs = references(runs)
    rows = []
    for run_id, base in zip(df.get("run_id", []), df.get("base_model", []), strict=True):
        r = by_run.get(run_id)
        rows.append(row_errors(r, refs.get(base, References({}, None))) if r is not None else {})
    errors = pd.DataFrame(rows, index=df.index, dtype=float)
    wanted = [*SCORED, *(c for c in df.columns if c.startswith(TASK_PREFIX))]
    return pd.concat([df, errors.reindex(columns=wanted).add_suffix(SE)], axis=1)


def within_noise(a: float, se_a: float | None, b: float, se_b: float | None) -> bool:
    """Whether ``a ± 1.96·SE`` and ``b ± 1.96·SE`` overlap (:func:`mergebench.eval.scores.within_noise`);
    ``False`` when a standard error is unknown."""
    known = [se for se in (se_a, se_b) if se is not None and not pd.isna(se)]
    return len(known) == 2 and bool(_intervals_overlap(a, known[0], b, known[1]))
