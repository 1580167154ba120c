"""The streaming passes of a merge: exact global top-k thresholds, then the merge pass that writes shards.

Each tensor of every model is converted to float32 once, handed to the method, cast to the output dtype,
checked to be finite and appended to the output shard. Peak memory is about
``(n_experts + 2) × largest tensor × 4 bytes`` plus the read-ahead budget, whatever the model size.
Elementwise methods (``Params.elementwise()``) and the top-k counting passes instead work on cache-sized
chunks of every tensor on all cores (:mod:`mergebench.merge.compute`): the same float32 operations per
entry, so the same bytes, several times faster and without whole-tensor float32 stacks.
"""

from __future__ import annotations

import contextlib
import dataclasses
import warnings
from collections.abc import Callable, Mapping, Sequence
from functools import partial
from pathlib import Path

import torch
from tqdm.auto import tqdm

from mergebench.errors import NonFiniteError
from mergebench.merge.compute import ChunkPool
from mergebench.merge.inputs import MergeInputs
from mergebench.merge.options import MergeOptions
from mergebench.merge.plan import TensorPlan
from mergebench.methods import MergeContext
from mergebench.methods.topk import GlobalTopK
from mergebench.stats import StatisticsReader
from mergebench.stream.format import DTYPES
from mergebench.stream.reader import TensorStream
from mergebench.stream.writer import BackgroundWriter, ShardWriter

Raw = tuple[memoryview | None, ...]
"""One tensor's bytes per model (base first), as :class:`TensorStream` yields them; ``None``: not requested."""


def _bar(options: MergeOptions, total: int, desc: str, unit: str = "B") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not options.progress, leave=False)


def _open_stream(inputs: MergeInputs, order: Sequence[tuple[str, Sequence[int]]], options: MergeOptions,
                 desc: str) -> tuple[TensorStream, tqdm]:
    """A tensor stream over base + experts and its bytes progress bar."""
    stream = TensorStream([inputs.base, *inputs.experts], order, threads=options.threads,
                          max_inflight_bytes=options.read_ahead_bytes, chunk_bytes=options.chunk_bytes)
    bar = _bar(options, stream.bytes_to_read, desc)
    stream.progress = bar
    return stream, bar


def _to_tensor(raw: memoryview | None, entry_dtype: str, shape: tuple[int, ...]) -> torch.Tensor:
    assert raw is not None  # only tensors requested from the stream for this model are converted
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", UserWarning)  # read-only buffers: we only ever copy out of them
        return torch.frombuffer(raw, dtype=DTYPES[entry_dtype]).view(shape)


def _flat_views(inputs: MergeInputs, t: TensorPlan, raw: Raw) -> list[torch.Tensor]:
    """Each model's raw bytes of ``t`` as a flat tensor in its stored dtype (zero-copy)."""
    return [_to_tensor(r, t.in_dtype, (t.numel,)) for r in raw[: len(inputs.experts) + 1]]


def _load_into(inputs: MergeInputs, t: TensorPlan, flats: Sequence[torch.Tensor], base: torch.Tensor,
               stack: torch.Tensor, start: int, *, check_finite: bool) -> None:
    """Fill float32 ``base [m]`` and ``stack [n, m]`` with entries ``[start, start + m)`` of every model's
    tensor, checking that each model's entries are finite."""
    end = start + base.numel()
    base.copy_(flats[0][start:end])
    for i in range(len(inputs.experts)):
        stack[i].copy_(flats[i + 1][start:end])
    if check_finite and not (_all_finite(base) and _all_finite(stack)):  # then name the culprit
        for model, values in [(inputs.base, base), *zip(inputs.experts, stack, strict=True)]:
            if not _all_finite(values):
                raise NonFiniteError(
                    f"Tensor '{t.name}' of '{model.label}' holds NaN or Inf values.",
                    model=model.label, filename=model.weight_map[t.name], tensor=t.name,
                    hint="Fix the checkpoint, or set 'check_finite: false' in the recipe to merge it as is.")


