"""A one-pass global top-k: the sample's slices, the bounds they give each threshold, and counts kept per part.

The exact thresholds are computed by sorting every entry (independent of the histogram code)."""

from __future__ import annotations

import math

import pytest
import torch
from torch import Tensor

from mergebench.merge.plan import TensorPlan
from mergebench.merge.sample import SAMPLE_ENTRIES, SAMPLE_SLICES, SLICE_ENTRIES, plan_slices
from mergebench.methods.topk import GlobalTopK, Interval, Selection, keep_count, select_buckets


def sorted_threshold(stacks: list[Tensor], fraction: float) -> Tensor:
    flat = torch.cat([s.reshape(s.shape[0], -1) for s in stacks], dim=1).abs()
    return flat.sort(dim=1, descending=True).values[:, keep_count(fraction, flat.shape[1]) - 1]


def checkpoint_like(g: torch.Generator, n: int, shapes: list[tuple[int, int]]) -> list[Tensor]:
    """Task vectors of bf16 checkpoints whose scale differs by tensor (a factor of up to 100) and by row, some
    rows with outliers: what makes a sample of contiguous runs unrepresentative if it is taken carelessly."""
    stacks = []
    for rows, cols in shapes:
        scale = 10 ** (-4 + 2 * torch.rand((), generator=g))
        base = (torch.randn(rows, cols, generator=g) * 0.02).bfloat16().float()
        row_scale = scale * (0.5 + torch.rand(rows, 1, generator=g))
        deltas = []
        for _ in range(n):
            delta = torch.randn(rows, cols, generator=g) * row_scale
            delta += (torch.rand(rows, cols, generator=g) < 0.01) * torch.randn(rows, cols, generator=g) * 10 * scale
            deltas.append((base + delta).bfloat16().float() - base)
        stacks.append(torch.stack(deltas))
    return stacks


def estimate(stacks: list[Tensor], fraction: float) -> Interval | None:
    """The interval the engine would estimate from its sample of these task vectors."""
    plans = [TensorPlan(f"t{i}", tuple(s.shape[1:]), "F32", "F32", True) for i, s in enumerate(stacks)]
    index = {p.name: s.reshape(s.shape[0], -1) for p, s in zip(plans, stacks, strict=True)}
    slices = plan_slices(plans)
    sample = [index[p.tensor.name][:, p.start:p.end] for p in slices]
    return Interval.estimate(sample, fraction, [id(p.tensor) for p in slices], [p.represents for p in slices])


def counted(stacks: list[Tensor], fraction: float) -> Selection:
    acc = GlobalTopK(stacks[0].shape[0], fraction)
    for s in stacks:
        acc.update(0, s)
    acc.finish_pass(0)
    return acc.selection()


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("fraction", [0.05, 0.2, 0.6])
def test_a_sample_bounds_each_exact_threshold_and_sets_little_aside(seed: int, fraction: float) -> None:
    g = torch.Generator().manual_seed(seed)
    shapes = [(int(r), int(c)) for r, c in torch.randint(16, 600, (40, 2), generator=g)]
    stacks = checkpoint_like(g, 3, shapes)
    interval = estimate(stacks, fraction)
    assert interval is not None and interval.covers(counted(stacks, fraction))
    exact = sorted_threshold(stacks, fraction)
    flat = torch.cat([s.reshape(3, -1) for s in stacks], dim=1)
    aside = interval.undecided(flat)
    assert aside.double().mean() < 0.15  # some percent (three experts), not the model
    # everywhere else the provisional thresholds decide every entry as the exact ones do
    decided = flat[:, ~aside].abs()
    assert torch.equal(decided >= interval.provisional()[:, None], decided >= exact[:, None])


def test_an_interval_covers_only_buckets_inside_its_runs_and_survives_json() -> None:
    interval = Interval((10, 20), (13, 25))
    assert Interval.from_json(interval.to_json()) == interval
    assert interval.covers(Selection((10, 25), (1, 1), (1, 1), 100))
    assert not interval.covers(Selection((14, 25), (1, 1), (1, 1), 100))
    assert not interval.covers(Selection((10, 19), (1, 1), (1, 1), 100))
    assert interval.covers(Selection((0, 0), (0, 0), (0, 0), 0))  # nothing counted: nothing to decide
    # provisional: the top of the last bucket, i.e. the pattern (last // 2 + 1)·2¹⁶
    assert interval.provisional().view(torch.int32).tolist() == [7 << 16, 13 << 16]


def few_units_in_the_last_place(g: torch.Generator, n: int, shape: tuple[int, ...]) -> tuple[Tensor, Tensor]:
    """A one-binade bf16 base ``shape`` and ``n`` bf16 experts ``[n, *shape]`` that moved each of its weights by
    0–3 units in the last place (2⁻⁷ in [1, 2)): ``|τ|`` takes four values, 0.28 / 0.5 / 0.2 / 0.02 of the
    entries, as a real bf16 fine-tune's task vector piles up on powers of two."""
    base = (1 + 0.9 * torch.rand(shape, generator=g)).bfloat16().float()
    picks = torch.multinomial(torch.tensor([0.28, 0.5, 0.2, 0.02]), n * base.numel(), replacement=True,
                              generator=g).view(n, *shape)
    signs = torch.where(torch.rand(n, *shape, generator=g) < 0.5, -1.0, 1.0)
    return base, (base + signs * torch.tensor([0.0, 1.0, 2.0, 3.0])[picks] * 2**-7).bfloat16().float()


