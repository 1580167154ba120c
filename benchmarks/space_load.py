"""Issue #20 item 4: the Space under load. Many users submit at once through the Gradio API, the Space is killed
in the middle and started again, and every accepted job must end exactly once within the per-user limits.

Run (from the repository root, with the project's venv)::

    .venv/bin/python benchmarks/space_load.py            # 50 submissions from 10 users; prints the figures
    .venv/bin/python benchmarks/space_load.py --write    # also rewrites the space-load section of RESULTS.md

``tests/space/test_load.py`` runs the same code on a smaller :class:`Plan` (12 submissions from 4 users).

**What runs.** A loopback Hub holding the tiny Llama family and the fixture reference results (the same inputs as
``tests/space``), and the Space itself as a real process, ``python -m mergebench.cli space`` (its in-process
worker, job mirror to a requests dataset, models and results pushed to the loopback Hub), with its own random
``HF_TOKEN``. Each job is the cheapest the Space accepts on the tiny family: ``task_arithmetic`` of two experts,
scored on one task × 2 items.

**How users are told apart.** The Space knows a user only from the ``gr.OAuthProfile`` Gradio injects from the
signed session cookie its OAuth callback writes (``request.session["oauth_info"]``); off a Space Gradio mocks
that callback with the one local account, so for ten users this benchmark plays the identity provider: it gives
the Space an ``OAUTH_CLIENT_SECRET`` and signs, with the key Gradio derives from it, the session a login as
each user would have produced (:func:`session_cookie`). Nothing in the Space is switched off: two controls go
with the first wave, a call without a session and one with a session signed with another secret, and both
must be refused as signed out.

**The run.** 1. Every user submits ``Plan.before`` merges at once (``gradio_client``, one thread per
submission, released together by a barrier). 2. Once ``Plan.restart_after`` jobs are done and another is running,
the Space process is killed with SIGKILL (its pipeline child dies with it) and started again on the same port.
3. Every user submits ``Plan.after`` more at once. 4. Wait until every accepted job has ended. Meanwhile one
visitor keeps requesting the leaderboard (the request that fills the table) and a monitor reads the job files
every 0.1 s.

**Checked** (:meth:`Report.problems`): every submission is either queued or refused with the limit's own
error, whose count is at or over the limit, and both controls are refused; no user ever had more than
``max_active`` jobs queued or running, nor more than ``max_daily`` accepted; nobody was refused below the limits
(each user's first ``max_active`` submissions are queued); 0 jobs lost (an accepted job missing or not ended);
0 jobs that ran twice (a log with two ``job finished`` lines, a job going back from done/failed, or a second
attempt of a job the restart did not interrupt); the leaderboard grew by exactly the completed jobs and the
results dataset holds each completed job once; the token's value appears in no file the run wrote (the Space's
stdout/stderr, job files, logs, results files, the Hub repos it pushed, its caches).
"""

from __future__ import annotations

import argparse
import base64
import datetime
import hashlib
import json
import math
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager, suppress
from dataclasses import dataclass
from itertools import pairwise
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))  # `python benchmarks/space_load.py`: the tests' fixture results
sys.path.insert(0, str(Path(__file__).resolve().parent))

from results_file import write_section  # noqa: E402

BASE = "mergebench-fixtures/tiny-llama"
EXPERTS = (f"{BASE}_math", f"{BASE}_coding")
METHOD = "task_arithmetic"
EVAL_TASKS, EVAL_MAX_SAMPLES = ("mb_tiny_hellaswag",), 2
MERGE_MODE = "Merge experts"  # space/app.py MODES[0]
RESULTS_REPO, REQUESTS_REPO = "alice/space-load-results", "alice/space-load-requests"
ENDED = ("done", "failed")

QUEUED = re.compile(r"Queued as job `([\w-]+)`")
ACTIVE_LIMIT = re.compile(r"You already have (\d+) job\(s\) queued or running \(limit (\d+)\)")
DAILY_LIMIT = re.compile(r"You submitted (\d+) jobs in the last 24 hours \(limit (\d+)\)")
SIGNED_OUT = "Sign in with Hugging Face to submit."


