"""Tasks read the ``mergebench-eval`` dataset repo from the (loopback) Hub, pinned to one commit."""

from __future__ import annotations

import pytest
from huggingface_hub import HfApi

from mergebench.errors import EvaluationError
from mergebench.eval.run import evaluate
from tests.eval._scripted import ScriptedModel


def test_tasks_read_the_eval_repo_from_the_hub_at_one_commit(hub, tmp_path):
    from mergebench.data.evalrepo import build_eval_repo

    build_eval_repo(tmp_path / "eval", names=["mmlu", "xstest"], push_to="mergebench/mergebench-eval")
    sha = HfApi().dataset_info("mergebench/mergebench-eval").sha
    answer = ScriptedModel(lambda doc: "Sure, here is some general information about that.")
    results = evaluate(answer, tasks=["mb_mmlu", "mb_tiny_xstest"], eval_data="mergebench/mergebench-eval",
                       progress=False)
    assert results.eval_data == {"kind": "hub", "location": "mergebench/mergebench-eval", "revision": sha}
    mmlu, xstest = results.tasks["mb_mmlu"], results.tasks["mb_tiny_xstest"]
    assert (mmlu.status, mmlu.num_samples) == ("ok", 3)
    assert mmlu.data == {"source": "hub", "repo": "mergebench/mergebench-eval", "revision": sha, "config": "mmlu"}
    assert (xstest.status, xstest.num_samples, xstest.score) == ("ok", 12, 1.0)


def test_a_missing_config_fails_that_task_only(hub, tmp_path):
    from mergebench.data.evalrepo import build_eval_repo

    build_eval_repo(tmp_path / "eval", names=["mmlu"], push_to="mergebench/mergebench-eval")
    results = evaluate(ScriptedModel(lambda doc: "ok"), tasks=["mb_mmlu", "mb_triviaqa"],
                       eval_data="mergebench/mergebench-eval", progress=False)
    assert results.tasks["mb_mmlu"].status == "ok"
    assert results.tasks["mb_triviaqa"].status == "failed"
    assert "triviaqa" in results.tasks["mb_triviaqa"].error["message"]


def test_eval_data_that_is_neither_folder_nor_repo_id_is_a_clear_error(tmp_path):
    with pytest.raises(EvaluationError, match="neither an existing folder nor a Hub dataset id"):
        evaluate(ScriptedModel(lambda doc: ""), tasks=["mb_mmlu"], eval_data=str(tmp_path / "missing" / "x"),
                 progress=False)


def test_eval_data_cut_short_by_the_network_is_downloaded_again_not_scored(hub, tmp_path):
    from mergebench.data.evalrepo import build_eval_repo

    build_eval_repo(tmp_path / "eval", names=["mmlu", "pubmedqa"], push_to="mergebench/mergebench-eval")
    answer = ScriptedModel(lambda doc: "yes")
    tasks = ["mb_mmlu", "mb_pubmedqa"]
    short = hub.faults.short_body(100, times=2, path_glob="/datasets/*")  # Content-Length agrees: only sizes tell
    faulted = evaluate(answer, tasks=tasks, eval_data="mergebench/mergebench-eval", progress=False)
    assert short.fired == 2
    clean = evaluate(answer, tasks=tasks, eval_data="mergebench/mergebench-eval", progress=False)
    for task in tasks:
        ran, want = faulted.tasks[task], clean.tasks[task]
        assert (ran.status, ran.num_samples, ran.score) == (want.status, want.num_samples, want.score) and \
            want.status == "ok", task
