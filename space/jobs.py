"""The submission queue: one JSON file per job on local disk, mirrored to a requests dataset on the Hub.

Why this shape (see ``shared/reference/space-notes.md``): Gradio's queue lives in memory and closing a
tab cancels a running handler, and Spaces have no persistent disk any more. So a handler only validates
a request and appends a job here; one worker thread runs jobs one at a time; every change is written
atomically to ``jobs/{id}.json`` (the live state) and uploaded whole to ``requests/{id}.json`` of the
requests dataset (what survives the container). At start-up :meth:`JobStore.recover` merges both,
puts interrupted RUNNING jobs back in the queue (or fails them after ``max_attempts``), so the queue is
never lost. Only the worker changes a job once it is queued; a lock orders the handler threads.

With ``dispatch = hf-jobs`` a job runs as a Hugging Face Job (:mod:`dispatch`): its record also holds the Job's
id, flavor, running time and cost, and a restart keeps it RUNNING when its Job is found by label (the
dispatcher re-attaches to it) instead of queueing it again.
"""

from __future__ import annotations

import json
import logging
import threading
import uuid
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any, Literal

from mergebench.work import write_atomic

logger = logging.getLogger(__name__)

Status = Literal["pending", "running", "done", "failed"]
Kind = Literal["merge", "model"]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class Job:
    """One submission. ``request`` is what the user asked for, validated before the job was created:
    ``merge``: ``{method, base_model, experts: {domain: repo}, parameters}``; ``model``: ``{model,
    base_model, method, parameters, experts}`` (an already merged Hub model). No token is ever stored."""

    id: str
    user: str
    kind: Kind
    request: dict
    status: Status = "pending"
    submitted_at: str = field(default_factory=now)
    updated_at: str = field(default_factory=now)
    started_at: str | None = None
    finished_at: str | None = None
    attempts: int = 0
    stage: str | None = None
    message: str | None = None
    hint: str | None = None
    model_id: str | None = None
    results_file: str | None = None
    pid: int | None = None
    commit_urls: dict[str, str] = field(default_factory=dict)
    hf_job: str | None = None
    """The Hugging Face Job running it (``dispatch = hf-jobs``), as ``namespace/id``."""
    flavor: str | None = None
    elapsed_seconds: float | None = None
    """The Job's time since it was created (scheduling included), as last inspected."""
    cost_usd: float | None = None
    """The flavor's price × the Job's running time, as last inspected."""

    @classmethod
    def new(cls, user: str, kind: Kind, request: dict) -> Job:
        # microseconds in the id: jobs submitted within one second still sort (and run) in submission order
        return cls(id=f"{datetime.now(UTC):%Y%m%d%H%M%S%f}-{uuid.uuid4().hex[:6]}", user=user, kind=kind,
                   request=request)

    @property
    def active(self) -> bool:
        return self.status in ("pending", "running")


class RateLimitError(ValueError):
    """A user has too many jobs queued, or submitted too many today."""


class HubMirror:
    """``requests/{job_id}.json`` in a dataset repo: each upload replaces one small whole file."""

    def __init__(self, repo_id: str, api: Any = None) -> None:
        from huggingface_hub import HfApi

        self.repo_id = repo_id
        self.api = api or HfApi()

    def push(self, job: Job) -> None:
        from mergebench.hub.push import push_files

        push_files(self.repo_id, {f"requests/{job.id}.json": json.dumps(asdict(job), indent=2).encode()},
                   repo_type="dataset", private=True, api=self.api, commit_message=f"Job {job.id}: {job.status}")

    def pull(self) -> list[Job]:
        """Every job in the dataset (none if the repo does not exist yet)."""
        from huggingface_hub import snapshot_download
        from huggingface_hub.errors import RepositoryNotFoundError

        try:
            folder = Path(snapshot_download(self.repo_id, repo_type="dataset", allow_patterns=["requests/*.json"]))
        except RepositoryNotFoundError:
            return []
        return [Job(**json.loads(p.read_text(encoding="utf-8"))) for p in sorted(folder.glob("requests/*.json"))]


