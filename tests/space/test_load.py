"""The Space under load, small: 12 submissions from 4 users at once through ``gradio_client`` against the Space as
a real process, killed with SIGKILL while a job runs and started again. The code is ``benchmarks/space_load.py``'s
(the 50-submission run whose figures are in ``benchmarks/RESULTS.md``); see its docstring for what it checks.
"""

from __future__ import annotations

import importlib.util
import sys
from collections import Counter

from tests.space.conftest import SPACE_DIR

BENCHMARK = SPACE_DIR.parent / "benchmarks" / "space_load.py"


def _space_load():
    spec = importlib.util.spec_from_file_location("space_load", BENCHMARK)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # its dataclasses look their module up there
    spec.loader.exec_module(module)
    return module


def test_a_restart_under_load_loses_nothing_runs_nothing_twice_and_keeps_the_limits(space_hub, tmp_path):
    load = _space_load()
    # one job per user, active or in the day: 8 submissions at once, of which 4 are queued; the Space is killed in
    # the middle of the first job's pipeline; once it is back, 4 more, which the limits read from its recovered state
    plan = load.Plan(users=4, before=2, after=1, max_active=1, max_daily=1, restart_after=0, timeout=240)
    report = load.run(plan, hub_url=space_hub.url, hub_root=space_hub.root, results_dir=space_hub.results_dir,
                      work=tmp_path / "run")
    assert report.problems() == [], report.table()
    # the same facts, spelled out
    assert len(report.signed) == 12 and report.files_scanned > 0 and report.token_hits == [] and report.token_held
    assert report.lost == [] and report.ran_twice == [] and report.completed == len(report.accepted)
    assert len(report.accepted) == 4 and {report.jobs[j]["user"] for j in report.accepted} == {
        "user00", "user01", "user02", "user03"}
    assert report.count("active-limit") + report.count("daily-limit") == 12 - len(report.accepted)
    assert max(report.most_active.values()) == 1
    assert len(report.interrupted) == 1 and report.jobs[report.interrupted[0]]["attempts"] == 2
    assert report.count("signed-out", signed=False) == 2  # no session; a session signed with another key
    assert report.rows[1] - report.rows[0] == report.completed
    busy = [s for phase, s in report.latencies if phase == "busy"]
    assert busy, "the leaderboard never answered during the run"


def test_the_checks_catch_a_lost_job_a_second_run_a_refusal_under_the_limit_and_a_leak():
    """The checker itself, on a made-up run where everything went wrong (no Space needed)."""
    load = _space_load()
    under = "**Error:** You already have 0 job(s) queued or running (limit 1); wait for one to finish."
    submissions = [load.Submission("user00", "before", 0.1, m, *load.classify(m)) for m in (
        "✅ Queued as job `20261205000000000000-aaaaaa` (position 1).", under)]
    job = {"id": "20261205000000000000-aaaaaa", "user": "user00", "status": "pending", "attempts": 2}
    report = load.Report(
        load.Plan(users=1, before=2, after=0, max_active=1, max_daily=1), submissions, {job["id"]: job},
        history={job["id"]: [("running", 1), ("done", 1), ("pending", 1)]}, most_active={"user00": 2},
        finished_lines={job["id"]: 2}, interrupted=[], kill_stage=None, latencies=[], visitor_failures=0,
        downtime=None, restart_seconds=1.0, rows=(18, 18), pushed=Counter(), token_hits=["state/jobs/x.json"],
        files_scanned=1, token_held=False, seconds=1.0)
    assert submissions[1].outcome == "wrong-refusal"
    found = "\n".join(report.problems())
    for expected in ("wrong-refusal", "2 jobs active at once", "lost (not ended)", f"ran twice: ['{job['id']}']",
                     "the HF token appears in ['state/jobs/x.json']", "not the one in the Space's environment",
                     "no job was running when the Space was killed"):
        assert expected in found, found
