"""Exact top-k thresholds: the streamed two-pass histogram against a brute-force sort."""

from __future__ import annotations

import math

import pytest
import torch

from mergebench.methods.topk import GlobalTopK, global_thresholds, keep_count, tensor_thresholds


def brute_force(stacks: list[torch.Tensor], fraction: float) -> torch.Tensor:
    """K-th largest |τᵢ| over the concatenation, by sorting (independent of the histogram code)."""
    n = stacks[0].shape[0]
    result = []
    for i in range(n):
        values = torch.cat([s[i].reshape(-1) for s in stacks]).abs()
        k = math.ceil(round(fraction * values.numel(), 9))
        result.append(values.sort(descending=True).values[k - 1])
    return torch.stack(result)


def kept(stacks: list[torch.Tensor], t: torch.Tensor) -> list[int]:
    return [sum(int((s[i].abs() >= t[i]).sum()) for s in stacks) for i in range(len(t))]


def test_keep_count_uses_the_decimal_fraction() -> None:
    assert keep_count(0.1, 30) == 3            # 0.1 * 30 = 3.0000000000000004 in binary floating point
    assert keep_count(0.3, 10) == 3
    assert keep_count(0.2, 7) == 2
    assert keep_count(1.0, 7) == 7
    assert keep_count(1e-9, 7) == 1
    with pytest.raises(ValueError):
        keep_count(0.0, 7)


@pytest.mark.parametrize("fraction", [1e-4, 0.01, 0.1, 0.2, 0.5, 0.9, 1.0])
def test_random_matches_sort_and_keeps_exactly_k(fraction: float) -> None:
    g = torch.Generator().manual_seed(1)
    stacks = [torch.randn(3, 64, 33, generator=g), torch.randn(3, 7, generator=g) * 10,
              torch.randn(3, 1, generator=g), torch.randn(3, 500, generator=g) * 1e-3]
    t = global_thresholds(stacks, fraction)
    assert torch.equal(t, brute_force(stacks, fraction))
    n_total = sum(s[0].numel() for s in stacks)
    assert kept(stacks, t) == [keep_count(fraction, n_total)] * 3   # values are distinct


def test_adversarial_values() -> None:
    tiny = torch.finfo(torch.float32).tiny
    denormals = torch.tensor([tiny / 2, tiny / 4, tiny / 8, -tiny / 16, 1e-45, -1e-45, 0.0, -0.0])
    stacks = [
        torch.stack([denormals, -denormals, torch.zeros(8)]),
        torch.zeros(3, 5),
        torch.full((3, 4), 0.5),                                                  # equal values
        torch.tensor([[1.0, -1.0, 1.0 + 2**-23], [2.0, 2.0, -2.0], [0.0, 0.0, 3e38]]),
    ]
    for fraction in (0.05, 0.1, 0.25, 0.5, 0.75, 1.0):
        t = global_thresholds(stacks, fraction)
        assert torch.equal(t, brute_force(stacks, fraction)), fraction
        n_total = sum(s[0].numel() for s in stacks)
        assert all(k >= keep_count(fraction, n_total) for k in kept(stacks, t))


def test_ties_at_the_threshold_are_all_kept() -> None:
    stack = torch.tensor([[5.0, 3.0, 3.0, 3.0, 1.0, 0.0]])
    t = global_thresholds([stack], 0.5)                       # K = 3: 5, 3, (3, 3)
    assert t.item() == 3.0
    assert kept([stack], t) == [4]


def test_fraction_one_keeps_everything_even_zeros() -> None:
    stack = torch.tensor([[0.0, -0.0, 2.0], [1.0, 0.0, 0.0]])
    t = global_thresholds([stack, torch.zeros(2, 3)], 1.0)
    assert t.tolist() == [0.0, 0.0]
    assert kept([stack, torch.zeros(2, 3)], t) == [6, 6]


def test_independent_of_feeding_order_and_chunking() -> None:
    g = torch.Generator().manual_seed(2)
    stacks = [torch.randn(2, 100, generator=g) for _ in range(5)]
    reference = global_thresholds(stacks, 0.13)
    chunks = [s[:, i:i + 7] for s in stacks for i in range(0, 100, 7)]  # strided views, as the engine feeds
    acc = GlobalTopK(2, 0.13)
    for pass_index, order in enumerate([chunks, stacks[::-1]]):
        for s in order:
            acc.update(pass_index, s)
        acc.finish_pass(pass_index)
    assert torch.equal(acc.thresholds(), reference)
    # one big tensor instead of five small ones
    assert torch.equal(global_thresholds([torch.cat(stacks, 1)], 0.13), reference)


def test_misuse_is_reported() -> None:
    acc = GlobalTopK(2, 0.5)
    with pytest.raises(RuntimeError, match="out of order"):
        acc.update(1, torch.zeros(2, 3))
    acc.update(0, torch.zeros(2, 3))
    with pytest.raises(TypeError):
        acc.update(0, torch.zeros(2, 3, dtype=torch.bfloat16))
    with pytest.raises(ValueError, match="experts"):
        acc.update(0, torch.zeros(3, 3))
    acc.finish_pass(0)
    acc.update(1, torch.zeros(2, 2))
    with pytest.raises(RuntimeError, match="same tensors"):
        acc.finish_pass(1)
    with pytest.raises(RuntimeError):
        GlobalTopK(1, 0.5).thresholds()


def test_nothing_fed_gives_infinite_thresholds() -> None:
    acc = GlobalTopK(2, 0.5)
    for p in range(acc.passes):
        acc.finish_pass(p)
    assert acc.thresholds().tolist() == [math.inf, math.inf]


def test_tensor_thresholds_match_sort() -> None:
    g = torch.Generator().manual_seed(3)
    stack = torch.randn(4, 10, 9, generator=g)
    stack[1] = 0.25                                    # all equal
    for fraction in (0.01, 0.2, 0.5, 1.0):
        t = tensor_thresholds(stack, fraction)
        assert torch.equal(t, brute_force([stack], fraction))
        assert torch.equal(t, global_thresholds([stack], fraction))  # one tensor: both scopes agree
