"""``scripts/train_experts.sh`` builds the right ``accelerate launch`` command: one machine as before, several
machines from accelerate's settings in the environment, and a half-configured environment refused, naming
what is missing, before anything is launched. ``accelerate`` itself is a fake that records its arguments (the
script's job is the command; ``accelerate`` is tested by its authors)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
SCRIPT = ROOT / "scripts" / "train_experts.sh"
CONFIG = str(ROOT / "configs" / "accelerate" / "deepspeed_zero3.yaml")
MULTI_NODE = ("NUM_MACHINES", "MACHINE_RANK", "MAIN_PROCESS_IP", "MAIN_PROCESS_PORT")


@pytest.fixture
def fake_accelerate(tmp_path: Path) -> Path:
    """An ``accelerate`` that appends its arguments (one JSON list per call) to ``calls.jsonl`` and exits 0."""
    fake = tmp_path / "accelerate"
    fake.write_text(f"#!{sys.executable}\nimport json, sys\n"
                    f"with open({str(tmp_path / 'calls.jsonl')!r}, 'a') as log:\n"
                    "    log.write(json.dumps(sys.argv[1:]) + '\\n')\n")
    fake.chmod(0o755)
    return fake


def run_script(fake: Path, *args: str, **env: str) -> tuple[subprocess.CompletedProcess[str], list[list[str]]]:
    """The script with ``env`` on top of this environment minus any multi-node settings; returns the launches."""
    base = {k: v for k, v in os.environ.items() if k not in MULTI_NODE}
    done = subprocess.run(["bash", str(SCRIPT), "--no-push", "--data-org", "org", "--bases", "org/Base-3B",
                           "--domains", "math", "--out", str(fake.parent / "experts"), *args],
                          env={**base, "ACCELERATE": str(fake), **env}, capture_output=True, text=True, timeout=60)
    log = fake.parent / "calls.jsonl"
    return done, [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []


def train_args(fake: Path) -> list[str]:
    return ["-m", "mergebench.cli", "train", "--base", "org/Base-3B", "--domain", "math", "--data",
            "org/mergebench-{domain}", "--out", str(fake.parent / "experts" / "Base-3B_math"), "--config", "paper"]


def test_one_machine_is_launched_as_before(fake_accelerate: Path) -> None:
    done, calls = run_script(fake_accelerate)
    assert done.returncode == 0, done.stderr
    assert calls == [["launch", "--config_file", CONFIG, *train_args(fake_accelerate)]]
    done, calls = run_script(fake_accelerate, "--num-processes", "4")
    assert calls[-1] == ["launch", "--config_file", CONFIG, "--num_processes", "4", *train_args(fake_accelerate)]


def test_several_machines_take_accelerates_settings_from_the_environment(fake_accelerate: Path) -> None:
    done, calls = run_script(fake_accelerate, "--num-processes", "4", NUM_MACHINES="2", MACHINE_RANK="1",
                             MAIN_PROCESS_IP="10.0.0.1", MAIN_PROCESS_PORT="29555")
    assert done.returncode == 0, done.stderr
    assert calls == [["launch", "--config_file", CONFIG, "--num_processes", "8", "--num_machines", "2",
                      "--machine_rank", "1", "--main_process_ip", "10.0.0.1", "--main_process_port", "29555",
                      *train_args(fake_accelerate)]]
    done, calls = run_script(fake_accelerate, NUM_MACHINES="3", MACHINE_RANK="0", MAIN_PROCESS_IP="head")
    assert calls[-1][:12] == ["launch", "--config_file", CONFIG, "--num_processes", "24", "--num_machines", "3",
                              "--machine_rank", "0", "--main_process_ip", "head", "-m"]  # 3 × the config's 8 GPUs


@pytest.mark.parametrize("missing", ["NUM_MACHINES", "MACHINE_RANK", "MAIN_PROCESS_IP"])
def test_a_half_configured_cluster_is_refused_naming_the_missing_variable(fake_accelerate: Path, missing: str) -> None:
    env = {"NUM_MACHINES": "2", "MACHINE_RANK": "0", "MAIN_PROCESS_IP": "10.0.0.1", "MAIN_PROCESS_PORT": "29500"}
    del env[missing]
    done, calls = run_script(fake_accelerate, **env)
    assert (done.returncode, calls) == (2, [])
    assert done.stderr.startswith(f"Multi-node training: {missing} is not set. Set NUM_MACHINES, MACHINE_RANK and "
                                  "MAIN_PROCESS_IP")


def test_bad_multi_node_values_are_refused_before_any_launch(fake_accelerate: Path) -> None:
    cases = {("2", "2", "29500"): "MACHINE_RANK must be 0 to 1, got '2'.",
             ("two", "0", "29500"): "NUM_MACHINES must be a positive integer, got 'two'.",
             ("2", "0", "http"): "MAIN_PROCESS_PORT must be a port number, got 'http'."}
    for (machines, rank, port), message in cases.items():
        done, calls = run_script(fake_accelerate, NUM_MACHINES=machines, MACHINE_RANK=rank, MAIN_PROCESS_IP="ip",
                                 MAIN_PROCESS_PORT=port)
        assert (done.returncode, calls) == (2, []) and f"Multi-node training: {message}" in done.stderr
