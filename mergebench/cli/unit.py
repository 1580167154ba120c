"""``mergebench unit run SPEC``: run one unit of a benchmark run (a grid point, an evaluation) anywhere."""

from __future__ import annotations

from typing import Annotated

import typer
from rich.console import Console

unit_app = typer.Typer(help="Run one unit of a benchmark run (what a Ray task or a Hugging Face Job runs).",
                       no_args_is_help=True)


@unit_app.command("run")
def unit_run(
    spec: Annotated[str, typer.Argument(help="The unit's JSON spec: a file (a run saves them in <run>/units/), "
                                             "hf://datasets/ORG/NAME/PATH, or the JSON text itself.")],
) -> None:
    """Run the unit unless its results location already holds its record (then do nothing), and publish its
    outputs atomically (a folder: renames; a Hub dataset: one commit).

    EXAMPLES: mergebench unit run runs/my-bench/units/0123456789abcdef.json
    """
    from mergebench.runner.units import load_unit, run_unit

    unit = load_unit(spec)
    outcome = run_unit(unit, progress=False)
    where = unit.results.describe(unit.path)
    Console(soft_wrap=True).print(f"{unit.label}: {'already done' if outcome == 'skipped' else 'done'} ({where})",
                                  markup=False, highlight=False)
