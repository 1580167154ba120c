"""TIES-Merging: trim, elect sign, disjoint merge (Yadav et al., 2023, arXiv:2306.01708).

τ̂ᵢ = wᵢ·τᵢ ⊙ [|τᵢ| ≥ tᵢ]          tᵢ = ⌈k·N⌉-th largest |τᵢ| over all mergeable entries (global, default)
                                  or over this tensor only (topk_scope: tensor)
γ  = sign(Σᵢ τ̂ᵢ)                   elementwise; γ = 0 where the sum is exactly 0
aᵢ = [τ̂ᵢ ≠ 0 ∧ sign(τ̂ᵢ) = γ]      (= [τ̂ᵢ·γ > 0]; nobody agrees where γ = 0)
sum:  Δ = Σᵢ aᵢ τ̂ᵢ      mean: Δ = Σᵢ aᵢ τ̂ᵢ / max(1, Σᵢ aᵢ)
θ  = θ₀ + λ·Δ

Parameters: ``top_k`` k ∈ (0, 1] (0.2), ``scaling`` λ (1.0), ``aggregate`` ``sum`` | ``mean`` (``sum``),
``topk_scope`` ``global`` | ``tensor`` (``global``). Recipe weights wᵢ (default 1) scale each trimmed task
vector before the sign election. Ties at a threshold are all kept (at least ⌈k·N⌉ entries survive).

Differences from other libraries:

- mergekit ``ties``: trims per tensor to exactly ``int(density·numel)`` entries (``torch.topk``, ties broken
  arbitrarily) where we trim over the whole model with ``⌈k·N⌉`` and keep ties; where the sum is exactly 0
  it elects ``+`` (``sum >= 0``) so positive deltas survive, where we keep the base value; with
  ``normalize: true`` (its default) it divides by the summed *weights* of the agreeing experts, so its
  default is our ``mean`` (equal for unit weights) and our ``sum`` is its ``normalize: false``.
- peft ``ties``: also per tensor with ``int(density·numel)`` entries and ``+`` on zero sums; its disjoint
  merge always divides by the number of agreeing experts (our ``mean``) and has no separate λ.
- The paper picks λ on validation data and uses the mean; ``sum`` with λ ≈ 0.4–1 is MergeBench's default.
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mergebench.errors import StatisticsError
from mergebench.methods.common import expert_weights, f32
from mergebench.methods.kernels import DROP_ALL, KEEP_ALL, SHRINK, ties_delta
from mergebench.methods.registry import MergeContext, Params, Range, param, register
from mergebench.methods.topk import tensor_thresholds


@dataclass(frozen=True)
class TiesParams(Params):
    ELEMENTWISE = True  # per-tensor thresholds too: the engine computes them before chunking

    top_k: float = param(0.2, "k: fraction of each task vector's entries kept (by magnitude), over the whole model "
                         "by default.", within=Range(gt=0, le=1))
    scaling: float = param(1.0, "λ, applied to the merged task vector.")
    aggregate: Literal["sum", "mean"] = param("sum", "sum of the agreeing trimmed deltas, or their mean "
                                              "(÷ number of agreeing experts).")
    topk_scope: Literal["global", "tensor"] = param("global", "global: one threshold per expert over all mergeable "
                                                    "tensors; tensor: one per tensor.")

    def global_topk(self) -> float | None:
        return self.top_k if self.topk_scope == "global" else None

    def tensor_topk(self) -> float | None:
        return self.top_k if self.topk_scope == "tensor" else None


def thresholds_for(deltas: Tensor, fraction: float, scope: str, ctx: MergeContext) -> Tensor:
    """``[n]`` top-k thresholds: the engine's from ``ctx`` (global, or this tensor's when it computed them
    for a chunked merge), else this tensor's own."""
    if scope == "tensor" and ctx.thresholds is None:
        return tensor_thresholds(deltas, fraction)
    if ctx.thresholds is None:
        raise StatisticsError(f"Tensor '{ctx.name}': global top-k thresholds are missing from the merge context.",
                              hint="The engine computes them when Params.global_topk() is set; "
                                   "or use topk_scope: tensor.")
    if ctx.thresholds.shape != (deltas.shape[0],):
        raise StatisticsError(f"Tensor '{ctx.name}': {tuple(ctx.thresholds.shape)} thresholds for "
                              f"{deltas.shape[0]} experts.")
    return ctx.thresholds


