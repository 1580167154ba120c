"""MergeBench's headline numbers, computed from results files (pure: no model, no I/O but reading JSON).

* **Normalised performance** (spec §4, with this project's within-domain rule): for each task of a
  domain, the merged model's score ÷ the domain expert's score on the same task; the mean of those
  ratios within the domain; then the mean over the domains present. Only tasks whose domain is one of
  the five count (``test`` and ``tiny`` roles; validation surrogates never do).
* **Forgetting**: for each general task (domain ``general``: the forgetting suite, and the tiny suite's
  sanity task), merged ÷ base; then the mean. 1.0 = nothing forgotten.
* **Multi-task gap**: the merged model's normalised performance (and forgetting) minus the multi-task
  baseline's, both normalised by the same experts (and base). Positive = merging beats joint training.
* **Cost**: merge wall-clock + validation wall-clock (all grid points), from the ``cost`` block the
  caller recorded; the paper found validation often dominates.

A ratio needs both scores and a non-zero reference: tasks where the reference failed, did not run or
scored 0 are listed in ``skipped`` with the reason, never silently averaged as 0 or ∞.

**Standard errors** (the ``±`` of the leaderboards) are propagated to first order from each task's recorded
standard error (``stderr[main_metric]`` of the results file: the standard error of the mean over its items),
treating the tasks, and the merged model and its references, as independent samples:

* a ratio r = m / e of the model's score m to the reference's e:  SE(r) = √(SE(m)² + r²·SE(e)²) / e;
* a mean of k ratios (a domain's tasks; the domains of the normalised score; the forgetting tasks):
  SE = √(Σ SE(rᵢ)²) / k;
* the multi-task gap N − N_mt:  SE = √(SE(N)² + SE(N_mt)²).

A standard error is ``None`` (unknown), never 0, when any part lacks one (a corpus metric such as chrF or
BLEU, results pushed before standard errors were recorded). Two scores are *within noise* of each other when
their 95 % intervals (score ± 1.96·SE) overlap (:func:`within_noise`): a conservative reading — a gap whose
intervals touch may still be real, but one whose intervals are apart is unlikely to be a fluke of the items.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

from mergebench.domains import DOMAINS, GENERAL, Domain
from mergebench.eval.results import Results, load_results

Z95 = 1.959963984540054
"""The two-sided 95 % quantile of the normal distribution: the half-width of an interval is ``Z95 · SE``."""


def mean_stderr(stderrs: Iterable[float | None]) -> float | None:
    """Standard error of the mean of independent values with these standard errors: √(Σ SEᵢ²) / k.

    ``None`` when there are no values or any of them has no standard error.
    """
    values = list(stderrs)
    if not values or any(v is None for v in values):
        return None
    return math.sqrt(sum(v * v for v in values if v is not None)) / len(values)


def ratio_stderr(mine: float, mine_stderr: float | None, reference: float, reference_stderr: float | None
                 ) -> float | None:
    """Standard error of ``mine / reference`` (independent, first order): √(SE(m)² + r²·SE(e)²) / e."""
    if mine_stderr is None or reference_stderr is None or reference == 0:
        return None
    ratio = mine / reference
    return math.sqrt(mine_stderr ** 2 + ratio ** 2 * reference_stderr ** 2) / abs(reference)


def difference_stderr(a: float | None, b: float | None) -> float | None:
    """Standard error of the difference of two independent estimates: √(SE(a)² + SE(b)²)."""
    return None if a is None or b is None else math.sqrt(a * a + b * b)


def within_noise(a: float, a_stderr: float | None, b: float, b_stderr: float | None, *, z: float = Z95
                 ) -> bool | None:
    """Whether the intervals ``a ± z·SE(a)`` and ``b ± z·SE(b)`` overlap (``None``: a standard error is unknown)."""
    if a_stderr is None or b_stderr is None:
        return None
    return abs(a - b) <= z * (a_stderr + b_stderr)


def task_stderr(results: Results, task: str) -> float | None:
    """The standard error of ``task``'s main score, or ``None`` (failed, not run, or none recorded)."""
    result = results.tasks.get(task)
    if result is None or result.status != "ok":
        return None
    value = result.stderr.get(result.main_metric)
    return None if value is None else float(value)


@dataclass(frozen=True)
class Ratios:
    """Per-task ratios to a reference, their standard errors, their mean, and the tasks that could not be compared."""

    tasks: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)
    stderrs: dict[str, float | None] = field(default_factory=dict)
    """Standard error of each ratio in ``tasks`` (:func:`ratio_stderr`; ``None``: unknown)."""

    @property
    def mean(self) -> float | None:
        return fmean(self.tasks.values()) if self.tasks else None

    @property
    def stderr(self) -> float | None:
        """Standard error of :attr:`mean` (:func:`mean_stderr` of the ratios' standard errors)."""
        return mean_stderr(self.stderrs.get(name) for name in self.tasks)


@dataclass(frozen=True)
class Scores:
    """Everything :func:`compute_scores` derives for one merged model."""

    normalised: float | None
    domains: dict[str, Ratios]
    forgetting: Ratios
    multitask_gap: dict[str, float | None] = field(default_factory=dict)
    cost: dict[str, float | None] = field(default_factory=dict)
    normalised_stderr: float | None = None
    """Standard error of :attr:`normalised` (:func:`normalised_stderr`)."""
    multitask_gap_stderr: dict[str, float | None] = field(default_factory=dict)
    """Standard errors of :attr:`multitask_gap` (:func:`difference_stderr`)."""

    def to_dict(self) -> dict:
        return {"normalised": self.normalised, "normalised_stderr": self.normalised_stderr,
                "domains": {d: _ratios_dict(r) for d, r in self.domains.items()},
                "forgetting": _ratios_dict(self.forgetting),
                "multitask_gap": self.multitask_gap, "multitask_gap_stderr": self.multitask_gap_stderr,
                "cost": self.cost}


