"""Generated files match the code: ``docs/methods.md`` and the example cards in ``model_cards/`` and
``datasets_cards/`` (run `python -m mergebench.docs` after changing a method, a template or a renderer)."""

from __future__ import annotations

import pytest
from huggingface_hub import DatasetCard, ModelCard

from mergebench.docs import EXAMPLE_PARAMETERS, ROOT, generated_files
from mergebench.methods import REGISTRY, get

GENERATED = generated_files()
EXAMPLE_FOLDERS = ("model_cards", "datasets_cards")


@pytest.mark.parametrize("path", sorted(GENERATED))
def test_generated_file_is_up_to_date(path: str) -> None:
    committed = ROOT / path
    assert committed.is_file(), f"{path} is missing: run `python -m mergebench.docs`"
    assert committed.read_text(encoding="utf-8") == GENERATED[path], f"{path} is stale: run `python -m mergebench.docs`"


@pytest.mark.parametrize("folder", EXAMPLE_FOLDERS)
def test_example_folders_hold_only_generated_files(folder: str) -> None:
    present = {p.relative_to(ROOT).as_posix() for p in (ROOT / folder).iterdir()}
    assert present == {p for p in GENERATED if p.startswith(f"{folder}/")}


def test_every_card_kind_has_an_example() -> None:
    merged = [p for p in GENERATED if p.startswith("model_cards/merged-")]
    assert merged and {"model_cards/expert.md", "datasets_cards/domain-math.md", "datasets_cards/eval.md",
                       "model_cards/README.md", "datasets_cards/README.md"} <= set(GENERATED)
    for path in merged:
        assert ModelCard(GENERATED[path]).data.base_model_relation == "merge"
    assert ModelCard(GENERATED["model_cards/expert.md"]).data.base_model_relation == "finetune"
    assert DatasetCard(GENERATED["datasets_cards/domain-math.md"]).data.pretty_name == "MergeBench math"
    configs = DatasetCard(GENERATED["datasets_cards/eval.md"]).data.configs
    assert [c["config_name"] for c in configs] == ["gsm8k", "math", "mmlu_stem", "mmlu"]
    for folder in EXAMPLE_FOLDERS:
        assert "python -m mergebench.docs" in GENERATED[f"{folder}/README.md"]
        assert "mergebench/cards/templates/" in GENERATED[f"{folder}/README.md"]


def test_examples_name_no_local_path_and_render_the_same_twice() -> None:
    assert generated_files() == GENERATED
    for path, text in GENERATED.items():
        for local in (str(ROOT), "/tmp/", "/home/", "/root/"):
            assert local not in text, f"{path} names the local path {local!r}"


@pytest.mark.parametrize("method", sorted(EXAMPLE_PARAMETERS))
def test_merged_examples_state_the_declared_formula(method: str) -> None:
    spec = get(method)
    text = GENERATED[f"model_cards/merged-{method.replace('_', '-')}.md"]
    assert f"```\n{spec.formula}\n```" in text and f"**{spec.title}**." in text


def test_methods_page_shows_each_declared_formula_and_range() -> None:
    page = GENERATED["docs/methods.md"]
    for spec in REGISTRY:
        assert "\n".join(["```", spec.formula, "```"]) in page
        for p in spec.parameters:
            assert f"| `{p.name}` |" in page and (not p.range or f"| {p.range} |" in page)