@dataclass(frozen=True)
class Plan:
    """Who submits how much, when, and the limits the Space enforces."""

    users: int = 10
    before: int = 3
    """Submissions per user, all at once, before the restart."""
    after: int = 2
    """Submissions per user, all at once, once the Space is back."""
    max_active: int = 2
    max_daily: int = 2
    restart_after: int = 4
    """Kill the Space once this many jobs are done and another one is in the middle of its pipeline."""
    timeout: float = 900.0
    """For the whole run; a job not ended by then is lost."""

    @property
    def submissions(self) -> int:
        return self.users * (self.before + self.after)


@dataclass
class Submission:
    user: str | None
    wave: str
    seconds: float
    message: str
    outcome: str = ""
    """``queued``, ``active-limit``, ``daily-limit``, ``signed-out``, ``wrong-refusal`` or ``error``."""
    job_id: str | None = None


def classify(message: str) -> tuple[str, str | None]:
    """What the Space answered to one submission: ``(outcome, job id)``. A limit's refusal counts as one only
    if the count it gives is at or over the limit it gives."""
    if m := QUEUED.search(message):
        return "queued", m.group(1)
    for name, pattern in (("active-limit", ACTIVE_LIMIT), ("daily-limit", DAILY_LIMIT)):
        if m := pattern.search(message):
            return (name if int(m.group(1)) >= int(m.group(2)) else "wrong-refusal"), None
    return ("signed-out" if SIGNED_OUT in message else "error"), None


# ------------------------------------------------------------------------------------------ the Space process
def session_cookie(user: str, secret: str) -> str:
    """The ``session`` cookie Gradio's OAuth callback sets after ``user`` signs in with Hugging Face: the
    ``oauth_info`` it stores, signed as Starlette's ``SessionMiddleware`` signs it, with the key
    ``gradio.oauth.attach_oauth`` derives from the Space's ``OAUTH_CLIENT_SECRET``."""
    from itsdangerous import TimestampSigner

    info = {"access_token": f"oauth-{user}", "token_type": "bearer", "scope": "openid profile",
            "expires_at": int(time.time()) + 8 * 3600,
            "userinfo": {"sub": hashlib.sha1(user.encode()).hexdigest()[:24], "name": user.title(),
                         "preferred_username": user, "profile": f"https://huggingface.co/{user}", "picture": ""}}
    key = hashlib.sha256(f"{secret}-v4".encode()).hexdigest()
    data = base64.b64encode(json.dumps({"oauth_info": info}).encode())
    return TimestampSigner(key).sign(data).decode()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class SpaceProcess:
    """``python -m mergebench.cli space`` on a fixed port over ``work``; each start logs to its own files."""

    def __init__(self, *, hub_url: str, results_dir: Path, work: Path, plan: Plan, token: str, secret: str) -> None:
        from mergebench.hub.endpoint import endpoint_env

        self.work, self.port = work, free_port()
        self.url = f"http://127.0.0.1:{self.port}/"
        self.state, self.hf_home, self.temp = work / "state", work / "space-hf-home", work / "gradio-tmp"
        self.env = {**os.environ, **endpoint_env(hub_url, self.hf_home, token=token),
                    "GRADIO_ANALYTICS_ENABLED": "False", "GRADIO_TEMP_DIR": str(self.temp),
                    "OAUTH_CLIENT_SECRET": secret, "PYTHONUNBUFFERED": "1",
                    "MERGEBENCH_EVAL_TASKS": ",".join(EVAL_TASKS), "MERGEBENCH_EVAL_MAX_SAMPLES": str(EVAL_MAX_SAMPLES),
                    "MERGEBENCH_MAX_ACTIVE_PER_USER": str(plan.max_active),
                    "MERGEBENCH_MAX_DAILY_PER_USER": str(plan.max_daily), "MERGEBENCH_REQUESTS_REPO": REQUESTS_REPO}
        for name in ("HF_TOKEN_PATH", "HF_STORED_TOKENS_PATH"):  # the caller's token files, not the Space's
            self.env.pop(name, None)
        self.cmd = [sys.executable, "-m", "mergebench.cli", "space", "--results", str(results_dir), "--port",
                    str(self.port), "--work-dir", str(self.state), "--push-results", RESULTS_REPO]
        self.process: subprocess.Popen | None = None
        self.starts = 0

    def start(self, timeout: float = 180.0) -> float:
        """Start the Space and wait until it serves its config; returns the seconds that took."""
        self.starts += 1
        out, err = (self.work / f"space-{self.starts}.{s}" for s in ("stdout", "stderr"))
        started = time.monotonic()
        with out.open("ab") as stdout, err.open("ab") as stderr:
            self.process = subprocess.Popen(self.cmd, env=self.env, cwd=self.work, stdout=stdout, stderr=stderr,
                                            stdin=subprocess.DEVNULL, start_new_session=True)
        while time.monotonic() - started < timeout:
            if self.process.poll() is not None:
                raise RuntimeError(f"the Space exited with {self.process.returncode}; see {err}")
            with suppress(OSError):
                if urllib.request.urlopen(f"{self.url}config", timeout=5).status == 200:
                    return time.monotonic() - started
            time.sleep(0.25)
        raise RuntimeError(f"the Space did not serve within {timeout:.0f} s; see {err}")

    def kill(self) -> None:
        """SIGKILL the Space process alone, as a crash would (its pipeline child dies by PR_SET_PDEATHSIG)."""
        assert self.process is not None
        self.process.kill()
        self.process.wait()

    def crash(self) -> list[dict[str, Any]]:
        """:meth:`kill` the Space, then wait until the pipelines of the jobs it was running are gone too: no pipeline
        may outlive the Space and write into a job the next start resumes. Returns those jobs as the crash left
        their files."""
        self.kill()
        left = [j for j in read_jobs(self.state / "jobs").values() if j["status"] == "running"]
        for job in left:
            if job.get("pid"):
                wait_for(lambda job=job: not alive(job["pid"]), 10, f"the pipeline of {job['id']} to die")
        return left

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait()


