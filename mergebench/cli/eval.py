"""``mergebench eval MODEL``: evaluate a model with lighteval; results JSON to --out, a summary on stdout.
``mergebench tasks ls`` (also ``mergebench eval --list``): the tasks and their suites.

Wired by the CLI as ``app.command("eval")(eval_command)`` and ``app.add_typer(tasks_app, name="tasks")``.
"""

from __future__ import annotations

import json
from typing import Annotated, Any

import typer
from rich.table import Table

from mergebench.cli.options import Backend, FormatOpt, ResultsOutOpt, ResultsPushOpt, checked_by
from mergebench.cli.output import out, print_rows
from mergebench.errors import ConfigError

tasks_app = typer.Typer(help="List the evaluation tasks and their suites.", no_args_is_help=True)


def _check_suite(name: str) -> None:
    from mergebench.eval.tasks import get_suite

    get_suite(name)


def _check_tasks(names: str) -> None:
    from mergebench.eval.tasks import resolve_tasks

    resolve_tasks(None, [names])


SuiteOpt = Annotated[str | None, typer.Option(
    "--suite", callback=checked_by(_check_suite),
    help="Task suite: domains, forgetting, validation, tiny, … (every suite: mergebench tasks ls).")]
TasksOpt = Annotated[list[str] | None, typer.Option(
    "--tasks", callback=checked_by(_check_tasks), help="Task names (repeat or comma-separate).")]
BackendOpt = Annotated[Backend, typer.Option("--backend", help="transformers (CPU/GPU) or vllm (GPU).")]


def task_rows() -> list[dict[str, Any]]:
    """One row per task: name, suite, domain, kind, main metric, data (evaluation set) and version."""
    from mergebench.eval.tasks import TASKS

    return [{"task": t.name, "suite": t.suite_name, "domain": t.domain, "kind": t.kind, "metric": t.main_metric,
             "data": t.eval_set, "version": t.version} for t in TASKS.values()]


@tasks_app.command("ls")
def tasks_ls(format: FormatOpt = "table") -> None:
    """List the evaluation tasks: suite, domain, kind, main metric, evaluation set and version.

    EXAMPLES: mergebench tasks ls
              mergebench tasks ls --format json
    """
    print_rows(task_rows(), format)


def _print_results(results, format: str) -> None:
    from mergebench.eval.scores import task_stderr

    rows = [{"task": n, "status": t.status, "score": t.score, "stderr": task_stderr(results, n),
             "metric": t.main_metric, "samples": t.num_samples, "seconds": t.seconds,
             "error": (t.error or {}).get("message")} for n, t in results.tasks.items()]
    if format == "json":
        out.print_json(json.dumps({"run": results.run, "tasks": rows}))
        return
    table = Table("task", "status", "score ± SE", "metric", "samples", "seconds",
                  title=f"mergebench eval: {results.model['id']}")
    for r in rows:
        score = "–" if r["score"] is None else f"{r['score']:.4f}"
        score += f" ± {r['stderr']:.4f}" if r["score"] is not None and r["stderr"] is not None else ""
        table.add_row(r["task"], r["status"], score, r["metric"], str(r["samples"]), f"{r['seconds']:.1f}")
    out.print(table)


def eval_command(
    model: Annotated[str | None, typer.Argument(help="Model folder or Hub id.")] = None,
    suite: SuiteOpt = None,
    tasks: TasksOpt = None,
    backend: BackendOpt = "transformers",
    max_samples: Annotated[int | None, typer.Option("--max-samples", min=1, help="At most N items per task.")] = None,
    out_file: ResultsOutOpt = None,
    push_results: ResultsPushOpt = None,
    push_eval_results: Annotated[bool, typer.Option(
        "--push-eval-results", help="Also write the scores into the model's Hub repo in one commit: "
                                    ".eval_results/*.yaml (shown on the Hub) and the card's model-index. Needs a "
                                    "Hub model and --eval-data org/name.")] = False,
    eval_data: Annotated[str | None, typer.Option(
        "--eval-data", help="mergebench-eval dataset: org/name, org/name@REV or a folder (default: packaged).")
                         ] = None,
    refusal_judge: Annotated[str | None, typer.Option("--refusal-judge", help="Classifier model (GPU).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", min=1, help="Batch size (transformers).")] = 32,
    device: Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda if any).")] = None,
    list_tasks: Annotated[bool, typer.Option("--list", help="List the tasks, as `mergebench tasks ls`, and exit.")
                          ] = False,
    format: FormatOpt = "table",
) -> None:
    """Evaluate a model on a MergeBench suite with lighteval, writing results as each task finishes.

    EXAMPLES: mergebench eval merged/ --suite tiny --out results.json
              mergebench eval org/merged --suite domains --backend vllm --push-results org/mergebench-results
              mergebench eval org/merged --suite domains --eval-data org/mergebench-eval --push-eval-results
    """
    if list_tasks:
        return print_rows(task_rows(), format)
    if model is None or (suite is None and not tasks):
        raise ConfigError("Give a MODEL and --suite or --tasks.",
                          hint="mergebench eval merged/ --suite tiny --out results.json")
    from mergebench.eval.lighteval_wrapper import ModelOptions
    from mergebench.eval.run import evaluate

    results = evaluate(model, suite=suite, tasks=tasks, backend=backend, max_samples=max_samples, out=out_file,
                       eval_data=eval_data, refusal_judge=refusal_judge, push_to=push_results,
                       push_eval_results=push_eval_results,
                       options=ModelOptions(batch_size=batch_size, device=device))
    _print_results(results, format)
