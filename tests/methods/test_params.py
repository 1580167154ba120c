"""Parameter validation, registry metadata and the statistics a method asks the engine for."""

from __future__ import annotations

import itertools
import logging
import math
import re
import sys
from dataclasses import dataclass

import pytest

from mergebench.errors import ConfigError
from mergebench.methods import REGISTRY, Params, get
from mergebench.methods.registry import MethodRegistry, Range

GRIDS = {  # docs/methods.md, "Search grids"
    "task_arithmetic": {"scaling": (0.2, 0.4, 0.6, 0.8, 1.0)},
    "ties": {"top_k": (0.1, 0.2, 0.3), "scaling": (0.4, 0.6, 0.8, 1.0)},
    "dare": {"drop_rate": (0.7, 0.8, 0.9), "scaling": (0.4, 0.6, 0.8, 1.0)},
    "consensus": {"tall_lambda": (0.2, 0.4, 0.6), "scaling": (0.4, 0.6, 0.8, 1.0)},
    "localize_stitch": {"sparsity": (0.05, 0.1, 0.2)},
    "regmean": {"alpha": (0.1, 0.5, 0.9)},
    "model_soup": {},
    "fisher": {},
}

DEFAULTS = {  # docs/methods.md, the parameter column
    "ties": {"top_k": 0.2, "scaling": 1.0, "aggregate": "sum"},
    "dare": {"drop_rate": 0.8, "scaling": 1.0},
    "consensus": {"k": 2, "tall_lambda": 0.2, "scaling": 1.0},
    "localize_stitch": {"sparsity": 0.1, "sigmoid_bias": 3.0, "learning_rate": 1e8, "epochs": 1, "l1_strength": 0.0,
                        "num_samples": 1000},
    "regmean": {"alpha": 0.5, "num_samples": 1000},
    "fisher": {"num_samples": 1000},
}


@pytest.mark.parametrize("method", sorted(GRIDS))
def test_grid_matches_the_contract_and_every_point_is_valid(method: str) -> None:
    spec = get(method)
    assert dict(spec.grid) == GRIDS[method]
    for point in itertools.product(*spec.grid.values()):
        spec.make_params(dict(zip(spec.grid, point, strict=True)))


@pytest.mark.parametrize("method", sorted(DEFAULTS))
def test_defaults_match_the_contract(method: str) -> None:
    defaults = get(method).defaults()
    for key, value in DEFAULTS[method].items():
        assert defaults[key] == value, key


def test_every_method_declares_its_metadata() -> None:
    for spec in REGISTRY:
        assert spec.paper.startswith("https://arxiv.org/abs/"), spec.name
        assert spec.formula.strip() and "θ" in spec.formula and "=" in spec.formula, spec.name
        assert spec.formula == spec.formula.strip("\n") and not spec.formula.startswith(" "), spec.name
        assert spec.title.strip() and spec.title.endswith(")"), f"{spec.name}: the title cites the paper"
        assert "scaling" in spec.defaults(), f"{spec.name} accepts scaling"
        assert all(p.doc for p in spec.parameters), f"{spec.name}: every parameter has a help line"
    assert {s.name: s.data_stats for s in REGISTRY if s.data_stats} == {
        "localize_stitch": "mask", "regmean": "gram", "fisher": "fisher"}
    assert {s.name for s in REGISTRY if s.inputs == "weights"} == {"regmean", "fisher"}