def client(url: str, cookie: str | None = None) -> Any:
    """A ``gradio_client.Client`` signed in with ``cookie`` (or signed out); it sends no Hugging Face token."""
    from gradio_client import Client

    return Client(url, token=False, verbose=False, download_files=False, analytics_enabled=False,
                  httpx_kwargs={"cookies": {"session": cookie} if cookie else {}, "timeout": 120})


def read_jobs(jobs_dir: Path) -> dict[str, dict[str, Any]]:
    """The Space's job files (written atomically, so each is whole)."""
    jobs = {}
    for path in jobs_dir.glob("*.json"):
        with suppress(FileNotFoundError, json.JSONDecodeError):
            job = json.loads(path.read_text(encoding="utf-8"))
            jobs[job["id"]] = job
    return jobs


# ------------------------------------------------------------------------------------------ load and watchers
class Monitor(threading.Thread):
    """Reads the job files every ``interval`` s: the most jobs each user had queued or running at once, and
    every ``(status, attempts)`` each job went through."""

    def __init__(self, jobs_dir: Path, interval: float = 0.1) -> None:
        super().__init__(name="space-load-monitor", daemon=True)
        self.jobs_dir, self.interval = jobs_dir, interval
        self.most_active: Counter[str] = Counter()
        self.history: dict[str, list[tuple[str, int]]] = {}
        self._stop_event = threading.Event()
        self._lock = threading.Lock()  # the run's main thread samples too

    def sample(self) -> dict[str, dict[str, Any]]:
        with self._lock:
            return self._sample()

    def _sample(self) -> dict[str, dict[str, Any]]:
        jobs = read_jobs(self.jobs_dir)
        active = Counter(j["user"] for j in jobs.values() if j["status"] not in ENDED)
        for user, n in active.items():
            self.most_active[user] = max(self.most_active[user], n)
        for job_id, job in jobs.items():
            seen = self.history.setdefault(job_id, [])
            if not seen or seen[-1] != (job["status"], job["attempts"]):
                seen.append((job["status"], job["attempts"]))
        return jobs

    def run(self) -> None:
        while not self._stop_event.wait(self.interval):
            self.sample()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()
        self.sample()


