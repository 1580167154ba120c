"""Run untrusted generated programs (HumanEval/MBPP completions) in a sandboxed child process.

Why a process of its own, not ``exec`` in the evaluator: a generated program may loop forever, allocate
all memory, fork-bomb, delete files, phone home or try to report a pass it did not earn. Each program
runs in a fresh interpreter (the child side is :mod:`mergebench.eval.sandbox_bootstrap`) with:

* **kernel limits** (``resource.setrlimit``): CPU seconds, address space (``RLIMIT_AS``, so a 10 GB
  allocation raises ``MemoryError``), file size, open files, no core dumps, and a process cap
  (``RLIMIT_NPROC``) -- plus a wall-clock timeout and a cap on the bytes it may print
  (``max_output_bytes``), after which the run is killed. Output is read as it streams and only a bounded
  tail is kept, so printing gigabytes costs the evaluator no memory;
* **no network**: the child enters a new network namespace (with a user namespace when not root), so it
  only sees an unconfigured loopback device. Where namespaces are unavailable (some containers), the
  audit hook is the remaining barrier, and the result says ``network_isolated=False``;
* **nothing outlives the run**: the program runs as PID 1 of a new PID namespace, so when it ends (or is
  killed) the kernel kills everything it started, daemons that left the session included. Without PID
  namespaces, the process that forked it is a child subreaper and kills the re-parented orphans;
* **another identity when run as root**: the child switches to ``nobody`` (65534), because the kernel
  exempts root from ``RLIMIT_NPROC``; the interpreter must then be world-readable (``/usr/bin/python3``
  is used when ``sys.executable`` lives under an unreadable home). As a normal user, the new user
  namespace gives the child its own process count, so the cap applies to the program's own processes;
* **no access to the user's files or tokens**: cwd, ``HOME`` and ``TMPDIR`` are a throwaway directory,
  the environment is scrubbed (no ``HF_*``/tokens), the interpreter runs isolated (``-I -S``), and a
  ``sys.addaudithook`` hook blocks opening, listing or changing paths outside the sandbox directory
  (the standard library stays readable; paths are resolved symlink by symlink, descriptors and
  ``dir_fd`` through ``/proc/self/fd``), every ``socket.*`` event, ``os.fork``/``exec``/``spawn``/
  ``system``, ``subprocess``, ``ctypes``, ``setrlimit``, and the ways to reach the hook's own state or
  move the bootstrap's frames (``gc.get_objects``/``get_referrers``/``get_referents``,
  ``sys._current_frames``, ``sys.settrace``/``setprofile`` -- so ``doctest.testmod()`` counts as blocked;
  ``sys._getframe`` raises ``ValueError``, which ``typing``/``logging``/``namedtuple`` handle).

**The verdict** never comes from what the program prints. The child writes records to a pipe of its own
(only the parent holds the read end): ``NET`` first, before any program code exists; ``DENY`` the moment
the hook refuses something (a program cannot take a record back out of the pipe, and if it closes or
replaces the descriptor, the next refusal kills it); then ``FAIL``/``MEMORY`` or ``DONE``. A program can
write to that pipe too, so ``DONE`` must carry a secret: the parent writes a fresh random key to a file
outside the sandbox directory, and the audit hook lets that file be opened only after ``exec`` of the
program has returned -- it watches the line of the bootstrap's bottom frame, which moves on only then.
The secret is never in argv, the environment, a pipe or the process's memory while the program runs,
so nothing the program reads (``sys.orig_argv``, ``/proc/self/*``, frames, every descriptor) holds it,
and an early ``os._exit(0)``/``sys.exit(0)`` leaves no ``DONE``. The hook's state cannot be switched
off: it lives in the closure of one function that nothing else references, holds only immutable
values, makes no global or builtin lookup, and the program runs in its own ``__main__`` module.
``blocked`` (any ``DENY``) wins over every other status, even when the program caught the exception.

Threat model: this contains careless or naively harmful model output and the hostile tricks above, not a
determined attacker with a CPython memory-corruption exploit, nor races between threads that swap a
symlink between the hook's check and the kernel's use of a path; metadata calls without audit events
(``os.stat``, ``os.mkfifo``) are only limited by the sandbox uid. With ``audit=False`` (a test setting
for the kernel limits) nothing guards the key file, so a hostile program could forge its pass. For
hostile input, run evaluations inside a VM or a container without network as well.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import selectors
import shutil
import signal
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Literal

from mergebench.eval import sandbox_bootstrap

logger = logging.getLogger(__name__)

Status = Literal["passed", "failed", "timeout", "memory", "blocked", "error"]
NOBODY = 65534
_MARK = sandbox_bootstrap.MARK
_BOOTSTRAP = Path(sandbox_bootstrap.__file__).read_text(encoding="utf-8")
_CHUNK = 65_536  # bytes per read of a pipe
_MAX_LINE = 8_192  # longer lines of the verdict pipe are the program's noise: dropped
_EXIT_GRACE_S = 1.0  # after the child exits, how long its pipes may stay open (nothing should hold them)


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of one sandboxed run. The defaults suit HumanEval/MBPP tests (a few seconds each)."""

    timeout_s: float = 10.0  # wall clock; CPU seconds are capped at the same value
    memory_mb: int = 1024  # RLIMIT_AS: address space, so huge allocations fail fast
    max_processes: int = 16  # RLIMIT_NPROC headroom over the processes the identity already has
    file_size_mb: int = 16  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 16_384  # stdout/stderr tail kept in the result
    max_output_bytes: int = 4 * 2**20  # everything the program writes; beyond it the run is killed ("failed")
    isolate_network: bool = True  # a network namespace in the child
    isolate_processes: bool = True  # a PID namespace: nothing the program starts survives it
    drop_privileges: bool = True  # as root: run as nobody (root is exempt from RLIMIT_NPROC)
    audit: bool = True  # the audit hook; tests turn it off to check the kernel limits alone


