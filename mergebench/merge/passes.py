"""The streaming passes of a merge: top-k bucket counting, then the merge pass that writes shards.

Each tensor of every model is converted to float32, handed to the method, cast to the output dtype,
checked to be finite and appended to the output shard. Peak memory is about
``(n_experts + 2) × largest tensor × 4 bytes`` plus the read-ahead budget, whatever the model size.
Elementwise methods (``Params.elementwise()``) and the counting passes instead work on cache-sized
chunks of every tensor on all cores (:mod:`mergebench.merge.compute`): the same float32 operations per
entry, so the same bytes, several times faster and without whole-tensor float32 stacks.

Global top-k thresholds (:mod:`mergebench.methods.topk`) need every entry counted before any entry is decided.
An elementwise method reads the inputs once all the same: a small sample (:mod:`mergebench.merge.sample`) bounds
each threshold to a run of buckets (:class:`Interval`), and the merge pass counts every task vector as it merges
it with thresholds that decide every entry outside those runs. The positions where some ``|τᵢ|`` lies inside its
run are kept aside (each model's raw value there: :class:`Records`, written beside their shard with the shard's
counts) and hold the base's value; once the pass is over, the counts give the exact buckets, the set-aside values
resolve an open one, and the merged entries are patched into the written output. Should an exact bucket lie
outside its run (the sample misled), the output is merged again, as below.

Otherwise (a method that is not elementwise, or a sample that leaves more positions undecided than fit in one
float32 stack of the largest tensor) a counting pass comes first. When a threshold is still open after it (its
``K``-th largest ``|τ|`` shares a bucket with other values), the merge pass sets the few positions the open
bucket touches aside in the same way, else a second counting pass resolves it (three reads in all).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any, Protocol

import torch
from safetensors import safe_open
from tqdm.auto import tqdm

from mergebench.errors import NonFiniteError
from mergebench.merge.compute import ChunkPool
from mergebench.merge.inputs import MergeInputs
from mergebench.merge.options import MergeOptions
from mergebench.merge.plan import TensorPlan
from mergebench.merge.sample import plan_slices, sample_task_vectors
from mergebench.methods import MergeContext
from mergebench.methods.kernels import STORED_WIDTHS, widen_task_vectors
from mergebench.methods.topk import GlobalTopK, Interval, Selection, select_buckets
from mergebench.stats import StatisticsReader
from mergebench.stream.format import DTYPE_NAMES, DTYPES, element_size, encode_header, tensor_view
from mergebench.stream.reader import TensorStream
from mergebench.stream.writer import BackgroundWriter, ShardWriter, patch_shard
from mergebench.work import atomic_file

logger = logging.getLogger(__name__)

Raw = tuple[memoryview | None, ...]
"""One tensor's bytes per model (base first), as :class:`TensorStream` yields them; ``None``: not requested."""
SET_ASIDE_FLOOR_BYTES = 64 << 20
"""Set-aside positions may always take this much memory (a small model's largest tensor may be smaller)."""
RECORDS_SUFFIX = ".deferred.safetensors"
"""Set-aside positions of a finished shard, ``.NAME.deferred.safetensors`` beside it until it is patched."""
HISTOGRAM_KEY = "__topk_histogram__"
"""The shard's top-k bucket counts in its records file, when the merge pass counts (a one-pass global top-k)."""


class SetAside(Protocol):
    """What the merge pass cannot decide yet (:class:`Selection`'s open buckets, an :class:`Interval`'s runs)."""

    def undecided(self, stack: torch.Tensor) -> torch.Tensor: ...


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


def _requested(raw: memoryview | None) -> memoryview:
    assert raw is not None  # only tensors requested from the stream for this model are converted
    return raw


def _flat_views(inputs: MergeInputs, t: TensorPlan, raw: Raw) -> list[torch.Tensor]:
    """Each model's raw bytes of ``t`` as a flat tensor in its stored dtype (zero-copy)."""
    return [tensor_view(_requested(r), t.in_dtype, (t.numel,)) for r in raw[: len(inputs.experts) + 1]]


