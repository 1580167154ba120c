"""The one prompt format of MergeBench: the tokenizer's chat template, loss on assistant responses only.

Training, validation statistics (Gram, Fisher, trained masks) and evaluation all call :func:`encode_chat`,
so a model is always trained and measured on the same format (the reference trained with an Alpaca prompt
and evaluated without a template; benchmark-spec §2).

Rule: the conversation is rendered with the chat template (``tokenize=False``) and tokenized once with
``add_special_tokens=False`` (templates insert their own BOS). The label of a token is its id when the
token starts inside an assistant turn's *generated* span, else ``-100``. The generated span of assistant
message j is the text between ``render(messages[:j], add_generation_prompt=True)`` and
``render(messages[:j+1])``: the response plus the template's end-of-turn marker (``<|im_end|>``,
``<|eot_id|>``, ``<end_of_turn>``), so a model learns to stop. Sequences longer than ``max_length`` are
cut at the end.

>>> from mergebench.fixtures.tokenizer import build_tokenizer            # doctest: +SKIP
>>> ids, labels = encode_chat(build_tokenizer(), [{"role": "user", "content": "Hi"},
...                           {"role": "assistant", "content": "Hello"}], max_length=64)  # doctest: +SKIP
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from mergebench.errors import ConfigError, DataError

IGNORE_INDEX = -100
PROMPT_FORMAT_VERSION = 1
"""Bumped whenever :func:`encode_chat` changes its output; part of every statistics cache key."""

CHATML_TEMPLATE = (
    "{% for message in messages %}"
    "{{ '<|im_start|>' + message['role'] + '\n' + message['content'] + '<|im_end|>' + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}"
)
"""A template for tokenizers that ship none (pass it as ``chat_template=``); ChatML, as SmolLM2/Qwen use."""

Message = Mapping[str, str]


def chatml_prompt(user: str) -> str:
    """The ChatML text of a one-turn conversation up to the assistant's answer (:data:`CHATML_TEMPLATE`).

    For tasks that score fixed answers by log-likelihood on a model whose tokenizer uses this template
    (MergeBench-Tiny): the context is exactly what :func:`encode_chat` trained the model on.
    """
    import jinja2

    return jinja2.Template(CHATML_TEMPLATE).render(messages=[{"role": "user", "content": user}],
                                                   add_generation_prompt=True)


def _render(tokenizer: Any, messages: Sequence[Message], template: str | None, *, generation_prompt: bool) -> str:
    return tokenizer.apply_chat_template(list(messages), tokenize=False, add_generation_prompt=generation_prompt,
                                         chat_template=template)


def response_spans(tokenizer: Any, messages: Sequence[Message], *, chat_template: str | None = None
                   ) -> tuple[str, list[tuple[int, int]]]:
    """The rendered conversation and the character spans ``[start, end)`` of every assistant turn."""
    template = chat_template or getattr(tokenizer, "chat_template", None)
    if not template:
        raise ConfigError(f"Tokenizer '{getattr(tokenizer, 'name_or_path', tokenizer)}' has no chat template.",
                          hint="Pass chat_template=mergebench.prompt.CHATML_TEMPLATE (or the family's template).")
    for i, message in enumerate(messages):
        if not isinstance(message, Mapping) or "role" not in message or "content" not in message:
            raise DataError(f"Message {i} is not a {{'role', 'content'}} mapping: {message!r}.", source="messages")
    text = _render(tokenizer, messages, template, generation_prompt=False)
    spans = []
    for j, message in enumerate(messages):
        if message["role"] != "assistant":
            continue
        prefix = _render(tokenizer, messages[:j], template, generation_prompt=True)
        start, end = len(prefix), len(_render(tokenizer, messages[: j + 1], template, generation_prompt=False))
        if not text.startswith(prefix) or end > len(text) or end < start:
            raise DataError("The chat template does not render conversations prefix-consistently, so the "
                            f"assistant span of message {j} cannot be located.", source="messages",
                            hint="Use a template whose render of the first turns is a prefix of the full render.")
        spans.append((start, end))
    return text, spans


def encode_chat(tokenizer: Any, messages: Sequence[Message], *, max_length: int,
                chat_template: str | None = None) -> tuple[list[int], list[int]]:
    """Token ids and labels of one conversation (labels ``-100`` except on assistant responses).

    Args:
        tokenizer: a fast ``transformers`` tokenizer (character offsets are needed).
        messages: ``[{"role": "user" | "assistant" | "system", "content": str}, ...]``.
        max_length: keep at most this many tokens (the end is cut).
        chat_template: overrides the tokenizer's template (e.g. :data:`CHATML_TEMPLATE` for a base model).

    Returns:
        ``(input_ids, labels)``, two lists of the same length ≤ ``max_length``.

    Raises:
        ConfigError: no chat template. DataError: a malformed message or a template that is not prefix-consistent.
    """
    if max_length < 1:
        raise ConfigError(f"max_length must be ≥ 1, got {max_length}.")
    text, spans = response_spans(tokenizer, messages, chat_template=chat_template)
    encoded = tokenizer(text, add_special_tokens=False, return_offsets_mapping=True)
    ids: list[int] = list(encoded["input_ids"])[:max_length]
    offsets = encoded["offset_mapping"][: len(ids)]
    labels = [IGNORE_INDEX] * len(ids)
    for index, (token_start, token_end) in enumerate(offsets):
        if token_end > token_start and any(start <= token_start < end for start, end in spans):
            labels[index] = ids[index]
    return ids, labels
