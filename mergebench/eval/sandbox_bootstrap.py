"""Child side of :mod:`mergebench.eval.sandbox`: what runs before, around and after an untrusted program.

The parent does not import this module in the child: it passes this file's text to ``python -I -S -c``
(isolated, no site packages, so mergebench is not importable there) with a JSON config as ``argv[1]``.
Imported normally it only defines functions (tests inspect :func:`make_hook`).

Two processes per run, and no program code ever runs in the first one:

* the **supervisor** (the interpreter the parent started) enters new network and PID namespaces (inside
  bwrap it is in them already: the config says ``bwrap``), writes the first record of the verdict pipe
  (is the network isolated?), becomes a child subreaper and forks the worker. It waits for the worker,
  kills what the worker left behind and exits with the worker's status. On SIGTERM (the parent's timeout
  or output limit) it kills the worker first.
* the **worker** is PID 1 of the new PID namespace, so when it ends the kernel kills every process the
  program started, daemons that called ``setsid`` included (inside bwrap the namespace belongs to bwrap's
  own init, and ends with the supervisor; without a PID namespace the orphans are re-parented to the
  supervisor, which kills them). It drops to the sandbox uid, asks for SIGKILL when the supervisor dies,
  sets the rlimits, installs the audit hook and executes the program in a fresh ``__main__`` module.

Records are lines ``MB-SANDBOX:<KIND>:<text>`` on the verdict pipe (only the parent holds its read end):
``NET`` (first line, written before any program code exists), ``DENY`` (the audit hook refused an
action; the program cannot take it back), ``MEMORY``/``FAIL`` (how the program ended) and ``DONE``
(the program ran to its end). ``DONE`` carries a key the worker can only read once the program has
finished: see :func:`make_hook` for the gate and ``mergebench/eval/sandbox.py`` for the threat model.
"""

from __future__ import annotations

import contextlib
import json
import os
import resource
import signal
import sys
from collections.abc import Callable
from types import CodeType, FrameType, TracebackType

MARK = "MB-SANDBOX"
EXIT_TAMPERED = 86  # the verdict pipe was closed or replaced: the worker fails closed
_CLONE_NEWNET, _CLONE_NEWPID, _CLONE_NEWUSER = 0x40000000, 0x20000000, 0x10000000
_PR_SET_PDEATHSIG, _PR_SET_CHILD_SUBREAPER = 1, 36

# Audit events that fail the sample. The garbage collector and frame tables would reach the hook itself;
# a trace function could move the line of a bootstrap frame (CPython lets it set f_lineno of any frame
# with f_trace during a line event), which the key's gate watches; the rest runs commands, opens
# connections, lifts limits or loads CPython's test-only C APIs.
BLOCKED_PREFIXES = ("socket.", "os.fork", "os.forkpty", "os.exec", "os.posix_spawn", "os.spawn", "os.system",
                    "os.startfile", "os.kill", "os.killpg", "subprocess.", "pty.spawn", "ctypes.",
                    "resource.setrlimit", "resource.prlimit", "signal.pthread_kill", "webbrowser.", "urllib.",
                    "http.", "ftplib.", "smtplib.", "poplib.", "imaplib.", "nntplib.", "telnetlib.", "sqlite3.")
BLOCKED_EVENTS = frozenset({"sys._current_frames", "gc.get_objects", "gc.get_referrers", "gc.get_referents",
                            "sys.settrace", "sys.setprofile"})
BLOCKED_IMPORTS = frozenset({"ctypes", "_ctypes", "_posixsubprocess", "_multiprocessing", "_testcapi",
                             "_testinternalcapi", "_testmultiphase", "_testsinglephase", "_xxsubinterpreters"})
