"""``mergebench run`` with pushes on the loopback Hub: every pushed merge carries its scores (``.eval_results``
values equal to the leaderboard's, a card with ``model-index``); the leaderboard is rebuilt from the Hub alone
(the results dataset, or the model repos); running again adds no duplicates anywhere."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest
import yaml
from huggingface_hub import HfApi, ModelCard, hf_hub_download, parse_eval_result_entries

from mergebench.data.evalrepo import build_eval_repo
from mergebench.domains import DOMAINS
from mergebench.eval.benchmark import benchmark_tasks, extra_eval_sets
from mergebench.eval.hub_results import publish_scores
from mergebench.eval.leaderboard import TASK_PREFIX, read_model_repos, read_results, table
from mergebench.eval.results import load_results
from mergebench.fixtures import write_family_to_hub_root
from mergebench.hub.endpoint import use_endpoint
from mergebench.hubserver import LoopbackHub
from mergebench.runner import BenchConfig, RunSummary, run_benchmark
from tests._hub_fixtures import DUMMY_TOKEN

EVAL, RESULTS, ORG = "bench-org/mergebench-eval", "bench-org/mergebench-results", "bench-org"
TINY_SETS = [f"tinybench_{d}" for d in (*DOMAINS, "general")]
NUMBERS = ["normalised", *DOMAINS, "forgetting"]


def _bench(family_ids: dict[str, str], validation_dir: Path, out: Path) -> dict:
    return {
        "name": "hub-scores", "output": str(out), "eval_data": EVAL,
        "bases": [{"name": "tiny-llama", "model": family_ids["base"], "experts": {d: family_ids[d] for d in DOMAINS}}],
        "data": {d: str(validation_dir / f"{d}.jsonl") for d in DOMAINS},
        "methods": [{"method": "model_soup"}, {"method": "task_arithmetic", "parameters": {"scaling": 0.5}}],
        "validation": {"suites": ["tinybench_validation"], "max_samples": 4},
        "evaluation": {"suites": ["tinybench"], "max_samples": 4},
        "push": {"results": RESULTS, "models": ORG},
    }


def _eval_results(repo: str) -> dict[str, float]:
    """``{task: value}`` of a model repo, read file by file with huggingface_hub's own parser."""
    out = {}
    for path in sorted(f for f in HfApi().list_repo_files(repo) if f.startswith(".eval_results/")):
        for entry in parse_eval_result_entries(yaml.safe_load(Path(hf_hub_download(repo, path)).read_text())):
            assert entry.dataset_id == EVAL and path == f".eval_results/{entry.task_id}.yaml"
            out[entry.task_id] = entry.value
    return out


def _snapshot(merged: list[str]) -> dict:
    """Everything a second run could duplicate: result rows, result files, eval results files, card results."""
    api = HfApi()
    rows = pd.concat([pd.read_parquet(hf_hub_download(RESULTS, f, repo_type="dataset"))
                      for f in api.list_repo_files(RESULTS, repo_type="dataset") if f.endswith(".parquet")])
    return {"rows": sorted(rows["row_id"]), "files": sorted(api.list_repo_files(RESULTS, repo_type="dataset")),
            **{repo: (sorted(f for f in api.list_repo_files(repo) if f.startswith(".eval_results/")),
                      len(ModelCard.load(repo).data.eval_results)) for repo in merged}}


def _numbers(board: pd.DataFrame) -> pd.DataFrame:
    key = ["kind", "label"]
    return board.sort_values(key)[key + NUMBERS].reset_index(drop=True)


