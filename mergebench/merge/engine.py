"""The streaming merge: resolve → plan → (statistics passes) → merge pass → write → card → rename.

Inputs are read tensor by tensor (positional reads locally, HTTP Range requests on the Hub); each tensor
of every model is converted to float32 once, handed to the method, cast to the output dtype and
appended to the output shard. Peak memory is about ``(n_experts + 2) × largest tensor × 4 bytes`` plus
the read-ahead budget, whatever the model size. Elementwise methods (``Params.elementwise()``) and the
top-k counting passes instead work on cache-sized chunks of every tensor on all cores
(:mod:`mergebench.merge.compute`): the same float32 operations per entry, so the same bytes, several times
faster and without whole-tensor float32 stacks. Output goes to a hidden ``.NAME.partial`` folder next
to the destination and is renamed into place only when complete; ``resume=True`` keeps the verified
shards of an interrupted run.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import json
import logging
import os
import shutil
import time
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from mergebench import methods
from mergebench.errors import MergeBenchError, NonFiniteError, OutputExistsError, StatisticsError
from mergebench.hub.models import ResolvedModel, resolve
from mergebench.hub.refs import Pin, Ref, public_path
from mergebench.merge.card import write_model_card
from mergebench.merge.compute import CHUNK_ENTRIES, ChunkPool
from mergebench.merge.memory import peak_rss_bytes, reset_peak_rss
from mergebench.merge.plan import DEFAULT_SHARD_SIZE, MergePlan, TensorPlan, build_plan
from mergebench.merge.recipe import MergeRecipe
from mergebench.merge.validation import load_validation_rows, pin_validation_source
from mergebench.methods import MergeContext, MethodSpec, Params
from mergebench.methods.topk import GlobalTopK
from mergebench.paths import cache_root
from mergebench.stats import ModelSource, StatisticsReader, StatsOptions, run_stage
from mergebench.stream.format import DTYPES
from mergebench.stream.reader import TensorStream
from mergebench.stream.writer import BackgroundWriter, ShardWriter, checksum_file, write_index
from mergebench.work import folder_fingerprint, write_atomic

logger = logging.getLogger(__name__)

Raw = tuple[memoryview | None, ...]
"""One tensor's bytes per model (base first), as :class:`TensorStream` yields them; ``None``: not requested."""

AUX_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "tokenizer.model", "chat_template.jinja", "chat_template.json",
    "vocab.json", "merges.txt", "added_tokens.json",
)
"""Files copied from the tokenizer source (the base by default) into the merged model."""
PROGRESS_FILE = ".mergebench_progress.json"
RECIPE_FILE = "mergebench_config.yaml"


@dataclass(frozen=True)
class MergeOptions:
    """How to run a merge (not what to merge: that is the recipe)."""

    threads: int = 4
    """Read threads (network and page-in overlap compute)."""
    compute_threads: int | None = None
    """Threads for the merge arithmetic of elementwise methods and the top-k passes (``None``: every core)."""
    compute_chunk: int = CHUNK_ENTRIES
    """Entries per model merged at once by those threads (results do not depend on it)."""
    shard_size: int = DEFAULT_SHARD_SIZE
    """Largest output shard in bytes: 5 GB, decimal as on the Hub (``mergebench merge --shard-size 5GB``)."""
    read_ahead_bytes: int = 512 << 20
    """Read-ahead budget in bytes, 512 MiB (binary; not a CLI option): tensors read but not yet merged."""
    chunk_bytes: int = 64 << 20
    """Largest coalesced read in bytes, 64 MiB (binary; not a CLI option): one HTTP Range request."""
    resume: bool = False
    progress: bool = True
    stats_device: str = "cpu"
    """Device for the statistics stage of data-dependent methods (``"cuda"`` on a GPU machine)."""
    cache_dir: Path | None = None
    """Root of the statistics cache (default: ``$MERGEBENCH_CACHE`` or ``~/.cache/mergebench``)."""


