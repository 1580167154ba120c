"""Fuzzed results files: bytes, random JSON and edits of real results documents (as the writer writes them) →
:class:`Results` or an :class:`EvaluationError` with a hint, never a traceback or a hang. What is accepted is
read by the leaderboard without an error (with the reference runs it is normalised by); a rejected file given
to ``mergebench space --results`` exits 1 with ``Error:``/``Hint:`` before the Space starts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from hypothesis import example, given
from hypothesis import strategies as st

from mergebench.errors import MergeBenchError
from mergebench.eval.leaderboard import table
from mergebench.eval.results import Results, load_results, result_rows
from tests.fuzz._checks import CLI_SAMPLE, check_cli_error, check_rejection, files_under, outcome, run_cli
from tests.fuzz.strategies import JSON_TOKENS, documents, encoded, mutated, render, text_edits
from tests.space.fixture_results import fixture_results

REFERENCES = fixture_results()
"""A base, five experts, a multi-task model and nine merges, written as the results writer writes them."""
MERGED = REFERENCES[-1].to_dict()
KEYS = st.sampled_from(sorted({"schema_version", "model", "settings", "run", "eval_data", "environment", "cost",
                               "tasks", "id", "role", "domain", "base_model", "status", "score", "metrics",
                               "version", "main_metric", "name", "started_at", "finished_at", *MERGED["tasks"]}))
RESULTS_TEXTS = st.one_of(
    st.binary(max_size=100),
    documents("json", KEYS).map(lambda t: encoded(render(t, "json"))),
    mutated(MERGED, "json", KEYS).map(lambda t: encoded(render(t, "json"))),
    mutated(MERGED, "json", KEYS).map(lambda t: encoded(render(t, "json"))),
    text_edits(json.dumps(MERGED, indent=1), JSON_TOKENS).map(encoded),
)


def _check_accepted(results: Results) -> None:
    """What the parser accepted, the leaderboard and the results-dataset rows read without an error."""
    result_rows(results)
    try:
        table([*REFERENCES[:-1], results])
    except MergeBenchError as e:  # a results file can be well-formed and still unusable there: then say why
        check_rejection(e)


@pytest.mark.fuzz
@given(RESULTS_TEXTS, CLI_SAMPLE)
@example(b'{"schema_version": 1, "model": {}, "settings": {}, "run": {}, "tasks": []}', 0)  # AttributeError
@example(b'{"schema_version": 1, "model": {}, "settings": {}, "run": {}, "tasks": ' + b"[" * 100_000, 0)  # Recursion
@example(b'{"schema_version": 1, "tasks": {"x": ' + b"1" * 5000 + b"}}", 1)  # ValueError: int digits
@example(b'{"schema_version": "\xff"}', 0)  # UnicodeDecodeError
@example(json.dumps({**MERGED, "model": "org/x"}).encode(), 1)  # a block that is not an object
@example(json.dumps({**MERGED, "model": {**MERGED["model"], "experts": [None, "a/b"]}}).encode(), 1)  # sorted()
def test_results_files(tmp_path_factory: pytest.TempPathFactory, text: bytes, sample: int) -> None:
    """Every case through ``load_results``; one in ten rejected ones also through ``mergebench space``."""
    work = tmp_path_factory.mktemp("results", numbered=True)
    (work / "results.json").write_bytes(text)
    before = files_under(work)
    result = outcome(lambda: load_results(work / "results.json"))
    if isinstance(result, Results):
        _check_accepted(result)
    elif sample == 0:
        run = run_cli(["space", "--results", "results.json", "--work-dir", "state"], cwd=work)
        check_cli_error(run)
        assert files_under(work) == before, "a rejected results file left files behind"
    shutil.rmtree(work)


def test_a_results_folder_is_not_a_results_file(tmp_path: Path) -> None:
    """A folder given as a results file was an IsADirectoryError (an OSError, not a MergeBench error)."""
    error = outcome(lambda: load_results(tmp_path))
    assert isinstance(error, MergeBenchError) and "folder" in str(error)
