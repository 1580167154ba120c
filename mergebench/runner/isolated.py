"""A grid point's merge in a child process of its own.

Why: the peak memory a merge reports (``MergeResult.peak_rss_bytes``) is its process's high-water mark. In the
runner's long-lived process that mark includes whatever the process holds besides the merge (models it
evaluated, the allocator's cached arenas), so the leaderboard showed 5.8–8.4 GB for merges that need about
1 GB. A fresh interpreter (``multiprocessing`` *spawn*, never a fork of the runner) holds only the merge, and
gives all its memory back to the OS when it ends.

The child runs :func:`mergebench.merge.engine.merge` and sends back its :class:`MergeResult`, or the
:class:`~mergebench.errors.MergeBenchError` it raised, rebuilt in the parent as the same class with the same
message, hint and attributes (so the CLI prints ``Error:``/``Hint:`` as before, no traceback). Its log records
go through a queue to this process's handlers. Ctrl-C, or any exception in the parent while it waits, kills
the child (and on Linux the child dies with the parent if the parent itself is killed).
"""

from __future__ import annotations

import contextlib
import importlib
import logging
import multiprocessing
import multiprocessing.queues
import signal
import sys
import traceback
from dataclasses import dataclass
from logging.handlers import QueueHandler, QueueListener
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from typing import TYPE_CHECKING, Any

from mergebench.errors import DiskFullError, MergeBenchError

if TYPE_CHECKING:
    from mergebench.merge.options import MergeOptions, MergeResult

logger = logging.getLogger(__name__)

STOP_SECONDS = 10.0
"""How long a child asked to stop (SIGTERM) may take before it is killed."""
POLL_SECONDS = 0.2
"""How often the parent, waiting for the child's outcome, gets back to acting on signals (Ctrl-C)."""


@dataclass(frozen=True)
class _Failure:
    """A MergeBenchError raised in the child, as data: its class by name, its message and its attributes."""

    module: str
    qualname: str
    args: tuple[Any, ...]
    attributes: dict[str, Any]

    @classmethod
    def of(cls, error: MergeBenchError) -> _Failure:
        return cls(type(error).__module__, type(error).__qualname__, error.args, dict(vars(error)))

    def rebuild(self) -> MergeBenchError:
        """The same exception, built without calling its ``__init__`` (whose signature varies by class)."""
        error_class = getattr(importlib.import_module(self.module), self.qualname)
        error: MergeBenchError = error_class.__new__(error_class, *self.args)
        Exception.__init__(error, *self.args)
        error.__dict__.update(self.attributes)
        return error


@dataclass(frozen=True)
class _Crash:
    """Any other exception in the child (a bug): its traceback, for the error the parent raises."""

    text: str


def merge_in_child(recipe: dict[str, Any], out_dir: Path, *, options: MergeOptions) -> MergeResult:
    """:func:`mergebench.merge.engine.merge` (``recipe`` → ``out_dir``) in a spawned child process.

    Raises:
        MergeBenchError: the one the merge raised (same class, message and hint), or one saying that the child
            ended without a result (killed, out of memory) or failed with an unexpected exception.
    """
    context = multiprocessing.get_context("spawn")
    receiver, sender = context.Pipe(duplex=False)
    logs = context.Queue()
    root = logging.getLogger()
    handlers = root.handlers or [h for h in (logging.lastResort,) if h is not None]  # as logging in this process
    listener = QueueListener(logs, *handlers, respect_handler_level=True)
    child = context.Process(target=_run_child, name="mergebench-merge",
                            args=(recipe, out_dir, options, sender, logs, root.getEffectiveLevel()))
    child.start()
    sender.close()  # the child holds the only writing end: EOF means it ended without sending
    listener.start()
    try:
        outcome = _receive(receiver)
        child.join()
    finally:
        _stop(child)
        listener.stop()
        logs.close()
        receiver.close()
    return _result_of(outcome, child, out_dir)


def _receive(receiver: Connection) -> object:
    """The child's outcome, or ``None`` when it ended without sending one. Waits in short polls: a signal that
    the kernel hands to another thread of this process (Ctrl-C) is acted on by the main thread only when it runs
    Python code again, and a blocking ``recv`` would hold it until the child finished."""
    while not receiver.poll(POLL_SECONDS):  # the child's end closing (it ended) also makes the pipe readable
        pass
    try:
        return receiver.recv()
    except EOFError:
        return None


def _result_of(outcome: object, child: BaseProcess, out_dir: Path) -> MergeResult:
    if isinstance(outcome, _Failure):
        raise outcome.rebuild()
    if isinstance(outcome, _Crash):
        raise MergeBenchError(f"The merge into '{out_dir}' failed with an unexpected error:\n{outcome.text}",
                              hint="This is a bug in MergeBench: please report it with the text above.")
    if outcome is None:
        code = child.exitcode
        how = f"was killed by signal {-code}" if code is not None and code < 0 else f"exited with status {code}"
        raise MergeBenchError(f"The merge process for '{out_dir}' {how} before it finished.",
                              hint="Check that the machine has enough free memory (a killed process is often out "
                                   "of memory); run again to resume the merge from its finished shards.")
    return outcome  # type: ignore[return-value]  # the child sends a MergeResult or one of the above


def _stop(child: BaseProcess) -> None:
    """End the child if it still runs (Ctrl-C or an error in the parent): SIGTERM, then SIGKILL."""
    if child.is_alive():
        logger.info("Stopping the merge process %s", child.pid)
        child.terminate()
        child.join(STOP_SECONDS)
        if child.is_alive():
            child.kill()
            child.join()


def _run_child(recipe: dict[str, Any], out_dir: Path, options: MergeOptions, sender: Connection,
               logs: multiprocessing.queues.Queue[logging.LogRecord], level: int) -> None:
    """The child's entry point: merge, send the outcome, never raise (the outcome says what happened)."""
    _die_with_parent()
    root = logging.getLogger()
    root.handlers[:] = [QueueHandler(logs)]
    root.setLevel(level)
    outcome: object
    try:
        from mergebench.merge.engine import merge

        outcome = merge(recipe, out_dir, options=options)
    except MergeBenchError as e:
        outcome = _Failure.of(e)
    except KeyboardInterrupt:  # the terminal's Ctrl-C reaches the whole process group; the parent decides
        sys.exit(130)
    except BaseException as e:  # reported to the parent, which raises it as an error
        full = DiskFullError.from_os_error(e) if isinstance(e, OSError) else None
        outcome = _Failure.of(full) if full is not None else _Crash(traceback.format_exc())
    with contextlib.suppress(BrokenPipeError):  # the parent is gone: nobody to tell
        sender.send(outcome)
    sender.close()


def _die_with_parent() -> None:
    """Linux: have the kernel send SIGKILL to this process when its parent dies (even by SIGKILL)."""
    if sys.platform != "linux":
        return
    with contextlib.suppress(OSError, AttributeError):
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        pr_set_pdeathsig = 1
        libc.prctl(pr_set_pdeathsig, signal.SIGKILL)


__all__ = ["merge_in_child"]
