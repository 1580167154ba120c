"""Issue #20 fault campaign: kill -9 at random moments across every resumable stage, and loopback-Hub faults on
every network path, each followed by a rerun whose outputs must be identical to a fault-free run.

Run (from the repository root, with the project's venv)::

    .venv/bin/python benchmarks/fault_campaign.py               # everything (about 30 min on 2 cores)
    .venv/bin/python benchmarks/fault_campaign.py --only kills  # or: --only network
    .venv/bin/python benchmarks/fault_campaign.py --write       # also rewrites its section of RESULTS.md

Each finished scenario is recorded in ``--state`` (default ``benchmarks/.fault_campaign.json``, not committed): a
campaign that stopped part-way continues with the scenarios it had not finished (``--fresh`` starts over).

Every subject below is a real ``mergebench`` command in a subprocess (its own process group), on inputs the
campaign builds (the tiny Llama family, validation rows, the training-source fixtures, an evaluation repo),
against a real loopback Hub (``mergebench hub serve``) where it reads or writes the Hub. The reference output of
each subject comes from one fault-free run; outputs are compared by what must be identical (merged shards;
built dataset files; the leaderboard without timings; evaluation scores and response digests; the files of a
pushed repo, the rows of a pushed results dataset).

* **kills**: the command is started, killed with SIGKILL (its whole process group) after a seeded random delay
  within its fault-free duration, then run again as a user would after a crash (``--resume`` for merges,
  ``--overwrite`` for a data build, the same command for the runner). *Recovered*: the rerun exits 0;
  *identical*: its output equals the reference and nothing partial is visible (no ``.NAME.partial`` or
  temporary folder left beside the output). *Time lost*: killed run + rerun − the fault-free duration.
* **network**: the command runs once against a Hub armed with one fault on the subject's own paths.
  *Recovered*: exit 0 first time; a clean ``Error:`` exit 1 counts as handled but not recovered, and is then
  rerun without the fault (``--resume`` where it exists) to check that nothing it left corrupts the retry.
  *Corrupt*: exit 0 with an output that differs, a traceback, or a partial output visible.

* **the Space**: a fresh Space process (``mergebench space``, in-process worker) takes one merge through its
  Gradio API and is killed with SIGKILL (its worker with it, the job's pipeline child by PR_SET_PDEATHSIG) after a
  seeded random delay within the fault-free job's duration, then started again on the same state. *Recovered*:
  the job ends ``done``; *identical*: its scores, the merged model it pushed and the results it pushed equal the
  fault-free job's, one pipeline ran it to its end and the results were pushed once.
* **Jobs**: ``mergebench run`` with the ``hf-jobs`` executor (every unit a Job of the loopback Hub's Jobs API)
  under each network fault on ``/api/jobs/*`` (launching, listing, inspecting, logs, the hardware list).

What this does not cover: faults inside the upload body (the loopback Hub injects faults into its answers, not
into what it receives), and the Jobs a Space dispatches (``dispatch = hf-jobs``: the same Jobs API calls through
``space/dispatch.py``, whose restart is tested in ``tests/space/test_dispatch.py``).
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import io
import json
import os
import random
import re
import secrets
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from contextlib import suppress
from dataclasses import dataclass, field
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import probes as P
import space_load as S

from mergebench.domains import DOMAINS

RESULTS = P.REPO / "benchmarks" / "RESULTS.md"
BEGIN, END = "<!-- faults:begin -->", "<!-- faults:end -->"
VOLATILE = {"merge_seconds", "validation_seconds", "total_seconds", "eval_seconds", "peak_memory_bytes", "run_id",
            "finished_at", "model", "model_url", "card_url", "started_at", "seconds",
            "jobs_usd"}  # what Jobs cost follows from how long they ran


@dataclass
class Subject:
    """One command: how to run it, what its output is, and how to compare that output."""

    name: str
    cmd: list[str]
    output: Path
    digest: Callable[[], object]
    rerun_extra: tuple[str, ...] = ()
    hub_repos: tuple[str, ...] = ()  # Hub repos the command writes (reset between runs)
    fault_path: str = "*"
    cwd: Path = field(default_factory=Path.cwd)
    env: dict[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class SpaceHub:
    """What :func:`space_load.loopback_space_hub` serves: the tiny family and the reference results."""

    url: str
    root: Path
    results: Path


@dataclass
class SpaceJob:
    """One merge submitted to the Space and followed to its end."""

    job: dict
    seconds: float
    """From the submission to the job's end, restart included."""
    killed_after: float | None
    """Seconds after the submission the Space was killed (``None``: the job ended first, or no kill asked)."""
    finished: int
    """``job finished:`` lines in the job's log: how many times a pipeline ran it to its end."""
    digest: object = None
    leftovers: list[str] = field(default_factory=list)


