"""``mergebench eval --push-eval-results`` and ``mergebench leaderboard`` against the loopback Hub."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import yaml
from huggingface_hub import HfApi, hf_hub_download, parse_eval_result_entries
from typer.testing import CliRunner

from mergebench.cli import app
from mergebench.data.evalrepo import build_eval_repo
from mergebench.errors import ConfigError, ScoresError
from mergebench.eval.benchmark import benchmark_tasks, extra_eval_sets
from mergebench.eval.leaderboard import table
from mergebench.eval.results import load_results, push_results
from mergebench.fixtures import write_family_to_hub_root
from tests.space.fixture_results import BASES, fixture_results

EVAL, RESULTS = "alice/mergebench-eval", "alice/mergebench-results"


def test_eval_writes_the_scores_into_the_model_repo_and_the_results_dataset(tiny_llama, hub, hub_root,
                                                                           tmp_path) -> None:
    ids = write_family_to_hub_root(tiny_llama, hub_root)
    build_eval_repo(tmp_path / "eval", names=["tinybench_math"], tasks=benchmark_tasks(),
                    extra_sets=extra_eval_sets(), push_to=EVAL)
    out = tmp_path / "math.json"
    result = CliRunner().invoke(app, ["eval", ids["math"], "--tasks", "mb_tinybench_math,mb_tinybench_math_val",
                                      "--max-samples", "4", "--eval-data", EVAL, "--out", str(out),
                                      "--push-results", RESULTS, "--push-eval-results"])
    assert result.exit_code == 0, result.output
    scored = load_results(out)
    for task in ("mb_tinybench_math", "mb_tinybench_math_val"):
        text = Path(hf_hub_download(ids["math"], f".eval_results/{task}.yaml")).read_text()
        [entry] = parse_eval_result_entries(yaml.safe_load(text))
        assert (entry.dataset_id, entry.dataset_revision, entry.value) == (
            EVAL, HfApi().dataset_info(EVAL).sha, scored.score(task))
        assert entry.source_url.endswith(f"/datasets/{RESULTS}")
    assert any(f.endswith(".parquet") for f in HfApi().list_repo_files(RESULTS, repo_type="dataset"))


def test_eval_refuses_to_publish_scores_of_packaged_data_before_loading_the_model(tiny_llama, hub, hub_root,
                                                                                 tmp_path) -> None:
    ids = write_family_to_hub_root(tiny_llama, hub_root)
    result = CliRunner().invoke(app, ["eval", ids["math"], "--tasks", "mb_tinybench_math", "--out",
                                      str(tmp_path / "r.json"), "--push-eval-results"])
    assert isinstance(result.exception, ScoresError)
    assert "packaged evaluation data" in str(result.exception)
    assert "--eval-data org/mergebench-eval" in result.exception.hint
    assert not (tmp_path / "r.json").exists()  # refused before any evaluation


def test_leaderboard_from_a_pinned_results_dataset(hub) -> None:
    results = fixture_results(BASES[0])
    for r in results:
        push_results(RESULTS, r)
    sha = HfApi().dataset_info(RESULTS).sha
    result = CliRunner().invoke(app, ["leaderboard", RESULTS, "--revision", sha, "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = {(r["kind"], r["label"]): r["normalised"] for r in json.loads(result.stdout)}
    expected = table(results)
    assert rows == pytest.approx(dict(zip(zip(expected["kind"], expected["label"], strict=True),
                                          expected["normalised"], strict=True)), nan_ok=True)
    text = CliRunner().invoke(app, ["leaderboard", RESULTS])
    assert text.exit_code == 0 and "MergeBench leaderboard" in text.stdout


def test_leaderboard_needs_one_source() -> None:
    for args in (["leaderboard"], ["leaderboard", "org/results", "--models", "org/a"]):
        result = CliRunner().invoke(app, args)
        assert isinstance(result.exception, ConfigError)
        assert result.exception.hint == "mergebench leaderboard org/mergebench-results --revision main"
