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
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from statistics import fmean

from mergebench.domains import DOMAINS, Domain
from mergebench.eval.results import Results, load_results


@dataclass(frozen=True)
class Ratios:
    """Per-task ratios to a reference, their mean, and the tasks that could not be compared."""

    tasks: dict[str, float] = field(default_factory=dict)
    skipped: dict[str, str] = field(default_factory=dict)

    @property
    def mean(self) -> float | None:
        return fmean(self.tasks.values()) if self.tasks else None


@dataclass(frozen=True)
class Scores:
    """Everything :func:`compute_scores` derives for one merged model."""

    normalised: float | None
    domains: dict[str, Ratios]
    forgetting: Ratios
    multitask_gap: dict[str, float | None] = field(default_factory=dict)
    cost: dict[str, float | None] = field(default_factory=dict)

    def to_dict(self) -> dict:
        return {"normalised": self.normalised,
                "domains": {d: {"mean": r.mean, "tasks": r.tasks, "skipped": r.skipped}
                            for d, r in self.domains.items()},
                "forgetting": {"mean": self.forgetting.mean, "tasks": self.forgetting.tasks,
                               "skipped": self.forgetting.skipped},
                "multitask_gap": self.multitask_gap, "cost": self.cost}


def _as_results(value: Results | str | Path) -> Results:
    return value if isinstance(value, Results) else load_results(value)


def ratios(model: Results, reference: Results, tasks: list[str]) -> Ratios:
    """``model ÷ reference`` on each of ``tasks``, skipping (with a reason) what cannot be compared."""
    out, skipped = {}, {}
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
    return Ratios(out, skipped)


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


def forgetting(model: Results, base: Results | None) -> Ratios:
    """General tasks: model ÷ base."""
    tasks = _tasks_of(model, "general")
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
    forget = forgetting(merged_r, base_r)
    gap: dict[str, float | None] = {}
    if multitask is not None:
        multi_r = _as_results(multitask)
        gap = {"normalised": _difference(norm, normalised(multi_r, expert_r)[0]),
               "forgetting": _difference(forget.mean, forgetting(multi_r, base_r).mean)}
    return Scores(norm, domains, forget, gap, cost(merged_r))
