"""Fused loops for the hot spots of top-k merging and DARE, compiled by numba: the task vectors of bf16/float32
inputs widened straight from their stored bits, the top-k bucket count, the test of which positions a provisional
threshold leaves undecided, TIES' arithmetic, and DARE's masks drawn from their positions with its sum.

Why: through torch, a chunk of TIES was about 45 calls, each a pass over the chunk and a release and re-take of
the GIL, and the bucket count an ``index_add_`` scattering one entry at a time. Here each is one compiled loop
(TIES': a few passes over a cache-sized chunk) that runs without the GIL, so the engine's chunk threads
(:mod:`mergebench.merge.compute`) compute on every core. Per-tensor TIES of a 126M family took 2.9 s in process
instead of 5.8 s on an Intel Xeon, and the TIES arithmetic alone runs at 192 instead of 124 M entries/s on one
thread, 253 instead of 126 on two (``benchmarks/RESULTS.md``: "TIES before and after issue 19", "TIES arithmetic
over two cores").

Exactness: each loop performs the float32 operations of the torch form it replaced, in the same order and on
the same operands (no fast-math, so no reassociation and no fused multiply-add), so results are bit-identical:
``tests/methods/test_ties_exact.py`` compares TIES with the textbook torch formulation and an entry-by-entry
reading of the formula, ``tests/methods/test_kernels.py`` the bucket count with torch's.

The loops are plain Python functions compiled on first use (:func:`_compiled`), so importing this module costs
nothing (numba itself takes 0.2 s to import). numba caches the machine code on disk (``cache=True``: next to this
file, or in the user's cache directory when that is read-only): the first process compiles each loop (about half
a second), later ones load it. Either way a process pays numba's start-up once, about 0.55 s: the import, then on
the first call about 0.3 s of numba importing ``scipy.linalg`` to see whether a BLAS is there. That is about a
quarter of a 126M per-tensor TIES merge, and as much as a whole Task Arithmetic one, which is why the loops are kept to
top-k merging and DARE and the rest of the engine stays in torch (a loop fusing the subtraction of the base with the
finiteness check made every Task Arithmetic merge of a 126M family about 0.6 s slower, and was reverted).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from torch import Tensor

KEEP_ALL = 0
"""Trim rule: keep every entry (a threshold ``t ≤ 0``)."""
SHRINK = 1
"""Trim rule: keep ``|x| > λ`` (``hardshrink``: an entry with ``−λ ≤ x ≤ λ`` becomes ``+0``, NaN is kept)."""
DROP_ALL = 2
"""Trim rule: keep nothing, as a product with an all-false mask does (``x·0``: ``±0``, NaN for NaN and ±inf)."""


def _count_buckets(bits: np.ndarray, hist: np.ndarray, buckets: int) -> None:
    n, m = bits.shape
    slots = np.empty(m, dtype=np.int64)
    for i in range(n):
        row = bits[i]
        offset = i * buckets
        for j in range(m):  # no memory dependence between entries: vectorised
            b = row[j] & 0x7FFFFFFF  # |x|: the sign bit cleared, NaN patterns included
            slots[j] = offset + (b >> 16) + ((b - 1) >> 16) + 1
        for j in range(m):  # neighbours often share a bucket: only these increments wait on each other
            hist[slots[j]] += 1


@functools.cache
def _compiled(loop: Callable[..., Any]) -> Callable[..., Any]:
    """``loop`` compiled by numba: no GIL, no fast-math (IEEE float semantics), NumPy's division by zero."""
    import numba

    return numba.njit(nogil=True, cache=True, error_model="numpy")(loop)


def count_buckets(stack: Tensor, hist: Tensor, buckets: int) -> None:
    """``hist[i·buckets + bucket(|stack[i, j]|)] += 1`` for every entry of a float32 ``[n, m]`` stack.

    The bucket of a magnitude's int32 bit pattern ``b`` is ``(b >> 16) + ((b − 1) >> 16) + 1``, i.e.
    :func:`mergebench.methods.topk.bucket_of`. ``hist`` is int64 (it cannot overflow) and C-contiguous.

    Two loops per row: the slots first (no dependence between entries, so vectorised), then the increments.
    Neighbouring entries often fall in the same bucket, and an increment then waits for the previous one's store;
    interleaved with the slot arithmetic that stalled the whole loop (1.0–1.4 G entries/s on one core, against
    2.2 split, on a 126M model's MLP deltas)."""
    if stack.dtype != torch.float32 or hist.dtype != torch.int64 or not hist.is_contiguous():
        raise TypeError(f"count_buckets needs a float32 stack and a contiguous int64 histogram, "
                        f"got {stack.dtype} and {hist.dtype}")
    if hist.numel() < stack.shape[0] * buckets:
        raise ValueError(f"a histogram of {hist.numel()} bins for {stack.shape[0]} × {buckets} buckets")
    _compiled(_count_buckets)(stack.contiguous().view(torch.int32).numpy(), hist.numpy(), buckets)


