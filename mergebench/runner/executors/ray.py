"""The Ray executor: each unit a Ray task with the CPUs and GPUs its kind asks for (``executor.ray.resources``).

Without ``executor.ray.address`` the driver starts a local cluster (``ray.init(num_cpus=...)``) and stops it
at the end; with one (``auto``, ``ray://head:10001``) it joins that cluster, and the workers get the driver's
``HF_ENDPOINT``/``HF_TOKEN`` through the task's runtime environment. Units read their inputs from the Hub or
from paths: on a cluster of several machines, the paths (models, validation data, the run folder) must be on
a shared file system, or the inputs on the Hub and ``executor.results_repo`` set so that units publish their
outputs there.

Ray ties a task to the driver that submitted it: when the driver is killed, its tasks are killed too, and
the next driver runs them again (a merge resumes from its verified shards); finished units are never run
again because their records are in the run folder.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from mergebench.errors import MergeBenchError, MissingPackageError
from mergebench.runner.config import ExecutorSettings
from mergebench.runner.executors import Attempt, Executor, Outcome
from mergebench.runner.units import UnitSpec, spec_json

logger = logging.getLogger(__name__)

FORWARDED_ENV = ("HF_ENDPOINT", "HF_TOKEN", "HF_HUB_DISABLE_XET")
"""Variables a remote cluster's workers get from the driver (a local cluster's workers inherit them all)."""


def run_spec(spec: str) -> float:
    """The body of a Ray task: run one unit from its JSON spec in the worker; returns its seconds."""
    from mergebench.runner.units import run_unit, unit_from_json

    started = time.perf_counter()
    run_unit(unit_from_json(spec))
    return time.perf_counter() - started


def failure_text(error: BaseException) -> str:
    """What failed inside a task, without Ray's wrapping: ``Type: message`` (and the hint of a MergeBench error)."""
    cause = getattr(error, "cause", None) or error
    text = f"{type(cause).__name__}: {cause}".splitlines()[0]
    if isinstance(cause, MergeBenchError) and cause.hint:
        text += f" (hint: {cause.hint})"
    return text


class RayExecutor(Executor):
    name = "ray"

    def __init__(self, settings: ExecutorSettings, *, run_dir: Path) -> None:
        super().__init__(settings, run_dir=run_dir)
        try:
            import ray
        except ImportError as e:
            raise MissingPackageError("The ray executor needs Ray, which is not installed.", package="ray",
                                      hint="pip install ray==2.60.0 (it is in requirements.txt)") from e
        self._ray: Any = ray
        self._task: Any = None

    def _remote(self) -> Any:
        """The Ray task, after joining or starting the cluster (once)."""
        if self._task is None:
            options: dict[str, Any] = {"include_dashboard": False, "log_to_driver": False,
                                       "logging_level": logging.WARNING}
            address = self.settings.ray.address
            if address:
                env = {k: os.environ[k] for k in FORWARDED_ENV if k in os.environ}
                self._ray.init(address=address, runtime_env={"env_vars": env}, **options)
            else:
                self._ray.init(num_cpus=self.settings.ray.num_cpus, **options)
            self._task = self._ray.remote(run_spec)
        return self._task

    def prepare(self, units: Sequence[UnitSpec], stages: Any) -> list[UnitSpec]:
        if units:
            self._remote()
        return list(units)

    def launch(self, unit: UnitSpec) -> Attempt:
        resources = self.settings.ray.resources[unit.kind]
        task = self._remote().options(num_cpus=resources.cpus, num_gpus=resources.gpus, max_retries=0,
                                      name=f"mergebench-{unit.kind}-{unit.id}")
        return Attempt(unit, task.remote(spec_json(unit)))

    def wait(self, attempts: list[Attempt]) -> list[tuple[Attempt, Outcome]]:
        by_ref = {a.handle: a for a in attempts}
        ready, _ = self._ray.wait(list(by_ref), num_returns=len(by_ref), timeout=1.0, fetch_local=False)
        ended = []
        for ref in ready:
            attempt = by_ref[ref]
            try:
                seconds = float(self._ray.get(ref))
                ended.append((attempt, Outcome(True, seconds, "ray")))
            except Exception as e:  # the task's exception (RayTaskError) or a lost worker
                ended.append((attempt, Outcome(False, time.monotonic() - attempt.started, failure_text(e))))
        return ended

    def cancel(self, attempt: Attempt) -> None:
        self._ray.cancel(attempt.handle, force=True)

    def close(self) -> None:
        """Disconnect from the cluster (a local one stops with its driver)."""
        if self._task is not None:
            self._ray.shutdown()
            self._task = None

    def log_hint(self) -> str:
        return "each worker's output is in the Ray session's logs, /tmp/ray/session_latest/logs"
