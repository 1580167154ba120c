"""`make demo`'s library call: a real streaming merge through a loopback Hub, pushed and reloaded."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard

from mergebench.demo import run_demo


def test_demo_streams_merges_pushes_and_reloads(tmp_path: Path) -> None:
    result = run_demo(tmp_path / "demo", method="task_arithmetic", progress=False)
    assert result.hub_url.startswith("http://127.0.0.1:")
    assert result.merge.bytes_read > 0 and len(result.merge.recipe.models) == 5
    pushed = tmp_path / "demo" / "hub" / "models" / result.pushed_repo
    assert (pushed / "README.md").exists() and list(pushed.glob("*.safetensors"))
    card = ModelCard.load(result.downloaded_to / "README.md")
    assert card.data.base_model_relation == "merge" and len(card.data.base_model) == 6
    assert result.logits_shape[:2] == (1, 4)
