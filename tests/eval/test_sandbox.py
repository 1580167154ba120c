"""The sandbox contains hostile programs: each one fails its own sample, nothing escapes, the caller goes on.

Every test runs twice (the ``layer`` fixture): under bubblewrap where this machine allows it, and as on a
machine that refuses it (the probe says no, so the in-process guard runs alone, ``isolation: "none"``).
"""

from __future__ import annotations

import ast
import dataclasses
import errno
import json
import logging
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time

import pytest

from mergebench.errors import ConfigError, EvaluationError
from mergebench.eval import isolation
from mergebench.eval.sandbox import SandboxConfig, bwrap_refusal, run_program, run_programs

FAST = SandboxConfig(timeout_s=3)
CONFIG_FIELDS = {f.name for f in dataclasses.fields(SandboxConfig)}
SECRET = "hf_secretTokenThatMustNotLeak"

READ_OUTSIDE = "print(open(%r).read())"
SOCKET = "import socket\ns = socket.create_connection(('127.0.0.1', %d), timeout=2)\ns.sendall(b'leak')"
FORK_BOMB = "import os\nwhile True:\n    os.fork()"
ALLOC_10GB = "buf = bytearray(10 * 2**30)\nprint(len(buf))"
REFUSED = "simulated: the kernel refuses unprivileged user namespaces"
REAL_PROBE = isolation.probe


@pytest.fixture(autouse=True, params=["bwrap", "none"])
def layer(request, monkeypatch) -> str:
    """``bwrap``: the real probe must accept (skipped where bwrap cannot run); ``none``: the probe refuses."""
    if request.param == "none":
        monkeypatch.setattr(isolation, "probe", lambda uid, python: REFUSED)
    elif bwrap_refusal():
        pytest.skip(f"bwrap cannot run here: {bwrap_refusal()}")
    return request.param


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


# --- Issue 22, items 8-13: a hostile program must not forge its score, escape its folder or outlive its run ---


@pytest.fixture
def world_readable_secret():
    """A secret the sandbox uid could read (0644 in a 0755 folder): only the audit hook stands in the way."""
    folder = tempfile.mkdtemp(prefix="mb-sandbox-test-", dir="/tmp")
    os.chmod(folder, 0o755)
    path = os.path.join(folder, "user-secret.txt")
    with open(path, "w") as fh:
        fh.write("top secret")
    os.chmod(path, 0o644)
    yield path
    shutil.rmtree(folder, ignore_errors=True)


def test_the_program_cannot_switch_off_the_hook_through_main(world_readable_secret):
    """Item 8: ``__main__`` is the program's own module, not the bootstrap's namespace."""
    program = ("import sys\nmain = sys.modules['__main__']\nfor value in list(vars(main).values()):\n"
               "    if isinstance(value, dict) and 'busy' in value:\n        value['busy'] = True\n"
               f"print(open({world_readable_secret!r}).read())")
    result = run_program(program, FAST)
    assert "top secret" not in result.stdout
    assert result.status == "blocked" and result.detail.startswith("open")


# Walks every frame it can get without an audited call (a signal handler's frame, then f_back) and
# sabotages every piece of state it finds there: flags set, sets emptied, tuples of names replaced.
DISARM = """
import signal
frames = []
signal.signal(signal.SIGUSR1, lambda signum, frame: frames.append(frame))
signal.raise_signal(signal.SIGUSR1)

def disarm(namespace):
    for name, value in list(namespace.items()):
        if isinstance(value, dict) and "busy" in value:
            value["busy"] = True
        elif isinstance(value, set):
            value.clear()
        elif isinstance(value, tuple) and value and all(isinstance(v, str) for v in value):
            namespace[name] = ("nothing-matches",)
        cells = getattr(value, "__closure__", None) or ()
        for cell in cells:
            try:
                contents = cell.cell_contents
            except ValueError:
                continue
            if isinstance(contents, dict) and "busy" in contents:
                contents["busy"] = True
            elif isinstance(contents, (set, frozenset, tuple)):
                cell.cell_contents = type(contents)()

frame = frames[0]
while frame is not None:
    disarm(frame.f_globals)
    disarm(frame.f_locals)
    frame = frame.f_back
"""


