"""`mergebench eval` names the exact weights it scored: a Hub model's commit sha, a local folder's fingerprint; and
the refusal classifier that judged them, pinned the same way.

Before the refs module, a Hub model was loaded at whatever its default branch held and its results said
``revision: None``, so a leaderboard row could not say which weights it scored.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
from huggingface_hub import HfApi

from mergebench.errors import EvaluationError
from mergebench.eval import evaluate
from mergebench.eval.refusal import make_judge
from mergebench.fixtures import write_family_to_hub_root
from tests.eval._scripted import ScriptedModel

TASKS = ["mb_tiny_hellaswag"]


def test_a_hub_model_is_pinned_and_scored_at_that_commit(hub, hub_root: Path, tiny_llama) -> None:
    repos = write_family_to_hub_root(tiny_llama, hub_root)
    sha = HfApi().model_info(repos["math"]).sha
    results = evaluate(repos["math"], tasks=TASKS, max_samples=2, progress=False)
    assert results.model["id"] == repos["math"] and results.model["revision"] == sha
    local = evaluate(str(tiny_llama.experts["math"]), tasks=TASKS, max_samples=2, progress=False)
    assert local.tasks["mb_tiny_hellaswag"].outputs_sha256 == results.tasks["mb_tiny_hellaswag"].outputs_sha256


def test_an_explicit_revision_is_resolved_to_its_sha(hub, hub_root: Path, tiny_llama) -> None:
    repos = write_family_to_hub_root(tiny_llama, hub_root)
    sha = HfApi().model_info(repos["coding"]).sha
    results = evaluate(f"{repos['coding']}@main", tasks=TASKS, max_samples=2, progress=False)
    assert results.model["revision"] == sha


def test_a_local_model_is_named_by_its_content(tiny_llama, tmp_path: Path) -> None:
    folder = tmp_path / "model"
    shutil.copytree(tiny_llama.experts["math"], folder)
    first = evaluate(str(folder), tasks=TASKS, max_samples=2, progress=False).model["revision"]
    assert first.startswith("local:")
    shard = sorted(folder.glob("*.safetensors"))[0]
    shard.write_bytes(shard.read_bytes())  # rewritten: a new mtime, so another identity
    second = evaluate(str(folder), tasks=TASKS, max_samples=2, progress=False).model["revision"]
    assert second.startswith("local:") and second != first


def test_a_hub_judge_is_pinned_and_loaded_at_that_commit(hub, hub_root: Path, tiny_llama) -> None:
    """The classifier goes through the models' pinning: the results name its commit, and a judge pinned before its
    repo moved on asks for that commit, never the new head (the loopback Hub keeps no history: the old commit is
    gone, so loading it fails instead of quietly judging with other weights)."""
    judge = write_family_to_hub_root(tiny_llama, hub_root)["base"]
    sha = HfApi().model_info(judge).sha
    results = evaluate(ScriptedModel(lambda doc: "I can't help with that."), tasks=["mb_tiny_harmbench"],
                       max_samples=1, refusal_judge=judge, progress=False)
    assert results.settings["judge"] == f"classifier:{judge}@{sha}"
    assert results.tasks["mb_tiny_harmbench"].side_info["judge"]["name"] == f"classifier:{judge}@{sha}"

    pinned = make_judge(judge)
    HfApi().upload_file(path_or_fileobj=b"# a new commit\n", path_in_repo="NOTES.md", repo_id=judge)
    head = HfApi().model_info(judge).sha
    assert head != sha and make_judge(judge).name == f"classifier:{judge}@{head}"
    with pytest.raises(OSError, match=sha):
        pinned.load()


def test_a_judge_that_is_neither_a_folder_nor_a_repo_id_fails_before_any_work() -> None:
    with pytest.raises(EvaluationError) as e:
        evaluate(ScriptedModel(lambda doc: ""), tasks=["mb_tiny_harmbench"], refusal_judge="./no-such-judge",
                 progress=False)
    assert str(e.value).startswith("Refusal judge: Local folder './no-such-judge' does not exist")
    assert e.value.hint.startswith("Pass a classifier's folder or Hub id")
