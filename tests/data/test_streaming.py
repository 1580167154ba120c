"""The build's streaming units: fed in bounded batches, each gives what it gives on all rows at once.

The deduplicator is also checked against its definition written out row by row (a plain dict of normalised texts
and of LSH band bytes), so that its batched, vectorised bookkeeping cannot drift from what the card documents.
"""

from __future__ import annotations

import random

import datasets
import numpy as np
import pyarrow as pa
import pytest

from mergebench.data.convert import SourceConverter, convert_rows, iter_batches
from mergebench.data.decontaminate import Decontaminator, NgramIndex, decontaminate
from mergebench.data.dedup import DedupConfig, Deduplicator, MinHasher, conversation_text, deduplicate
from mergebench.data.fixture_sources import fixture_rows
from mergebench.data.ngrams import normalize
from mergebench.data.publish import TableRows, write_parquet
from mergebench.data.schema import features
from mergebench.data.seen import FirstSeen, digest64
from mergebench.data.sources import SOURCES

VOCAB = [f"w{i}" for i in range(60)]


def chat_rows(n: int, seed: int = 0) -> list[dict]:
    """Rows drawn from 80 short texts over a 60-word vocabulary: many exact copies (some re-cased and re-spaced),
    near copies (one word changed or inserted), unrelated rows sharing LSH bands, and two rows without words (no
    MinHash signature: left to exact deduplication)."""
    rng = random.Random(seed)
    texts = [" ".join(rng.choice(VOCAB) for _ in range(rng.randint(3, 60))) for _ in range(80)]
    rows = []
    for i in range(n):
        words = rng.choice(texts).split()
        roll = rng.random()
        if roll < 0.3:
            words[rng.randrange(len(words))] = rng.choice(VOCAB)
        elif roll < 0.4:
            words.insert(rng.randrange(len(words) + 1), "extra")
        text = "?!" if roll > 0.95 else " ".join(words)
        if rng.random() < 0.1:
            text = "  " + text.upper()
        messages = [] if i in (5, 700) else [{"role": "user", "content": text}, {"role": "assistant", "content": "ok"}]
        rows.append({"id": f"r{i}", "source": rng.choice(["org/a", "org/b"]), "language": "en",
                     "domain": "instruction", "messages": messages})
    return rows


def batches(rows: list, size: int) -> list[list]:
    return [rows[i:i + size] for i in range(0, len(rows), size)]


# ---------------------------------------------------------------- FirstSeen


def test_first_seen_keeps_the_first_value_of_each_key_over_many_batches():
    rng = np.random.default_rng(0)
    seen, reference = FirstSeen(), {}
    for batch in range(300):
        keys = rng.integers(0, 2_000, size=int(rng.integers(0, 40))).astype(np.uint64)
        values = np.arange(len(keys)) + 100 * batch
        seen.add(keys, values)
        for k, v in zip(keys.tolist(), values.tolist(), strict=True):
            reference.setdefault(k, v)
    probe = np.arange(2_100, dtype=np.uint64)
    assert seen.get(probe).tolist() == [reference.get(k, -1) for k in probe.tolist()]
    assert len(seen) == len(reference) and seen.nbytes == 12 * len(reference)  # uint64 key + int32 value


def test_digest64_is_stable_and_distinguishes_texts():
    assert digest64(["a", "b", "a"]).tolist() == digest64(["a"]).tolist() + digest64(["b", "a"]).tolist()
    assert len(set(digest64(f"row {i}" for i in range(10_000)).tolist())) == 10_000


# ---------------------------------------------------------------- deduplication


def reference_dedup(rows: list[dict], config: DedupConfig) -> tuple[list[str], list[tuple]]:
    """The definition, row by row: exact copies (after normalising) of an earlier row go first; then a row is a near
    duplicate of the most similar kept row sharing an LSH band with it (ties: the first in set order), if at
    least ``threshold`` similar. Band keys are the bands' bytes, not their 64-bit digests."""
    hasher, per_band = MinHasher(config), config.num_perm // config.bands
    seen: dict[str, str] = {}
    exact, near, stage1 = [], [], []
    for row in rows:
        key = normalize(conversation_text(row))
        if key in seen:
            exact.append((row["id"], seen[key], "exact", 1.0))
        else:
            seen[key] = row["id"]
            stage1.append(row)
    buckets: dict[bytes, int] = {}
    kept_sigs, kept_ids, kept = [], [], []
    for row in stage1:
        sig = hasher.signature(conversation_text(row))
        if sig is None:
            kept.append(row["id"])
            continue
        bands = [bytes([b]) + sig[b * per_band:(b + 1) * per_band].tobytes() for b in range(config.bands)]
        best, best_sim = -1, 0.0
        for cand in {buckets[k] for k in bands if k in buckets}:
            sim = float(np.mean(kept_sigs[cand] == sig))
            if sim > best_sim:
                best, best_sim = cand, sim
        if best >= 0 and best_sim >= config.threshold:
            near.append((row["id"], kept_ids[best], "near", round(best_sim, 4)))
            continue
        for k in bands:
            buckets.setdefault(k, len(kept_sigs))
        kept_sigs.append(sig)
        kept_ids.append(row["id"])
        kept.append(row["id"])
    return kept, exact + near