def test_frames_do_not_reach_state_that_switches_off_the_hook(world_readable_secret):
    """Item 8: the hook's state is immutable closure data that no frame exposes for rebinding."""
    result = run_program(DISARM + f"print(open({world_readable_secret!r}).read())", FAST)
    assert "top secret" not in result.stdout
    assert result.status == "blocked" and result.detail.startswith("open")


def test_the_garbage_collector_and_frame_tables_are_blocked(world_readable_secret):
    """Item 8: gc.get_objects/get_referrers/get_referents and sys._current_frames would reach the hook itself."""
    program = ("import gc, types\nfor obj in gc.get_objects():\n    if isinstance(obj, types.FunctionType):\n"
               "        state = obj.__globals__.get('state')\n        if isinstance(state, dict) and 'busy' in state:\n"
               f"            state['busy'] = True\nprint(open({world_readable_secret!r}).read())")
    result = run_program(program, FAST)
    assert "top secret" not in result.stdout
    assert (result.status, result.detail.split()[0]) == ("blocked", "gc.get_objects")
    for call in ("gc.get_referrers(len)", "gc.get_referents(len)", "sys._current_frames()"):
        assert run_program(f"import gc, sys\n{call}", FAST).status == "blocked", call


def test_rebinding_builtins_or_os_path_does_not_disarm_the_hook(world_readable_secret):
    """Item 8: the hook makes no global or builtin lookup and does not call os.path."""
    program = ("import builtins, os, posixpath\nreal = builtins.isinstance\n"
               "builtins.isinstance = lambda obj, kinds: True if kinds is int else real(obj, kinds)\n"
               "builtins.any = lambda items: True\nhere = os.getcwd()\n"
               "posixpath.realpath = os.path.realpath = lambda path, *a, **k: here\n"
               "posixpath._joinrealpath = lambda path, rest, strict, seen: (here, True)\n"
               f"print(open({world_readable_secret!r}).read())")
    result = run_program(program, FAST)
    assert "top secret" not in result.stdout
    assert result.status == "blocked"


def test_the_hook_keeps_only_immutable_state_and_makes_no_global_lookup():
    """Item 8: what makes the two tests above hold, checked on the code itself."""
    import dis

    from mergebench.eval.sandbox_bootstrap import make_hook

    read_end, write_end = os.pipe()
    try:
        hook = make_hook("/nonexistent/root", "/nonexistent/key", write_end, sys._getframe(), read_ok=("/usr",))
    finally:
        os.close(read_end)
        os.close(write_end)
    opnames = {instruction.opname for instruction in dis.get_instructions(hook)}
    assert not opnames & {"LOAD_GLOBAL", "LOAD_NAME", "STORE_GLOBAL", "MAKE_FUNCTION"}
    # C functions and descriptors cannot be changed from Python; a frame's fields change only as it runs.
    atoms = (str, bytes, int, float, bool, type(None), type, type(len), type("".join), type(bytes.decode),
             type(int.__index__), type(sys._getframe()))

    def immutable(value: object) -> bool:
        if type(value) in (tuple, frozenset):
            return all(immutable(item) for item in value)
        return type(value) in atoms

    mutable = [type(cell.cell_contents).__name__ for cell in hook.__closure__ if not immutable(cell.cell_contents)]
    assert mutable == []


# Collects every string it can see without an audited call -- argv as started, the environment, the
# locals and globals of every frame and of closures -- and reports each as the verdict, on stdout and on
# every descriptor, before exiting with status 0 ahead of a failing assertion.
FORGE = """
import json, os, signal, sys
seen = set()

def harvest(value, depth=0):
    if depth > 4:
        return
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str):
        seen.add(value)
        for word in value.replace(":", " ").replace('"', " ").replace("'", " ").split():
            seen.add(word)
        if value.startswith("{"):
            try:
                harvest(json.loads(value), depth + 1)
            except ValueError:
                pass
    elif isinstance(value, dict):
        for key, item in list(value.items()):
            harvest(key, depth + 1)
            harvest(item, depth + 1)
    elif isinstance(value, (list, tuple, set, frozenset)):
        for item in list(value):
            harvest(item, depth + 1)
    for cell in getattr(value, "__closure__", None) or ():
        try:
            harvest(cell.cell_contents, depth + 1)
        except ValueError:
            pass

harvest(list(getattr(sys, "orig_argv", [])))
harvest(list(sys.argv))
harvest(dict(os.environ))
frames = []
signal.signal(signal.SIGUSR1, lambda signum, frame: frames.append(frame))
signal.raise_signal(signal.SIGUSR1)
frame = frames[0]
while frame is not None:
    harvest(dict(frame.f_locals))
    harvest({k: v for k, v in frame.f_globals.items() if k != "__builtins__"})
    frame = frame.f_back
candidates = [c for c in seen if 0 < len(c) < 100 and "\\n" not in c]
blob = "".join(f"\\n{c}\\nMB-SANDBOX:DONE:{c}\\nMB-SANDBOX-DONE-{c}\\n" for c in candidates)
print(blob)
sys.stdout.flush()
data = blob.encode("utf-8", "replace")
for fd in range(3, 1024):
    try:
        os.write(fd, data)
    except OSError:
        pass
os._exit(0)
assert False, "the tests of this program never ran"
"""


