"""``mergebench space``: serve the MergeBench Space (``space/app.py``) locally over a results source, or
``mergebench space deploy`` it to a Hub Space repo (:mod:`mergebench.space_deploy`)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path
from typing import Annotated

import typer

from mergebench.cli.options import Backend, PrivateOpt
from mergebench.errors import ConfigError

SPACE_DIR = Path(__file__).resolve().parents[2] / "space"

space_app = typer.Typer(invoke_without_command=True)  # help: space_command's docstring (with its examples)


@space_app.callback()
def space_command(
    ctx: typer.Context,
    results: Annotated[str | None, typer.Option("--results", help="Results folder (a run's results/), one "
                                                                  "results JSON, or a Hub results dataset id.")] = None,
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
    """Serve the MergeBench Space locally (leaderboard, plots, submission queue; other settings come from
    MERGEBENCH_* variables), or deploy it to a Hub Space with `mergebench space deploy`.

    EXAMPLES: mergebench space --results runs/tiny/results --port 7860
              mergebench space deploy my-org/mergebench --results my-org/mergebench-results
    """
    if ctx.invoked_subcommand is not None:
        return
    if results is None:
        raise typer.BadParameter("--results is required to serve the Space.", param_hint="--results")
    if not (SPACE_DIR / "app.py").exists():
        raise ConfigError(f"The Space's code is not next to this MergeBench install ({SPACE_DIR}).",
                          hint="Run `mergebench space` from a source checkout (pip install -e .).")
    sys.path.insert(0, str(SPACE_DIR))
    app = importlib.import_module("app")
    settings = importlib.import_module("settings")
    config = settings.SpaceConfig.from_env(results=results, work_dir=work_dir, results_repo=results_repo,
                                           backend=backend)
    app.launch(config, host=host, port=port)


@space_app.command("deploy")
def deploy_command(
    space_id: Annotated[str, typer.Argument(metavar="ORG/NAME", help="The Space repo to create or update.")],
    hardware: Annotated[str, typer.Option("--hardware", help="Hardware of a new Space (cpu-basic, l40sx1, ...); "
                                                             "an existing Space keeps its own.")] = "cpu-basic",
    results: Annotated[str, typer.Option("--results", help="Results dataset the Space shows and submissions "
                                                           "push to.")] = "mergebench/mergebench-results",
    private: PrivateOpt = False,
    dry_run: Annotated[bool, typer.Option("--dry-run", help="Build and check the Space repo, push nothing.")] = False,
) -> None:
    """Create or update a Space that builds from its own files: the app, a MergeBench wheel, pinned requirements.

    EXAMPLES: mergebench space deploy my-org/mergebench --results my-org/mergebench-results
    """
    from mergebench.cli import out
    from mergebench.space_deploy import DeployOptions, deploy

    done = deploy(DeployOptions(space_id, hardware=hardware, results=results, private=private), dry_run=dry_run)
    out.print("\n".join(done.files), markup=False, highlight=False)
    summary = f"Would deploy {done.space_url} (dry run)" if dry_run else f"Deployed {done.space_url}: {done.commit_url}"
    out.print(summary, markup=False, highlight=False)
