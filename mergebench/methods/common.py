"""Small tensor helpers shared by several methods."""

from __future__ import annotations

from collections.abc import Sequence

import torch
from torch import Tensor

from mergebench.errors import ConfigError

ZERO_SUM = 1e-9
"""Weights whose sum is at most this fraction of Σᵢ |wᵢ| sum to 0: ``(0.1, 0.2, -0.3)`` sums to 5.6e-17 in floats,
and dividing by that multiplies every task vector by ~10¹⁶."""


def weighted_sum(stack: Tensor, weights: tuple[float, ...] | None) -> Tensor:
    """``Σᵢ wᵢ·stack[i]`` (plain sum when ``weights`` is None), added in expert order from ``+0``.

    Each product is rounded before it is added (no fused multiply-add, as in ``(w ⊙ stack).sum(0)``), so an entry's
    bits depend on its own inputs only (:func:`sum_in_expert_order`): the engine's chunks of any width give the
    merge of the whole tensor."""
    if weights is None:
        return sum_in_expert_order(stack)
    if len(weights) != stack.shape[0]:
        raise ValueError(f"{len(weights)} weights for {stack.shape[0]} experts")
    total, product = torch.zeros_like(stack[0]), torch.empty_like(stack[0])
    for weight, row in zip(weights, stack, strict=True):
        total += torch.mul(row, weight, out=product)
    return total


def sum_in_expert_order(stack: Tensor) -> Tensor:
    """``Σᵢ stack[i]`` added in expert order from ``+0``, so that an entry's sum depends on its own inputs only.

    Why not ``stack.sum(0)``: with five experts or more torch adds the last columns of a row in another order than
    the others, so an entry's bits would depend on the width of the tensor or chunk it is summed in, and a merge
    chunked by the engine (:mod:`mergebench.merge.compute`) would differ from the same merge of whole tensors."""
    total = torch.zeros_like(stack[0])
    for row in stack:
        total += row
    return total


def f32(t: Tensor) -> Tensor:
    """``t`` as float32 (no copy when it already is): every method computes in float32."""
    return t if t.dtype == torch.float32 else t.float()


def expert_weights(weights: tuple[float, ...] | None, n: int) -> tuple[float, ...]:
    """Per-expert coefficients: the recipe's, or ``1.0`` each; their number must match the stack."""
    if weights is None:
        return (1.0,) * n
    if len(weights) != n:
        raise ValueError(f"{len(weights)} weights for {n} experts")
    return tuple(float(w) for w in weights)


def scale_experts_(stack: Tensor, weights: tuple[float, ...] | None) -> Tensor:
    """``stack[i] *= wᵢ`` in place (nothing to do when ``weights`` is None); returns ``stack``."""
    if weights is not None:
        for row, w in zip(stack, expert_weights(weights, stack.shape[0]), strict=True):
            if w != 1.0:
                row.mul_(w)
    return stack


def weight_sum(weights: Sequence[float], *, what: str = "a weighted mean") -> float:
    """``Σᵢ wᵢ``, which ``what`` divides by. A (nearly, see :data:`ZERO_SUM`) zero sum has no average.

    Raises:
        ConfigError: the weights sum to 0, with a hint to fix the recipe.
    """
    total = sum(weights)
    if abs(total) <= ZERO_SUM * sum(abs(w) for w in weights):
        raise ConfigError(
            f"Expert weights {tuple(weights)} sum to 0, but {what} divides by their sum (θ = Σᵢ wᵢθᵢ / Σᵢ wᵢ).",
            hint="Give weights with a non-zero sum (they are divided by it: 1 and 1 is the even average); "
                 "to add and subtract task vectors use method 'task_arithmetic'.")
    return total


def weighted_mean(stack: Tensor, weights: tuple[float, ...] | None) -> Tensor:
    """``Σᵢ wᵢ·stack[i] / Σᵢ wᵢ`` (plain mean when ``weights`` is None); a zero sum is a ConfigError."""
    if weights is None:
        return sum_in_expert_order(stack).div_(stack.shape[0])  # what ``stack.mean(0)`` computes, in expert order
    total = weight_sum(expert_weights(weights, stack.shape[0]))
    return weighted_sum(stack, tuple(w / total for w in weights))


def rescale_from_base(base: Tensor, merged: Tensor, scaling: float) -> Tensor:
    """``θ₀ + λ·(merged − θ₀)`` for weight-space methods; exactly ``merged`` when ``λ = 1``."""
    if scaling == 1.0:
        return merged
    return torch.add(base, merged.sub_(base), alpha=scaling)


def require(condition: bool, message: str, hint: str | None = None) -> None:
    """Raise :class:`~mergebench.errors.ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        raise ConfigError(message, hint=hint)


EMBEDDING_MARKERS = ("embed_tokens", "lm_head", "wte", "wpe", "embed")
"""Substrings naming embedding and output-head tensors, copied from the base unless ``merge_embeddings``."""


def is_embedding(name: str) -> bool:
    """Whether a tensor is an embedding or the output head (copied from the base unless ``merge_embeddings``)."""
    return any(marker in name for marker in EMBEDDING_MARKERS)
