"""How commands print results on stdout: one listing style and one summary style, as a table or as JSON.

A listing (``mergebench tasks ls``, ``mergebench eval --list``) is a list of rows: ``--format json`` prints
them as a JSON array of objects, ``--format table`` as a table whose columns are the same keys. A summary
(``data build``, ``train``) is one object: JSON, or one ``key: value`` line per field.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from typing import Any

from rich.console import Console
from rich.markup import escape
from rich.table import Table

out = Console(soft_wrap=True)


def _cell(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, Mapping):
        return ", ".join(f"{k}={v}" for k, v in value.items()) or "–"
    if isinstance(value, (list, tuple)):
        return ", ".join(map(str, value)) or "–"
    return str(value)


def print_rows(rows: Sequence[Mapping[str, Any]], format: str, *, title: str | None = None) -> None:
    """A listing: a JSON array of ``rows``, or a table with one column per key of the first row."""
    if format == "json":
        out.print_json(json.dumps(list(rows), default=str))
        return
    table = Table(*(rows[0] if rows else ()), title=title)
    for row in rows:
        table.add_row(*(escape(_cell(v)) for v in row.values()))
    out.print(table)


def print_fields(summary: Mapping[str, Any], format: str) -> None:
    """A summary: a JSON object, or one ``key: value`` line per field."""
    if format == "json":
        out.print_json(json.dumps(summary, default=str))
        return
    for key, value in summary.items():
        out.print(f"{key}: {value}", markup=False, highlight=False)
