"""Decontamination: drop training rows that share a word 13-gram with any evaluation item.

The index holds every 13-gram of every evaluation text (the prompt/question and reference-answer fields
each evaluation set declares). An evaluation text shorter than 13 words is indexed whole, as one n-gram
of its own length, when it has at least ``min_words`` (8) words — the variable-n rule of GPT-3 (Brown et
al., 2020, App. C) — so short HarmBench behaviours or questions still count; shorter texts are too
generic to test and are reported as unchecked. A training row is contaminated when any n-gram of any of
its turns is in the index; the report counts removed rows per evaluation set (a row overlapping two sets
counts for both) and lists the removed ids.

The index is a sorted ``uint64`` array of n-gram hashes with a parallel bitmask of the evaluation sets
containing each n-gram, so checking a row is one vectorised ``searchsorted`` per n-gram length.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np

from mergebench.data.ngrams import WordHasher, ngram_hashes, ngram_hashes_upto, words

logger = logging.getLogger(__name__)
_SENTINEL = np.array([1 << 40], dtype=np.uint64)


@dataclass(frozen=True)
class DecontamConfig:
    ngram: int = 13
    min_words: int = 8


@dataclass(frozen=True)
class EvalSetCoverage:
    """How much of one evaluation set the index covers."""

    texts: int
    indexed: int
    too_short: int


@dataclass(frozen=True)
class DecontamReport:
    rows_in: int
    removed: int
    removed_by_eval_set: dict[str, int]
    removed_ids: dict[str, tuple[str, ...]]  # removed row id → the evaluation sets it overlaps
    coverage: dict[str, EvalSetCoverage] = field(default_factory=dict)
    config: DecontamConfig = DecontamConfig()

    @property
    def rows_out(self) -> int:
        return self.rows_in - self.removed


class NgramIndex:
    """N-grams of the evaluation sets, with which sets contain each one (≤ 64 sets: a uint64 bitmask)."""

    def __init__(self, corpus: Mapping[str, Sequence[str]], config: DecontamConfig = DecontamConfig()) -> None:
        if len(corpus) > 64:
            raise ValueError(f"At most 64 evaluation sets per index, got {len(corpus)}.")
        self.config = config
        self.names = tuple(corpus)
        self.words = WordHasher()
        hashes: list[np.ndarray] = []
        masks: list[np.ndarray] = []
        lengths: set[int] = set()
        coverage = {}
        for bit, (name, texts) in enumerate(corpus.items()):
            indexed = too_short = 0
            for text in texts:
                ids = self.words.ids(words(text))
                n = min(config.ngram, len(ids))
                if n < config.min_words:
                    too_short += 1
                    continue
                indexed += 1
                lengths.add(n)
                h = ngram_hashes(ids, n)
                hashes.append(h)
                masks.append(np.full(len(h), np.uint64(1) << np.uint64(bit), dtype=np.uint64))
            coverage[name] = EvalSetCoverage(len(texts), indexed, too_short)
        self.coverage = coverage
        self.lengths = tuple(sorted(lengths))
        all_h = np.concatenate(hashes) if hashes else np.empty(0, dtype=np.uint64)
        all_m = np.concatenate(masks) if masks else np.empty(0, dtype=np.uint64)
        order = np.argsort(all_h, kind="stable")
        all_h, all_m = all_h[order], all_m[order]
        self.hashes, starts = np.unique(all_h, return_index=True)
        self.masks = np.bitwise_or.reduceat(all_m, starts) if len(all_h) else all_m

    def lookup(self, *texts: str) -> int:
        """Bitmask of the evaluation sets sharing an n-gram with any of ``texts`` (0 when clean).

        Several texts (the turns of a conversation) are checked in one pass: their word ids are joined
        with a sentinel no word hashes to (CRC-32 ids are < 2³²), so an n-gram spanning two texts never matches.
        """
        if not len(self.hashes):
            return 0
        parts = [self.words.ids(words(t)) for t in texts]
        ids = np.concatenate([p for part in parts for p in (part, _SENTINEL)]) if parts else _SENTINEL[:0]
        h = ngram_hashes_upto(ids, self.lengths)
        if not len(h):
            return 0
        pos = np.searchsorted(self.hashes, h)
        pos[pos == len(self.hashes)] = 0
        hit = self.hashes[pos] == h
        return int(np.bitwise_or.reduce(self.masks[pos[hit]])) if hit.any() else 0

    def names_of(self, mask: int) -> tuple[str, ...]:
        return tuple(name for bit, name in enumerate(self.names) if mask >> bit & 1)


class Decontaminator:
    """Drops rows overlapping any evaluation set, batch after batch; counts removals per set for the report.

    Rows are checked one by one against the fixed :class:`NgramIndex`, so batches change nothing: only the
    removed ids are remembered.
    """

    def __init__(self, index: NgramIndex) -> None:
        self.index = index
        self.rows_in = 0
        self._removed: dict[str, tuple[str, ...]] = {}
        self._counts = dict.fromkeys(index.names, 0)

    def filter(self, rows: list[dict]) -> list[dict]:
        """The rows of this batch that share no n-gram with an evaluation set, in order."""
        self.rows_in += len(rows)
        kept: list[dict] = []
        for row in rows:
            mask = self.index.lookup(*(m["content"] for m in row["messages"]))
            if not mask:
                kept.append(row)
                continue
            names = self.index.names_of(mask)
            self._removed[row["id"]] = names
            for name in names:
                self._counts[name] += 1
        return kept

    def report(self) -> DecontamReport:
        report = DecontamReport(rows_in=self.rows_in, removed=len(self._removed), removed_by_eval_set=self._counts,
                                removed_ids=self._removed, coverage=self.index.coverage, config=self.index.config)
        logger.info("decontamination: %d of %d rows overlap an evaluation set", report.removed, report.rows_in)
        return report


def decontaminate(rows: list[dict], index: NgramIndex) -> tuple[list[dict], DecontamReport]:
    """Drop rows overlapping any evaluation set; report removals per set (one batch of :class:`Decontaminator`)."""
    decontaminator = Decontaminator(index)
    kept = decontaminator.filter(rows)
    return kept, decontaminator.report()
