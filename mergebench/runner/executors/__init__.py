"""Executors: where the units of a benchmark run (:mod:`mergebench.runner.units`) run.

- ``local`` (default, what MergeBench-Tiny uses): the driver's own loop, one unit after the other in this
  process (:func:`mergebench.runner.run.run_benchmark`); no executor object is involved.
- ``ray`` (:mod:`.ray`): each unit a Ray task asking for its CPUs and GPUs, on a local cluster
  (``ray.init()``) or an existing one (``executor.ray.address``).
- ``hf-jobs`` (:mod:`.hf_jobs`): each unit a Hugging Face Job on a chosen flavor, publishing its outputs to a
  Hub dataset; the driver re-attaches to running Jobs after a restart.

Both run the units of one wave (:mod:`mergebench.runner.dispatch`) with the same loop, :meth:`Executor.run`:
at most ``max_concurrent`` units in flight, a failed unit relaunched up to ``retries`` times in this driver, the
others carrying on; Ctrl-C cancels what is in flight. Units whose record is already in the run folder are never
handed to an executor, so a killed driver, started again, never redoes finished work.
"""

from __future__ import annotations

import abc
import logging
import time
from collections import deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import Any

from mergebench.errors import UnitError
from mergebench.runner.config import ExecutorSettings
from mergebench.runner.progress import StageLog
from mergebench.runner.units import ResultsLocation, UnitSpec, collect

logger = logging.getLogger(__name__)


@dataclass
class Attempt:
    """One try of a unit: the executor's handle on it (a Ray object ref, a Job id) and when it started."""

    unit: UnitSpec
    handle: Any
    started: float = field(default_factory=time.monotonic)


@dataclass(frozen=True)
class Outcome:
    """How an attempt ended: ``detail`` goes into the stage line (success) or the error (failure)."""

    ok: bool
    seconds: float
    detail: str = ""


