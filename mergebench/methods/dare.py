"""DARE: Drop And REscale task vectors (Yu et al., 2024, arXiv:2311.03099), summed like Task Arithmetic.

mᵢ ~ Bernoulli(1 − p) per entry;   τ̂ᵢ = mᵢ ⊙ τᵢ / (1 − p);   θ = θ₀ + λ·Σᵢ wᵢ τ̂ᵢ

Parameters: ``drop_rate`` p ∈ [0, 1) (0.8), ``scaling`` λ (1.0), ``seed`` (the recipe's ``seed``, 0 by
default, when not given). Recipe weights wᵢ default to 1. ``p = 0`` is exactly Task Arithmetic.

Reproducibility: entry j of tensor ``name`` of expert ``e`` (its position in the recipe's ``models`` list,
``ctx.expert_ids``) is kept iff ``uⱼ ≥ p``, where ``u = torch.rand(shape)`` drawn whole from a CPU
``torch.Generator`` seeded with the first 8 bytes of ``sha256("mergebench/dare/v1|{seed}|{e}|{name}")``.
So a mask depends only on (seed, expert index, tensor name, position): never on the order tensors are
visited, threads, shard layout, device or which other experts are merged. (The bytes of ``torch.rand``
are fixed for a given PyTorch version; a new PyTorch may draw different, equally valid masks.)

Differences from other libraries: mergekit ``dare_linear`` (``density`` = 1 − p, ``rescale: true``)
rescales the same way but draws masks from torch's global RNG state, so they depend on the order tensors
are processed; it also normalises weights to sum 1 by default (``normalize: true``), which we do not.
peft ``dare_linear`` draws ``torch.bernoulli`` masks from the global RNG the same way and rescales by
1/density. Some implementations rescale to preserve the tensor's L1 norm instead; we use 1/(1 − p) as the
paper does.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import torch
from torch import Tensor

from mergebench.methods.common import expert_weights, f32, weighted_sum
from mergebench.methods.registry import MergeContext, Params, Range, param, register


@dataclass(frozen=True)
class DareParams(Params):
    drop_rate: float = param(0.8, "p: probability that an entry of a task vector is dropped (set to 0).",
                             within=Range(ge=0, lt=1))
    scaling: float = param(1.0, "λ, applied to the summed rescaled task vectors.")
    seed: int | None = param(None, "Seed of the drop masks; None uses the recipe's seed (default 0).")


def mask_generator(seed: int, expert_id: int, name: str) -> torch.Generator:
    """The CPU generator of one (seed, expert, tensor) triple: a stable hash, never Python's ``hash()``."""
    digest = hashlib.sha256(f"mergebench/dare/v1|{seed}|{expert_id}|{name}".encode()).digest()
    return torch.Generator(device="cpu").manual_seed(int.from_bytes(digest[:8], "little"))


def keep_mask(seed: int, expert_id: int, name: str, shape: torch.Size, drop_rate: float) -> Tensor:
    """Bool mask (``True`` = kept, probability 1 − p) for one expert's tensor, drawn whole."""
    return torch.rand(shape, generator=mask_generator(seed, expert_id, name)) >= drop_rate


@register(
    "dare",
    params=DareParams,
    title="DARE: Drop And REscale task vectors, summed like Task Arithmetic (Yu et al., 2024)",
    paper="https://arxiv.org/abs/2311.03099",
    formula="mᵢ ~ Bernoulli(1 − p) per entry;   τ̂ᵢ = mᵢ ⊙ τᵢ / (1 − p);   θ = θ₀ + λ·Σᵢ wᵢ τ̂ᵢ",
    grid={"drop_rate": (0.7, 0.8, 0.9), "scaling": (0.4, 0.6, 0.8, 1.0)},
)
def dare(base: Tensor, deltas: Tensor, p: DareParams, ctx: MergeContext) -> Tensor:
    base, deltas = f32(base), f32(deltas)
    n = deltas.shape[0]
    if len(ctx.expert_ids) != n:
        raise ValueError(f"Tensor '{ctx.name}': {len(ctx.expert_ids)} expert ids for {n} experts")
    seed = ctx.seed if p.seed is None else p.seed
    if p.drop_rate > 0.0:
        for row, expert_id in zip(deltas, ctx.expert_ids, strict=True):
            row.mul_(keep_mask(seed, expert_id, ctx.name, row.shape, p.drop_rate).to(row.device))
    coefficients = (ctx.weights if p.drop_rate == 0.0  # p = 0: bit-identical to task_arithmetic
                    else tuple(w / (1.0 - p.drop_rate) for w in expert_weights(ctx.weights, n)))
    return torch.add(base, weighted_sum(deltas, coefficients), alpha=p.scaling)
