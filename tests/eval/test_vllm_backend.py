"""The vLLM backend with the engine faked at the API boundary (``vllm.LLM``, ``vllm.SamplingParams``)."""

from __future__ import annotations

import sys
import types
from dataclasses import dataclass, field
from typing import ClassVar

import pytest

from mergebench.errors import EvaluationError
from mergebench.eval.run import evaluate
from mergebench.eval.vllm_backend import continuation_logprob

REFUSAL = "I'm sorry, but I can't help with that."


@dataclass
class Logprob:
    logprob: float
    rank: int


@dataclass
class Completion:
    text: str
    token_ids: list[int]


@dataclass
class RequestOutput:
    prompt_token_ids: list[int]
    outputs: list[Completion] = field(default_factory=list)
    prompt_logprobs: list | None = None


def fake_logprob(token: int) -> Logprob:
    """Deterministic: token ids divisible by 3 are 'greedy' (rank 1)."""
    return Logprob(-0.25 * (token % 5) - 0.1, 1 if token % 3 == 0 else 2)


class FakeLLM:
    instances: ClassVar[list[FakeLLM]] = []

    def __init__(self, **kwargs) -> None:
        from transformers import AutoTokenizer

        self.kwargs = kwargs
        self.tokenizer = AutoTokenizer.from_pretrained(kwargs["tokenizer"])
        self.calls: list[tuple[list, dict]] = []
        FakeLLM.instances.append(self)

    def get_tokenizer(self):
        return self.tokenizer

    def generate(self, prompts, params, use_tqdm=True):
        self.calls.append((list(prompts), dict(params.kwargs)))
        if params.kwargs.get("prompt_logprobs"):
            return [RequestOutput(p["prompt_token_ids"], [Completion("", [0])],
                                  [None] + [{t: fake_logprob(t)} for t in p["prompt_token_ids"][1:]]) for p in prompts]
        n = params.kwargs.get("n", 1)
        return [RequestOutput([1, 2, 3], [Completion(REFUSAL, [5, 6]) for _ in range(n)]) for _ in prompts]


class FakeSamplingParams:
    def __init__(self, **kwargs) -> None:
        self.kwargs = kwargs


@pytest.fixture
def fake_vllm(monkeypatch):
    module = types.ModuleType("vllm")
    module.LLM, module.SamplingParams = FakeLLM, FakeSamplingParams
    FakeLLM.instances.clear()
    monkeypatch.setitem(sys.modules, "vllm", module)
    return module


def test_generation_uses_the_chat_template_and_the_task_sampling_settings(fake_vllm, tiny_llama):
    results = evaluate(str(tiny_llama.base), backend="vllm", tasks=["mb_tiny_harmbench", "mb_humaneval_plus"],
                       max_samples=3, progress=False)
    llm = FakeLLM.instances[0]
    assert llm.kwargs["dtype"] == "bfloat16" and llm.kwargs["model"] == str(tiny_llama.base)
    (harm_prompts, harm_params), (_, code_params) = llm.calls
    texts = [llm.tokenizer.decode(p["prompt_token_ids"]) for p in harm_prompts]
    assert all(t.startswith("<|im_start|>user\n") and t.endswith("<|im_start|>assistant\n") for t in texts)
    assert harm_params == {"n": 1, "max_tokens": 48, "seed": 1234, "stop": None, "temperature": 0.0}
    assert code_params == {"n": 10, "max_tokens": 512, "seed": 1234, "stop": None, "temperature": 0.2, "top_p": 0.95}
    assert results.score("mb_tiny_harmbench") == 1.0
    code = results.tasks["mb_humaneval_plus"]
    assert (code.score, code.num_samples, sum(code.side_info["counts"].values())) == (0.0, 3, 30)


def test_loglikelihood_sums_the_continuation_tokens(fake_vllm, tiny_llama):
    results = evaluate(str(tiny_llama.base), backend="vllm", tasks=["mb_tiny_mmlu_stem"], max_samples=3,
                       progress=False)
    llm = FakeLLM.instances[0]
    (requests, params), = llm.calls
    assert params == {"max_tokens": 1, "prompt_logprobs": 1, "temperature": 0.0}
    assert len(requests) == 3 * 4  # 3 questions × 4 letter choices, sent as token ids
    assert all(len(r["prompt_token_ids"]) > 3 for r in requests)
    task = results.tasks["mb_tiny_mmlu_stem"]
    assert task.status == "ok" and task.num_samples == 3 and 0.0 <= task.score <= 1.0


def test_continuation_logprob_reads_prompt_logprobs():
    prompt_logprobs = [None, {8: fake_logprob(8)}, {9: fake_logprob(9)}, {3: fake_logprob(3)}, {4: fake_logprob(4)}]
    # 9 → -0.25*4-0.1 = -1.1 (rank 1); 3 → -0.85 (rank 1); 4 → -1.1 (rank 2)
    assert continuation_logprob(prompt_logprobs[:4], [7, 8], [9, 3]) == (pytest.approx(-1.95), True, [9, 3])
    lp = [None, {8: fake_logprob(8)}, {9: fake_logprob(9)}, {4: fake_logprob(4)}]
    assert continuation_logprob(lp, [7, 8], [9, 4]) == (pytest.approx(-2.2), False, [9, 4])


def test_without_vllm_installed_the_error_says_how_to_install(monkeypatch, tiny_llama):
    monkeypatch.setitem(sys.modules, "vllm", None)  # import vllm → ImportError
    results = None
    with pytest.raises(EvaluationError, match="needs vllm") as err:
        results = evaluate(str(tiny_llama.base), backend="vllm", tasks=["mb_tiny_mmlu_stem"], progress=False)
    assert results is None
    assert "requirements-gpu.txt" in err.value.hint