@dataclass(frozen=True)
class SandboxResult:
    """The outcome of one program. ``passed`` is true only for status ``passed``."""

    status: Status
    seconds: float
    returncode: int | None
    network_isolated: bool
    detail: str = ""  # the blocked event, the exception line, the signal or the limit
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


class _Tail:
    """The last ``keep`` bytes of a stream: what the result shows, in bounded memory."""

    def __init__(self, keep: int) -> None:
        self.keep, self.buffer = max(0, keep), bytearray()

    def add(self, chunk: bytes) -> None:
        self.buffer += chunk
        if len(self.buffer) > 2 * self.keep + _CHUNK:
            del self.buffer[: len(self.buffer) - self.keep]

    def text(self) -> str:
        return bytes(self.buffer[-self.keep:] if self.keep else b"").decode("utf-8", "replace")


class _Verdict:
    """The records of the verdict pipe, parsed as they stream in (see :mod:`sandbox_bootstrap`).

    The program can write to the pipe as well, so nothing here trusts a record it could forge to its
    advantage: ``NET`` counts only as the pipe's first line (written before the program existed), ``DONE``
    only with the run's secret; a forged ``DENY``, ``FAIL`` or ``MEMORY`` can only fail the program itself.
    """

    def __init__(self, secret: str) -> None:
        self.secret, self.partial, self.skipping = secret, bytearray(), False
        self.first: str | None = None
        self.denied: list[str] = []
        self.memory, self.done, self.failure = False, False, ""

    def feed(self, chunk: bytes) -> None:
        self.partial += chunk
        while (end := self.partial.find(b"\n")) >= 0:
            line, skipped = bytes(self.partial[:end]), self.skipping
            del self.partial[: end + 1]
            self.skipping = False
            if not skipped:
                self._line(line.decode("utf-8", "replace"))
        if len(self.partial) > _MAX_LINE:
            self.partial.clear()
            self.skipping = True

    def _line(self, line: str) -> None:
        if not line:
            return
        if self.first is None:
            self.first = line
        kind, _, text = line.removeprefix(f"{_MARK}:").partition(":") if line.startswith(f"{_MARK}:") else ("", "", "")
        if kind == "DENY" and len(self.denied) < 8:
            self.denied.append(text)
        elif kind == "MEMORY":
            self.memory = True
        elif kind == "FAIL":
            self.failure = text
        elif kind == "DONE" and secrets.compare_digest(text.encode(), self.secret.encode()):
            self.done = True

    @property
    def network_isolated(self) -> bool:
        return self.first == f"{_MARK}:NET:isolated"


@dataclass
class _Run:
    """What the parent observed of one child."""

    out: _Tail
    err: _Tail
    verdict: _Verdict
    timed_out: bool = False
    overflow: int = 0  # bytes read when the output limit was hit, 0 when it was not


def _stop(proc: subprocess.Popen) -> None:
    """Ask the supervisor to kill the worker and its descendants, then kill what is left of its group."""
    with contextlib.suppress(ProcessLookupError):  # not reaped yet, so the pid is still this child's
        os.kill(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1)
    _kill_group(proc)
    proc.wait()


