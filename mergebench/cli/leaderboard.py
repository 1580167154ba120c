"""``mergebench leaderboard [SOURCE]``: the leaderboard from results files, a Hub results dataset pinned to a
revision, or the scores published in model repos (``--models``)."""

from __future__ import annotations

from typing import Annotated

import typer

from mergebench.cli.options import FormatOpt
from mergebench.cli.output import out, print_rows
from mergebench.errors import ConfigError


def leaderboard_command(
    source: Annotated[str | None, typer.Argument(
        help="A run's results/ folder, one results JSON, or a Hub results dataset (org/mergebench-results).")] = None,
    revision: Annotated[str | None, typer.Option(
        "--revision", help="Branch, tag or commit of the Hub results dataset (pinned to one commit).")] = None,
    models: Annotated[list[str] | None, typer.Option(
        "--models", help="Instead of SOURCE: model repos (org/name[@rev]; repeat or comma-separate) whose "
                         ".eval_results and cards hold their scores — merges with their base and experts.")] = None,
    format: FormatOpt = "table",
) -> None:
    """Print the leaderboard: one row per merge (normalised scores, forgetting, cost) and per reference model.

    EXAMPLES: mergebench leaderboard runs/tiny/results
              mergebench leaderboard org/mergebench-results --revision 5f1c0e2
              mergebench leaderboard --models org/merge-ties,org/base,org/base_math,org/base_coding
    """
    from mergebench.eval.leaderboard import format_table, read_model_repos, read_results, table

    refs = [m.strip() for value in models or [] for m in value.split(",") if m.strip()]
    if (source is None) == (not refs) or (refs and revision):
        raise ConfigError("Give a results SOURCE (and optionally --revision), or --models, not both.",
                          hint="mergebench leaderboard org/mergebench-results --revision main")
    board = table(read_model_repos(refs) if refs else read_results(source or "", revision=revision))
    if format == "json":
        return print_rows(board.astype(object).where(board.notna(), None).to_dict("records"), format)
    out.print(format_table(board), markup=False, highlight=False)
