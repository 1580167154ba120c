"""``mergebench run BENCH.yaml``: grid search per (base, method), final evaluation, scores, leaderboard.

For each base, in order:

1. **References** — the base on every evaluation task; each expert on its own domain's evaluation and
   validation tasks (all that normalisation needs); the multi-task model, if any, on both. One results
   file each, reused when complete for the same tasks.
2. **Grid search** — every point of each method's grid (:mod:`mergebench.runner.point`), scored on the
   validation tasks normalised by the experts' validation scores; a method with a single point skips
   validation. The best point wins (ties: the first in grid order); the other points' weights are deleted.
3. **Final evaluation** of each method's winner on the evaluation tasks, written as
   ``results/<base>/<method>.json`` with its costs: ``merge_seconds`` (the winner's merge, statistics
   stage included), ``merge_peak_memory_bytes`` (its peak RSS) and ``validation_seconds`` (the whole grid
   search: every point's merge and validation evaluation; 0 for a single point).
4. **Leaderboard** — :func:`mergebench.eval.leaderboard.table` over ``results/``, written as
   ``leaderboard.md`` and ``leaderboard.csv``; optional pushes of results (one row per task and identity, so
   pushing again replaces) and chosen models, each followed by its scores (``.eval_results/*.yaml`` and the
   card's ``model-index``, :mod:`mergebench.eval.hub_results`) when the evaluation data is on the Hub.

Everything is cached under the output folder, so running the same configuration again resumes: finished
grid points and evaluations are skipped, and the final table is the same.
"""

from __future__ import annotations

import logging
import shutil
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pandas as pd

from mergebench.domains import DOMAINS, GENERAL, Domain
from mergebench.eval.results import Results, load_results
from mergebench.hub.refs import pin
from mergebench.runner.config import BaseEntry, BenchConfig, MethodEntry
from mergebench.runner.point import GridPoint, PointRecord, run_point
from mergebench.runner.progress import StageLog
from mergebench.work import Stage, is_current, sidecar_record, write_record

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class RunSummary:
    output: Path
    results_dir: Path
    table: pd.DataFrame
    seconds: float


def _fingerprint(ref: str) -> str:
    """A commit sha for a Hub reference; a local folder's fingerprint (:func:`mergebench.hub.refs.pin`)."""
    return pin(ref, repo_type="model").revision


