"""RegMean's statistics: the input Gram matrix of every linear layer inside the transformer blocks.

For each ``nn.Linear`` of decoder layer ``<i>`` (``model.layers.<i>.*`` in Llama, Gemma-2, Qwen, Mistral ...),
with x ∈ ℝ^in its input at one token:

    G = (1/T) Σ_t x_t x_tᵀ        over the T non-padding tokens (prompt and response) of the expert's
                                  own-domain validation rows

stored under the layer's weight name (``model.layers.0.mlp.up_proj.weight``) as float32 ``[in, in]``.
Layers that share an input (q/k/v, gate/up) get identical matrices under their own names.

Layer by layer (:mod:`mergebench.stats.layered`): the rows are embedded once; then each decoder layer is read
from the stream, the rows' hidden states (parked on disk, :mod:`mergebench.stats.spill`) go through it batch by
batch while hooks accumulate ``xᵀx`` in float32, its Grams are written to the statistics file and the layer is
freed. Memory: one layer in float32 + its Grams (Llama-3.1-8B: 0.87 GB + 1.23 GB) + one batch of activations
+ the read-ahead; disk: the statistics, Σ in² × 4 bytes over the linear layers (8B: 39 GB), plus two layers'
worth of hidden states while it runs.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mergebench.errors import StatisticsError
from mergebench.stats.cache import Entry, StatisticsFile
from mergebench.stats.data import Batch
from mergebench.stats.layered import LayeredModel, Weights
from mergebench.stats.spill import Spill

logger = logging.getLogger(__name__)

NO_LINEAR_HINT = ("RegMean supports decoder models whose blocks are 'model.layers.<i>' with nn.Linear projections "
                  "(Llama, Gemma, Qwen, Mistral); merge this one with another method.")


@dataclass(frozen=True)
class GramConfig:
    num_samples: int = 1000


def block_linears(layer: nn.Module, prefix: str) -> dict[str, nn.Linear]:
    """``{weight name: module}`` for every ``nn.Linear`` of one decoder layer whose names start with ``prefix``."""
    return {f"{prefix}{name}.weight": module for name, module in layer.named_modules()
            if isinstance(module, nn.Linear)}


def gram_entries(lm: LayeredModel) -> list[Entry]:
    """Every Gram the model has, in layer order: ``(weight name, float32, (in, in))``."""
    entries: list[Entry] = [(name, torch.float32, (module.in_features, module.in_features))
               for i, layer in enumerate(lm.layers)
               for name, module in block_linears(layer, f"{lm.prefix}.{i}.").items()]
    if not entries:
        raise StatisticsError(f"The model ({type(lm.module).__name__}) has no nn.Linear inside its decoder blocks, so "
                              "there is no Gram matrix to compute.", hint=NO_LINEAR_HINT)
    return entries


class GramAccumulator:
    """Σ x xᵀ and token counts of some linear layers, fed by forward hooks over the non-padding tokens."""

    def __init__(self, linears: dict[str, nn.Linear]) -> None:
        self.linears = linears
        self.sums: dict[str, Tensor] = {}
        self.counts: dict[str, int] = dict.fromkeys(linears, 0)
        self.mask: Tensor | None = None
        """``[B, T]`` bool: the tokens of the batch running now."""

    def _hook(self, name: str) -> Callable[[nn.Module, tuple[Tensor, ...], Tensor], None]:
        def record(module: nn.Module, inputs: tuple[Tensor, ...], output: Tensor) -> None:
            x, mask = inputs[0], self.mask
            rows = x[mask] if mask is not None and x.shape[:-1] == mask.shape else x.reshape(-1, x.shape[-1])
            rows = rows.float()  # MoE-style inputs (tokens routed to this expert) are taken as they come
            if name not in self.sums:
                self.sums[name] = torch.zeros(x.shape[-1], x.shape[-1], dtype=torch.float32, device=x.device)
            self.sums[name].addmm_(rows.T, rows)
            self.counts[name] += rows.shape[0]
        return record

    def run(self, forward: Callable[[], None]) -> None:
        """Call ``forward`` (one or more batches through the layers) with the hooks installed."""
        handles = [module.register_forward_hook(self._hook(name)) for name, module in self.linears.items()]
        try:
            with torch.no_grad():
                forward()
        finally:
            for handle in handles:
                handle.remove()

    def means(self) -> Iterator[tuple[str, Tensor]]:
        """``(name, Σ x xᵀ / T)`` per layer, each handed over as it is asked for (the accumulator keeps none).

        Raises:
            StatisticsError: a layer saw no token (before the first is handed over).
        """
        missing = [name for name, count in self.counts.items() if count == 0]
        if missing:
            raise StatisticsError(f"No token reached {len(missing)} of {len(self.linears)} linear layers (e.g. "
                                  f"'{missing[0]}'), so they have no Gram matrix.",
                                  hint="Give the domain validation rows with text (num_samples ≥ 1); layers that "
                                       "only some tokens reach (mixture-of-experts) need more rows.")
        for name in self.linears:
            yield name, self.sums.pop(name).div_(self.counts[name])


def compute_gram(lm: LayeredModel, weights: Weights, batches: Sequence[Batch], out: StatisticsFile,
                 spill_dir: Path) -> None:
    """Write the mean ``x xᵀ`` of every block linear layer (see the module docstring) into ``out``."""
    ids = lm.use_vocabulary(torch.cat([batch.input_ids.flatten() for batch in batches]))
    lm.set_table(weights.gather(lm.embedding_name, ids))
    spill = Spill(spill_dir)
    try:
        with torch.no_grad():
            for b, batch in enumerate(batches):
                spill.put(b, lm.embed(batch).hidden)
        n_layers = len(lm.layers)
        bar = tqdm(total=n_layers, desc="Gram layers", unit="layer", disable=not lm.options.progress, leave=False)
        layers = weights.layers(range(n_layers))
        for i in range(n_layers):
            following = None if i == n_layers - 1 else Spill(spill_dir)
            _layer_grams(lm, i, next(layers), batches, spill, following, out)
            spill.close()
            if following is not None:
                spill = following
            bar.update()
        bar.close()
    finally:
        spill.close()


def _layer_grams(lm: LayeredModel, i: int, tensors: dict[str, Tensor], batches: Sequence[Batch], source: Spill,
                 following: Spill | None, out: StatisticsFile) -> None:
    """Decoder layer ``i`` (``tensors``) on the rows parked in ``source``: its Grams into ``out``, its outputs into
    ``following``. A function of its own so that nothing of this layer (weights, Grams) outlives it: the caller
    reads the next layer only after this returns."""
    layer = lm.load_layer(i, tensors)
    acc = GramAccumulator(block_linears(layer, f"{lm.prefix}.{i}."))

    def forward() -> None:
        for b, batch in enumerate(batches):
            acc.mask = batch.attention_mask.bool().to(lm.device)
            hidden = lm.run_layer(i, source.get(b).to(lm.device), lm.embed(batch).calls[i])
            if following is not None:
                following.put(b, hidden)

    acc.run(forward)
    for name, gram in acc.means():
        out.write(name, gram)
    lm.free_layer(i)
