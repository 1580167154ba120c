"""Validation rows for the data-dependent merge methods, from a local ``.jsonl`` file or a Hub dataset.

A recipe's ``data:`` maps each domain key to its validation split: a path (relative to the recipe) of a
``.jsonl`` file in the project schema, or a dataset repo ``org/name[@revision]`` whose ``validation``
split is read with ``datasets.load_dataset`` (the real Hub code path) at the commit it was pinned to.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from mergebench.errors import RefError, StatisticsError
from mergebench.hub.refs import Pin, Ref, pin
from mergebench.work import read_jsonl


def pin_validation_source(source: str, *, base_dir: Path | None = None) -> Pin:
    """Pin one ``data:`` entry: a local ``.jsonl`` file (fingerprinted) or a dataset repo (its commit sha), so the
    rows a merge's statistics are computed from are named exactly in the pinned recipe and the card."""
    path = Path(source).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.suffix == ".jsonl" or path.exists():
        if not path.is_file():
            raise StatisticsError(f"Validation data file '{source}' does not exist ({path}).",
                                  hint="Fix the path in the recipe's 'data:' mapping.")
        return pin(Ref(text=source, repo_type="dataset", local_path=path.resolve()))
    try:
        return pin(Ref.parse(source, repo_type="dataset", local="file"))
    except RefError as e:
        raise StatisticsError(f"Validation data '{source}': {e}", hint="Use a .jsonl file or org/name[@revision] "
                              "of a dataset repo with a validation split.") from e


def load_validation_rows(source: Pin, *, split: str = "validation") -> list[dict[str, Any]]:
    """Rows of one domain's validation split, read from exactly the pinned file or commit."""
    if source.ref.local_path is not None:
        try:
            return read_jsonl(source.ref.local_path)
        except (json.JSONDecodeError, UnicodeDecodeError) as e:
            raise StatisticsError(f"Validation data file '{source.ref.text}' is not JSON Lines: {e}.",
                                  hint="Write one JSON object per line (the project's chat-row schema).") from e
    import datasets

    dataset = datasets.load_dataset(source.ref.repo_id, split=split, revision=source.sha)
    return [dict(row) for row in dataset]
