"""Exact and near-duplicate removal over whole conversations.

*Exact*: two rows whose conversations are equal after :func:`~mergebench.data.ngrams.normalize` (case,
Unicode form and whitespace ignored; roles included). *Near*: MinHash over word 5-grams (Broder, 1997)
with ``num_perm`` hash permutations; candidates come from LSH banding
(``bands × rows = num_perm``) and a candidate is a duplicate when its estimated Jaccard similarity to an
already kept row is ≥ ``threshold``. The first occurrence (source priority, then row order) is kept.

Why the whole conversation and not the prompt: DART-Math-hard gives hard queries several different
responses *on purpose*; prompt-level deduplication would undo its difficulty-aware sampling. Rows that
share a prompt are instead kept on the same side of the validation split (:mod:`mergebench.data.split`).

A build feeds :class:`Deduplicator` its rows in bounded batches (:mod:`mergebench.data.clean`); the result is the
same as :func:`deduplicate` on all rows at once, and what it remembers is a few bytes per row (the digests and
band keys in :class:`~mergebench.data.seen.FirstSeen` maps; the kept rows' signatures go to a scratch file).
"""

from __future__ import annotations

import logging
import os
import tempfile
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from mergebench.data.ngrams import WordHasher, ngram_hashes, normalize, words
from mergebench.data.seen import FirstSeen, digest64

logger = logging.getLogger(__name__)
_MIX1 = np.uint64(0xBF58476D1CE4E5B9)
_MIX2 = np.uint64(0x94D049BB133111EB)


@dataclass(frozen=True)
class DedupConfig:
    """Near-duplicate settings. The defaults find pairs with Jaccard ≳ 0.8 with high probability."""

    ngram: int = 5
    num_perm: int = 128
    bands: int = 32
    threshold: float = 0.8
    seed: int = 1

    def __post_init__(self) -> None:
        if self.num_perm % self.bands:
            raise ValueError(f"num_perm ({self.num_perm}) must be a multiple of bands ({self.bands}).")


@dataclass(frozen=True)
class Duplicate:
    """A removed row and the kept row it duplicates."""

    id: str
    kept_id: str
    kind: str  # "exact" | "near"
    similarity: float


@dataclass(frozen=True)
class DedupReport:
    rows_in: int
    exact_removed: int
    near_removed: int
    removed_by_source: dict[str, int] = field(default_factory=dict)
    duplicates: tuple[Duplicate, ...] = ()
    config: DedupConfig = DedupConfig()

    @property
    def rows_out(self) -> int:
        return self.rows_in - self.exact_removed - self.near_removed


def conversation_text(row: dict) -> str:
    """The text deduplication compares: every turn, with its role."""
    return "\n".join(f"{m['role']}: {m['content']}" for m in row["messages"])


def _mix(z: np.ndarray) -> np.ndarray:
    """The SplitMix64 finaliser: a bijection of 64-bit integers with full avalanche (elementwise, wrapping)."""
    with np.errstate(over="ignore"):
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
        return z ^ (z >> np.uint64(31))


class MinHasher:
    """MinHash signatures of word n-gram sets; deterministic for a given :class:`DedupConfig`.

    Permutation ``k`` is ``h ↦ mix(h ⊕ sₖ)`` with ``mix`` the SplitMix64 finaliser (a bijection of 64-bit
    integers with full avalanche). Linear ``(a·x + b) mod p`` hashes are *not* used: with 32-bit ``a`` they
    are nearly monotone in ``x``, which makes the minimum a poor random sample and Jaccard estimates wrong.
    """

    def __init__(self, config: DedupConfig) -> None:
        self.config = config
        rng = np.random.default_rng(config.seed)
        self._seeds = rng.integers(0, np.iinfo(np.int64).max, size=config.num_perm, dtype=np.int64).astype(np.uint64)
        self._words = WordHasher()

    def signature(self, text: str) -> np.ndarray | None:
        """uint32[num_perm], or ``None`` for a text without words (left to exact deduplication)."""
        tokens = words(text)
        if not tokens:
            return None
        ids = self._words.ids(tokens)
        shingles = np.unique(ngram_hashes(ids, min(self.config.ngram, len(ids))))
        z = _mix(shingles[:, None] ^ self._seeds[None, :])
        return (z.min(axis=0) >> np.uint64(32)).astype(np.uint32)

    def band_keys(self, signatures: np.ndarray) -> np.ndarray:
        """One ``uint64`` key per LSH band of each signature: ``[m, num_perm]`` → ``[m, bands]``.

        A band's values are packed two by two into 64-bit words and folded with ``h ← mix(h ⊕ word)``, so two
        different bands share a key with probability 2⁻⁶⁴ (packing matters: folding in 32 bits at a time would
        let bands collide whenever their partial keys agree in the upper half, 2⁻³² a pair).
        """
        rows = self.config.num_perm // self.config.bands
        values = signatures.reshape(len(signatures), self.config.bands, rows).astype(np.uint64)
        if rows % 2:
            values = np.concatenate([values, np.zeros_like(values[:, :, :1])], axis=2)
        packed = (values[:, :, 0::2] << np.uint64(32)) | values[:, :, 1::2]
        keys = np.zeros(packed.shape[:2], dtype=np.uint64)
        for w in range(packed.shape[2]):
            keys = _mix(keys ^ packed[:, :, w])
        return keys


