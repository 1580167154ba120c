"""A small sample of every task vector, read before a global top-k merge so that it can take one pass.

Why: a global threshold (TIES, dataless Localize-and-Stitch) is the ``K``-th largest ``|τᵢ|`` over the whole
model, so without a guess of where it lies the engine must count every entry before it can merge any, which
reads the inputs twice (from the Hub: downloads them twice). From a sample, :meth:`Interval.estimate
<mergebench.methods.topk.Interval.estimate>` bounds each threshold, and one merge pass both counts and merges
(:mod:`mergebench.merge.passes`).

Which entries: runs of consecutive entries, at least two per tensor and otherwise shared among the tensors by size,
evenly spaced in each from its first entry to its last, the same positions in every model. Task vectors differ in
scale far more from tensor to tensor than within one, so the estimate weighs each tensor by its size (a stratified
sample) and its error is measured between the runs of one tensor. ``SAMPLE_SLICES`` runs plus two per small tensor,
``SAMPLE_ENTRIES`` entries in all (8 MiB per bf16 model however large it is), never more than a quarter of a small
model.

Reads: runs of one file at most ``SAMPLE_GAP_BYTES`` apart are read together, one Range request from the Hub per
group (smallest gaps first, while the bytes read stay within twice the runs' own: :func:`plan_reads`). A request
costs a round trip (or, over 127.0.0.1, the server's CPU), its bytes almost nothing, and since the runs reach the
ends of their tensors the last run of a tensor and the first of the next one in the file are neighbours, with any
small tensor between them: a 126M Llama family of 201 tensors in four files takes 264 reads per model instead of
506 (the sample 0.9 s instead of 1.8 s from the loopback Hub).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from mergebench.merge.inputs import MergeInputs
from mergebench.merge.plan import TensorPlan
from mergebench.stream.format import element_size, tensor_view
from mergebench.stream.reader import StreamModel, open_source

SAMPLE_ENTRIES = 4 << 20
"""Entries read per model (8 MiB of bf16), or a quarter of a smaller model."""
SAMPLE_SLICES = 256
"""Runs of entries read per model, shared among the tensors by size; at least two per tensor."""
SLICE_ENTRIES = 32_768
"""Longest run."""
SAMPLE_GAP_BYTES = 256 << 10
"""Runs of one file at most this far apart are read in one request: 256 KiB take about as long as a round trip
at 100 MB/s."""
SAMPLE_THREADS = 16
"""Reads in flight: runs are small, so over a network their time is its latency, not its rate (over 127.0.0.1 it
is the client's and the server's CPU: the 1,584 reads of a six-model 126M family took 0.9–1.0 s on 4, 8 or 16)."""


@dataclass(frozen=True)
class SampleSlice:
    """Entries ``[start, end)`` of one tensor (flat indices), standing for ``represents`` of its entries."""

    tensor: TensorPlan
    start: int
    end: int
    represents: float


def plan_slices(tensors: Sequence[TensorPlan], slices: int = SAMPLE_SLICES, entries: int = SAMPLE_ENTRIES,
                length: int = SLICE_ENTRIES) -> list[SampleSlice]:
    """Runs of entries of every tensor, a stratified sample: tensor ``t`` of ``n_t`` entries gets
    ``r_t = max(2, round(slices·n_t/N))`` runs (at most ``n_t / 4``, at least one) of
    ``s_t = min(length, ⌈entries·n_t/(N·r_t)⌉)`` entries each, so each tensor is read in proportion to its size, and
    never more than a quarter of it (or one entry). The runs are evenly spaced from the tensor's first entry to its
    last (run ``j`` starts at ``round(j·(n_t − s_t)/(r_t − 1))``; a single run is in the middle), so that runs of
    neighbouring tensors touch and are read together (:func:`sample_task_vectors`). A run stands for ``n_t / r_t``
    entries."""
    total = sum(t.numel for t in tensors)
    result = []
    for t in tensors:
        if not t.numel:
            continue
        runs = min(max(1, t.numel // 4), max(2, round(slices * t.numel / total)))
        size = max(1, min(length, math.ceil(entries * t.numel / (total * runs)), t.numel // (4 * runs)))
        for j in range(runs):
            start = round(j * (t.numel - size) / (runs - 1)) if runs > 1 else (t.numel - size) // 2
            result.append(SampleSlice(t, start, start + size, t.numel / runs))
    return result


@dataclass(frozen=True)
class SampleRead:
    """Bytes ``[begin, end)`` of the data section of one file (``filename``) of model ``model``: one request."""

    model: int
    filename: str
    begin: int
    end: int


def plan_reads(spans: Mapping[tuple[int, str], Sequence[tuple[int, int]]], *, gap: int = SAMPLE_GAP_BYTES,
               extra: int | None = None) -> list[SampleRead]:
    """The requests that fetch byte ranges ``spans[(model, filename)]`` (disjoint, any order): neighbouring ranges
    of one file are joined across gaps of at most ``gap`` bytes, smallest gaps first, until the bytes joined in
    reach ``extra`` (default: the ranges' own total, so a sample never costs more than twice its bytes)."""
    ordered = {key: sorted(ranges) for key, ranges in spans.items() if ranges}
    budget = sum(e - b for ranges in ordered.values() for b, e in ranges) if extra is None else extra
    gaps = sorted((ranges[i + 1][0] - ranges[i][1], key, i)
                  for key, ranges in ordered.items() for i in range(len(ranges) - 1))
    joined = set()
    for size, key, i in gaps:
        if size > min(gap, budget):
            break
        budget -= size
        joined.add((key, i))
    reads = []
    for key, ranges in ordered.items():
        begin, end = ranges[0]
        for i, (b, e) in enumerate(ranges[1:]):
            if (key, i) not in joined:
                reads.append(SampleRead(*key, begin, end))
                begin = b
            end = e
        reads.append(SampleRead(*key, begin, end))
    return reads


def sample_task_vectors(inputs: MergeInputs, slices: Sequence[SampleSlice], *,
                        threads: int = SAMPLE_THREADS) -> tuple[list[Tensor], int]:
    """Each slice's float32 task vectors ``[n_experts, end − start]`` (expert minus base), and the bytes read
    (:func:`plan_reads`: the runs, and the gaps read with them)."""
    models: list[StreamModel] = [inputs.base, *inputs.experts]
    located: list[list[tuple[tuple[int, str], int, int]]] = []  # per slice, per model: file and byte range
    spans: dict[tuple[int, str], list[tuple[int, int]]] = {}
    for piece in slices:
        size = element_size(piece.tensor.in_dtype)
        row = []
        for m, model in enumerate(models):
            key = (m, model.weight_map[piece.tensor.name])
            begin = model.tensor(piece.tensor.name).begin
            row.append((key, begin + piece.start * size, begin + piece.end * size))
            spans.setdefault(key, []).append(row[-1][1:])
        located.append(row)
    reads = plan_reads(spans)
    sources = {key: open_source(models[key[0]], key[1]) for key in spans}
    try:
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="mergebench-sample") as pool:
            data = list(pool.map(lambda r: sources[r.model, r.filename].read(r.begin, r.end), reads))
        starts: dict[tuple[int, str], list[tuple[int, SampleRead, memoryview]]] = {}
        for read, view in zip(reads, data, strict=True):
            starts.setdefault((read.model, read.filename), []).append((read.begin, read, view))

        def values(key: tuple[int, str], begin: int, end: int, piece: SampleSlice) -> Tensor:
            held = starts[key]
            _, read, view = held[bisect.bisect_right(held, begin, key=lambda h: h[0]) - 1]
            raw = view[begin - read.begin: end - read.begin]
            return tensor_view(raw, piece.tensor.in_dtype, (piece.end - piece.start,)).float()

        stacks = []
        for piece, row in zip(slices, located, strict=True):
            base, *experts = (values(key, b, e, piece) for key, b, e in row)
            stacks.append(torch.stack(experts).sub_(base))
        for read in reads:
            sources[read.model, read.filename].release(read.begin, read.end)
    finally:
        for opened in sources.values():
            opened.close()
    return stacks, sum(r.end - r.begin for r in reads)