class Visitor(threading.Thread):
    """Someone with the leaderboard open: requests it every ``interval`` s through the Gradio API and times each
    answer (a new client after any failure, e.g. while the Space restarts)."""

    def __init__(self, url: str, interval: float = 0.5) -> None:
        super().__init__(name="space-load-visitor", daemon=True)
        self.url, self.interval = url, interval
        self.phase = "idle"
        self.latencies: list[tuple[str, float]] = []
        self.answered_at: list[float] = []
        self.failures = 0
        self._stop_event = threading.Event()

    def run(self) -> None:
        c = None
        while not self._stop_event.is_set():
            try:
                c = c or client(self.url)
                started = time.perf_counter()
                c.submit(*page_inputs(c, "leaderboard"), api_name="/leaderboard").result(timeout=60)
                self.latencies.append((self.phase, time.perf_counter() - started))
                self.answered_at.append(time.monotonic())
            except Exception:
                self.failures += 1
                if c is not None:
                    with suppress(Exception):
                        c.close()
                c = None
            self._stop_event.wait(self.interval)
        if c is not None:
            c.close()

    def stop(self) -> None:
        self._stop_event.set()
        self.join()


def parameters(n: int) -> str:
    """Submission ``n``'s parameters: a scaling of its own, so that every job is a leaderboard entry of its own
    (runs of the same method, parameters and experts are re-runs of one entry)."""
    return json.dumps({"scaling": round(0.5 + n / 1000, 3)})


def submit_wave(url: str, users: list[str], per_user: int, secret: str, wave: str, *, first: int = 0,
                controls: bool = False) -> list[Submission]:
    """``per_user`` submissions by every user (numbered from ``first``), all released at once; with
    ``controls``, also one without a session and one with a session signed with another secret (both must be
    refused as signed out)."""
    clients = {user: client(url, session_cookie(user, secret)) for user in users}
    callers: list[tuple[str, str | None]] = [(user, user) for _ in range(per_user) for user in users]
    if controls:
        clients["signed-out"] = client(url)
        clients["forged"] = client(url, session_cookie(users[0], secrets.token_hex(16)))
        callers += [("signed-out", None), ("forged", None)]
    barrier = threading.Barrier(len(callers))

    def one(numbered: tuple[int, tuple[str, str | None]]) -> Submission:
        n, (key, user) = numbered
        barrier.wait()
        started = time.perf_counter()
        try:
            message = str(clients[key].submit(MERGE_MODE, BASE, METHOD, list(EXPERTS), parameters(first + n), "",
                                              api_name="/submit").result(timeout=600))
        except Exception as e:
            message = f"{type(e).__name__}: {e}"
        outcome, job_id = classify(message)
        return Submission(user, wave if user else key, time.perf_counter() - started, message, outcome, job_id)

    try:
        with ThreadPoolExecutor(len(callers)) as pool:
            return list(pool.map(one, enumerate(callers)))
    finally:
        for c in clients.values():
            c.close()


def page_inputs(c: Any, api_name: str, **changed: Any) -> list[Any]:
    """The inputs of event ``api_name`` as the page sends them when it opens (each component's initial value),
    with the components of the given ``elem_id``s set otherwise. (An undocumented endpoint's parameters are not
    in the API info, so ``gradio_client`` fills in no defaults.)"""
    [dependency] = [d for d in c.config["dependencies"] if d.get("api_name") == api_name]
    props = {comp["id"]: comp.get("props", {}) for comp in c.config["components"]}
    return [changed.get(props[i].get("elem_id"), props[i].get("value")) for i in dependency["inputs"]]


def leaderboard_rows(url: str) -> int:
    """Rows of the leaderboard with the reference rows (experts, base, multi-task) hidden: the merges."""
    c = client(url)
    try:
        table = c.predict(*page_inputs(c, "leaderboard", **{"f-ref": False}), api_name="/leaderboard")[0]
    finally:
        c.close()
    return len(table.get("value", table)["data"])  # the handler returns a gr.Dataframe: an update holding the value


def wait_for(predicate: Any, timeout: float, what: str, step: float = 0.2) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if value := predicate():
            return value
        time.sleep(step)
    raise TimeoutError(f"timed out after {timeout:.0f} s waiting for {what}")


def alive(pid: int) -> bool:
    try:
        return "State:\tZ" not in Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return False