@pytest.mark.parametrize("config", [DedupConfig(), DedupConfig(num_perm=12, bands=4, threshold=0.3)],
                         ids=["default", "loose"])
def test_deduplicator_in_batches_equals_one_shot_and_the_definition(config: DedupConfig, tmp_path):
    rows = chat_rows(1500)
    want_kept, want_dups = reference_dedup(rows, config)
    kept, report = deduplicate(rows, config)
    assert [r["id"] for r in kept] == want_kept
    assert [tuple(vars(d).values()) for d in report.duplicates] == want_dups
    assert report.exact_removed > 500 and report.near_removed > 100  # the rows exercise both kinds
    for size in (1, 7, 256):
        with Deduplicator(config, scratch_dir=tmp_path) as dedup:
            got = [r for batch in batches(rows, size) for r in dedup.filter(batch)]
            batched = dedup.report(lambda ordinals: [rows[i]["id"] for i in ordinals])
        assert [r["id"] for r in got] == want_kept, size
        assert batched == report, size


def test_band_keys_are_equal_exactly_when_bands_are():
    hasher = MinHasher(DedupConfig(num_perm=6, bands=2))  # 3 values a band: an odd count is padded
    sigs = np.array([[1, 2, 3, 4, 5, 6], [1, 2, 3, 9, 9, 9], [3, 2, 1, 4, 5, 6], [1, 2, 3, 4, 5, 6]], np.uint32)
    keys = hasher.band_keys(sigs)
    assert keys.shape == (4, 2)
    assert keys[0, 0] == keys[1, 0] == keys[3, 0] != keys[2, 0]
    assert keys[0, 1] == keys[2, 1] == keys[3, 1] != keys[1, 1]


# ---------------------------------------------------------------- conversion, decontamination, writing


def test_iter_batches_are_bounded_and_cover_the_selected_rows():
    spec = SOURCES["magicoder-evol-instruct"]
    rows = fixture_rows(spec.key)
    ds = datasets.Dataset.from_list(rows)
    for indices in (range(len(rows)), [0, 3, 4, 10, 17]):
        got = list(iter_batches(ds, indices, spec=spec, revision="sha", batch_size=4))
        assert [len(b) for b in got] == [min(4, len(indices) - i) for i in range(0, len(indices), 4)]
        assert [pair for b in got for pair in b] == [(i, rows[i]) for i in indices]


def test_repeated_native_ids_are_renamed_the_same_in_batches():
    spec = SOURCES["tulu3-personas-if"]
    rows = fixture_rows(spec.key)
    rows[3]["id"] = rows[12]["id"] = rows[0]["id"]  # repeated upstream, across batch boundaries
    rows[7]["id"] = f"{rows[0]['id']}-r3"  # the name the first repeat is renamed to
    pairs = list(enumerate(rows))
    whole = convert_rows(spec, pairs, domain="instruction", revision="s")
    converter = SourceConverter(spec, domain="instruction", revision="s")
    batched = [r for batch in batches(pairs, 5) for r in converter.convert(batch)]
    assert batched == whole.rows and converter.filtered == whole.filtered
    ids = [r["id"] for r in whole.rows]
    assert len(set(ids)) == len(ids)
    assert ids[3] == f"{ids[0]}-r3" and ids[7] == f"{ids[0]}-r3-r7" and ids[12] == f"{ids[0]}-r12"


def test_decontaminator_in_batches_equals_one_shot():
    question = "Janet's ducks lay 16 eggs per day and she eats three for breakfast every morning with toast"
    rows = chat_rows(300)
    for i in range(0, 300, 37):
        rows[i]["messages"][1]["content"] = f"As asked: {question}"
    index = NgramIndex({"gsm8k": [question]})
    kept, report = decontaminate(rows, index)
    assert report.removed == 9
    decontaminator = Decontaminator(index)
    assert [r for batch in batches(rows, 16) for r in decontaminator.filter(batch)] == kept
    assert decontaminator.report() == report


def test_table_rows_write_the_same_parquet_as_python_rows(tmp_path):
    rows = chat_rows(50)
    table = pa.Table.from_batches([pa.Table.from_pylist(b, schema=features().arrow_schema).to_batches()[0]
                                   for b in batches(rows, 8)])
    positions = np.array([1, 2, 3, 10, 11, 20, 30, 31, 32, 33, 49])
    names = write_parquet([rows[i] for i in positions], tmp_path / "a", "train", features=features(), shard_rows=4)
    assert write_parquet(TableRows(table, positions), tmp_path / "b", "train", shard_rows=4) == names
    assert names == ["train-00000-of-00003.parquet", "train-00001-of-00003.parquet", "train-00002-of-00003.parquet"]
    for name in names:
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    empty = write_parquet(TableRows(table, positions[:0]), tmp_path / "c", "validation")
    assert empty == write_parquet([], tmp_path / "d", "validation", features=features())
    assert (tmp_path / "c" / empty[0]).read_bytes() == (tmp_path / "d" / empty[0]).read_bytes()