def _widen_delta(base: np.ndarray, expert: np.ndarray, base_work: np.ndarray, delta: np.ndarray) -> bool:
    m = base.shape[0]
    shift = np.uint32(32 - 8 * base.itemsize)  # bf16 is the top half of a float32's bits, float32 is itself
    exponent = np.uint32(0x7F800000)
    widest = np.uint32(0)
    base32, delta32 = base_work[:m].view(np.uint32), delta[:m].view(np.uint32)
    for j in range(m):  # widened to float32 bits; the largest exponent field seen (all ones: NaN or ±inf)
        x = np.uint32(base[j]) << shift
        y = np.uint32(expert[j]) << shift
        base32[j] = x
        delta32[j] = y
        widest = max(widest, max(x & exponent, y & exponent))
    widened = base_work[:m]
    for j in range(m):  # τ = expert − base in float32, as torch's sub_
        delta[j] = delta[j] - widened[j]
    return bool(widest != exponent)


def stored_bits(values: Tensor) -> np.ndarray:
    """The bits of a flat bfloat16 or float32 tensor as a read-only uint16/uint32 array (no copy), what
    :func:`widen_task_vectors` reads; ``TypeError`` for any other dtype."""
    if values.dtype not in STORED_WIDTHS:
        raise TypeError(f"stored bits are read from bfloat16 or float32 tensors, got {values.dtype}")
    view: np.ndarray = values.view(STORED_WIDTHS[values.dtype][0]).numpy().view(STORED_WIDTHS[values.dtype][1])
    view.setflags(write=False)  # one numba signature whether the buffer is a read-only map or not
    return view


STORED_WIDTHS = {torch.bfloat16: (torch.int16, np.uint16), torch.float32: (torch.int32, np.uint32)}
"""Stored dtypes whose float32 value is a widening of the stored bits: bfloat16 (the top half) and float32."""


def widen_task_vectors(base: Tensor, experts: Sequence[Tensor], work: Tensor, stack: Tensor) -> bool:
    """``stack[i] = float32(experts[i]) − float32(base)`` straight from the stored bits of flat bfloat16 or float32
    tensors of one length ``m``; returns whether every entry of every input is finite.

    The float32 task vectors that converting each input, checking it and subtracting give (the same float32
    subtraction on the same values), in one compiled loop per expert instead of about ten torch calls and their
    passes over memory: with the count after it, a counting pass over bf16 inputs took 0.11–0.12 s instead of
    0.39 s for five experts' 32.8M-entry tensor on one thread. One exception, which no top-k threshold can tell:
    where both inputs are NaN, ``τ`` carries the expert's NaN (x86 keeps the first operand's), where torch's
    ``sub_`` may keep the base's; either is a NaN. ``work``: float32 ``[≥ m]``, overwritten; ``stack``: contiguous
    float32 ``[n, m]``."""
    m = base.numel()
    if base.dim() != 1 or any(e.dim() != 1 or e.numel() != m or e.dtype != base.dtype for e in experts):
        raise ValueError(f"widen_task_vectors needs flat tensors of one dtype and length, got {base.dtype} "
                         f"{tuple(base.shape)} and {[(e.dtype, tuple(e.shape)) for e in experts]}")
    if work.dtype != torch.float32 or not work.is_contiguous() or work.numel() < m:
        raise ValueError(f"work must be a contiguous float32 buffer of ≥ {m} entries")
    if stack.dtype != torch.float32 or not stack.is_contiguous() or tuple(stack.shape) != (len(experts), m):
        raise ValueError(f"stack must be a contiguous float32 [{len(experts)}, {m}], got {stack.dtype} "
                         f"{tuple(stack.shape)}")
    widen, bits, finite = _compiled(_widen_delta), stored_bits(base), True
    for expert, row in zip(experts, stack, strict=True):
        finite &= bool(widen(bits, stored_bits(expert), work.numpy(), row.numpy()))
    return finite


