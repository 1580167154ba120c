"""Options shared by several ``mergebench`` commands, declared once so that one flag has one meaning.

Flags are named as in ``hf`` (``--format``, ``--private``, ``--push-to``, ``--cache-dir``). A value outside
a fixed set is a usage error (exit 2) that lists the valid values, before any work starts.

``--out`` has one meaning per kind of output:

* what a command *builds* (a merged model, an expert, a dataset) is a **folder** it creates: written
  beside it and renamed into place when complete, so it must not exist or be empty;
* evaluation results are one **results JSON file**, rewritten after each task.

Multi-stage pipelines that keep and reuse their state (``tiny``, ``demo``, ``space``) take ``--work-dir``.

Sizes follow the Hub's decimal convention: ``5GB`` = 5·10⁹ bytes, as in ``huggingface_hub`` and
``transformers``' ``max_shard_size``; ``GiB``/``MiB``/``KiB`` are binary, as written.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, Literal

import typer

from mergebench.domains import Domain
from mergebench.errors import ConfigError, MergeBenchError

OutputFormat = Literal["table", "json"]
Backend = Literal["transformers", "vllm"]
"""Evaluation backends: the values of :data:`mergebench.eval.run.Backend` (a test keeps them equal)."""
TrainDomain = Literal[Domain, "all"]
"""A domain, or ``all`` for the multi-task baseline."""

_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*((?:[KMGT]i?)?B?)\s*$", re.IGNORECASE)


def parse_size(text: str) -> int:
    """A size in bytes, in the Hub's decimal convention; binary only when written ``KiB``/``MiB``/``GiB``/``TiB``.

    Raises:
        ConfigError: not a number with an optional unit.

    >>> parse_size("5GB"), parse_size("512MiB"), parse_size("1000")
    (5000000000, 536870912, 1000)
    """
    match = _SIZE.match(text)
    if not match:
        raise ConfigError(f"Cannot read the size '{text}'.",
                          hint="Write sizes like 2GB or 500MB (decimal, as on the Hub), or 1GiB (binary).")
    number, unit = float(match.group(1)), (match.group(2) or "B").upper()
    power = "BKMGT".index(unit[0])
    base = 1024 if "I" in unit else 1000
    return int(number * base**power)


def checked_by(check: Callable[[str], object]) -> Callable[[Any], Any]:
    """An option callback running ``check`` on the value (each value of a list option), before the command.

    A :class:`~mergebench.errors.MergeBenchError` from ``check`` becomes a usage error (exit 2) carrying its
    message and hint, which name the valid values or the closest one. ``check`` imports what it needs, so
    ``mergebench --help`` does not load every task, method or evaluation set.
    """

    def callback(value: Any) -> Any:
        for item in [] if value is None else value if isinstance(value, list) else [value]:
            try:
                check(item)
            except MergeBenchError as e:
                raise typer.BadParameter(" ".join(filter(None, (str(e), e.hint)))) from e
        return value

    return callback


FormatOpt = Annotated[OutputFormat, typer.Option(
    "--format", help="Output format: table (for people) or json (for scripts), on stdout.")]
PrivateOpt = Annotated[bool, typer.Option("--private", help="Create the pushed repo as private.")]
OverwriteOpt = Annotated[bool, typer.Option("--overwrite", help="Replace a non-empty --out folder.")]
ThreadsOpt = Annotated[int | None, typer.Option(
    "--threads", min=1, help="Read threads (network/disk overlap); default: one per core, 2–4.")]
ShardSizeOpt = Annotated[str, typer.Option(
    "--shard-size", callback=checked_by(parse_size),
    help="Largest output shard, decimal as on the Hub (5GB = 5·10⁹ bytes; GiB/MiB are binary), e.g. 2GB, 500MB.")]
CacheDirOpt = Annotated[Path | None, typer.Option("--cache-dir", help="datasets cache folder.")]

# where the units of a run go (`mergebench run`, `mergebench train-experts`): each overrides the file's executor section
ExecutorOpt = Annotated[Literal["local", "ray", "hf-jobs"] | None, typer.Option(
    "--executor", help="Where the units run (default: the file's executor.kind, else local, in this process).")]
AddressOpt = Annotated[str | None, typer.Option(
    "--address", help="Ray cluster to join (auto, ray://HOST:10001); default: start a local one.")]
MaxConcurrentOpt = Annotated[int | None, typer.Option(
    "--max-concurrent", min=1, help="Units in flight at once on Ray or Jobs (default: executor.max_concurrent).")]

_BUILT = "(written beside it, renamed into place when complete); it must not exist or be empty"
MergeOutOpt = Annotated[Path, typer.Option(
    "--out", help=f"Folder to create for the merged model {_BUILT}, unless --resume continues into it.")]
ExpertOutOpt = Annotated[Path, typer.Option(
    "--out", help=f"Folder to create for the trained expert {_BUILT}, unless --overwrite.")]
DatasetOutOpt = Annotated[Path, typer.Option(
    "--out", help=f"Folder to create for the dataset {_BUILT}, unless --overwrite.")]
ResultsOutOpt = Annotated[Path | None, typer.Option(
    "--out", dir_okay=False,
    help="Results JSON file to write, rewritten after each task (default: results are only printed).")]

def hub_repo_id(value: str | None) -> str | None:
    """A ``--push-to``/``--push-results`` value checked before any work: ``ORG/NAME`` as the Hub accepts it
    (``{base}``/``{domain}`` placeholders are checked filled in). Before, a bad name failed after the merge."""
    if value is None:
        return None
    from huggingface_hub.errors import HFValidationError
    from huggingface_hub.utils import validate_repo_id

    try:
        if value.count("/") != 1:
            raise HFValidationError("it must be ORG/NAME (one '/').")
        validate_repo_id(value.replace("{base}", "base").replace("{domain}", "domain"))
    except HFValidationError as e:
        raise typer.BadParameter(f"'{value}' is not a Hub repo id: {' '.join(str(e).split())}") from e
    return value


ModelPushOpt = Annotated[str | None, typer.Option(
    "--push-to", callback=hub_repo_id,
    help="Hub model repo to create (if needed) and upload the --out folder to, in one commit.")]
ExpertPushOpt = Annotated[str | None, typer.Option(
    "--push-to", callback=hub_repo_id,
    help="Hub model repo to create (if needed) and upload the --out folder to, in one commit; "
         "{base} and {domain} are filled in, e.g. org/{base}_{domain}.")]
DatasetPushOpt = Annotated[str | None, typer.Option(
    "--push-to", callback=hub_repo_id,
    help="Hub dataset repo to create (if needed) and upload the --out folder to, in one commit.")]
ResultsPushOpt = Annotated[str | None, typer.Option(
    "--push-results", callback=hub_repo_id, help="Hub results dataset to append the results to.")]
