"""A lighteval model whose answers are a function of the document: drives the real pipeline, metrics and
sandbox without loading a network (HumanEval canonical solutions, empty or garbage output, crashes)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from lighteval.models.abstract_model import LightevalModel, ModelConfig
from lighteval.models.model_output import ModelResponse


class _NoCache:
    def _init_registry(self, registry: Any) -> None:
        return


class ScriptedModel(LightevalModel):
    """``answer(doc) -> str`` for generative tasks; log-likelihoods favour the shortest choice."""

    def __init__(self, answer: Callable[[Any], str], name: str = "scripted") -> None:
        self.answer = answer
        self.config = ModelConfig(model_name=name)
        self._cache = _NoCache()
        self.configured: list[str] = []

    @property
    def tokenizer(self) -> Any:
        return None

    @property
    def add_special_tokens(self) -> bool:
        return False

    @property
    def max_length(self) -> int:
        return 2048

    def configure(self, spec: Any) -> None:
        self.configured.append(spec.name)

    def greedy_until(self, docs: list) -> list[ModelResponse]:
        return [ModelResponse(text=[self.answer(d)]) for d in docs]

    def loglikelihood(self, docs: list) -> list[ModelResponse]:
        return [ModelResponse(logprobs=[-float(len(c)) for c in d.choices],
                              argmax_logits_eq_gold=[False] * len(d.choices),
                              output_tokens=[[0] * len(c) for c in d.choices]) for d in docs]

    def loglikelihood_rolling(self, docs: list) -> list[ModelResponse]:
        raise NotImplementedError