class JobStore:
    """The live queue in ``root/jobs``; every write also goes to the mirror (failures there are logged)."""

    def __init__(self, root: Path, mirror: HubMirror | None = None) -> None:
        self.root = Path(root)
        self.dir = self.root / "jobs"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.mirror = mirror
        self._lock = threading.RLock()

    # ---------------------------------------------------------------- reading
    def _path(self, job_id: str) -> Path:
        return self.dir / f"{job_id}.json"

    def job_dir(self, job_id: str) -> Path:
        """Scratch folder of one job (merge output, results file, log)."""
        return self.root / "work" / job_id

    def log_path(self, job_id: str) -> Path:
        return self.job_dir(job_id) / "job.log"

    def get(self, job_id: str) -> Job:
        return Job(**json.loads(self._path(job_id).read_text(encoding="utf-8")))

    def all(self) -> list[Job]:
        """Every job, oldest first."""
        with self._lock:
            jobs = [Job(**json.loads(p.read_text(encoding="utf-8"))) for p in self.dir.glob("*.json")]
        return sorted(jobs, key=lambda j: (j.submitted_at, j.id))

    def of_user(self, user: str) -> list[Job]:
        return [j for j in self.all() if j.user == user]

    # ---------------------------------------------------------------- writing
    def _write(self, job: Job) -> Job:
        write_atomic(self._path(job.id), json.dumps(asdict(job), indent=2) + "\n")
        if self.mirror is not None:
            try:
                self.mirror.push(job)
            except Exception as e:  # the Hub being down must not stop the queue; the next write retries
                logger.warning("could not mirror job %s to %s: %s", job.id, self.mirror.repo_id, e)
        return job

    def add(self, job: Job, *, max_active: int, max_daily: int) -> Job:
        """Queue ``job`` unless its user is over a limit (checked and written under one lock)."""
        with self._lock:
            mine = self.of_user(job.user)
            active = [j for j in mine if j.active]
            if len(active) >= max_active:
                raise RateLimitError(f"You already have {len(active)} job(s) queued or running (limit "
                                     f"{max_active}); wait for one to finish.")
            since = (datetime.now(UTC) - timedelta(days=1)).isoformat(timespec="seconds")
            today = [j for j in mine if j.submitted_at >= since]
            if len(today) >= max_daily:
                raise RateLimitError(f"You submitted {len(today)} jobs in the last 24 hours (limit {max_daily}); "
                                     "try again tomorrow.")
            return self._write(job)

    def update(self, job_id: str, **changes: Any) -> Job:
        with self._lock:
            return self._write(replace(self.get(job_id), updated_at=now(), **changes))

    def finish(self, job_id: str, announce: Callable[[Job], None] | None = None, **changes: Any) -> Job:
        """End a job with ``changes`` (its status, outcome). ``announce`` (the leaderboard's ``add_job``) sees the
        ended job *before* it is recorded, so a job anyone reads as done is already on the leaderboard; if the
        Space dies in between, the job is still running and resumes at the next start."""
        ended = replace(self.get(job_id), finished_at=now(), stage=None, **changes)
        if announce is not None:
            announce(ended)
        return self.update(job_id, finished_at=ended.finished_at, stage=None, **changes)

    def claim_next(self, ready: Callable[[Job], bool] | None = None) -> Job | None:
        """The oldest pending job (that is ``ready``, if given), now RUNNING (attempts + 1), or ``None``."""
        with self._lock:
            pending = [j for j in self.all() if j.status == "pending" and (ready is None or ready(j))]
            if not pending:
                return None
            job = pending[0]
            return self.update(job.id, status="running", started_at=now(), attempts=job.attempts + 1,
                               stage="starting", message=None, hint=None)

    # ---------------------------------------------------------------- start-up
    def recover(self, *, max_attempts: int, elsewhere: Callable[[Job], bool] | None = None) -> list[Job]:
        """Rebuild the queue after a restart: pull the mirror (a new container has an empty disk), keep
        the newer copy of each job, then requeue interrupted RUNNING jobs or fail those out of attempts.
        Jobs for which ``elsewhere`` is true (they run as a Hugging Face Job) stay RUNNING: the dispatcher
        re-attaches to them.

        Returns the jobs that were running when the Space stopped, as they are now.
        """
        with self._lock:
            local = {j.id: j for j in self.all()}
            if self.mirror is not None:
                try:
                    remote = self.mirror.pull()
                except Exception as e:
                    logger.warning("could not read the requests dataset %s: %s", self.mirror.repo_id, e)
                    remote = []
                for job in remote:
                    if job.id not in local or job.updated_at > local[job.id].updated_at:
                        write_atomic(self._path(job.id), json.dumps(asdict(job), indent=2) + "\n")
                        local[job.id] = job
            interrupted = [j for j in local.values() if j.status == "running"]
            return [j if elsewhere is not None and elsewhere(j) else self._requeue(j, max_attempts)
                    for j in interrupted]

    def _requeue(self, job: Job, max_attempts: int) -> Job:
        if job.attempts >= max_attempts:
            logger.warning("job %s was interrupted %d times; failing it", job.id, job.attempts)
            return self.update(job.id, status="failed", finished_at=now(), stage=None,
                               message=f"Interrupted by {job.attempts} restarts of the Space while {job.stage}; "
                                       "not retried again.", hint="Submit it again.")
        logger.info("job %s was interrupted while %s; queued again", job.id, job.stage)
        return self.update(job.id, status="pending", message=f"Resumed after a restart (was {job.stage}).")


def queue_position(jobs: Iterable[Job], job_id: str) -> int | None:
    """1-based place of a pending job in the queue (``None`` if it is not pending)."""
    pending = [j.id for j in jobs if j.status == "pending"]
    return pending.index(job_id) + 1 if job_id in pending else None
