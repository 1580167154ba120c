"""Merge methods. Each module registers one method; adding a method is adding one file here.

Modules are imported in the order ``mergebench methods ls`` lists them (registration order).
"""

# isort: off
from mergebench.methods import model_soup, task_arithmetic  # noqa: F401
from mergebench.methods import ties, dare, consensus, localize_stitch  # noqa: F401
from mergebench.methods import regmean, fisher  # noqa: F401

# isort: on
from mergebench.methods.registry import REGISTRY, MergeContext, MethodSpec, Params, get

__all__ = ["REGISTRY", "MergeContext", "MethodSpec", "Params", "get"]