@dataclass
class Tally:
    scenario: str
    runs: int = 0
    recovered: int = 0
    identical: int = 0
    corrupt: int = 0
    fired: int | None = None
    """Network rows: faults that took effect (an error sent, an answer cut or shortened, a body throttled)."""
    lost: list[float] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)


class Campaign:
    def __init__(self, root: Path, seed: int = 20) -> None:
        self.root, self.rng = root, random.Random(seed)
        self.home = root / "home"
        self.home.mkdir(parents=True)
        self.hub_root = root / "hub"
        self.hub: P.HubServer | None = None
        self.reference: dict[tuple[str, bool], tuple[object, float]] = {}
        self._build_inputs()

    # --- inputs ---------------------------------------------------------------------------------------------------

    def _build_inputs(self) -> None:
        from mergebench.data.evalrepo import build_eval_repo
        from mergebench.fixtures import build_family, write_family_to_hub_root, write_validation_splits

        family = build_family(self.root / "models", "llama")
        self.family, self.ids = family, write_family_to_hub_root(family, self.hub_root, org="fc")
        self.validation = write_validation_splits(self.root / "validation", n=8)
        big = P.build_llama_family(self.root / "big", hidden=768, layers=6, inter=2048, vocab=4096, experts=2,
                                   shards=1)  # ~100 MB per model: a merge lasts long enough to be killed mid-way
        self.big_ids = P.place_on_hub(big, self.hub_root, "fc-big")
        self.big = big
        subprocess.run([P.MERGEBENCH, "data", "fixtures", str(self.hub_root)], check=True, capture_output=True,
                       env=P.base_env(self.home))
        build_eval_repo(self.root / "evalrepo", names=["mmlu", "pubmedqa"])
        shutil.copytree(self.root / "evalrepo", self.hub_root / "datasets" / "fc" / "mergebench-eval")

    def server(self, *options: str) -> P.HubServer:
        return P.HubServer(self.hub_root, *options, home=self.home)

    def env(self, url: str | None) -> dict[str, str]:
        return P.hub_env(url, self.home, token="hf_faultCampaignToken") if url else P.base_env(self.home)

    # --- subjects -------------------------------------------------------------------------------------------------

    def subject(self, name: str, work: Path, url: str | None) -> Subject:
        """A fresh working folder for ``name``; the command reads the Hub at ``url`` when given."""
        work.mkdir(parents=True)
        out = work / "out"
        if name.startswith("merge"):
            method = name.split(":")[1]
            params = P.KILL_METHODS[method]
            if url:
                text = P.recipe_text(method, self.big_ids[0], self.big_ids[1:], parameters=params)
            else:
                text = P.recipe_text(method, str(self.big[0]), [str(p) for p in self.big[1:]], parameters=params)
            (work / "recipe.yaml").write_text(text)
            return Subject(name, [P.MERGEBENCH, "merge", "recipe.yaml", "--out", "out", "--shard-size", "10MB"], out,
                           lambda: P.shard_digest(out), ("--resume",), fault_path="*.safetensors", cwd=work)
        if name == "hub_merge":  # the small family: a 100 KB/s link must finish within the campaign's bound
            (work / "recipe.yaml").write_text(P.recipe_text("ties", self.ids["base"], [self.ids[d] for d in DOMAINS],
                                                            parameters={"top_k": 0.3}))
            return Subject(name, [P.MERGEBENCH, "merge", "recipe.yaml", "--out", "out"], out,
                           lambda: P.shard_digest(out), ("--resume",), fault_path="*.safetensors", cwd=work)
        if name == "statistics":  # RegMean: a statistics stage (forward passes) before the merge
            models = ([self.ids["base"], *(self.ids[d] for d in DOMAINS)] if url else
                      [str(self.family.base), *(str(self.family.experts[d]) for d in DOMAINS)])
            recipe = {"method": "regmean", "base_model": models[0], "parameters": {"num_samples": 8, "alpha": 0.5},
                      "models": [{"model": m, "domain": d} for m, d in zip(models[1:], DOMAINS, strict=True)],
                      "data": {d: str(self.validation[d]) for d in DOMAINS}}
            (work / "recipe.yaml").write_text(json.dumps(recipe))
            return Subject(name, [P.MERGEBENCH, "merge", "recipe.yaml", "--out", "out"], out,
                           lambda: P.shard_digest(out), ("--resume",), fault_path="*.safetensors", cwd=work,
                           env={"MERGEBENCH_CACHE": str(work / "cache")})  # statistics are computed, not reused
        if name == "data_build":
            return Subject(name, [P.MERGEBENCH, "data", "build", "math", "--out", "out"], out,
                           lambda: P.tree_digest(out), ("--overwrite",), fault_path="/datasets/*", cwd=work,
                           env=own_caches(work))
        if name == "runner":
            (work / "bench.yaml").write_text(json.dumps(self.small_bench(out)))
            return Subject(name, [P.MERGEBENCH, "run", "bench.yaml"], out, lambda: leaderboard_digest(out), cwd=work)
        if name == "jobs_run":  # the runner's hf-jobs executor: every unit a Job of the loopback Hub's Jobs API
            repo = f"fc-jobs/{work.name}"
            bench = {**self.small_bench(out), "executor": {
                "kind": "hf-jobs", "results_repo": repo, "max_concurrent": 3,
                "hf_jobs": {"image": "mergebench:fault-campaign", "poll_seconds": 0.3,
                            "flavors": {"grid_point": "cpu-basic", "evaluation": "cpu-basic"}}}}
            (work / "bench.yaml").write_text(json.dumps(bench))
            return Subject(name, [P.MERGEBENCH, "run", "bench.yaml"], out, lambda: leaderboard_digest(out),
                           hub_repos=(f"datasets/{repo}",), fault_path="/api/jobs/*", cwd=work)
        if name == "eval_data":
            return Subject(name, [P.MERGEBENCH, "eval", self.ids["base"], "--tasks", "mb_mmlu", "--tasks",
                                  "mb_pubmedqa", "--eval-data", "fc/mergebench-eval", "--out", "out/results.json"],
                           out, lambda: scores_digest(out / "results.json"), fault_path="/datasets/*", cwd=work,
                           env=own_caches(work))
        if name == "push":
            repo = f"fc-push/{work.name}"
            (work / "recipe.yaml").write_text(P.recipe_text("task_arithmetic", str(self.family.base),
                                                            [str(self.family.experts[d]) for d in DOMAINS]))
            return Subject(name, [P.MERGEBENCH, "merge", "recipe.yaml", "--out", "out", "--push-to", repo], out,
                           lambda: hub_files_digest(self.hub_root / "models" / repo), ("--resume",),
                           hub_repos=(f"models/{repo}",), fault_path="/api/*", cwd=work)
        if name == "results_upload":
            repo = f"fc-results/{work.name}"
            return Subject(name, [P.MERGEBENCH, "eval", str(self.family.base), "--tasks", "mb_mmlu", "--eval-data",
                                  str(self.root / "evalrepo"), "--out", "out/results.json", "--push-results", repo],
                           out, lambda: results_rows_digest(self.hub_root / "datasets" / repo),
                           hub_repos=(f"datasets/{repo}",), fault_path="/api/*", cwd=work)
        raise ValueError(name)

    def small_bench(self, out: Path) -> dict:
        """A benchmark run of the tiny family: two methods (one with a two-point grid), two items per task."""
        return {"name": "fc", "output": str(out),
                "bases": [{"name": "tiny-llama", "model": str(self.family.base),
                           "experts": {d: str(p) for d, p in self.family.experts.items()}}],
                "data": {d: str(self.validation[d]) for d in DOMAINS},
                "methods": [{"method": "model_soup"}, {"method": "task_arithmetic", "grid": {"scaling": [0.3, 1.0]}}],
                "validation": {"suites": ["tinybench_validation"], "max_samples": 2},
                "evaluation": {"suites": ["tinybench"], "max_samples": 2}}

    def run(self, subject: Subject, url: str | None, *extra: str, timeout: float = 600) -> P.Run:
        return P.run_cmd([*subject.cmd, *extra], cwd=subject.cwd, env={**self.env(url), **subject.env},
                         timeout=timeout)

    def reference_of(self, name: str, url: str | None) -> tuple[object, float]:
        """The fault-free output digest and duration of ``name`` (once per subject)."""
        key = (name, url is not None)
        if key not in self.reference:
            where = f"{name.replace(':', '-')}-{'hub' if url else 'local'}"
            subject = self.subject(name, self.root / "reference" / where, url)
            r = self.run(subject, url)
            if r.rc != 0:
                raise RuntimeError(f"the fault-free {name} run failed: {r.stderr[-1500:]}")
            self.reference[key] = (subject.digest(), r.seconds)
        return self.reference[key]

    # --- kills ----------------------------------------------------------------------------------------------------

    def kill_once(self, name: str, tally: Tally, url: str | None) -> None:
        want, fresh_seconds = self.reference_of(name, url)
        tally.runs += 1
        where = f"{name.replace(':', '-')}-{'hub' if url else 'local'}-{tally.runs}"
        subject = self.subject(name, self.root / "kills" / where, url)
        proc = subprocess.Popen(subject.cmd, cwd=subject.cwd, env={**self.env(url), **subject.env},
                                stdout=subprocess.DEVNULL,
                                stderr=subprocess.DEVNULL, start_new_session=True)
        delay = self.rng.uniform(0.05, 0.95) * fresh_seconds
        started = time.monotonic()
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            P.kill_group(proc.pid)
            proc.wait()
        killed_after = time.monotonic() - started
        r = self.run(subject, url, *subject.rerun_extra)
        lost = killed_after + r.seconds - fresh_seconds
        if r.rc != 0 or r.timed_out:
            tally.notes.append(f"{name} killed after {killed_after:.1f}s: rerun exit {r.rc}: {P.last_lines(r.stderr)}")
            return
        tally.recovered += 1
        tally.lost.append(lost)
        left = partial_leftovers(subject.output)
        if subject.digest() == want and not left:
            tally.identical += 1
        else:
            tally.corrupt += 1
            tally.notes.append(f"{name} killed after {killed_after:.1f}s: rerun output differs or left {left}")

    # --- the Space ------------------------------------------------------------------------------------------------

    def space_job(self, hub: SpaceHub, where: str, kill_after: float | None = None) -> SpaceJob:
        """One merge submitted through the Gradio API of a fresh Space process (in-process worker, models and
        results pushed to the loopback Hub) and followed to its end. With ``kill_after``, the Space is killed with
        SIGKILL that many seconds after the submission — its worker with it, the job's pipeline child by
        PR_SET_PDEATHSIG — and started again on the same state, as a crashed Space restarts."""
        work = self.root / "space" / where
        work.mkdir(parents=True)
        secret = secrets.token_hex(16)
        space = S.SpaceProcess(hub_url=hub.url, results_dir=hub.results, work=work, token="hf_faultCampaignSpace",
                               plan=S.Plan(max_active=100, max_daily=1000), secret=secret)
        jobs = space.state / "jobs"
        killed_after = None
        space.start()
        try:
            [sent] = S.submit_wave(space.url, ["fc-user"], 1, secret, where)
            if sent.job_id is None:
                raise RuntimeError(f"the Space refused the campaign's submission: {sent.message}")
            job_id, submitted = sent.job_id, time.monotonic()

            def ended() -> bool:
                return S.read_jobs(jobs).get(job_id, {}).get("status") in S.ENDED

            if kill_after is not None:
                with suppress(TimeoutError):
                    S.wait_for(ended, kill_after, f"job {job_id}", step=0.05)
                if not ended():
                    killed_after = time.monotonic() - submitted
                    space.crash()
                    space.start()
            S.wait_for(ended, 600, f"job {job_id} to end")
            seconds = time.monotonic() - submitted
        finally:
            space.stop()
        job = S.read_jobs(jobs)[job_id]
        log = space.state / "work" / job_id / "job.log"
        finished = log.read_text(errors="replace").count("job finished:") if log.exists() else 0
        run = SpaceJob(job, seconds, killed_after, finished)
        if job["status"] == "done":
            from mergebench.eval.leaderboard import read_results

            results = Path(job["results_file"])
            pushed = Counter(r.model["id"] for r in read_results(S.RESULTS_REPO))[job["model_id"]]
            run.digest = (scores_digest(results), hub_files_digest(hub.root / "models" / job["model_id"]), pushed)
            run.leftovers = partial_leftovers(results)
        return run

    def space_kill_once(self, hub: SpaceHub, tally: Tally) -> None:
        key = ("space", True)
        if key not in self.reference:
            fresh = self.space_job(hub, "reference")
            if fresh.digest is None:
                raise RuntimeError(f"the fault-free Space job failed: {fresh.job.get('message')}")
            self.reference[key] = (fresh.digest, fresh.seconds)
        want, fresh_seconds = self.reference[key]
        tally.runs += 1
        run = self.space_job(hub, f"kill-{tally.runs}", self.rng.uniform(0.05, 0.95) * fresh_seconds)
        when = (f"Space killed {run.killed_after:.1f}s after the submission" if run.killed_after is not None
                else "the job ended before the kill")
        if run.job["status"] != "done":
            tally.notes.append(f"{when}: the job ended {run.job['status']}: {run.job.get('message')}")
            return
        tally.recovered += 1
        tally.lost.append(run.seconds - fresh_seconds)
        if run.digest == want and run.finished == 1 and not run.leftovers:
            tally.identical += 1
        else:
            tally.corrupt += 1
            tally.notes.append(f"{when}: {run.finished} finished pipeline(s), scores/model/results pushed "
                               f"{'equal' if run.digest == want else 'differ'}, left {run.leftovers}")

    # --- network faults -------------------------------------------------------------------------------------------

    def fault_once(self, name: str, fault: str, options: tuple[str, ...], tally: Tally) -> None:
        tally.runs += 1
        tally.fired = tally.fired or 0
        work = self.root / "network" / re.sub(r"[^A-Za-z0-9]+", "-", f"{name}-{fault}").strip("-")  # a repo name too
        with self.server() as clean:  # the reference reads the same Hub, without faults
            want, fresh_seconds = self.reference_of(name, clean.url)
        subject = self.subject(name, work, "x")
        for repo in subject.hub_repos:
            shutil.rmtree(self.hub_root / repo, ignore_errors=True)
        with self.server(*options, "--fault-path", subject.fault_path) as server:
            r = self.run(subject, server.url, timeout=300)
        tally.fired += faults_fired(server.log)
        left = partial_leftovers(subject.output)
        if r.timed_out or "Traceback" in r.stderr:
            tally.corrupt += 1
            tally.notes.append(f"{name} under {fault}: {'hang' if r.timed_out else P.last_lines(r.stderr)}")
            return
        if r.rc == 0:
            tally.recovered += 1
            tally.lost.append(r.seconds - fresh_seconds)
            if subject.digest() == want and not left:
                tally.identical += 1
            else:
                tally.corrupt += 1
                tally.notes.append(f"{name} under {fault}: exit 0 with a different output (or left {left})")
            return
        if r.rc != 1 or not P.has_error_line(r.stderr):
            tally.corrupt += 1
            tally.notes.append(f"{name} under {fault}: unclean exit {r.rc}: {P.last_lines(r.stderr)}")
            return
        tally.notes.append(f"{name} under {fault}: clean error, not recovered: {P.first_error(r.stderr)}")
        with self.server() as clean:  # what the failure left must not spoil the retry
            again = self.run(subject, clean.url, *subject.rerun_extra, timeout=300)
        if again.rc == 0 and subject.digest() == want and not partial_leftovers(subject.output):
            tally.identical += 1
        else:
            tally.corrupt += 1
            tally.notes.append(f"{name} after {fault}: the retry exit {again.rc} / output differs")