def _load_into(inputs: MergeInputs, t: TensorPlan, flats: Sequence[torch.Tensor], base: torch.Tensor,
               stack: torch.Tensor, start: int, *, check_finite: bool) -> None:
    """Fill float32 ``base [m]`` and ``stack [n, m]`` with entries ``[start, start + m)`` of every model's
    tensor, checking that each model's entries are finite."""
    end = start + base.numel()
    base.copy_(flats[0][start:end])
    for i in range(len(inputs.experts)):
        stack[i].copy_(flats[i + 1][start:end])
    if check_finite and not (_all_finite(base) and _all_finite(stack)):
        _name_non_finite(inputs, t, [base, *stack])


def _name_non_finite(inputs: MergeInputs, t: TensorPlan, values: Sequence[torch.Tensor]) -> None:
    """Raise :class:`NonFiniteError` for the first model whose ``values`` (base first) hold NaN or Inf."""
    for model, part in zip([inputs.base, *inputs.experts], values, strict=True):
        if not _all_finite(part):
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
    """Feed the task vectors of one chunk to a top-k counting pass: widened straight from the stored values when
    their dtype is a truncated float32 (bfloat16, float32), else from float32 copies."""
    base, stack = pool.buffers(end - start)
    if DTYPES[t.in_dtype] in STORED_WIDTHS:
        parts = [f[start:end] for f in flats]
        if not widen_task_vectors(parts[0], parts[1:], base, stack) and check_finite:
            _name_non_finite(inputs, t, [part.float() for part in parts])
    else:
        _load_into(inputs, t, flats, base, stack, start, check_finite=check_finite)
        stack.sub_(base)
    acc.update(pass_index, stack)


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


# ------------------------------------------------------------------------------------------- set-aside positions

class Records:
    """Positions of one tensor set aside by the merge pass: flat indices and every model's raw value there.

    Chunks add to it from several threads; :meth:`tensors` returns them ordered by index."""

    def __init__(self) -> None:
        self._parts: list[tuple[torch.Tensor, torch.Tensor]] = []
        self._lock = threading.Lock()

    def add(self, index: torch.Tensor, values: torch.Tensor) -> None:
        with self._lock:
            self._parts.append((index, values))

    def tensors(self) -> tuple[torch.Tensor, torch.Tensor] | None:
        """``(index [k] int64, values [n + 1, k])`` sorted by index, or ``None`` when nothing was set aside."""
        if not self._parts:
            return None
        index = torch.cat([i for i, _ in self._parts])
        values = torch.cat([v for _, v in self._parts], dim=1)
        order = index.argsort()
        return index[order], values[:, order].contiguous()


def _record_bytes(inputs: MergeInputs) -> int:
    """Bytes of one set-aside position: its index and each model's value in the widest input dtype."""
    widest = max((element_size(t.in_dtype) for t in inputs.plan.tensors if t.mergeable), default=4)
    return 8 + (len(inputs.experts) + 1) * widest


def _set_aside_budget(inputs: MergeInputs) -> int:
    """Bytes set-aside positions may take: :data:`SET_ASIDE_FLOOR_BYTES`, or one float32 stack of the largest
    tensor (which the plan's memory bound counts, and an elementwise merge pass does not use)."""
    return max(SET_ASIDE_FLOOR_BYTES, (len(inputs.experts) + 1) * inputs.plan.largest_numel * 4)


def _can_set_aside(inputs: MergeInputs, selection: Selection, *, elementwise: bool) -> bool:
    """Whether the open buckets' positions may be set aside in the merge pass: the method merges each position on
    its own, and holding them fits :func:`_set_aside_budget`."""
    return elementwise and selection.pending * _record_bytes(inputs) <= _set_aside_budget(inputs)


