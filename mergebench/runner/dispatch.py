"""A benchmark run's units on an executor (Ray, Hugging Face Jobs), in three waves.

Units of one wave are independent; each wave needs the one before:

1. **references**: the base, each expert and the multi-task model evaluated (what normalisation needs);
2. **grid points**: every point of every (base, method) merged and scored on the validation tasks;
3. **final evaluations**: each method's chosen point merged again (or reused) and evaluated.

Each unit is built from the driver's own description of the work (:func:`mergebench.runner.run._grid`,
``_reference_evaluations``, ``_final_evaluation``) with the fingerprint the driver checks, and is handed to
the executor only when the run folder lacks its record. After the waves, the driver's in-process loop finds
every unit done and only reads the results (see :func:`mergebench.runner.run.run_benchmark`).
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import shutil
from collections.abc import Iterator
from pathlib import Path

from mergebench.domains import DOMAINS, Domain
from mergebench.errors import ConfigError, UnitError
from mergebench.eval.results import Results
from mergebench.runner import executors
from mergebench.runner.config import BaseEntry, BenchConfig, MethodEntry
from mergebench.runner.executors import Executor, make_executor
from mergebench.runner.point import GridPoint
from mergebench.runner.progress import StageLog
from mergebench.runner.run import (
    Evaluation,
    _final_evaluation,
    _fingerprint,
    _grid,
    _point_label,
    _reference_evaluations,
    _references,
    _Run,
    _search,
    eval_weight,
    point_weight,
)
from mergebench.runner.units import (
    EvalOptions,
    EvaluationUnit,
    GridPointUnit,
    MergeStep,
    PointSpec,
    ResultsLocation,
    StageSpec,
    UnitSpec,
    write_spec,
)
from mergebench.work import is_current

logger = logging.getLogger(__name__)


def results_location(config: BenchConfig, run_dir: Path) -> ResultsLocation:
    """The run folder itself, or ``runs/<name>/`` in ``executor.results_repo`` (needed by hf-jobs)."""
    return executors.results_location(config.executor, run_dir, name=config.name)


def dispatch(run: _Run, entries: list[MethodEntry]) -> None:
    """Run every unit of ``run`` that its folder lacks on the configured executor, wave by wave.

    Raises:
        ConfigError: a setting the executor cannot honour (``push.models``), or its own settings are wrong.
        UnitError: units failed after their retries (the others finished and are kept).
    """
    config = run.config
    if config.push and config.push.models:
        raise ConfigError(f"push.models needs the chosen merged models on this machine; the {config.executor.kind} "
                          "executor merges them elsewhere.",
                          hint="Run with --executor local to push the chosen models, or push them afterwards.")
    waves = _Waves(run, entries, results_location(config, run.out))
    with make_executor(config.executor, run.out, name=config.name) as executor:
        waves.run(executor, waves.references())
        waves.run(executor, waves.points())
        finals = waves.finals(executor)
        waves.run(executor, [unit for unit, _ in finals])
    if not config.keep_models:
        for _, model_dir in finals:
            shutil.rmtree(model_dir, ignore_errors=True)


class ReadOnlyStages(StageLog):
    """The driver's stage log while it only reads what the units left: silent, and a stage that would do work
    here (an evaluation or merge whose unit is not done) is an error instead of a silent local computation."""

    def __init__(self) -> None:
        super().__init__(enabled=False)

    @contextlib.contextmanager
    def stage(self, label: str, *, weight: float = 1.0, done: str = "done") -> Iterator[None]:
        raise UnitError(f"{label}: its unit's outputs are missing from the run folder after the executor ran it.",
                        units=[label], hint="Something removed them meanwhile: run the same command again.")


@contextlib.contextmanager
def _quiet(run: _Run) -> Iterator[None]:
    """Read finished stages through the driver's own functions without reporting them again."""
    stages, run.stages = run.stages, ReadOnlyStages()
    try:
        yield
    finally:
        run.stages = stages