class _Run:
    """One benchmark run's state: the configuration, resolved tasks and where everything goes."""

    def __init__(self, config: BenchConfig, *, stages: StageLog) -> None:
        from mergebench.eval.lighteval_wrapper import ModelOptions
        from mergebench.eval.refusal import make_judge
        from mergebench.merge.options import MergeOptions

        self.config, self.stages = config, stages
        self.progress = False  # the stage log reports progress: no bars of merges and evaluations beneath it
        self.out = config.output_dir
        self.results_dir = self.out / "results"
        self.evaluation_tasks = config.evaluation.task_names()
        self.validation_tasks = config.validation.task_names()
        self.merge_options = MergeOptions(threads=config.merge.threads, shard_size=config.merge.shard_size,
                                          resume=True, progress=self.progress)
        self.eval_options = {
            "validation": ModelOptions(batch_size=config.validation.batch_size, dtype=config.validation.dtype),
            "evaluation": ModelOptions(batch_size=config.evaluation.batch_size, dtype=config.evaluation.dtype)}
        self.eval_data = config.data_ref(config.eval_data) if config.eval_data else None
        judge = pin(config.model_ref(config.refusal_judge), repo_type="model") if config.refusal_judge else None
        self.refusal_judge = judge.loadable if judge else None
        """The classifier every evaluation of the run loads, pinned once here: ``org/name@sha`` or a folder."""
        self.judge_name = make_judge(judge).name
        """What results call the judge (``rule-based-v1``, ``classifier:org/name@sha``,
        ``classifier:<folder>@local:<fingerprint>``): part of every fingerprint, so a new commit of the judge
        (or new files in its folder) evaluates again."""

    def label(self, base: BaseEntry, text: str) -> str:
        """A stage's name in the stage log, prefixed with the base when the run has several."""
        return f"{base.label}: {text}" if len(self.config.bases) > 1 else text

    def evaluation_stage(self, weights: str, tasks: list[str], model_info: dict, *, section: str) -> Stage:
        """What an evaluation's results are built from: the weights (a commit sha, a local fingerprint, or the
        grid point a merge comes from), the tasks, the section's settings, the evaluation data, the refusal judge,
        what the results file says about the model."""
        settings = self.config.validation if section == "validation" else self.config.evaluation
        return Stage("evaluation", {"weights": weights, "tasks": tasks, "settings": settings.model_dump(mode="json"),
                                    "eval_data": str(self.eval_data), "judge": self.judge_name,
                                    "model_info": model_info})

    def reuse(self, path: Path, stage: Stage, *, label: str) -> Results | None:
        """The complete results at ``path`` if they were made from exactly ``stage`` (its record beside them)."""
        if not (path.is_file() and is_current(sidecar_record(path), stage.fingerprint)):
            return None
        old = load_results(path)
        if old.run.get("status") != "complete":
            return None
        self.stages.reused(label, weight=eval_weight(list(stage.inputs["tasks"])))
        return old

    def evaluate(self, model: str, path: Path, tasks: list[str], model_info: dict, *, section: str, label: str,
                 cost: dict | None = None, weights: str | None = None) -> Results:
        """Evaluate ``model`` on ``tasks`` into ``path``, or reuse that file if it was made from the same weights
        (``weights``, default: ``model``'s commit sha or local fingerprint), tasks and settings."""
        from mergebench.eval import evaluate

        stage = self.evaluation_stage(weights or _fingerprint(model), tasks, model_info, section=section)
        old = self.reuse(path, stage, label=label)
        if old is not None:
            return old
        settings = self.config.validation if section == "validation" else self.config.evaluation
        with self.stages.stage(label, weight=eval_weight(tasks), done=f"{len(tasks)} task(s) evaluated"):
            results = evaluate(model, tasks=tasks, max_samples=settings.max_samples, out=path,
                               eval_data=self.eval_data, refusal_judge=self.refusal_judge,
                               options=self.eval_options[section], model_info=model_info, cost=cost,
                               progress=self.progress)
        write_record(sidecar_record(path), stage)
        return results


def eval_weight(tasks: list[str]) -> float:
    """Expected cost of an evaluation relative to one merge: loading the model, then each task."""
    return 1.0 + 0.5 * len(tasks)


def point_weight(validation_tasks: tuple[str, ...] | list[str]) -> float:
    """Expected cost of a grid point: one merge, plus its validation when the grid has several points."""
    return 1.0 + (eval_weight(list(validation_tasks)) if validation_tasks else 0.0)


@dataclass(frozen=True)
class Evaluation:
    """One evaluation a run needs (the arguments of :meth:`_Run.evaluate`), so that an executor can run it as a
    unit elsewhere (:mod:`mergebench.runner.dispatch`)."""

    model: str
    path: Path
    tasks: list[str]
    model_info: dict
    label: str
    cost: dict | None = None
    weights: str | None = None


def reference_tasks(evaluation: Sequence[str], validation: Sequence[str], *, multitask: bool) -> dict[str, list[str]]:
    """The tasks of each reference model, keyed as :func:`_reference_evaluations` keys them: the base on the
    evaluation tasks; each expert (by domain) on its own domain's evaluation and validation tasks and on the general
    (forgetting) tasks, which say what its fine-tune forgot of the base, the reference a merge's forgetting is read
    against; the multi-task model on everything. The run's stages and its plan (:func:`plan_benchmark`) both take
    them from here, so the progress bar weighs exactly what runs."""
    from mergebench.eval.tasks import TASKS

    tasks = {"base": list(evaluation)}
    for domain in DOMAINS:
        tasks[domain] = ([t for t in evaluation if TASKS[t].domain in (domain, GENERAL)]
                         + [t for t in validation if TASKS[t].domain == domain])
    if multitask:
        tasks["multitask"] = [*evaluation, *validation]
    return tasks