# ------------------------------------------------------------------------------------------ the report
def percentile(values: list[float], q: float) -> float:
    """Nearest-rank percentile (``q`` in 0..100) of a non-empty list."""
    ordered = sorted(values)
    return ordered[max(0, math.ceil(q / 100 * len(ordered)) - 1)]


@dataclass
class Report:
    plan: Plan
    submissions: list[Submission]
    jobs: dict[str, dict[str, Any]]
    history: dict[str, list[tuple[str, int]]]
    most_active: dict[str, int]
    finished_lines: dict[str, int]
    """``job finished`` lines in each job's log: how many times its pipeline ran to the end."""
    interrupted: list[str]
    """Jobs running when the Space was killed."""
    kill_stage: str | None
    latencies: list[tuple[str, float]]
    visitor_failures: int
    downtime: float | None
    """Seconds from the kill to the visitor's first answer from the restarted Space."""
    restart_seconds: float
    rows: tuple[int, int]
    """Leaderboard merge rows before the first submission and after the last job ended."""
    pushed: Counter[str]
    """Results in the results dataset per model id."""
    token_hits: list[str]
    files_scanned: int
    token_held: bool
    """The control of the grep: the Space's environment holds the token searched for."""
    seconds: float
    load: tuple[str, str] = ("", "")
    timed_out: bool = False

    def count(self, outcome: str, *, signed: bool = True) -> int:
        return sum(s.outcome == outcome for s in self.submissions if (s.user is not None) == signed)

    @property
    def signed(self) -> list[Submission]:
        return [s for s in self.submissions if s.user is not None]

    @property
    def accepted(self) -> list[str]:
        return [s.job_id for s in self.signed if s.job_id]

    @property
    def completed(self) -> int:
        return sum(self.jobs.get(j, {}).get("status") == "done" for j in self.accepted)

    @property
    def failed(self) -> int:
        return sum(self.jobs.get(j, {}).get("status") == "failed" for j in self.accepted)

    @property
    def lost(self) -> list[str]:
        return [j for j in self.accepted if self.jobs.get(j, {}).get("status") not in ENDED]

    @property
    def ran_twice(self) -> list[str]:
        twice = {j for j, n in self.finished_lines.items() if n > 1}
        twice |= {j for j, seen in self.history.items()
                  if any(a in ENDED and b not in ENDED for (a, _), (b, _) in pairwise(seen))}
        twice |= {j for j, job in self.jobs.items() if job["attempts"] > 1 and j not in self.interrupted}
        return sorted(twice)

    def problems(self) -> list[str]:
        """Everything that breaks the guarantees (empty: the run passed)."""
        p = self.plan
        out = [f"{s.user} ({s.wave}): {s.outcome}: {s.message[:300]}" for s in self.signed
               if s.outcome not in ("queued", "active-limit", "daily-limit")]
        out += [f"the {s.wave} control was not refused as signed out: {s.message[:300]}" for s in self.submissions
                if s.user is None and s.outcome != "signed-out"]
        phantom = set(self.jobs) - set(self.accepted)
        if phantom:
            out.append(f"job files no accepted submission created: {sorted(phantom)}")
        by_user = Counter(self.jobs[j]["user"] for j in self.accepted if j in self.jobs)
        for s in self.signed:
            if s.job_id and s.job_id in self.jobs and self.jobs[s.job_id]["user"] != s.user:
                out.append(f"job {s.job_id} of {s.user} is recorded as {self.jobs[s.job_id]['user']}'s")
        for user in sorted({s.user for s in self.signed if s.user}):
            if by_user[user] > p.max_daily:
                out.append(f"{user} had {by_user[user]} jobs accepted (daily limit {p.max_daily})")
            if self.most_active.get(user, 0) > p.max_active:
                out.append(f"{user} had {self.most_active[user]} jobs active at once (limit {p.max_active})")
            first = sum(bool(s.job_id) for s in self.signed if s.user == user and s.wave == "before")
            if first < min(p.before, p.max_active, p.max_daily):
                out.append(f"{user} got {first} of the first {p.before} submissions queued: refused under the limits")
        if self.lost:
            out.append(f"lost (not ended): {self.lost}")
        if self.ran_twice:
            out.append(f"ran twice: {self.ran_twice}")
        if self.failed:
            out.append(f"{self.failed} jobs failed: " + "; ".join(
                f"{j}: {self.jobs[j].get('message')}" for j in self.accepted if self.jobs.get(j, {}).get("status")
                == "failed"))
        if self.rows[1] - self.rows[0] != self.completed:
            out.append(f"the leaderboard went from {self.rows[0]} to {self.rows[1]} merges for {self.completed} "
                       "completed jobs")
        models = {self.jobs[j]["model_id"] for j in self.accepted if self.jobs.get(j, {}).get("status") == "done"}
        if set(self.pushed) != models or any(n != 1 for n in self.pushed.values()):
            out.append(f"results dataset {dict(self.pushed)} != one result per completed job {sorted(models)}")
        if self.token_hits:
            out.append(f"the HF token appears in {self.token_hits}")
        if not self.token_held:
            out.append("the token searched for is not the one in the Space's environment")
        if not self.interrupted:
            out.append(f"no job was running when the Space was killed (stage {self.kill_stage})")
        if self.timed_out:
            out.append(f"jobs still not ended after {p.timeout:.0f} s")
        return out

    def figures(self) -> list[tuple[str, str]]:
        p = self.plan
        busy = [s for phase, s in self.latencies if phase == "busy"]
        idle = [s for phase, s in self.latencies if phase == "idle"]
        submit = [s.seconds for s in self.signed]
        ms = lambda v: f"{1000 * v:.0f} ms"  # noqa: E731
        resumed = ", ".join(f"`{j}` ({self.kill_stage}; attempts {self.jobs[j]['attempts']}, "
                            f"{self.jobs[j]['status']})" for j in self.interrupted if j in self.jobs)
        return [
            ("submitted", f"{len(self.signed)} ({p.users} users × ({p.before} before + {p.after} after the "
                          "restart))"),
            ("accepted (queued)", str(len(self.accepted))),
            ("refused: active-jobs limit", f"{self.count('active-limit')} (limit {p.max_active})"),
            ("refused: daily limit", f"{self.count('daily-limit')} (limit {p.max_daily})"),
            ("refused otherwise / errors", str(sum(s.outcome not in ("queued", "active-limit", "daily-limit")
                                                   for s in self.signed))),
            ("controls (no session; a session signed with another secret)", ", ".join(
                f"{s.wave}: {'refused' if s.outcome == 'signed-out' else 'NOT REFUSED'}" for s in self.submissions
                if s.user is None) or "none sent"),
            ("completed", str(self.completed)),
            ("failed", str(self.failed)),
            ("lost", str(len(self.lost))),
            ("ran twice", str(len(self.ran_twice))),
            ("interrupted by the kill, resumed", resumed or "none"),
            ("most jobs one user had active", f"{max(self.most_active.values(), default=0)} (limit {p.max_active})"),
            ("leaderboard request under load: p50 / p95 / max",
             f"{ms(percentile(busy, 50))} / {ms(percentile(busy, 95))} / {ms(max(busy))} ({len(busy)} requests)"
             if busy else "no answer"),
            ("leaderboard request idle: p50", f"{ms(percentile(idle, 50))} ({len(idle)} requests)" if idle else "-"),
            ("leaderboard unavailable around the restart",
             f"{self.downtime:.1f} s ({self.visitor_failures} failed requests; the restarted Space served after "
             f"{self.restart_seconds:.1f} s)" if self.downtime is not None else "never answered again"),
            ("submit request: p50 / p95", f"{ms(percentile(submit, 50))} / {ms(percentile(submit, 95))}"
             if submit else "-"),
            ("leaderboard merges before → after", f"{self.rows[0]} → {self.rows[1]}"),
            ("HF token hits", f"{len(self.token_hits)} in {self.files_scanned} files (the Space's stdout/stderr, "
                              "job files and logs, results files, the Hub repos, caches)"),
            ("wall time", f"{self.seconds:.0f} s"),
        ]

    def table(self) -> str:
        rows = "\n".join(f"| {name} | {value} |" for name, value in self.figures())
        return f"| figure | value |\n|---|---|\n{rows}"


