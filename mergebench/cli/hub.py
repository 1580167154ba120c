"""``mergebench hub``: run the loopback Hub server (offline tests, demos, air-gapped mirrors)."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer

if TYPE_CHECKING:
    from mergebench.hubserver import Faults, LoopbackHub

hub_app = typer.Typer(
    help="Serve model/dataset/space folders as a Hugging Face Hub on 127.0.0.1 (downloads, uploads, cards).",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)

_FAULTS = "Fault injection"


@hub_app.callback()
def _group() -> None:
    """Loopback Hub commands."""


@dataclass(frozen=True)
class FaultOptions:
    """The faults asked for on the command line; each one affects ``times`` requests matching ``path``.

    One of each kind, sharing ``times`` and ``path``: enough to reproduce any single-fault scenario of the
    test suite from a shell, without the combinatorics of per-fault selectors.
    """

    drop_after_bytes: int | None = None
    stall_after_bytes: int | None = None
    stall_seconds: float | None = None
    http_error: int | None = None
    retry_after: float | None = None
    delay: float | None = None
    throttle: float | None = None
    short_body: int | None = None
    times: int | None = 1  # None: every matching request
    path: str = "*"
    method: str | None = None  # None: each fault's own default (GET for body faults, any for errors); "*": any

    def arm(self, faults: Faults) -> list[str]:
        """Arm every requested fault on ``faults``; returns one human-readable line per fault."""
        common: dict[str, Any] = {"times": self.times, "path_glob": self.path}
        if self.method is not None:
            common["method"] = None if self.method == "*" else self.method.upper()
        armed: list[tuple[str, Callable[[], object]]] = []
        if self.http_error is not None:
            status = self.http_error
            retry = self.retry_after
            armed.append((f"HTTP {status} instead of the answer" + ("" if retry is None else
                                                                     f" with Retry-After: {retry:g}"),
                          lambda: faults.http_error(status, retry_after=retry, **common)))
        if self.delay is not None:
            delay = self.delay
            armed.append((f"{delay}s delay before the headers and each 1 MiB chunk",
                          lambda: faults.delay(delay, **common)))
        if self.throttle is not None:
            rate = self.throttle
            armed.append((f"bodies sent at {rate:g} bytes/s", lambda: faults.throttle(rate, **common)))
        if self.short_body is not None:
            missing = self.short_body
            armed.append((f"bodies {missing} bytes short with a matching Content-Length",
                          lambda: faults.short_body(missing, **common)))
        if self.drop_after_bytes is not None:
            n = self.drop_after_bytes
            armed.append((f"connection cut after {n} body bytes", lambda: faults.drop_after_bytes(n, **common)))
        if self.stall_after_bytes is not None:
            n, pause = self.stall_after_bytes, self.stall_seconds
            armed.append((f"silence after {n} body bytes " + ("until the server stops" if pause is None
                                                                 else f"for {pause}s"),
                           lambda: faults.stall_after_bytes(n, seconds=pause, **common)))
        every = "every request" if self.times is None else f"{self.times} request(s)"
        lines = []
        for text, add in armed:
            add()
            method = "" if self.method in (None, "*") else f"{self.method.upper()} "
            lines.append(f"Fault armed: {text}, on {every} matching {method}'{self.path}'")
        return lines


@hub_app.command("serve")
def serve_command(
    root: Annotated[Path, typer.Argument(help="Folder holding models/ORG/NAME, datasets/ORG/NAME, spaces/ORG/NAME.")],
    host: Annotated[str, typer.Option("--host", help="Interface to bind; keep 127.0.0.1 (no authentication).")] = (
        "127.0.0.1"),
    port: Annotated[int, typer.Option("--port", help="Port to listen on; 0 picks a free one.")] = 8000,
    link_rate: Annotated[float | None, typer.Option(
        "--link-rate", min=1, metavar="BYTES_PER_S", show_default="unlimited",
        help="A network link of BYTES_PER_S shared by every answer at once (125000000: 1 Gbit/s), to see what a "
             "client costs on a real link rather than on 127.0.0.1.")] = None,
    drop_after_bytes: Annotated[int | None, typer.Option(
        "--drop-after-bytes", min=0, metavar="N", rich_help_panel=_FAULTS,
        help="Cut the connection after N body bytes of an answer (a dropped connection).")] = None,
    stall_after_bytes: Annotated[int | None, typer.Option(
        "--stall-after-bytes", min=0, metavar="N", rich_help_panel=_FAULTS,
        help="Send N body bytes of an answer, then nothing with the connection open (a hung link).")] = None,
    stall_seconds: Annotated[float | None, typer.Option(
        "--stall-seconds", min=0, metavar="SECONDS", rich_help_panel=_FAULTS, show_default="until the server stops",
        help="How long a stall lasts before the rest is sent.")] = None,
    http_error: Annotated[int | None, typer.Option(
        "--http-error", min=400, max=599, metavar="STATUS", rich_help_panel=_FAULTS,
        help="Answer with HTTP STATUS (e.g. 503, 429, 500) instead of serving the request.")] = None,
    retry_after: Annotated[float | None, typer.Option(
        "--retry-after", min=0, metavar="SECONDS", rich_help_panel=_FAULTS,
        help="With --http-error: also send 'Retry-After: SECONDS' (as a rate-limited Hub does with 429).")] = None,
    delay: Annotated[float | None, typer.Option(
        "--delay", min=0, metavar="SECONDS", rich_help_panel=_FAULTS,
        help="Sleep SECONDS before the headers and before each 1 MiB body chunk (a slow link).")] = None,
    throttle: Annotated[float | None, typer.Option(
        "--throttle", min=1, metavar="BYTES_PER_S", rich_help_panel=_FAULTS,
        help="Send bodies at most BYTES_PER_S (e.g. 100000 for 100 KB/s).")] = None,
    short_body: Annotated[int | None, typer.Option(
        "--short-body", min=1, metavar="N", rich_help_panel=_FAULTS,
        help="Send bodies N bytes short with a Content-Length that agrees (a lying length).")] = None,
    fault_times: Annotated[int, typer.Option(
        "--fault-times", min=0, metavar="K", rich_help_panel=_FAULTS,
        help="How many matching requests each fault affects before it expires; 0: every one.")] = 1,
    fault_path: Annotated[str, typer.Option(
        "--fault-path", metavar="GLOB", rich_help_panel=_FAULTS,
        help="Only requests whose path, or its last segment, matches GLOB (e.g. '*.safetensors', "
             "'/api/models/*').")] = "*",
    fault_method: Annotated[str | None, typer.Option(
        "--fault-method", metavar="METHOD", rich_help_panel=_FAULTS, show_default="GET for body faults, any for errors",
        help="Only requests of this HTTP method (e.g. POST: lose the answer of a commit or a Job launch); '*': "
             "any.")] = None,
) -> None:
    """Serve ROOT as a Hub until Ctrl-C; the URL and the `export` line for clients go to stderr.

    Fault options reproduce a network problem without Python: each hits K matching requests, then expires.

    EXAMPLES: mergebench hub serve ./hub --port 8000
              export HF_ENDPOINT=http://127.0.0.1:8000 HF_HUB_DISABLE_XET=1; hf download org/model

              # the first two shard downloads get a 503, then they succeed
              mergebench hub serve ./hub --http-error 503 --fault-times 2 --fault-path '*.safetensors'

              # every shard download is cut after 300 kB: clients must resume with Range requests
              mergebench hub serve ./hub --drop-after-bytes 300000 --fault-times 0 --fault-path '*.safetensors'

              # the first shard download hangs after 1 MB until Ctrl-C: clients need a read timeout
              mergebench hub serve ./hub --stall-after-bytes 1000000 --fault-path '*.safetensors'
    """
    from mergebench.hubserver import serve

    faults = FaultOptions(drop_after_bytes=drop_after_bytes, stall_after_bytes=stall_after_bytes,
                          stall_seconds=stall_seconds, http_error=http_error, retry_after=retry_after, delay=delay,
                          throttle=throttle, short_body=short_body, times=fault_times or None, path=fault_path,
                          method=fault_method)
    if stall_seconds is not None and stall_after_bytes is None:
        raise typer.BadParameter("--stall-seconds needs --stall-after-bytes.", param_hint="--stall-seconds")
    if retry_after is not None and http_error is None:
        raise typer.BadParameter("--retry-after needs --http-error.", param_hint="--retry-after")

    def ready(hub: LoopbackHub) -> None:
        hub.link.rate = link_rate
        for line in faults.arm(hub.faults):
            typer.echo(line, err=True)
        if link_rate is not None:
            typer.echo(f"Link: {link_rate:g} bytes/s shared by every answer", err=True)
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