def _reference_evaluations(run: _Run, base: BaseEntry) -> dict[str, Evaluation]:
    """The base's, each expert's (by domain) and the multi-task model's evaluations (:func:`reference_tasks`)."""
    config, folder = run.config, run.results_dir / base.label
    base_id = config.base_id(base)
    tasks = reference_tasks(run.evaluation_tasks, run.validation_tasks, multitask=bool(base.multitask))
    evaluations = {"base": Evaluation(config.model_ref(base.model), folder / "base.json", tasks["base"],
                                      {"role": "base", "base_model": base_id, "label": "base"},
                                      run.label(base, "base evaluation"))}
    for domain in DOMAINS:
        evaluations[domain] = Evaluation(config.model_ref(base.experts[domain]), folder / f"expert_{domain}.json",
                                         tasks[domain], {"role": "expert", "domain": domain, "base_model": base_id},
                                         run.label(base, f"{domain} expert evaluation"))
    if base.multitask:
        evaluations["multitask"] = Evaluation(config.model_ref(base.multitask), folder / "multitask.json",
                                              tasks["multitask"], {"role": "multitask", "base_model": base_id},
                                              run.label(base, "multi-task model evaluation"))
    return evaluations


def _references(run: _Run, base: BaseEntry) -> tuple[Results, dict[Domain, Results], Results | None]:
    done = {key: run.evaluate(e.model, e.path, e.tasks, e.model_info, section="evaluation", label=e.label)
            for key, e in _reference_evaluations(run, base).items()}
    return done["base"], {d: done[d] for d in DOMAINS}, done.get("multitask")


def _grid(run: _Run, base: BaseEntry, entry: MethodEntry, fingerprints: dict[str, str]) -> list[GridPoint]:
    config = run.config
    experts = [{"model": config.model_ref(base.experts[d]), "domain": d} for d in DOMAINS]
    points = entry.points()
    validation = tuple(run.validation_tasks) if len(points) > 1 else ()
    settings = {"max_samples": config.validation.max_samples, "dtype": config.validation.dtype,
                "eval_data": str(run.eval_data), "judge": run.judge_name}
    grid = []
    for parameters in points:
        recipe: dict[str, Any] = {"method": entry.method, "base_model": config.model_ref(base.model),
                                  "models": experts, "parameters": parameters}
        if config.merge.dtype:
            recipe["dtype"] = config.merge.dtype
        if config.data:
            recipe["data"] = {d: config.data_ref(ref) for d, ref in config.data.items()}
        grid.append(GridPoint(base=base.label, method_key=entry.key, recipe=recipe, validation_tasks=validation,
                              eval_settings=settings, fingerprints=fingerprints))
    return grid


def _search(run: _Run, base: BaseEntry, entry: MethodEntry, experts: dict[Domain, Results],
            fingerprints: dict[str, str]) -> tuple[GridPoint, PointRecord, list[PointRecord]]:
    """Run (or reuse) every grid point of one method; the winner and all records."""
    grid_dir = run.out / "grid" / base.label / entry.key
    models_dir = run.out / "models" / base.label / entry.key
    records = []
    points = _grid(run, base, entry, fingerprints)
    for i, point in enumerate(points):
        label = _point_label(run, base, entry, point, i, len(points))
        weight = point_weight(point.validation_tasks)
        record = PointRecord.load(grid_dir / f"{point.id}.json", point)
        if record is not None:
            run.stages.reused(label, weight=weight)
        else:
            done = "merged and validated" if point.validation_tasks else "merged"
            with run.stages.stage(label, weight=weight, done=done):
                record = run_point(point, model_dir=models_dir / point.id, record_path=grid_dir / f"{point.id}.json",
                                   experts_validation=experts, merge_options=run.merge_options,
                                   eval_options=run.eval_options["validation"], eval_data=run.eval_data,
                                   refusal_judge=run.refusal_judge, progress=run.progress)
            if record.score is not None:
                logger.info("%s: validation score %.4f", label, record.score)
        records.append(record)
    best = max(range(len(records)), key=lambda i: (records[i].score is not None, records[i].score or 0.0, -i))
    for point in points:  # only the winner's weights are kept
        if point.id != points[best].id:
            shutil.rmtree(models_dir / point.id, ignore_errors=True)
    return points[best], records[best], records


