"""Small tensor helpers shared by several methods."""

from __future__ import annotations

import torch
from torch import Tensor


def weighted_sum(stack: Tensor, weights: tuple[float, ...] | None) -> Tensor:
    """Σᵢ wᵢ·stack[i] (plain sum when ``weights`` is None), without materialising ``w ⊙ stack``."""
    if weights is None:
        return stack.sum(0)
    if len(weights) != stack.shape[0]:
        raise ValueError(f"{len(weights)} weights for {stack.shape[0]} experts")
    w = torch.tensor(weights, dtype=stack.dtype)
    return torch.tensordot(w, stack, dims=1)


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


def weighted_mean(stack: Tensor, weights: tuple[float, ...] | None) -> Tensor:
    """``Σᵢ wᵢ·stack[i] / Σᵢ wᵢ`` (plain mean when ``weights`` is None)."""
    if weights is None:
        return stack.mean(0)
    total = sum(expert_weights(weights, stack.shape[0]))
    if total == 0:
        raise ValueError("expert weights sum to 0; a weighted mean is undefined")
    return weighted_sum(stack, tuple(w / total for w in weights))


def rescale_from_base(base: Tensor, merged: Tensor, scaling: float) -> Tensor:
    """``θ₀ + λ·(merged − θ₀)`` for weight-space methods; exactly ``merged`` when ``λ = 1``."""
    if scaling == 1.0:
        return merged
    return torch.add(base, merged.sub_(base), alpha=scaling)


def require(condition: bool, message: str, hint: str | None = None) -> None:
    """Raise :class:`~mergebench.errors.ConfigError` with ``message`` unless ``condition`` holds."""
    if not condition:
        from mergebench.errors import ConfigError

        raise ConfigError(message, hint=hint)
