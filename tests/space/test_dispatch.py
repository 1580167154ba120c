"""``dispatch = hf-jobs``: each submission runs as a Hugging Face Job (the loopback Hub's Jobs API, each Job a local
process), several at once; a restarted Space re-attaches to its Jobs by label instead of launching them again; a
finished Job's results land on the leaderboard; the unit carries the evaluation backend (vllm on GPU flavors)."""

from __future__ import annotations

import logging
import time
from collections import Counter
from dataclasses import replace
from pathlib import Path

import pytest
from board import Board
from dispatch import SPACE_LABEL, SUBMISSION_LABEL, JobsDispatcher, space_label, submission_unit
from huggingface_hub import HfApi, ModelCard
from jobs import HubMirror, Job, JobStore
from settings import SpaceConfig
from submission import Catalogue, scoring, validate_merge, validate_model
from worker import Worker, make_worker

from mergebench.errors import ConfigError
from mergebench.eval.leaderboard import read_results
from mergebench.runner.units import SubmissionUnit, load_unit, spec_json
from tests.space._wait import wait_until

BASE = "mergebench-fixtures/tiny-llama"
TASKS = ("mb_tiny_mmlu_stem",)  # one task, two items: scored against the fixture math expert's mmlu_stem score
A10G_PER_SECOND = 1.50 / 3600  # a10g-large's published price (the loopback's list_jobs_hardware)
SUBMISSIONS = (("alice", "ties", '{"top_k": 0.3}'), ("bob", "task_arithmetic", '{"scaling": 0.5}'),
               ("carol", "model_soup", ""))


def _config(space_hub, work_dir: Path, **overrides) -> SpaceConfig:
    settings = {"results": str(space_hub.results_dir), "work_dir": work_dir, "results_repo": "alice/dispatch-results",
                "requests_repo": "alice/dispatch-requests", "dispatch": "hf-jobs", "jobs_flavor": "a10g-large",
                "jobs_backend": "transformers",  # the loopback's Jobs run on this CPU
                "jobs_max_concurrent": 3, "jobs_image": "mergebench:test", "jobs_poll_seconds": 0.3, **overrides}
    return SpaceConfig(**settings)


def _catalogue(space_hub) -> Catalogue:
    return Catalogue.from_results(read_results(space_hub.results_dir))


def _merge_job(catalogue: Catalogue, user: str, method: str, parameters: str) -> Job:
    experts = [catalogue.experts[BASE][d] for d in ("math", "coding", "safety")]
    request = validate_merge(catalogue, base=BASE, experts=experts, method=method, parameters=parameters,
                             validation_data={})
    return Job.new(user, "merge", {**request, "eval": scoring(catalogue, BASE, tasks=TASKS, max_samples=2)})


def _space_jobs() -> list:
    return list(HfApi().list_jobs(labels={SPACE_LABEL: space_label()}))


def test_the_unit_of_a_gpu_flavor_evaluates_with_vllm(space_hub, tmp_path):
    catalogue = _catalogue(space_hub)
    job = _merge_job(catalogue, "alice", "ties", "")
    gpu = SpaceConfig(results=str(space_hub.results_dir), work_dir=tmp_path, results_repo="org/results",
                      requests_repo="org/requests", dispatch="hf-jobs")  # the defaults: a10g-large, backend by flavor
    unit = load_unit(spec_json(submission_unit(job, gpu)))  # what the Job's command line carries
    assert isinstance(unit, SubmissionUnit) and (gpu.jobs_flavor, unit.options.backend) == ("a10g-large", "vllm")
    assert unit.recipe == job.request["recipe"] and unit.tasks == list(TASKS) and unit.max_samples == 2
    assert unit.push_to == f"org/tiny-llama-ties-{job.id.rsplit('-', 1)[-1]}" and unit.results_repo == "org/results"
    assert unit.results.describe(unit.path) == f"hf://datasets/org/requests/jobs/{job.id}/results.json"
    assert submission_unit(job, replace(gpu, jobs_flavor="cpu-upgrade")).options.backend == "transformers"
    assert submission_unit(job, replace(gpu, jobs_backend="transformers")).options.backend == "transformers"
    model = Job.new("bob", "model", {**validate_model(catalogue, model=f"{BASE}_math", base=BASE, method=None,
                                                      parameters=None), "eval": {"tasks": list(TASKS)}})
    evaluated = submission_unit(model, gpu)
    assert (evaluated.model, evaluated.recipe, evaluated.push_to) == (f"{BASE}_math", None, None)
    assert submission_unit(job, gpu).fingerprint != submission_unit(model, gpu).fingerprint


