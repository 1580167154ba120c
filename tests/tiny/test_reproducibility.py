"""Two MergeBench-Tiny runs from scratch on one machine give the same results files, measurements aside (issue 21).

The runs are cut down (:mod:`tests.tiny._cutdown`: the tiny Llama base, 2 training steps, two methods, 4 items
per task) but go through everything ``make demo`` does: data, base, experts, merges (RegMean's statistics
stage included), evaluations, leaderboard. Each run has its own work folder and its own MergeBench cache.
"""

from __future__ import annotations

import hashlib
import json
import subprocess
from dataclasses import replace
from pathlib import Path

import pytest

from mergebench.domains import DOMAINS
from mergebench.eval.results import load_results
from mergebench.fixtures import Family
from mergebench.tiny.reproducibility import DIGESTS, score_digest, score_digests
from tests.tiny._cutdown import run_cutdown


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def second_run(tiny_llama: Family, recipes: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("tiny-again") / "work"
    run_cutdown(tiny_llama.base, recipes, work)
    return work


def test_two_runs_from_scratch_give_identical_scores(first_run: tuple[Path, subprocess.CompletedProcess],
                                                     second_run: Path) -> None:
    first, _ = first_run
    one = json.loads((first / "run" / DIGESTS).read_text())
    two = json.loads((second_run / "run" / DIGESTS).read_text())
    assert len(one["files"]) == 1 + len(DOMAINS) + 2  # the base, five experts, two merges
    assert one == two
    assert score_digests(first / "run" / "results") == one["files"]  # the digests are of what is on disk
    for domain in DOMAINS:  # the experts are the same bytes
        assert _sha256(first / "experts" / domain / "model.safetensors") == \
            _sha256(second_run / "experts" / domain / "model.safetensors"), domain
    # the digests leave out only measurements and local names: those did differ between the runs
    a = load_results(first / "run" / "results" / "smollm2-135m-instruct-tiny" / "regmean.json")
    b = load_results(second_run / "run" / "results" / "smollm2-135m-instruct-tiny" / "regmean.json")
    assert a.run["id"] != b.run["id"] and a.model["id"] != b.model["id"]
    assert [t.score for t in a.tasks.values()] == [t.score for t in b.tasks.values()]


def test_the_digest_ignores_measurements_and_sees_every_score(first_run: tuple[Path, subprocess.CompletedProcess]
                                                              ) -> None:
    first, _ = first_run
    results = load_results(first / "run" / "results" / "smollm2-135m-instruct-tiny" / "base.json")
    name, task = next(iter(results.tasks.items()))
    measured = replace(results, run={**results.run, "id": "0" * 12, "finished_at": "2030-01-01T00:00:00+00:00"},
                       cost={**results.cost, "eval_seconds": 1e6},
                       tasks={**results.tasks, name: replace(task, seconds=123.0)},
                       model={**results.model, "id": "/elsewhere/base", "revision": "local:other"})
    assert score_digest(measured) == score_digest(results)
    changed = replace(results, tasks={**results.tasks, name: replace(task, score=(task.score or 0) + 0.25)})
    assert score_digest(changed) != score_digest(results)
    other_error = replace(results, tasks={**results.tasks, name: replace(task, stderr={"acc": 0.5})})
    assert score_digest(other_error) != score_digest(results)