def test_a_program_cannot_forge_a_pass_with_anything_it_can_read():
    """Item 9: the run's secret is in no argv, environment, frame or closure while the program runs."""
    result = run_program(FORGE, SandboxConfig(timeout_s=5))
    assert (result.status, result.detail) == ("failed", "exit code 0 before the end of the program")


FAKE_VERDICTS = """
import os
lines = ["MB-SANDBOX:DONE:" + "0" * 32, "MB-SANDBOX:DONE:", "MB-SANDBOX:DONE:\\u00e9", "MB-SANDBOX-DONE-" + "0" * 16,
         "PASS", "passed", "x" * 100_000]
data = ("\\n" + "\\n".join(lines) + "\\n").encode()
for fd in range(1024):
    try:
        os.write(fd, data)
    except OSError:
        pass
os._exit(0)
assert False
"""
PROC_SNOOP = """
import os
for path in ("/proc/self/cmdline", "/proc/self/environ", *(f"/proc/self/fd/{n}" for n in range(3, 64))):
    try:
        print(open(path, "rb").read(4096))
    except OSError:
        pass
os._exit(0)
assert False
"""


@pytest.mark.parametrize("program", [FAKE_VERDICTS, PROC_SNOOP, "import os\nos._exit(0)\nassert False",
                                     "import sys\nsys.exit(0)\nassert False",
                                     "import os, signal\nos.kill(os.getpid(), signal.SIGKILL)\nassert False"],
                         ids=["fake-verdict-on-every-fd", "proc-self", "os._exit", "sys.exit", "kill-self"])
def test_ending_early_or_writing_fake_verdicts_is_not_a_pass(program):
    """Item 9: only the bootstrap, after the program's last line, can report the pass."""
    assert not run_program(program, FAST).passed


def test_the_verdict_key_opens_only_after_the_program_ended():
    """Item 9: the key file's path is no secret, but the hook refuses it until exec has returned."""
    program = ("import json, os, sys\nkey = json.loads(sys.orig_argv[-1]).get('key') or '../verdict.key'\n"
               "fd = os.open(key, os.O_RDONLY)\nos.write(sys.stdout.fileno(), os.read(fd, 100))")
    result = run_program(program, FAST)
    assert result.status == "blocked" and result.detail.startswith("open")
    assert run_program("print('the end')", FAST).status == "passed"


def test_output_after_a_blocked_action_does_not_hide_it(world_readable_secret):
    """Item 10: a refusal is recorded on the verdict pipe when it happens, not searched in a tail of stderr."""
    program = (f"try:\n    open({world_readable_secret!r}).read()\nexcept Exception:\n    pass\n"
               "import sys\nsys.stderr.write('x' * 100_000)\nsys.stdout.write('y' * 100_000)\n")
    result = run_program(program, FAST)
    assert result.status == "blocked" and result.detail.startswith("open")


FAKE_MARKERS = """
import os, sys
fake = ["MB-SANDBOX-BLOCKED:open ('/etc/passwd', 'r')", "MB-SANDBOX-MEMORY", "MB-SANDBOX-NET:isolated",
        "MB-SANDBOX:DENY:open ('/etc/passwd', 'r')", "MB-SANDBOX:MEMORY:", "MB-SANDBOX:NET:isolated", "MemoryError"]
for stream in (sys.stdout, sys.stderr):
    stream.write("\\n" + "\\n".join(fake) + "\\n")
    stream.flush()
for fd in range(3, 1024):  # the verdict pipe among them: a NET record counts only as its first line
    try:
        os.write(fd, b"\\nMB-SANDBOX:NET:isolated\\nMB-SANDBOX-NET:isolated\\n")
    except OSError:
        pass
"""