def test_the_dispatch_setting_chooses_the_worker_and_names_missing_settings(space_hub, tmp_path):
    local = SpaceConfig(results=str(space_hub.results_dir), work_dir=tmp_path)
    assert isinstance(make_worker(JobStore(tmp_path), local), Worker)
    assert SpaceConfig.from_env({"MERGEBENCH_DISPATCH": "hf-jobs", "MERGEBENCH_JOBS_MAX_CONCURRENT": "6"},
                                file=None).jobs_max_concurrent == 6
    with pytest.raises(ConfigError) as e:
        make_worker(JobStore(tmp_path), replace(local, dispatch="hf-jobs"))
    assert "requests_repo" in str(e.value) and "jobs_image" in str(e.value) and "MERGEBENCH_DISPATCH=local" in \
        e.value.hint


def test_three_submissions_run_as_concurrent_jobs_survive_a_restart_and_reach_the_leaderboard(
        space_hub, tmp_path, caplog, monkeypatch):
    monkeypatch.setenv("SPACE_ID", "alice/mergebench-three")  # this test's Jobs: labelled alice-mergebench-three
    caplog.set_level(logging.INFO, logger="dispatch")
    config = _config(space_hub, tmp_path / "state")
    catalogue = _catalogue(space_hub)
    store = JobStore(config.work_dir, HubMirror(config.requests_repo))
    jobs = [store.add(_merge_job(catalogue, *s), max_active=2, max_daily=5) for s in SUBMISSIONS]
    first = make_worker(store, config, on_finish=Board(config, store).add_job)
    assert isinstance(first, JobsDispatcher)
    first.start()
    try:  # all three Jobs running at once, none finished: the Space restarts now
        running = wait_until(lambda: (js := _space_jobs()) and len(js) == 3 and all(
            j.status.stage == "RUNNING" for j in js) and js, 120, "three RUNNING Jobs", step=0.1)
    finally:
        first.stop()
    assert {j.labels[SUBMISSION_LABEL] for j in running} == {j.id for j in jobs}
    assert all(store.get(j.id).status == "running" for j in jobs)

    store = JobStore(config.work_dir, HubMirror(config.requests_repo))  # a new Space process on the same disk
    board = Board(config, store)
    rows_before = len(board.df)
    second = make_worker(store, config, on_finish=board.add_job)
    second.start()
    try:
        wait_until(lambda: all(store.get(j.id).status in ("done", "failed") for j in jobs), 240,
                   "the three submissions")
    finally:
        second.stop()

    hf_jobs = _space_jobs()
    assert Counter(j.labels[SUBMISSION_LABEL] for j in hf_jobs) == {j.id: 1 for j in jobs}  # none launched twice
    assert all(f"re-attached to its Hugging Face Job {j.id}" in caplog.text for j in running)
    by_id = {j.id: HfApi().inspect_job(job_id=j.id) for j in hf_jobs}
    assert {j.status.stage for j in by_id.values()} == {"COMPLETED"}
    assert max(j.started_at for j in by_id.values()) < min(j.finished_at for j in by_id.values())  # overlapping
    assert {j.flavor for j in by_id.values()} == {"a10g-large"}
    done = [store.get(j.id) for j in jobs]
    assert [j.status for j in done] == ["done"] * 3, [(j.message, j.hint) for j in done]
    for job in done:
        info = by_id[job.hf_job.rsplit("/", 1)[-1]]
        assert info.labels[SUBMISSION_LABEL] == job.id and job.flavor == "a10g-large" and job.stage is None
        assert job.cost_usd == pytest.approx(info.durations.running_secs * A10G_PER_SECOND, abs=1e-6)
        assert job.cost_usd > 0 and job.elapsed_seconds >= info.durations.running_secs > 0
        log = store.log_path(job.id).read_text()
        assert f"Hugging Face Job alice/{info.id} on a10g-large" in log and "== evaluating ==" in log
        assert "done (hf://datasets/alice/dispatch-requests/jobs/" in log
        card = ModelCard.load(job.model_id)  # the Job pushed the merged model with its card
        assert card.data.base_model_relation == "merge" and BASE in str(card.data.base_model)
        scored = read_results(job.results_file)[0]
        assert scored.model["id"] == job.model_id and scored.settings["backend"] == "transformers"
        assert list(scored.tasks) == list(TASKS) and scored.settings["max_samples"] == 2
    new = board.df[board.df.model.isin([j.model_id for j in done])]
    assert len(board.df) == rows_before + 3 and set(new.method) == {"ties", "task_arithmetic", "model_soup"}
    assert new.normalised.notna().all()
    pushed = {r.model["id"] for r in read_results("alice/dispatch-results")}  # the Jobs appended their scores
    assert pushed == {j.model_id for j in done}
    shown = _page_rows(store)
    for job in done:
        minutes, seconds = divmod(int(job.elapsed_seconds), 60)
        assert shown[job.id]["Hugging Face Job"] == f"{job.hf_job} (a10g-large)"
        assert shown[job.id]["cost"] == f"${job.cost_usd:.4f}" and shown[job.id]["status"] == "done"
        assert shown[job.id]["elapsed"] == (f"{minutes} min {seconds:02d} s" if minutes else f"{seconds} s")


