"""The Jobs API of the loopback Hub: each Job runs as a local subprocess in this Python environment.

``huggingface_hub`` 2.4 calls these endpoints, and so do tests of code that dispatches work as Jobs
(``mergebench run --executor hf-jobs``, the Space):

=========================================  ==============================================================
``POST /api/jobs/{namespace}``             ``run_job`` / ``run_uv_job``: validate the spec, start the Job
``GET  /api/jobs/{namespace}``             ``list_jobs``: ``?label=key=value`` (all must match), ``?stage=``
``GET  /api/jobs/{namespace}/{id}``        ``inspect_job``, ``wait_for_job``
``GET  /api/jobs/{namespace}/{id}/logs``   ``fetch_job_logs``: Server-Sent Events, ``?tail=N``
``POST /api/jobs/{namespace}/{id}/cancel`` ``cancel_job``
``GET  /api/jobs/hardware``                ``list_jobs_hardware``: flavors with their published prices
=========================================  ==============================================================

A Job is a folder ``ROOT/.hubserver/jobs/{namespace}/{id}/``: ``job.json`` (the spec, as created),
``status.json`` (stage, times, exit code: written atomically by the supervisor), ``log.jsonl`` (one
``{"timestamp", "data"}`` event per output line) and ``lock``. Creating a Job starts its *supervisor*
(``python -m mergebench.hubserver.jobs JOB_DIR``) in a new session; the supervisor holds ``lock`` (``flock``)
for as long as it lives, runs the command with the Job's environment in ``JOB_DIR/work``, enforces the
timeout, turns SIGTERM (a cancel) into ``CANCELED`` and writes the final stage. The server keeps no state in
memory: it reads the folder, and a Job whose supervisor died without a final stage (its ``lock`` is free) is
reported as ``ERROR``. Stopping the server (:meth:`LoopbackHub.stop`) cancels the Jobs still running, so that
no process outlives a test.

The Job's environment is fresh, as in a container: ``PATH`` starts with this Python environment's ``bin``
(so ``python``, ``mergebench`` and the other console scripts are the project's), ``HOME`` and ``HF_HOME``
are empty folders of the Job, ``HF_ENDPOINT`` is this server (the Hub the Job talks to, as a real Job talks
to huggingface.co), then the spec's ``environment`` and ``secrets``.

What it does **not** reproduce (tests must not rely on these):

- the container: ``dockerImage`` / ``spaceId`` is recorded, not pulled; the command runs on this machine,
  so it also sees this machine's files (a real Job sees only its image and volumes);
- hardware: every flavor is this machine's CPU; the prices are the published ones, nothing is billed;
- ``volumes``, ``expose``/``expose_public``, ``ssh``, network groups, resource groups and ``attempts`` (the
  service's own retries) are refused with a 400 rather than ignored; scheduled Jobs, ``rerun_job``, label
  updates and metrics are not served;
- scheduling takes milliseconds, not the seconds to minutes of the service; logs are the command's merged
  stdout and stderr, line by line, timestamped by the supervisor;
- authorisation: any token may use any namespace (a missing token is refused with 401); no pagination.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
import re
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TextIO

from mergebench.hubserver.store import STATE_DIR, RequestError, Store, iso
from mergebench.hubserver.uploads import USER
from mergebench.hubserver.wire import Request, Response, json_response
from mergebench.work import read_record, write_atomic

logger = logging.getLogger(__name__)

TERMINAL = ("COMPLETED", "CANCELED", "ERROR", "DELETED")
DEFAULT_TIMEOUT = 30 * 60  # the service's default when a spec has no timeout
KILL_GRACE = 10.0  # seconds between SIGTERM and SIGKILL of a cancelled or timed-out command
_LABEL = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_NAME = re.compile(r"^[A-Za-z0-9_.-]{1,100}$")
_UNSUPPORTED = ("volumes", "expose", "ssh", "network", "resourceGroupId", "attempts")


@dataclass(frozen=True)
class Flavor:
    """One hardware flavor as ``list_jobs_hardware`` describes it; ``usd_per_hour`` is the published price."""

    name: str
    pretty_name: str
    cpu: str
    ram: str
    usd_per_hour: float
    gpu: tuple[str, str, str] | None = None
    """(model, quantity, VRAM) of the accelerator, if any."""

    def to_json(self) -> dict[str, Any]:
        per_minute = self.usd_per_hour / 60
        accelerator = None if self.gpu is None else {
            "type": "gpu", "model": self.gpu[0], "quantity": self.gpu[1], "vram": self.gpu[2],
            "manufacturer": "Nvidia"}
        return {"name": self.name, "prettyName": self.pretty_name, "cpu": self.cpu, "ram": self.ram,
                "ephemeralStorage": "50 GB", "accelerator": accelerator,
                "unitCostMicroUSD": round(per_minute * 1e6), "unitCostUSD": per_minute, "unitLabel": "minute"}


HARDWARE = (
    # hub-docs "Jobs: Pricing and Billing" (CPU and T4 rows) and the Hub's hardware price list (the other GPUs)
    Flavor("cpu-basic", "CPU Basic", "2 vCPU", "16 GB", 0.01),
    Flavor("cpu-upgrade", "CPU Upgrade", "8 vCPU", "32 GB", 0.03),
    Flavor("t4-small", "Nvidia T4 - small", "4 vCPU", "15 GB", 0.40, ("T4", "1", "16 GB")),
    Flavor("t4-medium", "Nvidia T4 - medium", "8 vCPU", "30 GB", 0.60, ("T4", "1", "16 GB")),
    Flavor("l4x1", "1x Nvidia L4", "8 vCPU", "30 GB", 0.80, ("L4", "1", "24 GB")),
    Flavor("a10g-small", "Nvidia A10G - small", "4 vCPU", "15 GB", 1.00, ("A10G", "1", "24 GB")),
    Flavor("a10g-large", "Nvidia A10G - large", "12 vCPU", "46 GB", 1.50, ("A10G", "1", "24 GB")),
    Flavor("l40sx1", "1x Nvidia L40S", "8 vCPU", "62 GB", 1.80, ("L40S", "1", "48 GB")),
    Flavor("a100-large", "Nvidia A100 - large", "12 vCPU", "142 GB", 2.50, ("A100", "1", "80 GB")),
)


# ------------------------------------------------------------------------------------------------ routes
def route(req: Request, store: Store, seg: list[str]) -> Response:
    """Answer ``/api/jobs/...`` (``seg``: the segments after ``jobs``)."""
    if not req.headers.get("Authorization"):
        raise RequestError(401, "Invalid credentials in Authorization header")
    if seg == ["hardware"]:
        _only(req, "GET")
        return json_response([f.to_json() for f in HARDWARE])
    if not seg or not _NAME.match(seg[0]):
        raise RequestError(404, f"No such endpoint on the loopback Hub: {req.method} {req.path}")
    namespace, folder = seg[0], _jobs_root(store) / seg[0]
    if len(seg) == 1:
        if req.method == "POST":
            return json_response(_info(_create(req, folder, namespace), req.base_url))
        _only(req, "GET")
        return json_response(_list(req, folder))
    job = _job(folder, seg[1])
    action = seg[2] if len(seg) == 3 else None
    if len(seg) > 3 or action not in (None, "logs", "cancel"):
        raise RequestError(404, f"No such endpoint on the loopback Hub: {req.method} {req.path}")
    if action == "cancel":
        _only(req, "POST")
        _cancel(job)
        return json_response({})
    _only(req, "GET")
    if action == "logs":
        return _logs(req, job)
    return json_response(_info(job, req.base_url))


def _only(req: Request, method: str) -> None:
    if req.method != method:
        raise RequestError(405, f"{req.method} is not allowed on {req.path}; use {method}.", headers={"Allow": method})


def _jobs_root(store: Store) -> Path:
    return store.root / STATE_DIR / "jobs"


def _job(folder: Path, job_id: str) -> Path:
    job = folder / job_id
    if not _NAME.match(job_id) or not (job / "job.json").is_file():
        raise RequestError(404, f"Job '{job_id}' not found.", code="JobNotFound")
    return job


def _spec(job: Path) -> dict[str, Any]:
    return read_record(job / "job.json") or {}


def _create(req: Request, folder: Path, namespace: str) -> Path:
    spec = req.json_object()
    problems = _spec_problems(spec)
    if problems:
        raise RequestError(400, "Invalid job spec: " + "; ".join(problems))
    job = folder / uuid.uuid4().hex[:24]
    (job / "work").mkdir(parents=True)
    record = {**spec, "namespace": namespace, "createdAt": time.time(), "endpoint": req.base_url,
              "timeoutSeconds": int(spec.get("timeoutSeconds") or DEFAULT_TIMEOUT)}
    write_atomic(job / "job.json", json.dumps(record))
    supervisor = subprocess.Popen([sys.executable, "-m", __name__, str(job)], start_new_session=True,
                                  stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    threading.Thread(target=_reap, args=(supervisor, job), name=f"job-{job.name}", daemon=True).start()
    logger.info("loopback Jobs: started %s (%s)", job.name, " ".join(map(str, spec["command"]))[:200])
    return job


def _spec_problems(spec: dict[str, Any]) -> list[str]:
    problems = [f"'{key}' is not supported by the loopback Hub" for key in _UNSUPPORTED if spec.get(key)]
    command = spec.get("command")
    if not isinstance(command, list) or not command or not all(isinstance(c, str) for c in command):
        problems.append("'command' must be a non-empty list of strings")
    if not (spec.get("dockerImage") or spec.get("spaceId")):
        problems.append("one of 'dockerImage' or 'spaceId' is required")
    if spec.get("flavor") not in {f.name for f in HARDWARE}:
        problems.append(f"unknown flavor {spec.get('flavor')!r} (GET /api/jobs/hardware lists them)")
    for key in ("environment", "secrets", "labels"):
        value = spec.get(key) or {}
        if not isinstance(value, dict) or not all(isinstance(k, str) and isinstance(v, str) for k, v in value.items()):
            problems.append(f"'{key}' must map strings to strings")
    bad = [f"{k}={v}" for k, v in (spec.get("labels") or {}).items() if not (_LABEL.match(k) and _LABEL.match(v))]
    if bad:
        problems.append(f"labels must be 1-100 letters, digits, '-', '_' or '.': {', '.join(bad)}")
    timeout = spec.get("timeoutSeconds")
    if timeout is not None and (not isinstance(timeout, int) or timeout <= 0):
        problems.append("'timeoutSeconds' must be a positive integer")
    return problems


def _reap(supervisor: subprocess.Popen[bytes], job: Path) -> None:
    """Wait for a supervisor (no zombie is left behind); if it died without a final stage, stop the command it
    left behind and record the failure."""
    code = supervisor.wait()
    status = _status(job)
    if status.get("stage") in TERMINAL:
        return
    if isinstance(status.get("commandPid"), int):  # its own session: the group id is its pid
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(status["commandPid"], signal.SIGKILL)
    _write_status(job, {**status, "stage": "ERROR", "finishedAt": time.time(),
                        "message": f"The job's supervisor exited with code {code} before the job finished."})


def _status(job: Path) -> dict[str, Any]:
    return read_record(job / "status.json") or {"stage": "SCHEDULING"}


def _write_status(job: Path, status: dict[str, Any]) -> None:
    write_atomic(job / "status.json", json.dumps(status))


def _supervisor_alive(job: Path) -> bool:
    """Whether the supervisor still holds the Job's lock (released by the kernel however it died)."""
    try:
        fd = os.open(job / "lock", os.O_RDONLY)
    except FileNotFoundError:
        return False
    try:
        fcntl.flock(fd, fcntl.LOCK_SH | fcntl.LOCK_NB)
    except BlockingIOError:
        return True
    finally:
        os.close(fd)
    return False