class Executor(abc.ABC):
    """Runs units concurrently somewhere else; subclasses say how to launch, wait for and cancel one."""

    name: str = ""

    def __init__(self, settings: ExecutorSettings, *, run_dir: Path) -> None:
        self.settings, self.run_dir = settings, Path(run_dir)

    def prepare(self, units: Sequence[UnitSpec], stages: StageLog) -> list[UnitSpec]:
        """Before a wave: what is left to launch. A unit that publishes to a Hub repo may have been finished
        there by an earlier driver's task or Job: it is only collected into the run folder."""
        remaining = []
        for unit in units:
            if unit.results.repo is not None and unit.is_done():
                collect(unit, self.run_dir)
                stages.reused(unit.label, weight=unit.weight, why="done by an earlier task or Job")
            else:
                remaining.append(unit)
        return remaining

    def attach(self, units: Sequence[UnitSpec]) -> dict[str, Attempt]:
        """Units already running from an earlier driver, by unit id (default: none)."""
        return {}

    @abc.abstractmethod
    def launch(self, unit: UnitSpec) -> Attempt:
        """Start ``unit``."""

    @abc.abstractmethod
    def wait(self, attempts: list[Attempt]) -> list[tuple[Attempt, Outcome]]:
        """Block until at least one attempt ended or a poll interval passed; the ended ones."""

    @abc.abstractmethod
    def cancel(self, attempt: Attempt) -> None:
        """Stop an attempt in flight (Ctrl-C)."""

    def cost(self, unit_ids: Iterable[str]) -> float | None:
        """What running these units cost in USD, if the executor bills (default: ``None``)."""
        return None

    @abc.abstractmethod
    def close(self) -> None:
        """Release what the executor holds (a Ray cluster connection); report what it did."""

    def __enter__(self) -> Executor:
        return self

    def __exit__(self, exc_type: type[BaseException] | None, exc: BaseException | None,
                 tb: TracebackType | None) -> None:
        self.close()

    def run(self, units: Sequence[UnitSpec], stages: StageLog) -> None:
        """Run every unit, at most ``max_concurrent`` at once; see the module docstring.

        Raises:
            UnitError: some units failed ``retries + 1`` times (raised once every other unit has ended).
        """
        units = self.prepare(units, stages)
        if not units:
            return
        failures: dict[str, list[str]] = {u.id: [] for u in units}
        inflight = self.attach(units)
        queue = deque(u for u in units if u.id not in inflight)
        failed: list[UnitSpec] = []
        last_end = time.monotonic()
        try:
            while queue or inflight:
                while queue and len(inflight) < self.settings.max_concurrent:
                    unit = queue.popleft()
                    inflight[unit.id] = self.launch(unit)
                    logger.info("%s: %s launched on %s", unit.label, unit.id, self.name)
                for attempt, outcome in self.wait(list(inflight.values())):
                    unit = attempt.unit
                    del inflight[unit.id]
                    now = time.monotonic()
                    if outcome.ok:
                        collect(unit, self.run_dir)
                        stages.finished(unit.label, weight=unit.weight, seconds=outcome.seconds,
                                        done=f"done on {outcome.detail}", rate_seconds=now - last_end)
                        last_end = now
                        continue
                    failures[unit.id].append(outcome.detail)
                    if len(failures[unit.id]) <= self.settings.retries:
                        logger.warning("%s failed (%s); retrying (%d/%d)", unit.label, outcome.detail,
                                       len(failures[unit.id]), self.settings.retries)
                        queue.append(unit)
                    else:
                        failed.append(unit)
        except KeyboardInterrupt:
            for attempt in inflight.values():
                self.cancel(attempt)
            logger.warning("Cancelled %d unit(s) in flight on %s", len(inflight), self.name)
            raise
        if failed:
            lines = "\n".join(f"  - {u.label}: {failures[u.id][-1]}" for u in failed)
            raise UnitError(f"{len(failed)} unit(s) failed on {self.name} after {self.settings.retries + 1} "
                            f"attempt(s):\n{lines}", units=[u.label for u in failed],
                            hint=f"Read the logs ({self.log_hint()}); fix the cause and run the same command again: "
                                 "finished units are kept, failed ones are tried again.")

    def log_hint(self) -> str:
        """Where the failed units' logs are, for the error's hint."""
        return "the messages above"


def make_executor(settings: ExecutorSettings, run_dir: Path, *, name: str) -> Executor:
    """The executor ``settings`` ask for (``ray`` or ``hf-jobs``; ``local`` has none), for the run ``name`` (a
    benchmark run, an expert-training plan) whose folder is ``run_dir``.

    Raises:
        ConfigError: a setting the executor needs is missing or wrong (every problem at once).
        MissingPackageError: ``ray`` is not installed.
    """
    if settings.kind == "ray":
        from mergebench.runner.executors.ray import RayExecutor

        return RayExecutor(settings, run_dir=run_dir)
    if settings.kind == "hf-jobs":
        from mergebench.runner.executors.hf_jobs import HfJobsExecutor

        return HfJobsExecutor(settings, run_dir=run_dir, name=name)
    raise ValueError(f"the '{settings.kind}' executor is the driver's own loop: it has no executor object")


def results_location(settings: ExecutorSettings, run_dir: Path, *, name: str) -> ResultsLocation:
    """Where the units of the run ``name`` publish: its folder ``run_dir`` itself, or ``runs/<name>/`` in
    ``executor.results_repo`` (needed by hf-jobs, whose disk is gone when a Job ends)."""
    if settings.results_repo is None:
        return ResultsLocation(folder=str(run_dir))
    from mergebench.runner.executors.hf_jobs import results_prefix

    return ResultsLocation(repo=settings.results_repo, prefix=results_prefix(name), private=settings.private)


__all__ = ["Attempt", "Executor", "Outcome", "make_executor", "results_location"]