# (event, index of a path argument, index of its dir_fd argument or -1, writes?); "open" decides from its flags.
PATH_EVENTS = (
    ("open", 0, -1, False), ("os.listdir", 0, -1, False), ("os.scandir", 0, -1, False), ("os.chdir", 0, -1, False),
    ("os.getxattr", 0, -1, False), ("os.listxattr", 0, -1, False), ("glob.glob", 0, -1, False),
    ("os.remove", 0, 1, True), ("os.rmdir", 0, 1, True), ("os.mkdir", 0, 2, True), ("os.rename", 0, 2, True),
    ("os.rename", 1, 3, True), ("os.link", 0, 2, True), ("os.link", 1, 3, True), ("os.symlink", 0, 2, True),
    ("os.symlink", 1, 2, True), ("os.chmod", 0, 2, True), ("os.chown", 0, 3, True), ("os.utime", 0, 3, True),
    ("os.truncate", 0, -1, True), ("os.setxattr", 0, -1, True), ("os.removexattr", 0, -1, True),
    ("shutil.rmtree", 0, 1, True), ("shutil.copyfile", 0, -1, False), ("shutil.copyfile", 1, -1, True),
    ("shutil.copymode", 0, -1, False), ("shutil.copymode", 1, -1, True), ("shutil.copystat", 0, -1, False),
    ("shutil.copystat", 1, -1, True), ("shutil.copytree", 0, -1, False), ("shutil.copytree", 1, -1, True),
    ("shutil.move", 0, -1, True), ("shutil.move", 1, -1, True))


