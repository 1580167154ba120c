"""Model Soup, uniform or weighted (Wortsman et al., 2022, arXiv:2203.05482).

θ = θ₀ + λ·Σᵢ (wᵢ / Σⱼ wⱼ)·τᵢ        (τᵢ = θᵢ − θ₀; uniform: wᵢ = 1/n)
λ = 1 (default): θ = Σᵢ wᵢ θᵢ / Σⱼ wⱼ, the weighted average of the experts

Weights that do not sum to 1 are normalised (mergekit's ``linear`` does the same with ``normalize: true``,
its default); weights summing to 0 have no average and are a :class:`~mergebench.errors.ConfigError` when the
recipe is validated. ``scaling`` λ multiplies the averaged task vector (λ = 1: the soup).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mergebench.methods.common import weight_sum, weighted_sum
from mergebench.methods.registry import MergeContext, Params, param, register


@dataclass(frozen=True)
class ModelSoupParams(Params):
    ELEMENTWISE = True

    scaling: float = param(1.0, "λ on the averaged task vector; 1.0 is the plain weight average.")


@register(
    "model_soup",
    params=ModelSoupParams,
    title="Model Soup, uniform or weighted (Wortsman et al., 2022)",
    paper="https://arxiv.org/abs/2203.05482",
    formula="""
        θ = θ₀ + λ·Σᵢ (wᵢ / Σⱼ wⱼ)·τᵢ        (τᵢ = θᵢ − θ₀; uniform: wᵢ = 1/n)
        λ = 1 (default): θ = Σᵢ wᵢ θᵢ / Σⱼ wⱼ, the weighted average of the experts
    """,
    normalises_weights=True,
)
def model_soup(base: Tensor, deltas: Tensor, p: ModelSoupParams, ctx: MergeContext) -> Tensor:
    weights = ctx.weights or (1.0,) * deltas.shape[0]
    total = weight_sum(weights, what="method 'model_soup'")
    return base.add_(weighted_sum(deltas, tuple(w / total for w in weights)), alpha=p.scaling)
