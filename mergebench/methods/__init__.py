"""Merge methods. Each module registers one method; adding a method is adding one file here."""

from mergebench.methods import model_soup, task_arithmetic  # noqa: F401  (registration)
from mergebench.methods.registry import REGISTRY, MergeContext, MethodSpec, Params, get

__all__ = ["REGISTRY", "MergeContext", "MethodSpec", "Params", "get"]
