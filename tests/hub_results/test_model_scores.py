"""Scores in a model repo on the loopback Hub: ``.eval_results/*.yaml`` and ``model-index`` written in one commit,
read back with huggingface_hub's own parsers, replaced (never repeated) when scored again, refused when they
would name weights that were not measured or data that is not a Hub benchmark."""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import yaml
from huggingface_hub import HfApi, ModelCard, hf_hub_download, parse_eval_result_entries
from safetensors.numpy import save_file

from mergebench.errors import ScoresError
from mergebench.eval.hub_results import publish_scores, results_from_model_repo
from mergebench.eval.leaderboard import read_model_repos, table
from mergebench.eval.results import Results, TaskResult, new_results
from mergebench.eval.tasks import TASKS
from mergebench.hub.eval_results import weights_id

REPO, EVAL = "alice/tiny-merge", "alice/mergebench-eval"
EVAL_SHA = "e" * 40
SCORES = {"mb_tinybench_math": 0.75, "mb_tinybench_coding": 0.5, "mb_tinybench_general": 0.25}
JUDGE = f"classifier:alice/judge@{'j' * 40}"


def _push_model(tmp_path: Path, weights: float = 1.0) -> str:
    folder = tmp_path / f"model-{weights}"
    folder.mkdir()
    save_file({"w": np.full((2, 2), weights, dtype=np.float32)}, folder / "model.safetensors")
    (folder / "config.json").write_text(json.dumps({"model_type": "llama"}))
    (folder / "README.md").write_text("---\nlicense: apache-2.0\nmodel-index:\n- name: tiny-merge\n  results:\n"
                                      "  - task: {type: text-generation}\n    dataset: {type: other/bench, name: x}\n"
                                      "    metrics: [{type: acc, value: 0.1}]\n---\n# tiny merge\n")
    api = HfApi()
    api.create_repo(REPO, exist_ok=True)
    return api.upload_folder(repo_id=REPO, folder_path=folder).oid


def _results(revision: str, scores: dict[str, float] = SCORES, *, eval_data: dict | None = None) -> Results:
    results = new_results(
        model={"id": REPO, "revision": revision, "role": "merged", "base_model": "alice/tiny-llama",
               "method": "ties", "parameters": {"top_k": 0.2}, "experts": ["alice/e1", "alice/e2"]},
        settings={"suite": "tinybench", "tasks": list(scores), "backend": "transformers", "max_samples": 4,
                  "judge": JUDGE},
        eval_data=eval_data or {"kind": "hub", "location": EVAL, "revision": EVAL_SHA}, environment={})
    tasks = {name: TaskResult(name=name, status="ok", domain=TASKS[name].domain, role=TASKS[name].role,
                              version=TASKS[name].version, main_metric="acc", score=score, metrics={"acc": score},
                              stderr={"acc": 0.1}, num_samples=4, finished_at="2025-01-15T10:30:00+00:00",
                              side_info={"judge": {"name": JUDGE, "kind": "classifier"}}
                              if TASKS[name].domain == "safety" else {})
             for name, score in scores.items()}
    failed = TaskResult(name="mb_tinybench_safety", status="failed", domain="safety", role="tiny", version=1,
                        main_metric="acc", score=None, error={"type": "RuntimeError", "message": "boom"})
    return replace(results, tasks={**tasks, failed.name: failed},
                   run={**results.run, "status": "complete", "finished_at": "2025-01-15T10:31:00+00:00"})


def _eval_files() -> list[str]:
    return sorted(f for f in HfApi().list_repo_files(REPO) if f.startswith(".eval_results/"))


def _entries(path: str) -> list:
    return parse_eval_result_entries(yaml.safe_load(Path(hf_hub_download(REPO, path)).read_text()))


def test_scores_land_in_one_commit_and_read_back_with_huggingface_hubs_parsers(hub, tmp_path) -> None:
    sha = _push_model(tmp_path)
    publish_scores(_results(sha), results_repo="alice/mergebench-results")

    api = HfApi()
    assert len(api.list_repo_commits(REPO)) >= 1
    assert _eval_files() == [f".eval_results/{t}.yaml" for t in sorted(SCORES)]  # failed task: no entry
    [entry] = _entries(".eval_results/mb_tinybench_math.yaml")
    assert (entry.dataset_id, entry.task_id, entry.value, entry.dataset_revision) == (EVAL, "mb_tinybench_math",
                                                                                      0.75, EVAL_SHA)
    assert entry.date == "2025-01-15T10:30:00+00:00"
    assert entry.source_url == f"{hub.url}/datasets/alice/mergebench-results"
    assert "partial: at most 4 per task" in entry.notes

    served = api.model_info(REPO, expand=["evalResults"]).eval_results  # the Hub API's model-centric view
    assert {(e.task_id, e.value) for e in served} == set(SCORES.items())

    card = ModelCard.load(REPO)
    card.validate()
    index = {(r.dataset_type, r.dataset_config, r.metric_type): r.metric_value for r in card.data.eval_results}
    assert index == {("other/bench", None, "acc"): 0.1, **{(EVAL, t, "acc"): v for t, v in SCORES.items()}}
    assert card.data.license == "apache-2.0" and "# tiny merge" in card.text  # the rest of the card is kept


