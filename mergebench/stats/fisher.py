"""Fisher merging's statistics: the diagonal empirical Fisher of one expert on its own domain's rows.

    Fᵢ = (1/S) Σ_s (∇θ ℓ_s)²        ℓ_s = mean next-token NLL over the response tokens of sample s

one backward pass per sample (the square of a batch gradient is not the mean of per-sample squares).
Stored under every parameter name as float32 with the parameter's shape. Tied parameters (Gemma's
embedding = output head) appear once, under the name ``named_parameters()`` gives first
(``model.embed_tokens.weight``), which is the checkpoint's name; the gradient includes both uses. Rows
whose responses were cut away by ``max_length`` are skipped with a warning.

Memory: one expert in float32 + its gradients + the Fisher accumulator = 3 × 4 bytes × parameters
(Llama-3.1-8B: ≈ 96 GB; Llama-3.2-3B: ≈ 39 GB) + activations of one sample. The output is one
model-size float32 file.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from mergebench.stats.data import Sample, collate, per_sample_nll, require_responses

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FisherConfig:
    num_samples: int = 1000


def compute_fisher(model: nn.Module, samples: Sequence[Sample], *, pad_id: int, device: str = "cpu"
                   ) -> dict[str, Tensor]:
    """Mean over ``samples`` of the squared gradient of each sample's mean response NLL, per parameter."""
    require_responses(samples)
    params = {name: p for name, p in model.named_parameters() if p.requires_grad}
    fisher = {name: torch.zeros_like(p, dtype=torch.float32) for name, p in params.items()}
    model.zero_grad(set_to_none=True)
    for sample in samples:
        batch = collate([sample], pad_id, device)
        with torch.enable_grad():  # grad mode is global: lighteval, for one, switches it off at import
            logits = model(input_ids=batch.input_ids, attention_mask=batch.attention_mask, use_cache=False).logits
            per_sample_nll(logits, batch.labels)[0].backward()
        for name, p in params.items():
            if p.grad is not None:
                fisher[name].addcmul_(p.grad, p.grad)
        model.zero_grad(set_to_none=True)
    for f in fisher.values():
        f.div_(len(samples))
    return fisher
