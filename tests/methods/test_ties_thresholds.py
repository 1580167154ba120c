"""TIES' exact top-k thresholds after one counting pass: buckets, open buckets, resolving them from set-aside
entries, against a sort (independent of the histogram code)."""

from __future__ import annotations

import math
import threading
import zlib

import pytest
import torch
from torch import Tensor

from mergebench.methods.topk import BUCKETS, GlobalTopK, Selection, bucket_of, keep_count, magnitude_bits


def sorted_threshold(stack: Tensor, fraction: float) -> Tensor:
    flat = stack.reshape(stack.shape[0], -1).abs()
    return flat.sort(dim=1, descending=True).values[:, keep_count(fraction, flat.shape[1]) - 1]


def counted(stack: Tensor, fraction: float) -> GlobalTopK:
    acc = GlobalTopK(stack.shape[0], fraction)
    acc.update(0, stack)
    acc.finish_pass(0)
    return acc


def family(kind: str, g: torch.Generator, n: int = 3, m: int = 2000) -> Tensor:
    if kind == "float32":                       # low bits set almost everywhere: open buckets
        return torch.randn(n, m, generator=g)
    if kind == "bf16 deltas":                   # differences of bf16 weights, as in real checkpoints
        base = (torch.randn(m, generator=g) * 0.02).bfloat16().float()
        return torch.stack([(base + torch.randn(m, generator=g) * 1e-3).bfloat16().float() - base for _ in range(n)])
    if kind == "ties":                          # few distinct values
        return torch.randint(-3, 4, (n, m), generator=g).float() * 0.25
    scales = torch.tensor([1e-40, 1.0, 1e30, 0.0, math.inf])  # denormals, zeros, infinities
    return torch.randn(n, m, generator=g) * scales[torch.randint(5, (n, m), generator=g)]


def test_buckets_order_like_the_values_and_even_buckets_are_single_values() -> None:
    g = torch.Generator().manual_seed(0)
    values = torch.cat([torch.randn(5000, generator=g).abs() * 10.0 ** torch.randint(-40, 38, (5000,), generator=g),
                        torch.tensor([0.0, 1e-45, 0.5, 1.0, 1.0 + 2 ** -23, math.inf, math.nan])]).sort().values
    bits = magnitude_bits(values)
    keys = bucket_of(bits, torch.empty_like(bits), torch.empty_like(bits))
    assert bool((keys[1:] >= keys[:-1]).all()) and int(keys.max()) < BUCKETS
    even = keys % 2 == 0
    assert bool((bits[even] & 0xFFFF == 0).all()) and bool((bits[~even] & 0xFFFF != 0).all())


@pytest.mark.parametrize("kind", ["float32", "bf16 deltas", "ties", "extremes"])
@pytest.mark.parametrize("fraction", [1e-3, 0.1, 0.2, 0.5, 1.0])
def test_resolving_open_buckets_or_a_second_pass_give_the_sorted_threshold(kind: str, fraction: float) -> None:
    g = torch.Generator().manual_seed(zlib.crc32(f"{kind} {fraction}".encode()))
    stack = family(kind, g)
    expected = sorted_threshold(stack, fraction)
    acc = counted(stack, fraction)
    selection = acc.selection()
    if selection.is_exact:
        assert torch.equal(selection.thresholds(), expected)
    inside = selection.undecided(stack)
    resolved = selection.resolve([row[inside] for row in stack])
    assert torch.equal(resolved, expected)
    acc.update(1, stack)
    acc.finish_pass(1)
    assert torch.equal(acc.thresholds(), expected)
    # the provisional thresholds decide every entry outside the open buckets as the exact ones do
    provisional = selection.provisional()
    for i, row in enumerate(stack):
        assert torch.equal((row.abs() >= provisional[i])[~inside], (row.abs() >= expected[i])[~inside])


def test_bf16_deltas_are_usually_exact_after_one_pass() -> None:
    g = torch.Generator().manual_seed(5)
    stack = family("bf16 deltas", g, n=5, m=20000)
    stack[:, ::2] = torch.round(stack[:, ::2] * 2 ** 10) / 2 ** 10   # many entries of 8 significant bits or fewer
    selection = counted(stack, 0.5).selection()
    assert selection.is_exact and selection.pending == 0
    assert torch.equal(selection.thresholds(), sorted_threshold(stack, 0.5))


def test_undecided_marks_exactly_the_open_buckets_entries() -> None:
    g = torch.Generator().manual_seed(2)
    stack = family("float32", g, n=4)
    selection = counted(stack, 0.2).selection()
    assert selection.open_rows
    bits = magnitude_bits(stack)
    keys = bucket_of(bits, torch.empty_like(bits), torch.empty_like(bits))
    expected = torch.zeros(stack.shape[1], dtype=torch.bool)
    for i in selection.open_rows:
        expected |= keys[i] == selection.bucket[i]
    assert torch.equal(selection.undecided(stack), expected)
    assert int(expected.sum()) <= selection.pending


def test_a_changed_input_between_passes_is_detected() -> None:
    g = torch.Generator().manual_seed(4)
    stack = family("float32", g)
    selection = counted(stack, 0.2).selection()
    inside = selection.undecided(stack)
    with pytest.raises(RuntimeError, match="both passes must read the same tensors"):
        selection.resolve([row[inside][1:] for row in stack])


def test_selection_survives_json_and_counts_are_per_thread() -> None:
    g = torch.Generator().manual_seed(6)
    stack = family("float32", g)
    acc = GlobalTopK(3, 0.3)
    parts = torch.chunk(stack, 4, dim=1)
    threads = [threading.Thread(target=acc.update, args=(0, p)) for p in parts]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    acc.finish_pass(0)
    selection = acc.selection()
    assert selection == counted(stack, 0.3).selection()
    assert Selection.from_json(selection.to_json()) == selection
    assert selection.total == stack.shape[1]


def test_nothing_counted() -> None:
    selection = counted(torch.zeros(2, 0), 0.5).selection()
    assert selection.is_exact and selection.thresholds().tolist() == [math.inf, math.inf]
