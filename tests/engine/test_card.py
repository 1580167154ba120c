"""Model cards of merges: inherited license, warnings, formula, pinned inputs, eval results."""

from __future__ import annotations

from pathlib import Path

from huggingface_hub import ModelCard

from mergebench.merge.card import EvalRow, render_model_card
from mergebench.merge.engine import MergeOptions, merge, prepare
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
