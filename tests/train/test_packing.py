"""The loss mask TRL trains on, read from its own packed batches, is exactly the assistant responses.

Independent of :func:`mergebench.prompt.encode_chat`: each packed conversation is decoded back to text, matched
to its row, and the text of its labelled tokens must equal the row's assistant contents, each followed by the
template's end of turn (``<|im_end|>\\n``) — nothing of the system or user turns, nothing missing.
"""

from __future__ import annotations

import itertools
from pathlib import Path

from mergebench.fixtures import validation_rows
from mergebench.prompt import IGNORE_INDEX
from mergebench.train import load_train_config
from mergebench.train.data import load_split, resolve_sources
from mergebench.train.trainer import build_trainer, resolve_base
from tests.train._data import write_domain_folder

MULTI_TURN = [{"id": f"multi-{i}", "source": "tests", "language": "en", "domain": "math", "messages": [
    {"role": "system", "content": "You are terse."},
    {"role": "user", "content": f"What is {i} + {i}?"}, {"role": "assistant", "content": f"{2 * i}"},
    {"role": "user", "content": "And doubled?"}, {"role": "assistant", "content": f"It is {4 * i}."}]}
    for i in range(6)]


def _runs(ids: list[int], labels: list[int]) -> list[list[int]]:
    runs: list[list[int]] = []
    for position, (token, label) in enumerate(zip(ids, labels, strict=True)):
        if label == IGNORE_INDEX:
            continue
        assert label == token  # labels are the ids themselves; the model shifts them
        if runs and labels[position - 1] != IGNORE_INDEX:
            runs[-1].append(token)
        else:
            runs.append([token])
    return runs


def test_packed_batches_train_on_exactly_the_responses(tiny_llama, tmp_path: Path) -> None:
    rows = validation_rows("math", 24) + MULTI_TURN
    folder = write_domain_folder(tmp_path / "math", "math", rows=rows, validation=1)
    config = load_train_config("tiny", max_length=256, per_device_batch_size=3, effective_batch_size=3,
                               max_rows_per_domain=None)
    sources = resolve_sources("math", {"math": folder})
    trainer, stats = build_trainer(resolve_base(tiny_llama.base), sources, {"math": load_split(sources["math"])},
                                   config, accumulation=1, work_dir=tmp_path / "work", progress=False)
    tok = trainer.processing_class
    by_text = {tok.apply_chat_template(r["messages"], tokenize=False): r for r in rows}
    seen, packed_rows, tokens, response_tokens = [], 0, 0, 0
    for batch in trainer.get_train_dataloader():
        assert "attention_mask" not in batch  # padding-free: attention follows the position ids
        ids, labels, positions = (batch[k][0].tolist() for k in ("input_ids", "labels", "position_ids"))
        starts = [i for i, p in enumerate(positions) if p == 0] + [len(ids)]
        packed_rows += len(starts) > 2
        tokens += len(ids)
        response_tokens += sum(label != IGNORE_INDEX for label in labels)
        for start, end in itertools.pairwise(starts):
            assert positions[start:end] == list(range(end - start))  # positions restart per conversation
            row = by_text[tok.decode(ids[start:end])]
            seen.append(row["id"])
            responses = [tok.decode(run) for run in _runs(ids[start:end], labels[start:end])]
            assert responses == [m["content"] + "<|im_end|>\n" for m in row["messages"] if m["role"] == "assistant"]
    assert sorted(seen) == sorted(r["id"] for r in rows[:-1])  # one epoch: every row exactly once
    assert packed_rows > 0  # several conversations did share a packed sequence
    assert (stats["math"].rows, stats["math"].tokens, stats["math"].response_tokens) == \
        (len(rows) - 1, tokens, response_tokens)