def test_scoring_again_replaces_entries_and_model_index_results(hub, tmp_path) -> None:
    sha = _push_model(tmp_path)
    publish_scores(_results(sha))
    again = {**SCORES, "mb_tinybench_math": 1.0}
    rescored = _results(HfApi().model_info(REPO).sha, again)
    publish_scores(rescored)

    assert _eval_files() == [f".eval_results/{t}.yaml" for t in sorted(SCORES)]
    assert [(e.task_id, e.value) for e in _entries(".eval_results/mb_tinybench_math.yaml")] == [
        ("mb_tinybench_math", 1.0)]
    results = ModelCard.load(REPO).data.eval_results
    assert len(results) == 1 + len(SCORES)
    assert {r.dataset_config: r.metric_value for r in results if r.dataset_type == EVAL} == again

    files_before, sha_before = _eval_files(), HfApi().model_info(REPO).sha
    publish_scores(rescored)  # the same results published again (a resumed run): no change at all
    assert (_eval_files(), HfApi().model_info(REPO).sha) == (files_before, sha_before)


def test_scores_rebuild_the_results_from_the_repo_alone(hub, tmp_path) -> None:
    sha = _push_model(tmp_path)
    scores = {**SCORES, "mb_tiny_harmbench": 1.0}  # a safety task: its score depends on the judge
    original, weights = _results(sha, scores), weights_id(REPO, sha)
    publish_scores(original)
    head = HfApi().model_info(REPO).sha
    [judged] = _entries(".eval_results/mb_tiny_harmbench.yaml")
    assert judged.notes.endswith(f", judged by {JUDGE}")  # shown beside the score on the Hub
    assert "judged" not in _entries(".eval_results/mb_tinybench_math.yaml")[0].notes

    rebuilt = results_from_model_repo(f"{REPO}@{head}")
    kept = ("role", "base_model", "method", "parameters", "experts")
    assert rebuilt.model == {"id": REPO, "revision": head, "weights": weights,
                             **{k: original.model[k] for k in kept}}
    assert head != sha  # publishing scores moved the head, not the weights
    assert {n: t.score for n, t in rebuilt.tasks.items()} == scores
    assert {n: (t.domain, t.stderr) for n, t in rebuilt.tasks.items()} == {
        n: (TASKS[n].domain, {"acc": 0.1}) for n in scores}
    assert rebuilt.eval_data == {"kind": "hub", "location": EVAL, "revision": EVAL_SHA}
    assert rebuilt.settings["max_samples"] == 4 and rebuilt.run["id"] == original.run["id"]
    assert rebuilt.settings["judge"] == JUDGE
    [row] = table(read_model_repos([f"{REPO}@{head}"])).to_dict("records")  # the leaderboard from the repo alone
    assert (row["model"], row["judge"], row["task:mb_tiny_harmbench"]) == (REPO, JUDGE, 1.0)


def test_scores_of_weights_that_changed_since_are_refused(hub, tmp_path) -> None:
    scored = _push_model(tmp_path, weights=1.0)
    _push_model(tmp_path, weights=2.0)  # someone pushed other weights meanwhile
    with pytest.raises(ScoresError, match="moved from the scored revision") as e:
        publish_scores(_results(scored))
    assert e.value.hint.startswith(f"Evaluate '{REPO}' again")
    assert _eval_files() == []


def test_only_hub_models_scored_on_hub_data_can_publish(hub, tmp_path) -> None:
    sha = _push_model(tmp_path)
    with pytest.raises(ScoresError, match="packaged evaluation data") as e:
        publish_scores(_results(sha, eval_data={"kind": "packaged", "location": "/tmp/x", "revision": None}))
    assert "--eval-data org/mergebench-eval" in e.value.hint
    with pytest.raises(ScoresError, match="not a Hub model repo pinned to a commit"):
        publish_scores(replace(_results("local:abc"), model={"id": str(tmp_path), "revision": "local:abc"}))
    assert _eval_files() == []


def test_a_malformed_eval_results_file_is_an_error_item_the_parser_skips(hub, tmp_path) -> None:
    sha = _push_model(tmp_path)
    publish_scores(_results(sha))
    HfApi().upload_file(path_or_fileobj=b"- dataset: {id: x}\n  value: 1\n", path_in_repo=".eval_results/bad.yaml",
                        repo_id=REPO)
    served = HfApi().model_info(REPO, expand=["evalResults"]).eval_results
    assert {e.task_id for e in served} == set(SCORES)  # the bad file's item is skipped by huggingface_hub
    with pytest.raises(ScoresError, match=r"'\.eval_results/bad\.yaml' .* is not a valid eval results file"):
        results_from_model_repo(REPO)