def make_hook(root: str, key: str, verdict_fd: int, top: FrameType, *, read_ok: tuple[str, ...] = (),
              write_ok: tuple[str, ...] = (), nofile: int = 64) -> Callable[[str, tuple], None]:
    """The audit hook: paths outside ``root`` (reads also in ``read_ok``), commands, sockets, frames/gc.

    The hook is one function whose closure holds only immutable values and C functions, and it makes no
    global or builtin lookup, so a program that rebinds builtins, ``os``, ``os.path`` or the bootstrap's
    globals, or that reads the hook's locals from a frame, cannot change what it checks. Nothing else
    references the hook (and ``gc`` is blocked), so its cells cannot be rebound. Every failure inside a
    check denies. Paths are resolved here, symlink by symlink; an ``int`` path or ``dir_fd`` is resolved
    through ``/proc/self/fd``, and ``os.open`` (whose event omits ``dir_fd``) must be allowed relative to
    the working directory and to every open directory descriptor.

    The gate: ``key`` (the file with the run's secret) opens only for reading and only once ``top`` -- the
    bootstrap's module frame, which calls ``main()`` -- has left the line it was on when the hook was made,
    which it does only when ``main()`` returns, i.e. when ``exec`` of the program returned. Nothing else
    moves that line: ``sys.settrace`` is refused (a trace function may set ``f_lineno`` of other frames),
    and no bootstrap frame has an exception handler the program's exception could resume in.
    """
    str_, bytes_, int_, bool_, float_, tuple_, type_ = str, bytes, int, bool, float, tuple, type
    issubclass_, len_, repr_ = issubclass, len, repr
    permission_error, value_error, base_exception = PermissionError, ValueError, BaseException
    access, lstat, fstat, readlink, getcwd = os.access, os.lstat, os.fstat, os.readlink, os.getcwd
    write, exit_, join, decode, index = os.write, os._exit, "".join, bytes.decode, int.__index__
    f_ok, write_bits = os.F_OK, os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_TRUNC | os.O_APPEND
    verdict = os.fstat(verdict_fd)
    verdict_dev, verdict_ino = verdict.st_dev, verdict.st_ino
    call_line = top.f_lineno
    read_dirs, write_dirs = (root, *read_ok), (root, *write_ok)
    read_under = tuple(d.rstrip("/") + "/" for d in read_dirs)
    write_under = tuple(d.rstrip("/") + "/" for d in write_dirs)
    specs, path_events = PATH_EVENTS, frozenset(spec[0] for spec in PATH_EVENTS)
    blocked, blocked_events, blocked_imports = BLOCKED_PREFIXES, BLOCKED_EVENTS, BLOCKED_IMPORTS
    mark, tampered, unknown = MARK, EXIT_TAMPERED, -4242  # unknown: os.open's dir_fd, absent from its event

    def hook(event: str, args: tuple) -> None:
        if type_(event) is not str_ or type_(args) is not tuple_:
            return
        if event == "sys._getframe":  # frames show the bootstrap; typing, logging & co. expect ValueError
            raise value_error("call stack is not deep enough")
        n_args = len_(args)
        problem = event.startswith(blocked) or event in blocked_events or (
            event == "import" and n_args > 0 and type_(args[0]) is str_ and args[0] in blocked_imports)
        if not problem and event in path_events:
            try:
                for name, where, fd_where, writing in specs:
                    if problem:
                        break
                    if name != event or where >= n_args:
                        continue
                    path = args[where]
                    dir_fd = args[fd_where] if 0 <= fd_where < n_args else None
                    if event == "open":
                        flags = args[2] if n_args > 2 else 0
                        writing = type_(flags) is not int_ or (flags & write_bits) != 0
                        dir_fd = unknown if n_args > 1 and args[1] is None else None
                    kind = type_(path)
                    if path is None:
                        text = "."
                    elif issubclass_(kind, str_):
                        text = join((path,))
                    elif issubclass_(kind, bytes_):
                        text = decode(path, "utf-8", "surrogateescape")
                    elif issubclass_(kind, int_):
                        text = readlink(f"/proc/self/fd/{index(path)}")
                        if not text.startswith("/") or text.startswith("/memfd:"):
                            continue  # a pipe, a socket, anonymous memory: no file of the file system
                    else:
                        problem = True
                        break
                    bases: tuple[str, ...]  # (a bare annotation: no bytecode)
                    if text.startswith("/"):
                        bases = ("/",)
                    elif dir_fd == unknown:
                        bases, fd = (getcwd(),), 0
                        while fd < nofile:
                            if access(f"/proc/self/fd/{fd}/.", f_ok):  # an open directory
                                bases = (*bases, readlink(f"/proc/self/fd/{fd}"))
                            fd += 1
                    elif dir_fd is None or (type_(dir_fd) is int_ and dir_fd < 0):
                        bases = (getcwd(),)
                    elif issubclass_(type_(dir_fd), int_):
                        bases = (readlink(f"/proc/self/fd/{index(dir_fd)}"),)
                    else:
                        problem = True
                        break
                    for base in bases:
                        if not base.startswith("/"):
                            problem = True
                            break
                        current, rest, hops = "", text if text.startswith("/") else f"{base}/{text}", 0
                        while rest:
                            head, _, rest = rest.partition("/")
                            if head == "" or head == ".":
                                continue
                            if head == "..":
                                current = current[: current.rfind("/")]
                                continue
                            candidate = f"{current}/{head}"
                            if not access(candidate, f_ok, follow_symlinks=False) or (
                                    lstat(candidate).st_mode & 0o170000) != 0o120000:
                                current = candidate  # a missing name stays as written: the kernel stops there
                                continue
                            hops += 1
                            target = readlink(candidate)
                            current = "" if target.startswith("/") else current
                            rest = f"{target}/{rest}" if hops <= 40 else ""
                            problem = problem or hops > 40
                        resolved = current or "/"
                        if resolved == key:
                            problem = problem or writing or top.f_lineno == call_line
                        elif writing:
                            problem = problem or not (resolved in write_dirs or resolved.startswith(write_under))
                        else:
                            problem = problem or not (resolved in read_dirs or resolved.startswith(read_under))
                        if problem:
                            break
            except base_exception:
                problem = True
        if problem:
            shown, count = "", 0
            for item in args[:2]:
                kind = type_(item)
                safe = item is None or kind is str_ or kind is bytes_ or kind is int_ or kind is bool_ or kind is float_
                piece = repr_(item) if safe else "<object>"
                shown = f"{shown}, {piece}" if count else piece
                count += 1
            shown = f"({shown},)" if count == 1 else f"({shown})"
            line = f"\n{mark}:DENY:{event[:200]} {shown[:600]}\n"
            intact = False
            try:
                now = fstat(verdict_fd)
                intact = now.st_dev == verdict_dev and now.st_ino == verdict_ino
                if intact:
                    write(verdict_fd, line.encode("utf-8", "backslashreplace"))
            except base_exception:
                intact = False
            if not intact:
                exit_(tampered)
            raise permission_error(f"sandbox: {event} is not allowed")

    return hook