@dataclass(frozen=True)
class MergeResult:
    out_dir: Path
    recipe: MergeRecipe
    """The recipe with every Hub reference pinned to its commit sha."""
    plan: MergePlan
    seconds: float
    peak_rss_bytes: int
    bytes_read: int
    """Input bytes read by every pass (statistics passes included)."""
    stats_seconds: float = 0.0
    """Wall time of the data statistics stage (included in ``seconds``; zero when cached or not needed)."""
    resumed_shards: tuple[str, ...] = ()
    commit_url: str | None = None


@dataclass
class _Inputs:
    recipe: MergeRecipe
    spec: MethodSpec[Any]
    params: Params
    base: ResolvedModel
    experts: list[ResolvedModel]
    plan: MergePlan
    pinned: MergeRecipe
    tokenizer_source: ResolvedModel
    stage: str | None
    """The statistics stage the method needs with these parameters, or ``None``."""
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def load_recipe(config: MergeRecipe | Path | str | dict[str, Any]) -> tuple[MergeRecipe, Path | None]:
    """A recipe from an object, a dict or a YAML path; also returns the folder relative paths start from."""
    if isinstance(config, MergeRecipe):
        return config, None
    if isinstance(config, dict):
        return MergeRecipe.from_dict(config), None
    path = Path(config)
    return MergeRecipe.from_yaml(path), path.parent


def prepare(config: MergeRecipe | Path | str | dict[str, Any], *, shard_size: int = DEFAULT_SHARD_SIZE,
            read_ahead_bytes: int = 512 << 20) -> _Inputs:
    """Validate the recipe, resolve every model to a commit and plan the merge, reading headers only."""
    recipe, base_dir = load_recipe(config)
    spec = methods.get(recipe.method)
    params = spec.make_params(recipe.method_parameters, weights=recipe.weights)
    stage = spec.stats_stage(params)
    data = _pin_data(recipe, stage, base_dir) if stage else {}
    rows = {domain: load_validation_rows(source) for domain, source in data.items()}
    refs = [Ref.parse(m.model, base_dir=base_dir) for m in recipe.models]
    base_ref = Ref.parse(recipe.base_model, base_dir=base_dir)
    base = resolve(base_ref)
    experts = [resolve(r) for r in refs]
    tok = recipe.tokenizer_source
    tokenizer_source = resolve(Ref.parse(tok, base_dir=base_dir)) if tok else base
    plan = build_plan(base, experts, dtype=recipe.dtype, merge_embeddings=recipe.merge_embeddings,
                      shard_size=shard_size, read_ahead_bytes=read_ahead_bytes)
    pinned = recipe.model_copy(update={
        "base_model": _pinned(base),
        "models": [m.model_copy(update={"model": _pinned(e)}) for m, e in zip(recipe.models, experts, strict=True)],
        "tokenizer_source": _pinned(tokenizer_source) if tok else None,
        "data": {**recipe.data, **{d: p.identity for d, p in data.items() if p.ref.repo_id}},
    })
    return _Inputs(recipe, spec, params, base, experts, plan, pinned, tokenizer_source, stage, rows)


def _pin_data(recipe: MergeRecipe, stage: str, base_dir: Path | None) -> dict[str, Pin]:
    """Each domain's validation source for a statistics stage, pinned and checked before any model is read."""
    missing = [m.model for m in recipe.models if not m.domain]
    if missing:
        raise StatisticsError(
            f"Method '{recipe.method}' pairs each expert with its own domain's data, but {missing} "
            "have no 'domain:'.", hint="Add 'domain: <key>' to every entry of 'models:'.")
    domains = sorted({m.domain for m in recipe.models if m.domain})
    absent = [d for d in domains if d not in recipe.data]
    if absent:
        raise StatisticsError(
            f"Method '{recipe.method}' ({stage} statistics) needs validation data for domain(s) {absent}.",
            hint="Map each domain to a .jsonl file or a dataset repo in the recipe's 'data:' section.")
    return {d: pin_validation_source(recipe.data[d], base_dir=base_dir) for d in domains}


