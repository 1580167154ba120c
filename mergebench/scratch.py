"""Scratch folders in the system's temporary directory that a killed process does not leave behind.

Why: an evaluation, a merge into scratch, a trained expert or a unit's outputs live in a folder under
:func:`tempfile.gettempdir` for the length of one call, and are removed at its end, on an error and on Ctrl-C.
SIGKILL runs no clean-up (the OOM killer, a preempted Job, ``kill -9`` of a runner whose child merges), and a
merge's scratch folder holds a whole model. So every scratch folder has an owner: the process that made it holds
an exclusive ``flock`` on the folder's :data:`OWNER` file while the folder lives, and the kernel drops that lock
when the process ends, however it ends. Making a scratch folder first removes the MergeBench scratch folders
whose owner has gone (:func:`remove_orphans`); one whose owner is alive is never touched.

The owner file is locked before it is given its name, so a folder that has one is locked from the start: another
process sweeping at that moment sees either no owner file (and leaves the folder alone) or a held lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path

logger = logging.getLogger(__name__)

PREFIX = "mergebench-"
"""Every scratch folder's name starts with this (then its kind, e.g. ``mergebench-eval-k2j4x_9a``)."""
OWNER = ".owner"
"""The file in a scratch folder whose ``flock`` its owner holds."""


@contextlib.contextmanager
def scratch_folder(kind: str, *, root: Path | None = None) -> Iterator[Path]:
    """A new empty folder ``PREFIX + kind + "-…"`` under ``root`` (default: the system's temporary directory),
    removed when the block ends, and by the next scratch folder's maker if this process is killed first.

    >>> with scratch_folder("eval") as tmp:  # doctest: +SKIP
    ...     (tmp / "cache").mkdir()
    """
    root = Path(root) if root is not None else Path(tempfile.gettempdir())
    remove_orphans(root)
    folder = Path(tempfile.mkdtemp(prefix=f"{PREFIX}{kind}-", dir=root))
    fd, claim = tempfile.mkstemp(prefix=".claim-", dir=folder)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # nobody else can know this file yet: never waits
        os.rename(claim, folder / OWNER)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # still holding the lock: no sweeper removes it beside us
        os.close(fd)


def remove_orphans(root: Path) -> int:
    """Remove the scratch folders under ``root`` whose owner process has ended; return how many.

    A folder without an owner file (another program's, or one being made) is left alone, as is one whose owner
    file cannot be opened (another user's)."""
    removed = 0
    for owner in Path(root).glob(f"{PREFIX}*/{OWNER}"):
        try:
            fd = os.open(owner, os.O_RDONLY)
        except OSError:  # removed meanwhile by its owner, or not ours to read
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:  # its owner is alive
                continue
            shutil.rmtree(owner.parent, ignore_errors=True)
            removed += 1
        finally:
            os.close(fd)
    if removed:
        logger.info("removed %d scratch folder(s) left in %s by killed MergeBench processes", removed, root)
    return removed


@contextlib.contextmanager
def folder_or_scratch(folder: str | Path | None, kind: str, *, name: str = "model",
                      root: Path | None = None) -> Iterator[Path]:
    """``folder`` when one is given (kept at the end); else ``name`` inside a new :func:`scratch_folder`."""
    if folder:
        yield Path(folder)
        return
    with scratch_folder(kind, root=root) as scratch:
        yield scratch / name
