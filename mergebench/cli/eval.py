"""``mergebench eval MODEL``: evaluate a model with lighteval; results JSON to --out, a summary on stdout.

Wired by the CLI as ``app.command("eval")(eval_command)``.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.table import Table

from mergebench.errors import ConfigError

out = Console()

SuiteOpt = Annotated[str | None, typer.Option("--suite", help="domains, forgetting, validation or tiny.")]
TasksOpt = Annotated[list[str] | None, typer.Option("--tasks", help="Task names (repeat or comma-separate).")]
BackendOpt = Annotated[str, typer.Option("--backend", help="transformers (CPU/GPU) or vllm (GPU).")]


def _list_tasks(format: str) -> None:
    from mergebench.eval.tasks import SUITES, TASKS

    rows = [{"task": t.name, "suite": next(s for s, names in SUITES.items() if t.name in names), "domain": t.domain,
             "kind": t.kind, "metric": t.main_metric, "data": t.eval_set, "version": t.version} for t in TASKS.values()]
    if format == "json":
        out.print_json(json.dumps(rows))
        return
    table = Table("task", "suite", "domain", "kind", "main metric", "data")
    for r in rows:
        table.add_row(r["task"], r["suite"], r["domain"], r["kind"], r["metric"], r["data"])
    out.print(table)


def _print_results(results, format: str) -> None:
    rows = [{"task": n, "status": t.status, "score": t.score, "metric": t.main_metric, "samples": t.num_samples,
             "seconds": t.seconds, "error": (t.error or {}).get("message")} for n, t in results.tasks.items()]
    if format == "json":
        out.print_json(json.dumps({"run": results.run, "tasks": rows}))
        return
    table = Table("task", "status", "score", "metric", "samples", "seconds",
                  title=f"mergebench eval: {results.model['id']}")
    for r in rows:
        score = "–" if r["score"] is None else f"{r['score']:.4f}"
        table.add_row(r["task"], r["status"], score, r["metric"], str(r["samples"]), f"{r['seconds']:.1f}")
    out.print(table)


def eval_command(
    model: Annotated[str | None, typer.Argument(help="Model folder or Hub id.")] = None,
    suite: SuiteOpt = None,
    tasks: TasksOpt = None,
    backend: BackendOpt = "transformers",
    max_samples: Annotated[int | None, typer.Option("--max-samples", help="At most N items per task.")] = None,
    out_file: Annotated[Path | None, typer.Option("--out", help="Results JSON, rewritten per task.")] = None,
    push_results: Annotated[str | None, typer.Option("--push-results", help="Append to this Hub dataset.")] = None,
    eval_data: Annotated[str | None, typer.Option("--eval-data", help="mergebench-eval repo[@rev] or folder.")] = None,
    refusal_judge: Annotated[str | None, typer.Option("--refusal-judge", help="Classifier model (GPU).")] = None,
    batch_size: Annotated[int, typer.Option("--batch-size", help="Batch size (transformers).")] = 32,
    device: Annotated[str | None, typer.Option("--device", help="cpu or cuda (default: cuda if any).")] = None,
    list_tasks: Annotated[bool, typer.Option("--list", help="List the tasks and suites, then exit.")] = False,
    format: Annotated[str, typer.Option("--format", help="Output format: table or json.")] = "table",
) -> None:
    """Evaluate a model on a MergeBench suite with lighteval, writing results as each task finishes.

    EXAMPLES: mergebench eval merged/ --suite tiny --out results.json
              mergebench eval org/merged --suite domains --backend vllm --push-results org/mergebench-results
    """
    if list_tasks:
        return _list_tasks(format)
    if model is None or (suite is None and not tasks):
        raise ConfigError("Give a MODEL and --suite or --tasks.",
                          hint="mergebench eval merged/ --suite tiny --out results.json")
    from mergebench.eval.lighteval_wrapper import ModelOptions
    from mergebench.eval.run import evaluate

    results = evaluate(model, suite=suite, tasks=tasks, backend=backend, max_samples=max_samples, out=out_file,
                       eval_data=eval_data, refusal_judge=refusal_judge, push_to=push_results,
                       options=ModelOptions(batch_size=batch_size, device=device))
    _print_results(results, format)
