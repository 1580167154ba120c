"""The loopback Hub's Jobs API, driven by the real ``huggingface_hub`` client (``run_job``, ``inspect_job``,
``wait_for_job``, ``fetch_job_logs``, ``list_jobs``, ``cancel_job``, ``list_jobs_hardware``)."""

from __future__ import annotations

import json
import os
import signal
import sys
import time
from pathlib import Path

import pytest
from huggingface_hub import HfApi
from huggingface_hub.errors import HfHubHTTPError

from mergebench.hubserver import LoopbackHub

IMAGE = "python:3.11"


def _python(code: str) -> list[str]:
    return ["python", "-c", code]


def _wait_for_line(api: HfApi, job_id: str, prefix: str, timeout: float = 60.0) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for line in api.fetch_job_logs(job_id=job_id):
            if line.startswith(prefix):
                return line
        time.sleep(0.2)
    raise AssertionError(f"no log line starting with {prefix!r} in job {job_id}")


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    return False


def test_a_job_runs_its_command_in_this_venv_with_a_fresh_environment_and_its_secrets(hub: LoopbackHub) -> None:
    api = HfApi()
    code = ("import os, sys; print('python', sys.executable); print('endpoint', os.environ['HF_ENDPOINT']); "
            "print('home', os.environ['HOME']); print('token', os.environ['HF_TOKEN']); print('greeting', "
            "os.environ['GREETING']); print('ci', os.environ.get('MERGEBENCH_TEST_OUTER', 'unset')); "
            "print('cwd', os.getcwd())")
    os.environ["MERGEBENCH_TEST_OUTER"] = "leaks"
    try:
        job = api.run_job(image=IMAGE, command=_python(code), env={"GREETING": "hello"},
                          secrets={"HF_TOKEN": "hf_secret"}, flavor="cpu-upgrade", timeout="5m",
                          labels={"run": "r1", "unit": "u1"})
    finally:
        del os.environ["MERGEBENCH_TEST_OUTER"]
    assert job.status.stage in ("SCHEDULING", "RUNNING")
    done = api.wait_for_job(job.id, poll_interval=0.2, timeout=60)
    assert done.status.stage == "COMPLETED", done.status
    lines = dict(line.split(" ", 1) for line in api.fetch_job_logs(job_id=job.id))
    assert Path(lines["python"]).parent == Path(sys.executable).parent  # the project's venv
    assert lines["endpoint"] == hub.url
    assert lines["token"] == "hf_secret" and lines["greeting"] == "hello"
    assert lines["ci"] == "unset"  # the driver's environment does not leak into the Job
    job_dir = hub.root / ".hubserver" / "jobs" / "alice" / job.id
    assert lines["home"] == str(job_dir / "home") and lines["cwd"] == str(job_dir / "work")
    assert done.flavor == "cpu-upgrade" and done.docker_image == IMAGE
    assert done.labels == {"run": "r1", "unit": "u1", "name": done.labels["name"]}
    assert done.secrets == {"HF_TOKEN": None}  # names only
    assert done.owner.name == "alice" and done.started_at and done.finished_at
    assert done.durations is not None and done.durations.running_secs is not None
    assert json.loads((job_dir / "job.json").read_text())["timeoutSeconds"] == 300
    assert list(api.fetch_job_logs(job_id=job.id, tail=1)) == [f"cwd {job_dir / 'work'}"]


def test_jobs_are_listed_by_label_and_stage_and_the_hardware_list_has_prices(hub: LoopbackHub) -> None:
    api = HfApi()
    ids = {}
    for unit, exit_code in (("a", 0), ("b", 3)):
        ids[unit] = api.run_job(image=IMAGE, command=_python(f"import sys; sys.exit({exit_code})"),
                                labels={"run": "r2", "unit": unit}).id
    api.run_job(image=IMAGE, command=_python("pass"), labels={"run": "other", "unit": "a"})
    finished = api.wait_for_job(list(ids.values()), poll_interval=0.2, timeout=60)
    assert [j.status.stage for j in finished] == ["COMPLETED", "ERROR"]
    assert finished[1].status.message == "Job failed with exit code: 3."
    assert {j.id for j in api.list_jobs(labels={"run": "r2"})} == set(ids.values())
    assert [j.id for j in api.list_jobs(labels={"run": "r2", "unit": "b"})] == [ids["b"]]
    assert [j.id for j in api.list_jobs(labels={"run": "r2"}, status="ERROR")] == [ids["b"]]
    hardware = {h.name: h for h in api.list_jobs_hardware()}
    assert hardware["cpu-basic"].accelerator is None
    assert hardware["a10g-large"].accelerator.model == "A10G"
    assert hardware["a10g-large"].unit_label == "minute"
    assert hardware["a10g-large"].unit_cost_usd * 60 == pytest.approx(1.50)