class _Waves:
    def __init__(self, run: _Run, entries: list[MethodEntry], location: ResultsLocation) -> None:
        self.run_, self.entries, self.location = run, entries, location
        self.shared = location.folder is not None
        """Whether units write in the run folder itself (merged models are then kept there, as in-process)."""
        self.point_units: dict[tuple[str, str], list[GridPointUnit]] = {}

    def run(self, executor: Executor, units: list[UnitSpec]) -> None:
        """Save the specs in ``units/`` (to run one by hand: ``mergebench unit run units/ID.json``), then hand the
        units whose record the run folder lacks to the executor."""
        out = self.run_.out
        for unit in units:
            write_spec(unit, out / "units")
        executor.run([u for u in units if not is_current(out / u.record, u.fingerprint)], self.run_.stages)

    # ------------------------------------------------------------------------------------------- wave 1
    def references(self) -> list[UnitSpec]:
        return [self._evaluation(e) for base in self.run_.config.bases
                for e in _reference_evaluations(self.run_, base).values()]

    def _evaluation(self, evaluation: Evaluation, merge: MergeStep | None = None) -> EvaluationUnit:
        run = self.run_
        settings = run.config.evaluation
        weights = evaluation.weights or _fingerprint(evaluation.model)
        stage = run.evaluation_stage(weights, evaluation.tasks, evaluation.model_info, section="evaluation")
        return EvaluationUnit(
            label=evaluation.label, results=self.location, path=str(evaluation.path.relative_to(run.out)),
            weight=eval_weight(evaluation.tasks),
            stage=StageSpec(kind=stage.kind, inputs=dict(stage.inputs), version=stage.version),
            model=None if merge else evaluation.model, merge=merge, tasks=evaluation.tasks,
            max_samples=settings.max_samples, eval_data=run.eval_data, model_info=evaluation.model_info,
            options=EvalOptions(batch_size=settings.batch_size, dtype=settings.dtype, refusal_judge=run.refusal_judge),
            cost=evaluation.cost)

    # ------------------------------------------------------------------------------------------- wave 2
    def _experts(self, base: BaseEntry) -> dict[Domain, Results]:
        with _quiet(self.run_):
            return _references(self.run_, base)[1]

    def _fingerprints(self, base: BaseEntry) -> dict[str, str]:
        config = self.run_.config
        refs = [config.model_ref(base.model), *(config.model_ref(base.experts[d]) for d in DOMAINS)]
        return {ref: _fingerprint(ref) for ref in refs}

    def points(self) -> list[UnitSpec]:
        units: list[UnitSpec] = []
        for base in self.run_.config.bases:
            experts, fingerprints = self._experts(base), self._fingerprints(base)
            for entry in self.entries:
                points = _grid(self.run_, base, entry, fingerprints)
                made = [self._point(base, entry, p, _point_label(self.run_, base, entry, p, i, len(points)), experts)
                        for i, p in enumerate(points)]
                self.point_units[(base.label, entry.key)] = made
                units += made
        return units

    def _point(self, base: BaseEntry, entry: MethodEntry, point: GridPoint, label: str,
               experts: dict[Domain, Results]) -> GridPointUnit:
        run, config = self.run_, self.run_.config
        model_dir = run.out / "models" / base.label / entry.key / point.id
        return GridPointUnit(
            label=label, results=self.location, path=f"grid/{base.label}/{entry.key}/{point.id}.json",
            weight=point_weight(point.validation_tasks), point=PointSpec(**dataclasses.asdict(point)),
            experts_validation={d: r.to_dict() for d, r in experts.items()},
            model_dir=str(model_dir) if self.shared else None, threads=config.merge.threads,
            shard_size=config.merge.shard_size, eval_data=run.eval_data,
            options=EvalOptions(batch_size=config.validation.batch_size, dtype=config.validation.dtype,
                                refusal_judge=run.refusal_judge))

    # ------------------------------------------------------------------------------------------- wave 3
    def finals(self, executor: Executor) -> list[tuple[UnitSpec, Path]]:
        """Each method's final evaluation unit (its grid search's cost on the executor in ``cost.jobs_usd``) and
        the folder of its merged model."""
        run, config = self.run_, self.run_.config
        finals: list[tuple[UnitSpec, Path]] = []
        for base in config.bases:
            experts, fingerprints = self._experts(base), self._fingerprints(base)
            for entry in self.entries:
                with _quiet(run):
                    point, record, records = _search(run, base, entry, experts, fingerprints)
                evaluation = _final_evaluation(run, base, entry, point, record, records)
                usd = executor.cost(u.id for u in self.point_units[(base.label, entry.key)])
                if usd is not None:
                    evaluation = dataclasses.replace(evaluation, cost={**(evaluation.cost or {}), "jobs_usd": usd})
                merge = MergeStep(recipe=point.recipe, model_dir=evaluation.model if self.shared else None,
                                  threads=config.merge.threads, shard_size=config.merge.shard_size)
                finals.append((self._evaluation(evaluation, merge), Path(evaluation.model)))
        return finals
