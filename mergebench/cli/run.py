"""``mergebench run BENCH.yaml``: the benchmark runner."""

from __future__ import annotations

import logging
import shlex
from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.console import Console

from mergebench.cli.options import AddressOpt, ExecutorOpt, MaxConcurrentOpt

if TYPE_CHECKING:
    from mergebench.runner import RunSummary
    from mergebench.runner.progress import StageLog


def run_command(
    config: Annotated[Path, typer.Argument(help="Benchmark configuration (BENCH.yaml).")],
    fresh: Annotated[bool, typer.Option("--fresh", help="Delete the output folder first instead of resuming.")] = False,
    methods: Annotated[str | None, typer.Option("--methods", help="Only these method rows (comma-separated).")] = None,
    executor: ExecutorOpt = None,
    address: AddressOpt = None,
    max_concurrent: MaxConcurrentOpt = None,
) -> None:
    """Grid-search every method on the validation tasks, evaluate each winner, print the leaderboard.

    Finished grid points and evaluations are cached in the output folder: run the same command again to
    resume an interrupted run (with hf-jobs, it re-attaches to the Jobs still running).

    EXAMPLES: mergebench run bench.yaml --methods ties,task_arithmetic;
    mergebench run bench.yaml --executor ray --max-concurrent 4; mergebench run bench.yaml --executor hf-jobs
    """
    from mergebench.runner import BenchConfig, run_benchmark

    names = [m.strip() for m in methods.split(",") if m.strip()] if methods else None
    bench = BenchConfig.from_yaml(config).with_executor(executor, address=address, max_concurrent=max_concurrent)
    print_summary(run_benchmark(bench, resume=not fresh, methods=names, stages=stage_log()))


def stage_log() -> StageLog:
    """One line per stage on stderr, and on a terminal a live line for the running stage, unless ``--verbose``
    (whose log lines would tear it)."""
    from mergebench.runner.progress import StageLog

    verbose = logging.getLogger("mergebench").isEnabledFor(logging.INFO)
    return StageLog(live=False if verbose else None)


def print_summary(summary: RunSummary) -> None:
    """The leaderboard, where the results are, and the command that opens the Space on them."""
    from mergebench.eval.leaderboard import format_table

    out = Console(soft_wrap=True)
    out.print(format_table(summary.table), markup=False, highlight=False)
    out.print(f"\nBenchmark run: {summary.seconds:.0f}s. Results: {summary.results_dir.resolve()}", markup=False)
    out.print(f"Open the Space on them:  mergebench space --results {shlex.quote(str(summary.results_dir))}",
              markup=False, highlight=False)