ERRORS: dict[str, tuple[str, ...]] = {
    "HTTP 503 burst (×3)": ("--http-error", "503", "--fault-times", "3"),
    "HTTP 429 + Retry-After 1 s (×3)": ("--http-error", "429", "--retry-after", "1", "--fault-times", "3"),
}
FILE_FAULTS: dict[str, tuple[str, ...]] = {
    "drop after 100 kB (×3)": ("--drop-after-bytes", "100000", "--fault-times", "3"), **ERRORS,
    "100 KB/s": ("--throttle", "100000", "--fault-times", "0"),
    "body short, lying Content-Length (×2)": ("--short-body", "100", "--fault-times", "2"),
}
"""On downloads (GET): shards, dataset files, evaluation data."""
API_FAULTS: dict[str, tuple[str, ...]] = {
    "POST answer lost after the work is done (×2)": ("--drop-after-bytes", "0", "--fault-times", "2",
                                                     "--fault-method", "POST"), **ERRORS,
    "answer cut after 20 bytes (×3)": ("--drop-after-bytes", "20", "--fault-times", "3", "--fault-method", "*"),
    "answer short, lying Content-Length (×2)": ("--short-body", "10", "--fault-times", "2", "--fault-method", "*"),
}
"""On API answers (JSON, any method): commits, repo creation, Job launches and status."""
FIRED = re.compile(r"fault (error|throttle) fired on|fault: dropping|fault: serving .* short")
"""The loopback Hub's log lines (``-v``) of a fault that took effect."""
NETWORK_SUBJECTS = {"hub_merge": ("Hub merge (TIES)", FILE_FAULTS), "statistics": ("statistics", FILE_FAULTS),
                    "data_build": ("data build", FILE_FAULTS), "eval_data": ("eval data", FILE_FAULTS),
                    "push": ("push", API_FAULTS), "results_upload": ("results upload", API_FAULTS),
                    "jobs_run": ("Jobs (the runner's hf-jobs executor)", API_FAULTS)}
