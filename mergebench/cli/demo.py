"""``mergebench demo``: the command behind ``make demo``."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console

from mergebench.cli.options import checked_by


def _check_method(name: str) -> None:
    """A registered method that needs no validation data (the demo has none)."""
    from mergebench import methods
    from mergebench.errors import ConfigError

    spec = methods.get(name)
    if spec.stats_stage(spec.make_params({})):
        dataless = [s.name for s in methods.REGISTRY if not s.stats_stage(s.make_params({}))]
        raise ConfigError(f"Method '{name}' needs validation data, which the demo does not have.",
                          hint=f"Choose one of {', '.join(dataless)}.")


def demo(
    work_dir: Annotated[Path, typer.Option(
        "--work-dir", help="Folder for everything the demo writes; emptied first.")] = Path("demo-output"),
    method: Annotated[str, typer.Option(
        "--method", callback=checked_by(_check_method), help="Merge method that needs no data, e.g. ties, dare.")
                      ] = "ties",
) -> None:
    """Run the offline demo: a streaming merge of tiny experts through a loopback Hub, pushed with a card.

    EXAMPLES: mergebench demo --work-dir /tmp/mb-demo --method task_arithmetic
    """
    from mergebench.demo import run_demo

    r = run_demo(work_dir, method=method, progress=sys.stderr.isatty())
    out = Console(soft_wrap=True)
    out.print(f"Merged {len(r.merge.recipe.models)} experts with {r.merge.recipe.method} "
              f"in {r.merge.seconds:.2f}s, streaming {r.merge.bytes_read / 1e6:.1f} MB from {r.hub_url}")
    out.print(f"Result folder:  {r.merge.out_dir.resolve()}")
    out.print(f"Model card:     {(r.merge.out_dir / 'README.md').resolve()}")
    out.print(f"Pushed to:      {r.pushed_repo} ({r.merge.commit_url})")
    out.print(f"Downloaded and loaded with transformers from {r.downloaded_to}: logits {r.logits_shape}")