def _statistics(inputs: _Inputs, options: MergeOptions) -> StatisticsReader | None:
    """Run (or find in the cache) the method's statistics stage, one expert in memory at a time."""
    if inputs.stage is None:
        return None
    experts = [ModelSource(_local_folder(m), domain=entry.domain, revision=m.sha, label=m.label)
               for m, entry in zip(inputs.experts, inputs.recipe.models, strict=True)]
    base = ModelSource(_local_folder(inputs.base), revision=inputs.base.sha, label=inputs.base.label)
    paths = run_stage(inputs.stage, experts, inputs.rows, inputs.params,
                      cache_dir=cache_root(options.cache_dir) / "stats", base=base,
                      merge_embeddings=inputs.recipe.merge_embeddings,
                      options=StatsOptions(device=options.stats_device))
    return StatisticsReader(inputs.stage, paths)


def _local_folder(model: ResolvedModel) -> Path:
    """A folder ``from_pretrained`` can load. Statistics need whole models in memory, so Hub models are
    downloaded (to the Hub cache, pinned to their commit) for this stage only."""
    if model.ref.local_path is not None:
        return model.ref.local_path
    from huggingface_hub import snapshot_download

    assert model.ref.repo_id is not None  # a Ref is either a local path or a repo

    return Path(snapshot_download(model.ref.repo_id, revision=model.sha))


def _published(inputs: _Inputs) -> MergeRecipe:
    """The pinned recipe as the merged folder (and so a push) shows it: Hub inputs at their commit, local
    models and data files by :func:`~mergebench.hub.refs.public_path`, never by this machine's absolute paths."""
    pinned = inputs.pinned

    def name(model: ResolvedModel) -> str:
        return _pinned(model) if model.ref.repo_id else model.ref.public_name

    return pinned.model_copy(update={
        "base_model": name(inputs.base),
        "models": [m.model_copy(update={"model": name(e)}) for m, e in zip(pinned.models, inputs.experts, strict=True)],
        "tokenizer_source": name(inputs.tokenizer_source) if pinned.tokenizer_source else None,
        "data": {domain: public_path(ref) for domain, ref in pinned.data.items()},
    })


def _pinned(model: ResolvedModel) -> str:
    if model.ref.repo_id:
        return f"{model.ref.repo_id}@{model.sha}"
    return str(model.ref.local_path)