KILL_PLAN = {"merge:task_arithmetic": 4, "merge:ties": 3, "merge:dare": 3, "merge-hub:task_arithmetic": 10,
             "statistics": 10, "data_build": 12, "runner": 8}
SPACE_KILLS = 6
"""kill -9 of the Space process while one merge job is queued or running (each run a fresh Space: ~1 min)."""
SPACE_LABEL = "kill -9: Space worker"


def kill_label(name: str) -> str:
    label = name.replace("merge-hub:", "Hub merge, ").replace("merge:", "local merge, ")
    return f"kill -9: {label.replace('_', ' ')}"


def own_caches(work: Path) -> dict[str, str]:
    """Hub and MergeBench caches of this run only: a run reading a cache its reference filled downloads nothing,
    and no network fault could reach it."""
    return {"HF_HOME": str(work / "hf"), "MERGEBENCH_CACHE": str(work / "mbcache")}


def faults_fired(log: list[str]) -> int:
    return sum(bool(FIRED.search(line)) for line in log)


def partial_leftovers(out: Path) -> list[str]:
    """Temporary or partial siblings of ``out`` (what a reader must never see), e.g. ``.out.partial``, ``.out.x``."""
    return sorted(p.name for p in out.parent.glob(f".{out.name}*") if not p.name.endswith(".stage.json"))