def _page_rows(store: JobStore) -> dict[str, dict[str, str]]:
    """The Submit tab's queue table, by job id."""
    from app import JOBS_COLUMNS, _jobs_frame

    return {row[0]: dict(zip(JOBS_COLUMNS, row, strict=True)) for row in _jobs_frame(store.all())}


def test_no_more_jobs_run_at_once_than_the_limit(space_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("SPACE_ID", "alice/mergebench-limit")
    config = _config(space_hub, tmp_path / "state", jobs_max_concurrent=1, requests_repo="alice/dispatch-limit")
    store = JobStore(config.work_dir)
    catalogue = _catalogue(space_hub)
    first, second = (store.add(_merge_job(catalogue, user, "ties", ""), max_active=2, max_daily=5)
                     for user in ("alice", "bob"))
    dispatcher = make_worker(store, config)
    dispatcher.start()
    try:
        launched = wait_until(lambda: store.get(first.id).hf_job, 30, "the first launch").split("/")[1]
        time.sleep(1.0)  # three polls
        assert [j.labels[SUBMISSION_LABEL] for j in _space_jobs()] == [first.id]
        assert store.get(second.id).status == "pending"
        HfApi().cancel_job(job_id=launched)
        wait_until(lambda: store.get(second.id).hf_job, 30, "the second launch once the first ended")
        assert store.get(first.id).status == "failed"
        HfApi().cancel_job(job_id=store.get(second.id).hf_job.split("/")[1])
        wait_until(lambda: store.get(second.id).status == "failed", 30, "the second cancelled job")
    finally:
        dispatcher.stop()
    assert sorted(j.labels[SUBMISSION_LABEL] for j in _space_jobs()) == sorted([first.id, second.id])


def test_with_user_billing_a_job_waits_for_its_owners_token_and_a_failed_job_shows_why(space_hub, tmp_path):
    config = _config(space_hub, tmp_path / "state", jobs_token="user", requests_repo="alice/dispatch-user")
    store = JobStore(config.work_dir)
    job = store.add(_merge_job(_catalogue(space_hub), "bob", "ties", ""), max_active=2, max_daily=5)
    dispatcher = make_worker(store, config)
    assert isinstance(dispatcher, JobsDispatcher)
    dispatcher.start()
    try:
        time.sleep(1.0)  # three polls: nothing is launched without bob's token
        assert store.get(job.id).status == "pending" and not store.get(job.id).hf_job
        dispatcher.remember_token("bob", "hf_bobOAuthTokenWithJobsScope")
        launched = wait_until(lambda: store.get(job.id).hf_job, 30, "the launch")
        assert launched.startswith("bob/")  # in bob's namespace: billed to him
        wait_until(lambda: HfApi().inspect_job(job_id=launched.split("/")[1], namespace="bob").status.stage
                   == "RUNNING", 30, "the Job to run")
        HfApi().cancel_job(job_id=launched.split("/")[1], namespace="bob")
        failed = wait_until(lambda: (j := store.get(job.id)).status == "failed" and j, 60, "the cancelled job")
    finally:
        dispatcher.stop()
    assert f"Hugging Face Job {launched.split('/')[1]} ended CANCELED: Canceled." in failed.message
    log = store.log_path(job.id).read_text().splitlines()
    assert log[0] == f"--- Hugging Face Job {launched} on a10g-large (attempt 1) ---"
    tail = " | ".join(ln for ln in log[1:][-3:] if ln.strip())  # the page shows the log's last lines
    assert failed.message.endswith(f"Log ends: {tail}" if tail else "It wrote no log.")
    assert failed.hint.startswith("The log above (the Job's last lines) shows what failed")
    assert failed.cost_usd is not None and failed.finished_at is not None


def test_a_failed_job_shows_the_error_and_hint_from_its_log(space_hub, tmp_path):
    config = _config(space_hub, tmp_path / "state", requests_repo="alice/dispatch-failed")
    store = JobStore(config.work_dir)
    request = {"model": "alice/deleted-merge", "base_model": BASE, "method": None, "parameters": None,
               "experts": {}, "eval": {"tasks": list(TASKS), "max_samples": 2}}  # checked, then deleted from the Hub
    job = store.add(Job.new("alice", "model", request), max_active=2, max_daily=5)
    dispatcher = make_worker(store, config)
    dispatcher.start()
    try:
        failed = wait_until(lambda: (j := store.get(job.id)).status in ("done", "failed") and j, 120, "the job")
    finally:
        dispatcher.stop()
    log = store.log_path(job.id).read_text().splitlines()
    [hint] = [ln for ln in log if ln.startswith("Hint:")]  # mergebench's Error: (several lines here), then Hint:
    assert failed.status == "failed"
    assert failed.message.startswith(f"Hugging Face Job {failed.hf_job.split('/')[1]} ended ERROR: 404 Client Error. ")
    assert "Repository not found: model 'alice/deleted-merge'. Log ends: " in failed.message
    assert failed.hint == hint[len("Hint:"):].strip() and failed.hint.startswith("Check the repo id")
    assert _page_rows(store)[job.id]["message"] == f"{failed.message} Hint: {failed.hint}"
    assert failed.cost_usd == pytest.approx(
        HfApi().inspect_job(job_id=failed.hf_job.split("/")[1]).durations.running_secs * A10G_PER_SECOND, abs=1e-6)


def test_a_flaky_jobs_api_neither_fails_a_submission_nor_launches_it_twice(space_hub, tmp_path, monkeypatch):
    monkeypatch.setenv("SPACE_ID", "alice/mergebench-flaky")
    faults = space_hub.server.faults
    rules = [faults.http_error(503, times=2, path_glob="/api/jobs/hardware"),  # at start
             faults.http_error(429, retry_after=0.1, times=2, path_glob="/api/jobs/alice", method="POST"),
             faults.drop_after_bytes(0, path_glob="/api/jobs/alice", method="POST"),  # launched, answer lost
             faults.short_body(5, times=2, path_glob="/api/jobs/alice/*")]  # status and logs cut short
    config = _config(space_hub, tmp_path / "state")
    store = JobStore(config.work_dir, HubMirror(config.requests_repo))
    job = store.add(_merge_job(_catalogue(space_hub), "dave", "model_soup", ""), max_active=2, max_daily=5)
    worker = make_worker(store, config, on_finish=Board(config, store).add_job)
    worker.start()
    try:
        wait_until(lambda: store.get(job.id).status in ("done", "failed"), 240, "the submission")
    finally:
        worker.stop()
        faults.clear()  # the Hub serves the module's other tests
    assert [r.fired for r in rules] == [2, 2, 1, 2]
    done = store.get(job.id)
    assert done.status == "done", (done.message, done.hint)
    assert [j.labels[SUBMISSION_LABEL] for j in _space_jobs()] == [job.id]  # the lost launch's Job, adopted
