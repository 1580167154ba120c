"""Recipe weights a method cannot use are a ConfigError with a hint, never a ZeroDivisionError.

``model_soup`` divides by Σᵢ wᵢ (as do ``regmean`` and ``fisher`` for tensors without statistics), so weights
summing to 0 are rejected when the parameters are validated, and again by the method itself.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml

from mergebench.errors import ConfigError
from mergebench.methods import REGISTRY, MergeContext, get
from tests.engine._build import family, recipe

MERGEBENCH = str(Path(sys.executable).parent / "mergebench")


def test_model_soup_rejects_weights_summing_to_zero_at_validation() -> None:
    with pytest.raises(ConfigError, match=r"sum to 0") as info:
        get("model_soup").make_params({}, weights=(1.0, -1.0))
    assert "'model_soup'" in str(info.value) and "(1.0, -1.0)" in str(info.value)
    assert info.value.hint and "task_arithmetic" in info.value.hint


def test_nearly_zero_sums_are_zero_and_other_sums_are_fine() -> None:
    with pytest.raises(ConfigError, match="sum to 0"):
        get("model_soup").make_params({}, weights=(0.1, 0.2, -0.3))   # 5.6e-17 in floats: still no average
    get("model_soup").make_params({}, weights=(2.0, -1.0))
    get("task_arithmetic").make_params({}, weights=(1.0, -1.0))       # θ₀ + λ(τ₁ − τ₂) is meaningful


def test_which_methods_divide_by_the_weight_sum() -> None:
    assert {s.name for s in REGISTRY if s.normalises_weights} == {"model_soup", "regmean", "fisher"}
    for spec in REGISTRY:
        if spec.normalises_weights:
            with pytest.raises(ConfigError, match="sum to 0"):
                spec.make_params({}, weights=(0.5, -0.5))


def test_model_soup_itself_refuses_a_zero_sum() -> None:
    ctx = MergeContext(name="w", expert_ids=(0, 1), weights=(1.0, -1.0))
    with pytest.raises(ConfigError, match="sum to 0"):
        get("model_soup").fn(torch.zeros(3), torch.ones(2, 3), get("model_soup").make_params({}), ctx)


def test_merge_command_prints_error_and_hint(tmp_path: Path) -> None:
    base, experts, _, _ = family(tmp_path / "in", 2)
    config = recipe(base, experts, method="model_soup")
    for entry, weight in zip(config["models"], (1.0, -1.0), strict=True):
        entry["weight"] = weight
    path = tmp_path / "soup.yaml"
    path.write_text(yaml.safe_dump(config))
    env = {k: v for k, v in os.environ.items() if k != "MERGEBENCH_DEBUG"}  # no traceback on purpose
    proc = subprocess.run([MERGEBENCH, "merge", str(path), "--out", str(tmp_path / "out")],
                          capture_output=True, text=True, env=env, check=False)
    assert proc.returncode == 1, proc.stderr
    assert proc.stdout == ""
    assert "Error: Expert weights (1.0, -1.0) sum to 0" in proc.stderr
    assert "Hint: " in proc.stderr and "Traceback" not in proc.stderr
    assert not (tmp_path / "out").exists() and not (tmp_path / ".out.partial").exists()


def test_prepare_rejects_the_weights_before_reading_any_model(tmp_path: Path) -> None:
    from mergebench.merge.inputs import prepare

    missing = [tmp_path / name for name in ("base", "e0", "e1")]     # never read: validation comes first
    config = recipe(missing[0], missing[1:], method="model_soup", parameters={"weights": [1.0, -1.0]})
    with pytest.raises(ConfigError, match="sum to 0"):
        prepare(config)
