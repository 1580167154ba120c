"""Validation rows for the data-dependent merge methods, from a local ``.jsonl`` file or a Hub dataset.

A recipe's ``data:`` maps each domain key to its validation split: a path (relative to the recipe) of a
``.jsonl`` file in the project schema, or a dataset repo ``org/name[@revision]`` whose ``validation``
split is read with ``datasets.load_dataset`` (the real Hub code path).
"""

from __future__ import annotations

from pathlib import Path

from mergebench.data.evalsets import read_jsonl
from mergebench.errors import StatisticsError


def load_validation_rows(source: str, *, base_dir: Path | None = None, split: str = "validation") -> list[dict]:
    """Rows of one domain's validation split (see the module docstring for ``source``)."""
    path = Path(source).expanduser()
    if not path.is_absolute() and base_dir is not None:
        path = base_dir / path
    if path.suffix == ".jsonl" or path.exists():
        if not path.is_file():
            raise StatisticsError(f"Validation data file '{source}' does not exist ({path}).",
                                  hint="Fix the path in the recipe's 'data:' mapping.")
        return read_jsonl(path)
    import datasets

    repo_id, _, revision = source.partition("@")
    dataset = datasets.load_dataset(repo_id, split=split, revision=revision or None)
    return [dict(row) for row in dataset]