def _current_status(job: Path) -> dict[str, Any]:
    status = _status(job)
    if status["stage"] == "RUNNING" and not _supervisor_alive(job) and _status(job)["stage"] == "RUNNING":
        return {**status, "stage": "ERROR", "message": "The job's process is gone (the machine or the loopback Hub "
                                                       "was restarted while it ran)."}
    return status


def _info(job: Path, base_url: str) -> dict[str, Any]:
    spec, status = _spec(job), _current_status(job)
    now = time.time()
    created, started, finished = spec["createdAt"], status.get("startedAt"), status.get("finishedAt")
    end = finished or now
    owner = {"id": "0" * 24, "name": USER, "type": "user"}
    info: dict[str, Any] = {
        "id": job.name, "createdAt": iso(created), "startedAt": iso(started) if started else None,
        "finishedAt": iso(finished) if finished else None, "command": spec["command"],
        "arguments": spec.get("arguments") or [], "environment": spec.get("environment") or {},
        "secrets": dict.fromkeys(spec.get("secrets") or {}), "flavor": spec["flavor"],
        "labels": spec.get("labels") or {}, "status": {"stage": status["stage"], "message": status.get("message")},
        "durations": {"schedulingSecs": int((started or end) - created),
                      "runningSecs": int(end - started) if started else None, "totalSecs": int(end - created)},
        "owner": owner, "initiator": {"type": "user", "id": owner["id"], "name": USER}, "retry": 0,
    }
    info["dockerImage" if spec.get("dockerImage") else "spaceId"] = spec.get("dockerImage") or spec.get("spaceId")
    return info


