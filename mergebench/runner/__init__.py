"""The benchmark runner: ``BENCH.yaml`` → grid search per (base, method) → evaluation → leaderboard.

>>> from mergebench.runner import run_benchmark                       # doctest: +SKIP
>>> summary = run_benchmark("bench.yaml")                             # doctest: +SKIP
>>> summary.table[["label", "normalised", "forgetting"]]              # doctest: +SKIP
"""

from mergebench.runner.config import BenchConfig, EvalSettings, MethodEntry
from mergebench.runner.run import RunSummary, run_benchmark

__all__ = ["BenchConfig", "EvalSettings", "MethodEntry", "RunSummary", "run_benchmark"]
