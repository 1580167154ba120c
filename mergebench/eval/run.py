"""``evaluate``: score one model on a suite (or a list) of MergeBench tasks and write the results file.

The order of work is chosen so that bad input fails before anything expensive: task names are checked
first (an unknown name suggests the closest), then the model path, then the data source; only then is the
model loaded, once for all the tasks. Log-likelihood tasks share one lighteval pipeline (its set-up is paid
once per model, :func:`~mergebench.eval.lighteval_wrapper.pipeline_groups`); a generative task has its own.
A task that raises is recorded as failed with its error and the run continues (a shared pipeline that raises
is retried task by task to find the one that failed); the results file is rewritten atomically after every
pipeline, so an interrupted run keeps every finished task. Every evaluation works in a fresh temporary
directory (lighteval's response cache, materialised data) that is deleted at the end, so two models evaluated
one after the other with the same settings can never share cached answers.
"""

from __future__ import annotations

import logging
import platform
import sys
import time
import traceback
from dataclasses import asdict
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any, Literal

from tqdm.auto import tqdm

from mergebench.errors import EvaluationError, RefError
from mergebench.eval.data_source import resolve_source, task_data
from mergebench.eval.hub_results import publish_scores, publish_target
from mergebench.eval.lighteval_wrapper import (
    ModelOptions,
    load_model,
    nltk_stub_dir,
    pipeline_groups,
    prepare_offline,
    run_task,
    run_tasks,
)
from mergebench.eval.metrics import MetricContext
from mergebench.eval.nltk_data import punkt_description
from mergebench.eval.refusal import Judge, judge_label, make_judge
from mergebench.eval.results import Results, ResultsWriter, RunStatus, TaskResult, new_results, now, push_results
from mergebench.eval.sandbox import SandboxConfig
from mergebench.eval.tasks import TaskSpec, resolve_tasks
from mergebench.hub.eval_results import weights_id
from mergebench.hub.refs import Pin, Ref, pin
from mergebench.scratch import scratch_folder

logger = logging.getLogger(__name__)
Backend = Literal["transformers", "vllm"]
SEED = 1234
JUDGED_METRICS = ("refusal", "compliance")
SENTENCE_SPLIT_METRICS = ("ifeval",)


