"""The benchmark runner on the tiny Llama family: scores, grid search, resume after a kill, pushes, bad configs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from statistics import fmean

import pytest
import yaml
from huggingface_hub import HfApi, ModelCard

from mergebench.domains import DOMAINS
from mergebench.errors import ConfigError
from mergebench.eval.results import load_results
from mergebench.fixtures import write_family_to_hub_root
from mergebench.runner import BenchConfig, run_benchmark
from mergebench.runner.progress import StageLog

VOLATILE = ["merge_seconds", "validation_seconds", "total_seconds", "eval_seconds", "peak_memory_bytes", "run_id",
            "finished_at", "model", "model_url", "card_url"]
"""Columns that differ between two runs of the same configuration: timings, ids, output paths."""


def _bench(family, validation_dir: Path, out: Path, **extra) -> dict:
    return {
        "name": "tiny-llama-bench", "output": str(out),
        "bases": [{"name": "tiny-llama", "model": str(family.base),
                   "experts": {d: str(p) for d, p in family.experts.items()}}],
        "data": {d: str(validation_dir / f"{d}.jsonl") for d in DOMAINS},
        "methods": [
            {"method": "model_soup"},
            {"method": "task_arithmetic", "grid": {"scaling": [0.3, 1.0]}},
            {"method": "regmean", "parameters": {"num_samples": 4, "alpha": 0.5}},
        ],
        "validation": {"suites": ["tinybench_validation"], "max_samples": 4},
        "evaluation": {"suites": ["tinybench"], "max_samples": 4},
        **extra,
    }


@pytest.fixture(scope="module")
def stage_log() -> StageLog:
    return StageLog(enabled=False)  # silent, but it still counts the stages and their weights


@pytest.fixture(scope="module")
def finished(tiny_llama, validation_dir, tmp_path_factory, stage_log):
    out = tmp_path_factory.mktemp("run") / "bench"
    summary = run_benchmark(BenchConfig.from_dict(_bench(tiny_llama, validation_dir, out)), progress=False,
                            stages=stage_log)
    return summary


def test_the_plan_announces_exactly_the_stages_that_ran(finished, stage_log: StageLog) -> None:
    """The progress bar's weights come from the plan: an expert's evaluation planned without the general
    (forgetting) tasks it runs took MergeBench-Tiny's bar to 103 % before its last line."""
    assert stage_log.done_stages == stage_log.total_stages
    assert stage_log.done_weight == pytest.approx(stage_log.total_weight)


def test_every_method_has_a_scored_row_matching_an_independent_computation(finished) -> None:
    board = finished.table
    merged = board[board["kind"] == "merged"].set_index("method")
    assert set(merged.index) == {"model_soup", "task_arithmetic", "regmean"}
    assert merged[["normalised", "merge_seconds", "validation_seconds"]].notna().all().all()
    assert merged.loc["model_soup", "validation_seconds"] == 0  # a single point needs no validation
    assert merged.loc["task_arithmetic", "validation_seconds"] > merged.loc["task_arithmetic", "merge_seconds"]

    folder = finished.results_dir / "tiny-llama"
    experts = {d: load_results(folder / f"expert_{d}.json") for d in DOMAINS}
    base = load_results(folder / "base.json")
    for method in merged.index:
        r = load_results(folder / f"{method}.json")
        ratios = [r.score(f"mb_tinybench_{d}") / experts[d].score(f"mb_tinybench_{d}") for d in DOMAINS
                  if experts[d].score(f"mb_tinybench_{d}")]
        assert merged.loc[method, "normalised"] == pytest.approx(fmean(ratios))
        general = base.score("mb_tinybench_general")  # random tiny models may score 0: no ratio then
        forget = r.score("mb_tinybench_general") / general if general else None
        assert merged.loc[method, "forgetting"] == (pytest.approx(forget) if forget is not None else None)
    assert (finished.output / "leaderboard.md").read_text().count("task_arithmetic") >= 1


def test_grid_search_keeps_the_best_validation_point_and_only_its_weights(finished) -> None:
    grid = sorted((finished.output / "grid" / "tiny-llama" / "task_arithmetic").glob("*.json"))
    records = sorted((json.loads(p.read_text()) for p in grid), key=lambda r: r["parameters"]["scaling"])
    assert [r["parameters"]["scaling"] for r in records] == [0.3, 1.0]  # the grid's order
    best = max(records, key=lambda r: r["score"])  # a tie goes to the first point of the grid, as in the runner
    result = load_results(finished.results_dir / "tiny-llama" / "task_arithmetic.json")
    assert result.model["parameters"] == best["parameters"] and result.model["grid_point"] == best["id"]
    kept = [p.name for p in (finished.output / "models" / "tiny-llama" / "task_arithmetic").iterdir() if p.is_dir()]
    assert kept == [best["id"]]