@pytest.fixture(scope="module")
def finished(tiny_llama, validation_dir, tmp_path_factory) -> Iterator[tuple[BenchConfig, RunSummary, dict]]:
    """One run with pushes on a loopback Hub holding the tiny Llama family and a Tiny evaluation repo."""
    root = tmp_path_factory.mktemp("hub-root")
    with LoopbackHub(root) as server, use_endpoint(server.url, hf_home=tmp_path_factory.mktemp("hf-home"),
                                                    token=DUMMY_TOKEN):
        ids = write_family_to_hub_root(tiny_llama, root)
        build_eval_repo(tmp_path_factory.mktemp("eval") / "eval", names=TINY_SETS, tasks=benchmark_tasks(),
                        extra_sets=extra_eval_sets(), push_to=EVAL)
        config = BenchConfig.from_dict(_bench(ids, validation_dir, tmp_path_factory.mktemp("run") / "bench"))
        summary = run_benchmark(config, progress=False)
        yield config, summary, ids


def _merged(summary: RunSummary) -> pd.DataFrame:
    return summary.table[summary.table["kind"] == "merged"]


def test_every_pushed_merge_carries_the_leaderboards_scores_and_a_card_with_model_index(finished) -> None:
    _, summary, _ = finished
    board, merged = summary.table, _merged(summary)
    benchmark = yaml.safe_load(Path(hf_hub_download(EVAL, "eval.yaml", repo_type="dataset")).read_text())
    assert sorted(merged["model"]) == [f"{ORG}/tiny-llama-model_soup", f"{ORG}/tiny-llama-task_arithmetic"]
    for _, row in merged.iterrows():
        expected = {c.removeprefix(TASK_PREFIX): row[c] for c in board.columns
                    if c.startswith(TASK_PREFIX) and pd.notna(row[c])}
        assert len(expected) == 6  # the five domains and the forgetting task
        assert _eval_results(row["model"]) == pytest.approx(expected)
        assert set(expected) <= {t["id"] for t in benchmark["tasks"]}  # each score lands on a task's leaderboard
        served = HfApi().model_info(row["model"], expand=["evalResults"]).eval_results
        assert {e.task_id: e.value for e in served} == pytest.approx(expected)
        card = ModelCard.load(row["model"])
        card.validate()
        assert card.data.base_model_relation == "merge"
        assert {r.dataset_config: r.metric_value for r in card.data.eval_results} == pytest.approx(expected)
        assert row["model_url"].endswith(row["model"])  # the leaderboard links to the pushed repo


def test_the_results_dataset_alone_rebuilds_the_leaderboard_at_a_pinned_revision(finished) -> None:
    _, summary, _ = finished
    sha = HfApi().dataset_info(RESULTS).sha
    pd.testing.assert_frame_equal(_numbers(table(read_results(RESULTS, revision=sha))), _numbers(summary.table))


def test_a_resumed_run_duplicates_nothing(finished) -> None:
    config, summary, _ = finished
    merged = list(_merged(summary)["model"])
    before = _snapshot(merged)
    # rows: the base (6 tasks), each expert (its test and validation tasks, the forgetting task), two merges (6 each)
    assert len(before["rows"]) == len(set(before["rows"])) == 6 + 5 * 3 + 2 * 6
    run_benchmark(config, progress=False)
    assert _snapshot(merged) == before


@pytest.mark.slow
def test_a_run_from_scratch_replaces_what_it_measures_again(finished) -> None:
    config, summary, _ = finished
    merged = list(_merged(summary)["model"])
    before = _snapshot(merged)
    run_benchmark(config, resume=False, progress=False)  # the same weights measured again: rows replaced
    assert _snapshot(merged) == before


def test_model_repos_alone_rebuild_the_leaderboard_once_the_references_publish_their_scores(finished) -> None:
    _, summary, _ = finished  # last in this module: publishing moves the references' commits
    references = [load_results(p) for p in sorted((summary.results_dir / "tiny-llama").glob("[be]*.json"))]
    assert len(references) == 6
    for r in references:
        publish_scores(r)
    models = [*_merged(summary)["model"], *(r.model["id"] for r in references)]
    pd.testing.assert_frame_equal(_numbers(table(read_model_repos(models))), _numbers(summary.table))
