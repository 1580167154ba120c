"""The one prompt format: chat template, loss on assistant responses only."""

from __future__ import annotations

import pytest

from mergebench.errors import ConfigError, DataError
from mergebench.fixtures.tokenizer import build_tokenizer
from mergebench.prompt import CHATML_TEMPLATE, IGNORE_INDEX, encode_chat

CONVERSATION = [
    {"role": "system", "content": "Be brief."},
    {"role": "user", "content": "Hi there"},
    {"role": "assistant", "content": "Hello you"},
    {"role": "user", "content": "2+2?"},
    {"role": "assistant", "content": "4"},
]


@pytest.fixture(scope="module")
def tokenizer():
    return build_tokenizer()


def response_text(tokenizer, labels: list[int]) -> str:
    return tokenizer.decode([label for label in labels if label != IGNORE_INDEX])


def test_labels_cover_exactly_the_assistant_turns(tokenizer) -> None:
    ids, labels = encode_chat(tokenizer, CONVERSATION, max_length=512)
    assert tokenizer.decode(ids) == tokenizer.apply_chat_template(CONVERSATION, tokenize=False)
    assert len(ids) == len(labels)
    assert all(label in (IGNORE_INDEX, i) for i, label in zip(ids, labels, strict=True))
    # response plus the end-of-turn marker (the model must learn to stop); nothing of the prompts
    assert response_text(tokenizer, labels) == "Hello you<|im_end|>\n4<|im_end|>\n"


def test_prompt_tokens_are_ignored(tokenizer) -> None:
    ids, labels = encode_chat(tokenizer, CONVERSATION[:3], max_length=512)
    first = next(i for i, label in enumerate(labels) if label != IGNORE_INDEX)
    assert tokenizer.decode(ids[:first]).endswith("<|im_start|>assistant\n")
    assert all(label == IGNORE_INDEX for label in labels[:first])


def test_truncation_keeps_the_start(tokenizer) -> None:
    full_ids, full_labels = encode_chat(tokenizer, CONVERSATION, max_length=512)
    ids, labels = encode_chat(tokenizer, CONVERSATION, max_length=10)
    assert ids == full_ids[:10] and labels == full_labels[:10]
    assert all(label == IGNORE_INDEX for label in labels)  # the responses were cut away


def test_no_template_is_a_config_error_unless_one_is_given(tokenizer) -> None:
    bare = build_tokenizer()
    bare.chat_template = None
    with pytest.raises(ConfigError, match="no chat template") as info:
        encode_chat(bare, CONVERSATION, max_length=64)
    assert "CHATML_TEMPLATE" in info.value.hint
    assert encode_chat(bare, CONVERSATION, max_length=512, chat_template=CHATML_TEMPLATE) == \
        encode_chat(tokenizer, CONVERSATION, max_length=512)


def test_malformed_messages_are_data_errors(tokenizer) -> None:
    with pytest.raises(DataError, match="Message 1"):
        encode_chat(tokenizer, [{"role": "user", "content": "x"}, {"text": "y"}], max_length=64)
