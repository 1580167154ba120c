"""The escape suite (issue 20): every escape is contained and fails its sample, under each sandbox layer.

Each escape of :data:`mergebench.eval.escapes.ESCAPES` runs under the default sandbox (bubblewrap and the
in-process guard), under bubblewrap alone (audit hook off: the kernel must stop it by itself) and under
the guard alone (what machines without user namespaces get). The host's witnesses (a listener, a canary
process, a world-writable folder, the run's PID namespace) must see nothing, the sample must not pass,
and the status says which barrier stopped it -- the table of ``benchmarks/RESULTS.md``.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest

from mergebench.eval.escapes import ESCAPES, NO_DISK_CAP, Escape, campaign, layers, markdown, trap
from mergebench.eval.sandbox import SandboxConfig, SandboxResult, bwrap_refusal

LAYERS = layers()
GUARD = ("bwrap + guard", "guard alone")
KERNEL = "bwrap alone"
# escape -> how the audit hook stops it (bwrap + guard, guard alone), how the kernel stops it (bwrap alone):
# (status, start of the detail)
EXPECTED: dict[str, tuple[tuple[str, str], tuple[str, str]]] = {
    "read-hf-token": (("blocked", "open ("), ("failed", "FileNotFoundError")),
    "env-hf-token": (("failed", "AssertionError: ['HOME'"), ("failed", "AssertionError: ['HOME'")),
    "list-home": (("blocked", "os.listdir ("), ("failed", "FileNotFoundError")),
    "read-project": (("blocked", "open ("), ("failed", "FileNotFoundError")),
    "read-etc-shadow": (("blocked", "open ('/etc/shadow'"), ("failed", "FileNotFoundError")),
    "write-outside": (("blocked", "open ("), ("failed", "FileNotFoundError")),
    "write-via-symlink": (("blocked", "os.symlink ("), ("failed", "FileNotFoundError")),
    "connect-loopback-hub": (("blocked", "socket."), ("failed", "ConnectionRefusedError")),
    "resolve-dns": (("blocked", "socket.getaddrinfo"), ("failed", "socket.gaierror")),
    "query-loopback-dns": (("blocked", "socket."), ("failed", "TimeoutError")),
    "fork-bomb": (("blocked", "os.fork"), ("timeout", "")),
    "allocate-10gb": (("memory", "MemoryError"), ("memory", "MemoryError")),
    "infinite-loop": (("timeout", ""), ("timeout", "")),
    "ignore-sigterm": (("timeout", ""), ("timeout", "")),
    "kill-parent": (("blocked", "os.kill"), ("timeout", "killed by SIGKILL")),
    "kill-process-group": (("blocked", "os.killpg (0, 9)"), ("timeout", "killed by SIGKILL")),
    "kill-every-process": (("blocked", "os.kill (-1, 9)"), ("timeout", "killed by SIGKILL")),
    "ptrace-parent": (("blocked", "import ('ctypes'"), ("failed", "PermissionError: [Errno 1]")),
    "new-user-namespace": (("blocked", "import ('ctypes'"), ("failed", "PermissionError: [Errno 1]")),
    "proc-environ": (("blocked", "open ('/proc/"), ("failed", "AssertionError: [Errno 2]")),
    "proc-root-link": (("blocked", "open ('/proc/1/root"), ("failed", "FileNotFoundError")),
    "forge-pass": (("failed", "exit code 0 before the end"), ("failed", "exit code 0 before the end")),
    "fill-disk": (("failed", "OSError: [Errno 28] No space left on device"),
                  ("failed", "OSError: [Errno 28] No space left on device")),
    "print-1gb": (("failed", "output limit"), ("failed", "output limit")),
    "spawn-daemon": (("blocked", "os.fork"), ("failed", "AssertionError: seen from outside")),
}


def _runnable(config: SandboxConfig, escape: Escape) -> None:
    if config.isolation == "bwrap" and bwrap_refusal(config):
        pytest.skip(f"bwrap cannot run here: {bwrap_refusal(config)} (CI requires it: see test_ci_uses_bwrap)")
    if config.isolation == "none" and escape.name in NO_DISK_CAP:
        pytest.skip("the guard alone has no disk cap: the program would fill the host's /tmp until its timeout")


@pytest.fixture(scope="module")
def world():
    with trap() as found:
        yield found


def test_ci_uses_bwrap():
    """.ci/run installs bubblewrap: under CI the kernel layer must really run (not silently fall back)."""
    if os.environ.get("CI") != "true":
        pytest.skip("only CI must have bwrap")
    assert bwrap_refusal() == ""


def test_the_suite_has_every_escape_of_the_issue_with_its_expected_barrier():
    names = [e.name for e in ESCAPES]
    assert len(names) >= 20 and len(set(names)) == len(names)
    assert list(EXPECTED) == names


@pytest.mark.parametrize("layer", list(LAYERS), ids=lambda name: name.replace(" + ", "+").replace(" ", "-"))
@pytest.mark.parametrize("escape", ESCAPES, ids=lambda escape: escape.name)
def test_the_escape_is_contained_and_fails_its_sample(world, escape, layer):
    config = LAYERS[layer]
    _runnable(config, escape)
    result, seen = world.run(escape, config)
    assert seen == [], (result.status, result.detail)
    status, detail = EXPECTED[escape.name][0 if layer in GUARD else 1]
    assert (result.status, result.detail[:len(detail)]) == (status, detail), result.stderr[-600:]
    assert result.isolation == config.isolation


def test_the_table_shows_each_escape_once_with_how_each_layer_stopped_it():
    _runnable(LAYERS[KERNEL], ESCAPES[0])
    chosen = tuple(e for e in ESCAPES if e.name in ("read-hf-token", "fill-disk"))
    outcomes, root = campaign(chosen)
    lines = markdown(outcomes, root).splitlines()
    assert lines[:2] == ["| escape | tries to | contained? | how: bwrap + guard | how: bwrap alone | how: guard "
                         "alone |", "|---|---|---|---|---|---|"]
    assert lines[2] == ("| read-hf-token | read ~/.cache/huggingface/token | yes | blocked: open ('<trap>/home/.cache/"
                        "huggingface/token', 'r') | failed: FileNotFoundError: [Errno 2] No such file or directory: "
                        "'<trap>/home/.cache/huggi… | blocked: open ('<trap>/home/.cache/huggingface/token', 'r') |")
    assert lines[3] == ("| fill-disk | fill the disk | yes | failed: OSError: [Errno 28] No space left on device | "
                        "failed: OSError: [Errno 28] No space left on device | not run: no disk cap without bwrap |")
    assert len(lines) == 4


# --- the witnesses are not vacuous: escapes that really get out are seen --------------------------------------


def _escape(name: str) -> Escape:
    return next(e for e in ESCAPES if e.name == name)


def test_the_witnesses_see_a_connection_a_write_and_a_read_that_got_out():
    """With the barriers switched off on purpose, the same programs escape, and the host sees each one."""
    guard_off = SandboxConfig(timeout_s=3, isolation="none", audit=False)  # the sandbox uid may read/write these
    printed = Escape("print-token", "print the token", "print(open('$token_path').read())")
    with trap() as world:
        _, seen = world.run(_escape("write-outside"), guard_off)
        assert seen == ["scored as a pass", "wrote ['escaped.txt'] outside the sandbox"]
        (world.outside / "escaped.txt").unlink()
        assert world.run(_escape("read-hf-token"), guard_off)[1] == ["scored as a pass"]
        assert world.run(printed, guard_off)[1] == ["scored as a pass", "the token leaked into the output"]
        _runnable(LAYERS[KERNEL], printed)
        shared = SandboxConfig(timeout_s=3, isolation="bwrap", audit=False, isolate_network=False)
        _, seen = world.run(_escape("connect-loopback-hub"), shared)
        assert seen == ["scored as a pass", "reached the loopback Hub (1 connections)"]


def test_the_witnesses_see_a_process_that_outlived_the_run_and_kill_it():
    with trap() as world:
        straggler = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)", world.marker])
        cmdline, deadline = Path(f"/proc/{straggler.pid}/cmdline"), time.monotonic() + 10
        while world.marker.encode() not in cmdline.read_bytes() and time.monotonic() < deadline:
            time.sleep(0.01)  # just after exec, /proc may still show the parent's command line
        try:
            seen = world.witnesses(SandboxResult("failed", 0.1, 1, True), SandboxConfig(timeout_s=1))
            assert seen == [f"processes [{straggler.pid}] outlived the run"]
            assert straggler.wait(timeout=5) == -9
        finally:
            straggler.kill()
            straggler.wait()
