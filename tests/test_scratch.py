"""Scratch folders: removed at the end of their block, and by the next maker once their owner has been killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mergebench.scratch import OWNER, PREFIX, folder_or_scratch, remove_orphans, scratch_folder

_HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mergebench.scratch import scratch_folder
    with scratch_folder("merge", root=Path(sys.argv[1])) as folder:
        (folder / "model.safetensors").write_bytes(b"x" * 4096)
        print(folder, flush=True)
        time.sleep(600)
""")


def _holder(root: Path) -> tuple[subprocess.Popen[str], Path]:
    """A process that made a scratch folder under ``root`` and is still in its block."""
    process = subprocess.Popen([sys.executable, "-c", _HOLD, str(root)], stdout=subprocess.PIPE, text=True)
    assert process.stdout is not None
    return process, Path(process.stdout.readline().strip())


def test_a_scratch_folder_is_owned_while_it_lives_and_removed_after(tmp_path: Path) -> None:
    with scratch_folder("eval", root=tmp_path) as folder:
        assert folder.parent == tmp_path and folder.name.startswith(f"{PREFIX}eval-")
        assert [p.name for p in folder.iterdir()] == [OWNER]
        (folder / "cache").mkdir()
        assert remove_orphans(tmp_path) == 0 and folder.is_dir()  # its owner (this process) is alive
    assert not folder.exists()
    with pytest.raises(RuntimeError), scratch_folder("eval", root=tmp_path) as failed:
        raise RuntimeError("boom")
    assert not failed.exists()
    assert list(tmp_path.iterdir()) == []


def test_a_killed_owners_folder_is_removed_by_the_next_maker_and_a_live_ones_is_kept(tmp_path: Path) -> None:
    killed, orphan = _holder(tmp_path)
    alive, kept = _holder(tmp_path)
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        assert (orphan / "model.safetensors").is_file()  # SIGKILL ran no clean-up
        foreign = [tmp_path / f"{PREFIX}sandbox-abc", tmp_path / "other-program"]  # no owner file: not ours
        for folder in foreign:
            folder.mkdir()
        with scratch_folder("eval", root=tmp_path) as new:
            assert not orphan.exists()
            assert (kept / "model.safetensors").is_file()
            assert all(folder.is_dir() for folder in foreign)
        assert not new.exists()
    finally:
        alive.kill()
        alive.wait()
    assert remove_orphans(tmp_path) == 1 and not kept.exists()  # once its owner is gone too
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(folder.name for folder in foreign)


def test_folder_or_scratch_keeps_a_given_folder(tmp_path: Path) -> None:
    with folder_or_scratch(tmp_path / "run" / "model", "merge") as given:
        assert given == tmp_path / "run" / "model"
    with folder_or_scratch(None, "merge", root=tmp_path) as scratch:
        assert scratch.name == "model" and scratch.parent.name.startswith(f"{PREFIX}merge-")
        assert not scratch.exists()  # the caller makes it
    assert not scratch.parent.exists()
