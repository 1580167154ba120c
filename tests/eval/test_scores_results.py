"""Normalised/forgetting/gap/cost scores from results files against a hand calculation; the schema; the push."""

from __future__ import annotations

import json

import pytest

from mergebench.errors import EvaluationError
from mergebench.eval.results import (
    ROW_COLUMNS,
    SCHEMA_FILE,
    SCHEMA_VERSION,
    ResultsWriter,
    TaskResult,
    load_results,
    new_results,
    push_results,
    result_rows,
    save_results,
)
from mergebench.eval.scores import compute_scores, within_noise
from mergebench.eval.tasks import TASKS

DOMAIN_OF = {name: (spec.domain, spec.role, spec.main_metric) for name, spec in TASKS.items()}


def _results(scores: dict[str, float | None], *, cost: dict | None = None, model: str = "m",
             stderr: dict[str, float] | None = None):
    writer = ResultsWriter(new_results(model={"id": model}, settings={"suite": "domains", "backend": "transformers"},
                                       eval_data={"kind": "packaged"}, environment={}, cost=cost), None)
    for name, score in scores.items():
        domain, role, metric = DOMAIN_OF[name]
        status = "ok" if score is not None else "failed"
        writer.add(TaskResult(name=name, status=status, domain=domain, role=role, version=1, main_metric=metric,
                              score=score, metrics={metric: score} if score is not None else {}, num_samples=10,
                              stderr={metric: stderr[name]} if stderr and name in stderr else {},
                              seconds=1.5, error=None if score is not None else {"type": "X", "message": "boom"}))
    return writer.finish("complete")


@pytest.fixture
def files(tmp_path):
    runs = {
        "merged": _results({"mb_ifeval": 0.30, "mb_gsm8k_cot": 0.20, "mb_math": 0.10, "mb_humaneval_plus": 0.25,
                            "mb_harmbench": None, "mb_mmlu": 0.40, "mb_triviaqa": 0.30, "mb_ifbench": 0.9},
                           cost={"merge_seconds": 12.5, "validation_seconds": 300.0}),
        "instruction": _results({"mb_ifeval": 0.60}),
        "math": _results({"mb_gsm8k_cot": 0.25, "mb_math": 0.20}),
        "coding": _results({"mb_humaneval_plus": 0.50}),
        "safety": _results({"mb_harmbench": 0.90}),
        "base": _results({"mb_mmlu": 0.50, "mb_triviaqa": 0.20}),
        "multitask": _results({"mb_ifeval": 0.45, "mb_gsm8k_cot": 0.30, "mb_math": 0.10, "mb_humaneval_plus": 0.40,
                               "mb_mmlu": 0.45, "mb_triviaqa": 0.20}),
    }
    paths = {}
    for name, results in runs.items():
        paths[name] = tmp_path / f"{name}.json"
        save_results(results, paths[name])
    return paths


def test_scores_match_a_hand_calculation(files):
    experts = {d: files[d] for d in ("instruction", "math", "coding", "safety")}
    scores = compute_scores(files["merged"], experts=experts, base=files["base"], multitask=files["multitask"])
    # instruction 0.30/0.60 = 0.5; math mean(0.20/0.25, 0.10/0.20) = mean(0.8, 0.5) = 0.65; coding 0.25/0.50 = 0.5
    assert scores.domains["instruction"].tasks == {"mb_ifeval": pytest.approx(0.5)}
    assert scores.domains["math"].tasks == {"mb_gsm8k_cot": pytest.approx(0.8), "mb_math": pytest.approx(0.5)}
    assert scores.domains["math"].mean == pytest.approx(0.65)
    assert scores.domains["coding"].mean == pytest.approx(0.5)
    # safety: the merged model's HarmBench failed → skipped, not counted as 0
    assert scores.domains["safety"].mean is None
    assert scores.domains["safety"].skipped == {"mb_harmbench": "failed or not run for the model"}
    assert "multilingual" not in scores.domains
    assert scores.normalised == pytest.approx((0.5 + 0.65 + 0.5) / 3)  # 0.55
    # forgetting: mmlu 0.40/0.50 = 0.8, triviaqa 0.30/0.20 = 1.5 → 1.15; validation tasks never count
    assert scores.forgetting.tasks == {"mb_mmlu": pytest.approx(0.8), "mb_triviaqa": pytest.approx(1.5)}
    assert scores.forgetting.mean == pytest.approx(1.15)
    # multitask: normalised mean(0.45/0.6, mean(0.3/0.25, 0.1/0.2), 0.4/0.5) = mean(0.75, 0.85, 0.8) = 0.8
    assert scores.multitask_gap["normalised"] == pytest.approx(0.55 - 0.8)
    # multitask forgetting mean(0.45/0.5, 0.2/0.2) = 0.95
    assert scores.multitask_gap["forgetting"] == pytest.approx(1.15 - 0.95)
    assert scores.cost["total_seconds"] == pytest.approx(312.5)
    assert scores.cost["eval_seconds"] == pytest.approx(7 * 1.5 + 1.5)
    assert json.loads(json.dumps(scores.to_dict()))["normalised"] == pytest.approx(0.55)


