"""The streaming passes of a merge: top-k bucket counting, then the merge pass that writes shards.

Each tensor of every model is converted to float32, handed to the method, cast to the output dtype,
checked to be finite and appended to the output shard. Peak memory is about
``(n_experts + 2) × largest tensor × 4 bytes`` plus the read-ahead budget, whatever the model size.
Elementwise methods (``Params.elementwise()``) and the counting passes instead work on cache-sized
chunks of every tensor on all cores (:mod:`mergebench.merge.compute`): the same float32 operations per
entry, so the same bytes, several times faster and without whole-tensor float32 stacks.

Top-k thresholds (:mod:`mergebench.methods.topk`) take one counting pass. When a threshold is still open
after it (its ``K``-th largest ``|τ|`` shares a bucket with other values), an elementwise method does not
read the inputs a third time: the merge pass merges every position the open bucket does not touch, keeps
the few it does aside (each model's raw value there: :class:`Records`), writes the base's value in their
place, and once the pass is over, resolves the exact thresholds from those values and patches the merged
entries into the written output. A method that is not elementwise, or a set-aside larger than one float32
stack of the largest tensor, falls back to a second counting pass (three reads of the inputs in all).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import threading
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from functools import partial
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file
from tqdm.auto import tqdm

from mergebench.errors import NonFiniteError
from mergebench.merge.compute import ChunkPool
from mergebench.merge.inputs import MergeInputs
from mergebench.merge.options import MergeOptions
from mergebench.merge.plan import TensorPlan
from mergebench.methods import MergeContext
from mergebench.methods.topk import GlobalTopK, Selection
from mergebench.stats import StatisticsReader
from mergebench.stream.format import DTYPES, element_size
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


def _can_set_aside(inputs: MergeInputs, selection: Selection, *, elementwise: bool) -> bool:
    """Whether the open buckets' positions may be set aside in the merge pass: the method merges each position on
    its own, and holding them takes at most :data:`SET_ASIDE_FLOOR_BYTES` or one float32 stack of the largest
    tensor (which the plan's memory bound counts, and an elementwise merge pass does not use)."""
    budget = max(SET_ASIDE_FLOOR_BYTES, (len(inputs.experts) + 1) * inputs.plan.largest_numel * 4)
    return elementwise and selection.pending * _record_bytes(inputs) <= budget


def _as_float32(values: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Base ``[k]`` and experts ``[n, k]`` of set-aside raw values as float32 copies (never views of the records,
    which are read again: ``.float()`` of a float32 tensor is the tensor itself)."""
    return values[0].to(torch.float32, copy=True), values[1:].to(torch.float32, copy=True)


def _open_magnitudes(inputs: MergeInputs, selection: Selection, values: torch.Tensor) -> list[torch.Tensor]:
    """Each expert's ``|τᵢ|`` at set-aside positions (``values [n + 1, k]`` raw), restricted to the ones its open
    bucket holds (anything else is ignored by :meth:`Selection.resolve`; this keeps what is held small)."""
    base, stack = _as_float32(values)
    stack.sub_(base)
    inside = selection.in_open_bucket(stack) if selection.open_rows else torch.zeros(0, dtype=torch.bool)
    return [stack[i][inside] for i in range(stack.shape[0])]


def _merge_positions(inputs: MergeInputs, t: TensorPlan, values: torch.Tensor, ctx: MergeContext) -> torch.Tensor:
    """The method on set-aside positions (``values [n + 1, k]`` raw), in the output dtype, checked finite: the
    same float32 operations per entry as the merge pass, so the same bits."""
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
    ``save_state`` writes it. Added here: ``thresholds`` (exact global top-k thresholds, once known) and
    ``topk_selection`` (the counting pass's result while the merge pass sets positions aside), so an interrupted
    merge keeps its verified shards and never counts again.
    """
    bytes_read = 0
    thresholds: torch.Tensor | None = None
    selection: Selection | None = None
    fraction = inputs.params.global_topk()
    if "thresholds" in state:  # exact floats survive JSON
        thresholds = torch.tensor(state["thresholds"], dtype=torch.float32)
    elif "topk_selection" in state:
        selection = Selection.from_json(state["topk_selection"])
    elif fraction is not None:
        acc = GlobalTopK(len(inputs.experts), fraction)
        bytes_read += _counting_pass(inputs, options, acc, 0)
        selection = acc.selection()
        if selection.is_exact:
            thresholds, selection = selection.thresholds(), None
        elif not _can_set_aside(inputs, selection, elementwise=_chunked(inputs, statistics)):
            bytes_read += _counting_pass(inputs, options, acc, 1)
            thresholds, selection = acc.thresholds(), None
        if thresholds is not None:
            state["thresholds"] = thresholds.tolist()
        else:
            assert selection is not None
            state["topk_selection"] = selection.to_json()
            logger.info("Top-k: thresholds of experts %s are open; %d entries set aside in the merge pass.",
                        selection.open_rows, selection.pending)
        save_state()
    _forget_unverified_records(inputs, out, state)

    def shard_done(filename: str, checksum: str) -> None:  # a finished shard survives an interruption
        state["shards"][filename] = checksum
        save_state()

    provisional = selection.provisional() if selection is not None else thresholds
    bytes_read += merge_pass(inputs, out, options, dict(state["shards"]), provisional, statistics, shard_done,
                             selection=selection)
    if selection is not None:
        thresholds = _resolve(inputs, out, selection)
        state["thresholds"] = thresholds.tolist()
        save_state()
    if thresholds is not None:
        _patch_shards(inputs, out, options, thresholds, state, save_state)
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
               on_shard_done: Callable[[str, str], None], *, selection: Selection | None = None) -> int:
    """Merge every tensor not in the finished shards ``done`` into ``out``; returns the input bytes read.

    ``on_shard_done(filename, checksum)`` is called as each shard is complete (the engine records it for
    resuming). With a ``selection`` whose buckets are open, ``thresholds`` are its provisional ones and the
    positions they cannot decide are set aside: each shard's records are written next to it before the shard
    is complete (:data:`RECORDS_SUFFIX`), and its entries there hold the base's value until patched."""
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
    open_selection = selection if selection is not None and not selection.is_exact else None
    pending: dict[str, tuple[torch.Tensor, torch.Tensor]] = {}  # set aside in the shard being written
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
                        records = Records() if open_selection is not None else None
                        payload: torch.Tensor | memoryview = _merge_chunked(inputs, t, item.raw, ctx, pool,
                                                                            open_selection, records)
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
                    payload = _to_tensor(item.raw[0], t.in_dtype, t.shape).to(DTYPES[t.out_dtype])
                else:
                    assert item.raw[0] is not None
                    payload = item.raw[0]
                if t.name in last_of and pending:  # before the shard can be recorded as complete
                    _save_records(out, last_of[t.name], pending)
                    pending = {}
                writer.write(t.name, payload)
                written.update()
    finally:
        writer.close()
    return stream.bytes_to_read


def _merge_chunked(inputs: MergeInputs, t: TensorPlan, raw: Raw, ctx: MergeContext, pool: ChunkPool,
                   selection: Selection | None, records: Records | None) -> torch.Tensor:
    """An elementwise method over the chunks of one tensor, written straight into the output dtype.

    With per-tensor top-k (``Params.tensor_topk()``) a counting pass over the same chunks comes first (the only
    finiteness check of the inputs); its open buckets, if any, are resolved from the positions set aside while
    merging, which are then merged again in place. With an open global ``selection``, the positions it cannot
    decide go to ``records`` and hold the base's value."""
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
        if selection.is_exact:
            ctx, selection = dataclasses.replace(ctx, thresholds=selection.thresholds()), None
        elif _can_set_aside(inputs, selection, elementwise=True):
            ctx, records = dataclasses.replace(ctx, thresholds=selection.provisional()), Records()
            local = records
        else:
            pool.run(t.numel, partial(_count_chunk, inputs, t, flats, pool, acc, 1, False))
            acc.finish_pass(1)
            ctx, selection = dataclasses.replace(ctx, thresholds=acc.thresholds()), None
    pool.run(t.numel, partial(_merge_chunk, inputs, t, flats, pool, ctx, out, check_finite, selection, records))
    if local is not None and (kept := local.tensors()) is not None:
        assert selection is not None
        index, values = kept
        exact = selection.resolve(_open_magnitudes(inputs, selection, values))
        out[index] = _merge_positions(inputs, t, values, dataclasses.replace(ctx, thresholds=exact))
    return out.view(t.shape)


def _merge_chunk(inputs: MergeInputs, t: TensorPlan, flats: Sequence[torch.Tensor], pool: ChunkPool,
                 ctx: MergeContext, out: torch.Tensor, check_finite: bool, selection: Selection | None,
                 records: Records | None, start: int, end: int) -> None:
    base, stack = pool.buffers(end - start)
    _load_into(inputs, t, flats, base, stack, start, check_finite=check_finite)
    if inputs.spec.inputs == "deltas":
        stack.sub_(base)
    aside = selection.in_open_bucket(stack).nonzero().squeeze(1) if records is not None and selection else None
    target = out[start:end]
    target.copy_(inputs.spec.fn(base, stack, inputs.params, ctx))
    if aside is not None and aside.numel():
        at = aside + start
        target[aside] = flats[0][at].to(target.dtype)  # a finite placeholder until the exact merge is patched in
        assert records is not None
        records.add(at, torch.stack([f[at] for f in flats]))
    _check_output(inputs, t, target)


# ---------------------------------------------------------------------------------------- records and patching

def _records_path(out: Path, filename: str) -> Path:
    return out / f".{filename}{RECORDS_SUFFIX}"


def _save_records(out: Path, filename: str, pending: Mapping[str, tuple[torch.Tensor, torch.Tensor]]) -> None:
    """Write a shard's set-aside positions (atomically, before the shard is recorded as complete)."""
    tensors = {}
    for name, (index, values) in pending.items():
        tensors[f"{name}::index"] = index
        tensors[f"{name}::values"] = values
    with atomic_file(_records_path(out, filename)) as tmp:
        save_file(tensors, str(tmp))


def _load_records(path: Path) -> Iterator[tuple[str, torch.Tensor, torch.Tensor]]:
    """``(tensor name, index, values)`` for each tensor of a records file."""
    with safe_open(str(path), framework="pt") as f:
        keys: list[str] = f.keys()
        names = sorted({key.rpartition("::")[0] for key in keys})
        for name in names:
            yield name, f.get_tensor(f"{name}::index"), f.get_tensor(f"{name}::values")


def _forget_unverified_records(inputs: MergeInputs, out: Path, state: Mapping[str, Any]) -> None:
    """Records of a shard that is not verified belong to a write that was interrupted: it will be merged again."""
    for shard in inputs.plan.shards:
        if shard.filename not in state["shards"]:
            _records_path(out, shard.filename).unlink(missing_ok=True)


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
        state["shards"][filename] = patch_shard(out / filename, patches)
        save_state()
        path.unlink()
