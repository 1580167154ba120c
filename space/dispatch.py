"""Submissions as Hugging Face Jobs (``dispatch = hf-jobs``): the Space queues, launches and watches; the merge
and the evaluation run in a Job on a GPU flavor, so the Space itself can run on CPU hardware and several
submissions run at once (``jobs_max_concurrent``).

Each submission becomes a :class:`mergebench.runner.units.SubmissionUnit` (the spec inline on the Job's command
line: ``mergebench --verbose unit run '{…}'``) with the evaluation backend (``vllm`` on GPU flavors) and the
refusal judge in it. It pushes the merged model with its card, appends its scores to the results dataset and
publishes its results file to ``jobs/{job id}/results.json`` of the requests dataset. The Job carries the labels
``mergebench-space`` (this Space) and ``mergebench-submission`` (the job id), ``HF_TOKEN`` as a secret and a timeout.

One thread launches pending jobs while fewer than ``jobs_max_concurrent`` run, and every ``jobs_poll_seconds``
inspects the running ones: the Job's stage (with the unit's latest ``== step ==`` line) becomes the job's stage,
the Job's log tail (``fetch_job_logs``) its log, its time since creation and its cost (the flavor's price from
``list_jobs_hardware`` × running time) go into its record. A completed Job's results file is downloaded and
shown on the leaderboard; a failed Job's error, log tail and a hint are shown. After a restart the Space lists
its Jobs by label and re-attaches to them (a Job that ended meanwhile is collected) instead of launching them
again; stopping the Space leaves its Jobs running.

Who pays: ``jobs_token = space`` launches with the Space's own ``HF_TOKEN`` (an organisation's token; Jobs in
``jobs_namespace``); ``jobs_token = user`` with the submitter's OAuth token (the Space's ``hf_oauth_scopes``
include ``jobs``), Jobs in their namespace. A user token lives in memory only, never in a record: after a
restart a user's jobs wait until their owner opens the page again. Either way the Job's ``HF_TOKEN`` secret is
the Space's token, since the Job writes to the Space's datasets and models namespace.
"""

from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
import threading
import time
from collections.abc import Callable
from dataclasses import asdict
from pathlib import Path
from typing import Any

from background import BackgroundLoop
from huggingface_hub import HfApi, get_token
from huggingface_hub.errors import HfHubHTTPError
from jobs import Job, JobStore
from pipeline import label, merged_repo_id
from settings import SpaceConfig

from mergebench.errors import ConfigError
from mergebench.hub import jobs as hub_jobs
from mergebench.hub.refs import pin
from mergebench.runner.units import EvalOptions, ResultsLocation, SubmissionUnit, spec_json
from mergebench.work import write_atomic

logger = logging.getLogger(__name__)

SPACE_LABEL, SUBMISSION_LABEL = "mergebench-space", "mergebench-submission"
RESULTS = "results.json"
LOG_LINES = 200
"""Lines of a Job's log kept in the job's log (the page shows the last 60)."""
RECORD_SECONDS = 30.0
"""Elapsed time and cost are written to the record at most this often (each write is mirrored to the Hub)."""
_STEP = re.compile(r"== (.+?) ==\s*$")


def space_label() -> str:
    """This Space as a Job label value (``SPACE_ID`` on a Space, ``local`` elsewhere)."""
    return re.sub(r"[^A-Za-z0-9_.-]", "-", os.environ.get("SPACE_ID") or "local")[:100]


def results_location(config: SpaceConfig, job: Job) -> ResultsLocation:
    """Where the Job of ``job`` publishes its results file: ``jobs/{id}/`` of the requests dataset."""
    return ResultsLocation(repo=config.requests_repo, prefix=f"jobs/{job.id}", private=True)


def submission_unit(job: Job, config: SpaceConfig) -> SubmissionUnit:
    """The unit a Job runs for ``job``: its request, the Space's scoring settings (tasks, refusal judge) and the
    Jobs' backend. The judge is pinned here, when the submission is launched: the Job loads that commit and the
    unit's fingerprint names it."""
    request, settings = job.request, job.request["eval"]
    merge = job.kind == "merge"
    namespace = config.model_namespace
    # no "id": the unit names the pushed merge, the evaluation a submitted Hub model (pinned to its commit)
    info = {"role": "merged", "base_model": request["base_model"], "domain": None, "method": request.get("method"),
            "parameters": request.get("parameters"),
            "experts": sorted((request.get("experts") or {}).values()) or None, "label": label(request)}
    return SubmissionUnit(
        label=f"Space submission {job.id}", results=results_location(config, job), path=RESULTS, submission=job.id,
        recipe=request["recipe"] if merge else None, model=None if merge else request["model"],
        push_to=merged_repo_id(namespace, asdict(job)) if merge and namespace else None,
        tasks=list(settings.get("tasks") or []), suite=settings.get("suite"), max_samples=settings.get("max_samples"),
        options=EvalOptions(backend=config.evaluation_backend,  # type: ignore[arg-type]  # checked by pydantic
                            refusal_judge=pin(config.refusal_judge).loadable if config.refusal_judge else None),
        model_info=info, results_repo=config.results_repo)


