"""Kernel-level isolation of sandboxed programs with bubblewrap (``bwrap``) and a seccomp filter.

Why bubblewrap: it is the sandbox Flatpak runs every desktop application in, a small setuid-free program
packaged by every distribution (Debian: ``bubblewrap``), and it needs no daemon and no root. Each program
of :mod:`mergebench.eval.sandbox` then runs in its own

* **user namespace** (``--unshare-user``; started as ``nobody`` when the evaluator is root, so
  ``RLIMIT_NPROC`` applies and the host's ``root`` is nobody's business), with no capabilities and no
  way to create further user namespaces (``--disable-userns``, and the seccomp filter below);
* **network namespace** (``--unshare-net``): only a loopback device of its own; no route to the host's
  loopback services, no resolver, no interfaces;
* **PID namespace** (``--unshare-pid``): the program sees only its own processes; when the sandbox's
  first process ends or bwrap dies (``--die-with-parent``), the kernel kills every process inside it;
* **mount namespace**: ``/usr`` read-only (and the ``/bin``/``/lib*`` links to it), a private ``/proc``
  and a minimal ``/dev``, and a fresh **tmpfs** with a size cap holding the work folder -- no ``/etc``,
  no ``/home``, no ``/root``, no project checkout, no Hugging Face token, no host ``/tmp``;
* **seccomp filter** (built with libseccomp through ``pyseccomp``, loaded by bwrap's ``--seccomp``):
  :data:`DENIED_SYSCALLS` fail with ``EPERM`` -- ptrace and cross-process memory access, mounts,
  namespaces (also ``clone`` with ``CLONE_NEWUSER``; ``clone3`` answers ``ENOSYS`` so that the C
  library falls back to ``clone``, whose flags a filter can read), kernel keyrings, eBPF, perf,
  userfaultfd, io_uring, module loading, ``open_by_handle_at`` and terminal injection (``TIOCSTI``);
  system calls of another architecture (the 32-bit entry points of a 64-bit kernel) kill the process.

Where any of it is refused (no ``bwrap``, a kernel or policy without unprivileged user namespaces,
no libseccomp), :func:`probe` says why, once per process, and the sandbox falls back to its in-process
guard; results then record ``isolation: "none"``.
"""

from __future__ import annotations

import errno
import logging
import os
import shutil
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from functools import cache
from typing import Literal

logger = logging.getLogger(__name__)

Isolation = Literal["bwrap", "none"]
"""What a sandboxed run had: ``bwrap`` (namespaces, read-only system, tmpfs, seccomp) or ``none`` (the
in-process guard of :mod:`mergebench.eval.sandbox_bootstrap` alone)."""

