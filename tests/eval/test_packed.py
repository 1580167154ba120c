"""Prefix-shared log-likelihoods (``mergebench.eval.packed``) equal one sequence at a time, and lighteval's own path."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForCausalLM

from mergebench.eval import packed
from mergebench.eval.lighteval_wrapper import load_model, packed_loglikelihood
from mergebench.eval.prompts import chat_choice
from mergebench.eval.tasks import get_task
from mergebench.eval.tinybench import eval_rows
from mergebench.fixtures import Family


def _one_at_a_time(model, requests) -> list[tuple[float, bool]]:
    """The reference: each (context + continuation) in a forward pass of its own, causal mask, no sharing."""
    out = []
    with torch.inference_mode():
        for context, continuation in requests:
            logits = torch.log_softmax(model(torch.tensor([context + continuation])).logits[0].float(), dim=-1)
            rows = range(len(context) - 1, len(context) + len(continuation) - 1)
            out.append((sum(float(logits[r, t]) for r, t in zip(rows, continuation, strict=True)),
                        all(int(logits[r].argmax()) == t for r, t in zip(rows, continuation, strict=True))))
    return out


def _requests(vocab: int) -> list[tuple[list[int], list[int]]]:
    """Multiple-choice-like requests: contexts of 3-11 tokens, four continuations each, some sharing a prefix."""
    g = torch.Generator().manual_seed(0)
    requests = []
    for _ in range(8):
        context = torch.randint(0, vocab, (int(torch.randint(3, 12, (1,), generator=g)),), generator=g).tolist()
        first = torch.randint(0, vocab, (2,), generator=g).tolist()
        for i in range(4):
            tail = torch.randint(0, vocab, (int(torch.randint(0, 3, (1,), generator=g)),), generator=g).tolist()
            requests.append((context, (first if i % 2 else first[:1]) + tail))
    return requests


@pytest.mark.parametrize("arch", ["tiny_llama", "tiny_gemma2"])
def test_packed_log_likelihoods_equal_one_sequence_at_a_time(arch: str, request: pytest.FixtureRequest) -> None:
    family: Family = request.getfixturevalue(arch)
    model = AutoModelForCausalLM.from_pretrained(family.base, dtype=torch.float32).eval()
    requests = _requests(model.config.vocab_size)
    expected = _one_at_a_time(model, requests)
    for row_tokens, rows_per_pass in ((24, 3), (1000, 1)):  # many padded rows per pass; everything in one row
        got = packed.score(model, requests, row_tokens=row_tokens, rows_per_pass=rows_per_pass)
        assert [g.logprob for g in got] == pytest.approx([e[0] for e in expected], abs=1e-4)
        assert [g.greedy for g in got] == [e[1] for e in expected]


def test_pack_computes_each_distinct_prefix_once() -> None:
    requests = [([1, 2, 3], [4, 5]), ([1, 2, 3], [4, 6]), ([1, 2, 3], [7]), ([1, 9], [4])]
    rows = packed.pack(requests, row_tokens=100)
    # prefixes: 1, 12, 123, 1234, 12345, 12346, 1237, 19, 194 → 9 nodes instead of 5 + 5 + 4 + 3 = 17 tokens
    assert len(rows) == 1 and len(rows[0].tokens) == 9
    assert sorted(t[0] for t in rows[0].targets) == [0, 0, 1, 1, 2, 3]  # a target per continuation token
    # a full row closes: 12345 + 6 fill six nodes; the next row starts again from the root (1237 + 94)
    assert [len(r.tokens) for r in packed.pack(requests, row_tokens=6)] == [6, 6]


def test_a_model_without_4d_masks_is_not_packed() -> None:
    class Plain(torch.nn.Module):
        def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
            return input_ids

    assert not packed.supports(Plain())
    with pytest.raises(TypeError, match="does not take all of attention_mask, position_ids, logits_to_keep"):
        packed.score(Plain(), [([1], [2])])


def test_lighteval_responses_are_the_same_with_prefix_sharing(smollm2_dir, tmp_path) -> None:
    """The real Tiny prompts through lighteval's tokenisation: packed log-probabilities and greedy flags equal
    lighteval's own per-sequence path (its ``TransformersModel._loglikelihood_tokens``)."""
    model = load_model(smollm2_dir, cache_dir=tmp_path / "cache")
    spec = get_task("tinybench_math")
    model.configure(spec)
    docs = [chat_choice(row, spec.name) for domain in ("math", "safety", "coding")
            for row in eval_rows(domain, "test", 4)]
    ours = packed_loglikelihood(model, docs)
    theirs = type(model).__mro__[1]._loglikelihood_tokens(model, docs)  # lighteval's TransformersModel
    assert ours is not None and len(ours) == len(theirs) == len(docs)
    for a, b in zip(ours, theirs, strict=True):
        assert a.logprobs == pytest.approx(b.logprobs, abs=1e-3)
        assert list(a.argmax_logits_eq_gold) == [bool(x) for x in b.argmax_logits_eq_gold]
        assert [list(t) for t in a.output_tokens] == [[int(x) for x in t if x >= 0] for t in b.output_tokens]
