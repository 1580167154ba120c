"""The job queue: atomic JSON per job, rate limits, FIFO claims, recovery after a restart (local disk
and, for a fresh container, the requests dataset on the loopback Hub)."""

from __future__ import annotations

import json
from dataclasses import replace

import pytest
from jobs import HubMirror, Job, JobStore, RateLimitError, queue_position


def _job(user: str = "alice", n: int = 0) -> Job:
    return replace(Job.new(user, "merge", {"method": "ties", "base_model": "org/base"}),
                   submitted_at=f"2026-01-01T00:00:0{n}+00:00")


def test_jobs_are_queued_in_order_and_claimed_once(tmp_path):
    store = JobStore(tmp_path)
    a = store.add(_job("alice", 1), max_active=2, max_daily=5)
    b = store.add(_job("bob", 2), max_active=2, max_daily=5)
    assert [queue_position(store.all(), j.id) for j in (a, b)] == [1, 2]
    first = store.claim_next()
    assert (first.id, first.status, first.attempts) == (a.id, "running", 1)
    assert store.claim_next().id == b.id and store.claim_next() is None
    on_disk = json.loads((tmp_path / "jobs" / f"{a.id}.json").read_text())
    assert on_disk["status"] == "running" and not list((tmp_path / "jobs").glob(".*.tmp"))


def test_rate_limits_per_user(tmp_path):
    store = JobStore(tmp_path)
    first = store.add(Job.new("alice", "merge", {}), max_active=1, max_daily=5)
    with pytest.raises(RateLimitError, match="already have 1 job"):
        store.add(Job.new("alice", "merge", {}), max_active=1, max_daily=5)
    store.add(Job.new("bob", "merge", {}), max_active=1, max_daily=5)  # other users are not affected
    assert not store.update(first.id, status="done").active
    second = store.add(Job.new("alice", "merge", {}), max_active=1, max_daily=2)
    store.update(second.id, status="failed")
    with pytest.raises(RateLimitError, match="2 jobs in the last 24 hours"):
        store.add(Job.new("alice", "merge", {}), max_active=1, max_daily=2)
    assert store.add(_job("alice"), max_active=1, max_daily=3).status == "pending"


def test_a_finished_job_is_announced_before_anyone_can_read_it_as_done(tmp_path):
    """The leaderboard learns of a job before the store calls it done (a reader that sees ``done`` and then asks
    the leaderboard finds the row); if announcing fails, the job is not recorded as ended."""
    store = JobStore(tmp_path)
    job = store.add(_job(), max_active=2, max_daily=5)
    store.claim_next()
    seen: list[tuple[str, str, str]] = []

    def announce(ended: Job) -> None:
        seen.append((ended.status, ended.results_file, store.get(job.id).status))

    finished = store.finish(job.id, announce, status="done", results_file="r.json")
    assert seen == [("done", "r.json", "running")]
    assert (finished.status, finished.stage, finished.results_file) == ("done", None, "r.json")
    assert JobStore(tmp_path).get(job.id).finished_at == finished.finished_at

    other = store.add(_job("bob"), max_active=2, max_daily=5)
    store.claim_next()

    def broken(ended: Job) -> None:
        raise OSError("disk full")

    with pytest.raises(OSError):
        store.finish(other.id, broken, status="done")
    assert store.get(other.id).status == "running"


def test_running_jobs_are_requeued_then_failed(tmp_path):
    store = JobStore(tmp_path)
    job = store.add(_job(), max_active=2, max_daily=5)
    store.claim_next()
    store.update(job.id, stage="evaluating")
    restarted = JobStore(tmp_path)
    [again] = restarted.recover(max_attempts=2)
    assert (again.status, again.attempts) == ("pending", 1)
    assert "Resumed after a restart (was evaluating)" in again.message
    restarted.claim_next()
    [failed] = JobStore(tmp_path).recover(max_attempts=2)
    assert failed.status == "failed" and "Interrupted by 2 restarts" in failed.message and failed.hint


def test_a_fresh_container_rebuilds_the_queue_from_the_requests_dataset(hub, tmp_path):
    store = JobStore(tmp_path / "old", HubMirror("alice/requests"))
    pending = store.add(_job("alice", 1), max_active=2, max_daily=5)
    running = store.add(_job("bob", 2), max_active=2, max_daily=5)
    store.claim_next()
    assert store.get(running.id).status == "pending" and store.get(pending.id).status == "running"
    fresh = JobStore(tmp_path / "new", HubMirror("alice/requests"))  # empty local disk
    [requeued] = fresh.recover(max_attempts=2)
    assert requeued.id == pending.id and requeued.status == "pending"
    assert [(j.id, j.status) for j in fresh.all()] == [(pending.id, "pending"), (running.id, "pending")]
    mirrored = HubMirror("alice/requests").pull()
    assert {j.id: j.status for j in mirrored}[pending.id] == "pending"  # the requeue was mirrored too
    assert all("token" not in json.dumps(j.request).lower() for j in mirrored)


def test_a_missing_requests_dataset_is_an_empty_queue(hub, tmp_path):
    assert JobStore(tmp_path, HubMirror("alice/never-created")).recover(max_attempts=2) == []
