"""The leaderboard table against a hand calculation on the fixture results; reading folders, rows and the Hub."""

from __future__ import annotations

import json
from dataclasses import replace

import pandas as pd
import pytest

from mergebench.domains import DOMAINS
from mergebench.errors import EvaluationError
from mergebench.eval.leaderboard import base_type, format_table, read_results, results_from_rows, table
from mergebench.eval.results import push_results, result_rows
from tests.space.fixture_results import (
    BASE,
    BASES,
    DOMAIN_FACTOR,
    EXPERT,
    MERGES,
    MULTITASK,
    fixture_results,
    write_fixture_results,
)


@pytest.fixture(scope="module")
def results():
    return fixture_results(BASES[0]) + fixture_results(BASES[1])


@pytest.fixture(scope="module")
def df(results):
    return table(results)


def _merged(df: pd.DataFrame, base: str, label: str) -> pd.Series:
    rows = df[(df.kind == "merged") & (df.base_model == base) & (df.label == label)]
    assert len(rows) == 1
    return rows.iloc[0]


def test_one_row_per_merge_and_references_flagged(df):
    for base in BASES:
        mine = df[df.base_model == base]
        assert mine.kind.value_counts().to_dict() == {"merged": 9, "expert": 5, "multitask": 1, "base": 1}
        assert set(mine[mine.kind == "merged"].method) == set(MERGES)  # all eight methods
    assert set(df[df.kind == "expert"].label) == {f"expert: {d}" for d in DOMAINS}
    assert table(fixture_results(), references=False).kind.unique().tolist() == ["merged"]


def test_scores_match_a_hand_calculation(df):
    ties = _merged(df, BASES[0], "ties (top_k=0.2, scaling=1.0)")  # quality 0.9, merge 6 s, validation 120 s
    for domain in DOMAINS:  # merged = EXPERT·0.9·factor, expert = EXPERT → ratio 0.9·factor
        assert ties[domain] == pytest.approx(0.9 * DOMAIN_FACTOR[domain], abs=1e-5)
    assert ties.normalised == pytest.approx(0.9 * sum(DOMAIN_FACTOR.values()) / 5, abs=1e-5)
    assert ties.forgetting == pytest.approx(0.9, abs=1e-5)  # general task: BASE·0.9 ÷ BASE
    # the multi-task model scores MULTITASK in every domain → MULTITASK/EXPERT
    assert ties.multitask_gap == pytest.approx(ties.normalised - MULTITASK / EXPERT, abs=1e-5)
    assert (ties.merge_seconds, ties.validation_seconds, ties.total_seconds) == (6.0, 120.0, 126.0)
    assert ties.peak_memory_bytes == pytest.approx(1.8e9)
    assert ties["task:mb_tiny_hellaswag"] == pytest.approx(BASE * 0.9)
    assert (ties.data, _merged(df, BASES[0], "regmean (alpha=0.5)").data) == ("data-free", "data-dependent")
    assert ties.model_url == f"https://huggingface.co/{ties.model}"
    math_expert = df[(df.base_model == BASES[0]) & (df.label == "expert: math")].iloc[0]
    assert (math_expert.math, math_expert.coding) == (pytest.approx(1.0), pytest.approx(BASE / EXPERT))


def test_rows_sorted_best_first_within_each_base(df):
    merged = df[(df.base_model == BASES[0]) & (df.kind == "merged")]
    assert merged.normalised.tolist() == sorted(merged.normalised, reverse=True)
    assert merged.iloc[0].method == "regmean"


def test_base_type():
    assert [base_type(b) for b in ("meta-llama/Llama-3.2-3B", "meta-llama/Llama-3.2-3B-Instruct",
                                   "google/gemma-2-2b-it", "google/gemma-2-9b", "x/tiny-llama-instruct")] == [
        "base", "instruct", "instruct", "base", "instruct"]


def test_latest_complete_run_wins(results):
    ties = next(r for r in results if r.model.get("method") == "ties")
    rerun = replace(ties, run={**ties.run, "id": "rerun", "finished_at": "2999-01-01T00:00:00+00:00"},
                    cost={**ties.cost, "merge_seconds": 1.0})
    crashed = replace(ties, run={**ties.run, "id": "crash", "status": "failed", "finished_at": "3000-01-01T00:00:00"})
    df = table([*results, rerun, crashed])
    row = _merged(df, BASES[0], ties.model["label"])
    assert (row.run_id, row.merge_seconds) == ("rerun", 1.0)


def test_rows_rebuild_the_same_table(results, df):
    rows = [row for r in results for row in result_rows(r)]
    rebuilt = table(results_from_rows(pd.DataFrame(rows)))
    numbers = ["normalised", *DOMAINS, "forgetting", "multitask_gap", "total_seconds", "peak_memory_bytes"]
    key = ["base_model", "kind", "label"]
    pd.testing.assert_frame_equal(rebuilt.sort_values(key)[key + numbers].reset_index(drop=True),
                                  df.sort_values(key)[key + numbers].reset_index(drop=True))