def _record(fd: int, kind: str, text: str = "") -> None:
    """One record line; the leading newline ends any partial line the program wrote to the pipe."""
    os.write(fd, f"\n{MARK}:{kind}:{' '.join(text.split())[:1000]}\n".encode("utf-8", "backslashreplace"))


def _prctl(option: int, value: int) -> bool:
    try:
        import ctypes

        return ctypes.CDLL(None, use_errno=True).prctl(option, value, 0, 0, 0) == 0
    except Exception:
        return False


def _unshare(network: bool, pids: bool) -> tuple[bool, bool]:
    """Enter new network and/or PID namespaces where the kernel allows it: (network isolated, PIDs isolated)."""
    try:
        import ctypes

        unshare = ctypes.CDLL(None, use_errno=True).unshare
    except Exception:
        return False, False
    user = 0 if os.geteuid() == 0 else _CLONE_NEWUSER  # unprivileged: a user namespace grants the right
    for net, pid in ((network, pids), (network, False), (False, pids)):
        flags = (_CLONE_NEWNET if net else 0) | (_CLONE_NEWPID if pid else 0)
        if flags and unshare(flags | user) == 0:
            return net, pid
    return False, False


def _children() -> list[int]:
    """This process's children (orphans of the worker are re-parented here: we are a subreaper)."""
    me = os.getpid()
    try:
        with open(f"/proc/self/task/{me}/children") as fh:
            return [int(pid) for pid in fh.read().split()]
    except OSError:
        pass
    found = []
    for name in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{name}/stat") as fh:
                if int(fh.read().rsplit(")", 1)[1].split()[1]) == me:
                    found.append(int(name))
        except (OSError, IndexError, ValueError):
            continue
    return found


def _kill_orphans() -> None:
    """Kill and reap every remaining child, again as their own children are re-parented here."""
    for _ in range(10_000):
        children = _children()
        if not children:
            return
        for pid in children:
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)
        for pid in children:
            with contextlib.suppress(OSError):
                os.waitpid(pid, 0)


def _exit_like(status: int) -> None:
    """Exit with the worker's wait status: the same code, or death by the same signal."""
    code = os.waitstatus_to_exitcode(status)
    if code >= 0:
        os._exit(code)
    resource.setrlimit(resource.RLIMIT_CORE, (0, 0))
    with contextlib.suppress(OSError, ValueError):
        signal.signal(-code, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, [-code])
    os.kill(os.getpid(), -code)
    os._exit(128 - code)


class _Stop(Exception):
    """SIGTERM from the parent: stop the run."""


def _stop(signum: int, frame: object) -> None:
    raise _Stop


def _supervise(worker: int) -> None:
    """The supervisor's whole life after the fork: wait, clean up, exit like the worker. Never returns."""
    signal.signal(signal.SIGTERM, _stop)
    try:
        _, status = os.waitpid(worker, 0)
    except _Stop:
        signal.signal(signal.SIGTERM, signal.SIG_IGN)
        os.kill(worker, signal.SIGKILL)
        try:
            _, status = os.waitpid(worker, 0)
        except ChildProcessError:
            status = signal.SIGKILL
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _kill_orphans()
    _exit_like(status)


def _describe(kind: type, value: BaseException) -> str:
    """The last line of the traceback (``AssertionError``, ``ValueError: bad``)."""
    try:
        name = kind.__qualname__
        if kind.__module__ not in ("__main__", "builtins"):
            name = f"{kind.__module__}.{name}"
        text = str(value)
        return f"{name}: {text}" if text else name
    except Exception:
        return "exception"