def _kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def _watch(proc: subprocess.Popen, verdict_fd: int, config: SandboxConfig, run: _Run) -> None:
    """Read stdout, stderr and the verdict pipe as they stream until they close, the child is gone, the
    wall clock runs out or the output limit is reached (then the run is stopped)."""
    assert proc.stdout is not None and proc.stderr is not None
    sinks: dict[int, Callable[[bytes], None]] = {proc.stdout.fileno(): run.out.add,
                                                  proc.stderr.fileno(): run.err.add, verdict_fd: run.verdict.feed}
    deadline, exited_at, total = time.monotonic() + config.timeout_s + 2, None, 0
    with selectors.DefaultSelector() as selector:
        for fd in sinks:
            selector.register(fd, selectors.EVENT_READ)
        while selector.get_map():
            now = time.monotonic()
            if now >= deadline:
                run.timed_out = True
                break
            if proc.poll() is not None:
                exited_at = exited_at or now
                if now - exited_at > _EXIT_GRACE_S:
                    break
            for key, _ in selector.select(timeout=min(0.05, deadline - now)):
                chunk = os.read(key.fd, _CHUNK)
                if not chunk:
                    selector.unregister(key.fd)
                    continue
                total += len(chunk)
                sinks[key.fd](chunk)
            if total > config.max_output_bytes:
                run.overflow = total
                break
    if not (run.timed_out or run.overflow):
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            run.timed_out = True
    if run.timed_out or run.overflow:
        _stop(proc)


def _classify(rc: int | None, run: _Run) -> tuple[Status, str]:
    """The status from the verdict records and the exit status; never from what the program printed."""
    verdict = run.verdict
    if verdict.denied:
        return "blocked", verdict.denied[0]
    if rc == sandbox_bootstrap.EXIT_TAMPERED:
        return "blocked", "the program closed or replaced the sandbox's verdict pipe"
    if run.timed_out:
        return "timeout", "wall-clock timeout"
    if run.overflow:
        return "failed", f"output limit: more than {run.overflow} bytes written (max_output_bytes)"
    if rc is not None and rc < 0:
        sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        return ("timeout" if sig in ("SIGXCPU", "SIGKILL") else "failed"), f"killed by {sig}"
    if verdict.memory:
        return "memory", "MemoryError"
    if rc == 0 and verdict.done:
        return "passed", ""
    return "failed", verdict.failure or f"exit code {rc} before the end of the program"


def _fill_run_dir(base: str, source: str, uid: int | None) -> tuple[str, str, str]:
    """(sandbox dir, key file, secret) under ``base``: the key sits next to the sandbox directory, outside it."""
    workdir, key, secret = os.path.join(base, "run"), os.path.join(base, "verdict.key"), secrets.token_hex(16)
    os.mkdir(workdir, 0o700)
    Path(workdir, "program.py").write_text(source, encoding="utf-8")
    fd = os.open(key, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o400)
    with os.fdopen(fd, "w") as fh:
        fh.write(secret)
    if uid is not None:
        for path in (base, workdir, key, os.path.join(workdir, "program.py")):
            os.chown(path, uid, uid)
    os.chmod(base, 0o700)
    return workdir, key, secret


def run_program(source: str, config: SandboxConfig = SandboxConfig()) -> SandboxResult:
    """Run one Python program in the sandbox and classify the outcome; never raises for program faults.

    >>> run_program("assert 1 + 1 == 2").status  # doctest: +SKIP
    'passed'
    """
    uid, python, nproc = _identity(config)
    start = time.perf_counter()
    base = None
    try:
        base = tempfile.mkdtemp(prefix="mergebench-sandbox-")
        workdir, key, secret = _fill_run_dir(base, source, uid)
        read_end, write_end = os.pipe()
        try:
            cfg = {"dir": workdir, "key": key, "verdict_fd": write_end, "uid": uid, "audit": config.audit,
                   "isolate_network": config.isolate_network, "isolate_processes": config.isolate_processes,
                   "limits": _limits(config, nproc)}
            proc = subprocess.Popen([python, "-I", "-S", "-c", _BOOTSTRAP, json.dumps(cfg)], cwd=workdir,
                                    env=_clean_env(workdir), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                                    stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                                    pass_fds=(write_end,), bufsize=0)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
        run = _Run(_Tail(config.output_bytes), _Tail(config.output_bytes), _Verdict(secret))
        with proc, contextlib.closing(os.fdopen(read_end, "rb", buffering=0)):
            try:
                _watch(proc, read_end, config, run)
            finally:
                if proc.poll() is None:  # an error of our own: never leave the run behind
                    _stop(proc)
                _kill_group(proc)  # stray members of its process group
        status, detail = _classify(proc.returncode, run)
        return SandboxResult(status, time.perf_counter() - start, proc.returncode, run.verdict.network_isolated,
                             detail, run.out.text(), run.err.text())
    except OSError as e:  # could not start the child at all: an infrastructure error, not the program's
        return SandboxResult("error", time.perf_counter() - start, None, False, f"sandbox failed to start: {e}")
    finally:
        if base is not None:
            shutil.rmtree(base, ignore_errors=True)


def run_programs(sources: Sequence[str], config: SandboxConfig = SandboxConfig(), *,
                 workers: int | None = None) -> list[SandboxResult]:
    """Run many programs, a few at a time (each is its own process); results in input order."""
    if not sources:
        return []
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: run_program(s, config), sources))
