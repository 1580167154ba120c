"""A submission is scored like the benchmark's own merges: on every domain's evaluation tasks and on the
forgetting tasks, taken from the reference results the runner wrote, with no task override.

``tests/space/tiny_results/`` is the results folder of a real MergeBench-Tiny run: the runner scored the
base on the six evaluation tasks and each expert on its own domain's task plus a validation surrogate.
"""

from __future__ import annotations

import time
from dataclasses import replace
from pathlib import Path

from board import Board
from jobs import Job, JobStore
from settings import SpaceConfig
from submission import Catalogue, scoring, validate_merge
from worker import Worker

from mergebench.domains import DOMAINS
from mergebench.eval.leaderboard import read_results
from mergebench.eval.results import Results, load_results, save_results

TINY_RUN = Path(__file__).parent / "tiny_results" / "smollm2-135m-instruct-tiny"
BASE = "mergebench-fixtures/tiny-llama"


def test_the_catalogue_scores_every_domain_and_the_forgetting_tasks():
    catalogue = Catalogue.from_results(read_results(TINY_RUN.parent))
    [base] = catalogue.bases
    tasks = catalogue.eval_settings[base]["tasks"]
    # what the runner scored its own merges on (an independent source: the merged models' results files)
    assert set(tasks) == set(load_results(TINY_RUN / "ties.json").tasks)
    assert tasks == [f"mb_tinybench_{d}" for d in DOMAINS] + ["mb_tinybench_general"]
    assert not any(t.endswith("_val") for t in tasks)  # validation surrogates never count
    assert scoring(catalogue, base) == {"tasks": tasks, "suite": None, "max_samples": None}
    assert scoring(catalogue, base, tasks=("mb_tinybench_math",), max_samples=2)["tasks"] == ["mb_tinybench_math"]


def _on_loopback(results: list[Results]) -> list[Results]:
    """The Tiny run's base and expert results (tasks, settings and scores unchanged), relabelled to the
    loopback Hub's tiny-llama family so that a submission can be merged from the Hub."""
    out = []
    for r in results:
        role = r.model.get("role")
        if role in ("base", "expert"):
            model_id = BASE if role == "base" else f"{BASE}_{r.model['domain']}"
            out.append(replace(r, model={**r.model, "id": model_id, "base_model": BASE}))
    return out


def test_a_submitted_merge_is_scored_on_all_five_domains_and_forgetting(space_hub, tmp_path):
    references = tmp_path / "references"
    for r in _on_loopback(read_results(TINY_RUN.parent)):
        save_results(r, references / f"{r.model['id'].replace('/', '--')}.json")
    config = SpaceConfig(results=str(references), work_dir=tmp_path / "state")  # no MERGEBENCH_EVAL_* override
    store = JobStore(config.work_dir)
    board = Board(config, store)
    experts = [board.catalogue.experts[BASE][d] for d in ("math", "coding", "safety")]
    request = validate_merge(board.catalogue, base=BASE, experts=experts, method="task_arithmetic",
                             parameters='{"scaling": 0.5}', validation_data={})
    request["eval"] = scoring(board.catalogue, BASE)
    job = store.add(Job.new("alice", "merge", request), max_active=2, max_daily=5)
    worker = Worker(store, config, on_finish=board.add_job, poll_seconds=0.2)
    worker.start()
    try:
        deadline = time.monotonic() + 300
        while store.get(job.id).status not in ("done", "failed") and time.monotonic() < deadline:
            time.sleep(0.2)
    finally:
        worker.stop()
    job = store.get(job.id)
    assert job.status == "done", (job.message, store.log_path(job.id).read_text()[-3000:])
    scored = load_results(job.results_file)
    assert {t.domain for t in scored.tasks.values()} == {*DOMAINS, "general"}
    failed = {n: t.error for n, t in scored.tasks.items() if t.status != "ok"}
    assert not failed, failed
    [row] = board.df[board.df["model"] == job.model_id].to_dict("records")
    assert all(row[d] == row[d] for d in DOMAINS), row  # a number (not NaN) for every domain
    assert row["forgetting"] == row["forgetting"]
