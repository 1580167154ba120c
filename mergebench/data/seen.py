"""What a streaming build must remember about every row it has seen, in a few bytes a row.

A build reads its sources in bounded batches, but deduplication is global: a row is a duplicate of *any* earlier
row, and row ids must be unique across the whole source. So the build keeps one 64-bit digest per row and key —
the normalised conversation (exact duplicates), each MinHash LSH band (near duplicates), the row id — in a
:class:`FirstSeen` map. A Python ``dict`` of ``bytes`` keys costs ~100 bytes an entry; :class:`FirstSeen`
holds 12 (a ``uint64`` key, an ``int32`` value) in sorted numpy arrays, so a million rows with 32 LSH bands
need ~0.4 GB instead of several.

Digests are 64-bit: two different texts share one with probability about n²/2⁶⁵ (3·10⁻⁸ for a million rows).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable

import numpy as np


def digest64(texts: Iterable[str]) -> np.ndarray:
    """The ``uint64`` BLAKE2b digest of each text: the same on every run and machine (unlike ``hash``)."""
    raw = b"".join(hashlib.blake2b(t.encode("utf-8"), digest_size=8).digest() for t in texts)
    return np.frombuffer(raw, dtype="<u8").astype(np.uint64)


class FirstSeen:
    """``uint64`` key → the first ``int32`` value stored under it, filled batch by batch.

    Each :meth:`add` appends its new keys as a sorted run; a run is merged into the one before it while that one
    is at most twice its size, so there are O(log n) runs and each entry is re-sorted O(log n) times. A lookup is
    one ``searchsorted`` per run. Values must fit an ``int32`` (row ordinals of a build: fewer than 2³¹ rows).

    >>> seen = FirstSeen()
    >>> seen.add(np.array([7, 3, 7], dtype=np.uint64), np.array([0, 1, 2]))
    >>> seen.get(np.array([3, 7, 9], dtype=np.uint64)).tolist()
    [1, 0, -1]
    """

    def __init__(self) -> None:
        self._keys: list[np.ndarray] = []
        self._values: list[np.ndarray] = []

    def __len__(self) -> int:
        return sum(len(k) for k in self._keys)

    @property
    def nbytes(self) -> int:
        """Bytes held by the keys and values."""
        return sum(k.nbytes + v.nbytes for k, v in zip(self._keys, self._values, strict=True))

    def get(self, keys: np.ndarray) -> np.ndarray:
        """The value stored under each of ``keys`` (``int64``), ``-1`` where there is none."""
        found = np.full(len(keys), -1, dtype=np.int64)
        for run_keys, run_values in zip(self._keys, self._values, strict=True):
            pos = np.searchsorted(run_keys, keys)
            pos[pos == len(run_keys)] = 0
            hit = run_keys[pos] == keys
            found[hit] = run_values[pos[hit]]
        return found

    def add(self, keys: np.ndarray, values: np.ndarray) -> None:
        """Store ``values[i]`` under ``keys[i]``, unless the key holds a value already or occurs earlier in ``keys``."""
        unique, first = np.unique(keys, return_index=True)
        new = self.get(unique) < 0
        if not new.any():
            return
        self._keys.append(unique[new])
        self._values.append(np.asarray(values, dtype=np.int32)[first[new]])
        while len(self._keys) > 1 and len(self._keys[-2]) <= 2 * len(self._keys[-1]):
            merged_keys, merged_values = np.concatenate(self._keys[-2:]), np.concatenate(self._values[-2:])
            order = np.argsort(merged_keys)
            self._keys[-2:] = [merged_keys[order]]
            self._values[-2:] = [merged_values[order]]
