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