def merge(config: MergeRecipe | Path | str | dict[str, Any], out_dir: Path | str, *,
          options: MergeOptions | None = None, push_to: str | None = None, private: bool = False) -> MergeResult:
    """Merge the models of a recipe into ``out_dir`` and optionally push the result.

    Args:
        config: a :class:`MergeRecipe`, its dict, or a path to its YAML.
        out_dir: destination folder; must not exist (or be empty) unless resuming a finished merge.
        options: threads, shard size, read-ahead, resume.
        push_to: a Hub repo id to create (if needed) and upload the finished folder to, in one commit.

    Returns:
        A :class:`MergeResult` with timings, memory and the pinned recipe.

    Raises:
        ConfigError: invalid recipe or parameters. IncompatibleModelsError: models do not match.
        CorruptFileError / NonFiniteError: a bad input file or tensor. OutputExistsError: ``out_dir`` is taken.

    >>> merge("recipe.yaml", "merged/")  # doctest: +SKIP
    """
    options = options or MergeOptions()
    started = time.perf_counter()
    reset_peak_rss()
    out_dir = Path(out_dir)
    _check_output_dir(out_dir)
    inputs = prepare(config, shard_size=options.shard_size, read_ahead_bytes=options.read_ahead_bytes)
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    fingerprint = _fingerprint(inputs)
    state = _resume_state(partial, fingerprint) if options.resume else None
    if state is None:
        shutil.rmtree(partial, ignore_errors=True)
        state = {"fingerprint": fingerprint, "shards": {}}
    done = tuple(state["shards"])
    partial.mkdir(parents=True, exist_ok=True)
    _save_state(partial, state)

    try:
        stats_started = time.perf_counter()
        statistics = _statistics(inputs, options)
        stats_seconds = time.perf_counter() - stats_started
        thresholds, bytes_read = None, 0
        if "thresholds" in state:  # computed before the interruption: exact floats survive JSON
            thresholds = torch.tensor(state["thresholds"], dtype=torch.float32)
        elif inputs.params.global_topk() is not None:
            thresholds, bytes_read = _global_thresholds(inputs, options)
            state["thresholds"] = thresholds.tolist()
            _save_state(partial, state)
        bytes_read += _merge_pass(inputs, partial, options, state, thresholds, statistics)
    except MergeBenchError:
        shutil.rmtree(partial)  # bad input: nothing worth resuming. Interruptions keep it for --resume.
        raise

    if inputs.plan.sharded:
        write_index(partial, inputs.plan.shards, inputs.plan.output_bytes)
    for name in AUX_FILES:
        if name in inputs.tokenizer_source.file_list:
            inputs.tokenizer_source.copy_file(name, partial / name)
    published = _published(inputs)
    (partial / RECIPE_FILE).write_text(published.to_yaml(), encoding="utf-8")
    seconds = time.perf_counter() - started
    peak = peak_rss_bytes()
    result = MergeResult(out_dir, inputs.pinned, inputs.plan, seconds=seconds, peak_rss_bytes=peak,
                         bytes_read=bytes_read, stats_seconds=stats_seconds, resumed_shards=done)
    write_model_card(partial, published, inputs.spec, inputs.params, [*inputs.experts, inputs.base], result)
    (partial / PROGRESS_FILE).unlink()
    if out_dir.exists():
        out_dir.rmdir()
    os.replace(partial, out_dir)
    logger.info("Merged %d experts with %s into %s in %.1fs", len(inputs.experts), inputs.spec.name,
                out_dir, seconds)
    if push_to:
        from mergebench.hub.push import push_folder

        url = push_folder(out_dir, push_to, private=private)
        result = MergeResult(**{**result.__dict__, "commit_url": url})
    return result


def _check_output_dir(out_dir: Path) -> None:
    """The destination must be a new or empty folder with a name (its sibling ``.NAME.partial`` is the work
    folder), checked before any input is read."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"Output '{out_dir}' is a file, not a folder.",
                                hint="Choose a folder path for --out that does not exist yet.")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise OutputExistsError(f"Output folder '{out_dir}' already exists and is not empty.",
                                hint="Choose another --out, or delete the folder first.")
    if not out_dir.resolve().name or out_dir.resolve() == Path.cwd():
        raise OutputExistsError(f"Output '{out_dir}' is the current folder (or the root); the merge needs a folder "
                                "of its own, written beside it and renamed into place.",
                                hint="Pass a new folder name, e.g. --out merged/.")


def _fingerprint(inputs: _Inputs) -> str:
    """What the merge is computed from: the pinned recipe (Hub inputs by commit sha), the plan, the method's
    version and the contents of local inputs (:mod:`mergebench.work`), so ``--resume`` never
    continues from shards or thresholds computed from a file that has changed since."""
    local = [(m.ref.text, folder_fingerprint(m.ref.local_path, m.files))
             for m in (inputs.base, *inputs.experts, inputs.tokenizer_source) if m.ref.local_path is not None]
    doc = {"recipe": inputs.pinned.model_dump(), "shards": [(s.filename, s.tensors) for s in inputs.plan.shards],
           "dtypes": [(t.name, t.out_dtype) for t in inputs.plan.tensors], "version": inputs.spec.version,
           "local_inputs": local}
    return hashlib.sha256(json.dumps(doc, sort_keys=True, default=str).encode()).hexdigest()


def _resume_state(partial: Path, fingerprint: str) -> dict[str, Any] | None:
    """The state of an interrupted run of the same merge, keeping only shards that still verify."""
    try:
        state = json.loads((partial / PROGRESS_FILE).read_text())
    except (OSError, json.JSONDecodeError):
        return None
    if state.get("fingerprint") != fingerprint:
        logger.warning("The interrupted merge in %s used another recipe or plan, or a local input has changed "
                       "since; starting over.", partial)
        return None
    kept = {}
    for filename, sha in state.get("shards", {}).items():
        if (partial / filename).exists() and checksum_file(partial / filename) == sha:
            kept[filename] = sha
        else:
            logger.warning("Shard %s failed verification; it will be rewritten.", filename)
            break
    logger.info("Resuming: %d verified shard(s) kept", len(kept))
    return {**state, "shards": kept}


def _save_state(partial: Path, state: dict[str, Any]) -> None:
    write_atomic(partial / PROGRESS_FILE, json.dumps(state))


def _bar(options: MergeOptions, total: int, desc: str, unit: str = "B") -> tqdm:
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not options.progress, leave=False)


def _open_stream(inputs: _Inputs, order: Sequence[tuple[str, Sequence[int]]], options: MergeOptions,
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


def _flat_views(inputs: _Inputs, t: TensorPlan, raw: Raw) -> list[torch.Tensor]:
    """Each model's raw bytes of ``t`` as a flat tensor in its stored dtype (zero-copy)."""
    return [_to_tensor(r, t.in_dtype, (t.numel,)) for r in raw[: len(inputs.experts) + 1]]


