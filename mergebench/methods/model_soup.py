"""Model Soup, uniform or weighted (Wortsman et al., 2022, arXiv:2203.05482).

θ = Σᵢ wᵢ θᵢ  with Σᵢ wᵢ = 1, computed as θ₀ + Σᵢ wᵢ τᵢ;  uniform: wᵢ = 1/n.

Weights that do not sum to 1 are normalised (mergekit's ``linear`` does the same with
``normalize: true``, its default); ``scaling`` λ multiplies the averaged task vector (λ = 1: the soup).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

from mergebench.methods.common import weighted_sum
from mergebench.methods.registry import MergeContext, Params, register


@dataclass(frozen=True)
class ModelSoupParams(Params):
    scaling: float = 1.0
    """λ on the averaged task vector; 1.0 is the plain weight average."""

    def elementwise(self) -> bool:
        return True


@register("model_soup", params=ModelSoupParams, paper="https://arxiv.org/abs/2203.05482")
def model_soup(base: Tensor, deltas: Tensor, p: ModelSoupParams, ctx: MergeContext) -> Tensor:
    n = deltas.shape[0]
    weights = ctx.weights or (1.0,) * n
    total = sum(weights)
    return base.add_(weighted_sum(deltas, tuple(w / total for w in weights)), alpha=p.scaling)
