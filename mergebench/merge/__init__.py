"""The streaming merge: recipe → pinned inputs → plan → statistics → passes → shards → card → push.

- :mod:`~mergebench.merge.recipe`: the YAML a user writes, validated before any work;
- :mod:`~mergebench.merge.plan`: everything decided from safetensors headers before a weight byte is read;
- :mod:`~mergebench.merge.engine`: runs a merge — pins inputs, orchestrates the statistics stage and the
  streaming passes, writes atomically, resumes;
- :mod:`~mergebench.merge.compute`: chunked elementwise arithmetic on every core;
- :mod:`~mergebench.merge.card`: the merged model's card; :mod:`~mergebench.merge.memory`: peak RSS.

>>> from mergebench.merge import merge
>>> merge("recipe.yaml", "merged/")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from mergebench.merge.engine import MergeOptions, MergeResult, merge, prepare

__all__ = ["MergeOptions", "MergeResult", "merge", "prepare"]


def __getattr__(name: str) -> Any:  # lazy: importing the recipe or the plan must not import the engine
    if name in __all__:
        from mergebench.merge import engine

        return getattr(engine, name)
    raise AttributeError(f"module 'mergebench.merge' has no attribute {name!r}")
