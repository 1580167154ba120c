"""The streaming merge: recipe → pinned inputs → plan → statistics → passes → shards → card → push.

- :mod:`~mergebench.merge.recipe`: the YAML a user writes, validated before any work;
- :mod:`~mergebench.merge.plan`: everything decided from safetensors headers before a weight byte is read;
- :mod:`~mergebench.merge.inputs`: the recipe's inputs pinned and resolved, the plan (headers only);
- :mod:`~mergebench.merge.engine`: runs a merge — the statistics stage, the passes, atomic output, resume;
- :mod:`~mergebench.merge.passes`: the streaming passes (global top-k thresholds, the merge pass);
- :mod:`~mergebench.merge.options`: :class:`MergeOptions` and :class:`MergeResult`;
- :mod:`~mergebench.merge.compute`: chunked elementwise arithmetic on every core;
- :mod:`~mergebench.merge.card`: the merged model's card; :mod:`~mergebench.merge.memory`: peak RSS.

>>> from mergebench.merge import merge
>>> merge("recipe.yaml", "merged/")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mergebench.merge.engine import merge
    from mergebench.merge.inputs import prepare
    from mergebench.merge.options import MergeOptions, MergeResult

__all__ = ["MergeOptions", "MergeResult", "merge", "prepare"]
_HOME = {"MergeOptions": "options", "MergeResult": "options", "merge": "engine", "prepare": "inputs"}


def __getattr__(name: str) -> Any:  # lazy: importing the recipe or the plan must not import the engine
    if name in _HOME:
        import importlib

        return getattr(importlib.import_module(f"mergebench.merge.{_HOME[name]}"), name)
    raise AttributeError(f"module 'mergebench.merge' has no attribute {name!r}")
