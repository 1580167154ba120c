"""The Hugging Face Jobs executor: each unit one Job (``HfApi.run_job``) on the flavor its kind asks for.

A Job runs ``<command> unit run hf://datasets/<results_repo>/runs/<name>/units/<id>.json`` in
``executor.hf_jobs.image`` (an image or Space with ``mergebench`` installed), with ``HF_TOKEN`` as a secret and
``executor.hf_jobs.timeout``. The specs of a wave are uploaded in one commit first; each unit publishes its
outputs to the same dataset in one commit, and the driver copies them into the run folder.

Every Job carries the labels ``mergebench-run`` (the run: its name and results location) and
``mergebench-unit`` (the unit's id), so a driver started again after a crash or a kill lists the run's Jobs
and **re-attaches** to those still running instead of launching them again; a unit whose Job finished while
no driver watched is collected from the dataset. Retries count within one driver: started again after a
failure, it gives each failed unit ``retries + 1`` fresh attempts. Ctrl-C cancels the Jobs this driver is
waiting for. Each ended Job's log is kept in ``<run>/jobs/<unit id>/<job id>.log`` and its cost (the flavor's price from
``list_jobs_hardware`` × its running time) in ``<run>/jobs/ledger.json``; a method's final results carry the
cost of its grid search as ``cost.jobs_usd``.
"""

from __future__ import annotations

import json
import logging
import re
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

from mergebench.errors import ConfigError
from mergebench.hub import jobs as hub_jobs
from mergebench.runner.config import ExecutorSettings
from mergebench.runner.executors import Attempt, Executor, Outcome
from mergebench.runner.progress import StageLog
from mergebench.runner.units import UnitSpec, spec_json
from mergebench.work import fingerprint_of, write_atomic

logger = logging.getLogger(__name__)

RUN_LABEL, UNIT_LABEL = "mergebench-run", "mergebench-unit"
LOG_TAIL = 5


def label_value(text: str) -> str:
    """``text`` as a Job label value (letters, digits, ``-`` and ``_``)."""
    return re.sub(r"[^A-Za-z0-9_-]", "-", text).strip("-") or "run"


def results_prefix(name: str) -> str:
    """Where the units of the run ``name`` publish in ``executor.results_repo``."""
    return f"runs/{label_value(name)}"


