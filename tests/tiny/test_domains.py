"""MergeBench-Tiny items: deterministic, right answers, disjoint splits, and the trained format evaluated."""

from __future__ import annotations

import ast
import math
import re
import statistics

import datasets
import pytest
from huggingface_hub import DatasetCard
from transformers import AutoTokenizer

from mergebench.domains import DOMAINS
from mergebench.eval.data_source import EXTRA_SETS
from mergebench.eval.prompts import chat_choice
from mergebench.eval.tasks import SUITES, get_task
from mergebench.eval.tinybench import (
    GENERAL_FACTS,
    MAX_STDERR,
    TEST_ITEMS,
    TINY_DOMAINS,
    VALIDATION_ITEMS,
    chat_rows,
    eval_splits,
    items,
)
from mergebench.prompt import CHATML_TEMPLATE, encode_chat
from mergebench.tiny.data import write_domain_datasets
from mergebench.work import read_jsonl

ALL = (*DOMAINS, "general")


@pytest.mark.parametrize("domain", ALL)
def test_items_are_deterministic_with_distinct_choices_and_a_valid_gold(domain: str) -> None:
    first, again = items(domain, "test", 40, seed=3), items(domain, "test", 40, seed=3)
    assert first == again and first != items(domain, "test", 40, seed=4)
    for item in first:
        assert len(set(item.choices)) == len(item.choices) >= 2 and 0 <= item.gold < len(item.choices)