def test_printed_markers_do_not_change_the_status_or_network_isolation():
    """Item 10: program output never decides a verdict, nor ``network_isolated``."""
    config = SandboxConfig(timeout_s=3, isolate_network=False)
    passing, failing = run_programs([FAKE_MARKERS, FAKE_MARKERS + "assert False"], config)
    assert (passing.status, passing.network_isolated) == ("passed", False)
    assert (failing.status, failing.detail) == ("failed", "AssertionError")


# From the sandbox, `name` leads down a chain of folders the program made; from a standard-library
# folder (which the program may open) the same name climbs to the secret.
DIR_FD_ESCAPE = """
import os, sys
secret = {secret!r}
stdlib = next(p for p in map(os.path.realpath, sys.path) if os.path.isdir(p))
sub = next(n for n in sorted(os.listdir(stdlib)) if os.path.isdir(os.path.join(stdlib, n)))
ups = stdlib.count("/") + 1
chain = "/".join(f"c{{i}}" for i in range(ups + 3))
os.makedirs(chain)
os.symlink(chain, sub)
base = os.open(stdlib, os.O_RDONLY)
found = []
for target, read in ((secret, lambda fd: os.read(fd, 100).decode()),
                     (os.path.dirname(secret), lambda fd: (os.listdir(fd), [e.name for e in os.scandir(fd)]))):
    try:
        fd = os.open(sub + "/.." * ups + target, os.O_RDONLY, dir_fd=base)
        found.append(read(fd))
    except OSError as e:
        found.append(repr(e))
print(found)
"""


def test_paths_relative_to_a_directory_descriptor_are_checked(world_readable_secret):
    """Item 11: ``dir_fd`` (absent from os.open's audit event) and descriptor paths resolve where the kernel
    resolves them."""
    result = run_program(DIR_FD_ESCAPE.format(secret=world_readable_secret), FAST)
    assert "top secret" not in result.stdout and "user-secret.txt" not in result.stdout
    assert result.status == "blocked" and result.detail.startswith("open")


def test_descriptors_and_dir_fd_inside_the_sandbox_still_work():
    """Item 11, the other side: the same calls on the sandbox's own folders and the standard library pass."""
    program = ("import os, shutil, sys\nos.makedirs('a/b')\nfd = os.open('a', os.O_RDONLY)\n"
               "f = os.open('b/x.txt', os.O_WRONLY | os.O_CREAT, dir_fd=fd)\nos.write(f, b'ok')\nos.close(f)\n"
               "assert os.listdir(fd) == ['b'] and [e.name for e in os.scandir(fd)] == ['b']\n"
               "assert open('a/b/x.txt').read() == 'ok'\n"
               "lib = os.open(next(p for p in sys.path if os.path.isdir(p)), os.O_RDONLY)\n"
               "assert 'os.py' in os.listdir(lib)\nshutil.rmtree('a')\nassert not os.path.exists('a')")
    result = run_program(program, FAST)
    assert result.status == "passed", (result.detail, result.stderr[-500:])


def test_os_open_for_writing_outside_the_sandbox_is_blocked():
    """Item 11: os.open reports no mode, so writing is judged from its flags."""
    program = "import os, sys\nos.open(os.path.join(sys.path[-1], 'mb-probe.txt'), os.O_WRONLY | os.O_CREAT)"
    result = run_program(program, FAST)
    assert result.status == "blocked" and result.detail.startswith("open")


def test_output_beyond_the_limit_stops_the_program():
    """Item 12: a program that prints without end is stopped at max_output_bytes."""
    config = SandboxConfig(timeout_s=10, **({"max_output_bytes": 2**20} if "max_output_bytes" in CONFIG_FIELDS else {}))
    result = run_program("import sys\nwhile True:\n    sys.stdout.write('x' * 65536)", config)
    assert result.status == "failed" and "output limit" in result.detail
    assert result.seconds < 5
    assert len(result.stdout) <= config.output_bytes


