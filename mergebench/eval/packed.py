"""Log-likelihoods of many (context, continuation) token sequences in few forward passes, each shared prefix once.

Why: a multiple-choice item asks for the log-probability of every choice after the same context, and
lighteval computes each (context + choice) as a sequence of its own, padded to the longest of its batch. For
MergeBench-Tiny's items the context is most of every sequence (and answers such as ``23 + 45 = 68.`` /
``23 + 45 = 69.`` share most of their tokens too), so about two thirds of the work was recomputing the same
prefixes. Here every distinct prefix is computed once, which is what makes enough items per domain affordable
on two CPU cores.

How: the sequences are sorted and merged into a prefix tree (one node per distinct prefix, i.e. per token in
context). The nodes are laid out in rows of about ``row_tokens`` tokens, depth-first; a node attends only to its
ancestors and itself (a 4-D additive attention mask) at position = its depth, so its hidden state is exactly the
one the sequence through it would produce — the same numbers as scoring each sequence alone, up to
floating-point summation order. The log-probability of a token is read from the logits of its parent node, and
logits are computed only at the parents of continuation tokens (``logits_to_keep``), not at every position.

Works with any ``transformers`` causal LM whose attention takes a 4-D mask and explicit ``position_ids``
(Llama, Gemma 2, Qwen 2, Mistral, …): :func:`score` checks the model's ``forward`` signature and raises
``TypeError`` otherwise, so the caller can fall back to the per-sequence path.
"""

from __future__ import annotations

import inspect
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from tqdm.auto import tqdm

ROW_TOKENS = 256
"""Tree nodes per row: small enough that a row's dense masked attention (quadratic in its length) stays a few
per cent of the work, large enough that neighbouring items share their common prefixes."""
ROWS_PER_PASS = 4
"""Rows per forward pass: ~1,000 tokens keep the matrix products efficient on CPU."""


@dataclass(frozen=True)
class Scored:
    """One continuation's log-likelihood given its context."""

    logprob: float
    """Sum of the log-probabilities of the continuation tokens."""
    greedy: bool
    """Every continuation token is the argmax of its position's logits (lighteval's ``argmax_logits_eq_gold``)."""


@dataclass
class _Row:
    """A row of a forward pass: tree nodes in depth-first order, each with its token, depth and ancestors."""

    tokens: list[int] = field(default_factory=list)
    depths: list[int] = field(default_factory=list)
    ancestors: list[list[int]] = field(default_factory=list)
    """Node indices a node attends to (its ancestors and itself)."""
    targets: list[tuple[int, int, int]] = field(default_factory=list)
    """(request, parent node, token): the continuation tokens whose log-probability this row yields."""
    path: list[int] = field(default_factory=list)
    """Node indices along the last inserted sequence (``path[j]`` holds its prefix of length ``j + 1``)."""
    last: Sequence[int] = ()

    def cost(self, sequence: Sequence[int]) -> int:
        """How many nodes adding ``sequence`` would create (its length minus the prefix shared with the last)."""
        return len(sequence) - _common_prefix(self.last, sequence)

    def add(self, request: int, sequence: Sequence[int], continuation_start: int) -> None:
        shared = _common_prefix(self.last, sequence)
        del self.path[shared:]
        for depth in range(shared, len(sequence)):
            node = len(self.tokens)
            self.tokens.append(sequence[depth])
            self.depths.append(depth)
            self.path.append(node)
            self.ancestors.append(list(self.path))
        for position in range(max(continuation_start, 1), len(sequence)):
            self.targets.append((request, self.path[position - 1], sequence[position]))
        self.last = sequence


def _common_prefix(a: Sequence[int], b: Sequence[int]) -> int:
    n = 0
    for x, y in zip(a, b, strict=False):
        if x != y:
            break
        n += 1
    return n


def pack(requests: Sequence[tuple[Sequence[int], Sequence[int]]], *, row_tokens: int = ROW_TOKENS) -> list[_Row]:
    """Rows of prefix-tree nodes covering ``requests`` (context tokens, continuation tokens).

    Requests are visited in sorted token order, so that sequences sharing a prefix are neighbours; a row is
    closed when the next sequence's new nodes would not fit (a sequence longer than ``row_tokens`` gets a row
    of its own). A continuation token at sequence position 0 (an empty context) has no parent to be predicted
    from and is skipped, as lighteval does.
    """
    sequences = [[*context, *continuation] for context, continuation in requests]
    order = sorted(range(len(requests)), key=lambda i: sequences[i])
    rows: list[_Row] = []
    row = _Row()
    for i in order:
        if row.tokens and len(row.tokens) + row.cost(sequences[i]) > row_tokens:
            rows.append(row)
            row = _Row()
        row.add(i, sequences[i], len(requests[i][0]))
    if row.tokens:
        rows.append(row)
    return rows


