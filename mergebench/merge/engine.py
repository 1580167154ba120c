"""Running a merge: prepare (:mod:`~mergebench.merge.inputs`) → statistics stage → streaming passes
(:mod:`~mergebench.merge.passes`) → card → rename → push.

Output goes to a hidden ``.NAME.partial`` folder next to the destination and is renamed into place only when
complete; ``resume=True`` keeps the verified shards and top-k thresholds of an interrupted run of the same
merge (same :func:`~mergebench.merge.inputs.inputs_fingerprint`, checked by :func:`mergebench.work.is_current`).
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import httpx2 as httpx
from huggingface_hub.errors import HfHubHTTPError

from mergebench.errors import ConfigError, MergeBenchError, NetworkError, OutputExistsError, PushError
from mergebench.merge.card import write_model_card
from mergebench.merge.inputs import MergeInputs, inputs_fingerprint, prepare, published_recipe
from mergebench.merge.memory import peak_rss_bytes, reset_peak_rss
from mergebench.merge.options import MergeOptions, MergeResult
from mergebench.merge.passes import run_passes
from mergebench.merge.recipe import MergeRecipe
from mergebench.paths import cache_root
from mergebench.stats import ModelSource, StatisticsReader, StatsOptions, run_stage
from mergebench.stream.writer import checksum_file, write_index
from mergebench.work import Stage, is_current, read_record, sidecar_record, write_atomic, write_record

logger = logging.getLogger(__name__)

AUX_FILES = (
    "config.json", "generation_config.json", "tokenizer.json", "tokenizer_config.json",
    "special_tokens_map.json", "tokenizer.model", "chat_template.jinja", "chat_template.json",
    "vocab.json", "merges.txt", "added_tokens.json",
)
"""Files copied from the tokenizer source (the base by default) into the merged model."""
PROGRESS_FILE = ".mergebench_progress.json"
RECIPE_FILE = "mergebench_config.yaml"


def _statistics(inputs: MergeInputs, options: MergeOptions) -> StatisticsReader | None:
    """Run (or find in the cache) the method's statistics stage, one expert — one decoder layer of it — in
    memory at a time, reading the weights through the same streaming sources as the merge (nothing downloaded)."""
    if inputs.stage is None:
        return None
    experts = [ModelSource(m, domain=entry.domain) for m, entry in zip(inputs.experts, inputs.recipe.models,
                                                                          strict=True)]
    stats_options = StatsOptions(device=options.stats_device, threads=options.threads,
                                 chunk_bytes=options.chunk_bytes, progress=options.progress)
    paths = run_stage(inputs.stage, experts, inputs.rows, inputs.params,
                      cache_dir=cache_root(options.cache_dir) / "stats", base=ModelSource(inputs.base),
                      merge_embeddings=inputs.recipe.merge_embeddings, options=stats_options)
    return StatisticsReader(inputs.stage, paths)


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
    if push_to:
        _check_push_target(push_to)
    _check_output_name(out_dir)
    finished = sidecar_record(out_dir)  # written after the rename: this folder is a finished merge of ...
    resume_finished = options.resume and out_dir.is_dir() and finished.is_file()
    if not resume_finished:
        _check_output_dir(out_dir)
    inputs = prepare(config, shard_size=options.shard_size, read_ahead_bytes=options.read_ahead_bytes)
    partial = out_dir.with_name(f".{out_dir.name}.partial")
    fingerprint = inputs_fingerprint(inputs)
    merged = Stage("merged", {"inputs": fingerprint})
    if resume_finished:
        if is_current(finished, merged.fingerprint):  # e.g. the merge finished and only its push failed
            logger.info("%s is already this merge, finished; nothing to merge again.", out_dir)
            outputs = (read_record(finished) or {}).get("outputs", {})
            return _pushed(MergeResult(out_dir, inputs.pinned, inputs.plan, **outputs), push_to, private)
        _check_output_dir(out_dir)  # another merge's output: taken
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
        bytes_read = run_passes(inputs, partial, options, state, statistics, lambda: _save_state(partial, state))
    except MergeBenchError as e:
        if not isinstance(e, NetworkError):  # bad input: nothing worth resuming; network failures keep it
            shutil.rmtree(partial)
        raise

    if inputs.plan.sharded:
        write_index(partial, inputs.plan.shards, inputs.plan.output_bytes)
    for name in AUX_FILES:
        if name in inputs.tokenizer_source.file_list:
            inputs.tokenizer_source.copy_file(name, partial / name)
    published = published_recipe(inputs)
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
    write_record(finished, merged, outputs={"seconds": seconds, "peak_rss_bytes": peak, "bytes_read": bytes_read,
                                            "stats_seconds": stats_seconds})
    logger.info("Merged %d experts with %s into %s in %.1fs", len(inputs.experts), inputs.spec.name,
                out_dir, seconds)
    return _pushed(result, push_to, private)


def _pushed(result: MergeResult, push_to: str | None, private: bool) -> MergeResult:
    """``result`` after pushing its folder to ``push_to`` (when asked), with the commit URL."""
    if not push_to:
        return result
    from mergebench.hub.push import push_folder

    try:
        url = push_folder(result.out_dir, push_to, private=private)
    except (HfHubHTTPError, httpx.HTTPError, OSError) as e:
        raise PushError(f"The merge in '{result.out_dir}' is complete, but pushing it to '{push_to}' failed: "
                        f"{type(e).__name__}: {' '.join(str(e).split())}", repo_id=push_to,
                        hint="Run the same command again with --resume: the finished merge is pushed, not "
                             "merged again.") from e
    return MergeResult(**{**result.__dict__, "commit_url": url})


def _check_push_target(repo_id: str) -> None:
    """``push_to`` must be a repo id the Hub accepts, checked before any work (not after the merge)."""
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as e:
        raise ConfigError(f"push_to '{repo_id}' is not a Hub repo id: {' '.join(str(e).split())}",
                          hint="Use ORG/NAME, e.g. my-org/llama-3.2-3b-ties.") from e


def _check_output_name(out_dir: Path) -> None:
    """The destination needs a name of its own: its work folder and its record are written beside it."""
    if not out_dir.resolve().name or out_dir.resolve() == Path.cwd():
        raise OutputExistsError(f"Output '{out_dir}' is the current folder (or the root); the merge needs a folder "
                                "of its own, written beside it and renamed into place.",
                                hint="Pass a new folder name, e.g. --out merged/.")


def _check_output_dir(out_dir: Path) -> None:
    """The destination must be a new or empty folder (its sibling ``.NAME.partial`` is the work
    folder), checked before any input is read."""
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputExistsError(f"Output '{out_dir}' is a file, not a folder.",
                                hint="Choose a folder path for --out that does not exist yet.")
    if out_dir.exists() and any(out_dir.iterdir()):
        raise OutputExistsError(f"Output folder '{out_dir}' already exists and is not empty.",
                                hint="Choose another --out, or delete the folder first.")


def _resume_state(partial: Path, fingerprint: str) -> dict[str, Any] | None:
    """The state of an interrupted run of the same merge, keeping only shards that still verify."""
    state = read_record(partial / PROGRESS_FILE)
    if state is None:
        return None
    if not is_current(partial / PROGRESS_FILE, fingerprint):
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


__all__ = ["AUX_FILES", "PROGRESS_FILE", "RECIPE_FILE", "merge"]
