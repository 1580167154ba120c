"""Every declared task reads its data and formats every row; suites; the ``mergebench eval`` command."""

from __future__ import annotations

import json

import pytest
import typer
from typer.testing import CliRunner

from mergebench.cli.eval import eval_command
from mergebench.domains import DOMAINS
from mergebench.eval.data_source import EvalSource, task_data
from mergebench.eval.tasks import SUITES, TASKS, get_task, resolve_tasks


def test_every_task_is_prefixed_and_in_exactly_one_suite():
    assert all(name.startswith("mb_") for name in TASKS)
    assert sorted(n for names in SUITES.values() for n in names) == sorted(TASKS)
    assert len(SUITES["domains"]) == 21  # IFEval, GSM8K, MATH, 12 multilingual, HumanEval+, MBPP+, 4 safety
    assert set(SUITES["forgetting"]) == {"mb_mmlu", "mb_triviaqa", "mb_squad_v2", "mb_coqa", "mb_pubmedqa",
                                         "mb_wmt14_fr_en"}
    assert {TASKS[n].domain for n in SUITES["validation"]} == set(DOMAINS)
    assert {TASKS[n].domain for n in SUITES["tiny"]} == {*DOMAINS, "general"}
    assert "mb_ifeval" not in SUITES["validation"]  # the reference validated on IFEval itself (defect 4)


@pytest.mark.parametrize("name", sorted(TASKS))
def test_every_task_reads_its_data_and_formats_every_row(name, tmp_path):
    import datasets

    spec = TASKS[name]
    data = task_data(EvalSource("packaged", str(tmp_path)), spec.eval_set)
    rows = datasets.load_dataset(data.repo, data.subset, split=spec.split)
    if spec.row_filter is not None:
        rows = rows.filter(spec.row_filter)
    assert len(rows) > 0
    docs = [spec.prompt(row, name) for row in rows]
    assert all(d.query.strip() for d in docs)
    if spec.kind == "loglikelihood":
        assert all(len(d.choices) >= 1 for d in docs)
        assert all(isinstance(d.gold_index, int) and d.gold_index < len(d.choices) for d in docs)
    assert data.provenance["sha256"] and data.provenance["config"] == spec.eval_set


def test_named_selection_and_suggestions():
    assert [t.name for t in resolve_tasks(None, ["gsm8k_cot,mb_mmlu", "mb_mmlu"])] == ["mb_gsm8k_cot", "mb_mmlu"]
    assert get_task("ifeval").name == "mb_ifeval"


def _app() -> typer.Typer:
    app = typer.Typer()
    app.command("eval")(eval_command)
    app.command("noop")(lambda: None)  # keep "eval" a subcommand
    return app


def test_cli_lists_tasks_as_json():
    result = CliRunner().invoke(_app(), ["eval", "--list", "--format", "json"])
    assert result.exit_code == 0, result.output
    rows = json.loads(result.stdout)
    assert {r["task"] for r in rows} == set(TASKS)
    assert next(r for r in rows if r["task"] == "mb_humaneval_plus")["metric"] == "pass@1"


def test_cli_evaluates_and_writes_results(tiny_llama, tmp_path):
    out = tmp_path / "r.json"
    result = CliRunner().invoke(_app(), ["eval", str(tiny_llama.base), "--tasks", "mb_tiny_mmlu_stem,mb_tiny_xstest",
                                         "--max-samples", "2", "--out", str(out), "--format", "json"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert [t["task"] for t in printed["tasks"]] == ["mb_tiny_mmlu_stem", "mb_tiny_xstest"]
    saved = json.loads(out.read_text())
    assert saved["run"]["status"] == "complete" and saved["settings"]["max_samples"] == 2
    assert saved["tasks"]["mb_tiny_mmlu_stem"]["num_samples"] == 2


def test_cli_without_suite_or_tasks_is_a_config_error(tiny_llama):
    result = CliRunner().invoke(_app(), ["eval", str(tiny_llama.base)])
    assert result.exit_code == 1
    assert "Give a MODEL and --suite or --tasks." in str(result.exception)
