"""RegMean's statistics: the input Gram matrix of every linear layer inside the transformer blocks.

For each ``nn.Linear`` whose qualified name contains ``layers.<i>.`` (``model.layers.*`` in Llama, Gemma-2,
Qwen, Mistral ...), with x ∈ ℝ^in its input at one token:

    G = (1/T) Σ_t x_t x_tᵀ        over the T non-padding tokens (prompt and response) of the expert's
                                  own-domain validation rows

stored under the layer's weight name (``model.layers.0.mlp.up_proj.weight``) as float32 ``[in, in]``.
Layers that share an input (q/k/v, gate/up) get identical matrices under their own names.

Memory: one expert in float32 (4 bytes × parameters) + its Grams, Σ in² × 4 bytes over the linear layers
(Llama-3.1-8B: 32 × (6 × 4096² + 14336²) × 4 ≈ 39 GB; Llama-3.2-3B: 28 × (6 × 3072² + 8192²) × 4 ≈ 14 GB)
+ one batch of activations. Accumulation is in float32, one ``xᵀx`` matmul per layer and batch.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Iterable
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mergebench.errors import StatisticsError
from mergebench.stats.data import Batch

logger = logging.getLogger(__name__)

BLOCK_LINEAR = re.compile(r"(^|\.)layers\.\d+\.")


@dataclass(frozen=True)
class GramConfig:
    num_samples: int = 1000


def block_linears(model: nn.Module) -> dict[str, nn.Linear]:
    """``{weight name: module}`` for every ``nn.Linear`` inside a transformer block."""
    return {f"{name}.weight": module for name, module in model.named_modules()
            if isinstance(module, nn.Linear) and BLOCK_LINEAR.search(name + ".")}


def compute_gram(model: nn.Module, batches: Iterable[Batch]) -> dict[str, Tensor]:
    """Mean ``x xᵀ`` over non-padding tokens for every block linear layer, keyed by its weight name."""
    linears = block_linears(model)
    if not linears:
        raise StatisticsError(f"The model ({type(model).__name__}) has no nn.Linear inside 'layers.<i>.' blocks, so "
                              "there is no Gram matrix to compute.",
                              hint="RegMean supports decoder models whose blocks are 'model.layers.<i>' with nn.Linear "
                                   "projections (Llama, Gemma, Qwen, Mistral); merge this one with another method.")
    sums: dict[str, Tensor] = {}
    counts: dict[str, int] = dict.fromkeys(linears, 0)
    current: dict[str, Tensor] = {}

    def hook(name: str):
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x = inputs[0]
            mask = current["mask"]
            rows = x[mask] if x.shape[:-1] == mask.shape else x.reshape(-1, x.shape[-1])  # MoE-style inputs
            rows = rows.float()
            if name not in sums:
                sums[name] = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float32, device=x.device)
            sums[name].addmm_(rows.T, rows)
            counts[name] += rows.shape[0]
        return record

    handles = [module.register_forward_hook(hook(name)) for name, module in linears.items()]
    try:
        with torch.no_grad():
            for batch in batches:
                current["mask"] = batch.attention_mask.bool()
                model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False)
    finally:
        for handle in handles:
            handle.remove()
    missing = [name for name, count in counts.items() if count == 0]
    if missing:
        raise StatisticsError(f"No token reached {len(missing)} of {len(linears)} linear layers (e.g. '{missing[0]}'), "
                              "so they have no Gram matrix.",
                              hint="Give the domain validation rows with text (num_samples ≥ 1); layers that only "
                                   "some tokens reach (mixture-of-experts) need more rows.")
    return {name: sums[name].div_(counts[name]) for name in linears}