def _load_into(inputs: _Inputs, t: TensorPlan, flats: Sequence[torch.Tensor], base: torch.Tensor,
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


def _load_stack(inputs: _Inputs, t: TensorPlan, raw: Raw, *, check_finite: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Whole-tensor fp32 base and ``[n, *shape]`` fp32 stack of expert weights (methods that are not elementwise)."""
    base = torch.empty(t.numel, dtype=torch.float32)
    stack = torch.empty((len(inputs.experts), t.numel), dtype=torch.float32)
    _load_into(inputs, t, _flat_views(inputs, t, raw), base, stack, 0, check_finite=check_finite)
    return base.view(t.shape), stack.view(len(inputs.experts), *t.shape)


def _count_chunk(inputs: _Inputs, t: TensorPlan, flats: Sequence[torch.Tensor], pool: ChunkPool, acc: GlobalTopK,
                 pass_index: int, check_finite: bool, start: int, end: int) -> None:
    """Feed the task vectors of one chunk to a top-k counting pass."""
    base, stack = pool.buffers(end - start)
    _load_into(inputs, t, flats, base, stack, start, check_finite=check_finite)
    acc.update(pass_index, stack.sub_(base))


def _compute_pool(inputs: _Inputs, options: MergeOptions) -> ChunkPool:
    return ChunkPool(len(inputs.experts), chunk=options.compute_chunk, threads=options.compute_threads)


def _check_output(inputs: _Inputs, t: TensorPlan, merged: torch.Tensor) -> None:
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


def _global_thresholds(inputs: _Inputs, options: MergeOptions) -> tuple[torch.Tensor, int]:
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


def _merge_pass(inputs: _Inputs, out: Path, options: MergeOptions, state: dict[str, Any],
                thresholds: torch.Tensor | None, statistics: StatisticsReader | None) -> int:
    plan = inputs.plan
    by_name = {t.name: t for t in plan.tensors}
    skip = {name for shard in plan.shards if shard.filename in state["shards"] for name in shard.tensors}
    experts = tuple(range(1, len(inputs.experts) + 1))
    order = [(t.name, (0, *experts) if t.mergeable else (0,)) for t in plan.tensors if t.name not in skip]

    def shard_done(filename: str, sha: str) -> None:
        state["shards"][filename] = sha
        _save_state(out, state)

    shard_writer = ShardWriter(out, plan.shards, by_name, on_shard_done=shard_done)
    for shard in plan.shards:
        if shard.filename in state["shards"]:
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


def _merge_chunked(inputs: _Inputs, t: TensorPlan, raw: Raw, ctx: MergeContext, pool: ChunkPool) -> torch.Tensor:
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