def _log_verdict(lines: list[str]) -> tuple[str | None, str | None]:
    """The error and hint ``mergebench`` printed before exiting, if any: the last ``Error:`` line with the lines
    that continue it (a Hub error's message spans several), and the ``Hint:`` line after it."""
    starts = [i for i, ln in enumerate(lines) if ln.startswith("Error:")]
    if not starts:
        return None, None
    block = lines[starts[-1]:]
    end = next((i for i, ln in enumerate(block) if ln.startswith("Hint:")), len(block))
    error = " ".join(ln.strip() for ln in block[:end] if ln.strip())[len("Error:"):].strip()
    hint = block[end][len("Hint:"):].strip() if end < len(block) else None
    return error, hint


class JobsDispatcher(BackgroundLoop):
    """Runs queued submissions as Hugging Face Jobs (see the module docstring); same interface as the worker."""

    thread_name = "mergebench-space-jobs"

    def __init__(self, store: JobStore, config: SpaceConfig, *, on_finish: Callable[[Job], None] | None = None,
                 poll_seconds: float | None = None) -> None:
        problems = []
        if config.jobs_token not in ("space", "user"):
            problems.append(f"jobs_token is {config.jobs_token!r}: use 'space' (the Space's HF_TOKEN pays) or 'user' "
                            "(the signed-in user's OAuth token pays)")
        if config.evaluation_backend not in ("vllm", "transformers"):
            problems.append(f"jobs_backend is {config.jobs_backend!r}: use vllm (GPU flavors) or transformers")
        if not config.requests_repo:
            problems.append("requests_repo: the dataset the Jobs publish their results files to")
        if not config.model_namespace:
            problems.append("results_repo or models_org: where the Jobs push merged models (a Job's disk is gone "
                            "when it ends)")
        self.image = config.jobs_image or (f"hf.co/spaces/{os.environ['SPACE_ID']}" if os.environ.get("SPACE_ID")
                                           else None)
        if not self.image:
            problems.append("jobs_image: the image the Jobs run in, with mergebench installed (on a Space: the "
                            "Space itself)")
        token = get_token()
        if not token:
            problems.append("HF_TOKEN: the Space's token, the Jobs' secret (they write to the Space's datasets)")
        if problems:
            raise ConfigError("The Space cannot dispatch submissions as Hugging Face Jobs:\n" +
                              "\n".join(f"  - {p}" for p in problems),
                              hint="Set the MERGEBENCH_* variables (see space/README.md, 'Running submissions as "
                                   "Jobs'), or MERGEBENCH_DISPATCH=local to run them on the Space itself.")
        self.store, self.config, self.on_finish = store, config, on_finish
        self.poll_seconds = config.jobs_poll_seconds if poll_seconds is None else poll_seconds
        self.api, self.secret, self.label = HfApi(), str(token), space_label()
        self.namespace: str | None = config.jobs_namespace
        self.per_second: dict[str, float] = {}
        self._tokens: dict[str, str] = {}
        self._inflight: dict[str, str] = {}  # Space job id → Hugging Face Job id
        self._orphans: set[str] = set()  # jobs_token = user: running before a restart, waiting for their owner
        self._recorded: dict[str, float] = {}  # Space job id → when elapsed/cost were last written
        self._lock = threading.RLock()
        super().__init__()

    # ------------------------------------------------------------------------------------------ life cycle
    def start(self) -> None:
        """Read the flavors' prices, re-attach to this Space's Jobs (by label), requeue the rest, start polling.

        Raises:
            ConfigError: ``jobs_flavor`` is not a Jobs flavor.
        """
        self.per_second = hub_jobs.hardware_prices(self.api)
        if self.config.jobs_flavor not in self.per_second:
            raise ConfigError(f"Unknown Jobs flavor '{self.config.jobs_flavor}' (jobs_flavor).",
                              hint=f"Flavors: {', '.join(sorted(self.per_second))}.")
        if self.config.jobs_token == "space" and not self.namespace:
            self.namespace = hub_jobs.whoami_name(self.api)
        found = self._labelled(self.namespace, None) if self.config.jobs_token == "space" else {}
        user_mode = self.config.jobs_token == "user"
        self.store.recover(max_attempts=self.config.max_attempts,
                           elsewhere=lambda j: j.hf_job is not None if user_mode else j.id in found)
        for job in self.store.all():
            if job.status == "running" and job.id in found:
                self._attach(job, found[job.id])
            elif job.status == "running" and user_mode:
                self._orphans.add(job.id)
                self.store.update(job.id, stage=f"waiting for {job.user} to open the page (their sign-in watches "
                                                "the Job)")
        self._start_loop()

    def stop(self, timeout: float = 30.0) -> None:
        """Stop watching; the Jobs keep running (the next start re-attaches to them)."""
        self._request_stop()
        self._join(timeout)

    def remember_token(self, user: str, token: str) -> None:
        """The signed-in ``user``'s OAuth token (``jobs_token = user``), kept in memory; re-attaches to their Jobs
        left by a restart."""
        if self.config.jobs_token != "user" or self._tokens.get(user) == token:
            return
        self._tokens[user] = token
        with self._lock:
            waiting = [j for j in self.store.of_user(user) if j.id in self._orphans]
            self._orphans.difference_update(j.id for j in waiting)
        if waiting:
            found = self._labelled(user, token)
            for job in waiting:
                if job.id in found:
                    self._attach(job, found[job.id])
                else:
                    self.store.update(job.id, status="pending", stage=None,
                                      message="Its Hugging Face Job was not found after a restart; queued again.")
        self.wake()

    # ------------------------------------------------------------------------------------------ Hub calls
    def _namespace(self, job: Job) -> str:
        return job.user if self.config.jobs_token == "user" else str(self.namespace)

    def _token(self, job: Job) -> str | None:
        """The token that launches and watches ``job``'s Job (``None``: the Space's own)."""
        return self._tokens.get(job.user) if self.config.jobs_token == "user" else None

    def _ready(self, job: Job) -> bool:
        return self.config.jobs_token == "space" or job.user in self._tokens

    def _labelled(self, namespace: str | None, token: str | None) -> dict[str, Any]:
        """This Space's Jobs in ``namespace`` by submission: the live one if any (extra live copies are
        cancelled), else the newest."""
        by_job: dict[str, list[Any]] = {}
        for info in hub_jobs.list_jobs(self.api, labels={SPACE_LABEL: self.label}, namespace=namespace, token=token):
            by_job.setdefault((info.labels or {}).get(SUBMISSION_LABEL, ""), []).append(info)
        chosen = {}
        for job_id, infos in by_job.items():
            infos.sort(key=lambda i: str(i.created_at or ""))
            live = [i for i in infos if i.status.stage not in hub_jobs.TERMINAL]
            for extra in live[:-1]:
                logger.warning("job %s: cancelling its duplicate Job %s", job_id, extra.id)
                hub_jobs.cancel_job(self.api, extra.id, namespace=namespace, token=token)
            chosen[job_id] = live[-1] if live else infos[-1]
        return chosen

    def _attach(self, job: Job, info: Any) -> None:
        logger.info("job %s: re-attached to its Hugging Face Job %s (%s)", job.id, info.id, info.status.stage)
        with self._lock:
            self._inflight[job.id] = info.id
        self.store.update(job.id, hf_job=f"{self._namespace(job)}/{info.id}", flavor=str(info.flavor),
                          message="Re-attached to its Hugging Face Job after a restart of the Space.")

    # ------------------------------------------------------------------------------------------ the loop
    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self._launch_pending()
                self._poll()
            except Exception:  # the Hub being unreachable must not kill the only dispatcher; next round retries
                logger.exception("dispatching Jobs failed; retrying in %.0f s", self.poll_seconds)
            self._wake.wait(self.poll_seconds)
            self._wake.clear()

    def _launch_pending(self) -> None:
        while len(self._inflight) < self.config.jobs_max_concurrent and not self._stop.is_set():
            job = self.store.claim_next(ready=self._ready)
            if job is None:
                return
            try:
                self._launch(job)
            except Exception as e:
                logger.exception("job %s: could not launch its Job", job.id)
                self._finish(job, status="failed", message=f"Could not launch a Hugging Face Job: {e}",
                             hint="Check that the token can run Jobs (the `jobs` scope; billing set up) and that "
                                  f"'{self.config.jobs_flavor}' is available, then submit again.")

    def _launch(self, job: Job) -> None:
        unit = submission_unit(job, self.config)
        info = hub_jobs.launch_job(
            self.api, image=str(self.image), command=["mergebench", "--verbose", "unit", "run", spec_json(unit)],
            secrets={"HF_TOKEN": self.secret}, flavor=self.config.jobs_flavor, timeout=self.config.jobs_timeout,
            labels={SPACE_LABEL: self.label, SUBMISSION_LABEL: job.id}, name=f"mergebench-submission-{job.id}",
            namespace=self._namespace(job), token=self._token(job))
        with self._lock:
            self._inflight[job.id] = info.id
        self._recorded[job.id] = 0.0
        logger.info("job %s: launched Hugging Face Job %s on %s (%s backend)", job.id, info.id,
                    self.config.jobs_flavor, unit.options.backend)
        self.store.update(job.id, hf_job=f"{self._namespace(job)}/{info.id}", flavor=self.config.jobs_flavor,
                          stage=info.status.stage.lower(), elapsed_seconds=0.0, cost_usd=0.0)

    def _poll(self) -> None:
        with self._lock:
            inflight = dict(self._inflight)
        for job_id, hf_id in inflight.items():
            job = self.store.get(job_id)
            namespace, token = self._namespace(job), self._token(job)
            try:
                info = hub_jobs.inspect_job(self.api, hf_id, namespace=namespace, token=token)
            except HfHubHTTPError as e:
                if e.response is None or e.response.status_code != 404:
                    raise
                self._finish(job, status="failed", message=f"Its Hugging Face Job {namespace}/{hf_id} no longer "
                                                           "exists (deleted).", hint="Submit it again.")
                continue
            lines = hub_jobs.job_logs(self.api, hf_id, namespace=namespace, tail=LOG_LINES, token=token)
            path = self.store.log_path(job.id)
            path.parent.mkdir(parents=True, exist_ok=True)
            header = f"--- Hugging Face Job {namespace}/{hf_id} on {info.flavor} (attempt {job.attempts}) ---\n"
            write_atomic(path, header + "".join(f"{ln}\n" for ln in lines))
            stage = info.status.stage.lower()
            step = next((m.group(1) for ln in reversed(lines) if (m := _STEP.search(ln))), None)
            if info.status.stage == "RUNNING" and step:
                stage = f"running: {step}"
            durations = info.durations
            elapsed = float(durations.total_secs or 0) if durations else 0.0
            running = float(durations.running_secs or 0) if durations else 0.0
            cost = round(running * self.per_second.get(str(info.flavor), 0.0), 6)
            if info.status.stage in hub_jobs.TERMINAL:
                self._ended(job, info, lines, elapsed=elapsed, cost=cost)
            elif stage != job.stage or time.monotonic() - self._recorded.get(job.id, 0.0) >= RECORD_SECONDS:
                self._recorded[job.id] = time.monotonic()
                self.store.update(job.id, stage=stage, elapsed_seconds=elapsed, cost_usd=cost)

    def _ended(self, job: Job, info: Any, lines: list[str], *, elapsed: float, cost: float) -> None:
        """Collect a COMPLETED Job's results file; explain any other end."""
        outcome: dict[str, Any] = {"elapsed_seconds": elapsed, "cost_usd": cost}
        results = self._fetch_results(job) if info.status.stage == "COMPLETED" else None
        if results is not None:
            from mergebench.eval.results import load_results

            scored = load_results(results)
            failed = scored.failed
            message = f"Scored on {len(scored.tasks)} tasks" + (f"; failed: {', '.join(failed)}" if failed else "")
            self._finish(job, status="done", model_id=str(scored.model.get("id")), results_file=str(results),
                         message=f"{message} (Job {info.id}, {elapsed:.0f} s, ${cost:.4f})", **outcome)
            return
        error, hint = _log_verdict(lines)
        tail = " | ".join(ln for ln in lines[-3:] if ln.strip())
        if info.status.stage == "COMPLETED":
            reason = "completed without publishing its results file"
        else:
            reason = f"ended {info.status.stage}: {error or info.status.message or 'no message'}"
        if hint is None:
            hint = ("The Job ran out of time: set MERGEBENCH_JOBS_TIMEOUT higher, or choose a larger flavor."
                    if "timed out" in str(info.status.message or "").lower() else
                    "The log above (the Job's last lines) shows what failed; fix the request and submit again.")
        ends = f"Log ends: {tail}" if tail else "It wrote no log."
        reason = reason if reason.endswith(".") else f"{reason}."
        self._finish(job, status="failed", message=f"Hugging Face Job {info.id} {reason} {ends}", hint=hint,
                     **outcome)

    def _fetch_results(self, job: Job) -> Path | None:
        """The Job's results file, copied into the job's folder (``None`` if the Job did not publish it)."""
        target = self.store.job_dir(job.id) / RESULTS
        with tempfile.TemporaryDirectory(prefix="mergebench-space-results-") as tmp:
            found = results_location(self.config, job).fetch(RESULTS, Path(tmp))
            if found is None:
                return None
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.copyfile(found, target)
        return target

    def _finish(self, job: Job, **changes: Any) -> None:
        with self._lock:
            self._inflight.pop(job.id, None)
        self._recorded.pop(job.id, None)
        finished = self.store.finish(job.id, self.on_finish, **changes)
        logger.info("job %s: %s", job.id, finished.status)
