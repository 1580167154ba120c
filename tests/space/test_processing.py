"""Filters, columns, sorting, links, ± standard errors, the within-noise marks, the comparison of two rows,
column widths, plots and log redaction: on the fixture leaderboard (no standard errors) and on a real
MergeBench-Tiny run (``tests/space/tiny_results``: every task carries its standard error)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from plots import FLAT_FORGETTING, PLOTS, forgetting_vs_score, per_domain, score_vs_cost
from processing import (
    BEST,
    COMPARE_COLUMNS,
    DEFAULT_COLUMNS,
    Filters,
    column_widths,
    compare,
    compare_links,
    display,
    filter_rows,
    log_tail,
    redact,
)
from uncertainty import with_errors

from mergebench.domains import DOMAINS
from mergebench.eval.leaderboard import read_results, table
from tests.space.fixture_results import BASES, DOMAIN_FACTOR, MERGES, fixture_results

TINY_RUN = Path(__file__).parent / "tiny_results" / "smollm2-135m-instruct-tiny"


@pytest.fixture(scope="module")
def df():
    results = fixture_results(BASES[0]) + fixture_results(BASES[1])
    return with_errors(table(results), results)


@pytest.fixture(scope="module")
def tiny():
    results = read_results(TINY_RUN)
    return with_errors(table(results), results), {r.run["id"]: r for r in results}


def _binomial_se(path: Path, task: str) -> tuple[float, float]:
    """(score, standard error) of an accuracy task, recomputed from the raw file: √(p(1−p)/(n−1)), the
    standard error of a mean of n 0/1 items (an independent reference for the recorded ``stderr``)."""
    t = json.loads(path.read_text())["tasks"][task]
    p, n = t["score"], t["num_samples"]
    return p, math.sqrt(p * (1 - p) / (n - 1))


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
    shown = display(df, DEFAULT_COLUMNS, sort_by="Cost s")
    assert list(shown.columns) == DEFAULT_COLUMNS
    assert shown.loc[0, "Model"] == ("[model_soup (scaling=1.0)](https://huggingface.co/"
                                     "mergebench-fixtures/tiny-llama-model_soup-scaling1p0)")
    assert shown.loc[0, "Card"] == ("[card](https://huggingface.co/mergebench-fixtures/tiny-llama-model_soup-scaling1p0"
                                    "/blob/main/README.md)")
    assert shown.loc[0, "Base"] in ("tiny-llama", "tiny-llama-instruct")
    assert shown.loc[0, "Mem GB"] == pytest.approx(1.4)
    narrow = display(df, ["Normalised"], raw=True)
    assert list(narrow.columns)[:3] == ["Model", BEST, "Normalised"] and "mb_tiny_hellaswag" in narrow.columns
    by_score = display(df, ["Normalised"], sort_by="Normalised")
    best = f"{0.95 * sum(DOMAIN_FACTOR.values()) / 5:.3f}"  # the fixture's results carry no standard error
    assert by_score.Normalised.tolist()[:2] == [best, best]


def test_every_score_carries_its_propagated_standard_error(tiny):
    df, _ = tiny
    ties = df[df.method == "ties"].iloc[0]
    variances = []
    for domain in DOMAINS:
        task = f"mb_tinybench_{domain}"
        m, se_m = _binomial_se(TINY_RUN / "ties.json", task)
        e, se_e = _binomial_se(TINY_RUN / f"expert_{domain}.json", task)
        variance = (se_m / e) ** 2 + (m * se_e / e**2) ** 2  # delta method for m / e
        assert ties[domain] == pytest.approx(m / e)
        assert ties[f"{domain}_se"] == pytest.approx(math.sqrt(variance), rel=1e-4)
        variances.append(variance)
    assert ties["normalised_se"] == pytest.approx(math.sqrt(sum(variances)) / 5, rel=1e-4)
    assert ties["forgetting_se"] == 0.0  # 1.0 on the general task, as the base: p(1 − p) = 0
    expert = df[df.label == "expert: math"].iloc[0]
    assert (expert["math"], expert["math_se"]) == (1.0, 0.0)  # the expert against itself: exactly 1

    shown = display(df, DEFAULT_COLUMNS, raw=True, sort_by="Normalised")
    row = shown[shown.Model == "ties (scaling=1.0, top_k=0.2)"].iloc[0]  # Tiny's models are local: no link
    assert row["Math"] == f"{ties['math']:.3f} ± {ties['math_se']:.3f}" == "0.750 ± 0.204"
    assert row["Normalised"] == f"{ties['normalised']:.3f} ± {ties['normalised_se']:.3f}"
    assert row["mb_tinybench_math"] == "0.562 ± 0.128"  # raw task scores too


def test_rows_within_noise_of_the_best_are_marked(tiny, df):
    tiny_df, _ = tiny
    merged = tiny_df[tiny_df.kind == "merged"]
    leader = merged.loc[merged.normalised.idxmax()]
    noise = {r.label for _, r in merged.iterrows() if r.label != leader.label and abs(leader.normalised - r.normalised)
             <= 1.96 * (leader.normalised_se + r.normalised_se)}  # the 95 % intervals overlap
    shown = display(tiny_df, DEFAULT_COLUMNS, sort_by="Normalised")
    marks = dict(zip(shown.Model, shown[BEST], strict=True))
    assert marks[leader.label] == "★" and leader.method == "regmean"
    assert {m for m, v in marks.items() if v == "≈"} == noise
    assert "localize_stitch (trained)" not in noise and len(noise) == 7
    assert set(marks.values()) == {"★", "≈", ""}
    by_math = display(tiny_df, DEFAULT_COLUMNS, sort_by="Math")  # the mark follows the sorted score
    assert dict(zip(by_math.Model, by_math[BEST], strict=True))["regmean (alpha=0.5, num_samples=4)"] != "★"
    # without standard errors, only each base's leader is marked
    fixture_marks = display(df, DEFAULT_COLUMNS, sort_by="Normalised")[BEST].tolist()
    assert fixture_marks.count("★") == 2 and "≈" not in fixture_marks


def test_two_rows_compared_task_by_task(tiny):
    df, runs = tiny
    ties, regmean = (df[df.method == m].iloc[0].run_id for m in ("ties", "regmean"))
    side = compare(df, runs, ties, regmean)
    assert list(side.columns) == COMPARE_COLUMNS
    assert side.Score.tolist()[:7] == ["Normalised", *(d.capitalize() for d in DOMAINS), "Forgetting"]
    assert side.Score.tolist()[7:] == [f"mb_tinybench_{d} ({d})" for d in (*DOMAINS, "general")]
    math_row = side[side.Score == "mb_tinybench_math (math)"].iloc[0]
    assert (math_row.A, math_row.B) == ("0.562 ± 0.128", "0.812 ± 0.101")
    assert math_row["A − B"] == pytest.approx(0.5625 - 0.8125)
    assert math_row["Within noise"] == "≈"  # |−0.25| ≤ 1.96 · (0.128 + 0.101) = 0.45
    safety = side[side.Score == "mb_tinybench_safety (safety)"].iloc[0]
    assert safety["Within noise"] == ""  # |0.4375 − 0.9375| = 0.5 > 1.96 · (0.128 + 0.0625) = 0.37
    expert = df[df.label == "expert: math"].iloc[0].run_id
    with_expert = compare(df, runs, ties, expert)  # the expert also has a validation task
    assert with_expert.Score.tolist()[-1] == "mb_tinybench_math_val (math · validation)"
    assert with_expert.iloc[-1].A is None and with_expert.iloc[-1].B == "1.000 ± 0.000"


def test_the_compared_rows_link_to_their_model_and_card(df):
    ties, soup = (df[(df.method == m) & (df.base_model == BASES[0])].iloc[0] for m in ("ties", "model_soup"))
    text = compare_links(df, ties.run_id, soup.run_id)
    url = "https://huggingface.co/mergebench-fixtures/tiny-llama-model_soup-scaling1p0"
    assert text.startswith(f"**A**: {ties.label} (merged, {BASES[0]}) · [model]({ties.model_url})")
    assert text.endswith(f"**B**: model_soup (scaling=1.0) (merged, {BASES[0]}) · [model]({url}) · "
                         f"[card]({url}/blob/main/README.md)")


def test_column_widths_keep_every_header_on_one_line(tiny):
    df, _ = tiny
    shown = display(df, DEFAULT_COLUMNS)
    widths = dict(zip(shown.columns, column_widths(shown), strict=True))
    assert shown["MT gap"].isna().all()  # Tiny has no multi-task model: an empty column
    for header, width in widths.items():
        assert width >= len(header) * 8 + 36, header
    assert widths["Normalised"] >= len("1.037 ± 0.093") * 8 and widths["Model"] <= 340


def test_plots_have_one_trace_per_method_and_error_bars(df, tiny):
    merged_methods = set(MERGES)
    for fn in PLOTS.values():
        fig = fn(df)
        assert {t.name for t in fig.data} == merged_methods
    bars = {(t.name, x): y for t in per_domain(df).data for x, y in zip(t.x, t.y, strict=True)}
    assert bars[("ties", "safety")] == pytest.approx(0.9 * DOMAIN_FACTOR["safety"], abs=1e-5)  # best ties config
    assert "no merged models" in score_vs_cost(df[df.kind == "expert"]).layout.title.text
    assert forgetting_vs_score(df).layout.yaxis.title.text.startswith("general tasks")
    tiny_df, _ = tiny
    errors = {(t.name, x): e for t in per_domain(tiny_df).data for x, e in zip(t.x, t.error_y.array, strict=True)}
    ties = tiny_df[tiny_df.method == "ties"].iloc[0]
    assert errors[("ties", "math")] == pytest.approx(ties["math_se"])


def test_the_forgetting_plot_explains_a_flat_line(tiny):
    df, _ = tiny
    spread = forgetting_vs_score(df)  # trained Localize-and-Stitch forgot something (0.833)
    assert len(spread.data) == 8 and sum(len(t.x) for t in spread.data) == 9  # a trace per method, a point per row
    assert FLAT_FORGETTING not in [a.text for a in spread.layout.annotations]
    flat = forgetting_vs_score(df[df.method != "localize_stitch"])  # every other merge: exactly 1.0
    assert not flat.data and flat.layout.annotations[0].text == FLAT_FORGETTING
    assert flat.layout.title.text.endswith("nothing forgotten")


def test_log_tail_redacts_tokens_and_keeps_the_last_progress_state(monkeypatch):
    monkeypatch.setenv("HF_TOKEN", "secret-space-token-123")
    log = "start\n\x1b[A\nbar 10%\rbar 50%\rbar 100%\nusing secret-space-token-123 and hf_abcdefghijklmnop\n"
    assert log_tail(log) == "start\nbar 100%\nusing *** and hf_***"
    assert redact("no secrets here") == "no secrets here"