def test_cancel_stops_the_command_and_its_children(hub: LoopbackHub) -> None:
    api = HfApi()
    code = ("import os, subprocess, sys, time; child = subprocess.Popen([sys.executable, '-c', "
            "'import time; time.sleep(600)']); print('pids', os.getpid(), child.pid, flush=True); time.sleep(600)")
    job = api.run_job(image=IMAGE, command=_python(code))
    pids = [int(p) for p in _wait_for_line(api, job.id, "pids").split()[1:]]
    api.cancel_job(job_id=job.id)
    done = api.wait_for_job(job.id, poll_interval=0.2, timeout=60)
    assert done.status.stage == "CANCELED"
    deadline = time.monotonic() + 20
    while not all(_gone(p) for p in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert all(_gone(p) for p in pids)
    api.cancel_job(job_id=job.id)  # cancelling a finished Job changes nothing
    assert api.inspect_job(job_id=job.id).status.stage == "CANCELED"


def test_timeouts_missing_commands_and_a_dead_supervisor_end_in_error(hub: LoopbackHub) -> None:
    api = HfApi()
    slow = api.run_job(image=IMAGE, command=_python("import time; time.sleep(600)"), timeout=1)
    missing = api.run_job(image=IMAGE, command=["no-such-command-mergebench"])
    lost = api.run_job(image=IMAGE, command=_python("import os, time; print('up', os.getpid(), flush=True); "
                                                    "time.sleep(600)"))
    command_pid = int(_wait_for_line(api, lost.id, "up").split()[1])
    status = json.loads((hub.root / ".hubserver" / "jobs" / "alice" / lost.id / "status.json").read_text())
    os.kill(status["pid"], signal.SIGKILL)  # the supervisor dies without writing a final stage
    slow_done, missing_done, lost_done = api.wait_for_job([slow.id, missing.id, lost.id], poll_interval=0.2,
                                                          timeout=60)
    assert (slow_done.status.stage, slow_done.status.message) == ("ERROR", "Job timed out after 1 seconds.")
    assert missing_done.status.stage == "ERROR"
    assert any("no-such-command-mergebench" in line for line in api.fetch_job_logs(job_id=missing.id))
    assert lost_done.status.stage == "ERROR" and "before the job finished" in lost_done.status.message
    deadline = time.monotonic() + 20
    while not _gone(command_pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(command_pid)  # the command the dead supervisor left behind was stopped


def test_invalid_specs_are_refused_with_the_reason(hub: LoopbackHub) -> None:
    api = HfApi()
    with pytest.raises(HfHubHTTPError) as e:
        api.run_job(image=IMAGE, command=["true"], flavor="h100-imaginary")
    assert e.value.response.status_code == 400 and "unknown flavor 'h100-imaginary'" in str(e.value)
    with pytest.raises(HfHubHTTPError) as e:
        api.run_job(image=IMAGE, command=["true"], ssh=True, labels={"bad label": "x"})
    assert "'ssh' is not supported" in str(e.value) and "bad label=x" in str(e.value)
    with pytest.raises(HfHubHTTPError) as e:
        api.inspect_job(job_id="0123456789abcdef01234567")
    assert e.value.response.status_code == 404
    with pytest.raises(HfHubHTTPError) as e:
        HfApi(token=False).list_jobs_hardware()
    assert e.value.response.status_code == 401


def test_stopping_the_server_cancels_its_running_jobs(hub_root: Path, tmp_path: Path) -> None:
    with LoopbackHub(hub_root) as server:
        api = HfApi(endpoint=server.url, token="hf_dummy")
        job = api.run_job(image=IMAGE, command=_python("import os, time; print('pid', os.getpid(), flush=True); "
                                                       "time.sleep(600)"), namespace="alice")
        pid = int(_wait_for_line(api, job.id, "pid").split()[1])
    deadline = time.monotonic() + 30
    while not _gone(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert _gone(pid)
    status = hub_root / ".hubserver" / "jobs" / "alice" / job.id / "status.json"
    while json.loads(status.read_text())["stage"] == "RUNNING" and time.monotonic() < deadline:
        time.sleep(0.1)
    assert json.loads(status.read_text())["stage"] == "CANCELED"
