"""Run untrusted generated programs (HumanEval/MBPP completions) in a sandboxed child process.

Why a process of its own, not ``exec`` in the evaluator: a generated program may loop forever, allocate
all memory, fork-bomb, delete files, phone home or try to report a pass it did not earn. Each program
runs in a fresh interpreter (the child side is :mod:`mergebench.eval.sandbox_bootstrap`) with two layers:

**The kernel layer** (:mod:`mergebench.eval.isolation`, ``isolation: "bwrap"`` in the results): the
interpreter starts inside bubblewrap -- new user, network, PID, IPC and UTS namespaces, ``/usr``
read-only, a private ``/proc`` and ``/dev``, a fresh size-capped tmpfs as the only writable place, no
home, no project, no token, no capabilities, and a seccomp filter (ptrace, mounts, namespaces, keyrings,
eBPF, io_uring & co. fail with ``EPERM``). Where the machine refuses it (no ``bwrap``, no unprivileged
user namespaces, no libseccomp), detected once per process, the run falls back to the guard alone and
records ``isolation: "none"``; ``SandboxConfig(isolation="bwrap")`` makes that an error instead.

**The in-process guard**, in both cases (its own namespaces only where bwrap is not used):

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

Threat model: the guard alone contains careless or naively harmful model output and the hostile tricks
above, not a determined attacker with a CPython memory-corruption exploit, nor races between threads that
swap a symlink between the hook's check and the kernel's use of a path; metadata calls without audit
events (``os.stat``, ``os.mkfifo``) are only limited by the sandbox uid, and a program can fill the host's
temporary folder until its timeout. The kernel layer closes those: what the program cannot see is not
mounted, whatever trick reaches the kernel. It does not stop a kernel exploit through an allowed system
call; for hostile input at scale, run evaluations in a VM as well. With ``audit=False`` (a test setting for
the kernel layer and limits) nothing guards the key file, so a hostile program could forge its pass.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import shutil
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

from mergebench.errors import ConfigError, EvaluationError
from mergebench.eval import isolation, sandbox_bootstrap
from mergebench.eval.isolation import Isolation
from mergebench.eval.sandbox_watch import Run, Status, Tail, Verdict, classify, exit_status, kill_group, stop, watch

logger = logging.getLogger(__name__)

NOBODY = 65534
_BOOTSTRAP = Path(sandbox_bootstrap.__file__).read_text(encoding="utf-8")


@dataclass(frozen=True)
class SandboxConfig:
    """Limits of one sandboxed run. The defaults suit HumanEval/MBPP tests (a few seconds each)."""

    timeout_s: float = 10.0  # wall clock; CPU seconds are capped at the same value
    memory_mb: int = 1024  # RLIMIT_AS: address space, so huge allocations fail fast
    max_processes: int = 16  # RLIMIT_NPROC headroom over the identity's processes (bwrap: over the run's first 3)
    file_size_mb: int = 16  # RLIMIT_FSIZE
    open_files: int = 64  # RLIMIT_NOFILE
    output_bytes: int = 16_384  # stdout/stderr tail kept in the result
    max_output_bytes: int = 4 * 2**20  # everything the program writes; beyond it the run is killed ("failed")
    isolate_network: bool = True  # a network namespace in the child (False: the host's network, also in bwrap)
    isolate_processes: bool = True  # the guard's PID namespace (bwrap always has one): nothing outlives the run
    drop_privileges: bool = True  # as root: run as nobody (root is exempt from RLIMIT_NPROC)
    audit: bool = True  # the audit hook; tests turn it off to check the kernel limits alone
    isolation: Literal["auto", "bwrap", "none"] = "auto"  # bwrap where it works | required | the guard alone
    disk_mb: int = 64  # size of the tmpfs holding the work folder (bwrap only)

    def __post_init__(self) -> None:
        if self.disk_mb < 1:  # bwrap's --size 0 would be a tmpfs without a cap
            raise ConfigError(f"SandboxConfig(disk_mb={self.disk_mb}) leaves no room for the program.",
                              hint="Give disk_mb >= 1 (MB); the default is 64.")


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
    isolation: Isolation = "none"  # "bwrap": the kernel layer too; "none": the in-process guard alone

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
    """(uid to switch to, interpreter, RLIMIT_NPROC) for a run of the in-process guard alone."""
    if os.geteuid() == 0 and config.drop_privileges:
        python = _interpreter(True)
        if python:
            return NOBODY, python, _tasks_of(NOBODY) + config.max_processes
        logger.warning("No world-readable Python interpreter: the sandbox runs as root, so RLIMIT_NPROC does not "
                       "apply (the audit hook still blocks os.fork).")
        return None, _interpreter(False), config.max_processes
    # without a user namespace the count is the uid's across the host; with one it is the run's own
    return None, _interpreter(False), _tasks_of(os.geteuid()) + config.max_processes


def _bwrap_identity(config: SandboxConfig) -> tuple[int | None, str]:
    """(uid bwrap is started as, interpreter inside it). Root starts it as ``nobody``: inside the new user
    namespace the program is then nobody on the host too, so ``RLIMIT_NPROC`` applies and root's files stay
    root's; the interpreter must be one nobody can read."""
    if os.geteuid() == 0 and config.drop_privileges and _interpreter(True):
        return NOBODY, _interpreter(True)
    return None, _interpreter(False)


