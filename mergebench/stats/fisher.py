"""Fisher merging's statistics: the diagonal empirical Fisher of one expert on its own domain's rows.

    Fᵢ = (1/S) Σ_s (∇θ ℓ_s)²        ℓ_s = mean next-token NLL over the response tokens of sample s

one gradient per sample (the square of a batch gradient is not the mean of per-sample squares), computed
layer by layer with the exact backward of :mod:`mergebench.stats.backprop`. Stored as float32 with each
tensor's shape, for the tensors the merge can use them for: every tensor outside the embedding and output head,
and those too when ``merge_embeddings`` (a tied embedding = output head appears once, under its checkpoint
name ``model.embed_tokens.weight``, its gradient being the sum of both uses). Rows whose responses were cut
away by ``max_length`` are skipped with a warning.

Memory: one decoder layer in float32 + its Fisher accumulator + one parameter's gradient (Llama-3.1-8B:
0.87 + 0.87 + 0.24 GB) + one row's activations through one layer + a head block with its gradient and
accumulator (3 × :attr:`StatsOptions.head_chunk_bytes`) + the read-ahead. Disk: the Fisher file (float32, the size
of the mergeable tensors: 8B ≈ 28 GB without the embeddings, 32 GB with them) and the parked activations
(rows × tokens × hidden × 4 bytes per layer, at most :attr:`StatsOptions.spill_bytes`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor

from mergebench.methods.common import is_embedding
from mergebench.stats.backprop import accumulate
from mergebench.stats.cache import Entry, StatisticsFile
from mergebench.stats.data import Sample
from mergebench.stats.layered import LayeredModel, Weights
from mergebench.stats.spill import Spill

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class FisherConfig:
    num_samples: int = 1000
    merge_embeddings: bool = False
    """Also compute the embedding's and head's Fisher (the recipe's flag: only then does the merge use them)."""


def fisher_entries(lm: LayeredModel, merge_embeddings: bool) -> list[Entry]:
    """The Fisher tensors: ``(checkpoint name, float32, shape)`` of every tensor the merge may use them for."""
    names = [name for i in range(len(lm.layers)) for name in lm.layer_names(i)] + lm.tail_names()
    if merge_embeddings:
        names += [lm.embedding_name, lm.head_name, *([lm.head_bias_name] if lm.head_bias_name else [])]
    unique = [n for n in dict.fromkeys(names) if merge_embeddings or not is_embedding(n)]
    return [(name, torch.float32, lm.model.tensor(name).shape) for name in unique]


def compute_fisher(lm: LayeredModel, weights: Weights, samples: Sequence[Sample], out: StatisticsFile, *,
                   pad_id: int, spill: Callable[[], Spill]) -> None:
    """Write the mean over ``samples`` of each sample's squared gradient into every tensor of ``out``."""
    scale = 1.0 / len(samples)

    def squared(total: Tensor, grad: Tensor) -> None:
        total.addcmul_(grad, grad, value=scale)

    accumulate(lm, weights, samples, out, squared, pad_id=pad_id, spill_dir=spill)
