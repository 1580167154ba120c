"""``mergebench hub``: run the loopback Hub server (offline tests, demos, air-gapped mirrors)."""

from __future__ import annotations

import logging
import sys
from pathlib import Path
from typing import Annotated

import typer

hub_app = typer.Typer(
    help="Serve model/dataset/space folders as a Hugging Face Hub on 127.0.0.1 (downloads, uploads, cards).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)


@hub_app.callback()
def _group() -> None:
    """Loopback Hub commands."""


@hub_app.command("serve")
def serve_command(
    root: Annotated[Path, typer.Argument(help="Folder holding models/ORG/NAME, datasets/ORG/NAME, spaces/ORG/NAME.")],
    host: Annotated[str, typer.Option("--host", help="Interface to bind; keep 127.0.0.1 (no authentication).")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option("--port", help="Port to listen on; 0 picks a free one.")] = 8000,
) -> None:
    """Serve ROOT as a Hub until Ctrl-C; the URL and the `export` line for clients go to stderr.

    EXAMPLES: mergebench hub serve ./hub --port 8000
              export HF_ENDPOINT=http://127.0.0.1:8000 HF_HUB_DISABLE_XET=1; hf download org/model
    """
    from mergebench.hubserver import LoopbackHub, serve

    def ready(hub: LoopbackHub) -> None:
        typer.echo(f"Loopback Hub serving {hub.root} at {hub.url}", err=True)
        typer.echo(f"export HF_ENDPOINT={hub.url} HF_HUB_DISABLE_XET=1", err=True)

    serve(root, host=host, port=port, ready=ready)


if __name__ == "__main__":  # `python -m mergebench.cli.hub serve ROOT` (used by tests to run it in a subprocess)
    from mergebench.errors import MergeBenchError

    logging.basicConfig(level=logging.WARNING, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)
    try:
        hub_app()
    except MergeBenchError as e:
        typer.echo(f"Error: {e}", err=True)
        if e.hint:
            typer.echo(f"Hint: {e.hint}", err=True)
        sys.exit(1)