def _in_ranges(bits: np.ndarray, rows: np.ndarray, lows: np.ndarray, highs: np.ndarray, out: np.ndarray) -> None:
    out[:] = False
    for k in range(rows.shape[0]):
        row = bits[rows[k]]
        low, high = lows[k], highs[k]
        for j in range(row.shape[0]):
            b = row[j] & 0x7FFFFFFF
            out[j] |= (b >= low) & (b < high)


def in_ranges(stack: Tensor, rows: Sequence[int], lows: Sequence[int], highs: Sequence[int]) -> Tensor:
    """``[m]`` bool: where, for some ``k``, the magnitude of ``stack[rows[k]]`` (float32 ``[n, m]``) has a bit
    pattern in ``[lows[k], highs[k])`` (top-k entries its provisional threshold cannot decide yet). Empty ranges
    cost no pass over their row; with none left, nothing is compiled or read."""
    if stack.dtype != torch.float32 or stack.dim() != 2:
        raise TypeError(f"in_ranges needs a float32 [n, m] stack, got {stack.dtype} {tuple(stack.shape)}")
    ranges = [(row, low, high) for row, low, high in zip(rows, lows, highs, strict=True) if low < high]
    if not ranges:
        return torch.zeros(stack.shape[1], dtype=torch.bool)
    out = torch.empty(stack.shape[1], dtype=torch.bool)
    kept_rows, kept_lows, kept_highs = (np.array(column, dtype=np.int64) for column in zip(*ranges, strict=True))
    _compiled(_in_ranges)(stack.contiguous().view(torch.int32).numpy(), kept_rows, kept_lows, kept_highs, out.numpy())
    return out


def _ties_delta(deltas: np.ndarray, rule: np.ndarray, level: np.ndarray, weight: np.ndarray, mean: bool,
                out: np.ndarray, agreeing: np.ndarray) -> None:
    n, m = deltas.shape
    zero = np.float32(0.0)
    one = np.float32(1.0)
    for i in range(n):                                     # τ̂ᵢ = wᵢ·trim(τᵢ), in place
        row = deltas[i]
        r, lam, w = rule[i], level[i], weight[i]
        for j in range(m):
            x = row[j]
            if r == SHRINK:
                x = zero if (x >= -lam and x <= lam) else x
            elif r == DROP_ALL:
                x = x * zero
            row[j] = x if w == one else x * w
    for j in range(m):                                     # Σᵢ τ̂ᵢ in expert order from +0
        out[j] = deltas[0, j] + zero
    for i in range(1, n):
        row = deltas[i]
        for j in range(m):
            out[j] = out[j] + row[j]
    for j in range(m):                                     # γ = sign(Σᵢ τ̂ᵢ); NaN and ±0 give +0, as torch.sign
        s = out[j]
        out[j] = one if s > zero else (-one if s < zero else zero)
    for j in range(m):
        agreeing[j] = zero
    for i in range(n):                                     # relu(τ̂ᵢ·γ) = aᵢ·|τ̂ᵢ|, and Σᵢ aᵢ
        row = deltas[i]
        for j in range(m):
            kept = row[j] * out[j]
            kept = zero if kept < zero else kept           # torch.relu: NaN and −0 stay
            row[j] = kept
            agreeing[j] = agreeing[j] + (one if kept > zero else zero)
    for j in range(m):                                     # Σᵢ aᵢ|τ̂ᵢ| in expert order from +0
        deltas[0, j] = deltas[0, j] + zero
    for i in range(1, n):
        row = deltas[i]
        for j in range(m):
            deltas[0, j] = deltas[0, j] + row[j]
    for j in range(m):                                     # Δ = γ·Σᵢ aᵢ|τ̂ᵢ|  (÷ max(1, Σᵢ aᵢ))
        delta = deltas[0, j] * out[j]
        if mean:
            count = agreeing[j]
            delta = delta / (count if count > one else one)
        out[j] = delta


