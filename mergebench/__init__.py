"""MergeBench: a Hugging Face Hub-native benchmark for merging domain-specialised LLMs.

>>> import mergebench
>>> mergebench.merge("recipe.yaml", "merged/")  # doctest: +SKIP
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

__version__ = "0.1.0"

if TYPE_CHECKING:
    from mergebench.merge.engine import merge
    from mergebench.merge.options import MergeOptions, MergeResult

__all__ = ["MergeOptions", "MergeResult", "merge"]


def __getattr__(name: str) -> Any:  # lazy: `mergebench --help` must not import torch
    if name in __all__:
        import mergebench.merge

        return getattr(mergebench.merge, name)
    raise AttributeError(f"module 'mergebench' has no attribute {name!r}")