@pytest.mark.parametrize(("method", "values", "match"), [
    ("ties", {"top_k": 0.0}, "top_k must be in"),
    ("ties", {"top_k": 1.5}, "top_k must be in"),
    ("ties", {"aggregate": "median"}, "aggregate"),
    ("ties", {"topk_scope": "layer"}, "topk_scope"),
    ("dare", {"drop_rate": 1.0}, "drop_rate must be in"),
    ("dare", {"drop_rate": -0.1}, "drop_rate must be in"),
    ("consensus", {"k": 0}, "k must be an integer"),
    ("consensus", {"k": 1.5}, "k"),
    ("consensus", {"tall_lambda": -0.2}, "tall_lambda"),
    ("localize_stitch", {"sparsity": 0.0}, "sparsity must be in"),
    ("localize_stitch", {"sparsity": 1.01}, "sparsity must be in"),
    ("localize_stitch", {"mode": "trained", "sigmoid_bias": 0.0}, "sigmoid_bias"),
    ("localize_stitch", {"mode": "trained", "learning_rate": -1.0}, "learning_rate"),
    ("localize_stitch", {"mode": "trained", "num_samples": 0}, "num_samples"),
    ("localize_stitch", {"mode": "trained", "epochs": -1}, "epochs"),
    ("localize_stitch", {"mode": "other"}, "mode"),
    ("regmean", {"alpha": 1.5}, "alpha must be in"),
    ("regmean", {"alpha": -0.1}, "alpha must be in"),
    ("regmean", {"num_samples": 0}, "num_samples"),
    ("fisher", {"num_samples": 0}, "num_samples"),
])
def test_out_of_range_values_are_config_errors(method: str, values: dict, match: str) -> None:
    with pytest.raises(ConfigError, match=match) as info:
        get(method).make_params(values)
    assert f"method '{method}'" in str(info.value)


DECLARED_RANGES = {  # the contract's ranges, as `methods show` prints them
    ("ties", "top_k"): "(0, 1]", ("dare", "drop_rate"): "[0, 1)", ("consensus", "k"): "≥ 1",
    ("consensus", "tall_lambda"): "≥ 0", ("localize_stitch", "sparsity"): "(0, 1]",
    ("localize_stitch", "sigmoid_bias"): "> 0", ("localize_stitch", "learning_rate"): "≥ 0",
    ("localize_stitch", "epochs"): "≥ 0", ("localize_stitch", "l1_strength"): "≥ 0",
    ("localize_stitch", "num_samples"): "≥ 1", ("regmean", "alpha"): "[0, 1]", ("regmean", "num_samples"): "≥ 1",
    ("fisher", "num_samples"): "≥ 1",
}


def test_declared_ranges_are_the_contracts_and_the_enforced_ones() -> None:
    declared = {(s.name, p.name): str(p.range) for s in REGISTRY for p in s.parameters if p.range}
    assert declared == DECLARED_RANGES
    for (method, name), text in DECLARED_RANGES.items():
        with pytest.raises(ConfigError, match=f"{name} must be .*{re.escape(text)}, got") as info:
            get(method).make_params({**({"mode": "trained"} if method == "localize_stitch" else {}), name: -1})
        assert info.value.hint and f"{name}: " in info.value.hint


def test_parameter_types_and_defaults_are_declared() -> None:
    ties = {p.name: p for p in get("ties").parameters}
    assert (ties["aggregate"].type, ties["aggregate"].default) == ("sum | mean", "sum")
    assert (ties["top_k"].type, ties["top_k"].default) == ("float", 0.2)
    assert {p.name: p.type for p in get("dare").parameters}["seed"] == "int | None"
    assert {p.name: p.type for p in get("consensus").parameters}["k"] == "int"


def test_elementwise_is_declared() -> None:
    assert {s.name for s in REGISTRY if s.elementwise} == {"model_soup", "task_arithmetic", "ties", "dare",
                                                            "consensus", "localize_stitch"}
    for spec in REGISTRY:
        assert spec.make_params({}).elementwise() is spec.elementwise
    assert not get("localize_stitch").make_params({"mode": "trained"}).elementwise()  # masks: whole-tensor statistics


