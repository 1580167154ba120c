"""Exact and near-duplicate removal over whole conversations.

*Exact*: two rows whose conversations are equal after :func:`~mergebench.data.ngrams.normalize` (case,
Unicode form and whitespace ignored; roles included). *Near*: MinHash over word 5-grams (Broder, 1997)
with ``num_perm`` hash permutations; candidates come from LSH banding
(``bands × rows = num_perm``) and a candidate is a duplicate when its estimated Jaccard similarity to an
already kept row is ≥ ``threshold``. The first occurrence (source priority, then row order) is kept.

Why the whole conversation and not the prompt: DART-Math-hard gives hard queries several different
responses *on purpose*; prompt-level deduplication would undo its difficulty-aware sampling. Rows that
share a prompt are instead kept on the same side of the validation split (:mod:`mergebench.data.split`).
"""

from __future__ import annotations

import hashlib
import logging
from collections import Counter
from dataclasses import dataclass, field

import numpy as np
from tqdm.auto import tqdm

from mergebench.data.ngrams import WordHasher, ngram_hashes, normalize, words

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
        with np.errstate(over="ignore"):
            z = shingles[:, None] ^ self._seeds[None, :]
            z = (z ^ (z >> np.uint64(30))) * _MIX1
            z = (z ^ (z >> np.uint64(27))) * _MIX2
            z ^= z >> np.uint64(31)
        return (z.min(axis=0) >> np.uint64(32)).astype(np.uint32)

    def band_keys(self, sig: np.ndarray) -> list[bytes]:
        rows = self.config.num_perm // self.config.bands
        return [bytes([b]) + sig[b * rows:(b + 1) * rows].tobytes() for b in range(self.config.bands)]


def _exact_key(row: dict) -> bytes:
    return hashlib.blake2b(normalize(conversation_text(row)).encode("utf-8"), digest_size=16).digest()


def deduplicate(rows: list[dict], config: DedupConfig = DedupConfig(), *,
                progress: bool = False) -> tuple[list[dict], DedupReport]:
    """Remove exact, then near duplicates; keep the first of each group, in input order.

    Returns:
        The kept rows (order preserved) and a report with every removed id and what it duplicated.
    """
    seen: dict[bytes, str] = {}
    dups: list[Duplicate] = []
    stage1: list[dict] = []
    for row in rows:
        key = _exact_key(row)
        if key in seen:
            dups.append(Duplicate(row["id"], seen[key], "exact", 1.0))
        else:
            seen[key] = row["id"]
            stage1.append(row)
    n_exact = len(dups)

    hasher = MinHasher(config)
    buckets: dict[bytes, int] = {}
    kept_sigs: list[np.ndarray] = []
    kept_ids: list[str] = []
    kept: list[dict] = []
    for row in tqdm(stage1, desc="near-dedup", disable=not progress, unit="row"):
        sig = hasher.signature(conversation_text(row))
        if sig is None:
            kept.append(row)
            continue
        keys = hasher.band_keys(sig)
        best, best_sim = -1, 0.0
        for cand in {buckets[k] for k in keys if k in buckets}:
            sim = float(np.mean(kept_sigs[cand] == sig))
            if sim > best_sim:
                best, best_sim = cand, sim
        if best >= 0 and best_sim >= config.threshold:
            dups.append(Duplicate(row["id"], kept_ids[best], "near", round(best_sim, 4)))
            continue
        slot = len(kept_sigs)
        kept_sigs.append(sig)
        kept_ids.append(row["id"])
        for k in keys:
            buckets.setdefault(k, slot)
        kept.append(row)

    by_id = {r["id"]: r["source"] for r in rows}
    report = DedupReport(rows_in=len(rows), exact_removed=n_exact, near_removed=len(dups) - n_exact,
                         removed_by_source=dict(Counter(by_id[d.id] for d in dups)), duplicates=tuple(dups),
                         config=config)
    logger.info("dedup: %d rows → %d (%d exact, %d near duplicates)", report.rows_in, report.rows_out,
                report.exact_removed, report.near_removed)
    return kept, report
