"""Writing a dataset folder atomically and pushing it to the Hub in one commit.

A build writes everything (parquet shards, card, report) into a temporary sibling folder and renames it
into place only when complete, so ``--out`` never holds half a dataset. Pushing creates the repo if
needed and uploads the folder as a *single* commit that also deletes stale shards of an earlier push
(``delete_patterns``), so the repo moves from one complete version to the next.
"""

from __future__ import annotations

import contextlib
import fcntl
import glob
import logging
import shutil
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from huggingface_hub import DatasetCard

from mergebench.errors import OutputExistsError
from mergebench.work import atomic_folder as replace_folder

logger = logging.getLogger(__name__)
SHARD_ROWS = 50_000


@dataclass(frozen=True)
class TableRows:
    """Rows ``positions`` (ascending) of an Arrow table, cut into tables only when sliced.

    What a build hands :func:`write_parquet`: the table is its memory-mapped scratch copy of every converted row,
    so writing a split holds one shard of it in memory, never the whole split. Rows are taken record batch by
    record batch: ``Table.take`` would first concatenate every chunk of a column, i.e. copy the whole table.
    """

    table: Any  # pyarrow.Table
    positions: np.ndarray

    def __len__(self) -> int:
        return len(self.positions)

    def __getitem__(self, rows: slice) -> Any:
        """The rows at ``positions[rows]`` as one contiguous ``pyarrow.Table``."""
        import pyarrow as pa

        positions = self.positions[rows]
        batches = self.table.to_batches()
        starts = np.cumsum([0, *(b.num_rows for b in batches)])
        cuts = np.searchsorted(positions, starts)  # batch i holds positions[cuts[i]:cuts[i + 1]]
        pieces = [batch.take(positions[cuts[i]:cuts[i + 1]] - starts[i]) for i, batch in enumerate(batches)
                  if cuts[i] < cuts[i + 1]]
        return pa.Table.from_batches(pieces, schema=self.table.schema).combine_chunks()


def write_parquet(rows: Sequence[dict] | TableRows, folder: Path, split: str, *, features: Any = None,
                  shard_rows: int = SHARD_ROWS) -> list[str]:
    """Write ``rows`` as ``{folder}/{split}-0000i-of-0000n.parquet`` shards; returns the file names.

    With ``features`` (a ``datasets.Features``) the schema, including the ``datasets`` metadata, is
    fixed; without, pyarrow infers it from the rows (evaluation sets keep their upstream types). A
    :class:`TableRows` is written as it is (its table already has the schema), one shard at a time.
    """
    import pyarrow as pa
    import pyarrow.parquet as pq

    folder.mkdir(parents=True, exist_ok=True)
    n = max(1, -(-len(rows) // shard_rows))
    schema = features.arrow_schema if features is not None else None
    names = []
    for i in range(n):
        chunk = rows[i * shard_rows:(i + 1) * shard_rows]
        if isinstance(chunk, pa.Table):
            table = chunk
        else:
            table = pa.Table.from_pylist(list(chunk), schema=schema) if chunk or schema is not None else pa.table({})
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
def exclusive_build(out_dir: Path) -> Iterator[None]:
    """Hold the lock ``.NAME.lock`` beside ``out_dir`` while building it, after deleting what builds of it killed
    earlier left beside it (their scratch and temporary folders, ``.NAME.*``); the lock file goes at the end.

    Why: a build's scratch files and its unfinished output live in hidden folders beside ``out_dir`` (same
    filesystem, so the final rename is atomic). A build killed with SIGKILL cannot remove them, and they are
    large; with the lock held no other build of ``out_dir`` is alive, so whatever else is there is stale.

    Raises:
        OutputExistsError: another build of ``out_dir`` holds the lock.
    """
    out_dir = Path(out_dir)
    out_dir.parent.mkdir(parents=True, exist_ok=True)
    lock_path = out_dir.with_name(f".{out_dir.name}.lock")
    with open(lock_path, "a") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise OutputExistsError(f"Another build is writing '{out_dir}' (it holds {lock_path}).",
                                    hint="Wait for it to finish, or build into another --out.") from None
        stale = [p for p in out_dir.parent.glob(f".{glob.escape(out_dir.name)}.*") if p.is_dir()]
        for folder in stale:
            shutil.rmtree(folder, ignore_errors=True)
        if stale:
            logger.info("removed %d folder(s) left beside %s by an interrupted build", len(stale), out_dir)
        try:
            yield
        finally:
            lock_path.unlink(missing_ok=True)


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
