"""Filters, columns, sorting, links, plots and log redaction on the fixture leaderboard."""

from __future__ import annotations

import pytest
from plots import PLOTS, forgetting_vs_score, per_domain, score_vs_cost
from processing import DEFAULT_COLUMNS, Filters, display, filter_rows, log_tail, redact

from mergebench.eval.leaderboard import table
from tests.space.fixture_results import BASES, DOMAIN_FACTOR, MERGES, fixture_results


@pytest.fixture(scope="module")
def df():
    return table(fixture_results(BASES[0]) + fixture_results(BASES[1]))


def test_filters(df):
    assert len(filter_rows(df, Filters())) == 32
    one_base = filter_rows(df, Filters(bases=(BASES[1],)))
    assert set(one_base.base_model) == {BASES[1]} and len(one_base) == 16
    assert set(filter_rows(df, Filters(base_types=("instruct",))).base_model) == {BASES[1]}
    ties = filter_rows(df, Filters(methods=("ties",), references=False))
    assert len(ties) == 4 and set(ties.method) == {"ties"}
    data_dependent = filter_rows(df, Filters(data=("data-dependent",), references=False))
    assert set(data_dependent.method) == {"regmean", "fisher"}  # localize_stitch's dataless mode needs no data
    assert set(filter_rows(df, Filters(search="TOP_K=0.1")).label) == {"ties (top_k=0.1, scaling=0.6)"}


def test_display_columns_links_sorting(df):
    shown = display(df, DEFAULT_COLUMNS, sort_by="Total cost s")
    assert list(shown.columns) == DEFAULT_COLUMNS
    assert shown.loc[0, "Model"] == ("[model_soup (scaling=1.0)](https://huggingface.co/"
                                     "mergebench-fixtures/tiny-llama-model_soup-scaling1p0)")
    assert shown.loc[0, "Base"] in ("tiny-llama", "tiny-llama-instruct")
    assert shown.loc[0, "Peak memory GB"] == pytest.approx(1.4)
    narrow = display(df, ["Normalised"], raw=True)
    assert list(narrow.columns)[:2] == ["Model", "Normalised"] and "mb_tiny_hellaswag" in narrow.columns
    by_score = display(df, ["Normalised"], sort_by="Normalised")
    assert by_score.Normalised.tolist()[:2] == [pytest.approx(0.95 * sum(DOMAIN_FACTOR.values()) / 5)] * 2


def test_plots_have_one_trace_per_method(df):
    merged_methods = set(MERGES)
    for fn in PLOTS.values():
        fig = fn(df)
        assert {t.name for t in fig.data} == merged_methods
    bars = {(t.name, x): y for t in per_domain(df).data for x, y in zip(t.x, t.y, strict=True)}
    assert bars[("ties", "safety")] == pytest.approx(0.9 * DOMAIN_FACTOR["safety"], abs=1e-5)  # best ties config
    assert "no merged models" in score_vs_cost(df[df.kind == "expert"]).layout.title.text
    assert forgetting_vs_score(df).layout.yaxis.title.text.startswith("general tasks")


def test_log_tail_redacts_tokens_and_keeps_the_last_progress_state(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "secret-space-token-123")
    log = "start\n\x1b[A\nbar 10%\rbar 50%\rbar 100%\nusing secret-space-token-123 and hf_abcdefghijklmnop\n"
    assert log_tail(log) == "start\nbar 100%\nusing *** and hf_***"
    assert redact("no secrets here") == "no secrets here"