def _point_label(run: _Run, base: BaseEntry, entry: MethodEntry, point: GridPoint, index: int, count: int) -> str:
    if count == 1:
        return run.label(base, f"{entry.key} merge")
    searched = entry.search_grid()
    values = ", ".join(f"{k}={v}" for k, v in point.parameters.items() if k in searched)
    return run.label(base, f"{entry.key} grid point {index + 1}/{count}" + (f" ({values})" if values else ""))


def _final_evaluation(run: _Run, base: BaseEntry, entry: MethodEntry, point: GridPoint, record: PointRecord,
                      records: list[PointRecord]) -> Evaluation:
    """The evaluation of a method's chosen point: its merged folder, results file, model block and costs."""
    model_dir = run.out / "models" / base.label / entry.key / point.id
    path = run.results_dir / base.label / f"{entry.key}.json"
    validation_seconds = sum(r.merge_seconds + r.validation_seconds for r in records) if len(records) > 1 else 0.0
    cost = {"merge_seconds": round(record.merge_seconds, 3), "merge_peak_memory_bytes": record.peak_memory_bytes,
            "validation_seconds": round(validation_seconds, 3)}
    info = {"role": "merged", "base_model": run.config.base_id(base), "method": entry.method,
            "parameters": record.parameters, "experts": [m["model"] for m in point.recipe["models"]],
            "grid_point": point.id, "validation_score": record.score}
    if entry.label:
        info["label"] = entry.label
    weights = f"grid point {point.fingerprint}"  # the merge is deterministic: its point names its weights
    return Evaluation(str(model_dir), path, run.evaluation_tasks, info, run.label(base, f"{entry.key} evaluation"),
                      cost=cost, weights=weights)


def _final(run: _Run, base: BaseEntry, entry: MethodEntry, point: GridPoint, record: PointRecord,
           records: list[PointRecord]) -> Results:
    final = _final_evaluation(run, base, entry, point, record, records)
    model_dir, path, weights = Path(final.model), final.path, str(final.weights)
    old = run.reuse(path, run.evaluation_stage(weights, final.tasks, final.model_info, section="evaluation"),
                    label=final.label)
    if old is not None:
        return old
    if not (model_dir / "config.json").is_file():  # deleted, or not kept: merge the winner again (deterministic)
        from mergebench.runner.isolated import merge_in_child

        shutil.rmtree(model_dir, ignore_errors=True)
        with run.stages.stage(run.label(base, f"{entry.key} merge of the best point"), weight=1.0, done="merged"):
            merge_in_child(point.recipe, model_dir, options=run.merge_options)
    results = run.evaluate(str(model_dir), path, final.tasks, final.model_info, section="evaluation",
                           label=final.label, cost=final.cost, weights=weights)
    push = run.config.push
    if push and push.models:
        results = _push_model(run, model_dir, f"{push.models}/{base.label}-{entry.key}", results, path)
    if not run.config.keep_models:
        shutil.rmtree(model_dir, ignore_errors=True)
    return results


def _push_model(run: _Run, model_dir: Path, repo_id: str, results: Results, path: Path) -> Results:
    """Push a chosen merge, then its scores into its repo; its results file then names the repo and commit."""
    from mergebench.eval.hub_results import publish_scores, pushed
    from mergebench.eval.results import save_results
    from mergebench.hub.push import push_folder

    assert run.config.push is not None
    push_folder(model_dir, repo_id, private=run.config.push.private)
    results = pushed(results, repo_id, _fingerprint(repo_id))
    save_results(results, path)
    if results.eval_data.get("kind") != "hub":
        logger.warning("The scores of %s stay off its repo: .eval_results entries name a Hub evaluation dataset "
                       "(eval_data: org/mergebench-eval), not %s data.", repo_id, results.eval_data.get("kind"))
        return results
    publish_scores(results, results_repo=run.config.push.results)
    return results


