"""The Space's ``refusal_judge`` setting (``MERGEBENCH_REFUSAL_JUDGE``): submissions are judged by it, on the Space
(the worker's pipeline) and as Hugging Face Jobs (the unit's options), and the table's *Judge* column shows it,
also for results read back from a results dataset. The judge is pinned like the models: results and units name
its commit. The tiny Llama on the loopback Hub stands in for ``allenai/wildguard`` (no download here)."""

from __future__ import annotations

import json
from dataclasses import asdict, replace
from pathlib import Path

import pipeline
from dispatch import submission_unit
from huggingface_hub import HfApi
from jobs import Job
from processing import display
from settings import SpaceConfig
from submission import Catalogue, validate_model
from worker import _config_json

from mergebench.eval.leaderboard import read_results, results_from_rows, table
from mergebench.eval.results import Results, load_results, result_rows
from mergebench.runner.units import ResultsLocation, SubmissionUnit, load_unit, run_unit, spec_json

BASE = "mergebench-fixtures/tiny-llama"


def _pinned() -> str:
    """The judge repo at its current commit (what a unit carries; results name it ``classifier:`` + this)."""
    return f"{BASE}@{HfApi().model_info(BASE).sha}"


def _model_job(space_hub) -> Job:
    """A submitted model (the fixture math expert), scored on one judged task, one item."""
    catalogue = Catalogue.from_results(read_results(space_hub.results_dir))
    request = validate_model(catalogue, model=f"{BASE}_math", base=BASE, method=None, parameters=None)
    return Job.new("alice", "model", {**request, "eval": {"tasks": ["mb_tiny_harmbench"], "max_samples": 1}})


def _assert_judged(results: Results) -> None:
    judge = f"classifier:{_pinned()}"
    assert results.settings["judge"] == judge
    assert results.tasks["mb_tiny_harmbench"].side_info["judge"] == {"name": judge, "kind": "classifier"}


def test_a_submission_on_the_space_is_judged_by_the_setting_and_the_table_shows_it(space_hub, tmp_path: Path):
    config = SpaceConfig.from_env({"MERGEBENCH_REFUSAL_JUDGE": BASE}, file=None, results=str(space_hub.results_dir),
                                  work_dir=tmp_path)
    assert config.refusal_judge == BASE
    job = _model_job(space_hub)
    job_dir = tmp_path / job.id  # what the worker hands its pipeline process
    job_dir.mkdir()
    (job_dir / "job.json").write_text(json.dumps(asdict(job)))
    (job_dir / "config.json").write_text(_config_json(config))
    outcome = pipeline.run(job_dir)
    assert outcome["status"] == "done"
    results = load_results(outcome["results_file"])
    _assert_judged(results)

    references = read_results(space_hub.results_dir)
    for shown in (results, *results_from_rows(result_rows(results))):  # a results file; a results dataset's rows
        df = table([*references, shown])
        row = df[df["run_id"] == results.run["id"]]
        assert display(row, ["Judge"])["Judge"].tolist() == [f"classifier:{_pinned()}"]
        assert df.loc[df["run_id"] != results.run["id"], "judge"].isna().all()  # the fixtures record no judge


def test_a_submission_run_as_a_job_carries_the_judge_to_its_evaluation(space_hub, tmp_path: Path):
    job = _model_job(space_hub)
    config = SpaceConfig(results=str(space_hub.results_dir), work_dir=tmp_path, requests_repo="alice/requests",
                         dispatch="hf-jobs", jobs_flavor="cpu-upgrade")
    judged = replace(config, refusal_judge=BASE)
    unit = load_unit(spec_json(submission_unit(job, judged)))  # what the Job's command line carries
    assert isinstance(unit, SubmissionUnit) and unit.options.refusal_judge == _pinned()  # the Job loads that commit
    assert submission_unit(job, config).options.refusal_judge is None  # the rule-based judge, the CPU default
    assert unit.fingerprint != submission_unit(job, config).fingerprint  # another judge: another unit

    local = unit.model_copy(update={"results": ResultsLocation(folder=str(tmp_path / "out"))})
    assert run_unit(local) == "done"
    _assert_judged(load_results(tmp_path / "out" / local.path))
