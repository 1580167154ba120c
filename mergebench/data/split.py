"""The fixed-seed validation split, disjoint from train by row *and* by prompt.

Rows are grouped by their normalised first user turn (so DART-Math's several answers to one query, or
any leftover prompt repeats, land on the same side), groups are shuffled with ``numpy``'s PCG64 seeded
generator after sorting by key (so the split depends only on the data and the seed, not on input
order), and whole groups are taken for validation until it holds the target size.

Target size: ``min(validation_rows, n // 5)`` — 1,000 rows for any source of at least 5,000 rows, and
a fifth of a smaller one (documented in the card), so small sources keep most rows for training.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass

import numpy as np

from mergebench.data.ngrams import normalize


@dataclass(frozen=True)
class SplitReport:
    seed: int
    requested: int
    train_rows: int
    validation_rows: int
    rule: str


def validation_size(n: int, requested: int = 1000) -> int:
    """``min(requested, n // 5)``: the full 1,000 rows only when the source has ≥ 5,000 of them."""
    return min(requested, n // 5)


def group_digest(row: dict) -> bytes:
    """The 12-byte digest of the row's normalised first user turn: rows with equal digests are one prompt group."""
    first_user = next((m["content"] for m in row["messages"] if m["role"] == "user"), "")
    return hashlib.blake2b(normalize(first_user).encode("utf-8"), digest_size=12).digest()


def validation_mask(digests: bytes, *, size: int = 1000, seed: int = 42) -> tuple[np.ndarray, SplitReport]:
    """Which rows go to validation, from the rows' :func:`group_digest` values concatenated (12 bytes a row).

    This is all the split needs to hold for a whole build: the rows themselves stay on disk. Groups are ordered
    by digest (bytes order), shuffled with the seed, and taken whole until the validation size is reached.

    Returns:
        A boolean mask over the rows (``True``: validation) and the split report.
    """
    keys = np.frombuffer(digests, dtype=[("high", ">u8"), ("low", ">u4")])
    n = len(keys)
    target = validation_size(n, size)
    order = np.lexsort((keys["low"], keys["high"]))  # the digests' bytes order
    ordered = keys[order]
    starts = np.ones(n, bool)
    starts[1:] = ordered[1:] != ordered[:-1]
    group = np.empty(n, np.int64)
    group[order] = np.cumsum(starts) - 1
    n_groups = int(starts.sum())
    shuffled = np.random.default_rng(seed).permutation(n_groups)
    taken = np.cumsum(np.bincount(group, minlength=n_groups)[shuffled])
    chosen = np.zeros(n_groups, bool)
    chosen[shuffled[:min(int(np.searchsorted(taken, target)) + 1, n_groups) if target > 0 else 0]] = True
    mask = chosen[group]
    report = SplitReport(seed=seed, requested=size, train_rows=n - int(mask.sum()), validation_rows=int(mask.sum()),
                         rule=f"min({size}, n // 5) rows, whole prompt groups, numpy PCG64 seed {seed}")
    return mask, report


def split_validation(rows: list[dict], *, size: int = 1000,
                     seed: int = 42) -> tuple[list[dict], list[dict], SplitReport]:
    """Split ``rows`` into (train, validation); both keep the input order.

    Args:
        rows: deduplicated, decontaminated project rows.
        size: the requested validation size; the actual one is :func:`validation_size`.
        seed: the shuffle seed (recorded in the card).
    """
    mask, report = validation_mask(b"".join(group_digest(r) for r in rows), size=size, seed=seed)
    train = [r for r, v in zip(rows, mask.tolist(), strict=True) if not v]
    validation = [r for r, v in zip(rows, mask.tolist(), strict=True) if v]
    return train, validation, report
