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


def _group_key(row: dict) -> str:
    first_user = next((m["content"] for m in row["messages"] if m["role"] == "user"), "")
    return hashlib.blake2b(normalize(first_user).encode("utf-8"), digest_size=12).hexdigest()


def split_validation(rows: list[dict], *, size: int = 1000,
                     seed: int = 42) -> tuple[list[dict], list[dict], SplitReport]:
    """Split ``rows`` into (train, validation); both keep the input order.

    Args:
        rows: deduplicated, decontaminated project rows.
        size: the requested validation size; the actual one is :func:`validation_size`.
        seed: the shuffle seed (recorded in the card).
    """
    target = validation_size(len(rows), size)
    groups: dict[str, list[int]] = {}
    for i, row in enumerate(rows):
        groups.setdefault(_group_key(row), []).append(i)
    keys = sorted(groups)
    order = np.random.default_rng(seed).permutation(len(keys))
    chosen: set[int] = set()
    for k in order:
        if len(chosen) >= target:
            break
        chosen.update(groups[keys[k]])
    train = [r for i, r in enumerate(rows) if i not in chosen]
    validation = [r for i, r in enumerate(rows) if i in chosen]
    report = SplitReport(seed=seed, requested=size, train_rows=len(train), validation_rows=len(validation),
                         rule=f"min({size}, n // 5) rows, whole prompt groups, numpy PCG64 seed {seed}")
    return train, validation, report
