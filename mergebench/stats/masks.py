"""Trained Localize-and-Stitch masks: one binary mask per expert, trained on its own domain's rows.

For expert i with task vector τ = θᵢ − θ₀ (float32, over the mergeable tensors only: embeddings and the
output head are excluded unless ``merge_embeddings``):

    t   = dataless threshold: the ⌈s·N⌉-th largest |τ| over all mergeable entries (exact,
          :mod:`mergebench.methods.topk`; ``topk_scope: tensor``: per tensor), the value the merge engine computes
    S⁰  = +sigmoid_bias where |τ| ≥ t, −sigmoid_bias elsewhere
    θ(S) = θ₀ + σ(S) ⊙ τ                      (non-mergeable tensors stay θ₀, as in the merged model)
    L(S) = (1/R) Σ_r ℓ_r(θ(S))                ℓ_r = mean response-token NLL of row r, R rows
    S^{e+1} = S^e − learning_rate · ∂L/∂S − l1_strength · σ'(S^e)      once per epoch (full batch)
    M   = [σ(S^E) ≥ 0.5]                       stored as bool under each mergeable tensor name

∂L/∂S = (∂L/∂θ)|θ(S) ⊙ τ ⊙ σ'(S). Each epoch, ∂L/∂θ at θ(S) is computed layer by layer with the exact backward
of :mod:`mergebench.stats.backprop` (the weights it reads are θ(S), built from the base's and the expert's
streamed tensors and S), summed over the rows into a scratch file; then an update pass reads θ₀, τ and S again
tensor by tensor, applies the step, and writes S (or, after the last epoch, the masks). S⁰ is never stored: it
follows from τ and the threshold. With ``learning_rate = 0`` and ``l1_strength = 0`` (or ``epochs = 0``) no
forward pass runs and the masks are exactly the dataless ones.

Like the authors' code, one full-batch step is taken per epoch (gradients averaged over all rows, hence
the large default learning rate 1e8). Unlike it, the L1 term is the gradient of ``l1_strength · Σσ(S)``,
which shrinks the mask; the authors' update adds ``l1_strength · sign(S) · σ'(S)``, which grows |S|.

Memory: one decoder layer of the base, the expert and S in float32 plus θ(S) and its gradient accumulator
(5 × 4 bytes × the layer's parameters: 4.4 GB at Llama-3.1-8B) + what :mod:`~mergebench.stats.backprop` needs
for its head blocks and activations. Disk: ∂L/∂θ (and S between epochs) over the mergeable tensors in
float32, and the parked activations. Reads per epoch: the base and the expert twice for the gradient and once
for the update, plus one pass (two when a threshold's histogram bucket is not decided by the first) for the
global threshold. Output: a bool file, 1 byte per mergeable parameter.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import torch
from torch import Tensor

from mergebench.errors import StatisticsError
from mergebench.hub.models import ResolvedModel
from mergebench.methods.common import is_embedding
from mergebench.methods.topk import GlobalTopK, tensor_thresholds
from mergebench.stats.backprop import accumulate
from mergebench.stats.cache import Entry, StatisticsFile, scratch_statistics
from mergebench.stats.data import Sample, require_responses
from mergebench.stats.layered import LayeredModel, RowReader
from mergebench.stats.spill import Spill

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class MaskConfig:
    sparsity: float = 0.1
    sigmoid_bias: float = 3.0
    learning_rate: float = 1e8
    epochs: int = 1
    l1_strength: float = 0.0
    num_samples: int = 1000
    topk_scope: Literal["global", "tensor"] = "global"
    merge_embeddings: bool = False


class _Tensors:
    """The mergeable tensors of a base and an expert, read whole (layers, tail) or in row blocks (embedding,
    head), with their task vectors τ = θᵢ − θ₀ in float32."""

    def __init__(self, lm: LayeredModel, expert: ResolvedModel, merge_embeddings: bool) -> None:
        self.lm = lm
        self.expert = expert
        self.layer_groups = [lm.layer_names(i) for i in range(len(lm.layers))]
        names = [n for group in self.layer_groups for n in group] + lm.tail_names()
        if merge_embeddings:
            names += [lm.embedding_name, lm.head_name, *([lm.head_bias_name] if lm.head_bias_name else [])]
        self.mergeable = [n for n in dict.fromkeys(names) if merge_embeddings or not is_embedding(n)]
        self.blocked = [n for n in self.mergeable if n in (lm.embedding_name, lm.head_name, lm.head_bias_name)]
        self._readers: dict[str, RowReader] = {}
        for name in self.mergeable:
            theta0 = lm.model.tensor(name).shape
            found = expert.tensor(name).shape if name in expert.weight_map else None
            if found != theta0:
                raise StatisticsError(f"Tensor '{name}' is {list(theta0)} in the base but "
                                      f"{'missing' if found is None else list(found)} in the expert "
                                      f"'{expert.label}', so it has no task vector.",
                                      hint="Experts must be fine-tunes of the base: same architecture, tensor "
                                           "names and shapes.")
        if not self.mergeable:
            raise StatisticsError("The expert has no mergeable tensor, so there is no mask to train.",
                                  hint="Check the models (merge_embeddings: true also masks embeddings and the head).")

    def entries(self, dtype: torch.dtype) -> list[Entry]:
        return [(name, dtype, self.lm.model.tensor(name).shape) for name in self.mergeable]

    def layers(self, indices: Sequence[int]) -> Iterator[tuple[dict[str, Tensor], dict[str, Tensor]]]:
        """``(θ₀, τ)`` of each decoder layer of ``indices`` (τ of its mergeable tensors); an iterator that keeps
        no reference to what it returned (take them with ``next()``)."""
        groups = [self.layer_groups[i] for i in indices]
        return map(self._task_vectors, self.lm.stream([self.lm.model, self.expert], groups))

    def _task_vectors(self, models: list[dict[str, Tensor]]) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        base, expert = models
        return base, {n: expert.pop(n).sub_(base[n]) for n in list(expert) if n in self.mergeable}

    def tail(self) -> tuple[dict[str, Tensor], dict[str, Tensor]]:
        names = self.lm.tail_names()
        if not names:
            return {}, {}
        return self._task_vectors(next(self.lm.stream([self.lm.model, self.expert], [names])))

    def rows(self, name: str, begin: int, end: int) -> tuple[Tensor, Tensor | None]:
        """``(θ₀, τ)`` of rows ``[begin, end)`` of an embedding or head tensor (τ ``None`` when not mergeable)."""
        base = self.lm.reader(name).read(begin, end)
        if name not in self.mergeable:
            return base, None
        return base, self._reader(name).read(begin, end).sub_(base)

    def gather(self, name: str, ids: Tensor) -> tuple[Tensor, Tensor | None]:
        """``(θ₀, τ)`` of rows ``ids`` of an embedding tensor."""
        base = self.lm.reader(name).gather(ids, self.lm.block_rows(name))
        if name not in self.mergeable:
            return base, None
        return base, self._reader(name).gather(ids, self.lm.block_rows(name)).sub_(base)

    def blocks(self, name: str) -> Iterator[tuple[int, int]]:
        rows, step = self.lm.model.tensor(name).shape[0], self.lm.block_rows(name)
        for begin in range(0, rows, step):
            yield begin, min(begin + step, rows)

    def _reader(self, name: str) -> RowReader:
        if name not in self._readers:
            self._readers[name] = RowReader(self.expert, name)
        return self._readers[name]

    def each(self) -> Iterator[tuple[str, int, Tensor, Tensor]]:
        """Every mergeable tensor (or row block of one) as ``(name, first row, θ₀, τ)``; one layer in memory."""
        layers = self.layers(range(len(self.layer_groups)))
        for _ in self.layer_groups:
            base, taus = next(layers)
            for name in list(taus):
                yield name, 0, base.pop(name), taus.pop(name)
            del base, taus
        base, taus = self.tail()
        for name, tau in taus.items():
            yield name, 0, base[name], tau
        for name in self.blocked:
            for begin, end in self.blocks(name):
                theta0, block_tau = self.rows(name, begin, end)
                assert block_tau is not None
                yield name, begin, theta0, block_tau


class _Thresholds:
    """The dataless threshold t of each mergeable tensor: one global value, or per tensor (``topk_scope: tensor``;
    computed from the whole τ when a tensor is read whole, by an exact histogram pass for those read in blocks)."""

    def __init__(self, tensors: _Tensors, sparsity: float, scope: str) -> None:
        self.sparsity = sparsity
        self.scope = scope
        self.values: dict[str, Tensor] = {}
        if scope == "global":
            self.values = dict.fromkeys(tensors.mergeable, _exact_top_k(tensors, tensors.mergeable, sparsity))
        else:
            for name in tensors.blocked:
                self.values[name] = _exact_top_k(tensors, [name], sparsity)

    def of(self, name: str, tau: Tensor) -> Tensor:
        if name in self.values:
            return self.values[name].to(tau.device)
        return tensor_thresholds(tau[None], self.sparsity)[0]


def _exact_top_k(tensors: _Tensors, names: Sequence[str], sparsity: float) -> Tensor:
    """The ⌈s·N⌉-th largest |τ| over the entries of ``names`` (:class:`GlobalTopK`, one or two streaming passes)."""
    acc = GlobalTopK(1, sparsity)
    wanted = set(names)
    for pass_index in range(acc.passes):
        for name, _, _, tau in tensors.each():
            if name in wanted:
                acc.update(pass_index, tau[None].cpu())
        acc.finish_pass(pass_index)
        if pass_index == 0 and acc.selection().is_exact:
            break
    return acc.thresholds()[0]


class _MaskedWeights:
    """θ(S) = θ₀ + σ(S) ⊙ τ on the mergeable tensors (θ₀ elsewhere): the weights the gradient pass reads
    (:class:`mergebench.stats.layered.Weights`). S is S⁰ = ±bias from τ and t, or the previous epoch's."""

    def __init__(self, tensors: _Tensors, thresholds: _Thresholds, bias: float, logits: StatisticsFile | None
                 ) -> None:
        self.tensors = tensors
        self.thresholds = thresholds
        self.bias = bias
        self.logits = logits

    def s(self, name: str, tau: Tensor, row: int = 0, ids: Tensor | None = None) -> Tensor:
        """S of ``tau``: a whole tensor's, its rows from ``row`` (blocked tensors), or its rows ``ids``."""
        if self.logits is None:
            return torch.where(tau.abs() >= self.thresholds.of(name, tau), self.bias, -self.bias)
        if ids is not None:
            return self.logits.gather(name, ids).to(tau.device)
        rows = tau.shape[0] if name in self.tensors.blocked else None
        return self.logits.read(name, row, rows).to(tau.device)

    def theta(self, name: str, theta0: Tensor, tau: Tensor | None, row: int = 0, ids: Tensor | None = None
              ) -> Tensor:
        """θ₀ + σ(S) ⊙ τ (θ₀ where the tensor is not mergeable)."""
        if tau is None:
            return theta0
        return torch.sigmoid(self.s(name, tau, row, ids)).mul_(tau).add_(theta0)

    def layers(self, indices: Sequence[int]) -> Iterator[dict[str, Tensor]]:
        return map(self._thetas, self.tensors.layers(indices))

    def _thetas(self, layer: tuple[dict[str, Tensor], dict[str, Tensor]]) -> dict[str, Tensor]:
        base, taus = layer
        return {n: self.theta(n, base.pop(n), taus.pop(n, None)) for n in list(base)}

    def tail(self) -> dict[str, Tensor]:
        base, taus = self.tensors.tail()
        return {n: self.theta(n, t, taus.get(n)) for n, t in base.items()}

    def rows(self, name: str, begin: int, end: int) -> Tensor:
        theta0, tau = self.tensors.rows(name, begin, end)
        return self.theta(name, theta0, tau, begin)

    def gather(self, name: str, ids: Tensor) -> Tensor:
        theta0, tau = self.tensors.gather(name, ids)
        return self.theta(name, theta0, tau, ids=ids)


