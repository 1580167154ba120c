"""``mergebench run --executor ray|hf-jobs``: the runner's fast configuration gives the local leaderboard on a
local Ray cluster and on the loopback Hub's Jobs, every unit is one task or Job, and a driver killed mid-run
finishes when started again without redoing finished units (hf-jobs: re-attaching to the running ones)."""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import pandas as pd
import pytest
import yaml
from huggingface_hub import HfApi

from mergebench.eval.results import load_results
from mergebench.runner import BenchConfig, run_benchmark
from mergebench.runner.executors.hf_jobs import RUN_LABEL, UNIT_LABEL
from tests._hub_fixtures import hub_env
from tests.runner.test_runner import VOLATILE, _bench

pytestmark = pytest.mark.slow  # each run: 13 units, each a process that imports torch and lighteval

UNITS = 13  # base + 5 experts, 4 grid points (soup, 2 task arithmetic, regmean), 3 final evaluations
KEY = ["kind", "label"]


def hf_jobs(repo: str = "alice/mergebench-runs", **extra: object) -> dict:
    return {"kind": "hf-jobs", "results_repo": repo, "max_concurrent": 3, "retries": 0,
            "hf_jobs": {"image": "mergebench:test", "poll_seconds": 0.3,
                        "flavors": {"grid_point": "cpu-basic", "evaluation": "cpu-upgrade"}}, **extra}


def comparable(board: pd.DataFrame) -> pd.DataFrame:
    """The leaderboard without what differs between two runs (timings, ids, paths, the Jobs' cost)."""
    dropped = [c for c in [*VOLATILE, "jobs_usd"] if c in board.columns]
    return board.drop(columns=dropped).sort_values(KEY).reset_index(drop=True)


def assert_same_board(board: pd.DataFrame, reference: pd.DataFrame) -> None:
    """Same rows, values and chosen points (``parameters``), whatever ran them; a failure names the cells."""
    pd.testing.assert_frame_equal(comparable(board), comparable(reference))


@pytest.fixture(scope="module")
def local_board(tiny_llama, validation_dir, tmp_path_factory) -> pd.DataFrame:
    out = tmp_path_factory.mktemp("local") / "bench"
    return run_benchmark(BenchConfig.from_dict(_bench(tiny_llama, validation_dir, out)), progress=False).table


def _jobs(run_label: str | None = None) -> list:
    return [j for j in HfApi().list_jobs() if run_label is None or (j.labels or {}).get(RUN_LABEL) == run_label]


def test_every_unit_runs_as_one_job_and_the_leaderboard_is_the_local_one(
        tiny_llama, validation_dir, tmp_path, hub, local_board) -> None:
    bench = _bench(tiny_llama, validation_dir, tmp_path / "bench", executor=hf_jobs())
    summary = run_benchmark(BenchConfig.from_dict(bench), progress=False)
    assert_same_board(summary.table, local_board)

    jobs = _jobs()
    assert len(jobs) == UNITS and {j.status.stage for j in jobs} == {"COMPLETED"}
    assert len({j.labels[UNIT_LABEL] for j in jobs}) == UNITS and len({j.labels[RUN_LABEL] for j in jobs}) == 1
    assert Counter(j.flavor for j in jobs) == {"cpu-upgrade": 9, "cpu-basic": 4}
    assert not (summary.output / "models").exists()  # every merge ran inside a Job, none in the driver
    ledger = json.loads((summary.output / "jobs" / "ledger.json").read_text())
    assert set(ledger) == {j.id for j in jobs}
    for job in jobs:
        log = summary.output / "jobs" / job.labels[UNIT_LABEL] / f"{job.id}.log"
        assert ": done (hf://datasets/alice/mergebench-runs/runs/tiny-llama-bench/" in log.read_text()
        assert ledger[job.id]["usd"] == pytest.approx(
            ledger[job.id]["running_seconds"] * {"cpu-basic": 0.01, "cpu-upgrade": 0.03}[job.flavor] / 3600, abs=1e-6)
    ta = load_results(summary.results_dir / "tiny-llama" / "task_arithmetic.json")
    points = [j for j in jobs if j.labels["name"].startswith("mergebench-grid_point")
              and j.labels[UNIT_LABEL] in {p.stem[:16] for p in (summary.output / "grid" / "tiny-llama" /
                                                                  "task_arithmetic").glob("*.json")}]
    assert len(points) == 2
    assert ta.cost["jobs_usd"] == pytest.approx(sum(ledger[j.id]["usd"] for j in points), abs=1e-6)
    files = HfApi().list_repo_files("alice/mergebench-runs", repo_type="dataset")
    assert sum(f.startswith("runs/tiny-llama-bench/units/") for f in files) == UNITS

    again = run_benchmark(BenchConfig.from_dict(bench), progress=False)  # everything is in the run folder
    assert len(_jobs()) == UNITS
    assert_same_board(again.table, local_board)