def _versions() -> dict[str, str]:
    out = {"python": platform.python_version()}
    for name in ("mergebench", "lighteval", "transformers", "torch", "datasets", "vllm"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _check_model_path(model: Any) -> None:
    """A path-like model that does not exist is an error now, before any import or download."""
    if not isinstance(model, (str, Path)):
        return
    text = str(model)
    path = Path(text).expanduser()
    looks_local = isinstance(model, Path) or text.startswith((".", "/", "~")) or text.count("/") != 1
    if looks_local and not path.exists():
        raise EvaluationError(f"Model '{text}' does not exist.",
                              hint="Pass a model folder (config.json + weights) or a Hub id like org/name.")


def _pin_model(model: Any) -> Pin | None:
    """Pin a model given by folder or Hub id (``org/name[@revision]``) once, before loading: the results then
    name the exact weights scored (a commit sha, or a local folder's fingerprint) and the loader reads that
    commit, even if the repo moves on meanwhile. In-memory models have no identity to pin (``None``)."""
    if not isinstance(model, (str, Path)):
        return None
    try:
        return pin(Ref.parse(str(model), repo_type="model", local="dir"))
    except RefError as e:
        raise EvaluationError(str(e), hint="Pass a model folder (config.json + weights) or a Hub id like org/name."
                              ) from e


def _judge(spec: str | Judge | None) -> Judge:
    """The refusal judge, a classifier pinned to one commit (or a folder's fingerprint) before any model is loaded,
    so that a bad reference fails now and the results name the exact classifier that judged."""
    try:
        return make_judge(spec)
    except RefError as e:
        raise EvaluationError(f"Refusal judge: {e.message}",
                              hint="Pass a classifier's folder or Hub id (--refusal-judge allenai/wildguard), or "
                                   "leave it out for the rule-based judge.") from e


def _load(model: Any, backend: Backend, *, tokenizer: Any, cache_dir: Path, options: ModelOptions,
          pinned: Pin | None) -> Any:
    if hasattr(model, "greedy_until") and hasattr(model, "configure"):  # an already-built lighteval model
        return model
    if pinned is not None and pinned.ref.repo_id:  # load exactly the pinned commit
        model = pinned.ref.repo_id
    revision = pinned.sha if pinned is not None else None
    if backend == "transformers":
        return load_model(model, cache_dir=cache_dir, tokenizer=tokenizer, options=options, revision=revision)
    if backend == "vllm":
        from mergebench.eval.vllm_backend import load_vllm_model

        return load_vllm_model(model, tokenizer=tokenizer, dtype=options.dtype, revision=revision)
    raise EvaluationError(f"Unknown backend '{backend}'.", hint="--backend transformers (CPU/GPU) or vllm (GPU).")


def _scoring_notes(spec: TaskSpec, notes: dict[str, Any]) -> dict[str, Any]:
    """What scored ``spec`` beyond its metric names: the refusal judge of a safety task (which one, and whether it
    is the CPU default), the sentence splitter of an IFEval task (NLTK's trained Punkt model or an empty one)."""
    out = {}
    if any(m in JUDGED_METRICS for m in spec.metrics) and "judge" in notes:
        out["judge"] = notes["judge"]
    if any(m in SENTENCE_SPLIT_METRICS for m in spec.metrics) and "sentence_tokenizer" in notes:
        out["sentence_tokenizer"] = notes["sentence_tokenizer"]
    return out


def _task_result(spec: TaskSpec, *, seconds: float, data: dict, run: Any = None, error: BaseException | None = None,
                 notes: dict[str, Any] | None = None) -> TaskResult:
    common: dict[str, Any] = dict(name=spec.name, domain=spec.domain, role=spec.role, version=spec.version,
                  main_metric=spec.main_metric, seconds=round(seconds, 3), data=data, finished_at=now())
    if error is not None:
        detail = "".join(traceback.format_exception_only(type(error), error)).strip()
        return TaskResult(status="failed", score=None, error={"type": type(error).__name__, "message": detail,
                                                               "hint": getattr(error, "hint", None)}, **common)
    if spec.main_metric not in run.metrics:
        raise EvaluationError(f"Task {spec.name} produced no '{spec.main_metric}' (got {sorted(run.metrics)}).",
                              task=spec.name)
    side_info = {**run.side_info, **_scoring_notes(spec, notes or {})}
    return TaskResult(status="ok", score=run.metrics[spec.main_metric], metrics=run.metrics, stderr=run.stderr,
                      num_samples=run.num_samples, empty_responses=run.empty_responses, side_info=side_info,
                      outputs_sha256=run.outputs_sha256,
                      **common)


def _failed(spec: TaskSpec, error: BaseException, *, started: float, data: dict) -> TaskResult:
    logger.error("task %s failed: %s", spec.name, error, exc_info=logger.isEnabledFor(logging.DEBUG))
    return _task_result(spec, seconds=time.perf_counter() - started, data=data, error=error)


def _run_one(lighteval_model: Any, spec: TaskSpec, source: Any, *, max_samples: int | None, work_dir: Path,
             context: MetricContext, notes: dict[str, Any] | None = None) -> TaskResult:
    import torch

    started = time.perf_counter()
    data: dict = {}
    try:
        located = task_data(source, spec.eval_set)
        data = located.provenance
        torch.manual_seed(SEED)
        run = run_task(lighteval_model, spec, located, max_samples=max_samples, work_dir=work_dir, context=context)
        return _task_result(spec, seconds=time.perf_counter() - started, data=data, run=run, notes=notes)
    except Exception as e:  # a failing task is recorded; the others still run
        return _failed(spec, e, started=started, data=data)


def _run_group(lighteval_model: Any, specs: list[TaskSpec], source: Any, *, max_samples: int | None, work_dir: Path,
               context: MetricContext, notes: dict[str, Any] | None = None) -> list[TaskResult]:
    """One :func:`~mergebench.eval.lighteval_wrapper.pipeline_groups` group in one pipeline, results in order.

    The group's wall-clock is divided among its tasks in proportion to the model requests each needed. If the
    shared pipeline raises, its tasks run again one by one, so that the failure is recorded against the task
    that caused it and the others are still scored.
    """
    import torch

    if len(specs) == 1:
        return [_run_one(lighteval_model, specs[0], source, max_samples=max_samples, work_dir=work_dir,
                         context=context, notes=notes)]
    started = time.perf_counter()
    located, failed = {}, {}
    for spec in specs:
        try:
            located[spec.name] = task_data(source, spec.eval_set)
        except Exception as e:  # this task's data is missing or bad: the others still run
            failed[spec.name] = _failed(spec, e, started=started, data={})
    ready = [s for s in specs if s.name in located]
    try:
        torch.manual_seed(SEED)
        runs = run_tasks(lighteval_model, ready, located, max_samples=max_samples, work_dir=work_dir,
                         context=context) if ready else {}
    except Exception as e:
        logger.warning("%d tasks sharing one pipeline failed (%s); running them one by one.", len(ready), e)
        return [failed.get(s.name) or _run_one(lighteval_model, s, source, max_samples=max_samples,
                                               work_dir=work_dir, context=context, notes=notes) for s in specs]
    seconds = time.perf_counter() - started
    requests = sum(run.requests for run in runs.values()) or 1
    for spec in ready:
        data, run = located[spec.name].provenance, runs[spec.name]
        try:
            failed[spec.name] = _task_result(spec, seconds=seconds * run.requests / requests, data=data, run=run,
                                             notes=notes)
        except EvaluationError as e:  # the task produced no main metric
            failed[spec.name] = _failed(spec, e, started=started, data=data)
    return [failed[s.name] for s in specs]


def evaluate(model: Any, *, suite: str | None = None, tasks: list[str] | None = None,
             backend: Backend = "transformers", max_samples: int | None = None, out: str | Path | None = None,
             tokenizer: Any = None, eval_data: str | Path | None = None, refusal_judge: str | Judge | None = None,
             sandbox: SandboxConfig | None = None, options: ModelOptions | None = None,
             model_info: dict | None = None, cost: dict | None = None, push_to: str | None = None,
             push_eval_results: bool = False, progress: bool = True) -> Results:
    """Evaluate ``model`` (a folder, a Hub id, or an in-memory ``PreTrainedModel`` with ``tokenizer``).

    Args:
        suite: ``domains``, ``forgetting``, ``validation`` or ``tiny``; ignored when ``tasks`` is given.
        tasks: task names (``mb_`` prefix optional); comma-separated strings are split.
        backend: ``transformers`` (CPU or GPU) or ``vllm`` (GPU, needs requirements-gpu.txt).
        max_samples: at most this many items per task (partial numbers: fine for smoke tests only).
        out: the results file, rewritten after every task; ``None`` keeps results in memory.
        eval_data: ``mergebench-eval`` as ``org/name[@rev]`` or a folder; ``None`` = packaged data.
        refusal_judge: ``None`` (rule-based, the CPU default), a classifier model id or folder for the safety
            tasks (``allenai/wildguard``, the paper's judge: pinned to its commit before the model is loaded, and
            loaded at that commit once, on first use, for the whole evaluation), or a
            :class:`~mergebench.eval.refusal.Judge`.
        model_info: extra fields for the results' ``model`` block (e.g. ``{"role": "expert", "domain": "math"}``).
        cost: merge/validation cost to record (``merge_seconds``, ``merge_peak_memory_bytes``,
            ``validation_seconds``).
        push_to: append the results to this Hub dataset (:func:`~mergebench.eval.results.push_results`).
        push_eval_results: write the scores into the model's own Hub repo (``.eval_results/*.yaml``, the card's
            ``model-index``; :func:`~mergebench.eval.hub_results.publish_scores`). Needs a Hub model and Hub
            evaluation data (``eval_data="org/mergebench-eval"``), checked before the model is loaded.

    Returns:
        The :class:`~mergebench.eval.results.Results` (also written to ``out``).

    Raises:
        EvaluationError: unknown task/suite/backend, or a model or refusal judge path that does not exist —
            before any work. Failures inside a task do not raise: they are recorded in that task's result.
        ScoresError: ``push_eval_results`` for a model or evaluation data that is not on the Hub (before any
            work), or a model repo that moved on while it was evaluated.

    >>> results = evaluate("HuggingFaceTB/SmolLM2-135M-Instruct", suite="tiny", out="results.json")  # doctest: +SKIP
    """
    specs = resolve_tasks(suite, tasks)
    _check_model_path(model)
    sandbox, options = sandbox or SandboxConfig(), options or ModelOptions()
    prepare_offline()
    with scratch_folder("eval") as work_dir:
        source = resolve_source(eval_data, work_dir=work_dir)
        pinned = _pin_model(model)
        judge = _judge(refusal_judge)
        if push_eval_results:  # fail now, not after hours of evaluation
            publish_target(pinned.ref.repo_id if pinned else None, pinned.sha if pinned else None, source.describe())
        lighteval_model = _load(model, backend, tokenizer=tokenizer, cache_dir=work_dir / "lighteval-cache",
                                options=options, pinned=pinned)
        context = MetricContext(sandbox=sandbox, judge=judge)
        notes = {"judge": judge_label(context.judge), "sentence_tokenizer": punkt_description(nltk_stub_dir())}
        model_block = {"id": model if isinstance(model, (str, Path)) else f"<in-memory {type(model).__name__}>",
                       "revision": pinned.revision if pinned else None, **(model_info or {})}
        if pinned is not None and pinned.ref.repo_id:
            model_block["id"] = pinned.ref.repo_id
            model_block["weights"] = weights_id(pinned.ref.repo_id, str(pinned.sha))  # kept by score commits
        model_block["id"] = str(model_block["id"])
        settings = {"suite": suite if not tasks else None, "tasks": [s.name for s in specs], "backend": backend,
                    "max_samples": max_samples, "seed": SEED, "judge": context.judge.name,
                    "sandbox": asdict(sandbox), **asdict(options)}
        writer = ResultsWriter(new_results(model=model_block, settings=settings, eval_data=source.describe(),
                                           environment=_versions(), cost=cost), Path(out) if out else None)
        status: RunStatus = "failed"
        try:
            with tqdm(total=len(specs), desc="mergebench eval", unit="task", disable=not progress,
                      file=sys.stderr) as bar:
                for group in pipeline_groups(specs, max_samples):
                    for result in _run_group(lighteval_model, group, source, max_samples=max_samples,
                                             work_dir=work_dir, context=context, notes=notes):
                        writer.add(result)
                    bar.update(len(group))
            status = "complete"
        finally:
            results = writer.finish(status)  # also on KeyboardInterrupt: finished tasks are on disk
    if push_to:
        push_results(push_to, results)
    if push_eval_results:
        publish_scores(results, results_repo=push_to)
    return results