# ------------------------------------------------------------------------------------------ the run
def scan_for(value: str, roots: list[Path]) -> tuple[list[str], int]:
    """Files under ``roots`` whose bytes contain ``value``, and how many files were read."""
    needle, hits, scanned = value.encode(), [], 0
    for root in roots:
        for path in sorted(p for p in root.rglob("*") if p.is_file() and not p.is_symlink()):
            scanned += 1
            if needle in path.read_bytes():
                hits.append(str(path))
    return hits, scanned


def run(plan: Plan, *, hub_url: str, hub_root: Path, results_dir: Path, work: Path) -> Report:
    """Run ``plan`` against a Space serving ``results_dir`` over the loopback Hub at ``hub_url`` (this process's
    ``huggingface_hub`` must point at it too: the results dataset is read back)."""
    from huggingface_hub import HfApi

    from mergebench.eval.leaderboard import read_results

    started = time.monotonic()
    work.mkdir(parents=True, exist_ok=True)
    token, secret = f"hf_spaceLoad{secrets.token_hex(12)}", secrets.token_hex(16)
    space = SpaceProcess(hub_url=hub_url, results_dir=results_dir, work=work, plan=plan, token=token, secret=secret)
    users = [f"user{i:02d}" for i in range(plan.users)]
    monitor = Monitor(space.state / "jobs")
    visitor = Visitor(space.url)
    submissions: list[Submission] = []
    interrupted: list[str] = []
    kill_stage, downtime, timed_out = None, None, False
    try:
        space.start()
        rows_before = leaderboard_rows(space.url)
        monitor.start()
        visitor.start()
        time.sleep(5.0)  # a few answers from the idle Space to compare with
        visitor.phase = "busy"
        submissions += submit_wave(space.url, users, plan.before, secret, "before", controls=True)

        def ready_to_kill() -> bool:  # enough jobs done and one in the middle of its pipeline (or nothing left)
            jobs = monitor.sample().values()
            running = any(j["status"] == "running" and j.get("pid") and j.get("stage") not in (None, "starting")
                          for j in jobs)
            done = sum(j["status"] == "done" for j in jobs)
            return (done >= plan.restart_after and running) or all(j["status"] in ENDED for j in jobs)

        wait_for(ready_to_kill, plan.timeout, f"{plan.restart_after} jobs to finish", step=0.05)
        killed_at = time.monotonic()
        left = space.crash()
        interrupted = [j["id"] for j in left]
        kill_stage = ", ".join(sorted({j.get("stage") or "starting" for j in left})) or None
        restart_seconds = space.start()
        assert space.process is not None  # the grep's control: the needle is the token the Space runs with
        token_held = token.encode() in Path(f"/proc/{space.process.pid}/environ").read_bytes()
        submissions += submit_wave(space.url, users, plan.after, secret, "after", first=len(submissions))
        accepted = [s.job_id for s in submissions if s.job_id]
        try:
            wait_for(lambda: all(monitor.sample().get(j, {}).get("status") in ENDED for j in accepted),
                  max(1.0, plan.timeout - (time.monotonic() - started)), "every accepted job to end", step=0.5)
        except TimeoutError:
            timed_out = True
        visitor.phase = "after"
        rows_after = leaderboard_rows(space.url)
        after_kill = [t for t in visitor.answered_at if t > killed_at]
        downtime = after_kill[0] - killed_at if after_kill else None
    finally:
        if visitor.is_alive():
            visitor.stop()
        space.stop()
        if monitor.is_alive():
            monitor.stop()
    jobs = read_jobs(space.state / "jobs")
    finished = {}
    for job_id in jobs:
        log = space.state / "work" / job_id / "job.log"
        finished[job_id] = log.read_text(errors="replace").count("job finished:") if log.exists() else 0
    pushed = Counter(r.model["id"] for r in read_results(RESULTS_REPO)) if HfApi().repo_exists(
        RESULTS_REPO, repo_type="dataset") else Counter()  # it exists once a job has completed
    hits, scanned = scan_for(token, [work, hub_root])
    return Report(plan, submissions, jobs, monitor.history, dict(monitor.most_active), finished, interrupted,
                  kill_stage, visitor.latencies, visitor.failures, downtime, restart_seconds,
                  (rows_before, rows_after), pushed, hits, scanned, token_held, time.monotonic() - started,
                  timed_out=timed_out)


