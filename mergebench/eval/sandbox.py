"""Run untrusted generated programs (HumanEval/MBPP completions) in a sandboxed child process.

Why a process of its own, not ``exec`` in the evaluator: a generated program may loop forever, allocate
all memory, fork-bomb, delete files or phone home. Each program runs in a fresh interpreter with:

* **kernel limits** (``resource.setrlimit``): CPU seconds, address space (``RLIMIT_AS``, so a 10 GB
  allocation raises ``MemoryError``), file size, open files, no core dumps, and a process cap
  (``RLIMIT_NPROC``) — plus a wall-clock timeout after which the whole process group is killed;
* **no network**: the child calls ``unshare(CLONE_NEWNET)`` (with ``CLONE_NEWUSER`` when not root)
  before running the program, so it only sees an unconfigured loopback device. Where namespaces are
  unavailable (some containers), the audit hook below is the remaining barrier, and the result says
  ``network_isolated=False``;
* **another identity when run as root**: the child switches to ``nobody`` (65534), because the kernel
  exempts root from ``RLIMIT_NPROC``; the interpreter must then be world-readable (``/usr/bin/python3``
  is used when ``sys.executable`` lives under an unreadable home). As a normal user, the new user
  namespace gives the child its own process count, so the cap applies to the program's own processes;
* **no access to the user's files or tokens**: cwd, ``HOME`` and ``TMPDIR`` are a throwaway directory,
  the environment is scrubbed (no ``HF_*``/tokens), the interpreter runs isolated (``-I -S``: no site
  packages, no user site, no ``PYTHON*`` variables), and a ``sys.addaudithook`` hook blocks ``open``/
  ``listdir``/file changes outside the sandbox directory (the standard library stays readable),
  every ``socket.*`` event, ``os.fork``/``exec``/``spawn``/``system``, ``subprocess``, ``ctypes`` and
  ``setrlimit``.

A blocked action fails the sample (status ``blocked``) even when the program catches the exception. A
program passes only if it runs to its end *and* the bootstrap then prints a per-run nonce, so an early
``sys.exit(0)`` does not count as a pass.

Threat model: this contains careless or naively harmful model output, not a determined attacker with
a CPython exploit; for that, run evaluations inside a VM or a container without network.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

logger = logging.getLogger(__name__)

Status = Literal["passed", "failed", "timeout", "memory", "blocked", "error"]
NOBODY = 65534
_MARK = "MB-SANDBOX"

# The bootstrap runs in the child, single-threaded, before the program: namespaces, identity, limits,
# audit hook, then the program. It only uses the standard library (the interpreter runs with -I -S).
_BOOTSTRAP = r'''
import json, os, resource, sys
cfg = json.loads(sys.argv[1]); sys.argv[:] = ["program.py"]
mark = cfg["mark"]
root = os.path.realpath(cfg["dir"])
with open(os.path.join(root, "program.py"), encoding="utf-8") as fh:
    source = fh.read()
net = "shared"
if cfg["isolate_network"]:
    try:
        import ctypes
        libc = ctypes.CDLL(None, use_errno=True)
        flags = 0x40000000 | (0 if os.geteuid() == 0 else 0x10000000)  # CLONE_NEWNET (| CLONE_NEWUSER)
        net = "isolated" if libc.unshare(flags) == 0 else "shared"
        del libc, ctypes
    except Exception:
        net = "shared"
    for name in ("ctypes", "_ctypes", "ctypes._endian"):
        sys.modules.pop(name, None)
os.write(2, ("\n%s-NET:%s\n" % (mark, net)).encode())
if cfg["uid"] is not None and os.geteuid() == 0:
    os.setgroups([]); os.setgid(cfg["uid"]); os.setuid(cfg["uid"])
for name, value in cfg["limits"].items():
    resource.setrlimit(getattr(resource, name), (value, value))

if cfg["audit"]:
    READ_OK = tuple(os.path.realpath(p) for p in sys.path if p) + ("/dev/null", "/dev/urandom", "/dev/zero")
    BLOCK = ("socket.", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
             "os.startfile", "os.kill", "os.killpg", "subprocess.", "pty.spawn", "ctypes.", "resource.setrlimit",
             "resource.prlimit", "signal.pthread_kill", "webbrowser.", "urllib.", "http.", "ftplib.", "smtplib.",
             "poplib.", "imaplib.", "nntplib.", "telnetlib.", "sqlite3.")
    BLOCK_IMPORTS = {"ctypes", "_ctypes", "_posixsubprocess", "_multiprocessing"}
    PATH_READ = {"open", "os.listdir", "os.scandir", "glob.glob", "os.chdir", "os.getxattr", "os.listxattr"}
    PATH_WRITE = {"os.remove", "os.rmdir", "os.mkdir", "os.rename", "os.link", "os.symlink", "os.chmod",
                  "os.chown", "os.truncate", "os.utime", "os.setxattr", "os.removexattr", "shutil.rmtree",
                  "shutil.copyfile", "shutil.copymode", "shutil.copystat", "shutil.copytree", "shutil.move"}
    state = {"busy": False}
    realpath, fspath, write = os.path.realpath, os.fspath, os.write

    def _inside(path, allowed):
        if isinstance(path, int):
            return True  # an already-open file descriptor
        try:
            full = realpath(fspath(path) if not isinstance(path, bytes) else path.decode())
        except Exception:
            return False
        return full == root or full.startswith(root + os.sep) or any(
            full == a or full.startswith(a + os.sep) for a in allowed)

    def _deny(event, args):
        write(2, ("\n%s-BLOCKED:%s %r\n" % (mark, event, args[:2] if isinstance(args, tuple) else args)).encode())
        raise PermissionError("sandbox: %s is not allowed" % event)

    def hook(event, args):
        if state["busy"]:
            return
        state["busy"] = True
        try:
            if event.startswith(BLOCK):
                _deny(event, args)
            elif event == "import" and args[0] in BLOCK_IMPORTS:
                _deny("import " + args[0], args)
            elif event in PATH_READ and args:
                writing = event == "open" and isinstance(args[1], str) and any(c in args[1] for c in "wax+")
                if not _inside(args[0], () if writing else READ_OK):
                    _deny(event, args)
            elif event in PATH_WRITE and args:
                paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
                if not all(_inside(p, ()) for p in paths):
                    _deny(event, args)
        finally:
            state["busy"] = False

    sys.addaudithook(hook)

nonce = cfg["nonce"]; del cfg
code = compile(source, "program.py", "exec"); del source
try:
    exec(code, {"__name__": "__main__", "__builtins__": __builtins__})
except MemoryError:
    os.write(2, ("\n%s-MEMORY\n" % mark).encode()); os._exit(4)
except BaseException:
    import traceback
    sys.stdout.flush(); traceback.print_exc(); sys.stderr.flush(); os._exit(1)
sys.stdout.flush(); os.write(1, ("\n" + nonce + "\n").encode()); os._exit(0)
'''


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of one sandboxed run. The defaults suit HumanEval/MBPP tests (a few seconds each)."""

    timeout_s: float = 10.0  # wall clock; CPU seconds are capped at the same value
    memory_mb: int = 1024  # RLIMIT_AS: address space, so huge allocations fail fast
    max_processes: int = 16  # RLIMIT_NPROC headroom over the processes the identity already has
    file_size_mb: int = 16  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 16_384  # stdout/stderr tail kept in the result
    isolate_network: bool = True  # unshare(CLONE_NEWNET) in the child
    drop_privileges: bool = True  # as root: run as nobody (root is exempt from RLIMIT_NPROC)
    audit: bool = True  # the audit hook; tests turn it off to check the kernel limits alone


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one program. ``passed`` is true only for status ``passed``."""

    status: Status
    seconds: float
    returncode: int | None
    network_isolated: bool
    detail: str = ""  # the blocked event, the exception line, or the signal
    stdout: str = field(default="", repr=False)
    stderr: str = field(default="", repr=False)

    @property
    def passed(self) -> bool:
        return self.status == "passed"


def _world_accessible(path: Path) -> bool:
    """Whether ``nobody`` can traverse every parent of ``path`` and read/execute it."""
    path = path.resolve()
    try:
        if not path.stat().st_mode & stat.S_IROTH:
            return False
        return all(p.stat().st_mode & stat.S_IXOTH for p in path.parents)
    except OSError:
        return False


@cache
def _interpreter(as_nobody: bool) -> str:
    """The Python binary for the child: this one, or a world-readable one when switching to nobody."""
    own = Path(getattr(sys, "_base_executable", sys.executable) or sys.executable)
    if not as_nobody or _world_accessible(own):
        return str(own)
    for candidate in (f"/usr/bin/python{sys.version_info.major}.{sys.version_info.minor}", "/usr/bin/python3",
                      "/usr/local/bin/python3"):
        if Path(candidate).exists() and _world_accessible(Path(candidate)):
            return candidate
    return ""


def _tasks_of(uid: int) -> int:
    """Tasks (threads count: RLIMIT_NPROC counts tasks) currently owned by ``uid``, from /proc."""
    total = 0
    for status in Path("/proc").glob("[0-9]*/status"):
        try:
            text = status.read_text()
        except OSError:
            continue
        fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
        if int(fields.get("Uid", "-1").split()[0]) == uid:
            total += int(fields.get("Threads", "1").strip() or 1)
    return total


def _identity(config: SandboxConfig) -> tuple[int | None, str, int]:
    """(uid to switch to, interpreter, RLIMIT_NPROC) for this run."""
    if os.geteuid() == 0 and config.drop_privileges:
        python = _interpreter(True)
        if python:
            return NOBODY, python, _tasks_of(NOBODY) + config.max_processes
        logger.warning("No world-readable Python interpreter: the sandbox runs as root, so RLIMIT_NPROC does not "
                       "apply (the audit hook still blocks os.fork).")
        return None, _interpreter(False), config.max_processes
    if config.isolate_network and os.geteuid() != 0:
        # a new user namespace counts its own tasks; the margin also covers the no-namespace fallback
        return None, _interpreter(False), _tasks_of(os.geteuid()) + config.max_processes
    return None, _interpreter(False), _tasks_of(os.geteuid()) + config.max_processes


def _limits(config: SandboxConfig, nproc: int) -> dict[str, int]:
    cpu = max(1, int(config.timeout_s + 0.999))
    return {"RLIMIT_CPU": cpu, "RLIMIT_AS": config.memory_mb * 2**20, "RLIMIT_FSIZE": config.file_size_mb * 2**20,
            "RLIMIT_NOFILE": config.open_files, "RLIMIT_CORE": 0, "RLIMIT_NPROC": nproc}


def _clean_env(workdir: str) -> dict[str, str]:
    """Nothing from the caller's environment: no tokens, no ``HF_*``, no proxies, no ``PYTHON*``."""
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}


