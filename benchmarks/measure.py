"""Run a command and measure it the same way for every contender: wall time and peak RSS of its process tree.

GNU ``time``'s ``%M`` (``ru_maxrss``) is the peak of the largest single process, which misses helpers a
tool may spawn, and on Linux a child's ``ru_maxrss`` starts from its parent's high-water mark at fork (a
benchmark driver that once held a few GB would lend that peak to every later child). So ``psutil``
samples the summed RSS of the whole process tree every ``interval`` seconds instead.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import tempfile
import threading
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

import psutil


@dataclass(frozen=True)
class Measured:
    seconds: float
    peak_rss: int
    stdout: str
    stderr: str


def _tree_rss(proc: psutil.Process) -> int:
    total = 0
    for p in [proc, *proc.children(recursive=True)]:
        with contextlib.suppress(psutil.Error):  # exited between listing and reading
            total += p.memory_info().rss
    return total


def run_measured(cmd: Sequence[str], *, env: Mapping[str, str] | None = None, cwd: Path | None = None,
                 interval: float = 0.01) -> Measured:
    """Run ``cmd`` to completion; raise ``CalledProcessError`` (with its output) if it fails."""
    peak = 0
    done = threading.Event()
    with tempfile.TemporaryFile("w+") as out, tempfile.TemporaryFile("w+") as err:
        started = time.perf_counter()
        child = subprocess.Popen(list(cmd), env=dict(env) if env is not None else None, cwd=cwd,
                                 stdout=out, stderr=err)
        proc = psutil.Process(child.pid)

        def sample() -> None:
            nonlocal peak
            while not done.is_set():
                try:
                    peak = max(peak, _tree_rss(proc))
                except psutil.Error:
                    return
                done.wait(interval)

        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        _, status = os.waitpid(child.pid, 0)
        seconds = time.perf_counter() - started
        done.set()
        sampler.join()
        child.returncode = os.waitstatus_to_exitcode(status)
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read(), err.read()
    if child.returncode != 0:
        raise subprocess.CalledProcessError(child.returncode, list(cmd), stdout, stderr)
    return Measured(seconds, peak, stdout, stderr)


def folder_bytes(path: Path) -> int:
    """Bytes of the regular files under ``path`` (symlinks not followed, so a Hub cache counts each blob once)."""
    if not path.exists():
        return 0
    return sum(p.lstat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


def warm(paths: Sequence[Path], block: int = 16 << 20) -> float:
    """Read every file under ``paths`` once so all contenders start from a warm page cache; returns seconds."""
    started = time.perf_counter()
    buf = bytearray(block)
    for root in paths:
        for p in sorted(root.rglob("*")) if root.is_dir() else [root]:
            if p.is_file():
                with open(p, "rb", buffering=0) as f:
                    while f.readinto(buf):
                        pass
    return time.perf_counter() - started
