"""Owned folders (scratch folders, unfinished atomic outputs): removed at the end of their block, and by the next
maker once their owner has been killed."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from mergebench.scratch import OWNER, PREFIX, folder_or_scratch, remove_orphans, scratch_folder
from mergebench.work import atomic_folder

_HOLD = textwrap.dedent("""
    import sys, time
    from pathlib import Path
    from mergebench.scratch import scratch_folder
    from mergebench.work import atomic_folder
    place = Path(sys.argv[1])
    with scratch_folder("merge", root=place) if sys.argv[2] == "scratch" else atomic_folder(place) as folder:
        (folder / "model.safetensors").write_bytes(b"x" * 4096)
        print(folder, flush=True)
        time.sleep(600)
""")


def _holder(place: Path, kind: str = "scratch") -> tuple[subprocess.Popen[str], Path]:
    """A process that made a scratch folder under ``place`` (or is building the folder ``place``: ``kind``
    "atomic") and is still in its block."""
    process = subprocess.Popen([sys.executable, "-c", _HOLD, str(place), kind], stdout=subprocess.PIPE, text=True)
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


def test_an_output_folder_a_killed_build_left_is_removed_by_the_next_build(tmp_path: Path) -> None:
    target = tmp_path / "experts" / "math"
    killed, unfinished = _holder(target, "atomic")
    alive, building = _holder(tmp_path / "experts" / "math.v2", "atomic")  # its kin by name, but alive
    try:
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait()
        assert unfinished.parent == target.parent and unfinished.name.startswith(".math.")
        assert (unfinished / "model.safetensors").is_file() and not target.exists()
        swapped = target.with_name(".math.old-0123abcd")  # a build killed between its two renames
        swapped.mkdir()
        with atomic_folder(target) as tmp:
            assert not unfinished.exists() and not swapped.exists()
            assert (building / "model.safetensors").is_file()
            (tmp / "config.json").write_text("{}")
    finally:
        alive.kill()
        alive.wait()
    assert sorted(p.name for p in target.iterdir()) == ["config.json"]  # the owner file is not published
    assert (target / "config.json").stat().st_mode & 0o777 == 0o644


def test_without_flock_a_folder_is_made_unowned_and_never_swept(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """Some network and FUSE mounts refuse ``flock``: the folder works as an ordinary temporary folder."""
    def refuse(fd: int, operation: int) -> None:
        raise OSError(95, "Operation not supported")

    monkeypatch.setattr("mergebench.scratch.fcntl.flock", refuse)
    with scratch_folder("eval", root=tmp_path) as folder:
        assert list(folder.iterdir()) == []
        assert remove_orphans(tmp_path) == 0 and folder.is_dir()
    assert not folder.exists()
