"""Exact top-k magnitude thresholds: whole-model (streamed) and per-tensor.

Definition (``docs``/methods.md): for a fraction ``k`` of ``N`` entries, the threshold ``t`` is the
``K``-th largest ``|τ|`` with ``K = ⌈k·N⌉``; a top-k mask keeps every entry with ``|τ| ≥ t``, so all
ties at the threshold are kept and at least ``K`` entries survive (exactly ``K`` when values are
distinct). ``k = 1`` gives ``t = min |τ|``: everything is kept.

Non-negative IEEE-754 float32 values order exactly like their bit patterns read as int32 (0 < denormals
< normals < inf < NaN), so the ``K``-th largest value is found by counting bit patterns, one expert per
histogram row, without ever holding the model (:class:`GlobalTopK`):

- **bucket pass**: every ``|τ|`` falls in one of ``2 × 65536`` ordered buckets per expert. With ``h`` the
  high 16 bits of its pattern, bucket ``2h`` holds exactly the value whose low 16 bits are 0, and bucket
  ``2h + 1`` the values strictly between ``h·2¹⁶`` and ``(h + 1)·2¹⁶``. The ``K``-th largest lies in the
  highest bucket ``c`` with ``#{≥ c} ≥ K``. An even ``c`` is a single value: the threshold is exact after
  this one pass. This is the common case for bf16 and fp16 checkpoints: the difference of two 8-bit
  significands with the same exponent has at most 8 significant bits, so its low 16 bits are 0.
- an odd ``c`` is **open**: every value in it is undecided, all others are decided (below ``c``:
  dropped, above: kept). Either a second counting pass histograms the low 16 bits of the entries in
  ``c`` (:meth:`GlobalTopK.update` with ``pass_index=1``), or the engine keeps those few entries aside
  while it merges everything else and resolves them afterwards from the values it kept
  (:meth:`Selection.resolve`), which saves a whole pass over the inputs.
- **before any count**, a sample of the task vectors bounds each threshold to a run of buckets
  (:class:`Interval`), so that the merge itself can be the bucket pass: entries above the run are kept, entries
  below it dropped, entries inside it set aside until the counts (added up with :func:`select_buckets`) give
  the exact bucket. If that bucket lies outside the run, the merge made with it is thrown away.

Counting is one compiled function per chunk (:func:`mergebench.methods.kernels.count_buckets`: a mask, three
integer operations and an increment per entry) into an int64 histogram owned by the calling thread (no lock, no
overflow), so feeding order, tensor boundaries, chunking and threads do not change the result. ``N`` is
counted in the bucket pass and checked afterwards.

Per tensor (:func:`tensor_thresholds`): the same definition over one tensor, with ``torch.kthvalue``.

``K`` is computed from the decimal value of ``k`` (``Fraction(repr(k))``), so ``k = 0.1`` of 30 entries
keeps 3, not ``⌈3.0000000000000004⌉ = 4``.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence
from dataclasses import dataclass
from fractions import Fraction
from typing import Any

import torch
from torch import Tensor

from mergebench.methods.kernels import count_buckets, in_ranges

BINS = 1 << 16
"""Values of the high (and of the low) 16 bits of a float32 bit pattern."""
BUCKETS = 2 * BINS
"""Ordered buckets per expert in the bucket pass (see the module docstring)."""


def keep_count(fraction: float, total: int) -> int:
    """``K = ⌈k·N⌉`` with ``k`` read as the decimal it was written as.

    >>> keep_count(0.1, 30), keep_count(0.2, 7), keep_count(1.0, 5), keep_count(0.5, 0)
    (3, 2, 5, 0)
    """
    if not 0.0 < fraction <= 1.0:
        raise ValueError(f"top-k fraction must be in (0, 1], got {fraction!r}")
    return min(total, math.ceil(Fraction(repr(float(fraction))) * total))


def magnitude_bits(stack: Tensor, out: Tensor | None = None) -> Tensor:
    """``|stack|`` (float32) as its int32 bit patterns, which order like the magnitudes."""
    return torch.abs(stack, out=out).view(torch.int32)


def bucket_of(bits: Tensor, out: Tensor, scratch: Tensor, offset: Tensor | int = 0) -> Tensor:
    """``offset`` + the bucket of each non-negative bit pattern, into ``out``: ``2h`` when the low 16 bits are 0,
    else ``2h + 1``.

    ``h + ⌈bits / 2¹⁶⌉`` with ``⌈x / 2¹⁶⌉ = ((x − 1) >> 16) + 1`` (arithmetic shift, so 0 stays 0 and
    nothing overflows, NaN patterns included). ``scratch`` has ``bits``' shape; ``offset`` broadcasts to it.
    """
    torch.bitwise_right_shift(bits, 16, out=out)
    torch.sub(bits, 1, out=scratch).bitwise_right_shift_(16)
    return out.add_(scratch).add_(offset + 1)


def _select_flat(hist: Tensor, rank: Tensor) -> tuple[Tensor, Tensor]:
    """Per row of ``hist`` ``[n, B]``: the highest bin ``b`` with ``#{≥ b} ≥ rank`` and ``#{> b}``."""
    at_or_above = hist.sum(1, keepdim=True) - hist.cumsum(1) + hist  # Σ_{j ≥ b} hist[:, j], non-increasing
    b = (at_or_above >= rank[:, None]).sum(1) - 1
    above = at_or_above.gather(1, b[:, None]).squeeze(1) - hist.gather(1, b[:, None]).squeeze(1)
    return b, above