def ties_delta(deltas: Tensor, trims: Sequence[tuple[int, float]], weights: Sequence[float], *,
               mean: bool) -> Tensor:
    """TIES' merged task vector ``Δ`` ``[m]`` (float32) from float32 task vectors ``deltas [n, m]``.

    ``trims[i]`` is expert ``i``'s rule and level (:data:`KEEP_ALL`, :data:`SHRINK`, :data:`DROP_ALL`) and
    ``weights[i]`` its ``wᵢ`` (applied to the trimmed vector, skipped where it is exactly 1). ``deltas`` is
    overwritten; both sums add in expert order from ``+0``, so an entry's result depends on its own inputs only.
    """
    n = deltas.shape[0]
    if deltas.dtype != torch.float32 or deltas.dim() != 2 or not deltas.is_contiguous():
        raise TypeError(f"ties_delta needs a contiguous float32 [n, m] stack, got {deltas.dtype} "
                        f"{tuple(deltas.shape)}")
    if not n or len(trims) != n or len(weights) != n:
        raise ValueError(f"{len(trims)} trim rules and {len(weights)} weights for {n} experts")
    rule = np.array([r for r, _ in trims], dtype=np.int64)
    level = np.array([lam for _, lam in trims], dtype=np.float32)
    out = torch.empty(deltas.shape[1], dtype=torch.float32)
    agreeing = torch.empty_like(out)
    _compiled(_ties_delta)(deltas.numpy(), rule, level, np.array(weights, dtype=np.float32), mean, out.numpy(),
                           agreeing.numpy())
    return out


SPLITMIX_GAMMA = 0x9E3779B97F4A7C15
"""SplitMix64's increment (Steele, Lea and Flood, 2014): the ``j``-th draw of a stream of key ``k`` mixes
``k + (j + 1)·γ``, so any draw is computed from its index alone."""


def _dare_delta(deltas: np.ndarray, keys: np.ndarray, start: int, drop: float, coefficient: np.ndarray,
                out: np.ndarray) -> None:
    n, m = deltas.shape
    zero = np.float32(0.0)
    gamma = np.uint64(SPLITMIX_GAMMA)
    mix1, mix2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
    s30, s27, s31, s11 = np.uint64(30), np.uint64(27), np.uint64(31), np.uint64(11)
    unit = 2.0 ** -53
    for j in range(m):
        out[j] = zero
    for i in range(n):
        row, key, c = deltas[i], keys[i], coefficient[i]
        for j in range(m):                         # uⱼ: SplitMix64's draw number start + j of stream keyᵢ
            z = key + np.uint64(start + j + 1) * gamma
            z = (z ^ (z >> s30)) * mix1
            z = (z ^ (z >> s27)) * mix2
            z = z ^ (z >> s31)
            x = row[j] if np.float64(z >> s11) * unit >= drop else row[j] * zero   # mᵢ ⊙ τᵢ, kept iff uⱼ ≥ p
            out[j] = out[j] + x * c                # Σᵢ cᵢ·(mᵢ ⊙ τᵢ) in expert order from +0


def dare_delta(deltas: Tensor, keys: Sequence[int], start: int, drop_rate: float,
               coefficients: Sequence[float]) -> Tensor:
    """``[m]`` float32 ``Σᵢ cᵢ·(mᵢ ⊙ τᵢ)`` (added in expert order from ``+0``) of a float32 ``[n, m]`` stack of the
    entries ``start … start + m − 1`` of a tensor: ``mᵢⱼ = [uᵢⱼ ≥ p]`` with ``uᵢⱼ`` the top 53 bits of SplitMix64's
    draw number ``start + j`` of the stream ``keys[i]`` (a 64-bit integer), as a fraction of 2⁵³.

    A draw depends on its stream and position only, so a tensor merged in chunks of any width, in any order, on
    any number of threads, draws the same masks; ``deltas`` is not modified."""
    if deltas.dtype != torch.float32 or deltas.dim() != 2 or len(keys) != deltas.shape[0]:
        raise TypeError(f"dare_delta needs a float32 [n, m] stack and n keys, got {deltas.dtype} "
                        f"{tuple(deltas.shape)} and {len(keys)} keys")
    out = torch.empty(deltas.shape[1], dtype=torch.float32)
    _compiled(_dare_delta)(deltas.contiguous().numpy(), np.array(keys, dtype=np.uint64), start, float(drop_rate),
                           np.array(coefficients, dtype=np.float32), out.numpy())
    return out
