"""Fisher merging: a per-entry Fisher-weighted average (Matena & Raffel, 2022, arXiv:2111.09832).

θ = Σᵢ wᵢFᵢθᵢ / Σᵢ wᵢ(Fᵢ + 1e-10)          per entry, for tensors with Fisher statistics
θ = Σᵢ wᵢθᵢ / Σᵢ wᵢ                          for tensors without them
then θ₀ + λ·(θ − θ₀) (λ = 1 returns θ exactly).

Fᵢ is the diagonal empirical Fisher of expert i on its own domain's validation rows: the mean over
samples of (∇θ ℓ)², ℓ = the sample's mean response-token NLL (:mod:`mergebench.stats.fisher`). Inputs are
expert weights, not deltas.

Parameters: ``num_samples`` ≥ 1 (1000, rows per expert for the Fisher stage), ``scaling`` λ (1.0).
Recipe weights wᵢ (default 1) are the paper's per-model coefficients.

Edge case of the contract's formula: an entry whose Fisher is 0 for every expert (a parameter no sample
moved) becomes 0, not the experts' mean, and entries with Fᵢ ≲ 1e-10 are pulled toward 0; the ε = 1e-10
is in the denominator only, as the benchmark defines it. Differences: the authors' code instead floors
every Fᵢ at a small constant (``fisher_floor``), which pulls such entries toward the plain mean; MergeBench's reference
could not import this method at all and paired experts with the wrong domain's data. mergekit and peft
have no Fisher merging.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mergebench.errors import StatisticsError
from mergebench.methods.common import expert_weights, f32, rescale_from_base, weighted_mean
from mergebench.methods.registry import MergeContext, Params, PerExpert, Range, param, register

EPSILON = 1e-10
"""Added to every Fᵢ in the denominator."""


@dataclass(frozen=True)
class FisherParams(Params):
    num_samples: int = param(1000, "Validation rows of each expert's own domain used for its Fisher diagonal.",
                             within=Range(ge=1))
    scaling: float = param(1.0, "λ: θ = θ₀ + λ·(θ_fisher − θ₀).")


def fisher_average(experts: Tensor, fishers: PerExpert, coefficients: tuple[float, ...]) -> Tensor:
    """``Σᵢ cᵢFᵢθᵢ / Σᵢ cᵢ(Fᵢ + ε)`` for ``[n, *shape]`` weights and Fisher diagonals (one expert's at a time)."""
    numerator = torch.zeros(experts.shape[1:], dtype=torch.float32, device=experts.device)
    denominator = torch.zeros_like(numerator)
    for theta, row, c in zip(experts, fishers, coefficients, strict=True):
        fisher = f32(row)
        numerator.addcmul_(fisher, theta, value=c)
        denominator.add_(fisher.add(EPSILON), alpha=c)
    return numerator.div_(denominator)


@register(
    "fisher",
    params=FisherParams,
    title="Fisher merging: a per-entry Fisher-weighted average (Matena & Raffel, 2022)",
    paper="https://arxiv.org/abs/2111.09832",
    formula="""
        θ = Σᵢ wᵢFᵢθᵢ / Σᵢ wᵢ(Fᵢ + 1e-10)          per entry, for tensors with Fisher statistics
        θ = Σᵢ wᵢθᵢ / Σᵢ wᵢ                          for tensors without them
        then θ₀ + λ·(θ − θ₀) (λ = 1 returns θ exactly)
    """,
    inputs="weights",
    data_stats="fisher",
    normalises_weights=True,
)
def fisher(base: Tensor, experts: Tensor, p: FisherParams, ctx: MergeContext) -> Tensor:
    base, experts = f32(base), f32(experts)
    fishers = ctx.data.get("fisher")
    if fishers is None:
        merged = weighted_mean(experts, ctx.weights)
    elif fishers.shape != experts.shape:
        raise StatisticsError(f"Tensor '{ctx.name}': Fisher statistics are {tuple(fishers.shape)} but the "
                              f"weights are {tuple(experts.shape)}.",
                              hint="Recompute the 'fisher' statistics for these models.")
    else:
        merged = fisher_average(experts, fishers, expert_weights(ctx.weights, experts.shape[0]))
    return rescale_from_base(base, merged, p.scaling)
