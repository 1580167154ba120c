"""MergeBench evaluation: lighteval tasks (``mb_*``), sandboxed code metrics, refusal judging, normalised
scores and one versioned results schema. See ``README.md`` in this folder.

Attributes are imported lazily: listing tasks or reading results files does not import torch or lighteval.

>>> from mergebench.eval import evaluate, compute_scores                                       # doctest: +SKIP
>>> r = evaluate("merged/", suite="tiny", out="merged.json")                                  # doctest: +SKIP
>>> compute_scores("merged.json", experts={"math": "math.json"}, base="base.json").normalised  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

_LAZY = {
    "evaluate": "run", "TASKS": "tasks", "SUITES": "tasks", "TaskSpec": "tasks", "get_task": "tasks",
    "resolve_tasks": "tasks", "Results": "results", "TaskResult": "results", "load_results": "results",
    "save_results": "results", "push_results": "results", "SCHEMA_VERSION": "results", "Scores": "scores",
    "compute_scores": "scores", "SandboxConfig": "sandbox", "SandboxResult": "sandbox", "run_program": "sandbox",
    "run_programs": "sandbox", "pass_at_k": "metrics", "RuleBasedJudge": "refusal", "ClassifierJudge": "refusal",
    "ModelOptions": "lighteval_wrapper",
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    if name in _LAZY:
        return getattr(importlib.import_module(f"mergebench.eval.{_LAZY[name]}"), name)
    raise AttributeError(f"module 'mergebench.eval' has no attribute {name!r}")


def __dir__() -> list[str]:
    return __all__
