"""Deduplication, decontamination and the validation split on hand-made rows (no Hub, no datasets)."""

from __future__ import annotations

import pytest

from mergebench.data.decontaminate import DecontamConfig, NgramIndex, decontaminate
from mergebench.data.dedup import DedupConfig, MinHasher, deduplicate
from mergebench.data.split import split_validation, validation_size

LONG = ("The quick brown fox jumps over the lazy dog while the farmer watches from the old wooden fence and "
        "wonders whether the rain will arrive before the hay is brought into the barn for the long winter ahead "
        "of them all, because the radio said a storm was coming from the west by the evening")


def row(i: int, user: str, assistant: str = "Sure.", source: str = "org/src") -> dict:
    return {"id": f"r{i}", "source": source, "language": "en", "domain": "instruction",
            "messages": [{"role": "user", "content": user}, {"role": "assistant", "content": assistant}]}


def test_dedup_removes_exact_normalised_and_near_duplicates_keeping_the_first():
    rows = [row(0, "Tell me a story.", LONG), row(1, "Name three fruits.", "Apple, pear, plum."),
            row(2, "Name three fruits.", "Apple, pear, plum."),                   # exact
            row(3, "  NAME three   fruits. ", "apple,  PEAR, plum.\n"),            # case + whitespace
            row(4, "Tell me a story.", LONG.replace("lazy dog", "lazy old dog")),  # one word inserted
            row(5, "Tell me a story.", "Once upon a time there was a cat.")]      # same prompt, other answer
    kept, report = deduplicate(rows)
    assert [r["id"] for r in kept] == ["r0", "r1", "r5"]
    assert (report.exact_removed, report.near_removed, report.rows_out) == (2, 1, 3)
    assert {(d.id, d.kept_id, d.kind) for d in report.duplicates} == {
        ("r2", "r1", "exact"), ("r3", "r1", "exact"), ("r4", "r0", "near")}
    near = next(d for d in report.duplicates if d.kind == "near")
    assert 0.8 <= near.similarity < 1.0
    assert report.removed_by_source == {"org/src": 3}


def test_minhash_estimates_jaccard_and_is_deterministic():
    hasher = MinHasher(DedupConfig())
    a = hasher.signature(LONG)
    assert (a == MinHasher(DedupConfig()).signature(LONG)).all()  # no per-process salt
    # one inserted word in ~60 words: true 5-gram Jaccard ≈ 0.92
    assert 0.8 <= (a == hasher.signature(LONG.replace("lazy dog", "lazy old dog"))).mean() <= 1.0
    assert (a == hasher.signature("A completely different sentence about ships and harbours at dawn.")).mean() < 0.1
    assert hasher.signature("!!! ???") is None


def test_dedup_config_rejects_uneven_bands():
    with pytest.raises(ValueError, match="multiple of bands"):
        DedupConfig(num_perm=100, bands=32)


EVAL_ITEM = "Janet's ducks lay 16 eggs per day and she eats three for breakfast every morning with toast"


def test_decontamination_removes_13gram_overlap_and_reports_per_eval_set():
    index = NgramIndex({"gsm8k": [EVAL_ITEM], "short": ["What is two plus two?"],
                        "harm": ["Give detailed instructions for building a dangerous weapon at home now"]})
    rows = [row(0, f"Solve: {EVAL_ITEM.upper()}!", "16 - 3 = 13"),          # 13-gram overlap, any case
            row(1, "Janet's ducks lay 16 eggs per day.", "ok"),             # 8 words only: too few to match
            row(2, "what is two plus two", "4"),                            # eval text < 8 words: not indexed
            row(3, "Please give detailed instructions for building a dangerous weapon at home now."),  # 12 words
            row(4, "Name three fruits.", "Apple, pear, plum.")]
    kept, report = decontaminate(rows, index)
    assert [r["id"] for r in kept] == ["r1", "r2", "r4"]
    assert report.removed_ids == {"r0": ("gsm8k",), "r3": ("harm",)}
    assert report.removed_by_eval_set == {"gsm8k": 1, "short": 0, "harm": 1}
    assert report.coverage["short"].too_short == 1 and report.coverage["short"].indexed == 0
    assert report.coverage["gsm8k"].indexed == 1 and report.rows_out == 3


def test_an_ngram_split_across_two_turns_does_not_match():
    index = NgramIndex({"gsm8k": [EVAL_ITEM]})
    words = EVAL_ITEM.split()
    kept, report = decontaminate([row(0, " ".join(words[:7]), " ".join(words[7:]))], index)
    assert len(kept) == 1 and report.removed == 0


def test_decontamination_checks_every_turn_and_names_all_overlapping_sets():
    index = NgramIndex({"a": [EVAL_ITEM], "b": [EVAL_ITEM + " again"]}, DecontamConfig(ngram=13, min_words=8))
    kept, report = decontaminate([row(0, "Hi", "As they say: " + EVAL_ITEM)], index)
    assert kept == [] and report.removed_ids == {"r0": ("a", "b")}


@pytest.mark.parametrize(("n", "expected"), [(0, 0), (4, 0), (12, 2), (4999, 999), (5000, 1000), (90_000, 1000)])
def test_validation_size_rule(n, expected):
    assert validation_size(n) == expected


def test_split_is_seeded_disjoint_and_keeps_prompt_groups_together():
    rows = [row(i, f"Question number {i // 2}", f"answer {i}") for i in range(100)]  # 50 prompts × 2 answers
    train, val, report = split_validation(rows, size=1000, seed=7)
    assert (report.train_rows, report.validation_rows) == (80, 20) and len(train) + len(val) == 100
    assert not {r["id"] for r in train} & {r["id"] for r in val}
    prompts = lambda rs: {r["messages"][0]["content"] for r in rs}  # noqa: E731
    assert not prompts(train) & prompts(val)
    again = split_validation(list(reversed(rows)), size=1000, seed=7)[1]
    assert {r["id"] for r in again} == {r["id"] for r in val}  # depends on data + seed, not on order
    assert {r["id"] for r in split_validation(rows, size=1000, seed=8)[1]} != {r["id"] for r in val}
