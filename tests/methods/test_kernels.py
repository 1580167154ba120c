"""The fused bucket count against torch's form of the same count (:func:`mergebench.methods.topk.bucket_of`
and ``bincount``), on the bit patterns where an off-by-one would show: signed zeros, denormals, pure bucket
values (low 16 bits 0) and their neighbours, infinities and NaNs of either sign."""

from __future__ import annotations

import math
import threading
import warnings

import pytest
import torch

from mergebench.methods.kernels import count_buckets, dare_delta, in_ranges, ties_delta, widen_task_vectors
from mergebench.methods.topk import BUCKETS, bucket_of, magnitude_bits

PATTERNS = torch.tensor([0, 1, 2, 0xFFFF, 0x10000, 0x10001, 0x1FFFF, 0x3F800000, 0x3F800001, 0x3F80FFFF,
                         0x3F810000, 0x7F7FFFFF, 0x7F800000, 0x7FC00000, 0x7FFFFFFF], dtype=torch.int32)
SIGN_BIT = torch.tensor(-(1 << 31), dtype=torch.int32)


def torch_count(stack: torch.Tensor) -> torch.Tensor:
    n = stack.shape[0]
    flat = stack.reshape(n, -1)
    offsets = (torch.arange(n, dtype=torch.int32) * BUCKETS)[:, None]
    keys = bucket_of(magnitude_bits(flat), torch.empty(flat.shape, dtype=torch.int32),
                     torch.empty(flat.shape, dtype=torch.int32), offsets)
    return torch.bincount(keys.reshape(-1).to(torch.int64), minlength=n * BUCKETS)


def adversarial(g: torch.Generator, n: int, m: int) -> torch.Tensor:
    """``[n, m]`` float32 values drawn from :data:`PATTERNS`, each with its sign bit set half of the time."""
    bits = PATTERNS[torch.randint(len(PATTERNS), (n, m), generator=g)]
    negative = torch.rand(n, m, generator=g) < 0.5
    return torch.where(negative, bits | SIGN_BIT, bits).view(torch.float32)


@pytest.mark.parametrize("n", [1, 5])
def test_count_matches_torch_on_every_corner(n: int) -> None:
    g = torch.Generator().manual_seed(n)
    stack = torch.cat([adversarial(g, n, 3000), torch.randn(n, 5000, generator=g) * 1e-3], dim=1)
    assert stack.isnan().any() and torch.signbit(stack[stack.isnan()]).any()  # NaNs with the sign bit set too
    hist = torch.zeros(n * BUCKETS, dtype=torch.int64)
    count_buckets(stack, hist, BUCKETS)
    assert torch.equal(hist, torch_count(stack))
    count_buckets(stack[:, ::2], hist, BUCKETS)  # a strided view is counted as its values, and adds up
    assert torch.equal(hist, torch_count(stack) + torch_count(stack[:, ::2]))


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
@pytest.mark.parametrize("special", [False, True])
def test_task_vectors_widened_from_stored_values_count_as_a_float32_copy_and_tell_non_finite(
        dtype: torch.dtype, special: bool) -> None:
    """τ computed from the stored bits (bf16 widened, float32 as is) gives the buckets of converting and
    subtracting; the flag is False exactly when some entry of the base or an expert is NaN or ±inf. The corner
    patterns include subtractions that overflow (±3.4e38 apart) and denormal differences."""
    g = torch.Generator().manual_seed(3 + special)
    m = 20_011
    values = torch.randn(3, m, generator=g) * 1e-2
    values[:, :6000] = adversarial(g, 3, 6000)
    stored = values.to(dtype)
    if not special:  # finite corners only
        stored = stored.nan_to_num(0.0, 3e38, -3e38)
    assert special != bool(stored.isfinite().all())
    stack = torch.empty(2, m)
    finite = widen_task_vectors(stored[0], [stored[1], stored[2]], torch.empty(m + 5), stack)
    widened = stored.float()
    assert finite == bool(widened.isfinite().all())
    hist = torch.zeros(2 * BUCKETS, dtype=torch.int64)
    count_buckets(stack, hist, BUCKETS)
    assert_same_counts(hist, torch_count(widened[1:] - widened[0]))
    both_nan = widened[1:].isnan() & widened[0].isnan()
    assert torch.equal(stack.view(torch.int32)[~both_nan], (widened[1:] - widened[0]).view(torch.int32)[~both_nan])
    # a read-only map's bytes (as the engine reads local files) widen as a writable tensor's
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # torch: a tensor over a read-only buffer
        readonly = torch.frombuffer(bytes(stored[1].contiguous().view(torch.uint8).numpy()), dtype=dtype)
    again = torch.empty(1, m)
    widen_task_vectors(stored[0], [readonly], torch.empty(m), again)
    assert torch.equal(again.view(torch.int32), stack[:1].view(torch.int32))


def test_widening_refuses_what_it_cannot_widen() -> None:
    work, stack = torch.empty(4), torch.empty(1, 4)
    with pytest.raises(TypeError, match="bfloat16 or float32"):
        widen_task_vectors(torch.zeros(4, dtype=torch.float16), [torch.zeros(4, dtype=torch.float16)], work, stack)
    with pytest.raises(ValueError, match="one dtype and length"):
        widen_task_vectors(torch.zeros(4), [torch.zeros(3)], work, stack)
    with pytest.raises(ValueError, match="work must be"):
        widen_task_vectors(torch.zeros(8), [torch.zeros(8)], work, torch.empty(1, 8))
    with pytest.raises(ValueError, match="stack must be"):
        widen_task_vectors(torch.zeros(4), [torch.zeros(4)], work, torch.empty(2, 4))