def _classify(proc_rc: int | None, out: str, err: str, nonce: str, timed_out: bool) -> tuple[Status, str]:
    blocked = [line.split("-BLOCKED:", 1)[1] for line in err.splitlines() if f"{_MARK}-BLOCKED:" in line]
    if blocked:
        return "blocked", blocked[0]
    if timed_out:
        return "timeout", "wall-clock timeout"
    if proc_rc is not None and proc_rc < 0:
        sig = signal.Signals(-proc_rc).name if -proc_rc in signal.Signals._value2member_map_ else str(-proc_rc)
        return ("timeout" if sig in ("SIGXCPU", "SIGKILL") else "failed"), f"killed by {sig}"
    if f"{_MARK}-MEMORY" in err or "MemoryError" in err:
        return "memory", "MemoryError"
    if proc_rc == 0 and nonce in out.splitlines():
        return "passed", ""
    last = [line for line in err.splitlines() if line.strip() and not line.startswith(_MARK)]
    return "failed", (last[-1] if last else f"exit code {proc_rc} before the end of the program")


def _make_workdir(uid: int | None) -> str:
    workdir = tempfile.mkdtemp(prefix="mergebench-sandbox-")
    if uid is not None:
        os.chown(workdir, uid, uid)
    os.chmod(workdir, 0o700)
    return workdir


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def run_program(source: str, config: SandboxConfig = SandboxConfig()) -> SandboxResult:
    """Run one Python program in the sandbox and classify the outcome; never raises for program faults.

    >>> run_program("assert 1 + 1 == 2").status  # doctest: +SKIP
    'passed'
    """
    uid, python, nproc = _identity(config)
    workdir = _make_workdir(uid)
    nonce = f"{_MARK}-DONE-{secrets.token_hex(8)}"
    start = time.perf_counter()
    try:
        Path(workdir, "program.py").write_text(source, encoding="utf-8")
        if uid is not None:
            os.chown(Path(workdir, "program.py"), uid, uid)
        cfg = {"dir": workdir, "nonce": nonce, "mark": _MARK, "uid": uid, "audit": config.audit,
               "isolate_network": config.isolate_network, "limits": _limits(config, nproc)}
        proc = subprocess.Popen([python, "-I", "-S", "-c", _BOOTSTRAP, json.dumps(cfg)], cwd=workdir,
                                env=_clean_env(workdir), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                stderr=subprocess.PIPE, start_new_session=True, close_fds=True)
        timed_out = False
        try:
            out_b, err_b = proc.communicate(timeout=config.timeout_s + 2)
        except subprocess.TimeoutExpired:
            timed_out = True
            _kill_group(proc)
            out_b, err_b = proc.communicate()
        _kill_group(proc)  # stray descendants of a program that exited
        out = out_b[-config.output_bytes:].decode("utf-8", "replace")
        err = err_b[-config.output_bytes:].decode("utf-8", "replace")
        status, detail = _classify(proc.returncode, out, err, nonce, timed_out)
        return SandboxResult(status, time.perf_counter() - start, proc.returncode,
                             f"{_MARK}-NET:isolated" in err, detail, out.replace(nonce, ""), err)
    except OSError as e:  # could not start the child at all: an infrastructure error, not the program's
        return SandboxResult("error", time.perf_counter() - start, None, False, f"sandbox failed to start: {e}")
    finally:
        shutil.rmtree(workdir, ignore_errors=True)


def run_programs(sources: Sequence[str], config: SandboxConfig = SandboxConfig(), *,
                 workers: int | None = None) -> list[SandboxResult]:
    """Run many programs, a few at a time (each is its own process); results in input order."""
    if not sources:
        return []
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: run_program(s, config), sources))