def plan_benchmark(config: BenchConfig, stages: StageLog, entries: list[MethodEntry] | None = None) -> None:
    """Announce every stage of a run to ``stages`` (reference evaluations, grid points, final evaluations) so
    that the bar and ETA count them; once per output folder (:func:`run_benchmark` calls it too, so a caller
    only calls it to announce the run before stages of its own, as MergeBench-Tiny does)."""
    key = f"benchmark:{config.output_dir}"
    if key in stages.planned:
        return
    stages.planned.add(key)

    evaluation, validation = config.evaluation.task_names(), config.validation.task_names()
    for base in config.bases:
        for tasks in reference_tasks(evaluation, validation, multitask=bool(base.multitask)).values():
            stages.plan(eval_weight(tasks))
        for entry in config.methods if entries is None else entries:
            count = len(entry.points())
            stages.plan(count * point_weight(validation if count > 1 else []), stages=count)
            stages.plan(eval_weight(evaluation))


def run_benchmark(config: BenchConfig | str | Path, *, resume: bool = True, progress: bool = True,
                  methods: list[str] | None = None, stages: StageLog | None = None) -> RunSummary:
    """Run (or resume) a benchmark; see the module docstring.

    Args:
        config: a :class:`BenchConfig` or the path of a ``BENCH.yaml``.
        resume: reuse finished grid points and evaluations (default); ``False`` deletes the output folder first.
        progress: print one line per stage (evaluation, grid point) on stderr, with a bar and an ETA.
        methods: only these method rows (names or labels).
        stages: report to this :class:`~mergebench.runner.progress.StageLog` instead (``progress`` is then
            ignored), e.g. to continue the count of an enclosing run such as MergeBench-Tiny.

    Raises:
        ConfigError: an invalid configuration or an unknown name in ``methods`` — before any work.
    """
    from mergebench.errors import ConfigError
    from mergebench.eval.leaderboard import format_table, read_results, table

    started = time.perf_counter()
    config = config if isinstance(config, BenchConfig) else BenchConfig.from_yaml(config)
    entries = config.methods
    if methods:
        unknown = [m for m in methods if m not in {e.key for e in entries} | {e.method for e in entries}]
        if unknown:
            raise ConfigError(f"No method row named {', '.join(unknown)} in the configuration.",
                              hint=f"Rows: {', '.join(e.key for e in entries)}.")
        entries = [e for e in entries if e.key in methods or e.method in methods]
    stages = stages or StageLog(enabled=progress)
    plan_benchmark(config, stages, entries)
    run = _Run(config, stages=stages)
    if not resume:
        shutil.rmtree(run.out, ignore_errors=True)
    run.out.mkdir(parents=True, exist_ok=True)
    if config.executor.kind != "local":  # the units run on Ray or Jobs; the loop below only reads what they left
        from mergebench.runner.dispatch import ReadOnlyStages, dispatch

        dispatch(run, entries)
        run.stages = ReadOnlyStages()
    for base in config.bases:
        refs = [config.model_ref(base.model), *(config.model_ref(base.experts[d]) for d in DOMAINS)]
        fingerprints = {ref: _fingerprint(ref) for ref in refs}
        _, experts, _ = _references(run, base)
        for entry in entries:
            point, record, records = _search(run, base, entry, experts, fingerprints)
            _final(run, base, entry, point, record, records)
    results = read_results(run.results_dir)
    board = table(results)
    (run.out / "leaderboard.md").write_text(format_table(board) + "\n", encoding="utf-8")
    board.to_csv(run.out / "leaderboard.csv", index=False)
    if config.push and config.push.results:
        from mergebench.eval.results import push_results

        for r in results:
            push_results(config.push.results, r, private=config.push.private)
    return RunSummary(run.out, run.results_dir, board, time.perf_counter() - started)