SYSTEM_DIRS = ("/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
"""Mounted read-only (or re-created as the same symlinks, on merged-/usr systems); nothing else of the host."""

DENIED_SYSCALLS = (
    # other processes' memory and state
    "ptrace", "process_vm_readv", "process_vm_writev", "kcmp", "pidfd_getfd",
    # file-system views and namespaces
    "mount", "umount2", "pivot_root", "chroot", "move_mount", "open_tree", "fsopen", "fsconfig", "fsmount",
    "fspick", "mount_setattr", "unshare", "setns",
    # kernel interfaces an evaluated program never needs, and common exploit primitives
    "bpf", "perf_event_open", "userfaultfd", "io_uring_setup", "io_uring_enter", "io_uring_register",
    "keyctl", "add_key", "request_key", "init_module", "finit_module", "delete_module", "kexec_load",
    "kexec_file_load", "reboot", "swapon", "swapoff", "acct", "quotactl", "syslog", "open_by_handle_at",
    "name_to_handle_at", "lookup_dcookie", "iopl", "ioperm", "settimeofday", "clock_settime", "clock_adjtime",
    "adjtimex", "vhangup",
)
_CLONE_NEWUSER = 0x10000000
_TERMINAL_INJECTION = (0x5412, 0x541C)  # ioctl TIOCSTI, TIOCLINUX
_PROBE_TIMEOUT_S = 20.0


@dataclass(frozen=True)
class Layout:
    """Where one run's files are inside the sandbox (the same layout the in-process guard uses on the host)."""

    base: str  # the tmpfs folder holding both
    workdir: str  # cwd, HOME and TMPDIR of the program; program.py lives here
    key: str  # the verdict key, next to the work folder (the audit hook opens it only after the program)


def layout(name: str) -> Layout:
    """The in-sandbox paths of a run named ``name`` (unique per run: ``mergebench-sandbox-<hex>``)."""
    base = f"/tmp/{name}"
    return Layout(base=base, workdir=f"{base}/run", key=f"{base}/verdict.key")


@cache
def seccomp_filter() -> bytes:
    """The BPF program bwrap loads (``--seccomp FD``), built once with libseccomp for this machine's arch.

    Raises:
        OSError: libseccomp (``libseccomp2``) or its ``pyseccomp`` bindings are missing.
    """
    try:
        import pyseccomp  # type: ignore[import-untyped]  # ctypes bindings; loads libseccomp.so.2 on import
    except (ImportError, OSError, AttributeError, TypeError) as e:  # no library: find_library returned None
        raise OSError(f"libseccomp is unavailable ({e})") from e
    flt = pyseccomp.SyscallFilter(pyseccomp.ALLOW)
    arch = pyseccomp.system_arch()
    for name in DENIED_SYSCALLS:
        if pyseccomp.resolve_syscall(arch, name) < 0:  # not a system call on this architecture
            continue
        flt.add_rule(pyseccomp.ERRNO(errno.EPERM), name)
    flt.add_rule(pyseccomp.ERRNO(errno.ENOSYS), "clone3")
    flt.add_rule(pyseccomp.ERRNO(errno.EPERM), "clone", pyseccomp.Arg(0, pyseccomp.MASKED_EQ, _CLONE_NEWUSER,
                                                                      _CLONE_NEWUSER))
    for request in _TERMINAL_INJECTION:
        flt.add_rule(pyseccomp.ERRNO(errno.EPERM), "ioctl", pyseccomp.Arg(1, pyseccomp.MASKED_EQ, 0xFFFFFFFF, request))
    fd = os.memfd_create("mergebench-seccomp")
    try:
        with open(os.dup(fd), "wb") as out:
            flt.export_bpf(out)
        os.lseek(fd, 0, os.SEEK_SET)
        return _read_all(fd)
    finally:
        os.close(fd)


def _read_all(fd: int) -> bytes:
    chunks = []
    while chunk := os.read(fd, 65_536):
        chunks.append(chunk)
    return b"".join(chunks)


def memfd(name: str, data: bytes) -> int:
    """An anonymous in-memory file holding ``data``, positioned at its start (bwrap reads it from there)."""
    fd = os.memfd_create(name)
    try:
        view = memoryview(data)
        while view:
            view = view[os.write(fd, view):]
        os.lseek(fd, 0, os.SEEK_SET)
    except BaseException:
        os.close(fd)
        raise
    return fd


def _system_mounts() -> list[str]:
    """``/usr`` read-only; ``/bin``, ``/lib`` & co. as the same symlinks, or read-only too where they are folders."""
    args: list[str] = []
    for path in SYSTEM_DIRS:
        if os.path.islink(path):
            args += ["--symlink", os.readlink(path), path]
        elif os.path.isdir(path):
            args += ["--ro-bind", path, path]
    return args


def interpreter_mounts(python: str) -> list[str] | None:
    """Read-only mounts that make ``python`` runnable inside: none for a system interpreter, its installation
    prefix for one elsewhere (pyenv, conda), ``None`` when its prefix is unknown (nothing else is mounted)."""
    real = os.path.realpath(python)
    if any(real.startswith(f"{d}/") for d in SYSTEM_DIRS):
        return []
    prefix = os.path.realpath(sys.base_prefix)
    return ["--ro-bind", prefix, prefix] if prefix != "/" and real.startswith(f"{prefix}/") else None


def command(*, bwrap: str, python: str, mounts: Sequence[str], argv: Sequence[str], where: Layout, disk_bytes: int,
            program_fd: int, key_fd: int, seccomp_fd: int, share_net: bool = False) -> list[str]:
    """The bwrap command line running ``python argv…`` in ``where.workdir`` on a fresh ``disk_bytes`` tmpfs.

    ``mounts`` come from :func:`interpreter_mounts`. ``program_fd``, ``key_fd`` and ``seccomp_fd`` are
    descriptors the caller passes to bwrap (memfds): the program's source becomes ``program.py``, the key
    ``verdict.key`` (0400), and the filter is loaded last, right before ``python`` starts. ``share_net``
    keeps the host's network (an explicit opt-out, ``SandboxConfig(isolate_network=False)``).
    """
    return [
        bwrap, "--unshare-all", *(["--share-net"] if share_net else []), "--unshare-user", "--disable-userns",
        "--die-with-parent", "--new-session",
        "--cap-drop", "ALL", *_system_mounts(), *mounts, "--proc", "/proc", "--dev", "/dev",
        "--size", str(disk_bytes), "--tmpfs", "/tmp", "--perms", "0700", "--dir", where.base,
        "--perms", "0700", "--dir", where.workdir, "--file", str(program_fd), f"{where.workdir}/program.py",
        "--perms", "0400", "--file", str(key_fd), where.key, "--chdir", where.workdir,
        "--seccomp", str(seccomp_fd), "--", python, *argv,
    ]


@cache
def probe(uid: int | None, python: str) -> str:
    """Why bwrap cannot sandbox ``python`` as ``uid`` (``None``: this process's own), or ``""`` when it can.

    Runs the real sandbox command once (``python -c pass`` inside it, a few tens of milliseconds) and
    remembers the answer for the life of the process; a refusal is logged once, with the way to fix it.
    """
    reason = _probe(uid, python)
    if reason:
        logger.warning("Generated code runs without kernel isolation (bwrap): %s. Results record isolation "
                       "'none'; install bubblewrap (apt-get install bubblewrap) on a kernel that allows "
                       "unprivileged user namespaces.", reason)
    return reason


def _probe(uid: int | None, python: str) -> str:
    bwrap = shutil.which("bwrap")
    if bwrap is None:
        return "bwrap is not installed"
    mounts = interpreter_mounts(python) if python else None
    if mounts is None:
        return f"no interpreter the sandbox user can run ({python or 'none found'})"
    try:
        bpf = seccomp_filter()
    except OSError as e:
        return str(e)
    fds = [memfd("program", b""), memfd("key", b""), memfd("seccomp", bpf)]
    try:
        cmd = command(bwrap=bwrap, python=python, mounts=mounts, argv=["-I", "-S", "-c", "pass"], where=layout("probe"),
                      disk_bytes=2**20, program_fd=fds[0], key_fd=fds[1], seccomp_fd=fds[2])
        done = subprocess.run(cmd, pass_fds=fds, capture_output=True, text=True, timeout=_PROBE_TIMEOUT_S,
                              cwd="/", env={"PATH": "/usr/bin:/bin"}, **as_user(uid))
    except (OSError, subprocess.SubprocessError) as e:
        return f"bwrap could not run ({e})"
    finally:
        for fd in fds:
            os.close(fd)
    if done.returncode != 0:
        return f"bwrap exited with {done.returncode}: {' '.join(done.stderr.split())[:300] or 'no message'}"
    return ""


def as_user(uid: int | None) -> dict:
    """``subprocess`` arguments starting the child as ``uid`` (its own group, no supplementary groups)."""
    return {} if uid is None else {"user": uid, "group": uid, "extra_groups": []}
