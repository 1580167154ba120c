"""The ``mergebench`` command line. Results go to stdout, logs and hints to stderr.

Commands parse their arguments, make one library call and print its result; they hold no logic.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from pathlib import Path
from typing import Annotated

import httpx2 as httpx  # the HTTP client huggingface_hub uses: its connection errors reach us unwrapped
import typer
from huggingface_hub.errors import HfHubHTTPError
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mergebench.errors import ConfigError, MergeBenchError

app = typer.Typer(
    name="mergebench",
    help="MergeBench: merge domain-expert LLMs by streaming from the Hub, and benchmark what merging keeps.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
)
methods_app = typer.Typer(help="List and describe the merge methods.", no_args_is_help=True)
app.add_typer(methods_app, name="methods")

out = Console(soft_wrap=True)
err = Console(stderr=True, soft_wrap=True)

ConfigArg = Annotated[Path, typer.Argument(help="Merge recipe (YAML).", exists=False)]
FormatOpt = Annotated[str, typer.Option("--format", help="Output format: table or json.")]
ShardSizeOpt = Annotated[str, typer.Option("--shard-size", help="Largest output shard, e.g. 2GB, 500MB.")]
ThreadsOpt = Annotated[int, typer.Option("--threads", help="Read threads (network/disk overlap).")]

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([KMGT]?i?B?)?\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """``"2GB"`` → 2·10⁹, ``"512MiB"`` → 512·2²⁰, ``"1000"`` → 1000 bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"Cannot read the size '{text}'.", hint="Write sizes like 2GB, 500MB or 1GiB.")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    power = "BKMGT".index(unit[0]) if unit[0] in "KMGT" else 0
    base = 1024 if "I" in unit else 1000
    return int(number * base**power)