def test_an_incomplete_declaration_is_refused() -> None:
    registry = MethodRegistry()
    params = get("task_arithmetic").params_cls
    with pytest.raises(ValueError, match="declares no formula"):
        registry.register("x", params=params, title="X (A et al., 2020)", paper="https://arxiv.org/abs/1", formula=" ")
    with pytest.raises(ValueError, match="grid names unknown parameters"):
        registry.register("x", params=params, title="X", paper="p", formula="θ = θ₀", grid={"top_k": (0.1,)})

    @dataclass(frozen=True)
    class Undocumented(Params):
        scaling: float = 1.0

    with pytest.raises(ValueError, match=r"declare parameters \['scaling'\]"):
        registry.register("x", params=Undocumented, title="X", paper="p", formula="θ = θ₀")


def test_range_text() -> None:
    assert [str(r) for r in (Range(gt=0, le=1), Range(ge=0, lt=1), Range(ge=1), Range(gt=0), Range(le=2))] == [
        "(0, 1]", "[0, 1)", "≥ 1", "> 0", "≤ 2"]
    assert 1 in Range(gt=0, le=1) and 0 not in Range(gt=0, le=1) and math.nan not in Range(ge=0)
    with pytest.raises(ValueError, match="one lower bound"):
        Range(gt=0, ge=0)


def test_direct_construction_validates_too() -> None:
    with pytest.raises(ConfigError, match="top_k"):
        get("ties").params_cls(top_k=2.0)


def test_unknown_parameter_is_an_error_with_a_suggestion() -> None:
    with pytest.raises(ConfigError, match="Did you mean 'drop_rate'") as info:
        get("dare").make_params({"droprate": 0.5})
    assert "drop_rate" in info.value.hint
    with pytest.raises(ConfigError, match="Unknown parameter 'density'"):
        get("ties").make_params({"density": 0.5})


def test_trained_only_parameters_need_mode_trained() -> None:
    with pytest.raises(ConfigError, match="learning_rate only applies to trained masks") as info:
        get("localize_stitch").make_params({"learning_rate": 0.0})
    assert "mode: trained" in info.value.hint
    get("localize_stitch").make_params({"mode": "trained", "learning_rate": 0.0})


@pytest.mark.parametrize("method", [s.name for s in REGISTRY])
def test_negative_scaling_is_allowed_but_warns(method: str, caplog: pytest.LogCaptureFixture) -> None:
    with caplog.at_level(logging.WARNING, logger="mergebench.methods"):
        params = get(method).make_params({"scaling": -0.5})
    assert params.scaling == -0.5
    assert "negative" in caplog.text
    caplog.clear()
    with caplog.at_level(logging.WARNING, logger="mergebench.methods"):
        get(method).make_params({"scaling": 0.5})
    assert not caplog.text


def test_what_each_method_asks_the_engine_for() -> None:
    ties, ls = get("ties"), get("localize_stitch")
    assert ties.make_params({"top_k": 0.3}).global_topk() == 0.3
    assert ties.make_params({"topk_scope": "tensor"}).global_topk() is None
    assert ls.make_params({}).global_topk() == 0.1
    assert ls.stats_stage(ls.make_params({})) is None                   # dataless: no data needed
    trained = ls.make_params({"mode": "trained"})
    assert trained.global_topk() is None and ls.stats_stage(trained) == "mask"
    assert get("regmean").stats_stage(get("regmean").make_params({})) == "gram"
    assert get("fisher").stats_stage(get("fisher").make_params({})) == "fisher"
    assert get("dare").stats_stage(get("dare").make_params({})) is None
    for name in ("task_arithmetic", "model_soup", "dare", "consensus", "regmean", "fisher"):
        assert get(name).make_params({}).global_topk() is None


@pytest.mark.parametrize("method", REGISTRY.names())
def test_the_module_docstring_states_the_declared_formula(method: str) -> None:
    """Docstrings are for readers (nothing parses them), but they must not drift from the declaration."""
    spec = get(method)
    doc = sys.modules[spec.fn.__module__].__doc__ or ""
    assert " ".join(spec.formula.split()) in " ".join(doc.split()), f"{method}: docstring and formula differ"
