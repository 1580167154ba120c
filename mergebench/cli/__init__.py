"""The ``mergebench`` command line. Results go to stdout, logs and hints to stderr.

Commands parse their arguments, make one library call and print its result; they hold no logic.
"""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any

import httpx2 as httpx  # the HTTP client huggingface_hub uses: its connection errors reach us unwrapped
import typer
from huggingface_hub.errors import HfHubHTTPError, OfflineModeIsEnabled
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from mergebench.cli.options import (
    FormatOpt,
    MergeOutOpt,
    ModelPushOpt,
    PrivateOpt,
    ShardSizeOpt,
    ThreadsOpt,
    parse_size,
)
from mergebench.errors import DiskFullError, MergeBenchError

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

def _setup_logging(verbose: bool) -> Callable[[], None]:
    """MergeBench's logs at INFO with ``--verbose``, else WARNING; without ``--verbose`` the libraries' progress
    bars, warnings and info logs are hidden too (their errors still show; Hub download bars stay).

    The library switches are process-wide, so they are made here, in the CLI entry, never in library code; they
    are undone by the returned function (the command's context calls it when the command ends, which matters
    when the app runs inside another process, such as a test).
    """
    import contextlib
    import importlib
    import warnings

    class CurrentStderr(logging.StreamHandler):  # follows sys.stderr: a live stage line then keeps logs above it
        def emit(self, record: logging.LogRecord) -> None:
            self.stream = sys.stderr
            super().emit(record)

    level = logging.INFO if verbose else logging.WARNING
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", handlers=[CurrentStderr()])
    stack, root = contextlib.ExitStack(), logging.getLogger()
    stack.callback(root.setLevel, root.level)
    root.setLevel(level)  # basicConfig does nothing when logging is configured already
    if verbose:
        return stack.close
    env = {"HF_DATASETS_DISABLE_PROGRESS_BARS": "1", "DATASETS_VERBOSITY": "error", "TRANSFORMERS_VERBOSITY": "error",
           "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}  # read by datasets and transformers when they are imported
    for name, value in env.items():
        if name not in os.environ:
            os.environ[name] = value
            stack.callback(os.environ.pop, name, None)
    loggers = ("lighteval", "datasets", "transformers", "trl", "accelerate", "torch", "httpx", "filelock", "fsspec")
    for name in loggers:  # lighteval's own progress bars follow its logger too (eval.lighteval_wrapper)
        logger = logging.getLogger(name)
        stack.callback(logger.setLevel, logger.level)
        logger.setLevel(logging.ERROR)
    from huggingface_hub.utils import are_progress_bars_disabled, disable_progress_bars, enable_progress_bars

    if not are_progress_bars_disabled():  # transformers' bars ("Loading weights") follow the Hub's global switch
        disable_progress_bars()
        enable_progress_bars("huggingface_hub")  # downloads keep their bars
        stack.callback(enable_progress_bars)
    if not sys.warnoptions:  # -W and PYTHONWARNINGS choose for themselves
        stack.enter_context(warnings.catch_warnings())
        warnings.filterwarnings("ignore")
        warnings.filterwarnings("default", module=r"mergebench(\.|$)")
    imported = {name for name in ("datasets", "transformers") if name in sys.modules}

    def reset_late_imports() -> None:  # a library imported meanwhile read the switches above: turn them back
        for name in {"datasets", "transformers"} & set(sys.modules) - imported:
            library_logging = importlib.import_module(f"{name}.utils.logging")
            library_logging.set_verbosity_warning()
            if name == "transformers":  # datasets' bars stay off: its environment variable wins once imported
                library_logging.enable_progress_bar()
    stack.callback(reset_late_imports)
    return stack.close


@app.callback()
def _root(ctx: typer.Context,
          verbose: Annotated[bool, typer.Option("--verbose", "-v", help="Log progress details, and show the "
                                                "libraries' progress bars and warnings.")] = False) -> None:
    ctx.call_on_close(_setup_logging(verbose))


@app.command()
def plan(
    config: ConfigArg,
    shard_size: ShardSizeOpt = "5GB",
    format: FormatOpt = "table",
) -> None:
    """Check a recipe and show the merge it describes, reading only safetensors headers.

    EXAMPLES: mergebench plan recipe.yaml --shard-size 2GB
    """
    from mergebench.merge.inputs import prepare

    inputs = prepare(config, shard_size=parse_size(shard_size))
    p = inputs.plan
    summary: dict[str, Any] = {
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
    out_dir: MergeOutOpt,
    push_to: ModelPushOpt = None,
    private: PrivateOpt = False,
    resume: Annotated[bool, typer.Option("--resume", help="Continue an interrupted merge into --out.")] = False,
    threads: ThreadsOpt = None,
    shard_size: ShardSizeOpt = "5GB",
    format: FormatOpt = "table",
) -> None:
    """Merge the models of a recipe, streaming tensors, and optionally push the result with its card.

    EXAMPLES: mergebench merge recipe.yaml --out merged/ --push-to me/my-merge
    """
    from mergebench.merge.engine import merge as run_merge
    from mergebench.merge.options import MergeOptions

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
    """List the merge methods with their parameters, defaults and search grids (declared by each method)."""
    from mergebench import methods

    rows: list[dict[str, Any]] = [{"method": s.name, "title": s.title, "paper": s.paper, "data": s.data_stats or "none",
             "parameters": s.defaults(), "grid": {k: list(v) for k, v in s.grid.items()},
             "elementwise": s.elementwise} for s in methods.REGISTRY]
    if format == "json":
        out.print_json(json.dumps(rows, default=str))
        return
    table = Table("method", "data needed", "parameters (defaults)", "search grid")
    for r in rows:
        table.add_row(r["method"], r["data"], ", ".join(f"{k}={v}" for k, v in r["parameters"].items()),
                      " × ".join(f"{k}∈{v}" for k, v in r["grid"].items()) or "–")
    out.print(table)


@methods_app.command("show")
def methods_show(name: Annotated[str, typer.Argument(help="Method name.")], format: FormatOpt = "table") -> None:
    """Show a method's formula, parameters (type, default, range), grid and data needs, as the method declares them.

    Examples: `mergebench methods show ties`, `mergebench methods show regmean --format json`.
    """
    from mergebench import methods

    info = methods.get(name).describe()
    if format == "json":
        out.print_json(json.dumps(info, default=str))
        return
    out.print(f"[bold]{info['name']}[/bold]: {escape(info['title'])} (version {info['version']}) {info['paper']}\n")
    out.print(info["formula"] + "\n", markup=False, highlight=False)
    table = Table("parameter", "type", "default", "range", "meaning")
    for p in info["parameters"]:
        table.add_row(p["name"], p["type"], repr(p["default"]), p["range"] or "–", escape(p["doc"]))
    out.print(table)
    grid = " × ".join(f"{k} ∈ {v}" for k, v in info["grid"].items()) or "none"
    weights = "divided by their sum" if info["normalises_weights"] else "used as given"
    out.print(f"grid: {grid}\ndata: {info['statistics'] or 'none'}\nelementwise: {info['elementwise']}\n"
              f"recipe weights: {weights}", markup=False, highlight=False)


def _register_subcommands() -> None:
    from mergebench.cli.demo import demo
    from mergebench.cli.eval import eval_command, tasks_app
    from mergebench.cli.hub import hub_app
    from mergebench.cli.leaderboard import leaderboard_command
    from mergebench.cli.run import run_command
    from mergebench.cli.space import space_app
    from mergebench.cli.tiny import tiny_command
    from mergebench.cli.train import train_command, train_experts_command
    from mergebench.cli.unit import unit_app

    app.add_typer(hub_app, name="hub")
    app.add_typer(tasks_app, name="tasks")
    app.add_typer(unit_app, name="unit")
    app.command()(demo)
    app.command("eval")(eval_command)
    app.command("train")(train_command)
    app.command("train-experts")(train_experts_command)
    app.command("run")(run_command)
    app.command("leaderboard")(leaderboard_command)
    app.add_typer(space_app, name="space")
    app.command("tiny")(tiny_command)
    try:
        from mergebench.cli.data import data_app
    except ImportError:  # the data pipeline's optional dependencies are missing
        return
    app.add_typer(data_app, name="data")


_register_subcommands()


def _hub_error_hint(status: int | None) -> str:
    """The next step after the Hub refused a request (``status``: its HTTP status code)."""
    if status in (401, 403):
        return "Check that your token (HF_TOKEN or `hf auth login`) may access the repo (write access, for a push)."
    if status == 404:
        return ("Check the repo id (org/name) and the revision; a private or gated repo needs a token that can read "
                "it, and a local folder is written ./path.")
    if status == 429 or (status or 0) >= 500:
        return "The Hub is busy or failing: re-run later (an interrupted merge continues with --resume)."
    return "Fix what the Hub's answer above names (repo id, revision, file), then re-run."


def main() -> None:
    """Console entry point: run the app, turning MergeBench and Hub errors into ``Error:``/``Hint:`` lines."""
    try:
        try:
            app()
        except OSError as e:  # a full disk is the machine's problem, not a bug: say so, with what to do
            full = DiskFullError.from_os_error(e)
            if full is None:
                raise
            raise full from e
    except (MergeBenchError, HfHubHTTPError, httpx.TransportError, OfflineModeIsEnabled) as e:
        if os.environ.get("MERGEBENCH_DEBUG") == "1":
            raise
        message, hint = str(e), getattr(e, "hint", None)
        if isinstance(e, OfflineModeIsEnabled):  # HF_HUB_OFFLINE=1, and a Hub reference needs the network
            message = f"{' '.join(str(e).split('. To disable')[0].split())}."
            hint = ("Unset HF_HUB_OFFLINE (or set it to 0) to read the Hub, or pass local folders as ./path; "
                    "offline, only local models and data can be used.")
        elif isinstance(e, httpx.TransportError):  # no answer at all: DNS, refused or reset connection, timeout
            from huggingface_hub import constants

            message = f"Cannot reach the Hub at {constants.ENDPOINT} ({type(e).__name__}: {e})."
            hint = ("Check your network connection and HF_ENDPOINT, then re-run (an interrupted merge continues "
                    "with --resume); for local models, pass their folders as ./path.")
        elif isinstance(e, HfHubHTTPError):  # the message is the Hub's own explanation: add what to do about it
            hint = _hub_error_hint(getattr(e.response, "status_code", None))
        err.print(f"[red]Error:[/red] {escape(message)}", highlight=False)
        if hint:
            err.print(f"Hint: {hint}", markup=False, highlight=False)
        sys.exit(1)
