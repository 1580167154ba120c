"""Experts through the loopback Hub: a Hub base and Hub datasets pinned to their commits, the expert pushed
with a card the Hub accepts and that names its parent, downloaded back and loaded; evaluation results added
to ``model-index`` afterwards, as the runner does before pushing."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi, ModelCard, snapshot_download
from transformers import AutoModelForCausalLM

from mergebench.eval.results import TaskResult, new_results
from mergebench.fixtures import DOMAINS
from mergebench.hub.models import read_local_header
from mergebench.train import add_eval_results, load_train_config, train_expert
from mergebench.train.card import validate_expert_card
from tests.train._data import TINY_BASE as BASE
from tests.train._data import push_training_inputs


@pytest.fixture
def hub_inputs(hub, tiny_llama, tmp_path: Path) -> dict[str, str]:
    """The tiny Llama base (with an Apache-2.0 card) and the five domain datasets, pushed to the loopback Hub."""
    return push_training_inputs(tiny_llama.base, DOMAINS, tmp_path)


def test_pushed_expert_card_validates_names_its_parent_and_round_trips(hub_inputs, tmp_path: Path) -> None:
    api = HfApi()
    config = load_train_config("tiny", max_steps=2, per_device_batch_size=2, effective_batch_size=2, max_length=64,
                               save_dtype="bfloat16", num_threads=1)
    result = train_expert(base=BASE, domain="math", data={"math": hub_inputs["math"] + "@main"},
                          out_dir=tmp_path / "tiny-llama_math", config=config, push_to="mergebench/tiny-llama_math",
                          progress=False)
    assert result.base_revision == api.model_info(BASE).sha
    assert result.data_revisions == {"math": api.dataset_info(hub_inputs["math"]).sha}
    assert result.pushed_url and "mergebench/tiny-llama_math" in result.pushed_url

    local = Path(snapshot_download("mergebench/tiny-llama_math", local_dir=tmp_path / "downloaded"))
    card = ModelCard.load(local / "README.md")
    card.validate()  # POSTs the front matter to the loopback Hub's /api/validate-yaml
    assert (card.data.base_model, card.data.base_model_relation) == (BASE, "finetune")
    assert card.data.datasets == [hub_inputs["math"]] and card.data.license == "apache-2.0"
    assert {"mergebench", "mergebench-expert", "math"} <= set(card.data.tags)
    assert f"learning_rate: {config.learning_rate}" in card.text and result.base_revision in card.text  # full config
    manifest = yaml.safe_load((local / "mergebench_train.yaml").read_text())
    assert manifest["base"] == {"source": BASE, "repo_id": BASE, "revision": result.base_revision}
    assert {t.dtype for t in read_local_header(local / "model.safetensors", model="x").tensors.values()} == {"BF16"}
    assert AutoModelForCausalLM.from_pretrained(local).config.model_type == "llama"

    results = new_results(model={"id": "mergebench/tiny-llama_math"}, settings={}, environment={},
                          eval_data={"kind": "hub", "location": "mergebench/mergebench-eval", "revision": "abc"})
    ok = TaskResult(name="mb_gsm8k", status="ok", domain="math", role="test", version=1, main_metric="exact_match",
                    score=0.25)
    failed = TaskResult(name="mb_math", status="failed", domain="math", role="test", version=1,
                        main_metric="exact_match", score=None)
    results.tasks.update({ok.name: ok, failed.name: failed})
    add_eval_results(result.out_dir, results)
    card = ModelCard.load(result.out_dir / "README.md")
    validate_expert_card(card)
    [entry] = card.data.eval_results
    assert (entry.dataset_name, entry.dataset_type, entry.metric_type, entry.metric_value) == \
        ("mb_gsm8k", "mergebench/mergebench-eval", "exact_match", 0.25)
    assert card.data.base_model == BASE and "| mb_gsm8k | exact_match | 0.2500 |" in card.text


def test_multitask_baseline_trains_on_all_five_hub_datasets(hub_inputs, tmp_path: Path) -> None:
    config = load_train_config("tiny", max_steps=2, per_device_batch_size=2, effective_batch_size=2, max_length=64,
                               num_threads=1)
    result = train_expert(base=BASE, domain="all", data=hub_inputs, out_dir=tmp_path / "tiny-llama_all",
                          config=config, push_to="mergebench/tiny-llama_all", progress=False)
    assert set(result.data_revisions) == set(DOMAINS) and all(len(v) == 40 for v in result.data_revisions.values())
    # rows whose response starts after 64 tokens carry no loss and are dropped, and counted
    assert {d: s.rows + s.rows_dropped for d, s in result.data_stats.items()} == dict.fromkeys(DOMAINS, 16)
    card = ModelCard.load(Path(snapshot_download("mergebench/tiny-llama_all")) / "README.md")
    card.validate()
    assert card.data.datasets == sorted(hub_inputs.values()) and "multitask" in card.data.tags
