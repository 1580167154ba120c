"""Model cards of merges: inherited license, warnings, every method's formula, pinned inputs, eval results."""

from __future__ import annotations

from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from mergebench.merge.card import EvalRow, render_model_card
from mergebench.merge.engine import merge
from mergebench.merge.inputs import prepare
from mergebench.merge.options import MergeOptions, MergeResult
from mergebench.methods import REGISTRY, get
from tests.engine._build import family, recipe


def _with_licenses(tmp_path: Path, licenses: list[str]) -> dict:
    base, experts, _, _ = family(tmp_path / "in", len(licenses) - 1)
    for folder, license_id in zip([base, *experts], licenses, strict=True):
        (folder / "README.md").write_text(f"---\nlicense: {license_id}\n---\n# model\n")
    return recipe(base, experts)


def test_license_is_inherited_when_parents_agree(tmp_path: Path) -> None:
    result = merge(_with_licenses(tmp_path, ["apache-2.0"] * 3), tmp_path / "out", options=MergeOptions(progress=False))
    card = ModelCard.load(result.out_dir / "README.md")
    assert card.data.license == "apache-2.0"
    assert "License warning" not in card.text


def test_differing_licenses_warn_on_the_card(tmp_path: Path, caplog) -> None:
    result = merge(_with_licenses(tmp_path, ["apache-2.0", "mit", "apache-2.0"]), tmp_path / "out",
                   options=MergeOptions(progress=False))
    card = ModelCard.load(result.out_dir / "README.md")
    assert card.data.license == "other"
    assert "License warning" in card.text and "mit" in card.text
    assert any("different licenses" in r.message for r in caplog.records)


def test_card_lists_formula_parameters_inputs_and_eval_results(tmp_path: Path) -> None:
    config = _with_licenses(tmp_path, ["mit", "mit"])
    config["parameters"] = {"scaling": 0.3}
    result = merge(config, tmp_path / "out", options=MergeOptions(progress=False))
    inputs = prepare(config)
    card = render_model_card(inputs.pinned, inputs.spec, inputs.params, [*inputs.experts, inputs.base], result,
                             [EvalRow(task="mb_gsm8k", metric="exact_match", value=0.25)])
    assert "θ = θ₀ + λ · Σᵢ wᵢ τᵢ" in card.text
    assert "`scaling=0.3`" in card.text
    assert "| expert |" in card.text and "math" in card.text
    assert "| mb_gsm8k | exact_match | 0.2500 |" in card.text
    results = card.data.eval_results
    assert results and results[0].metric_value == 0.25 and results[0].dataset_name == "mb_gsm8k"


# The contract's formula of each method (the merge-method table): the card of a merge made with the method must
# state it. Before metadata was declared, the card took "the docstring's second paragraph", which for RegMean is
# an introductory sentence.
CONTRACT_FORMULA = {
    "model_soup": ["θ₀ + λ·Σᵢ (wᵢ / Σⱼ wⱼ)·τᵢ", "uniform: wᵢ = 1/n"],
    "task_arithmetic": ["θ = θ₀ + λ · Σᵢ wᵢ τᵢ"],
    "ties": ["γ  = sign(Σᵢ τ̂ᵢ)", "aᵢ = [τ̂ᵢ ≠ 0 ∧ sign(τ̂ᵢ) = γ]", "mean: Δ = Σᵢ aᵢ τ̂ᵢ / max(1, Σᵢ aᵢ)"],
    "dare": ["mᵢ ~ Bernoulli(1 − p)", "τ̂ᵢ = mᵢ ⊙ τᵢ / (1 − p)", "θ = θ₀ + λ·Σᵢ wᵢ τ̂ᵢ"],
    "consensus": ["τ_MTL = Σⱼ wⱼτⱼ", "[ Σᵢ mᵢ ≥ k ]", "θ₀ + λ·(τ_MTL ⊙ c)"],
    "localize_stitch": ["cnt = Σᵢ Mᵢ", "Σᵢ (Mᵢ / max(1, cnt)) ⊙ wᵢτᵢ"],
    "regmean": ["G̃ᵢ = α·Gᵢ + (1 − α)·diag(Gᵢ)", "Wᵀ = (Σᵢ wᵢG̃ᵢ)⁻¹ Σᵢ wᵢG̃ᵢWᵢᵀ"],
    "fisher": ["θ = Σᵢ wᵢFᵢθᵢ / Σᵢ wᵢ(Fᵢ + 1e-10)"],
}


@pytest.fixture(scope="module")
def merged(tmp_path_factory: pytest.TempPathFactory) -> tuple[dict, MergeResult]:
    """One small task-arithmetic merge whose inputs and result every method's card is rendered from."""
    root = tmp_path_factory.mktemp("card")
    base, experts, _, _ = family(root / "in", 2)
    config = recipe(base, experts)
    return config, merge(config, root / "out", options=MergeOptions(progress=False))


def _card_for(method: str, merged: tuple[dict, MergeResult]) -> ModelCard:
    config, result = merged
    inputs = prepare(config)
    spec = get(method)
    pinned = inputs.pinned.model_copy(update={"method": method})
    return render_model_card(pinned, spec, spec.make_params({}), [*inputs.experts, inputs.base], result)


def test_the_contract_lists_every_method() -> None:
    assert sorted(CONTRACT_FORMULA) == sorted(REGISTRY.names())


@pytest.mark.parametrize("method", sorted(CONTRACT_FORMULA))
def test_every_methods_card_states_its_contract_formula(method: str, merged: tuple[dict, MergeResult]) -> None:
    text = _card_for(method, merged).text
    for line in CONTRACT_FORMULA[method]:
        assert line in text, f"the {method} card lacks {line!r}"


@pytest.mark.parametrize("method", sorted(CONTRACT_FORMULA))
def test_every_methods_card_shows_the_declared_formula_verbatim(method: str,
                                                                merged: tuple[dict, MergeResult]) -> None:
    spec = get(method)
    text = _card_for(method, merged).text
    assert f"```\n{spec.formula}\n```" in text
    assert f"**{spec.title}**" in text and f"[paper]({spec.paper})" in text


def test_each_eval_task_is_its_own_model_index_entry(merged: tuple[dict, MergeResult]) -> None:
    """huggingface_hub groups results by dataset type and config: two tasks of mergebench-eval without a config
    became one entry named after the first task, holding both metrics."""
    config, result = merged
    inputs = prepare(config)
    rows = [EvalRow(task="mb_gsm8k", metric="exact_match", value=0.25),
            EvalRow(task="mb_humaneval_plus", metric="pass@1", value=0.5)]
    card = render_model_card(inputs.pinned, inputs.spec, inputs.params, [*inputs.experts, inputs.base], result, rows)
    reloaded = ModelCard(str(card)).data.eval_results
    assert [(r.dataset_name, r.dataset_config, r.metric_type, r.metric_value) for r in reloaded] == [
        ("mb_gsm8k", "mb_gsm8k", "exact_match", 0.25), ("mb_humaneval_plus", "mb_humaneval_plus", "pass@1", 0.5)]