NAN_BUCKETS = 0xFF01
"""The first bucket of a NaN's magnitude (pattern 0x7F800001); every finite value's and ±inf's lie below it."""


def assert_same_counts(hist: torch.Tensor, expected: torch.Tensor) -> None:
    """Equal counts in every bucket below NaN's and as many NaNs in all. ``NaN − NaN`` carries one operand's
    payload, and which one is the hardware's and the kernel's choice (x86 keeps the first operand's; torch's sub
    keeps the base's here): both are NaN, above every number, and a NaN threshold trims the same whatever its bits."""
    rows, expected_rows = hist.view(-1, BUCKETS), expected.view(-1, BUCKETS)
    assert torch.equal(rows[:, :NAN_BUCKETS], expected_rows[:, :NAN_BUCKETS])
    assert torch.equal(rows[:, NAN_BUCKETS:].sum(1), expected_rows[:, NAN_BUCKETS:].sum(1))


def test_threads_counting_at_once_into_their_own_histograms_add_up() -> None:
    g = torch.Generator().manual_seed(0)
    parts = [torch.randn(3, 50_000, generator=g) for _ in range(8)]
    hists = [torch.zeros(3 * BUCKETS, dtype=torch.int64) for _ in parts]
    threads = [threading.Thread(target=count_buckets, args=(p, h, BUCKETS)) for p, h in zip(parts, hists, strict=True)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert torch.equal(sum(hists), torch_count(torch.cat(parts, dim=1)))


def test_bad_arguments_are_refused_before_any_work() -> None:
    hist = torch.zeros(2 * BUCKETS, dtype=torch.int64)
    with pytest.raises(TypeError, match="float32"):
        count_buckets(torch.zeros(2, 4, dtype=torch.float64), hist, BUCKETS)
    with pytest.raises(ValueError, match="buckets"):
        count_buckets(torch.zeros(3, 4), hist, BUCKETS)
    with pytest.raises(ValueError, match="3 experts"):
        ties_delta(torch.zeros(3, 4), [(0, 0.0)] * 2, [1.0] * 3, mean=False)
    with pytest.raises(TypeError, match="contiguous"):
        ties_delta(torch.zeros(4, 3).t(), [(0, 0.0)] * 3, [1.0] * 3, mean=False)


def test_undecided_positions_are_the_entries_the_count_put_in_those_buckets() -> None:
    """A position is set aside iff some listed expert's entry falls in that expert's buckets in the count: the
    same bucket function, NaNs of an other expert included (they must not hide it). An open bucket ``2h + 1``
    is the patterns ``[h·2¹⁶ + 1, (h + 1)·2¹⁶)``; a run of buckets ``[2a, 2b + 1]`` is ``[a·2¹⁶, (b + 1)·2¹⁶)``."""
    g = torch.Generator().manual_seed(3)
    stack = adversarial(g, 4, 4000)
    stack[2, :50] = math.nan
    keys = bucket_of(magnitude_bits(stack), torch.empty(stack.shape, dtype=torch.int32),
                     torch.empty(stack.shape, dtype=torch.int32))
    runs = {0: (2 * 0x3F80 + 1, 2 * 0x3F80 + 1), 2: (1, 1), 3: (2 * 0x3F00, 2 * 0x3F84 + 1)}  # expert → buckets
    expected = torch.zeros(4000, dtype=torch.bool)
    for row, (first, last) in runs.items():
        expected |= (keys[row] >= first) & (keys[row] <= last)
    lows = [(first // 2 << 16) + first % 2 for first, _ in runs.values()]
    highs = [(last // 2 + 1) << 16 for _, last in runs.values()]
    got = in_ranges(stack, list(runs), lows, highs)
    assert expected.any() and not expected.all() and torch.equal(got, expected)
    # an empty range (a run that is one even bucket) adds nothing; with only empty ones, nothing is undecided
    assert torch.equal(in_ranges(stack, [*runs, 1], [*lows, 0x3F800000], [*highs, 0x3F800000]), expected)
    assert not in_ranges(stack, [1, 2], [0x3F800000, 5], [0x3F800000, 5]).any()


def test_dare_draws_are_splitmix64_from_each_position() -> None:
    """Key 0's first draw is SplitMix64's published first output for seed 0, 0xE220A8397B1DCDAF; an entry is kept
    iff its draw's top 53 bits, as a fraction of 2⁵³, are at least p; kept entries are scaled, dropped ones are
    ``x·0`` (NaN stays NaN), summed in expert order."""
    first = (0xE220A8397B1DCDAF >> 11) / 2**53
    one = torch.ones(1, 1)
    assert dare_delta(one, [0], 0, math.nextafter(first, 0), [3.0]).item() == 3.0   # u = first ≥ p: kept, ×3
    assert dare_delta(one, [0], 0, first, [3.0]).item() == 3.0
    assert dare_delta(one, [0], 0, math.nextafter(first, 1), [3.0]).item() == 0.0   # u < p: dropped
    # draw number start + j: a chunk at offset 5 draws what the whole row draws at 5, 6, 7
    g = torch.Generator().manual_seed(0)
    stack = torch.randn(3, 8, generator=g)
    stack[1, 6] = math.nan
    keys = [7, 2**64 - 1, 123456789]
    whole = dare_delta(stack, keys, 0, 0.5, [1.0, 0.5, 2.0])
    part = dare_delta(stack[:, 5:].contiguous(), keys, 5, 0.5, [1.0, 0.5, 2.0])
    assert torch.equal(part.view(torch.int32), whole[5:].view(torch.int32))
    assert whole[6].isnan()  # a NaN is a NaN kept or dropped
    with pytest.raises(TypeError, match="n keys"):
        dare_delta(stack, keys[:2], 0, 0.5, [1.0, 1.0])