def test_standard_errors_match_a_hand_calculation():
    merged = _results({"mb_ifeval": 0.30, "mb_gsm8k_cot": 0.20, "mb_math": 0.10, "mb_mmlu": 0.40},
                      stderr={"mb_ifeval": 0.03, "mb_gsm8k_cot": 0.04, "mb_math": 0.02, "mb_mmlu": 0.05})
    experts = {"instruction": _results({"mb_ifeval": 0.60}, stderr={"mb_ifeval": 0.06}),
               "math": _results({"mb_gsm8k_cot": 0.25, "mb_math": 0.20}, stderr={"mb_gsm8k_cot": 0.05, "mb_math": 0.0})}
    base = _results({"mb_mmlu": 0.50}, stderr={"mb_mmlu": 0.05})
    scores = compute_scores(merged, experts=experts, base=base)
    # ifeval: r = 0.5, SE = √(0.03² + 0.5²·0.06²)/0.6 = √(0.0009 + 0.0009)/0.6
    ifeval = (0.0009 + 0.0009) ** 0.5 / 0.6
    assert scores.domains["instruction"].stderrs["mb_ifeval"] == pytest.approx(ifeval)
    # gsm8k: r = 0.8, SE = √(0.04² + 0.64·0.05²)/0.25; math: r = 0.5, SE = √(0.02² + 0)/0.2 = 0.1
    gsm8k, math_ = (0.0016 + 0.64 * 0.0025) ** 0.5 / 0.25, 0.1
    assert scores.domains["math"].stderrs == {"mb_gsm8k_cot": pytest.approx(gsm8k), "mb_math": pytest.approx(math_)}
    math_domain = (gsm8k ** 2 + math_ ** 2) ** 0.5 / 2
    assert scores.domains["math"].stderr == pytest.approx(math_domain)
    assert scores.normalised_stderr == pytest.approx((ifeval ** 2 + math_domain ** 2) ** 0.5 / 2)
    # forgetting: r = 0.8, SE = √(0.05² + 0.64·0.05²)/0.5
    assert scores.forgetting.stderr == pytest.approx((0.0025 + 0.64 * 0.0025) ** 0.5 / 0.5)
    assert json.loads(json.dumps(scores.to_dict()))["normalised_stderr"] == pytest.approx(scores.normalised_stderr)


def test_the_propagated_standard_error_matches_a_simulation():
    """Draw the items of a merge and of its experts many times: the spread of the normalised score matches the
    standard error propagated from one draw's task standard errors (the first-order formula is close at n = 72)."""
    import numpy as np

    rng = np.random.default_rng(0)
    n, merged_p, expert_p = 72, {"mb_ifeval": 0.45, "mb_gsm8k_cot": 0.6}, {"mb_ifeval": 0.8, "mb_gsm8k_cot": 0.7}
    domains = {"mb_ifeval": "instruction", "mb_gsm8k_cot": "math"}

    def draw(p: dict[str, float]) -> tuple[dict[str, float], dict[str, float]]:
        items = {t: rng.random(n) < q for t, q in p.items()}
        return ({t: float(x.mean()) for t, x in items.items()},
                {t: float(x.std(ddof=1) / np.sqrt(n)) for t, x in items.items()})

    values, stderrs = [], []
    for _ in range(2000):
        scores_m, se_m = draw(merged_p)
        scores_e, se_e = draw(expert_p)
        merged = _results(scores_m, stderr=se_m)
        experts = {domains[t]: _results({t: scores_e[t]}, stderr={t: se_e[t]}) for t in domains}
        s = compute_scores(merged, experts=experts)
        values.append(s.normalised)
        stderrs.append(s.normalised_stderr)
    assert float(np.median(stderrs)) == pytest.approx(float(np.std(values)), rel=0.1)


def test_an_unknown_standard_error_is_none_not_zero():
    merged = _results({"mb_ifeval": 0.30, "mb_gsm8k_cot": 0.20}, stderr={"mb_ifeval": 0.03})  # gsm8k: none recorded
    experts = {"instruction": _results({"mb_ifeval": 0.60}, stderr={"mb_ifeval": 0.06}),
               "math": _results({"mb_gsm8k_cot": 0.25}, stderr={"mb_gsm8k_cot": 0.05})}
    scores = compute_scores(merged, experts=experts)
    assert scores.domains["instruction"].stderr is not None
    assert scores.domains["math"].stderr is None and scores.normalised_stderr is None


