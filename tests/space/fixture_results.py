"""TEST FIXTURES: schema-exact results files for the leaderboard and the Space, with made-up scores.

They stand in for a MergeBench-Tiny run until its real results exist: a base, five experts and a
multi-task model per base, and one merge per method (two for TIES), written exactly as
``mergebench.eval.evaluate`` + the benchmark runner write them (``model`` block of the results contract,
``cost`` block, ``tiny`` suite tasks). The scores are deterministic arithmetic, not measurements: every
expert scores ``EXPERT`` in its own domain, the base ``BASE`` everywhere, each merge ``quality × EXPERT``.
``python -m tests.space.fixture_results OUT`` writes them for a manual ``mergebench space --results OUT``.
"""

from __future__ import annotations

import sys
from pathlib import Path

from mergebench.eval.results import Results, ResultsWriter, TaskResult, new_results, save_results
from mergebench.eval.tasks import SUITES, TASKS

ORG = "mergebench-fixtures"
BASES = (f"{ORG}/tiny-llama", f"{ORG}/tiny-llama-instruct")
EXPERT, BASE, MULTITASK = 0.60, 0.30, 0.50
MERGES = {  # label-free: (method, parameters, quality relative to the experts, merge seconds, validation seconds)
    "model_soup": ({"scaling": 1.0}, 0.70, 2.0, 0.0),
    "task_arithmetic": ({"scaling": 0.4}, 0.80, 2.5, 30.0),
    "ties": ({"top_k": 0.2, "scaling": 1.0}, 0.90, 6.0, 120.0),
    "dare": ({"drop_rate": 0.8, "scaling": 1.0}, 0.85, 3.0, 120.0),
    "consensus": ({"k": 2, "tall_lambda": 0.2, "scaling": 1.0}, 0.88, 7.0, 120.0),
    "localize_stitch": ({"mode": "dataless", "sparsity": 0.1}, 0.75, 5.0, 30.0),
    "regmean": ({"alpha": 0.5}, 0.95, 40.0, 30.0),
    "fisher": ({"num_samples": 1000}, 0.78, 35.0, 0.0),
}
EXTRA_TIES = ({"top_k": 0.1, "scaling": 0.6}, 0.82, 6.0, 120.0)
TINY_TASKS = SUITES["tiny"]
DOMAIN_FACTOR = {"coding": 0.9, "instruction": 1.0, "math": 1.05, "multilingual": 0.95, "safety": 1.1}


def _results(model: dict, scores: dict[str, float], cost: dict | None = None) -> Results:
    settings = {"suite": "tiny", "tasks": list(scores), "backend": "transformers", "max_samples": None, "seed": 1234}
    writer = ResultsWriter(new_results(model=model, settings=settings, eval_data={"kind": "packaged"},
                                       environment={"mergebench": "fixture"}, cost=cost), None)
    for name, score in scores.items():
        spec = TASKS[name]
        writer.add(TaskResult(name=name, status="ok", domain=spec.domain, role=spec.role, version=spec.version,
                              main_metric=spec.main_metric, score=round(score, 6), metrics={spec.main_metric: score},
                              num_samples=8, seconds=1.0))
    return writer.finish("complete")


def _scores(in_domain: dict[str, float], default: float) -> dict[str, float]:
    return {t: in_domain.get(TASKS[t].domain, default) for t in TINY_TASKS}


def fixture_results(base: str = BASES[0]) -> list[Results]:
    """Base, five experts, multi-task and nine merges of ``base`` (see the module docstring)."""
    domains = sorted({TASKS[t].domain for t in TINY_TASKS} - {"general"})
    name = base.rsplit("/", 1)[-1]
    experts = [f"{ORG}/{name}_{d}" for d in domains]
    out = [_results({"id": base, "revision": None, "role": "base", "base_model": base, "domain": None,
                     "method": None, "parameters": None, "experts": None, "label": "base"}, _scores({}, BASE))]
    for domain, expert in zip(domains, experts, strict=True):
        out.append(_results({"id": expert, "revision": None, "role": "expert", "base_model": base, "domain": domain,
                             "method": None, "parameters": None, "experts": None, "label": f"expert: {domain}"},
                            _scores({domain: EXPERT, "general": BASE * 0.9}, BASE)))
    out.append(_results({"id": f"{ORG}/{name}_all", "revision": None, "role": "multitask", "base_model": base,
                         "domain": None, "method": None, "parameters": None, "experts": None, "label": "multi-task"},
                        _scores({d: MULTITASK for d in domains} | {"general": BASE * 0.95}, BASE)))
    merges = [(m, *spec) for m, spec in MERGES.items()] + [("ties", *EXTRA_TIES)]
    for method, params, quality, merge_s, validation_s in merges:
        label = f"{method} ({', '.join(f'{k}={v}' for k, v in params.items())})"
        suffix = "-".join(f"{k}{v}" for k, v in params.items()).replace(".", "p")
        out.append(_results(
            {"id": f"{ORG}/{name}-{method}-{suffix}", "revision": None, "role": "merged", "base_model": base,
             "domain": None, "method": method, "parameters": params, "experts": experts, "label": label},
            _scores({d: EXPERT * quality * DOMAIN_FACTOR[d] for d in domains} | {"general": BASE * quality}, BASE),
            cost={"merge_seconds": merge_s, "merge_peak_memory_bytes": int(quality * 2e9),
                  "validation_seconds": validation_s}))
    return out


def write_fixture_results(out_dir: Path, bases: tuple[str, ...] = BASES) -> list[Path]:
    """Write every base's fixture results as ``out_dir/results/*.json`` (a benchmark run folder's layout)."""
    paths = []
    for base in bases:
        for r in fixture_results(base):
            path = Path(out_dir) / "results" / f"{r.model['id'].replace('/', '--')}.json"
            save_results(r, path)
            paths.append(path)
    return paths


if __name__ == "__main__":
    print("\n".join(map(str, write_fixture_results(Path(sys.argv[1])))))