def _reporter(verdict_fd: int) -> Callable[[type, BaseException, TracebackType | None], None]:
    """``sys.excepthook`` of the worker: print the traceback, record MEMORY or FAIL, exit."""
    exit_, show, streams = os._exit, sys.__excepthook__, sys

    def report(kind: type, value: BaseException, traceback: TracebackType | None) -> None:
        memory = False
        try:
            memory = issubclass(kind, MemoryError)
            for stream in (streams.stdout, streams.stderr):
                stream.flush()
            while traceback is not None and traceback.tb_frame.f_code.co_filename == "<string>":
                traceback = traceback.tb_next  # the bootstrap's own frames come first: not the program's
            show(kind, BaseException.with_traceback(value, traceback), traceback)
            streams.stderr.flush()
        except Exception:
            pass
        finally:
            _record(verdict_fd, "MEMORY" if memory else "FAIL", "MemoryError" if memory else _describe(kind, value))
            exit_(4 if memory else 1)

    return report


def _finisher(verdict_fd: int, key: str) -> Callable[[], None]:
    """The step after the program's end: read the key (the hook's gate is now open) and report it."""
    open_, read, close, write, exit_ = os.open, os.read, os.close, os.write, os._exit
    streams, suppress = sys, contextlib.suppress
    done, flags = f"\n{MARK}:DONE:".encode(), os.O_RDONLY | os.O_CLOEXEC

    def finish() -> None:
        for stream in (streams.stdout, streams.stderr):
            with suppress(Exception):
                stream.flush()
        fd = open_(key, flags)
        secret = read(fd, 256).strip()
        close(fd)
        write(verdict_fd, done + secret + b"\n")
        exit_(0)

    return finish


def _prepare_worker(config: dict, verdict_fd: int) -> tuple[CodeType, dict, Callable[[], None]]:
    """Identity, limits and the program's code and namespace; the program has not run yet."""
    uid = config["uid"]
    if uid is not None and os.geteuid() == 0:
        os.setgroups([])
        os.setgid(uid)
        os.setuid(uid)
    _prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)  # after setuid, which clears it
    for name, value in config["limits"].items():
        resource.setrlimit(getattr(resource, name), (value, value))
    with open(os.path.join(os.path.realpath(config["dir"]), "program.py"), encoding="utf-8") as fh:
        source = fh.read()
    sys.excepthook = _reporter(verdict_fd)
    code = compile(source, "program.py", "exec")
    module = type(sys)("__main__")  # the program's own __main__: the bootstrap's globals stay out of reach
    module.__dict__["__builtins__"] = sys.modules["builtins"]
    sys.modules["__main__"] = module
    for name in ("ctypes", "_ctypes", "ctypes._endian"):
        sys.modules.pop(name, None)
    return code, module.__dict__, _finisher(verdict_fd, os.path.realpath(config["key"]))


def main() -> Callable[[], None]:
    """Set up, fork, run the program; returns (in the worker, only if the program ran to its end) the step
    that reports the pass. The caller must call it on the next line: the gate watches the caller's line."""
    top = sys._getframe(1)
    config = json.loads(sys.argv[1])
    sys.argv[:] = ["program.py"]
    verdict_fd = config["verdict_fd"]
    # inside bwrap the namespaces exist already (and the seccomp filter refuses unshare)
    if config.get("bwrap"):
        network = config["isolate_network"]
    else:
        network, _ = _unshare(config["isolate_network"], config["isolate_processes"])
    _record(verdict_fd, "NET", "isolated" if network else "shared")
    _prctl(_PR_SET_CHILD_SUBREAPER, 1)
    worker = os.fork()
    if worker:
        _supervise(worker)
    code, namespace, finish = _prepare_worker(config, verdict_fd)
    if config["audit"]:
        read_ok = (*(os.path.realpath(p) for p in sys.path if p), "/dev/null", "/dev/urandom", "/dev/zero")
        sys.addaudithook(make_hook(os.path.realpath(config["dir"]), os.path.realpath(config["key"]), verdict_fd,
                                   top, read_ok=read_ok, write_ok=("/dev/null",),
                                   nofile=min(resource.getrlimit(resource.RLIMIT_NOFILE)[0], 4096)))
    # No try/with from here on: an exception from the program must leave main() (then sys.excepthook
    # reports it), never land in a handler from which a trace function could jump to the return below.
    exec(code, namespace)
    return finish


if __name__ == "__main__":
    _finish = main()  # returns only when the program ran to its end; the audit hook's gate watches this line
    _finish()