@contextmanager
def loopback_space_hub(tmp: Path) -> Iterator[tuple[str, Path, Path]]:
    """What ``tests/space/conftest.py`` serves: the tiny Llama family on a loopback Hub and the fixture reference
    results; yields ``(hub url, hub root, results folder)`` with this process's client pointed at the Hub."""
    from mergebench.fixtures import build_family, write_family_to_hub_root
    from mergebench.hub.endpoint import use_endpoint
    from mergebench.hubserver import LoopbackHub
    from tests.space.fixture_results import write_fixture_results

    root = tmp / "hub"
    root.mkdir()
    write_family_to_hub_root(build_family(tmp / "fixtures", "llama"), root)
    write_fixture_results(tmp / "reference")
    with LoopbackHub(root) as server, use_endpoint(server.url, hf_home=tmp / "hf-home",
                                                      token=f"hf_benchmarkReader{secrets.token_hex(8)}"):
        yield server.url, root, tmp / "reference" / "results"


def _uptime() -> str:
    return subprocess.run(["uptime"], capture_output=True, text=True, check=False).stdout.strip()


def render(report: Report) -> str:
    p = report.plan
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    problems = report.problems()
    return "\n".join([
        f"`.venv/bin/python benchmarks/space_load.py --write`, run {when} on {os.cpu_count()} CPUs; machine shared "
        f"with other jobs; `uptime` before: `{report.load[0]}`, after: `{report.load[1]}`.",
        "",
        f"The Space as a process (`mergebench space`, in-process worker, jobs mirrored to a requests dataset, models "
        f"and results pushed to a loopback Hub) with per-user limits of {p.max_active} active and {p.max_daily} "
        f"daily jobs. {p.users} users signed in (sessions signed with the Space's OAuth secret, see the script) "
        f"submit {p.before} merges each at once through `gradio_client`; once {p.restart_after} jobs are done the "
        f"Space is killed (SIGKILL) while a job runs and started again; then {p.after} more each at once. Each job: "
        f"`{METHOD}` of 2 tiny-llama experts (a scaling of its own), scored on `{', '.join(EVAL_TASKS)}` × "
        f"{EVAL_MAX_SAMPLES} items. "
        "A visitor requests the leaderboard every 0.5 s throughout.",
        "",
        report.table(),
        "",
        "All checks passed (exactly once, limits, 0 lost, 0 token hits)." if not problems
        else "**Problems:**\n" + "\n".join(f"- {x}" for x in problems),
    ])


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    defaults = Plan()
    parser.add_argument("--users", type=int, default=defaults.users)
    parser.add_argument("--before", type=int, default=defaults.before, help="submissions per user before the restart")
    parser.add_argument("--after", type=int, default=defaults.after, help="submissions per user after the restart")
    parser.add_argument("--max-active", type=int, default=defaults.max_active)
    parser.add_argument("--max-daily", type=int, default=defaults.max_daily)
    parser.add_argument("--restart-after", type=int, default=defaults.restart_after,
                        help="kill the Space once this many jobs are done")
    parser.add_argument("--timeout", type=float, default=defaults.timeout)
    parser.add_argument("--keep", type=Path, help="run in this folder and keep it (default: a temporary one)")
    parser.add_argument("--write", action="store_true", help="rewrite the space-load section of RESULTS.md")
    args = parser.parse_args()
    plan = Plan(args.users, args.before, args.after, args.max_active, args.max_daily, args.restart_after, args.timeout)
    tmp = args.keep or Path(tempfile.mkdtemp(prefix="space-load-"))
    tmp.mkdir(parents=True, exist_ok=True)
    before = _uptime()
    try:
        with loopback_space_hub(tmp) as (url, root, results):
            report = run(plan, hub_url=url, hub_root=root, results_dir=results, work=tmp / "run")
    finally:
        if args.keep is None:
            shutil.rmtree(tmp, ignore_errors=True)
    report.load = (before, _uptime())
    text = render(report)
    print(text)
    if args.write:
        write_section("space-load", "The Space under load (issue 20, `benchmarks/space_load.py`)", text)
    return 1 if report.problems() else 0


if __name__ == "__main__":
    sys.exit(main())
