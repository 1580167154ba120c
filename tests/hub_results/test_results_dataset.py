"""The results dataset on the loopback Hub: one row per (model weights, evaluation data, task, settings); pushing
again replaces rows instead of adding copies, a concurrent push is not lost, and readers count a row once."""

from __future__ import annotations

from dataclasses import replace

import pandas as pd
import pytest
from huggingface_hub import HfApi, hf_hub_download
from huggingface_hub.errors import RevisionNotFoundError

from mergebench.eval import results as results_module
from mergebench.eval.leaderboard import read_results, results_from_rows
from mergebench.eval.results import Results, TaskResult, new_results, push_results, result_rows, row_id
from mergebench.eval.tasks import TASKS

REPO = "alice/mergebench-results"
DATA = {"kind": "hub", "location": "alice/mergebench-eval", "revision": "d" * 40}


def _results(scores: dict[str, float], *, revision: str | None = "a" * 40, max_samples: int | None = 4,
             finished_at: str = "2025-01-01T00:00:00+00:00") -> Results:
    results = new_results(model={"id": "alice/merge", "revision": revision, "role": "merged"},
                          settings={"suite": None, "tasks": list(scores), "backend": "transformers",
                                    "max_samples": max_samples, "seed": 1234},
                          eval_data=DATA, environment={})
    tasks = {n: TaskResult(name=n, status="ok", domain=TASKS[n].domain, role=TASKS[n].role, version=1,
                           main_metric="acc", score=s, metrics={"acc": s}, stderr={"acc": 0.05},
                           data={"source": "hub", "revision": DATA["revision"]}) for n, s in scores.items()}
    return replace(results, tasks=tasks, run={**results.run, "status": "complete", "finished_at": finished_at})


def _rows() -> pd.DataFrame:
    files = [f for f in HfApi().list_repo_files(REPO, repo_type="dataset") if f.endswith(".parquet")]
    return pd.concat([pd.read_parquet(hf_hub_download(REPO, f, repo_type="dataset")).assign(file=f) for f in files])


def test_pushing_again_replaces_rows_of_the_same_identity(hub) -> None:
    first = _results({"mb_tinybench_math": 0.5, "mb_tinybench_coding": 0.25})
    push_results(REPO, first)
    push_results(REPO, first)  # a resumed run pushes the same results again
    again = _results({"mb_tinybench_math": 0.75}, finished_at="2025-02-01T00:00:00+00:00")  # a re-submission
    push_results(REPO, again)

    rows = _rows()
    assert rows["file"].nunique() == 1 and len(rows) == 2
    assert dict(zip(rows["task"], rows["score"], strict=True)) == {"mb_tinybench_math": 0.75,
                                                                    "mb_tinybench_coding": 0.25}
    assert set(rows["run_id"]) == {first.run["id"], again.run["id"]}  # the coding row of the first run is kept
    assert rows["row_id"].is_unique
    assert set(rows["stderr_json"]) == {'{"acc": 0.05}'}


def test_other_settings_or_weights_are_other_rows(hub) -> None:
    push_results(REPO, _results({"mb_tinybench_math": 0.5}))
    push_results(REPO, _results({"mb_tinybench_math": 0.5}, max_samples=None))  # the full sets: another measurement
    push_results(REPO, _results({"mb_tinybench_math": 0.5}, revision="b" * 40))  # other weights
    push_results(REPO, _results({"mb_tinybench_math": 0.5}, revision=None))  # in-memory: each run is its own
    push_results(REPO, _results({"mb_tinybench_math": 0.5}, revision=None))
    rows = _rows()
    assert len(rows) == rows["file"].nunique() == 5 and rows["row_id"].is_unique


def test_identity_ignores_which_suite_listed_the_task_and_keeps_weights_over_commits() -> None:
    a = _results({"mb_tinybench_math": 0.5})
    listed_elsewhere = replace(a, settings={**a.settings, "suite": "tinybench", "tasks": ["x"]})
    assert row_id(a, a.tasks["mb_tinybench_math"]) == row_id(listed_elsewhere, a.tasks["mb_tinybench_math"])
    scored_then_moved = [replace(a, model={**a.model, "revision": rev, "weights": "files:1"}) for rev in "cd"]
    assert len({row_id(r, r.tasks["mb_tinybench_math"]) for r in scored_then_moved}) == 1


def test_a_push_that_lands_meanwhile_is_read_again_not_overwritten(hub, monkeypatch) -> None:
    read = results_module._existing_rows
    calls = []

    def racing(*args, **kwargs):  # the first read is followed by someone else's push of the same file
        calls.append(1)
        rows = read(*args, **kwargs)
        if len(calls) == 1:
            monkeypatch.setattr(results_module, "_existing_rows", read)
            push_results(REPO, _results({"mb_tinybench_coding": 0.25}))
            monkeypatch.setattr(results_module, "_existing_rows", racing)
        return rows

    monkeypatch.setattr(results_module, "_existing_rows", racing)
    push_results(REPO, _results({"mb_tinybench_math": 0.5}))
    assert len(calls) == 2  # the commit was refused (412) once, then made on top of the other push
    assert sorted(_rows()["task"]) == ["mb_tinybench_coding", "mb_tinybench_math"]


def test_readers_count_a_row_once_the_latest_wins_and_read_a_pinned_revision(hub) -> None:
    old = _results({"mb_tinybench_math": 0.5})
    new = _results({"mb_tinybench_math": 0.75}, finished_at="2025-03-01T00:00:00+00:00")
    [rebuilt] = results_from_rows(pd.DataFrame(result_rows(old) + result_rows(new)))  # e.g. an old per-run file
    assert (rebuilt.run["id"], rebuilt.score("mb_tinybench_math")) == (new.run["id"], 0.75)
    assert rebuilt.tasks["mb_tinybench_math"].stderr == {"acc": 0.05}

    push_results(REPO, new)
    sha = HfApi().dataset_info(REPO).sha
    [read] = read_results(REPO, revision=sha)
    assert read.score("mb_tinybench_math") == 0.75 and read.model["revision"] == "a" * 40
    with pytest.raises(RevisionNotFoundError):
        read_results(REPO, revision="0" * 40)


def test_a_push_asks_the_hub_to_create_the_dataset_once_not_twice(hub) -> None:
    push_results(REPO, _results({"mb_tinybench_math": 0.5}))
    push_results(REPO, _results({"mb_tinybench_math": 0.75}))
    assert hub.stats.count("POST", "/api/repos/create") == 2  # one per push (a no-op once the dataset exists), not two
