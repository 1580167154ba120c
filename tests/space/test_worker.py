"""The worker on real jobs: tiny Llama merges streamed from the loopback Hub, pushed with their cards,
scored on CPU, results pushed; jobs queue instead of overlapping; a killed Space resumes its job."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import pytest
from board import Board
from huggingface_hub import HfApi, ModelCard
from jobs import HubMirror, Job, JobStore
from settings import SpaceConfig
from submission import Catalogue, validate_merge
from worker import Worker

from mergebench.eval.leaderboard import read_results
from mergebench.hub.endpoint import endpoint_env
from tests._hub_fixtures import DUMMY_TOKEN
from tests.space._wait import wait_until
from tests.space.conftest import EVAL_TASKS

BASE = "mergebench-fixtures/tiny-llama"


def _config(space_hub, work_dir: Path) -> SpaceConfig:
    return SpaceConfig(results=str(space_hub.results_dir), work_dir=work_dir, results_repo="alice/mergebench-results",
                       requests_repo="alice/mergebench-requests", eval_tasks=EVAL_TASKS, eval_max_samples=2)


def _merge_job(space_hub, user: str, method: str, parameters: str) -> Job:
    catalogue = Catalogue.from_results(read_results(space_hub.results_dir))
    experts = [catalogue.experts[BASE][d] for d in ("math", "coding", "safety")]
    request = validate_merge(catalogue, base=BASE, experts=experts, method=method, parameters=parameters,
                             validation_data={})
    return Job.new(user, "merge", {**request, "eval": {"tasks": list(EVAL_TASKS), "max_samples": 2}})


def test_two_submissions_queue_and_each_is_merged_scored_and_pushed(space_hub, tmp_path):
    config = _config(space_hub, tmp_path / "state")
    store = JobStore(config.work_dir, HubMirror(config.requests_repo))
    board = Board(config, store)
    rows_before = len(board.df)
    a = store.add(_merge_job(space_hub, "alice", "ties", '{"top_k": 0.3}'), max_active=2, max_daily=5)
    b = store.add(_merge_job(space_hub, "bob", "task_arithmetic", '{"scaling": 0.5}'), max_active=2, max_daily=5)
    worker = Worker(store, config, on_finish=board.add_job, poll_seconds=0.2)
    worker.start()
    most_running = 0
    try:
        def finished():
            nonlocal most_running
            jobs = store.all()
            most_running = max(most_running, sum(j.status == "running" for j in jobs))
            return all(j.status in ("done", "failed") for j in jobs)
        wait_until(finished, 300, "both jobs", step=0.1)
    finally:
        worker.stop()
    a, b = store.get(a.id), store.get(b.id)
    assert (a.status, b.status) == ("done", "done"), (a.message, b.message)
    assert most_running == 1 and b.started_at >= a.finished_at  # one at a time, in order
    api = HfApi()
    for job in (a, b):
        card = ModelCard.load(job.model_id)
        assert card.data.base_model_relation == "merge" and BASE in str(card.data.base_model)
        assert any(s.rfilename.endswith(".safetensors") for s in api.model_info(job.model_id).siblings)
        results = json.loads(Path(job.results_file).read_text())
        assert results["model"]["id"] == job.model_id and results["model"]["role"] == "merged"
        assert results["model"]["base_model"] == BASE
        assert results["settings"]["max_samples"] == 2 and list(results["tasks"]) == list(EVAL_TASKS)
        assert results["cost"]["merge_seconds"] > 0 and results["cost"]["merge_peak_memory_bytes"] > 0
        assert "HF_TOKEN" not in store.log_path(job.id).read_text() and DUMMY_TOKEN not in store.log_path(
            job.id).read_text()
    pushed = {r.model["id"]: r for r in read_results("alice/mergebench-results")}
    assert set(pushed) == {a.model_id, b.model_id}
    assert pushed[a.model_id].model["label"] == "ties (top_k=0.3, scaling=1.0, aggregate=sum, topk_scope=global)"
    mirrored = {p.name for p in Path(HfApi().snapshot_download("alice/mergebench-requests", repo_type="dataset")
                                     ).glob("requests/*.json")}
    assert mirrored == {f"{a.id}.json", f"{b.id}.json"}
    new = board.df[board.df.model.isin([a.model_id, b.model_id])]
    assert len(board.df) == rows_before + 2 and set(new.method) == {"ties", "task_arithmetic"}
    assert new.normalised.notna().all()  # math ratio to the fixture expert's mmlu_stem score


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(space_hub, work_dir: Path, hf_home: Path, log: Path) -> subprocess.Popen:
    env = {**os.environ, **endpoint_env(space_hub.url, hf_home, token=DUMMY_TOKEN), "GRADIO_ANALYTICS_ENABLED": "False",
           "MERGEBENCH_EVAL_TASKS": ",".join(EVAL_TASKS), "MERGEBENCH_EVAL_MAX_SAMPLES": "2"}
    cmd = [sys.executable, "-m", "mergebench.cli", "space", "--results", str(space_hub.results_dir), "--port",
           str(_free_port()), "--work-dir", str(work_dir), "--push-results", "alice/restart-results"]
    return subprocess.Popen(cmd, env=env, stdout=log.open("a"), stderr=subprocess.STDOUT)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return Path(f"/proc/{pid}/status").read_text().find("State:\tZ") < 0


def test_killing_the_space_mid_job_resumes_the_job_at_the_next_start(space_hub, tmp_path):
    work_dir = tmp_path / "state"
    store = JobStore(work_dir)
    job = store.add(_merge_job(space_hub, "alice", "ties", ""), max_active=2, max_daily=5)
    log = tmp_path / "space.log"
    first = _serve(space_hub, work_dir, tmp_path / "hf-home", log)
    try:
        running = wait_until(lambda: (j := store.get(job.id)).stage == "evaluating" and j.pid and j, 180,
                        f"the job to reach evaluation (space log: {log})", step=0.05)
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    assert (tmp_path / "state" / "work" / job.id / "merge.json").exists()
    wait_until(lambda: not _alive(running.pid), 10, "the orphaned pipeline process to die with the Space")
    assert store.get(job.id).status == "running"  # what a crash leaves behind
    second = _serve(space_hub, work_dir, tmp_path / "hf-home", log)
    try:
        done = wait_until(lambda: (j := store.get(job.id)).status in ("done", "failed") and j, 180, "the resumed job")
    finally:
        second.send_signal(signal.SIGTERM)
        second.wait(30)
    assert done.status == "done", done.message
    assert done.attempts == 2
    text = store.log_path(job.id).read_text()
    second_attempt = text.split("--- attempt 2")[1]
    assert "== merging ==" in text.split("--- attempt 2")[0] and "== merging ==" not in second_attempt
    assert "== evaluating ==" in second_attempt
    assert [r.model["id"] for r in read_results("alice/restart-results")] == [done.model_id]


def test_a_job_out_of_attempts_fails_cleanly(space_hub, tmp_path):
    config = replace(_config(space_hub, tmp_path / "state"), max_attempts=1, requests_repo=None)
    store = JobStore(config.work_dir)
    job = store.add(_merge_job(space_hub, "alice", "ties", ""), max_active=2, max_daily=5)
    store.claim_next()  # as if the Space had died while running it
    worker = Worker(store, config, poll_seconds=0.2)
    worker.start()
    worker.stop()
    failed = store.get(job.id)
    assert failed.status == "failed" and "Interrupted by 1 restarts" in failed.message
    assert not store.job_dir(job.id).exists()  # never started again
    with pytest.raises(FileNotFoundError):
        store.log_path(job.id).read_text()


def test_a_job_whose_pipeline_finished_before_the_space_stopped_is_collected_not_run_again(space_hub, tmp_path):
    config = replace(_config(space_hub, tmp_path / "state"), requests_repo=None)
    store = JobStore(config.work_dir)
    job = store.add(_merge_job(space_hub, "alice", "ties", ""), max_active=2, max_daily=5)
    store.claim_next()  # the Space died after the pipeline wrote its outcome, before the worker recorded it
    outcome = {"status": "done", "model_id": "alice/tiny-llama-ties-0001", "results_file": "results.json",
               "commit_urls": {"model": "http://hub/commit/1"}, "message": "Scored on 1 tasks"}
    store.job_dir(job.id).mkdir(parents=True)
    (store.job_dir(job.id) / "outcome.json").write_text(json.dumps(outcome))
    announced: list[Job] = []
    worker = Worker(store, config, on_finish=announced.append, poll_seconds=0.2)
    worker.start()
    worker.stop()
    done = store.get(job.id)
    assert (done.status, done.model_id, done.message, done.attempts) == ("done", outcome["model_id"],
                                                                       outcome["message"], 1)
    assert [j.id for j in announced] == [job.id] and announced[0].status == "done"  # on the leaderboard once
    with pytest.raises(FileNotFoundError):
        store.log_path(job.id).read_text()  # no second attempt was started
