"""Exact top-k magnitude thresholds: whole-model (streamed, two passes) and per-tensor.

Definition (``docs``/methods.md): for a fraction ``k`` of ``N`` entries, the threshold ``t`` is the
``K``-th largest ``|τ|`` with ``K = ⌈k·N⌉``; a top-k mask keeps every entry with ``|τ| ≥ t``, so all
ties at the threshold are kept and at least ``K`` entries survive (exactly ``K`` when values are
distinct). ``k = 1`` gives ``t = min |τ|``: everything is kept.

Whole model, streamed (:class:`GlobalTopK`). Non-negative IEEE-754 float32 values order exactly like their
bit patterns read as int32 (0 < denormals < normals < inf < NaN), so the ``K``-th largest value can be
found by radix selection on the bits, one expert per histogram row, without ever holding the model:

- pass 0: a histogram of the high 16 bits of ``|τᵢ|`` per expert (``n × 65536`` int64 counters); the
  bin holding the ``K``-th largest entry is the highest bin ``b`` with ``#{hi ≥ b} ≥ K``;
- pass 1: a histogram of the low 16 bits of the entries whose high bits equal ``b``; the same rule on
  the remaining rank gives the low bits. ``(b << 16) | low`` is the bit pattern of ``t``: exact.

Each pass costs one ``abs`` + shift + ``bincount`` per entry, vectorised over experts and processed in
chunks of :data:`CHUNK_ENTRIES` per expert, so temporary memory stays at ``n × CHUNK_ENTRIES × 4`` bytes
(20 MB for five experts) whatever the tensor size. Feeding order, tensor boundaries and chunking do not
change the result (counts are integers), so :meth:`GlobalTopK.update` may be called from several threads
at once. ``N`` is counted in pass 0 and checked in pass 1.

Per tensor (:func:`tensor_thresholds`): the same definition over one tensor, with ``torch.kthvalue``.

``K`` is computed from the decimal value of ``k`` (``Fraction(repr(k))``), so ``k = 0.1`` of 30 entries
keeps 3, not ``⌈3.0000000000000004⌉ = 4``.
"""

from __future__ import annotations

import math
import threading
from fractions import Fraction

import torch
from torch import Tensor

BINS = 1 << 16
CHUNK_ENTRIES = 1 << 20
"""Entries per expert processed at once (bounds temporaries; 1 M is fastest on a laptop CPU)."""


def keep_count(fraction: float, total: int) -> int:
    """``K = ⌈k·N⌉`` with ``k`` read as the decimal it was written as.

    >>> keep_count(0.1, 30), keep_count(0.2, 7), keep_count(1.0, 5), keep_count(0.5, 0)
    (3, 2, 5, 0)
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"top-k fraction must be in (0, 1], got {fraction!r}")
    return min(total, math.ceil(Fraction(repr(float(fraction))) * total))


def _select_bin(hist: Tensor, rank: Tensor) -> tuple[Tensor, Tensor]:
    """Per row of ``hist`` ``[n, BINS]``: the highest bin ``b`` with ``#{≥ b} ≥ rank`` and ``#{> b}``."""
    at_or_above = hist.flip(1).cumsum(1).flip(1)  # at_or_above[:, b] = Σ_{j ≥ b} hist[:, j], non-increasing
    b = (at_or_above >= rank[:, None]).sum(1) - 1
    above = at_or_above.gather(1, b[:, None]).squeeze(1) - hist.gather(1, b[:, None]).squeeze(1)
    return b, above