def test_a_run_compared_with_itself_is_exactly_one_with_no_error():
    expert = _results({"mb_ifeval": 0.60}, stderr={"mb_ifeval": 0.06})
    scores = compute_scores(expert, experts={"instruction": expert})
    assert (scores.normalised, scores.normalised_stderr) == (1.0, 0.0)


@pytest.mark.parametrize(("a", "b", "expected"), [((0.90, 0.03), (0.80, 0.03), True),  # 0.10 ≤ 1.96·0.06
                                                  ((0.90, 0.02), (0.80, 0.02), False),  # 0.10 > 1.96·0.04
                                                  ((0.90, None), (0.80, 0.02), None)])
def test_within_noise_is_the_overlap_of_95_percent_intervals(a, b, expected):
    assert within_noise(a[0], a[1], b[0], b[1]) is expected


def test_a_reference_that_scored_zero_is_skipped(files, tmp_path):
    zero = tmp_path / "zero.json"
    save_results(_results({"mb_ifeval": 0.0}), zero)
    scores = compute_scores(files["merged"], experts={"instruction": zero})
    assert scores.domains["instruction"].skipped == {"mb_ifeval": "reference scored 0"}
    assert scores.domains["math"].skipped == {"mb_gsm8k_cot": "no expert results for this domain",
                                              "mb_math": "no expert results for this domain"}
    assert scores.normalised is None


@pytest.mark.parametrize("version", [0, 2, None])
def test_an_old_or_unknown_schema_is_a_clear_error(files, tmp_path, version):
    data = json.loads(files["merged"].read_text())
    if version is None:
        del data["schema_version"]
    else:
        data["schema_version"] = version
    old = tmp_path / "old.json"
    old.write_text(json.dumps(data))
    expected = "no schema_version" if version is None else f"schema_version {version}"
    with pytest.raises(EvaluationError, match=f"has {expected}; this MergeBench reads schema_version 1") as err:
        load_results(old)
    assert "Re-run `mergebench eval`" in err.value.hint
    with pytest.raises(EvaluationError, match="schema_version"):
        compute_scores(old, experts={})


def test_truncated_and_missing_files_are_clear_errors(files, tmp_path):
    cut = tmp_path / "cut.json"
    cut.write_text(files["merged"].read_text()[:200])
    with pytest.raises(EvaluationError, match="is not valid JSON"):
        load_results(cut)
    with pytest.raises(EvaluationError, match="does not exist"):
        load_results(tmp_path / "nope.json")


def test_results_files_follow_the_json_schema(files):
    jsonschema = pytest.importorskip("jsonschema")
    schema = json.loads(SCHEMA_FILE.read_text())
    jsonschema.validate(json.loads(files["merged"].read_text()), schema)
    assert schema["properties"]["schema_version"]["const"] == SCHEMA_VERSION


def test_the_writer_rewrites_the_file_after_each_task(tmp_path):
    out = tmp_path / "r.json"
    writer = ResultsWriter(new_results(model={"id": "m"}, settings={}, eval_data={}, environment={}), out)
    assert json.loads(out.read_text())["tasks"] == {}
    writer.add(TaskResult(name="mb_mmlu", status="ok", domain="general", role="forgetting", version=1,
                          main_metric="acc", score=0.5, seconds=2.0))
    on_disk = load_results(out)
    assert (on_disk.score("mb_mmlu"), on_disk.run["status"], on_disk.cost["eval_seconds"]) == (0.5, "running", 2.0)
    assert [p.name for p in tmp_path.iterdir()] == ["r.json"]  # no temporary files left behind


def test_result_rows_have_the_documented_columns(files):
    rows = result_rows(load_results(files["merged"]))
    assert len(rows) == 8
    assert all(tuple(r) == ROW_COLUMNS for r in rows)
    failed = next(r for r in rows if r["task"] == "mb_harmbench")
    assert (failed["status"], failed["score"], json.loads(failed["error"])["message"]) == ("failed", None, "boom")


def test_push_results_appends_rows_the_leaderboard_can_load(hub, files):
    import datasets
    from huggingface_hub import HfApi

    first = push_results("mergebench/results", load_results(files["merged"]))
    second = push_results("mergebench/results", load_results(files["base"]))
    assert first != second
    names = sorted(HfApi().list_repo_files("mergebench/results", repo_type="dataset"))
    assert "README.md" in names and len([n for n in names if n.startswith("data/")]) == 2
    table = datasets.load_dataset("mergebench/results", split="train")
    assert len(table) == 8 + 2
    assert sorted(set(table["task"]))[:2] == ["mb_gsm8k_cot", "mb_harmbench"]
    assert sorted(s for s in table["score"] if s is not None)[-1] == pytest.approx(0.9)