def _list(req: Request, folder: Path) -> list[dict[str, Any]]:
    labels = [value.split("=", 1) for value in req.query.get("label", [])]
    stages = {s.upper() for s in req.query.get("stage", [])}
    jobs = [job for job in (folder.iterdir() if folder.is_dir() else []) if (job / "job.json").is_file()]
    out = []
    for job in sorted(jobs, key=lambda j: _spec(j).get("createdAt", 0), reverse=True):
        info = _info(job, req.base_url)
        if all(len(kv) == 2 and info["labels"].get(kv[0]) == kv[1] for kv in labels) and (
                not stages or info["status"]["stage"] in stages):
            out.append(info)
    return out


def _logs(req: Request, job: Path) -> Response:
    """The log so far as Server-Sent Events; the stream ends there (the client polls the stage and asks again)."""
    try:
        lines = (job / "log.jsonl").read_text(encoding="utf-8").splitlines()
    except FileNotFoundError:
        lines = []
    tail = req.param("tail")
    if tail and tail.isdigit():
        lines = lines[-int(tail):] if int(tail) else []
    body = "".join(f"data: {line}\n\n" for line in lines if line.strip())
    return Response(200, {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}, body.encode())


def cancel_running(store: Store) -> int:
    """Cancel every Job not finished yet (when the server stops: no Job process outlives it); returns how many."""
    running = [job for job in _jobs_root(store).glob("*/*") if (job / "job.json").is_file()
               and _status(job)["stage"] not in TERMINAL]
    for job in running:
        _cancel(job)
    return len(running)