def _grid_records(out: Path) -> dict[Path, int]:
    return {p: p.stat().st_mtime_ns for p in (out / "grid").rglob("*.json")}


def test_a_killed_run_resumes_without_redoing_points_and_gives_the_same_table(
        tiny_llama, validation_dir, tmp_path, finished) -> None:
    out = tmp_path / "bench"
    config = tmp_path / "bench.yaml"
    config.write_text(yaml.safe_dump(_bench(tiny_llama, validation_dir, out)))
    cmd = [sys.executable, "-m", "mergebench.cli", "run", str(config)]
    scratch = tmp_path / "tmp"  # the runs' temporary directory: what the kill leaves there is seen
    scratch.mkdir()
    env = {**os.environ, "TMPDIR": str(scratch)}
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=env)
    deadline = time.monotonic() + 300
    while (not _grid_records(out) or not list(scratch.glob("mergebench-eval-*"))) and first.poll() is None \
            and time.monotonic() < deadline:
        time.sleep(0.1)
    assert first.poll() is None, first.stderr.read()
    os.kill(first.pid, signal.SIGKILL)  # a point is done and another is being evaluated
    first.wait()
    before = _grid_records(out)
    assert before
    assert list(scratch.glob("mergebench-eval-*"))  # SIGKILL ran no clean-up

    second = subprocess.run(cmd, capture_output=True, text=True, timeout=600, env=env)
    assert second.returncode == 0, second.stderr
    assert [p.name for p in scratch.glob("mergebench-*")] == []  # the killed run's scratch was removed
    assert "mergebench space --results" in second.stdout
    after = _grid_records(out)
    assert all(after[p] == stamp for p, stamp in before.items())  # finished points were not redone
    assert len(after) == 4  # soup, two TA points, regmean

    fresh = finished.table.drop(columns=VOLATILE)
    resumed = run_benchmark(config, progress=False).table.drop(columns=VOLATILE)
    key = ["kind", "label"]
    assert resumed.sort_values(key).reset_index(drop=True).equals(fresh.sort_values(key).reset_index(drop=True))


def test_streams_hub_models_and_pushes_merges_with_cards_naming_their_parents_and_results(
        tiny_llama, validation_dir, tmp_path, hub, hub_root) -> None:
    ids = write_family_to_hub_root(tiny_llama, hub_root)
    bench = _bench(tiny_llama, validation_dir, tmp_path / "bench",
                   push={"results": "bench-org/mergebench-results", "models": "bench-org"})
    bench["bases"] = [{"name": "tiny-llama", "model": ids["base"], "experts": {d: ids[d] for d in DOMAINS}}]
    bench["methods"] = [{"method": "task_arithmetic", "parameters": {"scaling": 0.5}}]
    summary = run_benchmark(BenchConfig.from_dict(bench), progress=False)
    api = HfApi()
    assert "model.safetensors" in api.list_repo_files("bench-org/tiny-llama-task_arithmetic")
    card = ModelCard.load("bench-org/tiny-llama-task_arithmetic")
    card.validate()
    assert card.data.base_model_relation == "merge"
    assert set(card.data.base_model) == {ids["base"], *(ids[d] for d in DOMAINS)}
    assert any(f.endswith(".parquet") for f in api.list_repo_files("bench-org/mergebench-results",
                                                                    repo_type="dataset"))
    pinned = json.loads((summary.output / "grid" / "tiny-llama" / "task_arithmetic").glob("*.json").__next__()
                        .read_text())["recipe"]
    assert "@" in pinned["base_model"]  # Hub references pinned to commit shas


def test_a_bad_configuration_lists_every_problem_before_any_work(tiny_llama, validation_dir, tmp_path) -> None:
    bench = _bench(tiny_llama, validation_dir, tmp_path / "bench")
    del bench["bases"][0]["experts"]["coding"]
    bench["data"].pop("math")
    bench["methods"] = [{"method": "tiess"}, {"method": "ties", "grid": {"top_k": [1.5]}},
                        {"method": "regmean"}]
    bench["evaluation"] = {"tasks": ["mb_no_such_task"]}
    with pytest.raises(ConfigError) as e:
        BenchConfig.from_dict(bench)
    text = str(e.value)
    for expected in ("no expert for coding", "Did you mean 'ties'", "top_k", "nothing for math", "mb_no_such_task"):
        assert expected in text, (expected, text)
    assert not (tmp_path / "bench").exists()
