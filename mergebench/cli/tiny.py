"""``mergebench tiny``: MergeBench-Tiny end to end, the command behind ``make demo``."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

WorkDirOpt = Annotated[Path, typer.Option("--work-dir", help="Where Tiny keeps data, experts, merges, results.")]


def tiny_command(work_dir: WorkDirOpt = Path("demo-output/tiny")) -> None:
    """Run MergeBench-Tiny offline on CPU: five synthetic domains, five SmolLM2-135M experts, eight merge
    methods with small grids, scores and a leaderboard. Finished stages are reused: run it again to resume.

    EXAMPLES: mergebench tiny --work-dir /tmp/mb-tiny
    """
    from mergebench.cli.run import print_summary, stage_log
    from mergebench.tiny.pipeline import run_tiny

    print_summary(run_tiny(work_dir, stages=stage_log()))
