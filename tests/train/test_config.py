"""The training recipes: the paper's values, round trips, overrides, and errors that name the fix."""

from __future__ import annotations

import pytest
import yaml

from mergebench.errors import ConfigError
from mergebench.train import TrainConfig, load_train_config
from mergebench.train.config import RECIPES


def test_paper_recipe_is_the_papers() -> None:
    c = load_train_config()  # benchmark-spec §2
    assert (c.name, c.max_length, c.packing, c.effective_batch_size, c.epochs, c.max_steps) == \
        ("paper", 2048, True, 160, 2.0, None)
    assert (c.learning_rate, c.lr_scheduler, c.warmup_ratio, c.optimizer, c.weight_decay, c.max_grad_norm) == \
        (2e-5, "cosine", 0.1, "adamw_torch", 0.0, 1.0)
    assert (c.precision, c.save_dtype) == ("bf16", "bfloat16")
    assert c.gradient_accumulation(8) == 5 and c.gradient_accumulation(1) == 40


def test_tiny_recipe_trains_and_saves_float32_for_a_fixed_budget() -> None:
    c = load_train_config("tiny")
    assert (c.save_dtype, c.max_steps is not None, c.max_length <= 256) == ("float32", True, True)


@pytest.mark.parametrize("name", sorted(p.stem for p in RECIPES.glob("*.yaml")))
def test_shipped_recipes_list_every_key_and_round_trip(name: str, tmp_path) -> None:
    raw = yaml.safe_load((RECIPES / f"{name}.yaml").read_text())
    assert set(raw) == set(TrainConfig.model_fields)  # a recipe file documents every knob
    config = load_train_config(name)
    path = tmp_path / "mine.yaml"
    path.write_text(config.to_yaml())
    assert load_train_config(path) == config


def test_a_recipe_name_is_not_shadowed_by_a_folder_of_that_name(tmp_path, monkeypatch) -> None:
    (tmp_path / "tiny").mkdir()
    monkeypatch.chdir(tmp_path)
    assert load_train_config("tiny") == load_train_config(RECIPES / "tiny.yaml")


def test_overrides_are_validated_like_the_file() -> None:
    assert load_train_config("tiny", max_steps=3, learning_rate=1e-3).max_steps == 3
    with pytest.raises(ConfigError, match="max_steps"):
        load_train_config("tiny", max_steps=0)


def test_unknown_key_names_the_closest_one(tmp_path) -> None:
    path = tmp_path / "typo.yaml"
    path.write_text("learning_rat: 1.0e-4\n")
    with pytest.raises(ConfigError, match="learning_rat") as info:
        load_train_config(path)
    assert info.value.hint == "Did you mean 'learning_rate'?"
    with pytest.raises(ConfigError) as info:
        load_train_config("paper", warmup=0.2)
    assert info.value.hint == "Did you mean 'warmup_ratio'?"


def test_unknown_recipe_and_missing_file() -> None:
    with pytest.raises(ConfigError, match="Unknown training recipe 'papr'") as info:
        load_train_config("papr")
    assert "paper" in info.value.hint and "tiny" in info.value.hint
    with pytest.raises(ConfigError, match="does not exist"):
        load_train_config("missing/recipe.yaml")


def test_batch_that_does_not_divide_is_an_error() -> None:
    with pytest.raises(ConfigError, match=r"160 is not a multiple of .* 3 × 1 device\(s\) = 3") as info:
        load_train_config(per_device_batch_size=3).gradient_accumulation(1)
    assert "per_device_batch_size" in info.value.hint