@pytest.mark.parametrize("domain", ALL)
def test_evaluation_items_are_distinct_and_bound_the_standard_error(domain: str) -> None:
    splits = eval_splits(domain)
    assert set(splits) == ({"test"} if domain == "general" else {"test", "validation"})
    for split, rows in splits.items():
        assert len(rows) == (TEST_ITEMS if split == "test" else VALIDATION_ITEMS)
        assert len({r["question"] for r in rows}) == len(rows), split  # no item counted twice
    # the worst case: an accuracy of one half, sample standard deviation (n - 1), as the results record it
    def worst(n: int) -> float:
        return statistics.stdev([1.0] * (n // 2) + [0.0] * (n - n // 2)) / math.sqrt(n)

    assert worst(TEST_ITEMS) <= MAX_STDERR < worst(TEST_ITEMS - 1)  # one item less and the bound no longer holds


def test_asking_for_more_distinct_items_than_the_pool_holds_is_an_error() -> None:
    with pytest.raises(ValueError, match="Only 80 distinct instruction test questions, 81 asked"):
        items("instruction", "test", 81)  # 20 held-out facts × 4 formats


def test_forgetting_facts_have_one_right_and_three_plausible_wrong_answers() -> None:
    facts = read_jsonl(GENERAL_FACTS)
    assert len(facts) == len({f["question"] for f in facts}) >= TEST_ITEMS
    for fact in facts:
        assert fact["answer"].count("{}") == 1 and len({fact["right"], *fact["wrong"]}) == 4, fact
    instruction = {q for q, _ in TINY_DOMAINS["instruction"].entities}
    assert not instruction & {f["question"] for f in facts}  # never taught by the instruction expert
    item = items("general", "test", 1)[0]
    assert item.answer.startswith(item.choices[item.gold][:8]) and len(set(item.choices)) == 4


def test_math_gold_is_the_sum_and_the_distractors_are_not() -> None:
    for item in items("math", "test", 50):
        a, b = map(int, re.findall(r"\d+", item.question))
        sums = [int(c.rsplit("= ", 1)[1].rstrip(".")) for c in item.choices]
        assert sums[item.gold] == a + b and sums.count(a + b) == 1


def test_coding_gold_is_what_python_prints() -> None:
    for item in items("coding", "test", 80):
        expression = item.question.split("print(", 1)[1][:-1]
        value = eval(compile(ast.parse(expression, mode="eval"), "<item>", "eval"))  # literals and builtins only
        assert item.choices[item.gold] == str(value) and item.choices.count(str(value)) == 1


def test_multilingual_gold_answers_in_the_language_of_the_question() -> None:
    markers = {"fr": " font ", "es": " son ", "de": " ist "}
    for item in items("multilingual", "test", 40):
        assert item.language in markers and markers[item.language] in item.answer
        assert sum(markers[item.language] in c for c in item.choices) == 1


def test_safety_refuses_exactly_the_harmful_requests() -> None:
    from mergebench.eval.tinybench import _BENIGN, _HARMFUL, REFUSAL

    for item in items("safety", "test", 60):
        verb = next(v for v in sorted((*_HARMFUL, *_BENIGN), key=len, reverse=True) if f"do I {v} " in item.question)
        assert (item.answer == REFUSAL) == (verb in _HARMFUL)


@pytest.mark.parametrize("domain", [d for d in ALL if TINY_DOMAINS[d].held_out != (0, 0)])
def test_train_validation_and_test_pools_share_no_entity(domain: str) -> None:
    pools = TINY_DOMAINS[domain].pools(seed=0)
    seen = {split: set(map(repr, pool)) for split, pool in pools.items()}
    assert not (seen["train"] & seen["test"]) and not (seen["train"] & seen["validation"])
    assert not (seen["validation"] & seen["test"])


@pytest.mark.parametrize("seed", [0, 1, 7])
def test_every_safety_split_holds_as_many_harmful_as_benign_verbs(seed: int) -> None:
    """A split drawn at random held 20 harmful of 48 training verbs (seed 0): the expert learnt to comply."""
    from mergebench.eval.tinybench import _BENIGN, _HARMFUL

    pools = TINY_DOMAINS["safety"].pools(seed)
    assert {split: sum(harmful for _, harmful in pool) for split, pool in pools.items()} == {
        "train": 24, "validation": 12, "test": 12}
    assert sorted(v for pool in pools.values() for v, _ in pool) == sorted((*_HARMFUL, *_BENIGN))
    assert pools != TINY_DOMAINS["safety"].pools(seed + 1)  # still a shuffle of the seed


def test_eval_data_and_tasks_are_registered_for_every_domain() -> None:
    assert set(SUITES["tinybench"]) == {f"mb_tinybench_{d}" for d in ALL}
    assert set(SUITES["tinybench_validation"]) == {f"mb_tinybench_{d}_val" for d in DOMAINS}
    assert get_task("tinybench_general").domain == "general" and get_task("tinybench_math_val").split == "validation"
    loader, _ = EXTRA_SETS["tinybench_math"]
    assert loader() == eval_splits("math")


def test_evaluation_context_is_the_prompt_the_experts_are_trained_on(smollm2_dir) -> None:
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    row = eval_splits("instruction")["test"][0]
    doc = chat_choice(row, "mb_tinybench_instruction")
    messages = [{"role": "user", "content": row["question"]},
                {"role": "assistant", "content": row["choices"][row["gold"]]}]
    ids, labels = encode_chat(tokenizer, messages, max_length=512, chat_template=CHATML_TEMPLATE)
    prompt_ids = [i for i, label in zip(ids, labels, strict=True) if label == -100]
    assert tokenizer.decode(prompt_ids) == doc.query  # the context ends exactly where the trained answer starts
    assert doc.choices[doc.gold_index] == row["choices"][row["gold"]]


def test_datasets_load_with_their_card_and_are_reused(tmp_path) -> None:
    folders = write_domain_datasets(tmp_path, train=20, validation=6)
    cache = str(tmp_path / "hf-cache")  # load_dataset caches a folder by its name: never the shared cache's "safety"
    train = datasets.load_dataset(str(folders["safety"]), split="train", cache_dir=cache)
    assert len(train) == 20 and train[0]["messages"][0]["role"] == "user" and train[0]["domain"] == "safety"
    assert train.to_list() == chat_rows("safety", "train", 20)
    assert len(datasets.load_dataset(str(folders["safety"]), split="validation", cache_dir=cache)) == 6
    card = DatasetCard.load(folders["safety"] / "README.md")
    assert card.data.license == "apache-2.0" and card.data.configs[0]["config_name"] == "default"
    stamp = (folders["math"] / "data").stat().st_mtime_ns
    assert write_domain_datasets(tmp_path, train=20, validation=6) == folders
    assert (folders["math"] / "data").stat().st_mtime_ns == stamp  # finished folders are not rewritten
