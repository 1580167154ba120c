"""TIES with float masks gives the bits of the textbook formulation it replaced, on every entry.

``textbook_ties`` is the implementation MergeBench shipped before (bool masks multiplied in, ``torch.sum`` over
experts), kept here verbatim as the reference for bit-identity; ``naive_ties`` is an independent per-entry
reading of the formula in ``methods.md``. Inputs come from small alphabets that hit every corner: signed zeros,
denormals, values exactly at a threshold, huge values, negative and zero weights and scalings.
"""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from mergebench.methods import MergeContext
from mergebench.methods.common import f32, scale_experts_
from mergebench.methods.kernels import DROP_ALL, KEEP_ALL, SHRINK
from mergebench.methods.ties import TiesParams, shrink_level, ties, trim_rule

ALPHABET = torch.tensor([0.0, -0.0, 1e-3, -1e-3, 2e-3, -2e-3, 5e-4, -5e-4, 1e-45, -1e-45, 3.0, -3.0,
                         1e-3 + 1e-9, 3e38, -3e38])
NON_FINITE = torch.tensor([math.inf, -math.inf, math.nan])


def textbook_ties(base: Tensor, deltas: Tensor, p: TiesParams, ctx: MergeContext) -> Tensor:
    """The previous implementation, verbatim (with the engine's thresholds)."""
    assert ctx.thresholds is not None
    base, deltas = f32(base), f32(deltas)
    t = ctx.thresholds.tolist()
    for row, t_i in zip(deltas, t, strict=True):
        row.mul_(row.abs() >= t_i)
    scale_experts_(deltas, ctx.weights)
    gamma = deltas.sum(0).sign_()
    agreeing = torch.zeros(gamma.shape, dtype=torch.int32)
    for row in deltas:
        agree = (row * gamma) > 0
        row.mul_(agree)
        agreeing += agree
    delta = deltas.sum(0)
    if p.aggregate == "mean":
        delta.div_(agreeing.clamp_(min=1))
    return torch.add(base, delta, alpha=p.scaling)


def naive_ties(base: Tensor, deltas: Tensor, p: TiesParams, thresholds: Tensor,
               weights: tuple[float, ...] | None) -> Tensor:
    """The formula entry by entry, in float32 scalars: trim, elect, disjoint sum or mean, scale."""
    n, m = deltas.shape
    w = weights or (1.0,) * n
    one = lambda x: torch.tensor(x, dtype=torch.float32)  # noqa: E731
    out = torch.empty(m)
    for j in range(m):
        kept = [deltas[i, j] * one(w[i]) if deltas[i, j].abs() >= thresholds[i] else one(0.0) for i in range(n)]
        total = one(0.0)
        for k in kept:
            total = total + k
        gamma = torch.sign(total)
        delta, count = one(0.0), 0
        for k in kept:
            if k * gamma > 0:
                delta, count = delta + k, count + 1
        if p.aggregate == "mean":
            delta = delta / max(1, count)
        out[j] = torch.add(base[j], delta, alpha=p.scaling)  # θ₀ + λ·Δ, one rounding (a fused multiply-add)
    return out


def random_case(g: torch.Generator, n: int, width: int, *, non_finite: bool = False, huge: bool = True
                ) -> tuple[Tensor, Tensor, Tensor, tuple[float, ...] | None]:
    alphabet = torch.cat([ALPHABET, NON_FINITE]) if non_finite else ALPHABET
    alphabet = alphabet if huge else alphabet[alphabet.abs() < 1e30]
    base = alphabet[torch.randint(len(alphabet), (width,), generator=g)]
    deltas = alphabet[torch.randint(len(alphabet), (n, width), generator=g)]
    levels = torch.cat([ALPHABET.abs(), torch.tensor([0.0, math.inf, math.nan])])
    thresholds = levels[torch.randint(len(levels), (n,), generator=g)]
    weights = None
    if torch.rand(1, generator=g).item() < 0.5:
        choices = torch.tensor([1.0, -0.5, 2.0, 0.0, 1e38] if huge else [1.0, -0.5, 2.0, 0.0, 1.5])
        weights = tuple(choices[torch.randint(5, (n,), generator=g)].tolist())
    return base, deltas, thresholds, weights


def same_bits(a: Tensor, b: Tensor, *, nan_payloads: bool = False) -> bool:
    equal = a.view(torch.int32) == b.view(torch.int32)
    if nan_payloads:  # NaN stays NaN, whatever its sign bit
        equal |= a.isnan() & b.isnan()
    return bool(equal.all())


