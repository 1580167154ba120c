"""What every fuzz case must satisfy.

A parser either returns its value or raises a :class:`~mergebench.errors.MergeBenchError` with a non-empty
hint (:func:`outcome`); any other exception fails the case (it would be a traceback), and so does a case that
outlives its deadline (:func:`deadline`: Hypothesis' own ``deadline`` only reports slowness after the fact, it
cannot stop a hang).
"""

from __future__ import annotations

import contextlib
import io
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TypeVar

from hypothesis import currently_in_test_context, event
from hypothesis import strategies as st

from mergebench.errors import MergeBenchError

T = TypeVar("T")
CLI_SAMPLE = st.integers(0, 9)
"""Drawn with each case: the case also goes through the command line (or the Hub) when it is 0, one in ten."""
CASE_SECONDS = 20.0
"""Hard limit of one case (a parse takes milliseconds; the limit allows for a loaded, shared machine)."""


class CaseTimeout(BaseException):  # a BaseException: no `except Exception` in the code under test stops it
    """A fuzz case ran past its deadline."""


@contextlib.contextmanager
def deadline(seconds: float = CASE_SECONDS) -> Iterator[None]:
    """Raise :class:`CaseTimeout` in this (main) thread if the block runs longer than ``seconds``.

    A timer thread sends SIGUSR1 to the main thread, which interrupts blocking system calls as well as
    Python loops (SIGALRM is left to pytest-timeout)."""
    def expire(signum: int, frame: object) -> None:
        raise CaseTimeout(f"the case ran longer than {seconds:g} s")

    previous = signal.signal(signal.SIGUSR1, expire)
    timer = threading.Timer(seconds, signal.pthread_kill, (threading.main_thread().ident, signal.SIGUSR1))
    timer.start()
    try:
        yield
    finally:
        timer.cancel()
        signal.signal(signal.SIGUSR1, previous)


def outcome(parse: Callable[[], T], seconds: float = CASE_SECONDS) -> T | MergeBenchError:
    """What ``parse()`` returned, or the MergeBench error it raised (checked by :func:`check_rejection`)."""
    with deadline(seconds):
        try:
            value = parse()
        except Exception as e:
            error = check_rejection(e)
            tally(type(error).__name__)
            return error
    tally("accepted")
    return value


def tally(kind: str) -> None:
    """Tally a case's outcome in Hypothesis' statistics (``--hypothesis-show-statistics``)."""
    if currently_in_test_context():
        event("outcome", kind)


def check_rejection(error: BaseException) -> MergeBenchError:
    """``error`` must be a MergeBench error with a message and a non-empty hint; re-raised otherwise."""
    if not isinstance(error, MergeBenchError):
        raise error
    assert str(error).strip(), f"{type(error).__name__} without a message"
    assert error.hint and error.hint.strip(), f"{type(error).__name__} without a hint: {error}"
    return error


def files_under(root: Path) -> set[str]:
    """Every file below ``root`` (relative paths), to show a rejected input left no output behind."""
    return {str(p.relative_to(root)) for p in root.rglob("*") if p.is_file() or p.is_symlink()}


@dataclass(frozen=True)
class FuzzHub:
    """The fuzz tests' loopback Hub: repos are folders under ``root``; ``url`` is its ``HF_ENDPOINT``."""

    root: Path
    url: str


@dataclass(frozen=True)
class CliRun:
    code: int
    stdout: str
    stderr: str


def run_cli(args: list[str], *, cwd: Path, seconds: float = CASE_SECONDS) -> CliRun:
    """Run ``mergebench ARGS`` in this process through :func:`mergebench.cli.main`, the function the console
    script calls (its error handling included), in ``cwd``. An exception that escapes ``main`` escapes here:
    in a terminal it would have been a traceback. (``tests/fuzz/test_fuzz_cli.py`` runs real processes.)"""
    from mergebench.cli import main

    out, err, argv = io.StringIO(), io.StringIO(), sys.argv
    sys.argv = ["mergebench", *args]
    try:
        with deadline(seconds), contextlib.chdir(cwd), contextlib.redirect_stdout(out), \
                contextlib.redirect_stderr(err):
            try:
                main()
                code = 0
            except SystemExit as e:
                code = e.code if isinstance(e.code, int) else int(e.code is not None)
    finally:
        sys.argv = argv
    return CliRun(code, out.getvalue(), err.getvalue())


def check_cli_error(run: CliRun) -> None:
    """A rejected input: exit 1, an ``Error:`` line and a non-empty ``Hint:`` line on stderr, no traceback."""
    lines = run.stderr.splitlines()
    assert run.code == 1, f"exit {run.code}: {run.stderr[-2000:]}"
    assert "Traceback" not in run.stderr, run.stderr[-2000:]
    assert any(line.startswith("Error: ") for line in lines), run.stderr[-2000:]
    assert any(line.startswith("Hint: ") and line[6:].strip() for line in lines), run.stderr[-2000:]