def bwrap_refusal(config: SandboxConfig = SandboxConfig()) -> str:
    """Why bubblewrap cannot sandbox runs of ``config`` on this machine, or ``""`` when it can (probed once per
    process and identity: one short sandboxed run)."""
    return isolation.probe(*_bwrap_identity(config))


def _isolation(config: SandboxConfig) -> Isolation:
    """The layer this run gets: bwrap where it works, else the guard alone."""
    if config.isolation == "none":
        return "none"
    reason = bwrap_refusal(config)
    if not reason:
        return "bwrap"
    if config.isolation == "bwrap":
        raise EvaluationError(f"The code sandbox cannot use bubblewrap here: {reason}.",
                              hint="Install it (apt-get install bubblewrap) on a kernel that allows unprivileged "
                                   "user namespaces, or use SandboxConfig(isolation='auto') to fall back to the "
                                   "in-process guard (results then record isolation 'none').")
    return "none"


def _limits(config: SandboxConfig, nproc: int) -> dict[str, int]:
    cpu = max(1, int(config.timeout_s + 0.999))
    return {"RLIMIT_CPU": cpu, "RLIMIT_AS": config.memory_mb * 2**20, "RLIMIT_FSIZE": config.file_size_mb * 2**20,
            "RLIMIT_NOFILE": config.open_files, "RLIMIT_CORE": 0, "RLIMIT_NPROC": nproc}


def _clean_env(workdir: str) -> dict[str, str]:
    """Nothing from the caller's environment: no tokens, no ``HF_*``, no proxies, no ``PYTHON*``."""
    return {"PATH": "/usr/bin:/bin", "HOME": workdir, "TMPDIR": workdir, "LANG": "C.UTF-8", "LC_ALL": "C.UTF-8",
            "PYTHONHASHSEED": "0", "PYTHONDONTWRITEBYTECODE": "1"}


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


@dataclass
class _Plan:
    """How to start one run: the command, its environment, its descriptors and what to remove afterwards."""

    argv: list[str]
    env: dict[str, str]
    cwd: str
    secret: str
    fds: list[int] = field(default_factory=list)  # for the child besides the verdict pipe; the parent closes them
    user: dict = field(default_factory=dict)  # subprocess arguments: the uid the child starts as
    host_dir: str | None = None  # the guard's run folder on the host


def _bootstrap_argv(config: SandboxConfig, *, workdir: str, key: str, verdict_fd: int, uid: int | None, nproc: int,
                    bwrap: bool) -> list[str]:
    cfg = {"dir": workdir, "key": key, "verdict_fd": verdict_fd, "uid": uid, "audit": config.audit, "bwrap": bwrap,
           "isolate_network": config.isolate_network, "isolate_processes": config.isolate_processes,
           "limits": _limits(config, nproc)}
    return ["-I", "-S", "-c", _BOOTSTRAP, json.dumps(cfg)]


def _guard_plan(source: str, config: SandboxConfig, verdict_fd: int) -> _Plan:
    """The in-process guard alone: the run folder is a private temporary folder on the host."""
    uid, python, nproc = _identity(config)
    base = tempfile.mkdtemp(prefix="mergebench-sandbox-")
    try:
        workdir, key, secret = _fill_run_dir(base, source, uid)
    except BaseException:
        shutil.rmtree(base, ignore_errors=True)
        raise
    argv = [python, *_bootstrap_argv(config, workdir=workdir, key=key, verdict_fd=verdict_fd, uid=uid, nproc=nproc,
                                     bwrap=False)]
    return _Plan(argv, _clean_env(workdir), workdir, secret, host_dir=base)