def _grid_records(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (out / "grid").rglob("*.json")}


def test_a_killed_driver_reattaches_to_running_jobs_and_relaunches_nothing(
        tiny_llama, validation_dir, tmp_path, hub, local_board) -> None:
    out = tmp_path / "bench"
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(_bench(tiny_llama, validation_dir, out, executor=hf_jobs("alice/runs-kill"))))
    env = {**os.environ, **hub_env(hub.url, tmp_path / "hf-home")}
    cmd = [sys.executable, "-m", "mergebench.cli", "run", str(config)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 600
    running: list = []
    while first.poll() is None and time.monotonic() < deadline:
        running = [j for j in _jobs() if j.status.stage == "RUNNING"]
        if _grid_records(out) and running:  # some points finished and collected, others in flight
            break
        time.sleep(0.2)
    assert first.poll() is None, first.stderr.read() if first.stderr else ""
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = _grid_records(out)

    verbose = [sys.executable, "-m", "mergebench.cli", "--verbose", "run", str(config)]
    second = subprocess.run(verbose, capture_output=True, text=True, timeout=900, env=env)
    assert second.returncode == 0, second.stderr
    jobs = _jobs()
    assert Counter(j.labels[UNIT_LABEL] for j in jobs).most_common(1)[0][1] == 1  # no unit was launched twice
    assert len(jobs) == UNITS and {j.status.stage for j in jobs} == {"COMPLETED"}
    reattached = {j.id for j in running if f"re-attached to running job {j.id}" in second.stderr}
    assert reattached  # units take far longer than a restart: some were still running, and were waited for
    after = _grid_records(out)
    assert all(after[p] == stamp for p, stamp in before.items())  # collected points were not collected again
    board = pd.read_csv(out / "leaderboard.csv")
    assert_same_board(board, pd.read_csv(local_board_csv(local_board, tmp_path)))


def local_board_csv(board: pd.DataFrame, folder: Path) -> Path:
    """The local leaderboard through the same CSV round trip as the run's ``leaderboard.csv``."""
    path = folder / "local.csv"
    board.to_csv(path, index=False)
    return path


def ray_executor(**extra: object) -> dict:
    return {"kind": "ray", "max_concurrent": 2, "ray": {"num_cpus": 2}, **extra}


def test_ray_gives_the_local_leaderboard_on_a_local_cluster(tiny_llama, validation_dir, tmp_path, local_board) -> None:
    bench = _bench(tiny_llama, validation_dir, tmp_path / "bench", executor=ray_executor())
    summary = run_benchmark(BenchConfig.from_dict(bench), progress=False)
    assert_same_board(summary.table, local_board)
    assert len(list((summary.output / "units").glob("*.json"))) == UNITS
    kept = [p.name for p in (summary.output / "models" / "tiny-llama" / "task_arithmetic").iterdir() if p.is_dir()]
    ta = load_results(summary.results_dir / "tiny-llama" / "task_arithmetic.json")
    assert kept == [ta.model["grid_point"]]  # as in-process: only the chosen point's weights are kept
    assert "jobs_usd" not in ta.cost


def _processes_mentioning(text: str) -> list[int]:
    found = []
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and text.encode() in (proc / "cmdline").read_bytes():
                found.append(int(proc.name))
        except OSError:
            continue
    return found


def test_a_killed_ray_driver_resumes_without_redoing_finished_units(
        tiny_llama, validation_dir, tmp_path, local_board, request) -> None:
    out = tmp_path / "bench"
    config = tmp_path / "bench.yaml"
    temp = Path(tempfile.mkdtemp(prefix="mbray-", dir="/tmp"))  # this cluster's processes name it (short: sockets)
    request.addfinalizer(lambda: shutil.rmtree(temp, ignore_errors=True))
    config.write_text(yaml.safe_dump(_bench(tiny_llama, validation_dir, out, executor=ray_executor())))
    env = {**os.environ, "RAY_TMPDIR": str(temp)}
    cmd = [sys.executable, "-m", "mergebench.cli", "run", str(config)]
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 600
    while not _grid_records(out) and first.poll() is None and time.monotonic() < deadline:
        time.sleep(0.2)
    assert first.poll() is None, first.stderr.read() if first.stderr else ""
    os.kill(first.pid, signal.SIGKILL)
    first.wait()
    before = _grid_records(out)
    deadline = time.monotonic() + 60
    while _processes_mentioning(str(temp)) and time.monotonic() < deadline:  # the cluster dies with its driver
        time.sleep(0.5)
    assert not _processes_mentioning(str(temp))

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env)
    assert second.returncode == 0, second.stderr
    after = _grid_records(out)
    assert len(after) == 4 and all(after[p] == stamp for p, stamp in before.items())
    board = pd.read_csv(out / "leaderboard.csv")
    assert_same_board(board, pd.read_csv(local_board_csv(local_board, tmp_path)))