@pytest.mark.parametrize("n", [1, 2, 3, 4, 5, 8])
def test_bits_equal_the_textbook_formulation(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    for trial in range(150):
        # a multiple of 64 entries: the textbook form's torch.sum over ≥ 5 experts adds those in expert order
        base, deltas, thresholds, weights = random_case(g, n, 256)
        p = TiesParams(aggregate=("sum", "mean")[trial % 2], scaling=(1.0, 0.6, -0.5, 0.0, 3.0)[trial % 5])
        ctx = MergeContext(name="w", expert_ids=tuple(range(n)), thresholds=thresholds, weights=weights)
        expected = textbook_ties(base.clone(), deltas.clone(), p, ctx)
        got = ties(base.clone(), deltas.clone(), p, ctx)
        assert same_bits(got, expected), (trial, thresholds, weights, p)


def test_non_finite_inputs_give_the_same_values() -> None:
    """With ``check_finite: false``: every entry equal, or NaN in both (a NaN's sign bit may differ)."""
    g = torch.Generator().manual_seed(7)
    for trial in range(200):
        base, deltas, thresholds, weights = random_case(g, 5, 256, non_finite=True)
        p = TiesParams(aggregate=("sum", "mean")[trial % 2], scaling=(1.0, -0.5, 0.0)[trial % 3])
        ctx = MergeContext(name="w", expert_ids=tuple(range(5)), thresholds=thresholds, weights=weights)
        expected = textbook_ties(base.clone(), deltas.clone(), p, ctx)
        assert same_bits(ties(base.clone(), deltas.clone(), p, ctx), expected, nan_payloads=True), trial


def test_matches_the_formula_entry_by_entry() -> None:
    g = torch.Generator().manual_seed(3)
    for trial in range(20):
        base, deltas, thresholds, weights = random_case(g, 3, 40, huge=False)  # no overflow: where the textbook
        p = TiesParams(aggregate=("sum", "mean")[trial % 2], scaling=0.7)          # and the formula part ways
        ctx = MergeContext(name="w", expert_ids=(0, 1, 2), thresholds=thresholds, weights=weights)
        got = ties(base.clone(), deltas.clone(), p, ctx)
        expected = naive_ties(base, deltas, p, thresholds, weights)
        both_nan = got.isnan() & expected.isnan()
        assert bool(((got == expected) | both_nan).all()), trial


@pytest.mark.parametrize("n", [3, 5, 8])
def test_any_subset_of_positions_merges_to_the_same_bits(n: int) -> None:
    """What lets the engine merge set-aside positions again later: each entry depends on its own inputs only
    (torch.sum over five or more experts would not give that: its order depends on the tensor's width)."""
    g = torch.Generator().manual_seed(n)
    width = 4099
    base = torch.randn(width, generator=g)
    deltas = torch.randn(n, width, generator=g) * torch.rand(n, width, generator=g) ** 4 * 1e3
    ctx = MergeContext(name="w", expert_ids=tuple(range(n)), thresholds=torch.rand(n, generator=g),
                       weights=tuple(torch.rand(n, generator=g).tolist()))
    for aggregate in ("sum", "mean"):
        p = TiesParams(aggregate=aggregate, scaling=0.7)
        whole = ties(base.clone(), deltas.clone(), p, ctx)
        for k in [*range(1, 40), 63, 64, 65, 127, 1000]:
            at = torch.randperm(width, generator=g)[:k]
            part = ties(base[at].clone(), deltas[:, at].clone(), p, ctx)
            assert same_bits(part, whole[at]), (aggregate, k)


def test_the_sums_add_in_expert_order_from_positive_zero() -> None:
    """Where every expert agrees the disjoint sum is the plain sum of the trimmed vectors: added in expert order
    from +0 (big values cancel only in that order), and never −0."""
    p = TiesParams(scaling=1.0)
    deltas = torch.tensor([[-0.0, 1e8, 3.0], [-0.0, 1.0, 1e8], [-0.0, 2.0, 1.0]])
    ctx = MergeContext(name="w", expert_ids=(0, 1, 2), thresholds=torch.zeros(3))
    got = ties(torch.zeros(3), deltas.clone(), p, ctx)
    expected = torch.zeros(3)
    for row in deltas:
        expected = expected + row
    assert same_bits(got, expected) and not torch.signbit(got).any()
    assert got[1] == 1e8 + 4  # 1e8 + 1 + 2 in float32, in that order


def test_trim_keeps_exactly_the_entries_at_or_above_the_threshold() -> None:
    """One expert with ``sum``: the merge is the trimmed vector itself, so its entries show the trim."""
    just_below = torch.nextafter(torch.tensor(0.5), torch.tensor(0.0)).item()
    just_above = torch.nextafter(torch.tensor(0.5), torch.tensor(1.0)).item()
    row = torch.tensor([0.5, -0.5, just_below, -just_above, 0.0, -0.0, 1e-45, math.inf])

    def trimmed(threshold: float) -> Tensor:
        ctx = MergeContext(name="w", expert_ids=(0,), thresholds=torch.tensor([threshold]))
        return ties(torch.zeros(8), row[None].clone(), TiesParams(), ctx)

    assert trimmed(0.5).tolist() == [0.5, -0.5, 0.0, -just_above, 0.0, 0.0, 0.0, math.inf]
    assert torch.equal(trimmed(0.0), row) and torch.equal(trimmed(-1.0), row)  # t ≤ 0 keeps everything
    assert torch.equal(trimmed(row[6].item()), torch.cat([row[:4], torch.tensor([0.0, 0.0]), row[6:]]))
    assert trimmed(math.inf).tolist() == [0.0] * 7 + [math.inf]
    dropped = trimmed(math.nan)                                               # a NaN threshold keeps nothing
    assert dropped[:7].abs().sum() == 0 and dropped[7].isnan()
    assert trim_rule(0.0) == (KEEP_ALL, 0.0) and trim_rule(math.nan) == (DROP_ALL, 0.0)
    assert trim_rule(0.5) == (SHRINK, just_below)


def test_shrink_level_is_the_largest_float32_below() -> None:
    for t in (0.5, 1e-45, 3.0, 1e-3, math.inf):
        level = shrink_level(t)
        assert level is not None
        below = torch.nextafter(torch.tensor(t, dtype=torch.float32), torch.tensor(-math.inf)).item()
        assert level == below
    assert shrink_level(0.0) is None and shrink_level(-2.0) is None
