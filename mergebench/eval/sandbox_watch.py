"""Watching one sandboxed run and classifying its outcome (the parent's side of :mod:`mergebench.eval.sandbox`).

The parent reads the child's stdout, stderr and verdict pipe as they stream, keeps a bounded tail of the
output, stops the run at its wall-clock deadline or output limit, and derives the status from the verdict
records and the exit status -- never from what the program printed. See ``sandbox.py`` for the protocol.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import selectors
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from mergebench.eval.isolation import Isolation
from mergebench.eval.sandbox_bootstrap import EXIT_TAMPERED, MARK

Status = Literal["passed", "failed", "timeout", "memory", "blocked", "error"]
_CHUNK = 65_536  # bytes per read of a pipe
_MAX_LINE = 8_192  # longer lines of the verdict pipe are the program's noise: dropped
_EXIT_GRACE_S = 1.0  # after the child exits, how long its pipes may stay open (nothing should hold them)


class Tail:
    """The last ``keep`` bytes of a stream: what the result shows, in bounded memory."""

    def __init__(self, keep: int) -> None:
        self.keep, self.buffer = max(0, keep), bytearray()

    def add(self, chunk: bytes) -> None:
        self.buffer += chunk
        if len(self.buffer) > 2 * self.keep + _CHUNK:
            del self.buffer[: len(self.buffer) - self.keep]

    def text(self) -> str:
        return bytes(self.buffer[-self.keep:] if self.keep else b"").decode("utf-8", "replace")


class Verdict:
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
        kind, _, text = line.removeprefix(f"{MARK}:").partition(":") if line.startswith(f"{MARK}:") else ("", "", "")
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
        return self.first == f"{MARK}:NET:isolated"


@dataclass
class Run:
    """What the parent observed of one child."""

    out: Tail
    err: Tail
    verdict: Verdict
    timed_out: bool = False
    overflow: int = 0  # bytes read when the output limit was hit, 0 when it was not


def stop(proc: subprocess.Popen) -> None:
    """Ask the supervisor to kill the worker and its descendants, then kill what is left of its group."""
    with contextlib.suppress(ProcessLookupError):  # not reaped yet, so the pid is still this child's
        os.kill(proc.pid, signal.SIGTERM)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(timeout=1)
    kill_group(proc)
    proc.wait()


def kill_group(proc: subprocess.Popen) -> None:
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(proc.pid, signal.SIGKILL)


def watch(proc: subprocess.Popen, verdict_fd: int, run: Run, *, timeout_s: float, max_output_bytes: int) -> None:
    """Read stdout, stderr and the verdict pipe as they stream until they close, the child is gone, the
    wall clock runs out or the output limit is reached (then the run is stopped)."""
    assert proc.stdout is not None and proc.stderr is not None
    sinks: dict[int, Callable[[bytes], None]] = {proc.stdout.fileno(): run.out.add,
                                                  proc.stderr.fileno(): run.err.add, verdict_fd: run.verdict.feed}
    deadline, exited_at, total = time.monotonic() + timeout_s + 2, None, 0
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
            if total > max_output_bytes:
                run.overflow = total
                break
    if not (run.timed_out or run.overflow):
        try:
            proc.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            run.timed_out = True
    if run.timed_out or run.overflow:
        stop(proc)


def classify(rc: int | None, run: Run) -> tuple[Status, str]:
    """The status from the verdict records and the exit status; never from what the program printed."""
    verdict = run.verdict
    if verdict.denied:
        return "blocked", verdict.denied[0]
    if rc == EXIT_TAMPERED:
        return "blocked", "the program closed or replaced the sandbox's verdict pipe"
    if run.timed_out:
        return "timeout", "wall-clock timeout"
    if run.overflow:
        return "failed", f"output limit: more than {run.overflow} bytes written (max_output_bytes)"
    if verdict.first is None:  # the supervisor writes NET before any program code exists: it never ran
        return "error", f"the sandbox did not start (exit {rc}): {' '.join(run.err.text().split())[-300:]}"
    if rc is not None and rc < 0:
        sig = signal.Signals(-rc).name if -rc in signal.Signals._value2member_map_ else str(-rc)
        return ("timeout" if sig in ("SIGXCPU", "SIGKILL") else "failed"), f"killed by {sig}"
    if verdict.memory:
        return "memory", "MemoryError"
    if rc == 0 and verdict.done:
        return "passed", ""
    return "failed", verdict.failure or f"exit code {rc} before the end of the program"


def exit_status(rc: int | None, level: Isolation) -> int | None:
    """bwrap exits with 128 + N when the sandbox's process died of signal N: read that back as ``-N``, the way
    ``subprocess`` reports a signal (a program calling ``sys.exit(137)`` is then "killed": a failure either way)."""
    if level == "bwrap" and rc is not None and rc > 128 and rc - 128 in signal.Signals._value2member_map_:
        return 128 - rc
    return rc
