"""The benchmark configuration of MergeBench-Tiny: all eight methods, small grids, the ``tinybench`` tasks.

Grids are cut to what 2 CPU cores afford (the paper's grids are in each method's registry entry): the
method whose scaling matters most on five summed task vectors (Task Arithmetic) gets a two-point grid,
searched on the ``tinybench_validation`` items; the rest run at one point (the values the paper recommends),
so they need no validation pass. Data-dependent methods see ``NUM_SAMPLES`` validation rows per
expert (the paper: 1,000).
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

NUM_SAMPLES = 4

METHODS: tuple[dict[str, Any], ...] = (
    {"method": "model_soup"},
    {"method": "task_arithmetic", "grid": {"scaling": [0.3, 0.6]}},
    {"method": "ties", "parameters": {"top_k": 0.2, "scaling": 1.0}},
    {"method": "dare", "parameters": {"drop_rate": 0.8, "scaling": 0.4, "seed": 0}},
    {"method": "consensus", "parameters": {"k": 2, "tall_lambda": 0.4, "scaling": 0.6}},
    {"method": "localize_stitch", "parameters": {"sparsity": 0.1}},
    {"method": "localize_stitch", "label": "localize_stitch (trained)",
     "parameters": {"mode": "trained", "sparsity": 0.1, "num_samples": NUM_SAMPLES}},
    {"method": "regmean", "parameters": {"alpha": 0.5, "num_samples": NUM_SAMPLES}},
    {"method": "fisher", "parameters": {"num_samples": NUM_SAMPLES}},
)


def tiny_bench(*, base: str, experts: Mapping[str, str], data: Mapping[str, str], output: str) -> dict[str, Any]:
    """The runner configuration (as a ``BENCH.yaml`` mapping) for one Tiny base and its five experts."""
    return {
        "name": "mergebench-tiny",
        "output": str(output),
        "bases": [{"name": "smollm2-135m-instruct-tiny", "model": str(base),
                   "experts": {d: str(p) for d, p in experts.items()}}],
        "data": {d: str(p) for d, p in data.items()},
        "methods": [dict(m) for m in METHODS],
        "validation": {"suites": ["tinybench_validation"]},
        "evaluation": {"suites": ["tinybench"]},
    }
