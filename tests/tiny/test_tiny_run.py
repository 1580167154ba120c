"""MergeBench-Tiny end to end (slow: about ten minutes on 2 cores): the issue's acceptance, as assertions.

The run is killed once its first grid point is cached and started again: the second process must reuse the
data, the base, the experts and every finished grid point, and finish with a full leaderboard.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mergebench.domains import DOMAINS
from mergebench.eval.leaderboard import read_results, table

pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

EIGHT = {"model_soup", "task_arithmetic", "ties", "dare", "consensus", "localize_stitch", "localize_stitch (trained)",
         "regmean", "fisher"}
"""The eight methods, Localize-and-Stitch in both variants."""


def _tiny(work: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    return subprocess.Popen([sys.executable, "-m", "mergebench.cli", "tiny", "--work-dir", str(work)], env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)


def _grid_points(work: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (work / "run" / "grid").rglob("*.json")}


def test_tiny_runs_resumes_after_a_kill_and_scores_every_method(tmp_path: Path) -> None:
    work = tmp_path / "tiny"
    first = _tiny(work)
    try:
        deadline = time.monotonic() + 1800
        while not _grid_points(work) and first.poll() is None and time.monotonic() < deadline:
            time.sleep(2)
        assert first.poll() is None, first.stdout.read()  # still running: killed mid-way, not after the end
    finally:
        first.send_signal(signal.SIGKILL)
        first.wait()
    before = _grid_points(work)
    experts = {d: (work / "experts" / d / "model.safetensors").stat().st_mtime_ns for d in DOMAINS}

    second = _tiny(work)
    output, _ = second.communicate(timeout=1800)
    assert second.returncode == 0, output
    assert "mergebench space --results" in output and "task_arithmetic" in output
    after = _grid_points(work)
    assert all(after[p] == stamp for p, stamp in before.items())  # finished grid points were not redone
    assert {d: (work / "experts" / d / "model.safetensors").stat().st_mtime_ns for d in DOMAINS} == experts

    results = read_results(work / "run" / "results")
    board = table(results)
    merged = board[board["kind"] == "merged"]
    merged.index = [m + (" (trained)" if "trained" in label else "") for m, label in zip(merged["method"],
                                                                                          merged["label"], strict=True)]
    assert set(merged.index) == EIGHT
    for column in ("normalised", "forgetting", "merge_seconds", "validation_seconds"):
        assert merged[column].notna().all(), column

    base = next(r for r in results if r.model.get("role") == "base")
    for r in results:
        if r.model.get("role") == "expert":
            task = f"mb_tinybench_{r.model['domain']}"
            assert r.score(task) >= base.score(task) + 0.15, (task, r.score(task), base.score(task))
    base_row = board[board["kind"] == "base"].iloc[0]
    for method in ("model_soup", "task_arithmetic"):
        assert base_row["normalised"] < merged.loc[method, "normalised"] < 1.0, method