def _cancel(job: Path) -> None:
    """Ask the supervisor to stop the command (SIGTERM), or record ``CANCELED`` if it is not running."""
    status = _status(job)
    if status["stage"] in TERMINAL:
        return
    (job / "cancel").touch()  # read by a supervisor that has not started the command yet
    pid = status.get("pid")
    if isinstance(pid, int) and _supervisor_alive(job):
        with contextlib.suppress(ProcessLookupError):
            os.kill(pid, signal.SIGTERM)
    elif status["stage"] == "RUNNING" or not _supervisor_alive(job):
        _write_status(job, {**status, "stage": "CANCELED", "finishedAt": time.time(), "message": "Canceled."})


# -------------------------------------------------------------------------------------------- supervisor
def job_environment(spec: dict[str, Any], job: Path) -> dict[str, str]:
    """A container-like environment: this venv's ``bin`` first on ``PATH``, a fresh home, the Hub that started
    the Job as ``HF_ENDPOINT``, then the spec's environment and secrets."""
    home = job / "home"
    home.mkdir(exist_ok=True)
    env = {"PATH": os.pathsep.join([str(Path(sys.executable).parent), os.defpath]), "HOME": str(home),
           "HF_HOME": str(home / ".cache" / "huggingface"), "HF_ENDPOINT": spec["endpoint"],
           "HF_HUB_DISABLE_XET": "1", "HF_HUB_DISABLE_TELEMETRY": "1", "LANG": "C.UTF-8",
           "PYTHONUNBUFFERED": "1", "TMPDIR": str(job / "work")}
    return env | dict(spec.get("environment") or {}) | dict(spec.get("secrets") or {})


