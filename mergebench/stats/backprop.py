"""Per-row gradients of the response loss, one decoder layer at a time (Fisher diagonals, trained masks).

For each validation row r, ℓ_r = mean next-token NLL over its response tokens (as
:func:`mergebench.stats.data.per_sample_nll`), and :func:`accumulate` adds ``per_row(∇θ ℓ_r)`` (Fisher:
``g²/R``; trained masks: ``g/R``) to every tensor of a statistics file, exactly as whole-model autograd would, in
five passes over a group of rows:

1. **Forward.** Embed every row (one row per forward: no padding), then read each decoder layer from the
   stream and push the rows through it, parking every layer's input on disk (:class:`~mergebench.stats.spill.
   Spill`); the last layer's output too.
2. **Head.** Per block of vocabulary rows (:meth:`LayeredModel.head_blocks`): first the log-sum-exp of every
   position's logits; then, block by block again, ∂ℓ/∂logits = w_t·(softmax − one-hot) (w_t = 1/responses at
   response positions, else 0), back through the block's logits into the last hidden states, the final norm
   and the head's rows. The head's gradient for those rows is complete per row and block, so ``per_row`` of it
   is added to the file block by block.
3. **Backward.** From the last layer down: read the layer again, recompute its forward from its parked input
   with autograd, backpropagate the gradient arriving from above, hand each parameter's gradient to
   ``per_row`` as soon as it is accumulated (a post-accumulate hook, then freed), park the gradient of its input
   for the layer below.
4. **Embedding.** Backpropagate the first layer's input gradient through the model's own embedding forward
   (scaling included) into the compact table of used rows.
5. **Tied head** (only when the embedding is also the head and its statistics are wanted): the tied tensor's
   per-row gradient is the head's plus the lookup's, and ``per_row`` is not linear (Fisher squares it), so the
   head pass is run again with each row's lookup gradient added to its head gradient before ``per_row``.

Rows are processed in groups whose parked activations fit :attr:`StatsOptions.spill_bytes` on disk (each group
reads the weights twice); within a group the head works on batches of rows of at most
:attr:`StatsOptions.head_tokens` tokens (each reading the head two or three times).
Memory: one layer in float32 + its accumulators + one parameter's gradient + one row's activations through one
layer + one head block (:attr:`StatsOptions.head_chunk_bytes`) with its gradient and accumulator.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn
from tqdm.auto import tqdm

from mergebench.prompt import IGNORE_INDEX
from mergebench.stats.cache import StatisticsFile
from mergebench.stats.data import Batch, Sample, collate, require_responses
from mergebench.stats.layered import LayeredModel, Weights
from mergebench.stats.spill import Spill

logger = logging.getLogger(__name__)

PerRow = Callable[[Tensor, Tensor], None]
"""``per_row(total, g)`` adds what one row's gradient ``g`` of a tensor contributes to its statistics ``total``
(in place, no temporary of the tensor's size: ``total += g²/R``, ``total += g/R``)."""


@dataclass(frozen=True)
class _Row:
    """One validation row ready to run: its batch of one, and the weight of each position's loss."""

    index: int
    batch: Batch
    targets: Tensor
    """``[T−1]`` next-token ids (``-100`` where no loss)."""
    weights: Tensor
    """``[T−1]`` 1/responses at response positions, else 0: ℓ = Σ_t w_t·NLL_t."""

    @property
    def tokens(self) -> int:
        return self.batch.input_ids.shape[1]


class _Pass:
    """The state of :func:`accumulate` for one stage: model, weights, output, and the group's parked tensors."""

    def __init__(self, lm: LayeredModel, weights: Weights, out: StatisticsFile, per_row: PerRow) -> None:
        self.lm = lm
        self.weights = weights
        self.out = out
        self.per_row = per_row
        self.wanted = set(out.names)
        self.device = lm.device

    # ---- 1. forward ---------------------------------------------------------------------------------------------
    def forward(self, rows: Sequence[_Row], acts: Spill) -> None:
        n_layers = len(self.lm.layers)
        with torch.no_grad():
            for row in rows:
                acts.put((0, row.index), self.lm.embed(row.batch).hidden)
            bar = self._bar(n_layers, "forward")
            layers = self.weights.layers(range(n_layers))
            for i in range(n_layers):
                self.lm.load_layer(i, next(layers))
                for row in rows:
                    hidden = acts.get((i, row.index)).to(self.device)
                    acts.put((i + 1, row.index), self.lm.run_layer(i, hidden, self.lm.embed(row.batch).calls[i]))
                self.lm.free_layer(i)
                bar.update()
            bar.close()

    # ---- 2. head ------------------------------------------------------------------------------------------------
    def head(self, rows: Sequence[_Row], acts: Spill, down: Spill) -> dict[int, Tensor]:
        """Park ∂ℓ/∂(last hidden states) of each row in ``down``; add the tail's (and an untied head's) statistics.
        Returns each row's log-sum-exp per position (for the tied head pass)."""
        n_layers = len(self.lm.layers)
        tail = {n: p for n, p in self.lm.tail_parameters().items() if n in self.wanted}
        for p in tail.values():
            p.requires_grad_(True)
        head_wanted = not self.lm.tied and self.lm.head_name in self.wanted
        lse_of: dict[int, Tensor] = {}
        for batch_rows in self._head_batches(rows):
            leaves = {r.index: acts.get((n_layers, r.index)).to(self.device).requires_grad_(True) for r in batch_rows}
            lse = self._log_sum_exp(batch_rows, leaves)
            lse_of.update(lse)
            hidden_grads = {r.index: torch.zeros_like(leaves[r.index]) for r in batch_rows}
            tail_grads = {r.index: {n: torch.zeros_like(p) for n, p in tail.items()} for r in batch_rows}
            for begin, _, weight, bias in self.lm.head_blocks(self.weights.rows):
                block = [p for p in (weight, bias) if p is not None] if head_wanted else []
                for p in block:
                    p.requires_grad_(True)
                sums = [torch.zeros_like(p) for p in block]
                for row in batch_rows:
                    logits = self._logits(row, leaves[row.index], weight, bias)
                    grad = _logit_grad(logits.detach(), lse[row.index], row, begin)
                    inputs = [leaves[row.index], *tail.values(), *block]
                    grads = torch.autograd.grad(logits, inputs, grad_outputs=grad)
                    hidden_grads[row.index].add_(grads[0])
                    for n, g in zip(tail, grads[1:1 + len(tail)], strict=True):
                        tail_grads[row.index][n].add_(g)
                    for total, g in zip(sums, grads[1 + len(tail):], strict=True):
                        self.per_row(total, g)
                if block:
                    self.out.add(self.lm.head_name, sums[0], begin)
                    if bias is not None and self.lm.head_bias_name:
                        self.out.add(self.lm.head_bias_name, sums[1], begin)
                del weight, bias, block, sums  # before the next block is read
            for row in batch_rows:
                down.put(row.index, hidden_grads.pop(row.index))
                for n, g in tail_grads.pop(row.index).items():
                    total = torch.zeros_like(g)
                    self.per_row(total, g)
                    self.out.add(n, total)
        for p in tail.values():
            p.requires_grad_(False)
        return lse_of

    def _log_sum_exp(self, rows: Sequence[_Row], leaves: dict[int, Tensor]) -> dict[int, Tensor]:
        lse = {r.index: torch.full((r.tokens - 1,), -torch.inf, device=self.device) for r in rows}
        with torch.no_grad():
            for _, _, weight, bias in self.lm.head_blocks(self.weights.rows):
                for row in rows:
                    logits = self._logits(row, leaves[row.index], weight, bias)
                    lse[row.index] = torch.logaddexp(lse[row.index], logits.logsumexp(-1))
                del weight, bias  # before the next block is read
        return lse

    def _logits(self, row: _Row, last_hidden: Tensor, weight: nn.Parameter, bias: nn.Parameter | None) -> Tensor:
        """``[T−1, rows]`` float32 logits of one row for the vocabulary rows of one head block."""
        with torch.enable_grad():
            return self.lm.head_logits(row.batch, last_hidden, weight, bias)[0, :-1].float()

    # ---- 3. backward --------------------------------------------------------------------------------------------
    def backward(self, rows: Sequence[_Row], acts: Spill, down: Spill, spill: Callable[[], Spill]) -> Spill:
        """Backpropagate from the last layer to the first; returns the spill of ∂ℓ/∂(first layer's input)."""
        n_layers = len(self.lm.layers)
        order = list(reversed(range(n_layers)))
        bar = self._bar(n_layers, "backward")
        layers = self.weights.layers(order)
        for i in order:
            down = self._backward_layer(i, next(layers), rows, acts, down, spill())
            bar.update()
        bar.close()
        return down

    def _backward_layer(self, i: int, tensors: dict[str, Tensor], rows: Sequence[_Row], acts: Spill, down: Spill,
                        below: Spill) -> Spill:
        """Layer ``i`` (``tensors``): its statistics into the file, ∂ℓ/∂(its input) into ``below`` (returned;
        ``down`` is closed). A method of its own so that nothing of this layer (weights, accumulators) outlives
        it: the caller reads the next layer only after this returns."""
        layer = self.lm.load_layer(i, tensors, requires_grad=True)
        sums, handles = self._hook_parameters(layer, f"{self.lm.prefix}.{i}.")
        try:
            for row in rows:
                hidden = acts.get((i, row.index)).to(self.device).requires_grad_(True)
                with torch.enable_grad():
                    out = self.lm.run_layer(i, hidden, self.lm.embed(row.batch).calls[i])
                    out.backward(down.get(row.index).to(self.device))
                assert hidden.grad is not None
                below.put(row.index, hidden.grad)
        finally:
            for handle in handles:
                handle.remove()
        for name in list(sums):
            self.out.add(name, sums.pop(name))
        self.lm.free_layer(i)
        down.close()
        return below

    def _hook_parameters(self, layer: nn.Module, prefix: str
                         ) -> tuple[dict[str, Tensor], list[torch.utils.hooks.RemovableHandle]]:
        """Accumulators of ``per_row(grad)`` for the layer's wanted parameters, fed as each gradient arrives."""
        sums: dict[str, Tensor] = {}
        handles = []
        for local, p in layer.named_parameters():
            name = prefix + local
            if name not in self.wanted:
                p.requires_grad_(False)
                continue
            sums[name] = torch.zeros_like(p)

            def consume(p: Tensor, total: Tensor = sums[name]) -> None:
                assert p.grad is not None
                self.per_row(total, p.grad)
                p.grad = None

            handles.append(p.register_post_accumulate_grad_hook(consume))
        return sums, handles

    # ---- 4. embedding -------------------------------------------------------------------------------------------
    def embedding(self, rows: Sequence[_Row], ids: Tensor, first: Spill, lookups: Spill | None) -> None:
        """The embedding's per-row gradients: added to the file (untied), or parked in ``lookups`` (tied)."""
        table = self.lm.embedding.weight
        table.requires_grad_(True)
        sums = None if lookups is not None else torch.zeros_like(table)
        for row in rows:
            with torch.enable_grad():
                hidden = self.lm.embed(row.batch).hidden
                (grad,) = torch.autograd.grad(hidden, [table], grad_outputs=first.get(row.index).to(self.device))
            used = self.lm.compact(row.batch.input_ids)
            if lookups is not None:
                lookups.put(("rows", row.index), ids[used])
                lookups.put(("grads", row.index), grad[used])
            else:
                assert sums is not None
                part = sums[used]
                self.per_row(part, grad[used])
                sums[used] = part
        table.requires_grad_(False)
        if sums is not None:
            self.out.add_rows(self.lm.embedding_name, ids, sums)

    # ---- 5. tied head -------------------------------------------------------------------------------------------
    def tied_head(self, rows: Sequence[_Row], acts: Spill, lse: dict[int, Tensor], lookups: Spill) -> None:
        n_layers = len(self.lm.layers)
        for batch_rows in self._head_batches(rows):
            last = {r.index: acts.get((n_layers, r.index)).to(self.device) for r in batch_rows}
            for begin, end, weight, bias in self.lm.head_blocks(self.weights.rows):
                weight.requires_grad_(True)
                total = torch.zeros_like(weight)
                for row in batch_rows:
                    logits = self._logits(row, last[row.index], weight, bias)
                    grad = _logit_grad(logits.detach(), lse[row.index], row, begin)
                    (head_grad,) = torch.autograd.grad(logits, [weight], grad_outputs=grad)
                    ids, lookup = lookups.get(("rows", row.index)), lookups.get(("grads", row.index))
                    inside = (ids >= begin) & (ids < end)
                    head_grad[ids[inside] - begin] += lookup[inside].to(self.device)
                    self.per_row(total, head_grad)
                self.out.add(self.lm.head_name, total, begin)
                del weight, bias, total  # before the next block is read

    # ---- helpers ------------------------------------------------------------------------------------------------
    def _head_batches(self, rows: Sequence[_Row]) -> Iterator[list[_Row]]:
        yield from _batched(rows, lambda r: r.tokens, self.lm.options.head_tokens)

    def _bar(self, total: int, what: str) -> tqdm:
        return tqdm(total=total, desc=f"gradients: {what}", unit="layer", disable=not self.lm.options.progress,
                    leave=False)


def _logit_grad(logits: Tensor, lse: Tensor, row: _Row, begin: int) -> Tensor:
    """∂ℓ/∂logits for the vocabulary rows ``[begin, begin + logits.shape[1])``: w_t·(softmax − one-hot)."""
    grad = torch.exp(logits - lse[:, None]).mul_(row.weights[:, None])
    inside = ((row.targets >= begin) & (row.targets < begin + logits.shape[1])).nonzero().flatten()
    grad[inside, row.targets[inside] - begin] -= row.weights[inside]
    return grad


def _batched(rows: Sequence[_Row], size: Callable[[_Row], int], budget: int) -> Iterator[list[_Row]]:
    """Consecutive rows in lists whose total ``size`` stays within ``budget`` (at least one row each)."""
    batch: list[_Row] = []
    used = 0
    for row in rows:
        if batch and used + size(row) > budget:
            yield batch
            batch, used = [], 0
        batch.append(row)
        used += size(row)
    if batch:
        yield batch


def _rows(samples: Sequence[Sample], pad_id: int, device: torch.device) -> list[_Row]:
    out = []
    for index, sample in enumerate(samples):
        batch = collate([sample], pad_id, device)
        targets = batch.labels[0, 1:]
        responses = targets != IGNORE_INDEX
        weights = responses.float() / responses.sum()
        out.append(_Row(index, batch, targets, weights))
    return out


def accumulate(lm: LayeredModel, weights: Weights, samples: Sequence[Sample], out: StatisticsFile, per_row: PerRow,
               *, pad_id: int, spill_dir: Callable[[], Spill]) -> None:
    """Add ``per_row(∇θ ℓ_r)`` over the rows to every tensor of ``out`` (see the module docstring).

    Args:
        lm: the model skeleton; ``weights`` the values of its tensors (the checkpoint's, or ``θ(S)``).
        samples: rows, each with ≥ 1 response token.
        out: the statistics file; its tensor names say which gradients are wanted.
        per_row: adds one row's gradient of one tensor to its statistics (:data:`PerRow`).
        pad_id: the padding token id (for the collated rows of one).
        spill_dir: makes a new empty :class:`Spill`.
    """
    require_responses(samples)
    rows = _rows(samples, pad_id, lm.device)
    ids = lm.use_vocabulary(torch.cat([r.batch.input_ids.flatten() for r in rows]))
    lm.set_table(weights.gather(lm.embedding_name, ids))
    lm.set_tail(weights.tail())
    run = _Pass(lm, weights, out, per_row)
    hidden = lm.embedding.embedding_dim
    per_token = hidden * 4 * (len(lm.layers) + 3)  # every layer's input + the last output + two gradients
    embedding_wanted = lm.embedding_name in out.names
    for group in _batched(rows, lambda r: r.tokens * per_token, lm.options.spill_bytes):
        logger.info("gradients of %d row(s) (%d tokens)", len(group), sum(r.tokens for r in group))
        with spill_dir() as acts:
            run.forward(group, acts)
            down = spill_dir()
            try:
                lse = run.head(group, acts, down)
                down = run.backward(group, acts, down, spill_dir)
                if embedding_wanted:
                    with spill_dir() as lookups:
                        run.embedding(group, ids, down, lookups if lm.tied else None)
                        if lm.tied:
                            run.tied_head(group, acts, lse, lookups)
            finally:
                down.close()