def _as_float32(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Base ``[k]`` and experts ``[n, k]`` of set-aside raw values as float32 copies (never views of the records,
    which are read again: ``.float()`` of a float32 tensor is the tensor itself)."""
    return values[0].to(torch.float32, copy=True), values[1:].to(torch.float32, copy=True)


def _open_magnitudes(inputs: MergeInputs, selection: Selection, values: torch.Tensor) -> list[torch.Tensor]:
    """Each expert's ``|τᵢ|`` at set-aside positions (``values [n + 1, k]`` raw), restricted to the ones its open
    bucket holds (anything else is ignored by :meth:`Selection.resolve`; this keeps what is held small)."""
    base, stack = _as_float32(values)
    stack.sub_(base)
    inside = selection.undecided(stack) if selection.open_rows else torch.zeros(0, dtype=torch.bool)
    return [stack[i][inside] for i in range(stack.shape[0])]


def _merge_positions(inputs: MergeInputs, t: TensorPlan, values: torch.Tensor, ctx: MergeContext) -> torch.Tensor:
    """The method on set-aside positions (``values [n + 1, k]`` raw), in the output dtype, checked finite: the
    same float32 operations per entry as the merge pass, so the same bits. Only top-k methods set positions aside,
    and their entries do not depend on where they are (``ctx.offset`` is not used)."""
    base, stack = _as_float32(values)
    if inputs.spec.inputs == "deltas":
        stack.sub_(base)
    merged = inputs.spec.fn(base, stack, inputs.params, ctx).to(DTYPES[t.out_dtype])
    _check_output(inputs, t, merged)
    return merged


# --------------------------------------------------------------------------------------------------- the passes

def run_passes(inputs: MergeInputs, out: Path, options: MergeOptions, state: dict[str, Any],
               statistics: StatisticsReader | None, save_state: Callable[[], None]) -> int:
    """Everything between the statistics stage and the finished shards; returns the input bytes read.

    ``state`` is the engine's resume record of ``out`` (``shards``: verified shards and their checksums) and
    ``save_state`` writes it. Added here: ``thresholds`` (exact global top-k thresholds, once known),
    ``topk_interval`` (a sample's bounds while a one-pass merge counts) and ``topk_selection`` (the count's result
    while the merge pass sets positions aside), so an interrupted merge keeps its verified shards and never
    counts again.
    """
    bytes_read = 0
    fraction = inputs.params.global_topk()
    if fraction is not None and not state.keys() & {"thresholds", "topk_selection", "topk_interval"}:
        interval = None
        sample = options.topk_sample
        if sample is None:
            sample = not all(model.is_local for model in [inputs.base, *inputs.experts])
        if sample and _chunked(inputs, statistics):
            interval, sampled = _estimate_interval(inputs, options, fraction)
            bytes_read += sampled
        if interval is not None:
            state["topk_interval"] = interval.to_json()
        else:
            bytes_read += _count(inputs, options, state, statistics, fraction)
        save_state()
    _forget_unverified_records(inputs, out, state)
    if "topk_interval" in state:
        assert fraction is not None
        bytes_read += _one_pass(inputs, out, options, state, statistics, save_state, fraction)

    # exact floats survive JSON
    thresholds = torch.tensor(state["thresholds"], dtype=torch.float32) if "thresholds" in state else None
    selection = Selection.from_json(state["topk_selection"]) if "topk_selection" in state else None
    provisional = selection.provisional() if selection is not None else thresholds
    bytes_read += merge_pass(inputs, out, options, dict(state["shards"]), provisional, statistics,
                             _recorder(state, save_state), set_aside=selection)
    if selection is not None:
        thresholds = _resolve(inputs, out, selection)
        state["thresholds"] = thresholds.tolist()
        del state["topk_selection"]
        save_state()
    if thresholds is not None:
        _patch_shards(inputs, out, options, thresholds, state, save_state)
    return bytes_read


def _recorder(state: dict[str, Any], save_state: Callable[[], None]) -> Callable[[str, str], None]:
    """The merge pass's ``on_shard_done``: a finished shard and its checksum are saved, so they survive an
    interruption."""

    def shard_done(filename: str, checksum: str) -> None:
        state["shards"][filename] = checksum
        save_state()

    return shard_done


def _count(inputs: MergeInputs, options: MergeOptions, state: dict[str, Any], statistics: StatisticsReader | None,
           fraction: float, selection: Selection | None = None) -> int:
    """Find where the global top-k thresholds lie — from a counting pass, or the given ``selection`` of a count
    already made — and record in ``state`` either the ``thresholds`` (exact) or the ``topk_selection`` whose open
    buckets the merge pass will set aside; when those are too many to hold, count their low bits in one more
    pass. Returns the bytes read."""
    acc = GlobalTopK(len(inputs.experts), fraction)
    bytes_read = 0
    counted_here = selection is None
    if selection is None:
        bytes_read += _counting_pass(inputs, options, acc, 0)
        selection = acc.selection()
    if selection.is_exact:
        state["thresholds"] = selection.thresholds().tolist()
    elif _can_set_aside(inputs, selection, elementwise=_chunked(inputs, statistics)):
        state["topk_selection"] = selection.to_json()
        logger.info("Top-k: thresholds of experts %s are open; %d entries set aside in the merge pass.",
                    selection.open_rows, selection.pending)
    else:
        if not counted_here:  # the low bits need this accumulator's own bucket pass
            bytes_read += _counting_pass(inputs, options, acc, 0)
        bytes_read += _counting_pass(inputs, options, acc, 1)
        state["thresholds"] = acc.thresholds().tolist()
    return bytes_read


def _estimate_interval(inputs: MergeInputs, options: MergeOptions, fraction: float) -> tuple[Interval | None, int]:
    """Bounds of each global threshold from a sample of the task vectors (:mod:`mergebench.merge.sample`), or
    ``None`` when the positions they leave undecided in one output shard (held in memory until the shard is
    written) would not fit :func:`_set_aside_budget`; and the bytes read."""
    mergeable = [t for t in inputs.plan.tensors if t.mergeable]
    slices = plan_slices(mergeable)
    sample, sampled = sample_task_vectors(inputs, slices)
    interval = Interval.estimate(sample, fraction, [id(s.tensor) for s in slices], [s.represents for s in slices])
    if interval is None:
        return None, sampled
    undecided: dict[str, list[float]] = {}  # tensor → [positions undecided in its slices, positions sampled]
    for piece, part in zip(slices, sample, strict=True):
        counts = undecided.setdefault(piece.tensor.name, [0.0, 0.0])
        counts[0] += float(interval.undecided(part).sum())
        counts[1] += part.shape[1]
    by_name = {t.name: t for t in mergeable}
    per_shard = [sum(by_name[name].numel * undecided[name][0] / undecided[name][1]
                     for name in shard.tensors if name in undecided) for shard in inputs.plan.shards]
    expected = max(per_shard) * _record_bytes(inputs)
    share = sum(per_shard) / sum(t.numel for t in mergeable)
    if expected > _set_aside_budget(inputs):
        logger.info("Top-k: a sample puts %.1f%% of the positions near the thresholds (%.0f MB to set aside in one "
                    "output shard, more than %.0f MB): counting first.", 100 * share, expected / 1e6,
                    _set_aside_budget(inputs) / 1e6)
        return None, sampled
    logger.info("Top-k: one pass; a sample of %d entries per expert bounds the thresholds, about %.2f%% of the "
                "positions set aside.", sum(part.shape[1] for part in sample), 100 * share)
    return interval, sampled


def _one_pass(inputs: MergeInputs, out: Path, options: MergeOptions, state: dict[str, Any],
              statistics: StatisticsReader | None, save_state: Callable[[], None], fraction: float) -> int:
    """Merge with an :class:`Interval`'s provisional thresholds while counting, then settle the thresholds.

    Each shard's bucket counts are saved with its set-aside positions, so a resumed merge adds up every shard's.
    When the exact bucket of some expert lies outside its run (the sample misled), the pass is thrown away and
    the merge goes on as after a counting pass: the shards are merged again (two reads in all, as without a
    sample)."""
    interval = Interval.from_json(state["topk_interval"])
    bytes_read = merge_pass(inputs, out, options, dict(state["shards"]), interval.provisional(), statistics,
                            _recorder(state, save_state), set_aside=interval,
                            counts=GlobalTopK(len(inputs.experts), fraction))
    hist = _saved_histograms(inputs, out)
    total = sum(t.numel for t in inputs.plan.tensors if t.mergeable)
    if not torch.equal(hist.sum(1), torch.full((len(inputs.experts),), total, dtype=torch.int64)):
        raise RuntimeError(f"Top-k: the shards' counts add up to {hist.sum(1).tolist()} entries per expert, not "
                           f"{total}; the inputs changed while merging.")
    selection = select_buckets(hist, fraction, total)
    del state["topk_interval"]
    if interval.covers(selection):
        state["thresholds"] = (selection.thresholds() if selection.is_exact
                               else _resolve(inputs, out, selection)).tolist()
    else:
        logger.warning("Top-k: the thresholds lie outside the bounds the sample gave (buckets %s, bounds %s to %s); "
                       "merging again with the exact counts.", selection.bucket, interval.first, interval.last)
        state["shards"] = {}
        _forget_unverified_records(inputs, out, state)
        bytes_read += _count(inputs, options, state, statistics, fraction, selection)
    save_state()
    return bytes_read


def _chunked(inputs: MergeInputs, statistics: StatisticsReader | None) -> bool:
    return inputs.params.elementwise() and statistics is None


def _counting_pass(inputs: MergeInputs, options: MergeOptions, acc: GlobalTopK, pass_index: int) -> int:
    """One streaming pass over every mergeable tensor feeding ``acc``; returns the bytes read. Inputs are checked
    to be finite on the first pass."""
    experts = range(len(inputs.experts) + 1)
    order = [(t.name, experts) for t in inputs.plan.tensors if t.mergeable]
    by_name = {t.name: t for t in inputs.plan.tensors}
    check_finite = inputs.recipe.check_finite and pass_index == 0
    desc = "top-k counts" if pass_index == 0 else "top-k counts (open buckets)"
    stream, bar = _open_stream(inputs, order, options, desc)
    with bar, _compute_pool(inputs, options) as pool:
        for item in stream:
            t = by_name[item.name]
            flats = _flat_views(inputs, t, item.raw)
            pool.run(t.numel, partial(_count_chunk, inputs, t, flats, pool, acc, pass_index, check_finite))
    acc.finish_pass(pass_index)
    return stream.bytes_to_read


def merge_pass(inputs: MergeInputs, out: Path, options: MergeOptions, done: Mapping[str, str],
               thresholds: torch.Tensor | None, statistics: StatisticsReader | None,
               on_shard_done: Callable[[str, str], None], *, set_aside: SetAside | None = None,
               counts: GlobalTopK | None = None) -> int:
    """Merge every tensor not in the finished shards ``done`` into ``out``; returns the input bytes read.

    ``on_shard_done(filename, checksum)`` is called as each shard is complete (the engine records it for
    resuming). With ``set_aside`` (an open :class:`Selection`, or an :class:`Interval`), ``thresholds`` are its
    provisional ones and the positions they cannot decide are set aside: each shard's records are written next
    to it before the shard is complete (:data:`RECORDS_SUFFIX`), and its entries there hold the base's value
    until patched. With ``counts``, every task vector is also counted (pass 0), and each shard's records hold
    its counts (:data:`HISTOGRAM_KEY`)."""
    plan = inputs.plan
    by_name = {t.name: t for t in plan.tensors}
    skip = {name for shard in plan.shards if shard.filename in done for name in shard.tensors}
    experts = tuple(range(1, len(inputs.experts) + 1))
    order = [(t.name, (0, *experts) if t.mergeable else (0,)) for t in plan.tensors if t.name not in skip]
    last_of = {shard.tensors[-1]: shard.filename for shard in plan.shards}

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
    chunked = _chunked(inputs, statistics)
    if (set_aside is not None or counts is not None) and not chunked:
        raise ValueError("set-aside positions and counting need an elementwise method without statistics")
    pending: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # set aside in the shard being written
    counted: torch.Tensor | int = 0  # counts of the shards before the one being written
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
                        records = Records() if set_aside is not None else None
                        payload: torch.Tensor | memoryview = _merge_chunked(inputs, t, item.raw, ctx, pool,
                                                                            set_aside, records, counts)
                        kept = records.tensors() if records is not None else None
                        if kept is not None:
                            pending[t.name] = kept
                    else:
                        base, stack = _load_stack(inputs, t, item.raw, check_finite=inputs.recipe.check_finite)
                        if inputs.spec.inputs == "deltas":
                            stack.sub_(base)
                        merged = inputs.spec.fn(base, stack, inputs.params, ctx)
                        del stack
                        payload = merged.to(DTYPES[t.out_dtype])
                        _check_output(inputs, t, payload)
                elif t.out_dtype != t.in_dtype:
                    payload = tensor_view(_requested(item.raw[0]), t.in_dtype, t.shape).to(DTYPES[t.out_dtype])
                else:
                    payload = _requested(item.raw[0])
                if t.name in last_of and (pending or counts is not None):  # before the shard is complete
                    histogram = None
                    if counts is not None:
                        now = counts.histogram()
                        histogram, counted = now - counted, now
                    _save_records(out, last_of[t.name], pending, histogram)
                    pending = {}
                writer.write(t.name, payload)
                written.update()
    finally:
        writer.close()
    return stream.bytes_to_read


def _merge_chunked(inputs: MergeInputs, t: TensorPlan, raw: Raw, ctx: MergeContext, pool: ChunkPool,
                   set_aside: SetAside | None, records: Records | None, counts: GlobalTopK | None) -> torch.Tensor:
    """An elementwise method over the chunks of one tensor, written straight into the output dtype.

    With per-tensor top-k (``Params.tensor_topk()``) a counting pass over the same chunks comes first (the only
    finiteness check of the inputs); its open buckets, if any, are resolved from the positions set aside while
    merging, which are then merged again in place. With a global ``set_aside``, the positions it cannot decide
    go to ``records`` and hold the base's value; with ``counts``, the task vectors are counted as they are
    merged."""
    out = torch.empty(t.numel, dtype=DTYPES[t.out_dtype])
    flats = _flat_views(inputs, t, raw)
    check_finite = inputs.recipe.check_finite
    fraction = inputs.params.tensor_topk()
    local: Records | None = None
    if fraction is not None:
        acc = GlobalTopK(len(inputs.experts), fraction)
        pool.run(t.numel, partial(_count_chunk, inputs, t, flats, pool, acc, 0, check_finite))
        acc.finish_pass(0)
        check_finite = False  # the same bytes were just checked
        selection = acc.selection()
        set_aside = None
        if selection.is_exact:
            ctx = dataclasses.replace(ctx, thresholds=selection.thresholds())
        elif _can_set_aside(inputs, selection, elementwise=True):
            ctx, records = dataclasses.replace(ctx, thresholds=selection.provisional()), Records()
            set_aside, local = selection, records
        else:
            pool.run(t.numel, partial(_count_chunk, inputs, t, flats, pool, acc, 1, False))
            acc.finish_pass(1)
            ctx = dataclasses.replace(ctx, thresholds=acc.thresholds())
    pool.run(t.numel, partial(_merge_chunk, inputs, t, flats, pool, ctx, out, check_finite, set_aside, records,
                              counts))
    if local is not None and (kept := local.tensors()) is not None:
        index, values = kept
        exact = selection.resolve(_open_magnitudes(inputs, selection, values))
        out[index] = _merge_positions(inputs, t, values, dataclasses.replace(ctx, thresholds=exact))
    return out.view(t.shape)


def _merge_chunk(inputs: MergeInputs, t: TensorPlan, flats: Sequence[torch.Tensor], pool: ChunkPool,
                 ctx: MergeContext, out: torch.Tensor, check_finite: bool, set_aside: SetAside | None,
                 records: Records | None, counts: GlobalTopK | None, start: int, end: int) -> None:
    base, stack = pool.buffers(end - start)
    _load_into(inputs, t, flats, base, stack, start, check_finite=check_finite)
    if inputs.spec.inputs == "deltas":
        stack.sub_(base)
    if counts is not None:
        counts.update(0, stack)
    aside = set_aside.undecided(stack).nonzero().squeeze(1) if records is not None and set_aside else None
    target = out[start:end]
    target.copy_(inputs.spec.fn(base, stack, inputs.params, dataclasses.replace(ctx, offset=start)))
    if aside is not None and aside.numel():
        at = aside + start
        target[aside] = flats[0][at].to(target.dtype)  # a finite placeholder until the exact merge is patched in
        assert records is not None
        records.add(at, torch.stack([f[at] for f in flats]))
    _check_output(inputs, t, target)


# ---------------------------------------------------------------------------------------- records and patching

def _records_path(out: Path, filename: str) -> Path:
    return out / f".{filename}{RECORDS_SUFFIX}"


def _save_records(out: Path, filename: str, pending: Mapping[str, tuple[torch.Tensor, torch.Tensor]],
                  histogram: torch.Tensor | None = None) -> None:
    """Write a shard's set-aside positions and counts (atomically, before the shard is recorded as complete),
    tensor by tensor from their own memory (``save_file`` would first copy each into a bytes object)."""
    tensors = {} if histogram is None else {HISTOGRAM_KEY: histogram}
    for name, (index, values) in pending.items():
        tensors[f"{name}::index"] = index
        tensors[f"{name}::values"] = values
    header = encode_header([(key, DTYPE_NAMES[t.dtype], tuple(t.shape)) for key, t in tensors.items()])
    with atomic_file(_records_path(out, filename)) as tmp, open(tmp, "wb") as f:
        f.write(header)
        for t in tensors.values():
            f.write(t.contiguous().view(torch.uint8).numpy().data)


def _load_records(path: Path) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(tensor name, index, values)`` for each tensor of a records file."""
    with safe_open(str(path), framework="pt") as f:
        keys: list[str] = f.keys()
        names = sorted({key.rpartition("::")[0] for key in keys if key != HISTOGRAM_KEY})
        for name in names:
            yield name, f.get_tensor(f"{name}::index"), f.get_tensor(f"{name}::values")


def _forget_unverified_records(inputs: MergeInputs, out: Path, state: Mapping[str, Any]) -> None:
    """Records of a shard that is not verified belong to a write that was interrupted: it will be merged again."""
    for shard in inputs.plan.shards:
        if shard.filename not in state["shards"]:
            _records_path(out, shard.filename).unlink(missing_ok=True)


def _saved_histograms(inputs: MergeInputs, out: Path) -> torch.Tensor:
    """``[n, BUCKETS]``: the counts of every shard, added up from their records files."""
    total: torch.Tensor | None = None
    for shard in inputs.plan.shards:
        with safe_open(str(_records_path(out, shard.filename)), framework="pt") as f:
            hist = f.get_tensor(HISTOGRAM_KEY)
        total = hist if total is None else total.add_(hist)
    assert total is not None  # a plan has at least one shard
    return total


def _resolve(inputs: MergeInputs, out: Path, selection: Selection) -> torch.Tensor:
    """Exact thresholds from every shard's records (each expert's ``|τ|`` in its open bucket)."""
    found: list[list[torch.Tensor]] = [[] for _ in inputs.experts]
    for shard in inputs.plan.shards:
        path = _records_path(out, shard.filename)
        if path.exists():
            for _, _, values in _load_records(path):
                for i, magnitudes in enumerate(_open_magnitudes(inputs, selection, values)):
                    found[i].append(magnitudes)
    return selection.resolve([torch.cat(parts) if parts else torch.zeros(0) for parts in found])


def _patch_shards(inputs: MergeInputs, out: Path, options: MergeOptions, thresholds: torch.Tensor,
                  state: dict[str, Any], save_state: Callable[[], None]) -> None:
    """Merge the set-aside positions with the exact thresholds into their shards, one shard at a time (each
    recorded with its new checksum before its records are deleted, so an interruption keeps a consistent state)."""
    by_name = {t.name: t for t in inputs.plan.tensors}
    todo = [s.filename for s in inputs.plan.shards if _records_path(out, s.filename).exists()]
    expert_ids = tuple(range(len(inputs.experts)))
    for filename in tqdm(todo, desc="patch set-aside entries", unit="shard", disable=not options.progress,
                         leave=False):
        path = _records_path(out, filename)
        patches = {}
        for name, index, values in _load_records(path):
            t = by_name[name]
            ctx = MergeContext(name=name, expert_ids=expert_ids, weights=inputs.recipe.weights,
                               seed=inputs.recipe.seed, thresholds=thresholds)
            patches[name] = (index, _merge_positions(inputs, t, values, ctx))
        if patches:  # else only counts were kept: the shard is final as written
            state["shards"][filename] = patch_shard(out / filename, patches)
            save_state()
        path.unlink()
