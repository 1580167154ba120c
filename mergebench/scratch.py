"""Temporary folders that a killed process does not leave behind: scratch folders and unfinished outputs.

Why: an evaluation, a merge into scratch, a trained expert or a unit's outputs live in a folder under
:func:`tempfile.gettempdir` for the length of one call, and an output folder is built in a hidden folder beside
its destination before one rename publishes it (:func:`mergebench.work.atomic_folder`). Both are removed at the
end of their block, on an error and on Ctrl-C. SIGKILL runs no clean-up (the OOM killer, a preempted Job,
``kill -9`` of a runner whose child merges), and such a folder can hold a whole model. So each of them has an
owner: the process that made it holds an exclusive ``flock`` on the folder's :data:`OWNER` file while the folder
lives, and the kernel drops that lock when the process ends, however it ends. Making a folder first removes its
kind's folders whose owner has gone (:func:`remove_orphans`); one whose owner is alive is never touched.

The owner file is locked before it is given its name, so a folder that has one is locked from the start: another
process sweeping at that moment sees either no owner file (and leaves the folder alone) or a held lock. Where the
filesystem has no ``flock`` (some network and FUSE mounts) a folder is made without an owner: it works as before,
and a kill leaves it behind.
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
SCRATCH = f"{PREFIX}*"
"""The glob of every scratch folder's name: making one sweeps them all, whatever their kind."""
OWNER = ".owner"
"""The file in an owned folder whose ``flock`` its owner holds."""


@contextlib.contextmanager
def owned_folder(root: Path, prefix: str, *, kin: str) -> Iterator[Path]:
    """A new empty folder ``root/prefix…`` owned by this process while the block runs and removed at its end
    (unless the block moved it away); before it is made, the folders ``root/kin`` (a glob) whose owner has gone
    are removed."""
    root = Path(root)
    remove_orphans(root, kin)
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=root))
    fd, claim = tempfile.mkstemp(prefix=".claim-", dir=folder)
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # nobody else can know this file yet: never waits
            os.rename(claim, folder / OWNER)
        except OSError as e:  # no flock on this filesystem: an ordinary temporary folder
            logger.debug("%s is not owned (%s): a kill would leave it", folder, e)
            os.unlink(claim)
        yield folder
    finally:
        shutil.rmtree(folder, ignore_errors=True)  # still holding the lock: no sweeper removes it beside us
        os.close(fd)


def disown(folder: Path) -> None:
    """Take the owner file out of ``folder`` before it is published; the lock is held until its block ends, and a
    folder without an owner file is never swept."""
    (Path(folder) / OWNER).unlink(missing_ok=True)


@contextlib.contextmanager
def scratch_folder(kind: str, *, root: Path | None = None) -> Iterator[Path]:
    """A new empty folder ``PREFIX + kind + "-…"`` under ``root`` (default: the system's temporary directory),
    removed when the block ends, and by the next scratch folder's maker if this process is killed first.

    >>> with scratch_folder("eval") as tmp:  # doctest: +SKIP
    ...     (tmp / "cache").mkdir()
    """
    with owned_folder(Path(root) if root is not None else Path(tempfile.gettempdir()), f"{PREFIX}{kind}-",
                      kin=SCRATCH) as folder:
        yield folder


@contextlib.contextmanager
def folder_or_scratch(folder: str | Path | None, kind: str, *, name: str = "model",
                      root: Path | None = None) -> Iterator[Path]:
    """``folder`` when one is given (kept at the end); else ``name`` inside a new :func:`scratch_folder`."""
    if folder:
        yield Path(folder)
        return
    with scratch_folder(kind, root=root) as scratch:
        yield scratch / name


def remove_orphans(root: Path, kin: str = SCRATCH) -> int:
    """Remove the folders ``root/kin`` (a glob) whose owner process has ended; return how many.

    A folder without an owner file (another program's, one being made or being published) is left alone, as is
    one whose owner file cannot be opened (another user's)."""
    removed = 0
    for owner in Path(root).glob(f"{kin}/{OWNER}"):
        try:
            fd = os.open(owner, os.O_RDONLY)
        except OSError:  # removed meanwhile by its owner, or not ours to read
            continue
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:  # its owner is alive (or the filesystem cannot tell)
                continue
            shutil.rmtree(owner.parent, ignore_errors=True)
            removed += 1
        finally:
            os.close(fd)
    if removed:
        logger.info("removed %d folder(s) %s left by killed MergeBench processes", removed, Path(root) / kin)
    return removed