def leaderboard_digest(out: Path) -> object:
    import pandas as pd

    table = pd.read_csv(out / "leaderboard.csv")
    return table.drop(columns=[c for c in table.columns if c in VOLATILE]).round(9).to_csv(index=False)


def scores_digest(path: Path) -> object:
    data = json.loads(path.read_text(encoding="utf-8"))
    return {name: (t["status"], t["score"], t["num_samples"], t["outputs_sha256"],
                   (t.get("data") or {}).get("revision")) for name, t in data["tasks"].items()}


def hub_files_digest(repo: Path) -> object:
    return {k: v for k, v in P.tree_digest(repo).items() if k.endswith((".safetensors", ".json"))
            and not k.startswith(".")}


def results_rows_digest(repo: Path) -> object:
    import pandas as pd

    frames = [pd.read_parquet(io.BytesIO(p.read_bytes())) for p in sorted(repo.rglob("*.parquet"))]
    if not frames:
        return None
    rows = pd.concat(frames)
    keep = [c for c in ("model", "task", "status", "score", "num_samples") if c in rows.columns]
    return sorted(map(tuple, rows[keep].astype(str).values.tolist()))


def render(tallies: list[Tally], load: tuple[tuple[float, ...], tuple[float, ...]], minutes: float) -> str:
    when = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%d %H:%M UTC")
    lines = [f"`.venv/bin/python benchmarks/fault_campaign.py --write`, run {when} on {os.cpu_count()} CPUs; load "
             f"average {'/'.join(f'{x:.2f}' for x in load[0])} before, {'/'.join(f'{x:.2f}' for x in load[1])} after; "
             f"{minutes:.1f} min in all. What each column means is in the script's docstring.", "",
             f"Network faults on downloads: {'; '.join(FILE_FAULTS)}. On API answers: {'; '.join(API_FAULTS)}.", "",
             "| scenario | runs | recovered | identical | corrupt or partial visible | faults fired | "
             "time lost (median s) |",
             "|---|---|---|---|---|---|---|"]
    for t in tallies:
        lost = f"{statistics.median(t.lost):.1f}" if t.lost else "–"
        fired = "–" if t.fired is None else str(t.fired)
        lines.append(f"| {t.scenario} | {t.runs} | {t.recovered} | {t.identical} | {t.corrupt} | {fired} | {lost} |")
    total = Tally("**total**", sum(t.runs for t in tallies), sum(t.recovered for t in tallies),
                  sum(t.identical for t in tallies), sum(t.corrupt for t in tallies))
    lines.append(f"| {total.scenario} | {total.runs} | {total.recovered} | {total.identical} | {total.corrupt} | "
                 f"{sum(t.fired or 0 for t in tallies)} | |")
    notes = [n for t in tallies for n in t.notes]
    lines += ["", "Notes:", ""] + ([f"- {n}" for n in notes] or ["None."])
    return "\n".join(lines)


