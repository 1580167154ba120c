"""Submission checks against the loopback Hub: a good merge passes; each bad input is a clear message."""

from __future__ import annotations

import json

import pytest
from huggingface_hub.errors import RepositoryNotFoundError
from submission import Catalogue, SubmissionError, explain, parse_parameters, validate_merge, validate_model

from mergebench.errors import ConfigError, IncompatibleModelsError, RefError
from mergebench.eval.leaderboard import read_results
from tests.space.conftest import BIN_ONLY, GEMMA

BASE = "mergebench-fixtures/tiny-llama"


@pytest.fixture(scope="module")
def catalogue(space_hub):
    return Catalogue.from_results(read_results(space_hub.results_dir))


def _experts(catalogue, *domains):
    return [catalogue.experts[BASE][d] for d in domains]


def test_catalogue_lists_each_base_experts_and_eval_settings(catalogue):
    assert catalogue.bases == [BASE, f"{BASE}-instruct"]
    assert catalogue.experts[BASE]["math"] == "mergebench-fixtures/tiny-llama_math"
    assert len(catalogue.experts[BASE]) == 5
    assert catalogue.eval_settings[BASE]["suite"] == "tiny" and "mb_tiny_hellaswag" in catalogue.eval_settings[BASE][
        "tasks"]


def test_a_good_merge_is_resolved_and_pinned(catalogue):
    request = validate_merge(catalogue, base=BASE, experts=_experts(catalogue, "math", "coding"), method="ties",
                             parameters='{"top_k": 0.3}', validation_data={})
    assert request["experts"] == {"math": f"{BASE}_math", "coding": f"{BASE}_coding"}
    assert request["parameters"] == {"top_k": 0.3, "scaling": 1.0, "aggregate": "sum", "topk_scope": "global"}
    assert request["recipe"]["models"] == [{"model": f"{BASE}_math", "domain": "math"},
                                           {"model": f"{BASE}_coding", "domain": "coding"}]


@pytest.mark.parametrize(("parameters", "expected"), [
    ('{"top_k": 1.5}', "top_k"),
    ('{"topk": 0.2}', "Did you mean 'top_k'"),
    ('{"top_k": 0.2', "not valid JSON"),
    ("[0.2]", "must be a JSON object"),
])
def test_parameters_out_of_range_or_malformed(catalogue, parameters, expected):
    with pytest.raises((ConfigError, SubmissionError)) as info:
        validate_merge(catalogue, base=BASE, experts=_experts(catalogue, "math", "coding"), method="ties",
                       parameters=parameters, validation_data={})
    message, hint = explain(info.value)
    assert expected in message
    assert hint


def test_unknown_method_expert_base(catalogue):
    with pytest.raises(ConfigError, match=r"Unknown merge method 'tie'\. Did you mean 'ties'"):
        validate_merge(catalogue, base=BASE, experts=_experts(catalogue, "math", "coding"), method="tie",
                       parameters="", validation_data={})
    with pytest.raises(SubmissionError, match="are not experts of"):
        validate_merge(catalogue, base=BASE, experts=[f"{BASE}_math", "evil/expert"], method="ties",
                       parameters="", validation_data={})
    with pytest.raises(SubmissionError, match="not one of the benchmark's base models"):
        validate_merge(catalogue, base="org/other", experts=[], method="ties", parameters="", validation_data={})
    with pytest.raises(SubmissionError, match="at least two experts"):
        validate_merge(catalogue, base=BASE, experts=_experts(catalogue, "math"), method="ties", parameters="",
                       validation_data={})


def test_data_dependent_method_needs_configured_data(catalogue):
    with pytest.raises(SubmissionError, match="needs validation data"):
        validate_merge(catalogue, base=BASE, experts=_experts(catalogue, "math", "coding"), method="regmean",
                       parameters="", validation_data={})


def test_a_catalogued_expert_missing_from_the_hub_is_an_unknown_model(catalogue):
    # the '-instruct' base's experts are in the reference results but were never uploaded
    instruct = f"{BASE}-instruct"
    with pytest.raises(RepositoryNotFoundError) as info:
        validate_merge(catalogue, base=instruct, experts=list(catalogue.experts[instruct].values())[:2],
                       method="ties", parameters="", validation_data={})
    message, hint = explain(info.value)
    assert message.startswith("Model 'mergebench-fixtures/tiny-llama-instruct") and "not found on the Hub" in message
    assert hint == "Check the spelling; the Space can only read public repos."


def test_merged_model_checks(catalogue, space_hub):
    ok = validate_model(catalogue, model=f"{BASE}_math", base=BASE, method="ties", parameters="")
    assert ok["model"] == f"{BASE}_math" and ok["parameters"]["top_k"] == 0.2
    with pytest.raises(IncompatibleModelsError) as info:  # architecture mismatch
        validate_model(catalogue, model=GEMMA, base=BASE, method=None, parameters="")
    assert "incompatibilit" in explain(info.value)[0]
    with pytest.raises(RefError, match="has no safetensors weights"):
        validate_model(catalogue, model=BIN_ONLY, base=BASE, method=None, parameters="")
    with pytest.raises(RepositoryNotFoundError):
        validate_model(catalogue, model="nobody/nothing-here", base=BASE, method=None, parameters="")


def test_custom_code_is_refused(catalogue, space_hub):
    repo = space_hub.root / "models" / "someone" / "custom-code"
    source = space_hub.root / "models" / f"{BASE}_math"
    repo.mkdir(parents=True)
    for f in source.iterdir():
        (repo / f.name).write_bytes(f.read_bytes())
    config = json.loads((repo / "config.json").read_text())
    (repo / "config.json").write_text(json.dumps({**config, "auto_map": {"AutoModelForCausalLM": "x.Model"}}))
    with pytest.raises(SubmissionError, match="never runs remote code"):
        validate_model(catalogue, model="someone/custom-code", base=BASE, method=None, parameters="")


@pytest.mark.parametrize("text", ["/etc", "../x/y", "./space-state", "a/b/c", "nope"])
def test_only_hub_ids_never_paths(catalogue, text):
    with pytest.raises(SubmissionError, match="is not a Hub model id"):
        validate_model(catalogue, model=text, base=BASE, method=None, parameters="")


def test_parse_parameters_empty_means_defaults():
    assert parse_parameters("  ") == {} and parse_parameters('{"a": 1}') == {"a": 1}