def _ratios_dict(r: Ratios) -> dict:
    return {"mean": r.mean, "stderr": r.stderr, "tasks": r.tasks, "stderrs": r.stderrs, "skipped": r.skipped}


def _as_results(value: Results | str | Path) -> Results:
    return value if isinstance(value, Results) else load_results(value)


def ratios(model: Results, reference: Results, tasks: list[str]) -> Ratios:
    """``model ÷ reference`` on each of ``tasks`` with its standard error, skipping (with a reason) what cannot be
    compared. A run compared with itself (an expert in its own domain, the base's forgetting) is exactly 1 ± 0."""
    itself = model is reference or (model.run.get("id") is not None and model.run.get("id") == reference.run.get("id"))
    out, skipped, stderrs = {}, {}, {}
    for name in tasks:
        mine, ref = model.score(name), reference.score(name)
        if mine is None:
            skipped[name] = "failed or not run for the model"
        elif ref is None:
            skipped[name] = "failed or not run for the reference"
        elif ref == 0:
            skipped[name] = "reference scored 0"
        else:
            out[name] = mine / ref
            stderrs[name] = 0.0 if itself else ratio_stderr(mine, task_stderr(model, name), ref,
                                                             task_stderr(reference, name))
    return Ratios(out, skipped, stderrs)


def _tasks_of(results: Results, domain: str, *, validation: bool = False) -> list[str]:
    return [n for n, t in results.tasks.items() if t.domain == domain and (t.role == "validation") == validation]


def normalised(model: Results, experts: Mapping[Domain, Results] | Mapping[str, Results], *, validation: bool = False
               ) -> tuple[float | None, dict[str, Ratios]]:
    """(mean over domains of the within-domain mean ratio to the expert, per-domain ratios).

    ``validation=True`` scores the validation-role tasks (the surrogates a grid search selects on) instead
    of the test tasks.
    """
    domains: dict[str, Ratios] = {}
    for domain in DOMAINS:
        tasks = _tasks_of(model, domain, validation=validation)
        if not tasks:
            continue
        if domain not in experts:
            domains[domain] = Ratios({}, dict.fromkeys(tasks, "no expert results for this domain"))
            continue
        domains[domain] = ratios(model, experts[domain], tasks)
    means = [r.mean for r in domains.values() if r.mean is not None]
    return (fmean(means) if means else None), domains


def normalised_stderr(domains: Mapping[str, Ratios]) -> float | None:
    """Standard error of the normalised score: :func:`mean_stderr` over the domains that have a mean."""
    return mean_stderr(r.stderr for r in domains.values() if r.mean is not None)


def forgetting(model: Results, base: Results | None) -> Ratios:
    """General tasks: model ÷ base."""
    tasks = _tasks_of(model, GENERAL)
    if base is None:
        return Ratios({}, dict.fromkeys(tasks, "no base results"))
    return ratios(model, base, tasks)


def cost(model: Results) -> dict[str, float | None]:
    """Merge + validation wall-clock (and the merge's peak memory) as recorded in the results."""
    merge, validation = model.cost.get("merge_seconds"), model.cost.get("validation_seconds")
    parts = [v for v in (merge, validation) if v is not None]
    return {"merge_seconds": merge, "validation_seconds": validation,
            "total_seconds": sum(parts) if parts else None,
            "merge_peak_memory_bytes": model.cost.get("merge_peak_memory_bytes"),
            "eval_seconds": model.cost.get("eval_seconds")}


def _difference(a: float | None, b: float | None) -> float | None:
    return None if a is None or b is None else a - b


def compute_scores(merged: Results | str | Path, *, experts: Mapping[str, Results | str | Path],
                   base: Results | str | Path | None = None, multitask: Results | str | Path | None = None) -> Scores:
    """All headline numbers of one merged model (results objects or results-file paths).

    >>> scores = compute_scores("merged.json", experts={"math": "math.json", ...}, base="base.json")  # doctest: +SKIP
    """
    merged_r = _as_results(merged)
    expert_r = {d: _as_results(r) for d, r in experts.items()}
    base_r = _as_results(base) if base is not None else None
    norm, domains = normalised(merged_r, expert_r)
    norm_stderr = normalised_stderr(domains)
    forget = forgetting(merged_r, base_r)
    gap: dict[str, float | None] = {}
    gap_stderr: dict[str, float | None] = {}
    if multitask is not None:
        multi_r = _as_results(multitask)
        multi_norm, multi_domains = normalised(multi_r, expert_r)
        multi_forget = forgetting(multi_r, base_r)
        gap = {"normalised": _difference(norm, multi_norm), "forgetting": _difference(forget.mean, multi_forget.mean)}
        gap_stderr = {"normalised": difference_stderr(norm_stderr, normalised_stderr(multi_domains)),
                      "forgetting": difference_stderr(forget.stderr, multi_forget.stderr)}
    return Scores(norm, domains, forget, gap, cost(merged_r), norm_stderr, gap_stderr)
