"""One lighteval pipeline for all of a model's log-likelihood tasks: the same scores as one pipeline per task, paid
once; a task that breaks the shared pipeline is recorded as failed and the others are still scored."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from mergebench.eval import evaluate, run
from mergebench.eval.lighteval_wrapper import pipeline_groups
from mergebench.eval.tasks import get_task
from mergebench.eval.tinybench import eval_splits
from mergebench.fixtures import Family

TASKS = ["tinybench_math", "tinybench_coding", "tinybench_math_val"]


@pytest.fixture
def pipelines(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The ``tasks`` argument of every lighteval ``Pipeline`` built from now on."""
    from lighteval.pipeline import Pipeline

    built: list[str] = []
    original = Pipeline.__init__

    def counting(self, tasks: str, *args, **kwargs) -> None:
        built.append(tasks)
        original(self, tasks, *args, **kwargs)

    monkeypatch.setattr(Pipeline, "__init__", counting)
    return built


def test_log_likelihood_tasks_share_a_pipeline_and_generative_tasks_run_alone() -> None:
    specs = [get_task(n) for n in ("tinybench_math", "tiny_ifeval", "tinybench_coding", "tiny_humaneval")]
    groups = pipeline_groups(specs, max_samples=4)
    assert [[s.name for s in g] for g in groups] == [["mb_tinybench_math", "mb_tinybench_coding"],
                                                      ["mb_tiny_ifeval"], ["mb_tiny_humaneval"]]
    # a suite default cap (tiny tasks' max_samples) is a pipeline setting: different caps, different pipelines
    tiny = [get_task("tiny_mmlu_stem"), get_task("tiny_hellaswag")]
    assert len(pipeline_groups(tiny, max_samples=None)) == 2 and len(pipeline_groups(tiny, max_samples=4)) == 1


def test_one_pipeline_gives_the_scores_of_one_pipeline_per_task(tiny_llama: Family, pipelines: list[str],
                                                                 monkeypatch: pytest.MonkeyPatch) -> None:
    shared = evaluate(tiny_llama.base, tasks=TASKS, max_samples=6, progress=False)
    assert pipelines == [",".join(f"mb_{n}|0" for n in TASKS)]
    assert list(shared.tasks) == [f"mb_{n}" for n in TASKS] == shared.settings["tasks"]
    monkeypatch.setattr(run, "pipeline_groups", lambda specs, max_samples: [[s] for s in specs])
    alone = evaluate(tiny_llama.base, tasks=TASKS, max_samples=6, progress=False)
    assert len(pipelines) == 1 + len(TASKS)
    for name, task in shared.tasks.items():
        other = alone.tasks[name]
        assert (task.status, task.score, task.metrics, task.num_samples) == \
            (other.status, other.score, other.metrics, other.num_samples), name
        assert task.stderr == pytest.approx(other.stderr)
    # the shared pipeline's time is divided among its tasks (by requests: items × choices)
    assert sum(t.seconds for t in shared.tasks.values()) == pytest.approx(shared.cost["eval_seconds"], abs=0.01)
    assert all(t.seconds > 0 for t in shared.tasks.values())


def _write_eval_data(folder: Path, *, broken: str) -> None:
    """A local evaluation-data folder for TASKS whose ``broken`` config has rows without their ``gold`` answer."""
    for domain in ("math", "coding"):
        config = folder / f"tinybench_{domain}"
        config.mkdir(parents=True)
        for split, rows in eval_splits(domain).items():
            if domain == broken:
                rows = [{k: v for k, v in row.items() if k != "gold"} for row in rows]
            (config / f"{split}.jsonl").write_text("".join(json.dumps(r) + "\n" for r in rows), encoding="utf-8")


def test_a_task_that_breaks_the_shared_pipeline_fails_alone(tiny_llama: Family, pipelines: list[str],
                                                            tmp_path: Path) -> None:
    _write_eval_data(tmp_path / "eval", broken="coding")
    results = evaluate(tiny_llama.base, tasks=TASKS, max_samples=4, eval_data=tmp_path / "eval", progress=False)
    assert pipelines[0].count("|0") == 3 and len(pipelines) == 4  # the shared one, then one per task
    statuses = {name: task.status for name, task in results.tasks.items()}
    assert statuses == {"mb_tinybench_math": "ok", "mb_tinybench_coding": "failed", "mb_tinybench_math_val": "ok"}
    assert "gold" in results.tasks["mb_tinybench_coding"].error["message"]
    assert results.run["status"] == "complete"


def test_mergebench_eval_prints_each_score_with_its_standard_error(tiny_llama: Family, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from mergebench.cli import app
    from mergebench.eval.results import load_results

    out = tmp_path / "r.json"
    result = CliRunner().invoke(app, ["eval", str(tiny_llama.base), "--tasks", "tinybench_safety", "--max-samples", "8",
                                      "--out", str(out)])
    assert result.exit_code == 0, result.output
    task = load_results(out).tasks["mb_tinybench_safety"]
    assert f"{task.score:.4f} ± {task.stderr['acc']:.4f}" in result.output