class Deduplicator:
    """Exact, then near-duplicate removal over rows fed in order, in batches of any size.

    Feeding the rows in several batches gives the same result as feeding them at once: each row is compared with
    every earlier row kept so far, whichever batch it came in. What is remembered per row is fixed-size: the
    64-bit digest of its normalised conversation (12 bytes with its ordinal), and for each kept row one 64-bit key
    per LSH band (12 bytes × ``bands``) in :class:`~mergebench.data.seen.FirstSeen` maps, plus its MinHash
    signature, which goes to a scratch file and is read back only for the rows that share a band with it.

    Rows are numbered in the order they are fed (their *ordinals*); the report names kept rows by id through
    ``ids_of``, so the ids of earlier batches need not be kept in memory.
    """

    def __init__(self, config: DedupConfig = DedupConfig(), *, scratch_dir: Path | None = None) -> None:
        self.config = config
        self._hasher = MinHasher(config)
        self._exact = FirstSeen()
        self._buckets = [FirstSeen() for _ in range(config.bands)]  # band key → slot of the first kept row
        self._record = np.dtype([("signature", np.uint32, (config.num_perm,)), ("ordinal", np.int64)])
        # record of slot s at s × itemsize; closed (and so deleted) by __exit__
        self._signatures = tempfile.TemporaryFile(dir=scratch_dir)  # noqa: SIM115
        self._rows = 0  # rows fed so far
        self._slots = 0  # kept rows with a signature so far
        self._exact_dups: list[tuple[str, int, str]] = []  # (id, kept row's ordinal, source)
        self._near_dups: list[tuple[str, int, float, str]] = []  # (id, kept row's ordinal, similarity, source)

    def __enter__(self) -> Deduplicator:
        return self

    def __exit__(self, *exc: object) -> None:
        self._signatures.close()

    @property
    def index_bytes(self) -> int:
        """Memory held by the exact and LSH indexes (the signatures are on disk)."""
        return self._exact.nbytes + sum(b.nbytes for b in self._buckets)

    def filter(self, rows: list[dict]) -> list[dict]:
        """The rows of this batch that duplicate no earlier row (of this batch or an earlier one), in order."""
        ordinals = self._rows + np.arange(len(rows))
        self._rows += len(rows)
        keys = digest64(normalize(conversation_text(r)) for r in rows)
        _, first, inverse = np.unique(keys, return_index=True, return_inverse=True)
        earlier = self._exact.get(keys)
        original = np.where(earlier >= 0, earlier, ordinals[first[inverse]])
        self._exact.add(keys, ordinals)
        unique: list[dict] = []
        for row, ordinal, kept in zip(rows, ordinals.tolist(), original.tolist(), strict=True):
            if kept == ordinal:
                unique.append(row)
            else:
                self._exact_dups.append((row["id"], kept, row["source"]))
        return self._near(unique, ordinals[original == ordinals])

    def _near(self, rows: list[dict], ordinals: np.ndarray) -> list[dict]:
        """Remove the rows whose estimated Jaccard similarity to a kept row sharing an LSH band is ≥ threshold.

        Candidates from earlier batches come from the band maps at once; within the batch, a row's candidates are
        the first *kept* earlier rows of the batch with the same band key, so only the rows that have a candidate or
        share a band key with another row of the batch are visited one by one (duplicates are rare).
        """
        cfg = self.config
        signatures = [self._hasher.signature(conversation_text(r)) for r in rows]
        signed = [i for i, s in enumerate(signatures) if s is not None]
        sigs = np.stack([s for s in signatures if s is not None]) if signed else np.empty((0, cfg.num_perm), np.uint32)
        keys = self._hasher.band_keys(sigs)
        indexed = np.stack([b.get(keys[:, k]) for k, b in enumerate(self._buckets)], axis=1)  # slot or -1
        position = np.arange(len(sigs))
        earlier, repeated = np.zeros(keys.shape, bool), np.zeros(keys.shape, bool)
        for k in range(cfg.bands):
            _, first, inverse, counts = np.unique(keys[:, k], return_index=True, return_inverse=True,
                                                  return_counts=True)
            earlier[:, k] = first[inverse] < position
            repeated[:, k] = counts[inverse] > 1
        in_index = indexed >= 0
        removed, n_removed = np.zeros(len(sigs), bool), 0
        local: dict[tuple[int, int], int] = {}  # (band, key) → slot of the first kept row of this batch with it
        batch_slots: dict[int, int] = {}  # slot → position in ``sigs``, for this batch's kept rows
        for j in np.flatnonzero(in_index.any(axis=1) | repeated.any(axis=1)).tolist():
            if in_index[j].any() or earlier[j].any():
                candidates = set()  # filled in band order, like the sequential definition (its ties go the same way)
                for k in range(cfg.bands):
                    slot = int(indexed[j, k]) if in_index[j, k] else \
                        local.get((k, int(keys[j, k]))) if earlier[j, k] else None
                    if slot is not None:
                        candidates.add(slot)
                best, best_sim, best_ordinal = -1, 0.0, -1
                for cand in candidates:
                    other, other_ordinal = (sigs[batch_slots[cand]], int(ordinals[signed[batch_slots[cand]]])) \
                        if cand in batch_slots else self._read(cand)
                    sim = float(np.mean(other == sigs[j]))
                    if sim > best_sim:
                        best, best_sim, best_ordinal = cand, sim, other_ordinal
                if best >= 0 and best_sim >= cfg.threshold:
                    removed[j], n_removed = True, n_removed + 1
                    row = rows[signed[j]]
                    self._near_dups.append((row["id"], best_ordinal, round(best_sim, 4), row["source"]))
                    continue
            slot = self._slots + j - n_removed  # rows are visited in order: every removal so far is before j
            batch_slots[slot] = j
            for k in np.flatnonzero(repeated[j] & ~in_index[j]).tolist():
                local.setdefault((k, int(keys[j, k])), slot)
        kept = ~removed
        slots = self._slots + np.arange(int(kept.sum()))
        for k, bucket in enumerate(self._buckets):
            bucket.add(keys[kept, k], slots)
        records = np.empty(len(slots), self._record)
        records["signature"], records["ordinal"] = sigs[kept], ordinals[signed][kept]
        self._signatures.write(records.tobytes())  # appended: os.pread below never moves the file position
        self._signatures.flush()
        self._slots += len(slots)
        dropped = {signed[j] for j in np.flatnonzero(removed).tolist()}
        return [row for i, row in enumerate(rows) if i not in dropped]

    def _read(self, slot: int) -> tuple[np.ndarray, int]:
        """The signature and ordinal of the kept row in ``slot`` (of an earlier batch), from the scratch file."""
        size = self._record.itemsize
        record = np.frombuffer(os.pread(self._signatures.fileno(), size, slot * size), self._record)[0]
        return record["signature"], int(record["ordinal"])

    def report(self, ids_of: Callable[[list[int]], list[str]]) -> DedupReport:
        """Every removed row so far and the kept row it duplicates; ``ids_of`` maps ordinals to row ids."""
        exact_ids = ids_of([kept for _, kept, _ in self._exact_dups])
        near_ids = ids_of([kept for _, kept, _, _ in self._near_dups])
        dups = (*(Duplicate(i, k, "exact", 1.0) for (i, _, _), k in zip(self._exact_dups, exact_ids, strict=True)),
                *(Duplicate(i, k, "near", s) for (i, _, s, _), k in zip(self._near_dups, near_ids, strict=True)))
        sources = [d[-1] for d in self._exact_dups] + [d[-1] for d in self._near_dups]
        report = DedupReport(rows_in=self._rows, exact_removed=len(self._exact_dups),
                             near_removed=len(self._near_dups), removed_by_source=dict(Counter(sources)),
                             duplicates=dups, config=self.config)
        logger.info("dedup: %d rows → %d (%d exact, %d near duplicates)", report.rows_in, report.rows_out,
                    report.exact_removed, report.near_removed)
        return report


def deduplicate(rows: list[dict], config: DedupConfig = DedupConfig()) -> tuple[list[dict], DedupReport]:
    """Remove exact, then near duplicates from a list of rows; keep the first of each group, in input order.

    This is :class:`Deduplicator` fed one batch: the reference its batched use must equal.

    Returns:
        The kept rows (order preserved) and a report with every removed id and what it duplicated.
    """
    with Deduplicator(config) as dedup:
        kept = dedup.filter(rows)
        return kept, dedup.report(lambda ordinals: [rows[i]["id"] for i in ordinals])
