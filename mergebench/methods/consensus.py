"""Consensus merging with TALL masks (Wang et al., 2024, arXiv:2405.07813), on Task Arithmetic.

τ_MTL = Σⱼ wⱼτⱼ
mᵢ    = [ |wᵢτᵢ| > tall_lambda·|τ_MTL − wᵢτᵢ| ]     (TALL mask of task i; strict >)
c     = [ Σᵢ mᵢ ≥ k ]                              (entries at least k tasks consider their own)
θ     = θ₀ + λ·(τ_MTL ⊙ c)

Parameters: ``k`` integer ≥ 1 (2), ``tall_lambda`` ≥ 0 (0.2), ``scaling`` λ (1.0). Recipe weights wᵢ
(default 1) scale each task vector before anything else. ``k = 1`` drops only the "catastrophic" entries
no task claims; ``k = 2`` (the paper's choice) also drops the "selfish" ones only one task claims. A ``k``
larger than the number of experts keeps nothing (the base is returned).

Differences: the paper writes the TALL mask with ``≥`` and picks ``tall_lambda`` per task on validation
data; we use a strict ``>`` (so an entry where every τ is 0 is never "important") and one shared
``tall_lambda`` searched on a grid. Consensus is applied to Task Arithmetic only (the paper also
combines it with TIES). peft's merging utilities have no TALL-mask consensus and mergekit's classic
methods neither, so there is no library behaviour to match (names like mergekit's ``consensus_*``
sparsification options are unrelated rules).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from mergebench.methods.common import f32, scale_experts_, sum_in_expert_order
from mergebench.methods.registry import MergeContext, Params, Range, param, register


@dataclass(frozen=True)
class ConsensusParams(Params):
    ELEMENTWISE = True

    k: int = param(2, "Minimum number of tasks whose TALL mask must contain an entry for it to be kept.",
                   within=Range(ge=1))
    tall_lambda: float = param(0.2, "λ_t of the TALL masks: entry important to task i iff |τᵢ| > "
                               "tall_lambda·|τ_MTL − τᵢ|.", within=Range(ge=0))
    scaling: float = param(1.0, "λ, applied to the masked multi-task vector.")


def tall_votes(deltas: Tensor, multi_task: Tensor, tall_lambda: float) -> Tensor:
    """``Σᵢ [|τᵢ| > tall_lambda·|τ_MTL − τᵢ|]`` as an int32 tensor, one expert at a time (low memory)."""
    votes = torch.zeros(multi_task.shape, dtype=torch.int32, device=multi_task.device)
    for tau in deltas:
        votes += tau.abs() > (multi_task - tau).abs_().mul_(tall_lambda)
    return votes


@register(
    "consensus",
    params=ConsensusParams,
    title="Consensus merging with TALL masks, on Task Arithmetic (Wang et al., 2024)",
    paper="https://arxiv.org/abs/2405.07813",
    formula="""
        τ_MTL = Σⱼ wⱼτⱼ
        mᵢ    = [ |wᵢτᵢ| > tall_lambda·|τ_MTL − wᵢτᵢ| ]     (TALL mask of task i; strict >)
        c     = [ Σᵢ mᵢ ≥ k ]                              (entries at least k tasks consider their own)
        θ     = θ₀ + λ·(τ_MTL ⊙ c)
    """,
    grid={"tall_lambda": (0.2, 0.4, 0.6), "scaling": (0.4, 0.6, 0.8, 1.0)},
    version=2,  # 2: sums in expert order, merged in chunks (torch.sum's order made 5+ experts' bits differ)
)
def consensus(base: Tensor, deltas: Tensor, p: ConsensusParams, ctx: MergeContext) -> Tensor:
    base, deltas = f32(base), f32(deltas)
    scale_experts_(deltas, ctx.weights)
    multi_task = sum_in_expert_order(deltas)
    keep = tall_votes(deltas, multi_task, p.tall_lambda) >= p.k
    return torch.add(base, multi_task.mul_(keep), alpha=p.scaling)