def _inputs(rows: Sequence[_Row], dtype: torch.dtype) -> dict[str, torch.Tensor]:
    """Token ids, positions and the additive ``[rows, 1, n, n]`` attention mask of rows padded to the longest.

    A node may attend to its ancestors and itself (0), nothing else (the dtype's minimum); a padding node only
    to itself, so that no row of the softmax is empty.
    """
    n = max(len(row.tokens) for row in rows)
    tokens = torch.zeros(len(rows), n, dtype=torch.long)
    positions = torch.zeros(len(rows), n, dtype=torch.long)
    allowed = torch.eye(n, dtype=torch.bool).repeat(len(rows), 1, 1)
    for i, row in enumerate(rows):
        tokens[i, :len(row.tokens)] = torch.tensor(row.tokens)
        positions[i, :len(row.depths)] = torch.tensor(row.depths)
        for node, ancestors in enumerate(row.ancestors):
            allowed[i, node, ancestors] = True
    mask = torch.zeros(allowed.shape, dtype=dtype).masked_fill_(~allowed, torch.finfo(dtype).min)
    return {"input_ids": tokens, "position_ids": positions, "attention_mask": mask[:, None]}


NEEDS = ("attention_mask", "position_ids", "logits_to_keep")
"""What :func:`score` passes to the model's ``forward`` besides the token ids."""


def supports(model: Any) -> bool:
    """Whether ``model.forward`` takes every argument of :data:`NEEDS` (a 4-D mask is then used as given)."""
    try:
        parameters = inspect.signature(model.forward).parameters
    except (TypeError, ValueError):
        return False
    return all(name in parameters for name in NEEDS)


@torch.inference_mode()
def score(model: Any, requests: Sequence[tuple[Sequence[int], Sequence[int]]], *, row_tokens: int = ROW_TOKENS,
          rows_per_pass: int = ROWS_PER_PASS, progress: bool = False) -> list[Scored]:
    """Log-likelihood of each request's continuation after its context, with shared prefixes computed once.

    Args:
        model: a ``transformers`` causal LM (``PreTrainedModel``), in eval mode.
        requests: (context token ids, continuation token ids) pairs.
        row_tokens: tree nodes per row (the attention of a row is dense: its cost grows with the square).
        rows_per_pass: rows per forward pass (the matrix products see ``rows_per_pass × row_tokens`` tokens).
        progress: show a bar over the forward passes (on stderr).

    Returns:
        One :class:`Scored` per request, in order.

    Raises:
        TypeError: the model's ``forward`` takes no ``attention_mask``, ``position_ids`` or ``logits_to_keep``.

    >>> score(model, [([1, 2, 3], [4, 5]), ([1, 2, 3], [4, 6])])  # doctest: +SKIP
    [Scored(logprob=-3.2, greedy=False), Scored(logprob=-1.1, greedy=True)]
    """
    if not supports(model):
        raise TypeError(f"{type(model).__name__}.forward does not take all of {', '.join(NEEDS)}.")
    device = next(model.parameters()).device
    dtype = next(model.parameters()).dtype
    logprobs = [0.0] * len(requests)
    greedy = [True] * len(requests)
    rows = [row for row in pack(requests, row_tokens=row_tokens) if row.targets]
    passes = [rows[i:i + rows_per_pass] for i in range(0, len(rows), rows_per_pass)]
    for batch in tqdm(passes, desc="log-likelihoods", unit="pass", disable=not progress, file=sys.stderr):
        keep = sorted({parent for row in batch for _, parent, _ in row.targets})  # logits only where read
        inputs = {k: v.to(device) for k, v in _inputs(batch, dtype).items()}
        logits = model(**inputs, use_cache=False, logits_to_keep=torch.tensor(keep, device=device)).logits
        logits = torch.log_softmax(logits.float(), dim=-1)
        best = logits.argmax(dim=-1).tolist()
        slot = {node: i for i, node in enumerate(keep)}
        for b, row in enumerate(batch):
            for request, parent, token in row.targets:
                logprobs[request] += float(logits[b, slot[parent], token])
                greedy[request] = greedy[request] and best[b][slot[parent]] == token
    return [Scored(lp, g) for lp, g in zip(logprobs, greedy, strict=True)]
