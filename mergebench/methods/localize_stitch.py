"""Localize-and-Stitch (He et al., 2024, arXiv:2408.13656): sparse task-vector masks, stitched by overlap.

Localize (one mask per task):
  dataless (mode: dataless, default):  Mᵢ = [|τᵢ| ≥ tᵢ], tᵢ = ⌈s·N⌉-th largest |τᵢ| over all mergeable
                                       entries (topk_scope: tensor: over this tensor only)
  trained  (mode: trained):            Mᵢ = [σ(Sᵢ) ≥ 0.5] from the mask statistics stage, which starts
                                       Sᵢ at ±sigmoid_bias on the dataless mask and trains it on task i's
                                       own validation rows
Stitch:
  cnt = Σᵢ Mᵢ   (overlap counted over all tasks)
  θ   = θ₀ + λ·Σᵢ (Mᵢ / max(1, cnt)) ⊙ wᵢτᵢ

The trained masks come from :mod:`mergebench.stats.masks`.

Parameters: ``mode`` (``dataless``), ``sparsity`` s ∈ (0, 1] (0.1), ``scaling`` λ (1.0),
``topk_scope`` (``global``); trained only: ``sigmoid_bias`` > 0 (3.0), ``learning_rate`` ≥ 0 (1e8),
``epochs`` ≥ 0 (1), ``l1_strength`` ≥ 0 (0.0), ``num_samples`` ≥ 1 (1000). Setting a trained-only
parameter with ``mode: dataless`` is an error, not silently ignored. With ``learning_rate: 0`` (or
``epochs: 0``) the trained masks equal the dataless ones, so the merge equals the dataless merge.
Recipe weights wᵢ (default 1) scale each task vector. If an expert changed fewer than ⌈s·N⌉ entries its
threshold is 0 and, as the definition says, every entry is in its mask (zeros contribute nothing but
count in ``cnt``).

Differences: the MergeBench reference code counts the overlap of mask i only against the last other task
and adds masked task vectors into the shared base model in place, so later task vectors were computed
against an already-stitched base; here every task vector is θᵢ − θ₀ with the original base, the base is
never modified, and ``cnt`` counts all tasks. The authors' code takes ``int(s·N)`` top values and a strict
``>`` against the smallest of them (keeping ``int(s·N) − 1`` entries and dropping ties); we keep
``|τ| ≥ t`` with ``t`` the ``⌈s·N⌉``-th largest. mergekit and peft have no Localize-and-Stitch.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Literal

import torch
from torch import Tensor

from mergebench.errors import StatisticsError
from mergebench.methods.common import f32, require, scale_experts_, sum_in_expert_order
from mergebench.methods.registry import MergeContext, Params, Range, param, register
from mergebench.methods.ties import thresholds_for

TRAINED_ONLY = ("sigmoid_bias", "learning_rate", "epochs", "l1_strength", "num_samples")
"""Parameters that only mean something with ``mode: trained``."""


@dataclass(frozen=True)
class LocalizeStitchParams(Params):
    ELEMENTWISE = True  # dataless: per-tensor thresholds too, computed by the engine before chunking

    mode: Literal["dataless", "trained"] = param("dataless", "dataless: masks are the top-s task-vector entries; "
                                                 "trained: masks trained on validation data.")
    sparsity: float = param(0.1, "s: fraction of each task vector in its (initial) mask, over the whole model by "
                            "default.", within=Range(gt=0, le=1))
    scaling: float = param(1.0, "λ, applied to the stitched task vector (1.0 in the paper).")
    topk_scope: Literal["global", "tensor"] = param("global", "global: one threshold per expert over all mergeable "
                                                    "tensors; tensor: one per tensor.")
    sigmoid_bias: float = param(3.0, "Trained: initial mask logits are +bias inside the dataless mask and −bias "
                                "outside.", within=Range(gt=0))
    learning_rate: float = param(1e8, "Trained: step size of the full-batch gradient step on the logits, once per "
                                 "epoch.", within=Range(ge=0))
    epochs: int = param(1, "Trained: number of gradient steps (one per pass over the validation rows).",
                        within=Range(ge=0))
    l1_strength: float = param(0.0, "Trained: weight of the L1 penalty Σσ(S) on the soft mask.", within=Range(ge=0))
    num_samples: int = param(1000, "Trained: validation rows of each expert's own domain used to train its mask.",
                             within=Range(ge=1))

    def __post_init__(self) -> None:
        """Besides the declared ranges: trained-only parameters are an error with ``mode: dataless``."""
        super().__post_init__()
        if self.mode == "dataless":
            defaults = {f.name: f.default for f in dataclasses.fields(self)}
            changed = [name for name in TRAINED_ONLY if getattr(self, name) != defaults[name]]
            require(not changed, f"{', '.join(changed)} only appl{'ies' if len(changed) == 1 else 'y'} to "
                    f"trained masks, but mode is 'dataless'.",
                    hint="Add 'mode: trained' to the parameters, or remove them.")

    def global_topk(self) -> float | None:
        return self.sparsity if self.mode == "dataless" and self.topk_scope == "global" else None

    def tensor_topk(self) -> float | None:
        return self.sparsity if self.mode == "dataless" and self.topk_scope == "tensor" else None

    def elementwise(self) -> bool:
        """Dataless masks depend on an entry and the thresholds only; trained ones are whole-tensor statistics."""
        return self.mode == "dataless"

    def uses_data(self) -> bool:
        return self.mode == "trained"


def localize(deltas: Tensor, p: LocalizeStitchParams, ctx: MergeContext) -> Iterator[Tensor]:
    """The bool masks Mᵢ, one expert at a time: the dataless top-s masks, or the trained ones from ``ctx.data``."""
    if p.mode == "dataless":
        thresholds = thresholds_for(deltas, p.sparsity, p.topk_scope, ctx).tolist()
        return (tau.abs() >= t for tau, t in zip(deltas, thresholds, strict=True))
    masks = ctx.data.get("mask")
    if masks is None:
        raise StatisticsError(f"Tensor '{ctx.name}' has no trained Localize-and-Stitch mask.",
                              hint="Run the 'mask' statistics stage for every expert before merging.")
    if masks.shape != deltas.shape:
        raise StatisticsError(f"Tensor '{ctx.name}': trained masks are {tuple(masks.shape)}, "
                              f"task vectors {tuple(deltas.shape)}.")
    return (m.to(device=deltas.device, dtype=torch.bool) for m in masks)


@register(
    "localize_stitch",
    params=LocalizeStitchParams,
    title="Localize-and-Stitch: sparse task-vector masks, stitched by overlap (He et al., 2024)",
    paper="https://arxiv.org/abs/2408.13656",
    formula="""
        Localize (one mask per task):
          dataless (mode: dataless, default):  Mᵢ = [|τᵢ| ≥ tᵢ], tᵢ = ⌈s·N⌉-th largest |τᵢ| over all mergeable
                                               entries (topk_scope: tensor: over this tensor only)
          trained  (mode: trained):            Mᵢ = [σ(Sᵢ) ≥ 0.5] from the mask statistics stage, which starts
                                               Sᵢ at ±sigmoid_bias on the dataless mask and trains it on task i's
                                               own validation rows
        Stitch:
          cnt = Σᵢ Mᵢ   (overlap counted over all tasks)
          θ   = θ₀ + λ·Σᵢ (Mᵢ / max(1, cnt)) ⊙ wᵢτᵢ
    """,
    grid={"sparsity": (0.05, 0.1, 0.2)},
    version=2,  # 2: sums in expert order, merged in chunks (torch.sum's order made 5+ experts' bits differ)
    data_stats="mask",
)
def localize_stitch(base: Tensor, deltas: Tensor, p: LocalizeStitchParams, ctx: MergeContext) -> Tensor:
    base, deltas = f32(base), f32(deltas)
    count = torch.zeros(deltas.shape[1:], dtype=torch.int32, device=deltas.device)
    for tau, mask in zip(deltas, localize(deltas, p, ctx), strict=True):   # Mᵢ ⊙ τᵢ in place, cnt = Σ Mᵢ
        tau.mul_(mask)
        count += mask
    scale_experts_(deltas, ctx.weights)
    return torch.add(base, sum_in_expert_order(deltas).div_(count.clamp_(min=1)), alpha=p.scaling)
