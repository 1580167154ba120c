"""``mergebench tiny`` (``make demo``) prints one line per stage with a bar and an ETA, and nothing of its
libraries unless ``-v`` (issue #15). Runs a cut-down Tiny (:mod:`tests.tiny._cutdown`: the tiny Llama base,
2 training steps, two methods, 4 items per task) through the real command line, about a minute in all.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

from mergebench.domains import DOMAINS
from mergebench.fixtures import Family
from tests.tiny._cutdown import run_cutdown

STAGES = 1 + 1 + 5 + 6 + 2 * 2
"""data, base, five experts; the base's and five experts' evaluations; a merge and an evaluation per method."""
STAGE_LINE = re.compile(rf"^\[\s*(\d+)/{STAGES}\] [━╺─]{{40}} +\d+%  (ETA (\d+[smh]( \d+[smh])?|–)|done) +(.+)$")
NOISE = ("it/s", "s/it", "examples/s", "%|", "Generating ", "Loading weights", "Creating parquet", "Map",
         "lighteval", "batch size", "Warning", "\r")
"""Marks of library output: tqdm bars, datasets' split generation, transformers' loading, lighteval's logs."""


def _tiny(family: Family, recipes: Path, work: Path, *flags: str) -> subprocess.CompletedProcess:
    return run_cutdown(family.base, recipes, work, *flags)


def test_tiny_prints_one_line_per_stage_with_a_bar_and_an_eta(first_run) -> None:
    _, proc = first_run
    lines = proc.stderr.splitlines()
    assert len(lines) < 100, proc.stderr
    stage_lines = [m for m in map(STAGE_LINE.match, lines) if m]
    assert [int(m.group(1)) for m in stage_lines] == list(range(1, STAGES + 1)), proc.stderr
    assert len(lines) == STAGES, proc.stderr  # nothing but the stage lines
    labels = [m.group(5) for m in stage_lines]
    assert labels[0].startswith("data: ready in ") and labels[1].startswith("base model: converted in ")
    assert [label.split(": ")[0] for label in labels[2:7]] == [f"{d} expert" for d in DOMAINS]
    assert all(": trained (2 steps) in " in label for label in labels[2:7])
    assert labels[7].startswith("base evaluation: 6 task(s) evaluated in ")
    assert labels[-1].startswith("regmean evaluation: 6 task(s) evaluated in ")
    assert stage_lines[-1].group(2) == "done" and all(m.group(3) for m in stage_lines[7:-1])  # an ETA once timed
    assert not [line for line in lines if any(mark in line for mark in NOISE)]
    assert "mergebench space --results" in proc.stdout and "regmean" in proc.stdout


def test_a_second_run_reuses_every_stage(first_run, tiny_llama: Family, recipes: Path) -> None:
    work, _ = first_run
    proc = _tiny(tiny_llama, recipes, work)
    labels = [m.group(5) for m in map(STAGE_LINE.match, proc.stderr.splitlines()) if m]
    assert len(labels) == STAGES == len(proc.stderr.splitlines()), proc.stderr
    assert labels[0].startswith("data: ready in ")  # the data stage always checks its rows (milliseconds)
    assert all(label.endswith(": reused") for label in labels[1:]), labels


def test_verbose_shows_the_libraries_output(first_run, tiny_llama: Family, recipes: Path, tmp_path: Path) -> None:
    """``-v`` on a copy whose benchmark run is gone: data, base and experts are reused, the runner runs again."""
    work, quiet = first_run
    copy = tmp_path / "work"
    shutil.copytree(work, copy)
    shutil.rmtree(copy / "run")
    proc = _tiny(tiny_llama, recipes, copy, "-v")
    lines = proc.stderr.splitlines()
    assert len(lines) > 2 * len(quiet.stderr.splitlines()), proc.stderr
    assert any("INFO mergebench." in line for line in lines)
    assert any(mark in proc.stderr for mark in ("it/s", "Generating ", "Loading weights")), proc.stderr
    assert len([line for line in lines if STAGE_LINE.match(line)]) == STAGES