FLAKY = """import os, sys
marker = os.path.join({folder!r}, "failed-once")
if not os.path.exists(marker):  # the first unit to start fails once, as a flaky machine would
    open(marker, "w").close()
    print("flaky: failing on purpose", flush=True)
    sys.exit(3)
os.execvp("mergebench", ["mergebench", *sys.argv[1:]])
"""


def test_a_failed_job_is_retried_and_its_log_kept(tiny_llama, validation_dir, tmp_path, hub, local_board) -> None:
    script = tmp_path / "flaky.py"
    script.write_text(FLAKY.format(folder=str(tmp_path)))
    executor = hf_jobs("alice/runs-retry", retries=1)
    executor["hf_jobs"]["command"] = ["python", str(script)]  # type: ignore[index]
    bench = _bench(tiny_llama, validation_dir, tmp_path / "bench", executor=executor,
                   methods=[{"method": "model_soup"}])
    summary = run_benchmark(BenchConfig.from_dict(bench), progress=False)
    jobs = _jobs()
    failed = [j for j in jobs if j.status.stage == "ERROR"]
    assert len(failed) == 1 and failed[0].status.message == "Job failed with exit code: 3."
    assert len(jobs) == 8 + 1  # 6 references, 1 point, 1 final evaluation, and the one retry
    unit = failed[0].labels[UNIT_LABEL]
    assert sorted(j.status.stage for j in jobs if j.labels[UNIT_LABEL] == unit) == ["COMPLETED", "ERROR"]
    log = summary.output / "jobs" / unit / f"{failed[0].id}.log"
    assert log.read_text() == "flaky: failing on purpose\n"
    rows = local_board[local_board["label"].isin(summary.table["label"])]
    assert_same_board(summary.table, rows)


def test_ctrl_c_cancels_the_drivers_jobs(tiny_llama, validation_dir, tmp_path, hub) -> None:
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(_bench(tiny_llama, validation_dir, tmp_path / "bench",
                                            executor=hf_jobs("alice/runs-cancel"))))
    env = {**os.environ, **hub_env(hub.url, tmp_path / "hf-home")}
    driver = subprocess.Popen([sys.executable, "-m", "mergebench.cli", "run", str(config)], env=env,
                              stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 300
    while not any(j.status.stage == "RUNNING" for j in _jobs()) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert driver.poll() is None
    driver.send_signal(signal.SIGINT)
    assert driver.wait(timeout=120) != 0
    jobs = HfApi().wait_for_job([j.id for j in _jobs()], poll_interval=0.2, timeout=60)
    assert jobs and {j.status.stage for j in jobs} <= {"CANCELED", "COMPLETED"}
    assert any(j.status.stage == "CANCELED" for j in jobs)