def write_section(text: str) -> None:
    current = RESULTS.read_text(encoding="utf-8")
    block = f"## Fault campaign (issue #20, `benchmarks/fault_campaign.py`)\n\n{BEGIN}\n{text}\n{END}\n"
    if BEGIN in current:
        head, rest = current.split(BEGIN, 1)
        head = head.rsplit("## Fault campaign", 1)[0]
        current = head + block + rest.split(END, 1)[1].lstrip("\n")
    else:
        current = current.rstrip("\n") + "\n\n" + block
    RESULTS.write_text(current, encoding="utf-8")


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--only", choices=("kills", "network"))
    parser.add_argument("--scenario", action="append", default=[], metavar="TEXT",
                        help="only the scenarios whose label contains TEXT (repeatable), e.g. 'Space', 'Jobs'")
    parser.add_argument("--write", action="store_true", help="rewrite the campaign's section of RESULTS.md")
    parser.add_argument("--keep", action="store_true", help="keep the working folder (printed)")
    parser.add_argument("--state", type=Path, default=P.REPO / "benchmarks" / ".fault_campaign.json")
    parser.add_argument("--fresh", action="store_true", help="forget the scenarios finished by an earlier run")
    args = parser.parse_args()
    load_before, started = os.getloadavg(), time.monotonic()
    root = Path(tempfile.mkdtemp(prefix="mergebench-faults-"))
    campaign = Campaign(root)
    done = {} if args.fresh or not args.state.is_file() else json.loads(args.state.read_text(encoding="utf-8"))
    tallies = [Tally(**t) for t in done.values()]

    def skip(label: str) -> bool:
        return label in done or (bool(args.scenario) and not any(text in label for text in args.scenario))

    def finished(tally: Tally) -> None:
        print(tally, flush=True)
        tallies.append(tally)
        done[tally.scenario] = dataclasses.asdict(tally)
        args.state.write_text(json.dumps(done, indent=1), encoding="utf-8")

    try:
        if args.only != "network":
            for name, count in KILL_PLAN.items():
                if skip(kill_label(name)):
                    continue
                server = campaign.server() if name.startswith("merge-hub") or name == "data_build" else None
                tally = Tally(kill_label(name))
                try:
                    for _ in range(count):
                        campaign.kill_once(name.replace("merge-hub", "merge"), tally, server.url if server else None)
                finally:
                    if server:
                        server.stop()
                finished(tally)
            if not skip(SPACE_LABEL):
                tally = Tally(SPACE_LABEL)
                (root / "space-hub").mkdir()
                with S.loopback_space_hub(root / "space-hub") as (url, hub_root, results):
                    for _ in range(SPACE_KILLS):
                        campaign.space_kill_once(SpaceHub(url, hub_root, results), tally)
                finished(tally)
        if args.only != "kills":
            for name, (what, faults) in NETWORK_SUBJECTS.items():
                label = f"network: {what}"
                if skip(label):
                    continue
                tally = Tally(label)
                for fault, options in faults.items():
                    campaign.fault_once(name, fault, options, tally)
                finished(tally)
    finally:
        if not args.keep:
            shutil.rmtree(root, ignore_errors=True)
        else:
            print(f"kept {root}")
    text = render(tallies, (load_before, os.getloadavg()), (time.monotonic() - started) / 60)
    print(text)
    if args.write:
        write_section(text)
    return 0 if all(t.corrupt == 0 for t in tallies) else 1


if __name__ == "__main__":
    sys.exit(main())