# Measures the evaluator's peak RSS around a run that prints 200 MB: with the default limit (the run
# is stopped early) and with a limit above it (everything streams through; only a tail is kept).
RSS_HARNESS = """
import dataclasses, json, sys
from mergebench.eval.sandbox import SandboxConfig, run_program

def peak():
    with open("/proc/self/status") as fh:
        return next(int(line.split()[1]) * 1024 for line in fh if line.startswith("VmHWM:"))

names = {f.name for f in dataclasses.fields(SandboxConfig)}
program = "import sys\\nchunk = 'x' * 2**20\\nfor _ in range(200):\\n    sys.stdout.write(chunk)\\nprint('end')"
layer = {"isolation": sys.argv[1]} if "isolation" in names else {}
run_program("pass", SandboxConfig(**layer))
before, report = peak(), {}
for label, extra in (("default", {}), ("above", {"max_output_bytes": 2**30})):
    result = run_program(program, SandboxConfig(timeout_s=30, **layer,
                                                **{k: v for k, v in extra.items() if k in names}))
    report[label] = [result.status, result.detail, len(result.stdout), peak() - before]
print(json.dumps(report))
"""


def test_printing_hundreds_of_megabytes_keeps_the_evaluator_small(layer):
    """Item 12: output is read as it streams; the parent keeps a bounded tail, never the whole output."""
    done = subprocess.run([sys.executable, "-c", RSS_HARNESS, layer], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    report = json.loads(done.stdout.strip().splitlines()[-1])
    status, detail, _, growth = report["default"]
    assert growth < 64 * 2**20, report
    assert status == "failed" and "output limit" in detail
    status, _, kept, growth = report["above"]
    assert (status, kept) == ("passed", SandboxConfig().output_bytes)
    assert growth < 64 * 2**20, report


DAEMON = """
import os, time
r, w = os.pipe()
if os.fork() == 0:
    os.setsid()
    if os.fork() == 0:
        null = os.open(os.devnull, os.O_RDWR)
        for fd in (0, 1, 2):
            os.dup2(null, fd)
        os.closerange(3, w)
        os.closerange(w + 1, 4096)
        os.write(w, os.readlink("/proc/self").encode())  # the pid as the evaluator sees it
        os.close(w)
        time.sleep(60)
    os._exit(0)
os.close(w)
print("DAEMON", os.read(r, 32).decode(), flush=True)
"""


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as fh:
            return fh.read().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.parametrize(("extra", "tail"), [({}, ""), ({"isolate_processes": False}, ""),
                                             ({}, "time.sleep(30)"), ({"isolate_processes": False}, "time.sleep(30)")],
                         ids=["pid-namespace", "subreaper", "pid-namespace-timeout", "subreaper-timeout"])
def test_a_daemon_that_left_the_session_does_not_outlive_the_run(extra, tail, layer):
    """Item 13 (the audit hook, which blocks os.fork, is off): nothing the program started survives it. This is
    the in-process guard's own PID namespace or subreaper (``isolation="none"``: the daemon reports its host pid
    through the host's /proc); under bwrap, tests/eval/test_escape.py checks the same from the host side."""
    if extra and "isolate_processes" not in CONFIG_FIELDS:
        pytest.fail("SandboxConfig has no isolate_processes")
    if layer == "bwrap":
        pytest.skip("the guard's own mechanisms: tested once, in the 'none' layer")
    result = run_program(DAEMON + tail, SandboxConfig(timeout_s=1.5, audit=False, isolation="none", **extra))
    assert "DAEMON" in result.stdout, (result.status, result.detail, result.stderr[-500:])
    pid = int(result.stdout.split("DAEMON")[1].split()[0])
    try:
        deadline = time.monotonic() + 1
        while _alive(pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(pid)
        assert result.status == ("timeout" if tail else "passed")
    finally:
        if _alive(pid):
            os.kill(pid, signal.SIGKILL)


def test_usual_library_calls_still_pass():
    """The hook's refusals leave common code alone: typing/namedtuple/enum/logging (sys._getframe raises
    ValueError, which they handle), tracebacks, temporary folders, threads, and ``__main__`` is the program."""
    program = '''
import collections, enum, logging, os, shutil, sys, tempfile, threading, traceback, typing
from typing import List, NamedTuple
T = typing.TypeVar("T")
Point = collections.namedtuple("Point", "x y")
Color = enum.Enum("Color", "RED GREEN")
class Pair(NamedTuple):
    a: int
    b: List[int]
logging.getLogger("sandbox-test").warning("a warning")
def add(a: int, b: int) -> int:
    return a + b
assert sys.modules["__main__"].add is add
try:
    1 / 0
except ZeroDivisionError:
    assert "ZeroDivisionError" in traceback.format_exc()
folder = tempfile.mkdtemp()
with open(os.path.join(folder, "f.txt"), "w") as fh:
    fh.write("x")
shutil.rmtree(folder)
worker = threading.Thread(target=lambda: None)
worker.start()
worker.join()
assert Point(1, 2).x == 1 and Color.RED.value == 1 and Pair(1, [2]).b == [2]
'''
    result = run_program(program, FAST)
    assert result.status == "passed", (result.detail, result.stderr[-1000:])


# A trace function moves the bootstrap's bottom frame to the line after main() (the line the key's gate
# watches), then reads the key and writes the verdict itself.
MOVE_THE_BOTTOM_FRAME = """
import json, os, signal, sys
frames = []
signal.signal(signal.SIGUSR1, lambda signum, frame: frames.append(frame))
signal.raise_signal(signal.SIGUSR1)
here = bottom = frames[0]
while bottom.f_back is not None:
    bottom = bottom.f_back

def tracer(frame, event, arg):
    if event == "line" and bottom.f_trace is None:
        bottom.f_trace = tracer
        bottom.f_lineno += 1
    return tracer

here.f_trace = tracer
sys.settrace(tracer)
moved = True
config = json.loads(sys.orig_argv[-1])
fd = os.open(config["key"], os.O_RDONLY)
os.write(config["verdict_fd"], b"\\nMB-SANDBOX:DONE:" + os.read(fd, 100).strip() + b"\\n")
os._exit(0)
"""


def test_trace_functions_are_blocked():
    """Item 8/9: sys.settrace and sys.setprofile are refused (a tracer could move a bootstrap frame)."""
    result = run_program(MOVE_THE_BOTTOM_FRAME, FAST)
    assert (result.status, result.detail.split()[0]) == ("blocked", "sys.settrace")
    assert run_program("import sys\nsys.setprofile(lambda *a: None)", FAST).status == "blocked"


# --- Issue 20: the kernel layer (bubblewrap + seccomp), its probe and the fallback -------------------------


def test_results_record_the_isolation_they_ran_under(layer):
    assert [(r.status, r.isolation) for r in run_programs(["pass", "assert False"], FAST)] == [
        ("passed", layer), ("failed", layer)]


def test_a_refusal_falls_back_to_the_guard_or_is_an_error_when_bwrap_is_required(monkeypatch):
    """(In both layers: the refusal is simulated here.)"""
    monkeypatch.setattr(isolation, "probe", lambda uid, python: REFUSED)
    assert run_program("pass", FAST).isolation == "none"
    with pytest.raises(EvaluationError, match=REFUSED) as err:
        run_programs(["pass"], dataclasses.replace(FAST, isolation="bwrap"))
    assert "apt-get install bubblewrap" in err.value.hint


def test_without_bwrap_the_probe_says_why_once_and_every_run_falls_back(monkeypatch, caplog):
    """Detected once per process (not per program), logged once, recorded on every result."""
    monkeypatch.setattr(isolation, "probe", REAL_PROBE)
    monkeypatch.setenv("PATH", "/nonexistent")  # shutil.which finds no bwrap
    REAL_PROBE.cache_clear()
    try:
        with caplog.at_level(logging.WARNING, logger="mergebench.eval.isolation"):
            results = run_programs(["pass"] * 3, FAST)
        info = REAL_PROBE.cache_info()
    finally:
        REAL_PROBE.cache_clear()
    assert [(r.status, r.isolation) for r in results] == [("passed", "none")] * 3
    assert (info.misses, caplog.text.count("bwrap is not installed")) == (1, 1)


def test_a_tmpfs_without_a_cap_is_refused():
    with pytest.raises(ConfigError, match="disk_mb=0") as err:
        SandboxConfig(disk_mb=0)
    assert "disk_mb >= 1" in err.value.hint


def test_death_by_a_signal_reads_the_same_under_both_layers(layer):
    """bwrap reports a signal as exit code 128 + N; the result says ``killed by`` it, as without bwrap. (A fault:
    the guard's worker is PID 1 of its namespace, which ignores the signals it sends itself.)"""
    result = run_program("import ctypes\nctypes.string_at(0)", SandboxConfig(timeout_s=3, audit=False))
    assert (result.status, result.detail, result.returncode) == ("failed", "killed by SIGSEGV", -signal.SIGSEGV)


SYSCALLS = """
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
calls = {"ptrace": lambda: libc.ptrace(0, 0, 0, 0),  # PTRACE_TRACEME
         "unshare": lambda: libc.unshare(0x10000000),  # CLONE_NEWUSER
         "keyctl": lambda: libc.syscall(%(keyctl)d, 0, 0, 0, 0),
         "io_uring_setup": lambda: libc.syscall(%(io_uring_setup)d, 1, 0),
         "clone3": lambda: libc.syscall(%(clone3)d, 0, 0)}
print({name: 0 if call() == 0 else ctypes.get_errno() for name, call in calls.items()})
"""


def test_the_seccomp_filter_refuses_what_the_guard_alone_allows(layer):
    """The audit hook is off (it would stop ctypes first): the kernel answers. Without the filter, PTRACE_TRACEME
    and a new user namespace succeed and clone3 exists; with it, they fail with EPERM and ENOSYS."""
    pyseccomp = pytest.importorskip("pyseccomp")
    arch = pyseccomp.system_arch()
    numbers = {n: pyseccomp.resolve_syscall(arch, n) for n in ("keyctl", "io_uring_setup", "clone3")}
    result = run_program(SYSCALLS % numbers, SandboxConfig(timeout_s=5, audit=False))
    assert result.status == "passed", (result.detail, result.stderr[-500:])
    errnos = ast.literal_eval(result.stdout.strip())
    if layer == "bwrap":
        assert errnos == {"ptrace": errno.EPERM, "unshare": errno.EPERM, "keyctl": errno.EPERM,
                          "io_uring_setup": errno.EPERM, "clone3": errno.ENOSYS}
    else:
        assert (errnos["ptrace"], errnos["clone3"]) == (0, errno.EINVAL)


VIEW = ("import os\nfs = os.statvfs('.')\n"
        "print((sorted(os.listdir('/')), os.listdir('/tmp'), fs.f_blocks * fs.f_frsize, os.getuid(), os.getcwd()))")


def test_the_program_sees_the_system_read_only_and_its_own_capped_tmpfs(layer):
    """No /etc, /home, /root or project: only /usr (and its links), a private /proc and /dev, and a tmpfs of
    ``disk_mb`` holding nothing but this run's folder; the program runs as nobody when the evaluator is root."""
    if layer != "bwrap":
        pytest.skip("the guard alone shares the host's file system")
    result = run_program(VIEW + "\nopen('/usr/mb-probe', 'w')", SandboxConfig(timeout_s=5, audit=False, disk_mb=8))
    top, tmp, size, uid, cwd = ast.literal_eval(result.stdout.strip())
    assert {"usr", "proc", "dev", "tmp"} <= set(top) <= {"usr", "bin", "sbin", "lib", "lib32", "lib64", "libx32",
                                                         "proc", "dev", "tmp"}
    assert len(tmp) == 1 and tmp[0].startswith("mergebench-sandbox-") and cwd == f"/tmp/{tmp[0]}/run"
    assert (size, uid) == (8 * 2**20, 65534 if os.geteuid() == 0 else os.geteuid())
    assert (result.status, result.detail) == ("failed", "OSError: [Errno 30] Read-only file system: '/usr/mb-probe'")


def test_a_program_that_does_not_fit_its_tmpfs_is_an_error_not_a_failed_sample(layer):
    """bwrap cannot copy it in, so the sandbox never starts: status ``error`` (the machine's fault), with why."""
    if layer != "bwrap":
        pytest.skip("only bwrap has a tmpfs")
    result = run_program("x = 1\n" + "#" * 2**21 + "\n", SandboxConfig(timeout_s=5, disk_mb=1))
    assert result.status == "error"
    assert result.detail.startswith("the sandbox did not start") and "No space left on device" in result.detail