class HfJobsExecutor(Executor):
    name = "Hugging Face Jobs"

    def __init__(self, settings: ExecutorSettings, *, run_dir: Path, name: str) -> None:
        super().__init__(settings, run_dir=run_dir)
        from huggingface_hub import HfApi, get_token

        jobs, repo = settings.hf_jobs, settings.results_repo
        problems = []
        if not jobs.image:
            problems.append("executor.hf_jobs.image: the Docker image or Space (hf.co/spaces/ORG/NAME) the Jobs run "
                            "in, with `mergebench` installed")
        if not repo:
            problems.append("executor.results_repo: a dataset repo (ORG/NAME) the units publish their outputs to")
        token = get_token()
        if not token:
            problems.append("no Hugging Face token: the Jobs need one (as their HF_TOKEN secret)")
        if problems:
            raise ConfigError("The hf-jobs executor cannot start:\n" + "\n".join(f"  - {p}" for p in problems),
                              hint="Set these in BENCH.yaml under `executor:` (see the README, 'Running at scale'); "
                                   "log in with `hf auth login` or set HF_TOKEN.")
        self.api, self.token = HfApi(), str(token)
        self.namespace = jobs.namespace or hub_jobs.whoami_name(self.api)
        self.run_label = f"{label_value(name)[:60]}-{fingerprint_of([repo, results_prefix(name)])[:8]}"
        self.per_second = hub_jobs.hardware_prices(self.api)
        unknown = sorted(set(jobs.flavors.values()) - set(self.per_second))
        if unknown:
            raise ConfigError(f"Unknown Jobs flavor(s) in executor.hf_jobs.flavors: {', '.join(unknown)}.",
                              hint=f"Flavors: {', '.join(sorted(self.per_second))}.")
        self.jobs_dir = self.run_dir / "jobs"
        self.ledger: dict[str, dict[str, Any]] = {}

    # ------------------------------------------------------------------------------------- the wave's start
    def prepare(self, units: Sequence[UnitSpec], stages: StageLog) -> list[UnitSpec]:
        """Collect the units an earlier Job finished; upload the others' specs in one commit."""
        remaining = super().prepare(units, stages)
        if remaining:
            remaining[0].results.put({f"units/{u.id}.json": spec_json(u).encode() for u in remaining},
                                     message=f"MergeBench: {len(remaining)} unit spec(s)")
        return remaining

    def _run_jobs(self) -> list[Any]:
        return hub_jobs.list_jobs(self.api, labels={RUN_LABEL: self.run_label}, namespace=self.namespace)

    def attach(self, units: Sequence[UnitSpec]) -> dict[str, Attempt]:
        """The run's Jobs still running, for the units of this wave (one per unit: extra copies are cancelled)."""
        wanted = {u.id: u for u in units}
        attached: dict[str, Attempt] = {}
        for job in sorted(self._run_jobs(), key=lambda j: j.created_at or 0):
            unit = wanted.get((job.labels or {}).get(UNIT_LABEL, ""))
            if unit is None or job.status.stage in hub_jobs.TERMINAL:
                continue
            if unit.id in attached:
                hub_jobs.cancel_job(self.api, job.id, namespace=self.namespace)
                continue
            running = (job.durations.total_secs or 0) if job.durations else 0
            attached[unit.id] = Attempt(unit, job.id, started=time.monotonic() - running)
            logger.info("%s: re-attached to running job %s", unit.label, job.id)
        return attached

    # ----------------------------------------------------------------------------------------- one unit
    def launch(self, unit: UnitSpec) -> Attempt:
        jobs = self.settings.hf_jobs
        spec = unit.results.describe(f"units/{unit.id}.json")
        job = hub_jobs.launch_job(self.api, image=str(jobs.image), command=[*jobs.command, "unit", "run", spec],
                                  secrets={"HF_TOKEN": self.token}, flavor=jobs.flavors[unit.kind],
                                  timeout=jobs.timeout, labels={RUN_LABEL: self.run_label, UNIT_LABEL: unit.id},
                                  name=f"mergebench-{label_value(unit.kind)}-{unit.id}", namespace=self.namespace)
        return Attempt(unit, job.id)

    def wait(self, attempts: list[Attempt]) -> list[tuple[Attempt, Outcome]]:
        time.sleep(self.settings.hf_jobs.poll_seconds)
        infos = {job.id: job for job in self._run_jobs()}
        ended = []
        for attempt in attempts:
            info = infos.get(attempt.handle) or hub_jobs.inspect_job(self.api, attempt.handle, namespace=self.namespace)
            if info.status.stage in hub_jobs.TERMINAL:
                ended.append((attempt, self._ended(attempt.unit, info)))
        return ended

    def _ended(self, unit: UnitSpec, job: Any) -> Outcome:
        """Keep the Job's log and cost; collect its outputs if it published its record."""
        log = self._keep_log(unit, job)
        seconds = float(job.durations.running_secs or 0) if job.durations else 0.0
        usd = seconds * self.per_second.get(str(job.flavor), 0.0)
        self.ledger[job.id] = {"unit": unit.id, "label": unit.label, "kind": unit.kind, "flavor": job.flavor,
                               "stage": job.status.stage, "running_seconds": seconds, "usd": round(usd, 6)}
        write_atomic(self.jobs_dir / "ledger.json", json.dumps(self.ledger, indent=1) + "\n")
        where = f"job {job.id} ({job.flavor}, ${usd:.4f})"
        if job.status.stage == "COMPLETED" and unit.is_done():
            return Outcome(True, seconds, where)
        reason = job.status.message or job.status.stage
        if job.status.stage == "COMPLETED":
            reason = "the job completed without publishing the unit's record"
        tail = " | ".join(log.read_text(encoding="utf-8").splitlines()[-LOG_TAIL:])
        return Outcome(False, seconds, f"{where} {job.status.stage}: {reason}; log {log} ends: {tail}")

    def _keep_log(self, unit: UnitSpec, job: Any) -> Path:
        path = self.jobs_dir / unit.id / f"{job.id}.log"
        lines = hub_jobs.job_logs(self.api, job.id, namespace=self.namespace)
        write_atomic(path, "".join(f"{line}\n" for line in lines))
        return path

    def cancel(self, attempt: Attempt) -> None:
        hub_jobs.cancel_job(self.api, attempt.handle, namespace=self.namespace)

    def cost(self, unit_ids: Iterable[str]) -> float | None:
        """What the Jobs of these units cost (every attempt, failed ones too): price × running time."""
        ids = set(unit_ids)
        total = 0.0
        for job in self._run_jobs():
            if (job.labels or {}).get(UNIT_LABEL) in ids and job.durations and job.durations.running_secs:
                total += job.durations.running_secs * self.per_second.get(str(job.flavor), 0.0)
        return round(total, 6)

    def close(self) -> None:
        """Log what this driver's Jobs cost (the full list is in ``jobs/ledger.json``)."""
        if self.ledger:
            usd = sum(entry["usd"] for entry in self.ledger.values())
            seconds = sum(entry["running_seconds"] for entry in self.ledger.values())
            logger.info("Hugging Face Jobs: %d job(s), %.0f s running, $%.4f (ledger: %s)", len(self.ledger),
                        seconds, usd, self.jobs_dir / "ledger.json")

    def log_hint(self) -> str:
        return f"{self.jobs_dir}/<unit id>/<job id>.log"