def _load_stack(inputs: MergeInputs, t: TensorPlan, raw: Raw, *,
                check_finite: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-tensor fp32 base and ``[n, *shape]`` fp32 stack of expert weights (methods that are not elementwise)."""
    base = torch.empty(t.numel, dtype=torch.float32)
    stack = torch.empty((len(inputs.experts), t.numel), dtype=torch.float32)
    _load_into(inputs, t, _flat_views(inputs, t, raw), base, stack, 0, check_finite=check_finite)
    return base.view(t.shape), stack.view(len(inputs.experts), *t.shape)


def _count_chunk(inputs: MergeInputs, t: TensorPlan, flats: Sequence[torch.Tensor], pool: ChunkPool, acc: GlobalTopK,
                 pass_index: int, check_finite: bool, start: int, end: int) -> None:
    """Feed the task vectors of one chunk to a top-k counting pass."""
    base, stack = pool.buffers(end - start)
    _load_into(inputs, t, flats, base, stack, start, check_finite=check_finite)
    acc.update(pass_index, stack.sub_(base))


def _compute_pool(inputs: MergeInputs, options: MergeOptions) -> ChunkPool:
    return ChunkPool(len(inputs.experts), chunk=options.compute_chunk, threads=options.compute_threads)


def _check_output(inputs: MergeInputs, t: TensorPlan, merged: torch.Tensor) -> None:
    """Refuse to write a merged tensor (in its output dtype) holding NaN/Inf from finite inputs: an overflow
    of the method's arithmetic or of the cast (e.g. a huge ``scaling``) must fail the merge, not finish it
    with exit status 0."""
    if inputs.recipe.check_finite and not _all_finite(merged):
        raise NonFiniteError(
            f"Merging tensor '{t.name}' with {inputs.spec.name} {inputs.params} produced NaN or Inf from finite "
            "inputs (an overflow of float32 or of the output dtype).", model="(merged output)", filename=t.name,
            tensor=t.name, hint="Lower 'scaling' or the expert weights.")


def _all_finite(values: torch.Tensor) -> bool:
    """Whether a tensor holds no NaN/Inf. A sum is ~10× cheaper than ``isfinite().all()`` and is finite
    whenever every entry is, so the exact check only runs to confirm a non-finite sum (NaN, Inf or an
    overflow of huge but finite values)."""
    return bool(torch.isfinite(values.sum())) or bool(torch.isfinite(values).all())


def global_thresholds(inputs: MergeInputs, options: MergeOptions) -> tuple[torch.Tensor, int]:
    """Exact per-expert global top-k thresholds of |τᵢ| over all mergeable entries (extra streaming passes).

    Returns the ``[n]`` thresholds and the bytes read to compute them."""
    fraction = inputs.params.global_topk()
    assert fraction is not None
    experts = range(len(inputs.experts) + 1)
    order = [(t.name, experts) for t in inputs.plan.tensors if t.mergeable]
    by_name = {t.name: t for t in inputs.plan.tensors}
    acc = GlobalTopK(len(inputs.experts), fraction)
    check_finite = inputs.recipe.check_finite
    for pass_index in range(acc.passes):
        stream, bar = _open_stream(inputs, order, options, f"top-k pass {pass_index + 1}/{acc.passes}")
        with bar, _compute_pool(inputs, options) as pool:
            for item in stream:
                t = by_name[item.name]
                flats = _flat_views(inputs, t, item.raw)
                pool.run(t.numel, partial(_count_chunk, inputs, t, flats, pool, acc, pass_index, check_finite))
        acc.finish_pass(pass_index)
    return acc.thresholds(), acc.passes * stream.bytes_to_read


def merge_pass(inputs: MergeInputs, out: Path, options: MergeOptions, done: Mapping[str, str],
               thresholds: torch.Tensor | None, statistics: StatisticsReader | None,
               on_shard_done: Callable[[str, str], None]) -> int:
    """Merge every tensor not in the finished shards ``done`` into ``out``; returns the input bytes read.

    ``on_shard_done(filename, checksum)`` is called as each shard is complete (the engine records it for
    resuming)."""
    plan = inputs.plan
    by_name = {t.name: t for t in plan.tensors}
    skip = {name for shard in plan.shards if shard.filename in done for name in shard.tensors}
    experts = tuple(range(1, len(inputs.experts) + 1))
    order = [(t.name, (0, *experts) if t.mergeable else (0,)) for t in plan.tensors if t.name not in skip]

    shard_writer = ShardWriter(out, plan.shards, by_name, on_shard_done=on_shard_done)
    for shard in plan.shards:
        if shard.filename in done:
            shard_writer.skip_shard(shard.filename)
        else:
            break
    writer = BackgroundWriter(shard_writer)
    stream, bar = _open_stream(inputs, order, options, f"merge ({inputs.spec.name})")
    weights = inputs.recipe.weights
    expert_ids = tuple(range(len(inputs.experts)))
    chunked = inputs.params.elementwise() and statistics is None
    try:
        with bar, _bar(options, len(order), "tensors written", unit="tensor") as written, \
                _compute_pool(inputs, options) if chunked else contextlib.nullcontext() as pool:
            for item in stream:
                t = by_name[item.name]
                if t.mergeable:
                    ctx = MergeContext(name=t.name, expert_ids=expert_ids, weights=weights,
                                       seed=inputs.recipe.seed, thresholds=thresholds,
                                       data=statistics.data_for(t.name) if statistics else {})
                    if pool is not None:
                        out_tensor = _merge_chunked(inputs, t, item.raw, ctx, pool)
                    else:
                        base, stack = _load_stack(inputs, t, item.raw, check_finite=inputs.recipe.check_finite)
                        if inputs.spec.inputs == "deltas":
                            stack.sub_(base)
                        merged = inputs.spec.fn(base, stack, inputs.params, ctx)
                        del stack
                        out_tensor = merged.to(DTYPES[t.out_dtype])
                        _check_output(inputs, t, out_tensor)
                elif t.out_dtype != t.in_dtype:
                    out_tensor = _to_tensor(item.raw[0], t.in_dtype, t.shape).to(DTYPES[t.out_dtype])
                else:
                    writer.write(t.name, item.raw[0])
                    written.update()
                    continue
                writer.write(t.name, out_tensor)
                written.update()
    finally:
        writer.close()
    return stream.bytes_to_read


def _merge_chunked(inputs: MergeInputs, t: TensorPlan, raw: Raw, ctx: MergeContext, pool: ChunkPool) -> torch.Tensor:
    """An elementwise method over the chunks of one tensor, written straight into the output dtype.

    Per-tensor top-k thresholds (``Params.tensor_topk()``) come first, from two counting passes over the
    same chunks (exact radix selection, as for the global ones), so no whole-tensor float32 stack is needed."""
    out = torch.empty(t.numel, dtype=DTYPES[t.out_dtype])
    flats = _flat_views(inputs, t, raw)
    check_finite, deltas = inputs.recipe.check_finite, inputs.spec.inputs == "deltas"
    fraction = inputs.params.tensor_topk()
    if fraction is not None:
        acc = GlobalTopK(len(inputs.experts), fraction)
        for pass_index in range(acc.passes):
            pool.run(t.numel, partial(_count_chunk, inputs, t, flats, pool, acc, pass_index, check_finite))
            acc.finish_pass(pass_index)
        ctx = dataclasses.replace(ctx, thresholds=acc.thresholds())

    def merge_chunk(start: int, end: int) -> None:
        base, stack = pool.buffers(end - start)
        _load_into(inputs, t, flats, base, stack, start, check_finite=check_finite)
        if deltas:
            stack.sub_(base)
        out[start:end].copy_(inputs.spec.fn(base, stack, inputs.params, ctx))
        _check_output(inputs, t, out[start:end])

    pool.run(t.numel, merge_chunk)
    return out.view(t.shape)