class _Log:
    """Appends ``{"timestamp", "data"}`` events to ``log.jsonl``, one per line, flushed as they come."""

    def __init__(self, path: Path) -> None:
        self._file: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115 - closed by close()
        self._lock = threading.Lock()

    def emit(self, text: str) -> None:
        event = json.dumps({"timestamp": iso(time.time()), "data": text})
        with self._lock:
            self._file.write(event + "\n")
            self._file.flush()

    def close(self) -> None:
        self._file.close()


def supervise(job: Path) -> int:
    """Run the Job in ``job`` to its end: the body of the supervisor process (see the module docstring)."""
    lock = open(job / "lock", "a")  # noqa: SIM115 - held until this process ends
    fcntl.flock(lock, fcntl.LOCK_EX)
    spec = _spec(job)
    started = time.time()
    status: dict[str, Any] = {"stage": "RUNNING", "startedAt": started, "pid": os.getpid()}
    stopping = threading.Event()
    reason: list[str] = []

    def stop(why: str) -> None:
        reason.append(why)
        stopping.set()

    signal.signal(signal.SIGTERM, lambda *_: stop("canceled"))
    _write_status(job, status)
    log = _Log(job / "log.jsonl")
    log.emit(f"===== Job started at {iso(started)} =====")
    code: int | None = None
    try:
        if not (job / "cancel").exists():
            code = _run_command(spec, job, log, stopping, stop)
    except OSError as e:  # the command does not exist or cannot be executed
        log.emit(f"{type(e).__name__}: {e}")
        code = 127
    finally:
        log.close()
    final: dict[str, str | None]
    if (job / "cancel").exists() or (reason and reason[0] == "canceled"):
        final = {"stage": "CANCELED", "message": "Canceled."}
    elif reason and reason[0] == "timeout":
        final = {"stage": "ERROR", "message": f"Job timed out after {spec['timeoutSeconds']} seconds."}
    elif code == 0:
        final = {"stage": "COMPLETED", "message": None}
    else:
        final = {"stage": "ERROR", "message": f"Job failed with exit code: {code}."}
    _write_status(job, {**status, **final, "finishedAt": time.time(), "exitCode": code})
    return 0


def _run_command(spec: dict[str, Any], job: Path, log: _Log, stopping: threading.Event,
                 stop: Callable[[str], None]) -> int:
    """Run the command, copying its output to the log; stop it (SIGTERM, then SIGKILL) on cancel or timeout."""
    command = [*spec["command"], *(spec.get("arguments") or [])]
    proc = subprocess.Popen(command, cwd=job / "work", env=job_environment(spec, job), stdin=subprocess.DEVNULL,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, start_new_session=True,
                            text=True, errors="replace", bufsize=1)
    _write_status(job, {**_status(job), "commandPid": proc.pid})
    timer = threading.Timer(spec["timeoutSeconds"], stop, args=("timeout",))
    timer.daemon = True
    timer.start()
    threading.Thread(target=_terminate_on, args=(stopping, proc), daemon=True).start()
    assert proc.stdout is not None
    for line in proc.stdout:
        log.emit(line.rstrip("\n"))
    code = proc.wait()
    timer.cancel()
    return code


def _terminate_on(stopping: threading.Event, proc: subprocess.Popen[str]) -> None:
    stopping.wait()
    for sig, grace in ((signal.SIGTERM, KILL_GRACE), (signal.SIGKILL, None)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(grace)
            return
        except subprocess.TimeoutExpired:
            continue


def main() -> None:
    """``python -m mergebench.hubserver.jobs JOB_DIR``: the supervisor the server starts for each Job."""
    sys.exit(supervise(Path(sys.argv[1])))


if __name__ == "__main__":
    main()
