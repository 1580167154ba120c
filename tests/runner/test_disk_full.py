"""A full disk is reported as the machine's problem with what to do, never as "a bug in MergeBench": from the
console entry point and from the runner's merge child process."""

from __future__ import annotations

import errno
import logging
import multiprocessing
from pathlib import Path

import pytest

from mergebench import cli
from mergebench.errors import DiskFullError
from mergebench.merge.options import MergeOptions
from mergebench.runner import isolated


def _enospc(path: Path) -> OSError:
    return OSError(errno.ENOSPC, "No space left on device", str(path))


def test_only_a_full_disk_or_quota_is_a_disk_full_error(tmp_path: Path) -> None:
    full = DiskFullError.from_os_error(_enospc(tmp_path / "stats.bin"))
    assert isinstance(full, DiskFullError) and isinstance(full, OSError)
    assert str(full) == f"No space left on the disk while writing '{tmp_path / 'stats.bin'}' (No space left on device)."
    assert "Free disk space" in full.hint and "again" in full.hint
    assert DiskFullError.from_os_error(OSError(errno.EDQUOT, "Disk quota exceeded")) is not None
    assert DiskFullError.from_os_error(OSError(errno.EACCES, "Permission denied", "x")) is None
    assert DiskFullError.from_os_error(FileNotFoundError(errno.ENOENT, "No such file", "x")) is None


def test_the_console_entry_point_prints_error_and_hint(monkeypatch: pytest.MonkeyPatch, capsys, tmp_path: Path) -> None:
    def app() -> None:
        raise _enospc(tmp_path / "model-00001.safetensors")

    monkeypatch.setattr(cli, "app", app)
    with pytest.raises(SystemExit) as exit_info:
        cli.main()
    assert exit_info.value.code == 1
    err = capsys.readouterr().err
    assert "Error: No space left on the disk while writing" in err and "Hint: Free disk space" in err
    assert "Traceback" not in err and "bug" not in err

    def other() -> None:
        raise PermissionError(errno.EACCES, "Permission denied", "x")

    monkeypatch.setattr(cli, "app", other)
    with pytest.raises(PermissionError):  # any other OSError is not dressed up
        cli.main()


def test_the_merge_child_sends_a_disk_full_error_not_a_crash(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """The child's entry point, run here (a spawned child would not see the patch): its outcome rebuilds, in the
    parent, into the DiskFullError the parent raises."""
    import mergebench.merge.engine as engine

    def merge(recipe, out_dir, options):
        raise _enospc(Path(out_dir) / "model.safetensors")

    monkeypatch.setattr(engine, "merge", merge)
    receiver, sender = multiprocessing.Pipe(duplex=False)
    logs = multiprocessing.get_context("spawn").Queue()
    monkeypatch.setattr(isolated, "_die_with_parent", lambda: None)
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    try:
        isolated._run_child({}, tmp_path / "out", MergeOptions(progress=False), sender, logs, 30)
    finally:  # _run_child points the root logger at the queue, as a child's should
        root.handlers[:] = handlers
        root.setLevel(level)
    outcome = receiver.recv()
    with pytest.raises(DiskFullError, match="No space left on the disk") as info:
        isolated._result_of(outcome, None, tmp_path / "out")  # type: ignore[arg-type]
    assert "bug" not in (info.value.hint or "")
