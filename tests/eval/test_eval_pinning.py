"""`mergebench eval` names the exact weights it scored: a Hub model's commit sha, a local folder's fingerprint.

Before the refs module, a Hub model was loaded at whatever its default branch held and its results said
``revision: None``, so a leaderboard row could not say which weights it scored.
"""

from __future__ import annotations

import shutil
from pathlib import Path

from huggingface_hub import HfApi

from mergebench.eval import evaluate
from mergebench.fixtures import write_family_to_hub_root

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