def _select(hist: Tensor, rank: Tensor, group: int = 512) -> tuple[Tensor, Tensor]:
    """:func:`_select_flat` in two levels (groups of ``group`` bins, then the bins of the chosen group), so that
    a merge of many small tensors does not pay a cumulative sum over every bucket of every tensor."""
    n, bins = hist.shape
    grouped = hist.view(n, bins // group, group)
    g, above = _select_flat(grouped.sum(2), rank)
    b, inside = _select_flat(grouped[torch.arange(n), g], rank - above)
    return g * group + b, above + inside


def _as_float(bits: Tensor) -> Tensor:
    return bits.to(torch.int32).view(torch.float32).clone()


@dataclass(frozen=True)
class Selection:
    """Where each expert's ``K``-th largest ``|τ|`` lies after the bucket pass.

    ``bucket[i]`` holds it at ``rank[i]`` (1-based, from the top) among ``count[i]`` entries. Even buckets are
    single values (:attr:`exact`); odd ones are open until :meth:`resolve` sees their entries.
    """

    bucket: tuple[int, ...]
    rank: tuple[int, ...]
    count: tuple[int, ...]
    total: int
    """Entries per expert that were counted (``N``)."""

    @property
    def exact(self) -> tuple[bool, ...]:
        """Per expert: whether the threshold is known (an even bucket, or nothing was counted)."""
        return tuple(self.total == 0 or b % 2 == 0 for b in self.bucket)

    @property
    def is_exact(self) -> bool:
        return all(self.exact)

    @property
    def open_rows(self) -> tuple[int, ...]:
        """Experts whose threshold is still open."""
        return tuple(i for i, e in enumerate(self.exact) if not e)

    @property
    def pending(self) -> int:
        """Entries in the open buckets, over all experts (an upper bound of the positions to set aside)."""
        return sum(c for c, e in zip(self.count, self.exact, strict=True) if not e)

    def thresholds(self) -> Tensor:
        """``[n]`` float32 exact thresholds; only when :attr:`is_exact`."""
        if not self.is_exact:
            raise RuntimeError(f"Top-k thresholds of experts {self.open_rows} are still open.")
        if self.total == 0:
            return torch.full((len(self.bucket),), math.inf)
        return _as_float(torch.tensor(self.bucket, dtype=torch.int64) // 2 << 16)

    def provisional(self) -> Tensor:
        """``[n]`` float32 thresholds that decide every entry outside the open buckets as the exact ones will:
        the exact value, or for an open bucket ``2h + 1`` the smallest pattern above ``h·2¹⁶`` (its pure
        value ``h·2¹⁶`` is dropped, its own entries are kept here and decided later)."""
        if self.total == 0:
            return torch.full((len(self.bucket),), math.inf)
        b = torch.tensor(self.bucket, dtype=torch.int64)
        return _as_float(((b // 2) << 16) + b % 2)

    def undecided(self, stack: Tensor) -> Tensor:
        """``[m]`` bool: positions of a float32 ``[n, m]`` task-vector stack where an open expert's ``|τ|``
        lies in its open bucket ``2h + 1`` (a bit pattern strictly between ``h·2¹⁶`` and ``(h+1)·2¹⁶``): the
        entries :meth:`provisional` cannot decide and :meth:`resolve` needs."""
        rows = self.open_rows
        starts = [(self.bucket[i] // 2) << 16 for i in rows]
        return in_ranges(stack, rows, [start + 1 for start in starts], [start + BINS for start in starts])

    def resolve(self, magnitudes: Sequence[Tensor]) -> Tensor:
        """Exact ``[n]`` thresholds from ``magnitudes[i]``: every ``|τᵢ|`` of expert ``i`` that lies in its open
        bucket (anything else in it is ignored; ignored for exact experts).

        Raises:
            RuntimeError: the number of such entries differs from the bucket pass's (the inputs changed).
        """
        result = self.provisional()  # exact experts: their value; open ones are replaced below
        for i in self.open_rows:
            values = magnitudes[i].reshape(-1).float().abs()
            keys = bucket_of(magnitude_bits(values), torch.empty(values.shape, dtype=torch.int32),
                             torch.empty(values.shape, dtype=torch.int32))
            inside = values[keys == self.bucket[i]]
            if inside.numel() != self.count[i]:
                raise RuntimeError(f"Top-k: expert {i} has {inside.numel()} entries in its open bucket where the "
                                   f"bucket pass counted {self.count[i]}; both passes must read the same tensors.")
            result[i] = inside.kthvalue(inside.numel() - self.rank[i] + 1).values
        return result

    def to_json(self) -> dict[str, Any]:
        return {"bucket": list(self.bucket), "rank": list(self.rank), "count": list(self.count), "total": self.total}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Selection:
        return cls(tuple(doc["bucket"]), tuple(doc["rank"]), tuple(doc["count"]), int(doc["total"]))


def select_buckets(hist: Tensor, fraction: float, total: int) -> Selection:
    """Where each expert's ``K``-th largest ``|τᵢ|`` lies, from the bucket counts ``hist`` ``[n, BUCKETS]`` of
    ``total`` entries per expert (pass 0 of :class:`GlobalTopK`, or counts added up over parts of the inputs)."""
    n = hist.shape[0]
    k = keep_count(fraction, total)
    if k == 0:
        zeros = (0,) * n
        return Selection(zeros, zeros, zeros, 0)
    rank = torch.full((n,), k, dtype=torch.int64)
    bucket, above = _select(hist, rank)
    count = hist.gather(1, bucket[:, None]).squeeze(1)
    return Selection(tuple(bucket.tolist()), tuple((rank - above).tolist()), tuple(count.tolist()), total)


INTERVAL_Z = 4.0
"""Standard errors of the sample's estimate on each side of it that an :class:`Interval` spans."""
_INFINITY_BITS = 0x7F800000


@dataclass(frozen=True)
class Interval:
    """Per expert, a run of buckets ``[first[i], last[i]]`` expected to hold its ``K``-th largest ``|τᵢ|``,
    estimated from a sample of the task vectors before anything is counted.

    With it, one pass over the inputs can merge and count at once: :meth:`provisional` thresholds keep every
    ``|τᵢ|`` above the run and drop every one below it, as any threshold inside the run would, and the positions
    where some ``|τᵢ|`` lies inside its run (:meth:`undecided`) are set aside. If the exact bucket found by the
    count lies inside the run (:meth:`covers`), those positions are all that is still undecided — its open
    bucket's entries among them —, else the pass was in vain.

    An even ``last`` is one value ``v``, the largest any threshold in the run can be, so ``|τᵢ| = v`` is kept
    whichever it is: :meth:`provisional` keeps it and it is not set aside. This matters for bf16 checkpoints,
    whose task vectors pile up on a few values (a difference of one unit in the last place is a power of two):
    when a threshold lands on such a value, the sample pins the run to that one bucket and nothing is set aside,
    where a run ending in the odd bucket above it set aside every entry equal to it (7.5 % of the positions for
    Localize-and-Stitch's top 10 % of five 0.4B bf16 experts).
    """

    first: tuple[int, ...]
    last: tuple[int, ...]

    @classmethod
    def estimate(cls, sample: Sequence[Tensor], fraction: float, strata: Sequence[int],
                 represents: Sequence[float], *, z: float = INTERVAL_Z) -> Interval | None:
        """The run around each expert's estimated threshold bucket, ``z`` standard errors of the kept fraction
        wide on each side; ``None`` for an empty sample.

        ``sample[j]`` is a float32 task-vector slice ``[n, m_j]``, ``m_j ≥ 1``, from stratum ``strata[j]`` (a
        tensor), standing for ``represents[j]`` entries of the model. The estimate is the bucket where the
        sample's weighted count from the top reaches ``k``; the kept fraction's standard error is the stratified
        one, ``√(Σ_h W_h² s_h² / r_h)`` with ``W_h`` a stratum's share of the model and ``s_h²`` the variance of
        the kept fraction between its ``r_h`` slices (a stratum of one slice counts ``p(1 − p)``, the most it could
        be), and at least the binomial ``√(k(1−k)/M)`` of the ``M`` entries sampled."""
        if not sample:
            return None
        sizes = torch.tensor([s.shape[1] for s in sample], dtype=torch.int64)
        shares = torch.tensor(represents, dtype=torch.float64)
        shares /= shares.sum()
        entry_share = torch.repeat_interleave(shares / sizes, sizes)
        slice_of = torch.repeat_interleave(torch.arange(len(sample)), sizes)
        flat = torch.cat(list(sample), dim=1)
        keys = bucket_of(magnitude_bits(flat), torch.empty(flat.shape, dtype=torch.int32),
                         torch.empty(flat.shape, dtype=torch.int32)).long()
        binomial = math.sqrt(fraction * (1 - fraction) / flat.shape[1])
        firsts, lasts = [], []
        for row in keys:
            at_or_above = torch.bincount(row, weights=entry_share, minlength=BUCKETS).flip(0).cumsum(0).flip(0)

            def bucket(share: float, at_or_above: Tensor = at_or_above) -> int:
                """The highest bucket with at least ``share`` of the model at or above it (``share`` clamped to
                ``[0, 1]``, and a hair below, so that a sum of float weights that should be 1 is)."""
                return int((at_or_above >= min(max(share, 0.0), 1.0) * (1 - 1e-9)).sum()) - 1

            estimate = bucket(fraction)
            kept = torch.bincount(slice_of, weights=(row >= estimate).double(), minlength=len(sample)) / sizes
            error = max(_stratified_error(kept, strata, shares), binomial)
            firsts.append(bucket(fraction + z * error))
            lasts.append(bucket(fraction - z * error))
        return cls(tuple(firsts), tuple(lasts))

    def _patterns(self) -> tuple[list[int], list[int]]:
        """Per expert, the bit patterns ``[low, high)`` left undecided: the run, less an even ``last``'s value.

        Bucket ``2h`` is the pattern ``h·2¹⁶`` alone and bucket ``2h + 1`` the patterns strictly between ``h·2¹⁶``
        and ``(h + 1)·2¹⁶``, so the run starts at ``h·2¹⁶`` (+ 1 for an odd ``first``) and ends before ``h·2¹⁶``
        for an even ``last`` (its value is kept), before ``(h + 1)·2¹⁶`` for an odd one; ``inf`` at most."""
        lows = [((b // 2) << 16) + b % 2 for b in self.first]
        return lows, [min(((b // 2) + b % 2) << 16, _INFINITY_BITS) for b in self.last]

    def provisional(self) -> Tensor:
        """``[n]`` float32: keep ``|τᵢ|`` above the run, and an even last bucket's value (``inf`` at most)."""
        return _as_float(torch.tensor(self._patterns()[1], dtype=torch.int64))

    def undecided(self, stack: Tensor) -> Tensor:
        """``[m]`` bool: positions of a float32 ``[n, m]`` task-vector stack where some ``|τᵢ|`` lies in its run
        (:meth:`_patterns`; experts whose run is one even bucket leave nothing undecided)."""
        lows, highs = self._patterns()
        return in_ranges(stack, range(len(lows)), lows, highs)

    def covers(self, selection: Selection) -> bool:
        """Whether each expert's exact bucket lies in its run, so the positions set aside decide every threshold."""
        return selection.total == 0 or all(first <= b <= last for first, b, last in
                                           zip(self.first, selection.bucket, self.last, strict=True))

    def to_json(self) -> dict[str, Any]:
        return {"first": list(self.first), "last": list(self.last)}

    @classmethod
    def from_json(cls, doc: dict[str, Any]) -> Interval:
        return cls(tuple(doc["first"]), tuple(doc["last"]))


def _stratified_error(kept: Tensor, strata: Sequence[int], shares: Tensor) -> float:
    """Standard error of a stratified estimate of a fraction from slices' fractions ``kept`` and their shares of
    the model (see :meth:`Interval.estimate`)."""
    variance = 0.0
    by_stratum: dict[int, list[int]] = {}
    for j, h in enumerate(strata):
        by_stratum.setdefault(h, []).append(j)
    for members in by_stratum.values():
        p, share = kept[members], float(shares[members].sum())
        if len(members) == 1:
            variance += share**2 * float(p[0] * (1 - p[0]))
        else:
            variance += share**2 * float(p.var()) / len(members)
    return math.sqrt(variance)


class _Partial:
    """One thread's int64 histogram of the bucket pass (no lock while counting; added to the total at the end)."""

    def __init__(self, n_experts: int) -> None:
        self.hist = torch.zeros(n_experts * BUCKETS, dtype=torch.int64)


class GlobalTopK:
    """Exact per-expert ``K``-th largest ``|τᵢ|`` over every entry fed to it.

    Pass 0 counts buckets; after it, :meth:`selection` tells whether every threshold is exact already. If not,
    either feed the same tensors again as pass 1 (low-bit histograms of the open buckets' entries), or resolve
    the open buckets from their entries (:meth:`Selection.resolve`). Both passes may be fed from several
    threads at once, in any order.

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
        self._hist: Tensor | None = None  # int64 sum of the threads' histograms
        self._finished = [False, False]
        self._selection: Selection | None = None
        self._low_hist = torch.zeros(0, dtype=torch.int64)
        self._result: Tensor | None = None
        self._lock = threading.Lock()
        self._local = threading.local()
        self._partials: list[_Partial] = []

    def update(self, pass_index: int, stack: Tensor) -> None:
        """Count the entries of ``stack`` (``[n, *shape]`` float32 task vectors; it is not modified)."""
        self._check_pass(pass_index)
        if stack.dtype != torch.float32:
            raise TypeError(f"GlobalTopK expects float32 stacks, got {stack.dtype}")
        if stack.shape[0] != self.n:
            raise ValueError(f"stack has {stack.shape[0]} experts, expected {self.n}")
        flat = stack.reshape(self.n, -1)
        m = flat.shape[1]
        if pass_index == 0:
            self._count_buckets(flat)
        elif m:
            self._count_low_bits(flat)
        with self._lock:
            self._seen[pass_index] += m

    def _count_buckets(self, flat: Tensor) -> None:
        local: _Partial | None = getattr(self._local, "partial", None)
        if local is None:
            local = self._local.partial = _Partial(self.n)
            with self._lock:
                self._partials.append(local)
        count_buckets(flat, local.hist, BUCKETS)

    def _count_low_bits(self, flat: Tensor) -> None:
        """Pass 1: the low 16 bits of the entries in each open bucket ``2h + 1`` (patterns strictly between
        ``h·2¹⁶`` and ``(h+1)·2¹⁶``)."""
        assert self._selection is not None
        for i in self._selection.open_rows:
            start = (self._selection.bucket[i] // 2) << 16
            bits = magnitude_bits(flat[i])
            inside = bits[(bits > start) & (bits < start + BINS)]
            counts = torch.bincount(inside.sub_(start).to(torch.int64), minlength=BINS)
            with self._lock:
                self._low_hist[i * BINS:(i + 1) * BINS] += counts

    def histogram(self) -> Tensor:
        """``[n, BUCKETS]`` int64: the bucket counts of pass 0 so far (a copy; call it while no thread counts), so a
        caller can keep the counts of a part of the inputs, e.g. one output shard's, and add them up later."""
        hist = torch.zeros(self.n * BUCKETS, dtype=torch.int64)
        for local in self._partials:
            hist.add_(local.hist)
        return hist.view(self.n, BUCKETS)

    def finish_pass(self, pass_index: int) -> None:
        """Close a pass: after pass 0 locate each expert's bucket, after pass 1 its exact threshold."""
        self._check_pass(pass_index)
        if pass_index == 0:
            for local in self._partials:
                self._hist = local.hist if self._hist is None else self._hist.add_(local.hist)
            self._partials.clear()
            self._selection = self._select()
            self._hist = None
            self._low_hist = torch.zeros(self.n * BINS, dtype=torch.int64)
        else:
            if self._seen[1] != self.total:
                raise RuntimeError(f"GlobalTopK: pass 1 saw {self._seen[1]} entries per expert but pass 0 saw "
                                   f"{self.total}; both passes must stream the same tensors.")
            self._result = self._finish_low_bits()
        self._finished[pass_index] = True

    def _select(self) -> Selection:
        self.total = self._seen[0]
        hist = (self._hist if self._hist is not None else torch.zeros(self.n * BUCKETS, dtype=torch.int64))
        return select_buckets(hist.view(self.n, BUCKETS), self.fraction, self.total)

    def _finish_low_bits(self) -> Tensor:
        selection = self.selection()
        result = selection.provisional()  # exact experts: their value; open ones are replaced below
        rows = list(selection.open_rows)
        if rows:
            hist = self._low_hist.view(self.n, BINS)[rows]
            rank = torch.tensor([selection.rank[i] for i in rows], dtype=torch.int64)
            low, _ = _select(hist, rank)
            start = torch.tensor([(selection.bucket[i] // 2) << 16 for i in rows], dtype=torch.int64)
            result[rows] = _as_float(start | low)
        return result

    def selection(self) -> Selection:
        """Where the thresholds lie after pass 0 (exact already when :attr:`Selection.is_exact`)."""
        if self._selection is None:
            raise RuntimeError("GlobalTopK.selection() called before pass 0 was finished.")
        return self._selection

    def thresholds(self) -> Tensor:
        """``[n]`` float32: expert i keeps ``|τᵢ| ≥ thresholds[i]`` (``inf`` when nothing was fed).

        Available after pass 1, or right after pass 0 when every threshold is exact then."""
        if self._result is None:
            if self._selection is not None and self._selection.is_exact:
                return self._selection.thresholds()
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