class GlobalTopK:
    """Exact per-expert ``K``-th largest ``|τᵢ|`` over every entry fed to it, in two streaming passes.

    Usage (the engine feeds the same tensors, in any order, in each pass):

    >>> acc = GlobalTopK(n_experts=2, fraction=0.5)
    >>> stacks = [torch.tensor([[1., -4.], [0., 2.]]), torch.tensor([[3.], [-5.]])]
    >>> for pass_index in range(acc.passes):
    ...     for stack in stacks:
    ...         acc.update(pass_index, stack)
    ...     acc.finish_pass(pass_index)
    >>> acc.thresholds()  # ⌈0.5·3⌉ = 2nd largest of |1, 4, 3| and of |0, 2, 5|
    tensor([3., 2.])

    Args:
        n_experts: rows of every stack passed to :meth:`update`.
        fraction: ``k`` in ``(0, 1]``.
    """

    passes = 2

    def __init__(self, n_experts: int, fraction: float) -> None:
        if n_experts < 1:
            raise ValueError(f"n_experts must be ≥ 1, got {n_experts}")
        keep_count(fraction, 1)  # validates the fraction
        self.n = n_experts
        self.fraction = float(fraction)
        self.total = 0
        self._seen = [0, 0]
        self._hist = torch.zeros(n_experts * BINS, dtype=torch.int64)
        self._offsets = (torch.arange(n_experts, dtype=torch.int32) * BINS)[:, None]
        self._finished = [False, False]
        self._rank: Tensor | None = None  # 1-based rank of the threshold inside its high bin
        self._high: Tensor | None = None  # [n] int64 high 16 bits of each threshold
        self._result: Tensor | None = None
        self._lock = threading.Lock()

    def update(self, pass_index: int, stack: Tensor) -> None:
        """Count the entries of ``stack`` (``[n, *shape]`` float32 task vectors; it is not modified)."""
        self._check_pass(pass_index)
        if stack.dtype != torch.float32:
            raise TypeError(f"GlobalTopK expects float32 stacks, got {stack.dtype}")
        if stack.shape[0] != self.n:
            raise ValueError(f"stack has {stack.shape[0]} experts, expected {self.n}")
        flat = stack.reshape(self.n, -1)
        m = flat.shape[1]
        if m == 0:
            return
        chunk = min(m, CHUNK_ENTRIES)
        buf = torch.empty(self.n * chunk, dtype=torch.float32, device=flat.device)
        offsets = self._offsets.to(flat.device)
        if pass_index == 1:
            assert self._high is not None
            # entries of bin b: bits ∈ [b<<16, (b+1)<<16); their low bits shifted into row i's histogram
            low_start = (self._high.to(torch.int32) << 16).to(flat.device)[:, None]
            shift = offsets - low_start
        for start in range(0, m, chunk):
            part = flat[:, start:start + chunk]
            out = buf[: part.numel()].view(self.n, part.shape[1])
            torch.abs(part, out=out)
            bits = out.view(torch.int32)
            if pass_index == 0:
                bits.bitwise_right_shift_(16).add_(offsets)
                counts = torch.bincount(bits.reshape(-1), minlength=self.n * BINS)
            else:
                in_bin = (bits >= low_start) & (bits <= low_start + (BINS - 1))  # no int32 overflow
                counts = torch.bincount(bits.add_(shift)[in_bin], minlength=self.n * BINS)
            counts = counts.cpu()
            with self._lock:  # the engine feeds chunks from several threads
                self._hist += counts
        with self._lock:
            self._seen[pass_index] += m

    def finish_pass(self, pass_index: int) -> None:
        """Close a pass: after pass 0 locate each expert's high bin, after pass 1 its exact threshold."""
        self._check_pass(pass_index)
        hist = self._hist.view(self.n, BINS)
        if pass_index == 0:
            self.total = self._seen[0]
            k = keep_count(self.fraction, self.total)
            rank = torch.full((self.n,), k, dtype=torch.int64)
            if k > 0:
                self._high, above = _select_bin(hist, rank)
                self._rank = rank - above
            else:
                self._high = torch.zeros(self.n, dtype=torch.int64)
            self._hist = torch.zeros_like(self._hist)
        else:
            if self._seen[1] != self.total:
                raise RuntimeError(f"GlobalTopK: pass 1 saw {self._seen[1]} entries per expert but pass 0 saw "
                                   f"{self.total}; both passes must stream the same tensors.")
            if self.total == 0:
                self._result = torch.full((self.n,), math.inf)
            else:
                assert self._rank is not None and self._high is not None
                low, _ = _select_bin(hist, self._rank)
                bits = ((self._high << 16) | low).to(torch.int32)
                self._result = bits.view(torch.float32).clone()
            self._hist = torch.empty(0, dtype=torch.int64)
        self._finished[pass_index] = True

    def thresholds(self) -> Tensor:
        """``[n]`` float32: expert i keeps ``|τᵢ| ≥ thresholds[i]`` (``inf`` when nothing was fed)."""
        if self._result is None:
            raise RuntimeError("GlobalTopK.thresholds() called before both passes were finished.")
        return self._result

    def _check_pass(self, pass_index: int) -> None:
        if pass_index not in (0, 1):
            raise ValueError(f"pass_index must be 0 or 1, got {pass_index}")
        if self._finished[pass_index] or (pass_index == 1 and not self._finished[0]):
            raise RuntimeError(f"GlobalTopK: pass {pass_index} is out of order (passes must run 0 then 1, once).")


def global_thresholds(stacks: list[Tensor], fraction: float) -> Tensor:
    """:class:`GlobalTopK` over in-memory stacks (tests, statistics stages): ``[n]`` thresholds."""
    acc = GlobalTopK(stacks[0].shape[0], fraction)
    for pass_index in range(acc.passes):
        for stack in stacks:
            acc.update(pass_index, stack)
        acc.finish_pass(pass_index)
    return acc.thresholds()


def tensor_thresholds(stack: Tensor, fraction: float) -> Tensor:
    """Per-tensor variant (``topk_scope: tensor``): each expert's ``⌈k·numel⌉``-th largest ``|τᵢ|`` in this tensor.

    Returns ``[n]`` float32 thresholds (``inf`` for an empty tensor).
    """
    n = stack.shape[0]
    m = stack[0].numel() if n else 0
    k = keep_count(fraction, m)
    if k == 0:
        return torch.full((n,), math.inf, dtype=torch.float32, device=stack.device)
    # one expert at a time: the |τ| copy kthvalue needs stays tensor-sized
    return torch.stack([row.abs().reshape(-1).kthvalue(m - k + 1).values for row in stack])