def test_format_table_shows_labels_and_numbers(df):
    text = format_table(df[df.base_model == BASES[0]])
    line = next(li for li in text.splitlines() if "regmean (alpha=0.5)" in li)
    assert "0.950" in line and "70.0" in line and "1.90" in line  # normalised 0.95·mean(factors)=0.95, 40+30 s


def _with_stderr(results: list, stderr: float) -> list:
    """The fixture results with a standard error of ``stderr`` recorded on every task's main metric."""
    return [replace(r, tasks={n: replace(t, stderr={t.main_metric: stderr}) for n, t in r.tasks.items()})
            for r in results]


def test_standard_errors_and_the_leader_match_a_hand_calculation():
    se = 0.02
    df = table(_with_stderr(fixture_results(BASES[0]), se))
    regmean = _merged(df, BASES[0], "regmean (alpha=0.5)")  # quality 0.95: the best merge
    # each task: r = 0.95·factor, SE(r) = √(se² + r²·se²)/EXPERT; safety has two tasks (HarmBench, XSTest)
    ratio_se = {d: se * (1 + (0.95 * DOMAIN_FACTOR[d]) ** 2) ** 0.5 / EXPERT for d in DOMAINS}
    domain_se = {d: ratio_se[d] / (2 ** 0.5 if d == "safety" else 1) for d in DOMAINS}
    for domain in DOMAINS:
        assert regmean[f"{domain}_stderr"] == pytest.approx(domain_se[domain], rel=1e-4)
    assert regmean.normalised_stderr == pytest.approx(sum(v * v for v in domain_se.values()) ** 0.5 / 5, rel=1e-4)
    # forgetting: BASE·0.95 ÷ BASE on the one general task
    assert regmean.forgetting_stderr == pytest.approx(se * (1 + 0.95 ** 2) ** 0.5 / BASE, rel=1e-4)
    marks = dict(zip(df[df.kind == "merged"].label, df[df.kind == "merged"].vs_leader, strict=True))
    # 95 % intervals: ±1.96·SE ≈ ±0.037 around each score; ties (0.90) overlaps regmean (0.95), dare (0.85) does not
    assert marks["regmean (alpha=0.5)"] == "leader"
    assert marks["ties (top_k=0.2, scaling=1.0)"] == "within noise"
    assert marks["dare (drop_rate=0.8, scaling=1.0)"] == marks["model_soup (scaling=1.0)"] == "behind"
    assert df[df.kind != "merged"].vs_leader.isna().all()


def test_format_table_shows_standard_errors_and_marks_the_merges_within_noise():
    text = format_table(table(_with_stderr(fixture_results(BASES[0]), 0.02)))
    lines = text.splitlines()
    regmean = next(li for li in lines if "regmean (alpha=0.5)" in li)
    ties = next(li for li in lines if "ties (top_k=0.2," in li)  # labels may wrap: their first line
    dare = next(li for li in lines if "dare (drop_rate=0.8," in li)
    assert "0.950±0.019" in regmean and "lead" in regmean
    assert "≈" in ties and "≈" not in dare and "±" in dare
    assert "tiny-llama" in text.splitlines()[0]  # one base: named in the title, no base column
    assert "± one standard error" in text and "95 % interval" in text


def test_results_without_standard_errors_show_no_interval(df):
    assert df.normalised_stderr.isna().all() and df.vs_leader.isin(["leader"]).sum() == len(BASES)
    merge = next(li for li in format_table(df[df.base_model == BASES[0]]).splitlines() if "regmean (alpha=0.5)" in li)
    assert "0.950" in merge and "±" not in merge  # unknown is shown as no interval, never as ±0


def test_read_results_from_a_run_folder_and_a_file(tmp_path):
    paths = write_fixture_results(tmp_path / "run", bases=BASES[:1])
    (tmp_path / "run" / "summary.json").write_text(json.dumps({"not": "results"}))
    assert len(read_results(tmp_path / "run")) == len(paths) == 16
    assert read_results(paths[0])[0].model == json.loads(paths[0].read_text())["model"]


def test_read_results_from_the_hub_dataset(hub, tmp_path):
    results = fixture_results(BASES[0])
    for r in results:
        push_results("org/mergebench-results", r)
    back = read_results("org/mergebench-results")
    assert {r.model["id"] for r in back} == {r.model["id"] for r in results}
    assert table(back).normalised.round(6).tolist() == table(results).normalised.round(6).tolist()


def test_unknown_source_is_a_clear_error(tmp_path):
    with pytest.raises(EvaluationError, match="neither a file, a folder nor a Hub dataset id"):
        read_results(tmp_path / "nope" / "x.json")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(EvaluationError, match="No results files"):
        read_results(empty)
