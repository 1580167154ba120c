"""Writing a dataset folder atomically and pushing it to the Hub in one commit.

A build writes everything (parquet shards, card, report) into a temporary sibling folder and renames it
into place only when complete, so ``--out`` never holds half a dataset. Pushing creates the repo if
needed and uploads the folder as a *single* commit that also deletes stale shards of an earlier push
(``delete_patterns``), so the repo moves from one complete version to the next.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any

from huggingface_hub import DatasetCard

from mergebench.errors import OutputExistsError
from mergebench.work import atomic_folder as replace_folder

logger = logging.getLogger(__name__)
SHARD_ROWS = 50_000


def write_parquet(rows: Sequence[dict], folder: Path, split: str, *, features: Any = None,
                  shard_rows: int = SHARD_ROWS) -> list[str]:
    """Write ``rows`` as ``{folder}/{split}-0000i-of-0000n.parquet`` shards; returns the file names.

    With ``features`` (a ``datasets.Features``) the schema, including the ``datasets`` metadata, is
    fixed; without, pyarrow infers it from the rows (evaluation sets keep their upstream types).
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    n = max(1, -(-len(rows) // shard_rows))
    schema = features.arrow_schema if features is not None else None
    names = []
    for i in range(n):
        chunk = list(rows[i * shard_rows:(i + 1) * shard_rows])
        table = pa.Table.from_pylist(chunk, schema=schema) if chunk or schema is not None else pa.table({})
        name = f"{split}-{i:05d}-of-{n:05d}.parquet"
        pq.write_table(table, folder / name)
        names.append(name)
    return names


def check_output(out_dir: Path, *, overwrite: bool = False) -> None:
    """Fail early if ``out_dir`` holds something and may not be replaced."""
    out_dir = Path(out_dir)
    if out_dir.exists() and (not out_dir.is_dir() or any(out_dir.iterdir())) and not overwrite:
        raise OutputExistsError(f"Output folder '{out_dir}' exists and is not empty.",
                                hint="Choose another --out, or pass --overwrite to replace it.")


@contextlib.contextmanager
def atomic_folder(out_dir: Path, *, overwrite: bool = False) -> Iterator[Path]:
    """Yield a temporary folder that replaces ``out_dir`` only if the ``with`` block succeeds.

    Raises:
        OutputExistsError: ``out_dir`` exists, is not empty and ``overwrite`` is false (checked first).
    """
    check_output(Path(out_dir), overwrite=overwrite)
    with replace_folder(Path(out_dir)) as tmp:
        yield tmp


def validate_card(card: DatasetCard) -> None:
    """Check the card's front matter with the Hub (``POST /api/validate-yaml``); raises ``ValueError``."""
    card.validate(repo_type="dataset")