_BWRAP_TASKS = 3  # bwrap's init, the supervisor and the worker: the new user namespace's first tasks


def _bwrap_plan(source: str, config: SandboxConfig, verdict_fd: int) -> _Plan:
    """bwrap copies the program and the key from memfds onto the run's fresh tmpfs: nothing touches the host's
    disk. The process count starts afresh in the new user namespace, so the cap is the run's own."""
    uid, python = _bwrap_identity(config)
    where = isolation.layout(f"mergebench-sandbox-{secrets.token_hex(8)}")
    secret = secrets.token_hex(16)
    argv = _bootstrap_argv(config, workdir=where.workdir, key=where.key, verdict_fd=verdict_fd, uid=None,
                           nproc=config.max_processes + _BWRAP_TASKS, bwrap=True)
    fds: list[int] = []
    try:
        for name, data in (("program", source.encode("utf-8")), ("key", secret.encode()),
                           ("seccomp", isolation.seccomp_filter())):
            fds.append(isolation.memfd(name, data))
        cmd = isolation.command(bwrap=shutil.which("bwrap") or "bwrap", python=python,
                                mounts=isolation.interpreter_mounts(python) or [], argv=argv, where=where,
                                disk_bytes=config.disk_mb * 2**20, program_fd=fds[0], key_fd=fds[1],
                                seccomp_fd=fds[2], share_net=not config.isolate_network)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return _Plan(cmd, _clean_env(where.workdir), "/", secret, fds=fds, user=isolation.as_user(uid))


def _start(plan: _Plan, verdict_fd: int) -> subprocess.Popen:
    return subprocess.Popen(plan.argv, cwd=plan.cwd, env=plan.env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, start_new_session=True, close_fds=True,
                            pass_fds=(verdict_fd, *plan.fds), bufsize=0, **plan.user)


def run_program(source: str, config: SandboxConfig = SandboxConfig()) -> SandboxResult:
    """Run one Python program in the sandbox and classify the outcome; never raises for program faults.

    Raises:
        EvaluationError: ``config.isolation == "bwrap"`` and bubblewrap cannot run here.

    >>> run_program("assert 1 + 1 == 2").status  # doctest: +SKIP
    'passed'
    """
    level = _isolation(config)
    start = time.perf_counter()
    plan: _Plan | None = None
    try:
        read_end, write_end = os.pipe()
        try:
            plan = (_bwrap_plan if level == "bwrap" else _guard_plan)(source, config, write_end)
            proc = _start(plan, write_end)
        except BaseException:
            os.close(read_end)
            raise
        finally:
            os.close(write_end)
            for fd in plan.fds if plan is not None else ():
                os.close(fd)
        run = Run(Tail(config.output_bytes), Tail(config.output_bytes), Verdict(plan.secret))
        with proc, contextlib.closing(os.fdopen(read_end, "rb", buffering=0)):
            try:
                watch(proc, read_end, run, timeout_s=config.timeout_s, max_output_bytes=config.max_output_bytes)
            finally:
                if proc.poll() is None:  # an error of our own: never leave the run behind
                    stop(proc)
                kill_group(proc)  # stray members of its process group
        rc = exit_status(proc.returncode, level)
        status, detail = classify(rc, run)
        return SandboxResult(status, time.perf_counter() - start, rc, run.verdict.network_isolated, detail,
                             run.out.text(), run.err.text(), level)
    except OSError as e:  # could not start the child at all: an infrastructure error, not the program's
        return SandboxResult("error", time.perf_counter() - start, None, False, f"sandbox failed to start: {e}",
                             isolation=level)
    finally:
        if plan is not None and plan.host_dir is not None:
            shutil.rmtree(plan.host_dir, ignore_errors=True)


def run_programs(sources: Sequence[str], config: SandboxConfig = SandboxConfig(), *,
                 workers: int | None = None) -> list[SandboxResult]:
    """Run many programs, a few at a time (each is its own process); results in input order."""
    if not sources:
        return []
    _isolation(config)  # probe once, before the threads (and fail early when bwrap is required but refused)
    workers = workers or max(1, min(4, os.cpu_count() or 1))
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda s: run_program(s, config), sources))
