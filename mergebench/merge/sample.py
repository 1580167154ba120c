"""A small sample of every task vector, read before a global top-k merge so that it can take one pass.

Why: a global threshold (TIES, dataless Localize-and-Stitch) is the ``K``-th largest ``|τᵢ|`` over the whole
model, so without a guess of where it lies the engine must count every entry before it can merge any, which
reads the inputs twice (from the Hub: downloads them twice). From a sample, :meth:`Interval.estimate
<mergebench.methods.topk.Interval.estimate>` bounds each threshold, and one merge pass both counts and merges
(:mod:`mergebench.merge.passes`).

Which entries: runs of consecutive entries, at least two per tensor and otherwise shared among the tensors by size,
evenly spaced in each, the same positions in every model. Task vectors differ in scale far more from tensor to
tensor than within one, so the estimate weighs each tensor by its size (a stratified sample) and its error is
measured between the runs of one tensor. A run is one read per model (one Range request from the Hub): about
``SAMPLE_SLICES`` plus two per small tensor, ``SAMPLE_ENTRIES`` entries in all (8 MiB per bf16 model however
large it is), never more than a quarter of a small model.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from mergebench.merge.inputs import MergeInputs
from mergebench.merge.plan import TensorPlan
from mergebench.stream.format import element_size, tensor_view
from mergebench.stream.reader import StreamModel, open_source
from mergebench.stream.sources import ByteSource

SAMPLE_ENTRIES = 4 << 20
"""Entries read per model (8 MiB of bf16), or a quarter of a smaller model."""
SAMPLE_SLICES = 256
"""Runs of entries read per model, shared among the tensors by size; at least two per tensor."""
SLICE_ENTRIES = 32_768
"""Longest run."""
SAMPLE_THREADS = 16
"""Reads in flight: runs are small, so over a network their time is its latency, not its rate (over 127.0.0.1 it
is the client's and the server's CPU: 2,784 runs took 1.9 s on 4 threads, 2.0–2.1 s on 8 or 16)."""


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
    ``r_t = max(2, round(slices·n_t/N))`` runs (at most ``n_t / 4``, at least one), evenly spaced in it, of
    ``min(length, ⌈entries·n_t/(N·r_t)⌉)`` entries each, so each tensor is read in proportion to its size, and
    never more than a quarter of it (or one entry). A run stands for ``n_t / r_t`` entries."""
    total = sum(t.numel for t in tensors)
    result = []
    for t in tensors:
        if not t.numel:
            continue
        runs = min(max(1, t.numel // 4), max(2, round(slices * t.numel / total)))
        size = max(1, min(length, math.ceil(entries * t.numel / (total * runs)), t.numel // (4 * runs)))
        stride = t.numel / runs
        for j in range(runs):
            start = int((j + 0.5) * stride)
            result.append(SampleSlice(t, start, min(start + size, t.numel), t.numel / runs))
    return result


def sample_task_vectors(inputs: MergeInputs, slices: Sequence[SampleSlice], *,
                        threads: int = SAMPLE_THREADS) -> tuple[list[Tensor], int]:
    """Each slice's float32 task vectors ``[n_experts, end − start]`` (expert minus base), and the bytes read."""
    models: list[StreamModel] = [inputs.base, *inputs.experts]
    sources: dict[tuple[int, str], ByteSource] = {}

    def source(m: int, filename: str) -> ByteSource:
        key = (m, filename)
        if key not in sources:
            sources[key] = open_source(models[m], filename)
        return sources[key]

    def read(piece: SampleSlice) -> Tensor:
        t, rows = piece.tensor, []
        size = element_size(t.in_dtype)
        for m, model in enumerate(models):
            entry = model.tensor(t.name)
            begin, end = entry.begin + piece.start * size, entry.begin + piece.end * size
            data = source(m, model.weight_map[t.name])
            rows.append(tensor_view(data.read(begin, end), t.in_dtype, (piece.end - piece.start,)).float())
            data.release(begin, end)
        stack = torch.stack(rows[1:])
        return stack.sub_(rows[0])

    for m, model in enumerate(models):  # open every source up front, on this thread
        for piece in slices:
            source(m, model.weight_map[piece.tensor.name])
    try:
        with ThreadPoolExecutor(max(1, threads), thread_name_prefix="mergebench-sample") as pool:
            stacks = list(pool.map(read, slices))
    finally:
        for opened in sources.values():
            opened.close()
    nbytes = sum((p.end - p.start) * element_size(p.tensor.in_dtype) for p in slices) * len(models)
    return stacks, nbytes
