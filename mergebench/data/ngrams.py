"""Text normalisation and stable n-gram hashing shared by deduplication and decontamination.

Hashes must be identical from one run (and machine) to the next, or a rebuild could remove different rows:
Python's ``hash`` is salted per process, so words are hashed with CRC-32 and n-grams combined with a
fixed polynomial in wrapping 64-bit arithmetic (numpy, vectorised over every position of a text).
"""

from __future__ import annotations

import re
import unicodedata
import zlib

import numpy as np

_WORD = re.compile(r"\w+")
_SPACE = re.compile(r"\s+")
_BASE = np.uint64(0x100000001B3)  # FNV-64 prime: odd, so the polynomial mixes every position
_LENGTH_SALT = np.uint64(0x9E3779B97F4A7C15)


def normalize(text: str) -> str:
    """NFKC, case-folded, whitespace collapsed: two texts equal after this are exact duplicates."""
    return _SPACE.sub(" ", unicodedata.normalize("NFKC", text).casefold()).strip()


def words(text: str) -> list[str]:
    """Lower-cased word tokens (Unicode ``\\w+``): punctuation and spacing never break an n-gram match."""
    return _WORD.findall(unicodedata.normalize("NFKC", text).casefold())


class WordHasher:
    """Maps words to stable 32-bit ids (CRC-32), caching them: corpora repeat the same few words a lot."""

    def __init__(self) -> None:
        self._cache: dict[str, int] = {}

    def ids(self, tokens: list[str]) -> np.ndarray:
        cache = self._cache
        for tok in set(tokens).difference(cache):
            cache[tok] = zlib.crc32(tok.encode("utf-8"))
        return np.array([cache[t] for t in tokens], dtype=np.uint64)


def ngram_hashes(ids: np.ndarray, n: int) -> np.ndarray:
    """The hash of every contiguous ``n``-gram of ``ids`` (``len(ids) - n + 1`` values, uint64).

    ``h = Σⱼ idsᵢ₊ⱼ·Bⁿ⁻¹⁻ʲ  (mod 2⁶⁴)``, then salted with ``n`` so equal words at different lengths differ.
    """
    count = len(ids) - n + 1
    if count <= 0:
        return np.empty(0, dtype=np.uint64)
    h = np.zeros(count, dtype=np.uint64)
    with np.errstate(over="ignore"):
        for j in range(n):
            h = h * _BASE + ids[j:j + count]
        return h ^ (np.uint64(n) * _LENGTH_SALT)


def ngram_hashes_upto(ids: np.ndarray, lengths: tuple[int, ...]) -> np.ndarray:
    """:func:`ngram_hashes` for every ``n`` in ``lengths`` (sorted), concatenated, in one incremental pass.

    The ``n+1``-gram hash at ``i`` is the ``n``-gram hash at ``i`` times ``B`` plus word ``i+n``, so each
    extra length costs one vector operation instead of ``n``.
    """
    if not lengths or len(ids) < lengths[0]:
        return np.empty(0, dtype=np.uint64)
    out: list[np.ndarray] = []
    with np.errstate(over="ignore"):
        n = lengths[0]
        h = ngram_hashes(ids, n) ^ (np.uint64(n) * _LENGTH_SALT)  # undo the salt: keep the raw polynomial
        for target in lengths:
            while n < target:
                count = len(ids) - n
                if count <= 0:
                    return np.concatenate(out) if out else np.empty(0, dtype=np.uint64)
                h = h[:count] * _BASE + ids[n:n + count]
                n += 1
            out.append(h ^ (np.uint64(n) * _LENGTH_SALT))
    return np.concatenate(out)
