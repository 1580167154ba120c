"""The sandbox contains hostile programs: each one fails its own sample, nothing escapes, the caller goes on."""

from __future__ import annotations

import os
import socket
import threading

import pytest

from mergebench.eval.sandbox import SandboxConfig, run_program, run_programs

FAST = SandboxConfig(timeout_s=3)
SECRET = "hf_secretTokenThatMustNotLeak"

READ_OUTSIDE = "print(open(%r).read())"
SOCKET = "import socket\ns = socket.create_connection(('127.0.0.1', %d), timeout=2)\ns.sendall(b'leak')"
FORK_BOMB = "import os\nwhile True:\n    os.fork()"
ALLOC_10GB = "buf = bytearray(10 * 2**30)\nprint(len(buf))"


@pytest.fixture
def outside_file(tmp_path):
    path = tmp_path / "user-secret.txt"
    path.write_text("top secret")
    path.chmod(0o644)
    return path


@pytest.fixture
def listener():
    """A TCP server on the host loopback that records whether anyone connected."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen()
    server.settimeout(4)
    seen: list[bytes] = []

    def accept() -> None:
        try:
            conn, _ = server.accept()
            seen.append(conn.recv(16))
        except OSError:
            pass

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1], seen
    server.close()


def test_a_correct_program_passes_and_a_wrong_one_fails():
    ok, wrong = run_programs(["import math\nassert math.gcd(12, 18) == 6", "assert 1 + 1 == 3"], FAST)
    assert (ok.status, ok.passed) == ("passed", True)
    assert (wrong.status, wrong.passed, wrong.detail) == ("failed", False, "AssertionError")


def test_reading_a_file_outside_the_sandbox_is_blocked(outside_file):
    result = run_program(READ_OUTSIDE % str(outside_file), FAST)
    assert result.status == "blocked"
    assert "open" in result.detail and str(outside_file) in result.detail
    assert "top secret" not in result.stdout


def test_a_blocked_read_fails_the_sample_even_if_the_program_swallows_the_error(outside_file):
    program = f"try:\n    open({str(outside_file)!r}).read()\nexcept Exception:\n    pass\nassert True"
    assert run_program(program, FAST).status == "blocked"


def test_files_inside_the_sandbox_work():
    program = "open('notes.txt', 'w').write('x')\nassert open('notes.txt').read() == 'x'"
    assert run_program(program, FAST).status == "passed"


def test_opening_a_socket_is_blocked_and_nothing_connects(listener):
    port, seen = listener
    result = run_program(SOCKET % port, FAST)
    assert result.status == "blocked"
    assert result.detail.startswith("socket.")
    assert seen == []


def test_without_the_audit_hook_the_network_namespace_still_isolates(listener):
    port, seen = listener
    result = run_program(SOCKET % port, SandboxConfig(timeout_s=3, audit=False))
    assert result.network_isolated is True
    assert result.status == "failed"
    assert "Network is unreachable" in result.detail or "Connection refused" in result.detail
    assert seen == []


def test_a_fork_bomb_is_blocked():
    result = run_program(FORK_BOMB, FAST)
    assert (result.status, result.detail) == ("blocked", "os.fork ()")


def test_without_the_audit_hook_rlimit_nproc_caps_forks():
    """A bounded bomb (safe even if the cap failed): forking must stop well before 200 children."""
    program = ("import os, time\nn = 0\ntry:\n    for _ in range(200):\n        if os.fork() == 0:\n"
               "            time.sleep(3)\n            os._exit(0)\n        n += 1\nexcept OSError as e:\n"
               "    print('FORKED', n)\n    raise\n")
    result = run_program(program, SandboxConfig(timeout_s=5, audit=False, max_processes=8))
    assert result.status == "failed"
    assert "Resource temporarily unavailable" in result.detail
    forked = int(result.stdout.split("FORKED")[1].split()[0])
    assert forked < 50


def test_a_10gb_allocation_fails_with_memory_error():
    result = run_program(ALLOC_10GB, FAST)
    assert (result.status, result.detail) == ("memory", "MemoryError")


def test_an_endless_loop_times_out():
    result = run_program("while True:\n    pass", SandboxConfig(timeout_s=1))
    assert result.status == "timeout"
    assert result.seconds < 6


def test_early_exit_is_not_a_pass():
    assert run_program("import sys\nsys.exit(0)\nassert False", FAST).status == "failed"


def test_no_tokens_or_hub_variables_reach_the_program(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", SECRET)
    monkeypatch.setenv("HF_ENDPOINT", "http://127.0.0.1:1")
    program = "import os\nprint(sorted(os.environ))\nassert not any(k.startswith('HF_') for k in os.environ)"
    result = run_program(program, FAST)
    assert result.status == "passed"
    assert SECRET not in result.stdout


def test_subprocesses_are_blocked():
    result = run_program("import subprocess\nsubprocess.run(['id'])", FAST)
    assert result.status == "blocked"


def test_the_sandbox_directory_is_removed_afterwards():
    result = run_program("import os\nprint(os.getcwd())", FAST)
    workdir = result.stdout.strip().splitlines()[0]
    assert workdir.startswith(("/tmp", os.environ.get("TMPDIR", "/tmp")))
    assert not os.path.exists(workdir)
