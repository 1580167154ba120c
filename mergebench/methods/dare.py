"""DARE: Drop And REscale task vectors (Yu et al., 2024, arXiv:2311.03099), summed like Task Arithmetic.

mᵢ ~ Bernoulli(1 − p) per entry;   τ̂ᵢ = mᵢ ⊙ τᵢ / (1 − p);   θ = θ₀ + λ·Σᵢ wᵢ τ̂ᵢ

Parameters: ``drop_rate`` p ∈ [0, 1) (0.8), ``scaling`` λ (1.0), ``seed`` (the recipe's ``seed``, 0 by
default, when not given). Recipe weights wᵢ default to 1. ``p = 0`` is exactly Task Arithmetic.

Masks: entry j (row-major position) of tensor ``name`` of expert ``e`` (its position in the recipe's ``models``
list, ``ctx.expert_ids``) is kept iff ``uⱼ ≥ p``, where ``uⱼ`` is draw number j of a SplitMix64 stream keyed by
the first 8 bytes of ``sha256("mergebench/dare/v2|{seed}|{e}|{name}")`` (:func:`mask_key`,
:func:`~mergebench.methods.kernels.dare_delta`). A draw is computed from its position alone, so a mask depends
only on (seed, expert index, tensor name, position): never on the order tensors are visited, on chunks, threads,
shard layout or which other experts are merged, nor on the PyTorch version. That is what lets the engine merge DARE
in chunks on every core (elementwise, with ``ctx.offset``); version 1 drew each mask whole with ``torch.rand``,
which held a float32 mask per expert of the largest tensor and drew on one core.

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
from mergebench.methods.kernels import dare_delta
from mergebench.methods.registry import MergeContext, Params, Range, param, register


@dataclass(frozen=True)
class DareParams(Params):
    ELEMENTWISE = True  # a mask entry is drawn from its position (ctx.offset in a chunk) alone
    drop_rate: float = param(0.8, "p: probability that an entry of a task vector is dropped (set to 0).",
                             within=Range(ge=0, lt=1))
    scaling: float = param(1.0, "λ, applied to the summed rescaled task vectors.")
    seed: int | None = param(None, "Seed of the drop masks; None uses the recipe's seed (default 0).")


def mask_key(seed: int, expert_id: int, name: str) -> int:
    """The 64-bit key of one (seed, expert, tensor) mask: a stable hash, never Python's ``hash()``."""
    digest = hashlib.sha256(f"mergebench/dare/v2|{seed}|{expert_id}|{name}".encode()).digest()
    return int.from_bytes(digest[:8], "little")


@register(
    "dare",
    params=DareParams,
    title="DARE: Drop And REscale task vectors, summed like Task Arithmetic (Yu et al., 2024)",
    paper="https://arxiv.org/abs/2311.03099",
    formula="mᵢ ~ Bernoulli(1 − p) per entry;   τ̂ᵢ = mᵢ ⊙ τᵢ / (1 − p);   θ = θ₀ + λ·Σᵢ wᵢ τ̂ᵢ",
    grid={"drop_rate": (0.7, 0.8, 0.9), "scaling": (0.4, 0.6, 0.8, 1.0)},
    version=2,  # 2: masks drawn from their positions (SplitMix64), sums in expert order, merged in chunks
)
def dare(base: Tensor, deltas: Tensor, p: DareParams, ctx: MergeContext) -> Tensor:
    """``p = 0`` is Task Arithmetic's code path, so its bits; otherwise one compiled loop draws each mask entry from
    its position (``ctx.offset`` + its index in the chunk) and adds ``(wᵢ / (1 − p))·(mᵢ ⊙ τᵢ)`` in expert order."""
    base, deltas = f32(base), f32(deltas)
    n = deltas.shape[0]
    if len(ctx.expert_ids) != n:
        raise ValueError(f"Tensor '{ctx.name}': {len(ctx.expert_ids)} expert ids for {n} experts")
    if p.drop_rate == 0.0:
        return torch.add(base, weighted_sum(deltas, ctx.weights), alpha=p.scaling)
    seed = ctx.seed if p.seed is None else p.seed
    delta = dare_delta(deltas.reshape(n, -1), [mask_key(seed, e, ctx.name) for e in ctx.expert_ids], ctx.offset,
                       p.drop_rate, [w / (1.0 - p.drop_rate) for w in expert_weights(ctx.weights, n)])
    return torch.add(base, delta.view(base.shape), alpha=p.scaling)