@pytest.mark.parametrize("fraction", [0.1, 0.4])
def test_a_threshold_on_a_value_many_entries_share_sets_nothing_aside(fraction: float) -> None:
    """0.1 lies inside the 2·2⁻⁷ value's share (0.02–0.22 from the top), 0.4 inside 2⁻⁷'s (0.22–0.72): the run
    is that value's bucket alone, the threshold can only be that value, and every entry is decided."""
    g = torch.Generator().manual_seed(3)
    stacks = [experts - base for base, experts in
              (few_units_in_the_last_place(g, 3, shape) for shape in [(256, 256), (128, 512), (64, 64)])]
    interval = estimate(stacks, fraction)
    assert interval is not None and interval.covers(counted(stacks, fraction))
    assert interval.first == interval.last and all(b % 2 == 0 for b in interval.first)
    flat = torch.cat([s.reshape(3, -1) for s in stacks], dim=1)
    assert not interval.undecided(flat).any()
    exact = sorted_threshold(stacks, fraction)
    assert torch.equal(interval.provisional(), exact)
    assert torch.equal(flat.abs() >= interval.provisional()[:, None], flat.abs() >= exact[:, None])


def test_a_run_leaves_undecided_what_a_threshold_inside_it_could_decide_either_way() -> None:
    """Bucket 2h is the value h·2¹⁶ (here 1.0), 2h ± 1 the values strictly between it and its neighbours."""
    h = 0x3F80
    values = torch.tensor([0.99999994, 1.0, 1.0000001, 1.0078125])  # the bf16 value after 1.0 is 1 + 2⁻⁷
    stack = values[None, :]

    def run(first: int, last: int) -> tuple[list[bool], float]:
        interval = Interval((first,), (last,))
        return interval.undecided(stack).tolist(), float(interval.provisional()[0])

    assert run(2 * h, 2 * h) == ([False] * 4, 1.0)                          # the threshold is 1.0: all decided
    assert run(2 * h - 1, 2 * h) == ([True, False, False, False], 1.0)      # 1.0 is kept by any threshold ≤ 1.0
    assert run(2 * h, 2 * h + 1) == ([False, True, True, False], 1.0078125)
    assert run(2 * h + 1, 2 * h + 1) == ([False, False, True, False], 1.0078125)  # 1.0 is below the run: dropped


def test_the_provisional_threshold_stops_at_infinity() -> None:
    top = 2 * (0x7F80 - 1) + 1  # the bucket just below inf's
    interval = Interval((top - 1,), (top + 2,))
    assert interval.provisional().tolist() == [math.inf]


def test_an_empty_sample_gives_no_interval() -> None:
    assert Interval.estimate([], 0.2, [], []) is None


def test_counts_kept_per_part_add_up_to_one_count() -> None:
    """Counts taken part by part (one output shard at a time) and added up select what one count selects."""
    g = torch.Generator().manual_seed(5)
    stacks = [torch.randn(3, m, generator=g) * s for m, s in [(500, 1.0), (300, 0.01), (700, 3.0), (1, 1.0)]]
    acc = GlobalTopK(3, 0.3)
    parts, before = [], torch.zeros(3, 1)
    for s in stacks:
        acc.update(0, s)
        now = acc.histogram()
        parts.append(now - before if before.numel() > 3 else now)
        before = now
    total = sum(s.shape[1] for s in stacks)
    added = torch.stack(parts).sum(0)
    assert added.sum(1).tolist() == [total] * 3
    assert select_buckets(added, 0.3, total) == counted(stacks, 0.3)


def test_slices_are_spread_over_the_tensors_in_proportion_to_their_size() -> None:
    sizes = [(4096, 4096), (1024, 4096), (14336, 4096), (8, 8), (128256, 4096), (4096,)]
    plans = [TensorPlan(f"t{i}", shape, "BF16", "BF16", True) for i, shape in enumerate(sizes)]
    slices = plan_slices(plans)
    total = sum(p.numel for p in plans)
    for p in plans:
        mine = [s for s in slices if s.tensor is p]
        assert len(mine) == max(2, round(SAMPLE_SLICES * p.numel / total))  # at least two: a spread to measure
        assert all(0 <= s.start < s.end <= p.numel and s.end - s.start <= SLICE_ENTRIES for s in mine)
        assert min(s.start for s in mine) == 0 and max(s.end for s in mine) == p.numel  # from one end to the other
        assert sum(s.represents for s in mine) == pytest.approx(p.numel)
        read = sum(s.end - s.start for s in mine)
        assert read <= p.numel // 4
        if p.numel > 100_000_000:  # large tensors: their share of the sample, within rounding
            assert read == pytest.approx(SAMPLE_ENTRIES * p.numel / total, rel=0.01)
    assert sum(s.end - s.start for s in slices) <= 1.01 * SAMPLE_ENTRIES


@pytest.mark.parametrize("entries", [1, 2, 3, 4, 100, 408, 70_000])
def test_a_small_model_is_sampled_a_quarter_at_most(entries: int) -> None:
    plans = [TensorPlan("a", (entries // 2,), "F32", "F32", True),
             TensorPlan("b", (entries - entries // 2,), "F32", "F32", True)]
    slices = plan_slices(plans)
    read = sum(s.end - s.start for s in slices)
    assert all(s.end > s.start for s in slices) and len({(s.tensor.name, s.start) for s in slices}) == len(slices)
    assert read <= sum(max(1, p.numel // 4) for p in plans if p.numel)
    assert sum(s.represents for s in slices) == pytest.approx(entries)


def test_no_tensors_no_slices() -> None:
    assert plan_slices([]) == []