def _setup_logging(verbose: bool) -> None:
    logging.basicConfig(level=logging.INFO if verbose else logging.WARNING,
                        format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


@app.callback()
def _root(verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details.")] = False) -> None:
    _setup_logging(verbose)


@app.command()
def plan(
    config: ConfigArg,
    shard_size: ShardSizeOpt = "5GB",
    format: FormatOpt = "table",
) -> None:
    """Check a recipe and show the merge it describes, reading only safetensors headers.

    EXAMPLES: mergebench plan recipe.yaml --shard-size 2GB
    """
    from mergebench.merge.engine import prepare

    inputs = prepare(config, shard_size=parse_size(shard_size))
    p = inputs.plan
    summary = {
        "method": inputs.spec.name,
        "parameters": inputs.params.__dict__,
        "base_model": inputs.pinned.base_model,
        "models": [m.model for m in inputs.pinned.models],
        "tensors": len(p.tensors),
        "mergeable_tensors": sum(t.mergeable for t in p.tensors),
        "bytes_to_read": p.bytes_per_model,
        "output_bytes": p.output_bytes,
        "output_shards": [s.filename for s in p.shards],
        "expected_peak_memory_bytes": p.peak_memory_bytes,
    }
    if format == "json":
        out.print_json(json.dumps(summary))
        return
    table = Table(title=f"Merge plan: {inputs.spec.name}", show_header=False)
    for key, value in summary.items():
        if isinstance(value, dict):
            value = "\n".join(f"{k}: {_gb(v) if isinstance(v, int) else v}" for k, v in value.items())
        elif isinstance(value, list):
            value = "\n".join(map(str, value))
        elif key.endswith("bytes"):
            value = _gb(value)
        table.add_row(key, str(value))
    out.print(table)


def _gb(n: int) -> str:
    return f"{n / 1e9:.3f} GB" if n >= 1e7 else f"{n / 1e6:.3f} MB"


@app.command()
def merge(
    config: ConfigArg,
    out_dir: Annotated[Path, typer.Option("--out", help="Output folder (must not exist).")],
    push_to: Annotated[str | None, typer.Option("--push-to", help="Hub repo to upload the result to.")] = None,
    private: Annotated[bool, typer.Option("--private", help="Create the pushed repo as private.")] = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted merge into --out.")] = False,
    threads: ThreadsOpt = 4,
    shard_size: ShardSizeOpt = "5GB",
    format: FormatOpt = "table",
) -> None:
    """Merge the models of a recipe, streaming tensors, and optionally push the result with its card.

    EXAMPLES: mergebench merge recipe.yaml --out merged/ --push-to me/my-merge
    """
    from mergebench.merge.engine import MergeOptions
    from mergebench.merge.engine import merge as run_merge

    options = MergeOptions(threads=threads, shard_size=parse_size(shard_size), resume=resume,
                           progress=sys.stderr.isatty())
    result = run_merge(config, out_dir, options=options, push_to=push_to, private=private)
    summary = {"out_dir": str(result.out_dir), "method": result.recipe.method, "seconds": round(result.seconds, 2),
               "peak_rss_bytes": result.peak_rss_bytes, "bytes_read": result.bytes_read,
               "resumed_shards": list(result.resumed_shards), "commit_url": result.commit_url}
    if format == "json":
        out.print_json(json.dumps(summary))
    else:
        out.print(f"Merged into {result.out_dir} in {result.seconds:.1f}s "
                  f"(read {_gb(result.bytes_read)}, peak RSS {_gb(result.peak_rss_bytes)}).")
        if result.commit_url:
            out.print(f"Pushed: {result.commit_url}")


@methods_app.command("ls")
def methods_ls(format: FormatOpt = "table") -> None:
    """List the merge methods with their parameters, defaults and search grids."""
    from mergebench import methods

    rows = [{"method": s.name, "data": s.data_stats or "none", "parameters": s.defaults(),
             "grid": {k: list(v) for k, v in s.grid.items()}} for s in methods.REGISTRY]
    if format == "json":
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table("method", "data needed", "parameters (defaults)", "search grid")
    for r in rows:
        table.add_row(r["method"], r["data"], ", ".join(f"{k}={v}" for k, v in r["parameters"].items()),
                      " × ".join(f"{k}∈{v}" for k, v in r["grid"].items()) or "–")
    out.print(table)


@methods_app.command("show")
def methods_show(name: Annotated[str, typer.Argument(help="Method name.")]) -> None:
    """Show a method's formula, parameters and grid."""
    from mergebench import methods

    spec = methods.get(name)
    out.print(f"[bold]{spec.name}[/bold] (version {spec.version}) {spec.paper}\n")
    out.print(spec.doc, markup=False)
    out.print(f"\nparameters: {spec.defaults()}\ngrid: {dict(spec.grid)}\ndata: {spec.data_stats or 'none'}")


def _register_subcommands() -> None:
    from mergebench.cli.demo import demo
    from mergebench.cli.eval import eval_command
    from mergebench.cli.hub import hub_app
    from mergebench.cli.run import run_command
    from mergebench.cli.space import space_command
    from mergebench.cli.tiny import tiny_command
    from mergebench.cli.train import train_command

    app.add_typer(hub_app, name="hub")
    app.command()(demo)
    app.command("eval")(eval_command)
    app.command("train")(train_command)
    app.command("run")(run_command)
    app.command("space")(space_command)
    app.command("tiny")(tiny_command)
    try:
        from mergebench.cli.data import data_app
    except ImportError:  # the data pipeline's optional dependencies are missing
        return
    app.add_typer(data_app, name="data")


_register_subcommands()


def main() -> None:
    """Console entry point: run the app, turning MergeBench and Hub errors into ``Error:``/``Hint:`` lines."""
    try:
        app()
    except (MergeBenchError, HfHubHTTPError, httpx.TransportError) as e:
        if os.environ.get("MERGEBENCH_DEBUG") == "1":
            raise
        message, hint = str(e), getattr(e, "hint", None)
        if isinstance(e, httpx.TransportError):  # no answer at all: DNS, refused or reset connection, timeout
            from huggingface_hub import constants

            message = f"Cannot reach the Hub at {constants.ENDPOINT} ({type(e).__name__}: {e})."
            hint = ("Check your network connection and HF_ENDPOINT, then re-run (an interrupted merge continues "
                    "with --resume); for local models, pass their folders as ./path.")
        err.print(f"[red]Error:[/red] {escape(message)}", highlight=False)
        if hint:
            err.print(f"Hint: {hint}", markup=False, highlight=False)
        sys.exit(1)
