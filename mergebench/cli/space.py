"""``mergebench space``: serve the MergeBench Space (``space/app.py``) locally over a results source."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from mergebench.cli.options import Backend
from mergebench.errors import ConfigError

SPACE_DIR = Path(__file__).resolve().parents[2] / "space"


def space_command(
    results: Annotated[str, typer.Option("--results", help="Results folder (a run's results/), one results "
                                                           "JSON, or a Hub results dataset id.")],
    port: Annotated[int | None, typer.Option("--port", help="Port (default: first free from 7860).")] = None,
    host: Annotated[str, typer.Option("--host", help="Interface to listen on.")] = "127.0.0.1",
    work_dir: Annotated[Path | None, typer.Option(
        "--work-dir", help="Folder for the local job state, kept across restarts (default: MERGEBENCH_WORK_DIR or "
                           "./space-state).")] = None,
    results_repo: Annotated[str | None, typer.Option(
        "--push-results", help="Hub results dataset submissions append their results to (default: "
                               "MERGEBENCH_RESULTS_REPO, else results stay local).")] = None,
    backend: Annotated[Backend | None, typer.Option(
        "--backend", help="transformers (CPU) or vllm (GPU) (default: MERGEBENCH_BACKEND or transformers).")] = None,
) -> None:
    """Serve the leaderboard, plots and submission queue; other settings come from MERGEBENCH_* variables.

    EXAMPLES: mergebench space --results runs/tiny/results --port 7860
    """
    if not (SPACE_DIR / "app.py").exists():
        raise ConfigError(f"The Space's code is not next to this MergeBench install ({SPACE_DIR}).",
                          hint="Run `mergebench space` from a source checkout (pip install -e .).")
    sys.path.insert(0, str(SPACE_DIR))
    app = importlib.import_module("app")
    settings = importlib.import_module("settings")
    config = settings.SpaceConfig.from_env(results=results, work_dir=work_dir, results_repo=results_repo,
                                           backend=backend)
    app.launch(config, host=host, port=port)