def shrink_level(threshold: float) -> float | None:
    """The ``λ`` for which ``|x| > λ`` is ``|x| ≥ t``: the largest float32 below ``t`` (one less in its bit
    pattern, which orders like the value); ``None`` where ``t ≤ 0`` (everything is kept)."""
    if not threshold > 0:
        return None
    below = struct.unpack("<i", struct.pack("<f", threshold))[0] - 1
    level: float = struct.unpack("<f", struct.pack("<i", below))[0]
    return level


def trim_rule(threshold: float) -> tuple[int, float]:
    """How :func:`~mergebench.methods.kernels.ties_delta` trims to ``τ ⊙ [|τ| ≥ t]``: ``hardshrink`` at
    :func:`shrink_level` (it keeps ``|x| > λ`` and writes ``+0`` elsewhere; the product with the mask would write
    a zero with the entry's sign, which no sum below can tell apart); everything for ``t ≤ 0``; nothing for a
    NaN threshold (only from NaN inputs merged with ``check_finite: false``), as the product does."""
    if math.isnan(threshold):
        return DROP_ALL, 0.0
    level = shrink_level(threshold)
    return (KEEP_ALL, 0.0) if level is None else (SHRINK, level)


@register(
    "ties",
    params=TiesParams,
    title="TIES-Merging: trim, elect sign, disjoint merge (Yadav et al., 2023)",
    paper="https://arxiv.org/abs/2306.01708",
    formula="""
        τ̂ᵢ = wᵢ·τᵢ ⊙ [|τᵢ| ≥ tᵢ]          tᵢ = ⌈k·N⌉-th largest |τᵢ| over all mergeable entries (global, default)
                                          or over this tensor only (topk_scope: tensor)
        γ  = sign(Σᵢ τ̂ᵢ)                   elementwise; γ = 0 where the sum is exactly 0
        aᵢ = [τ̂ᵢ ≠ 0 ∧ sign(τ̂ᵢ) = γ]      (= [τ̂ᵢ·γ > 0]; nobody agrees where γ = 0)
        sum:  Δ = Σᵢ aᵢ τ̂ᵢ      mean: Δ = Σᵢ aᵢ τ̂ᵢ / max(1, Σᵢ aᵢ)
        θ  = θ₀ + λ·Δ
    """,
    grid={"top_k": (0.1, 0.2, 0.3), "scaling": (0.4, 0.6, 0.8, 1.0)},
)
def ties(base: Tensor, deltas: Tensor, p: TiesParams, ctx: MergeContext) -> Tensor:
    """One fused loop (:func:`~mergebench.methods.kernels.ties_delta`) of float operations only, five per expert
    and entry (bool masks, and products with them, were most of the time of a merge), giving the bits of the
    textbook form (``tests/methods/test_ties_exact.py``):

    - trim: ``hardshrink(τᵢ, λᵢ)`` keeps ``|τᵢ| > λᵢ``, i.e. ``|τᵢ| ≥ tᵢ`` (:func:`trim_rule`);
    - disjoint merge: ``relu(τ̂ᵢ·γ) = aᵢ·|τ̂ᵢ|``, so ``Δ = γ·Σᵢ relu(τ̂ᵢ·γ)`` (negating a sum is exact) and
      ``Σᵢ aᵢ = Σᵢ [relu(τ̂ᵢ·γ) > 0]``.

    The sign of a zero never reaches the result: both sums start from ``+0`` and add in expert order (``+0 +
    (−0) = +0``), so an entry depends on its own inputs only and the engine can merge any subset of positions
    again and get the same bits (``torch.sum`` over five experts or more adds in an order that depends on the
    tensor's width). ``deltas`` is overwritten (the engine passes cache-sized chunks).
    """
    base, deltas = f32(base), f32(deltas)
    thresholds = thresholds_for(deltas, p.top_k, p.topk_scope, ctx).tolist()
    flat = deltas.reshape(deltas.shape[0], -1).contiguous()
    delta = ties_delta(flat, [trim_rule(t) for t in thresholds], expert_weights(ctx.weights, len(thresholds)),
                       mean=p.aggregate == "mean")
    return torch.add(base, delta.view(base.shape), alpha=p.scaling)  # θ₀ + λ·Δ
