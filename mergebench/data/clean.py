"""A build's one pass over its sources, in bounded batches: convert → deduplicate → decontaminate.

Each source is read ``batch_rows`` rows at a time from its memory-mapped ``datasets`` table. A batch is converted
to the project schema, appended to a scratch Arrow file that holds every converted row in order (a row's
position there is its *ordinal*), and filtered by the streaming :class:`~mergebench.data.dedup.Deduplicator` and
:class:`~mergebench.data.decontaminate.Decontaminator`. Only one batch of rows is ever held as Python objects.
What the pass keeps for the whole build is a few bytes per row: the deduplication indexes (a 64-bit digest of
each row and one per LSH band of each kept row, :mod:`~mergebench.data.seen`), one flag per row, the 12-byte
prompt-group digest of each kept row (all the validation split needs), and the ids of the removed rows, which
the report lists. The build then writes the splits from the scratch table, one shard at a time.

The outcome equals cleaning every row at once (:func:`~mergebench.data.dedup.deduplicate` and
:func:`~mergebench.data.decontaminate.decontaminate` are the same classes fed a single batch).
"""

from __future__ import annotations

import logging
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from tqdm.auto import tqdm

from mergebench.data.convert import SourceConverter, iter_batches
from mergebench.data.decontaminate import Decontaminator, DecontamReport, NgramIndex
from mergebench.data.dedup import DedupConfig, Deduplicator, DedupReport
from mergebench.data.load import LoadedSource
from mergebench.data.schema import features
from mergebench.data.split import group_digest

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Cleaned:
    """What the pass leaves: every converted row (memory-mapped), which of them survived, and the reports."""

    table: Any  # pyarrow.Table over the scratch file: every converted row, in order
    kept: np.ndarray  # bool per row of ``table``: neither a duplicate nor contaminated
    groups: bytes  # split.group_digest of each kept row, in order (12 bytes a row)
    filtered: dict[str, int]  # source key → rows its converter filtered out
    kept_by_source: dict[str, int]  # source key → kept rows
    languages: dict[str, int]  # language → kept rows, in order of first appearance
    dedup: DedupReport
    decontam: DecontamReport


def clean(loaded: Sequence[LoadedSource], *, domain: str, dedup: DedupConfig, index: NgramIndex, scratch: Path,
          batch_rows: int = 10_000, progress: bool = False) -> Cleaned:
    """Convert, deduplicate and decontaminate the sources (in priority order), ``batch_rows`` rows at a time.

    Args:
        scratch: a folder for the scratch files (the converted rows, the kept rows' MinHash signatures); it must
            outlive the returned table, which is memory-mapped from it.

    Raises:
        DataError: a bad cell (naming the source and the row), from the converters.
    """
    import pyarrow as pa

    path, schema = scratch / "converted.arrow", features().arrow_schema
    flags: list[np.ndarray] = []
    groups = bytearray()
    languages: Counter[str] = Counter()
    filtered = dict.fromkeys((s.spec.key for s in loaded), 0)
    kept_by_source = dict(filtered)
    decontaminator = Decontaminator(index)
    total = sum(len(s.indices) for s in loaded)
    with (Deduplicator(dedup, scratch_dir=scratch) as deduplicator,
          pa.ipc.new_file(str(path), schema) as writer,
          tqdm(total=total, desc="clean", disable=not progress, unit="row") as bar):
        for src in loaded:
            converter = SourceConverter(src.spec, domain=domain, revision=src.sha)
            for batch in iter_batches(src.dataset, src.indices, spec=src.spec, revision=src.sha,
                                      batch_size=batch_rows):
                rows = converter.convert(batch)
                writer.write_table(pa.Table.from_pylist(rows, schema=schema))
                survivors = {id(r) for r in decontaminator.filter(deduplicator.filter(rows))}
                flags.append(np.fromiter((id(r) in survivors for r in rows), dtype=bool, count=len(rows)))
                for row in rows:
                    if id(row) in survivors:
                        groups += group_digest(row)
                        languages[row["language"]] += 1
                kept_by_source[src.spec.key] += len(survivors)
                bar.update(len(batch))
            filtered[src.spec.key] = converter.filtered
            logger.info("%s: %d rows read, %d filtered out by its converter", src.spec.key, len(src.indices),
                        converter.filtered)
    table = pa.ipc.open_file(pa.memory_map(str(path))).read_all()
    ids = table.column("id")
    dedup_report = deduplicator.report(lambda ordinals: ids.take(pa.array(ordinals, pa.int64())).to_pylist())
    logger.info("deduplication indexes: %.0f MB for %d rows", deduplicator.index_bytes / 1e6, len(table))
    return Cleaned(table, np.concatenate(flags) if flags else np.zeros(0, bool), bytes(groups), filtered,
                   kept_by_source, dict(languages), dedup_report, decontaminator.report())
