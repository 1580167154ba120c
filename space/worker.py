"""The one worker thread: takes the oldest pending job, runs ``pipeline.py`` on it in a child process,
records the outcome. One job at a time, so one GPU job at a time; request handlers never run jobs. This is
``dispatch = local`` (the default, for CPU and MergeBench-Tiny); ``dispatch = hf-jobs`` runs each job as a
Hugging Face Job instead (:mod:`dispatch`, chosen by :func:`make_worker`).

The child asks for ``PR_SET_PDEATHSIG`` itself (:func:`pipeline.die_with_parent`: a ``preexec_fn`` can
deadlock in a process with Gradio's threads); at start-up :func:`kill_stale` also stops any child a
previous process left behind, before :meth:`JobStore.recover` requeues its job.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import subprocess
import sys
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from background import BackgroundLoop
from jobs import Job, JobStore, now
from pipeline import PARENT_ENV
from settings import SpaceConfig

if TYPE_CHECKING:
    from dispatch import JobsDispatcher

logger = logging.getLogger(__name__)

PIPELINE = Path(__file__).resolve().parent / "pipeline.py"


def kill_stale(job: Job) -> bool:
    """Kill the pipeline process of ``job`` if one survived a previous Space process (pid + job id checked)."""
    if not job.pid:
        return False
    try:
        cmdline = Path(f"/proc/{job.pid}/cmdline").read_bytes().decode(errors="replace")
    except OSError:
        return False
    if str(PIPELINE) not in cmdline or job.id not in cmdline:
        return False  # the pid was reused by something else
    os.kill(job.pid, signal.SIGKILL)
    logger.warning("killed the leftover pipeline process %d of job %s", job.pid, job.id)
    return True


def _config_json(config: SpaceConfig) -> str:
    data = asdict(config)
    data["work_dir"] = str(config.work_dir)
    return json.dumps(data, indent=2)


class Worker(BackgroundLoop):
    """Runs queued jobs one after another on a daemon thread."""

    thread_name = "mergebench-space-worker"

    def __init__(self, store: JobStore, config: SpaceConfig, *, on_finish: Callable[[Job], None] | None = None,
                 poll_seconds: float = 1.0) -> None:
        self.store, self.config, self.on_finish = store, config, on_finish
        self.poll_seconds = poll_seconds
        super().__init__()
        self._process: subprocess.Popen | None = None

    def start(self) -> None:
        for job in self.store.all():
            if job.status == "running":
                kill_stale(job)
                self._collect(job)
        self.store.recover(max_attempts=self.config.max_attempts)
        self._start_loop()

    def _collect(self, job: Job) -> None:
        """Finish ``job`` with the outcome its pipeline wrote, if it wrote one before the Space stopped.

        The outcome is the pipeline's last act, written atomically after the merge was pushed and the results
        were scored and pushed; a Space killed between that write and recording the job would otherwise run the
        whole job again (found by the fault campaign: evaluated and pushed twice)."""
        outcome = _read(self.store.job_dir(job.id) / "outcome.json")
        if outcome:
            logger.info("job %s finished before the Space stopped; collecting its outcome", job.id)
            self.store.finish(job.id, self.on_finish, pid=None, **json.loads(outcome))

    def stop(self, timeout: float = 30.0) -> None:
        """Stop taking jobs and kill a running child (its job stays RUNNING and resumes at the next start)."""
        self._request_stop()
        if self._process is not None and self._process.poll() is None:
            self._process.kill()
        self._join(timeout)

    def _loop(self) -> None:
        while not self._stop.is_set():
            job = self.store.claim_next()
            if job is None:
                self._wake.wait(self.poll_seconds)
                self._wake.clear()
                continue
            try:
                self._run(job)
            except Exception as e:  # a bug here must not kill the only worker
                logger.exception("job %s crashed the worker", job.id)
                self.store.finish(job.id, self.on_finish, status="failed",
                                  message=f"Internal error: {type(e).__name__}: {e}")

    def _run(self, job: Job) -> None:
        job_dir = self.store.job_dir(job.id)
        job_dir.mkdir(parents=True, exist_ok=True)
        (job_dir / "outcome.json").unlink(missing_ok=True)
        (job_dir / "job.json").write_text(json.dumps(asdict(job), indent=2))
        (job_dir / "config.json").write_text(_config_json(self.config))
        with open(self.store.log_path(job.id), "a", encoding="utf-8") as log:
            log.write(f"--- attempt {job.attempts} started {now()} ---\n")
            log.flush()
            self._process = subprocess.Popen(
                [sys.executable, str(PIPELINE), str(job_dir)], stdout=log, stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL, cwd=job_dir,
                env={**os.environ, "PYTHONUNBUFFERED": "1", "TQDM_MININTERVAL": "2", PARENT_ENV: str(os.getpid())})
            self.store.update(job.id, pid=self._process.pid)
            stage = None
            while self._process.poll() is None:
                current = _read(job_dir / "stage")
                if current and current != stage:
                    stage = current
                    self.store.update(job.id, stage=stage)
                self._stop.wait(0.5)
                if self._stop.is_set():
                    self._process.kill()
                    self._process.wait()
                    return
        outcome = json.loads(_read(job_dir / "outcome.json") or "null") or {
            "status": "failed", "message": f"The job process exited with code {self._process.returncode} "
                                           "before writing an outcome; see the log."}
        self.store.finish(job.id, self.on_finish, pid=None, **outcome)


def make_worker(store: JobStore, config: SpaceConfig, *, on_finish: Callable[[Job], None] | None = None,
                poll_seconds: float | None = None) -> Worker | JobsDispatcher:
    """The worker ``config.dispatch`` asks for: in-process (``local``) or Hugging Face Jobs (``hf-jobs``).

    Raises:
        ConfigError: an unknown ``dispatch``, or a setting the Jobs dispatcher needs is missing.
    """
    if config.dispatch == "local":
        return Worker(store, config, on_finish=on_finish, poll_seconds=1.0 if poll_seconds is None else poll_seconds)
    if config.dispatch == "hf-jobs":
        from dispatch import JobsDispatcher

        return JobsDispatcher(store, config, on_finish=on_finish, poll_seconds=poll_seconds)
    from mergebench.errors import ConfigError

    raise ConfigError(f"Unknown dispatch '{config.dispatch}'.",
                      hint="Set MERGEBENCH_DISPATCH to 'local' (jobs run on the Space) or 'hf-jobs' (each job a "
                           "Hugging Face Job).")


def _read(path: Path) -> str | None:
    try:
        return path.read_text(encoding="utf-8")
    except FileNotFoundError:
        return None