def mask_entries(lm: LayeredModel, expert: ResolvedModel, config: MaskConfig) -> list[Entry]:
    """The mask tensors: ``(checkpoint name, bool, shape)`` of every mergeable tensor."""
    return _Tensors(lm, expert, config.merge_embeddings).entries(torch.bool)


def train_masks(lm: LayeredModel, expert: ResolvedModel, samples: Sequence[Sample], config: MaskConfig,
                out: StatisticsFile, *, pad_id: int, spill: Callable[[], Spill], scratch: Path) -> None:
    """Write the trained masks of ``expert`` (bool, one per mergeable tensor) into ``out``; see the module
    docstring. ``lm`` is the base's skeleton; ``scratch`` holds the gradient and S files between passes."""
    tensors = _Tensors(lm, expert, config.merge_embeddings)
    thresholds = _Thresholds(tensors, config.sparsity, config.topk_scope)
    if config.epochs == 0 or (config.learning_rate == 0.0 and config.l1_strength == 0.0):
        logger.info("learning_rate = l1_strength = 0 or epochs = 0: trained masks are the dataless masks")
        for name, row, _, tau in tensors.each():
            out.write(name, tau.abs() >= thresholds.of(name, tau), row)
        return
    require_responses(samples)
    scale = 1.0 / len(samples)

    def mean(total: Tensor, grad: Tensor) -> None:
        total.add_(grad, alpha=scale)

    logits: StatisticsFile | None = None
    try:
        for epoch in range(config.epochs):
            last = epoch == config.epochs - 1
            weights = _MaskedWeights(tensors, thresholds, config.sigmoid_bias, logits)
            grads = scratch_statistics(scratch, tensors.entries(torch.float32))
            try:
                accumulate(lm, weights, samples, grads, mean, pad_id=pad_id, spill_dir=spill)
                updated = out if last else scratch_statistics(scratch, tensors.entries(torch.float32))
                _step(tensors, weights, grads, updated, config, last=last)
            finally:
                grads.close()
            if logits is not None:
                logits.close()
            logits = None if last else updated
    finally:
        if logits is not None:
            logits.close()


def _step(tensors: _Tensors, weights: _MaskedWeights, grads: StatisticsFile, out: StatisticsFile,
          config: MaskConfig, *, last: bool) -> None:
    """One update of S from ∂L/∂θ; writes S, or after the last epoch the masks [σ(S) ≥ 0.5]."""
    kept, total = 0, 0
    for name, row, _, tau in tensors.each():
        s = weights.s(name, tau, row)
        grad = grads.read(name, row, tau.shape[0] if name in tensors.blocked else None).to(s.device)
        sig = torch.sigmoid(s)
        slope = sig.mul_(1.0 - sig)                                   # σ'(S)
        step = grad.mul_(tau).mul_(slope).mul_(config.learning_rate)  # lr·∂L/∂S
        s.sub_(step.add_(slope, alpha=config.l1_strength))
        mask = torch.sigmoid(s) >= 0.5
        kept += int(mask.sum())
        total += mask.numel()
        out.write(name, mask if last else s, row)
    logger.info("mask epoch: %.4f of %d mergeable entries kept", kept / max(total, 1), total)
