"""Fuzzed Space submissions: the form's fields (base, experts, method, parameters box, model id) → a job request,
or an error the page shows as a message and a hint (``explain``), checked against the loopback Hub holding the
tiny Llama family the reference results name; never an exception the page cannot explain, never a hang."""

from __future__ import annotations

import sys
from collections.abc import Callable
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mergebench import methods
from mergebench.fixtures import write_family_to_hub_root
from tests.fuzz._checks import FuzzHub, deadline, tally
from tests.fuzz.strategies import JSON_TOKENS, TEXT, documents, mutated, render, text_edits
from tests.space.fixture_results import BASES, fixture_results

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "space"))
from submission import Catalogue, explain, validate_merge, validate_model

CATALOGUE = Catalogue.from_results(fixture_results())
BASE = BASES[0]
EXPERTS = sorted(CATALOGUE.experts[BASE].values())
REPO_IDS = st.sampled_from([*BASES, *EXPERTS, "org/missing", "../../etc", "./base", "a/b/c", "-bad/x"]) | TEXT
METHODS = st.sampled_from(methods.REGISTRY.names()) | TEXT
LIKELY_BASE = st.just(BASE) | st.just(BASE) | REPO_IDS  # two in three cases on the base, to get past the first check
LIKELY_EXPERTS = (st.lists(st.sampled_from(EXPERTS), min_size=2, max_size=5, unique=True)
                  | st.lists(st.sampled_from(EXPERTS) | REPO_IDS, max_size=6))
LIKELY_METHODS = st.sampled_from(methods.REGISTRY.names()) | METHODS
PARAMETERS = st.one_of(
    st.none(), st.just(""),
    documents("json", st.sampled_from(["top_k", "scaling", "weights", "drop_rate", "k", "mode", "alpha"])).map(
        lambda t: render(t, "json")),
    mutated({"top_k": 0.2, "scaling": 1.0}, "json").map(lambda t: render(t, "json")),
    text_edits('{"top_k": 0.2, "scaling": 1.0}', JSON_TOKENS),
)


@pytest.fixture(scope="module")
def hub_models(tiny_llama, fuzz_hub: FuzzHub) -> None:
    """The catalogue's base and experts on the loopback Hub (its '-instruct' base has none: a Hub 404)."""
    write_family_to_hub_root(tiny_llama, fuzz_hub.root)


def _shown(check: Callable[[], object]) -> None:
    """``check()`` returns a request, or fails with an error the page shows as a message and a hint."""
    with deadline():
        try:
            request = check()
        except Exception as e:
            message, hint = explain(e)  # re-raises what it cannot explain: the page would show a bare error
            assert message.strip() and hint and hint.strip(), (type(e).__name__, message, hint)
            tally(type(e).__name__)
        else:
            assert isinstance(request, dict) and request["base_model"] == BASE, request
            tally("accepted")


@pytest.mark.fuzz
@pytest.mark.usefixtures("hub_models")
@given(LIKELY_BASE, LIKELY_EXPERTS, LIKELY_METHODS, PARAMETERS)
@example(BASE, EXPERTS[:2], "ties", '{"top_k": ' + "1" * 5000 + "}")  # ValueError of json.loads: int digits
@example(BASE, EXPERTS[:2], "ties", "[" * 100_000)  # RecursionError of json.loads
def test_merge_submissions(base: str, experts: list[str], method: str, parameters: str | None) -> None:
    _shown(lambda: validate_merge(CATALOGUE, base=base, experts=experts, method=method, parameters=parameters,
                                  validation_data={}))


@pytest.mark.fuzz
@pytest.mark.usefixtures("hub_models")
@given(REPO_IDS, LIKELY_BASE, st.none() | LIKELY_METHODS, PARAMETERS)
def test_model_submissions(model: str, base: str, method: str | None, parameters: str | None) -> None:
    _shown(lambda: validate_model(CATALOGUE, model=model, base=base, method=method, parameters=parameters))

