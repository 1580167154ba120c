"""Hypothesis profiles of the fuzzed-parser tests, and their loopback Hub.

Two profiles, one test definition each:

* ``fast`` (default, ``make test``): 150 cases per test, derandomised so CI runs the same cases;
* ``slow`` (``make test-slow``, i.e. ``pytest -m slow``, or ``MERGEBENCH_FUZZ_PROFILE=slow`` with any
  selection): 10,000 cases per test, seeded at random. Under ``-m slow`` the fuzz tests are marked ``slow``
  here so that selection keeps them.

``MERGEBENCH_FUZZ_CASES=N`` sets the number of cases per test of either profile.

What every case must satisfy is in :mod:`tests.fuzz._checks`.
"""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, settings

from mergebench.hub.endpoint import use_endpoint
from mergebench.hubserver import LoopbackHub
from tests._hub_fixtures import DUMMY_TOKEN
from tests.fuzz._checks import FuzzHub

FAST, SLOW = "fast", "slow"
PROFILE_ENV = "MERGEBENCH_FUZZ_PROFILE"
CASES_ENV = "MERGEBENCH_FUZZ_CASES"
SLOW_CASES = 10_000
SLOW_TEST_SECONDS = 4 * 3600

_HEALTH = [HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.function_scoped_fixture,
           HealthCheck.filter_too_much, HealthCheck.large_base_example]
settings.register_profile(FAST, max_examples=150, deadline=None, derandomize=True, database=None,
                          suppress_health_check=_HEALTH, print_blob=True)
settings.register_profile(SLOW, max_examples=SLOW_CASES, deadline=None, database=None,
                          suppress_health_check=_HEALTH, print_blob=True)


def _selects_slow(config: pytest.Config) -> bool:
    expression = config.getoption("markexpr", "") or ""
    return "slow" in expression and "not slow" not in expression


def _slow_profile(config: pytest.Config) -> bool:
    return os.environ.get(PROFILE_ENV) == SLOW or _selects_slow(config)


def pytest_configure(config: pytest.Config) -> None:
    config.addinivalue_line("markers", "fuzz: a Hypothesis fuzz test (fast profile by default, slow under -m slow)")
    settings.load_profile(SLOW if _slow_profile(config) else FAST)
    if cases := os.environ.get(CASES_ENV):  # e.g. a quick exploration between the two profiles
        settings.register_profile("custom", parent=settings.default, max_examples=int(cases))
        settings.load_profile("custom")


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """Under ``-m slow``, the fuzz tests are slow tests (with a longer timeout): mark them before the marker
    selection runs."""
    fuzz = [item for item in items if item.get_closest_marker("fuzz") is not None]
    for item in fuzz if _slow_profile(config) else ():
        item.add_marker(pytest.mark.timeout(SLOW_TEST_SECONDS))  # 10,000 cases outlast the suite's 600 s
    for item in fuzz if _selects_slow(config) else ():
        item.add_marker(pytest.mark.slow)


@pytest.fixture(scope="module")
def fuzz_hub(tmp_path_factory: pytest.TempPathFactory) -> Iterator[FuzzHub]:
    """A loopback Hub (empty unless a test writes repos under its root) that this process's client uses: a
    fuzzed ``org/name`` reference asks it, never the network."""
    root = tmp_path_factory.mktemp("fuzz-hub")
    with LoopbackHub(root) as server, use_endpoint(server.url, hf_home=tmp_path_factory.mktemp("fuzz-hf-home"),
                                                      token=DUMMY_TOKEN):
        yield FuzzHub(root, server.url)
