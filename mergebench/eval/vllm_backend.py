"""The vLLM backend: a lighteval model class of MergeBench's own that calls the vLLM Python API.

Why not lighteval's ``[vllm]`` extra: it pins vLLM 0.10.x, which does not install beside this stack;
vLLM 0.33 pins its own CUDA torch and ``transformers<5.21``, so it lives in a separate GPU environment
(``requirements-gpu.txt``). This module is imported only when ``--backend vllm`` is chosen, and talks to
vLLM only through ``vllm.LLM``, ``vllm.SamplingParams`` and the ``RequestOutput`` objects they return —
the boundary the unit tests fake.

Prompts go through lighteval's ``PromptManager`` with the tokenizer vLLM loaded, i.e. exactly the chat
template path of the transformers backend (generative tasks) or plain text (log-likelihood tasks).
Generation: one ``LLM.generate`` call per (generation size, n) group, n samples per prompt via
``SamplingParams(n=...)``; prompts are sent as token ids tokenized like ``mergebench.prompt.encode_chat``
(no extra special tokens after a chat template). Log-likelihood: each (context, continuation) is sent as token ids with
``max_tokens=1, prompt_logprobs=1``; the continuation's log-probability is the sum over its tokens, and it
is the greedy continuation when every one of its tokens has rank 1.
"""

from __future__ import annotations

import logging
from collections import defaultdict
from pathlib import Path
from typing import Any

from mergebench.errors import EvaluationError
from mergebench.eval.tasks import TaskSpec

logger = logging.getLogger(__name__)


class _NoCache:
    """lighteval's pipeline registers tasks with the model's cache; vLLM runs are not cached."""

    def _init_registry(self, registry: Any) -> None:
        return


def _import_vllm() -> Any:
    try:
        import vllm
    except ImportError as e:
        raise EvaluationError("The vLLM backend needs vllm, which is not installed in this environment.",
                              hint="Install the GPU environment: pip install -r requirements-gpu.txt (see its header)."
                              ) from e
    return vllm


def _model_class() -> type:
    from lighteval.models.abstract_model import LightevalModel, ModelConfig
    from lighteval.models.model_output import ModelResponse
    from lighteval.tasks.prompt_manager import PromptManager

    class VLLMModel(LightevalModel):
        """lighteval model over ``vllm.LLM`` (GPU)."""

        def __init__(self, model: str, *, tokenizer: str | None = None, dtype: str = "bfloat16", seed: int = 1234,
                     gpu_memory_utilization: float = 0.9, max_model_len: int | None = None,
                     tensor_parallel_size: int = 1, revision: str | None = None) -> None:
            vllm = _import_vllm()
            self._vllm = vllm
            kwargs: dict[str, Any] = {"max_model_len": max_model_len} if max_model_len else {}
            if revision:  # the pinned commit, for the weights and (when it is the model's) the tokenizer
                kwargs.update(revision=revision, tokenizer_revision=None if tokenizer else revision)
            self.llm = vllm.LLM(model=model, tokenizer=tokenizer or model, dtype=dtype, seed=seed,
                                gpu_memory_utilization=gpu_memory_utilization,
                                tensor_parallel_size=tensor_parallel_size, **kwargs)
            self._tokenizer = self.llm.get_tokenizer()
            if not getattr(self._tokenizer, "chat_template", None):
                from mergebench.prompt import CHATML_TEMPLATE

                self._tokenizer.chat_template = CHATML_TEMPLATE  # as training does for template-less bases
            self.config = ModelConfig(model_name=model)
            self._cache = _NoCache()
            self.use_chat_template = True
            self.prompt_manager = PromptManager(use_chat_template=True, tokenizer=self._tokenizer)
            self._sampling: dict[str, Any] = {"temperature": 0.0}
            self._max_length = int(max_model_len or getattr(self._tokenizer, "model_max_length", 4096) or 4096)
            self.seed = seed

        @property
        def tokenizer(self) -> Any:
            return self._tokenizer

        @property
        def add_special_tokens(self) -> bool:
            return not self.use_chat_template  # chat templates carry their own special tokens

        @property
        def max_length(self) -> int:
            return self._max_length

        def configure(self, spec: TaskSpec) -> None:
            chat = spec.uses_chat_template and getattr(self._tokenizer, "chat_template", None) is not None
            self.use_chat_template = chat
            self.prompt_manager.use_chat_template = chat
            self._sampling = {"temperature": spec.temperature, **({"top_p": spec.top_p} if spec.top_p else {})}

        def greedy_until(self, docs: list) -> list:
            groups: dict[tuple, list[int]] = defaultdict(list)
            for i, doc in enumerate(docs):
                groups[(doc.generation_size, doc.num_samples, tuple(doc.stop_sequences or ()))].append(i)
            responses: list = [None] * len(docs)
            for (size, n, stop), indices in groups.items():
                params = self._vllm.SamplingParams(n=n, max_tokens=size or 256, seed=self.seed,
                                                   stop=None if self.use_chat_template else list(stop) or None,
                                                   **self._sampling)
                prompts = [{"prompt_token_ids": self.tok_encode(self.prompt_manager.prepare_prompt(docs[i]))}
                           for i in indices]  # token ids: vLLM would add a second BOS to a rendered template
                for i, out in zip(indices, self.llm.generate(prompts, params, use_tqdm=False), strict=True):
                    responses[i] = ModelResponse(text=[c.text for c in out.outputs],
                                                 output_tokens=[list(c.token_ids) for c in out.outputs],
                                                 input_tokens=list(out.prompt_token_ids or []))
            return responses

        def loglikelihood(self, docs: list) -> list:
            requests, owners = [], []
            for i, doc in enumerate(docs):
                context = self.prompt_manager.prepare_prompt(doc)
                contexts, continuations = self.tok_encode_pair(context, doc.choices, pairwise=False)
                for ctx, cont in zip(contexts, continuations, strict=True):
                    requests.append((list(ctx), list(cont)))
                    owners.append(i)
            params = self._vllm.SamplingParams(max_tokens=1, prompt_logprobs=1, temperature=0.0)
            outputs = self.llm.generate([{"prompt_token_ids": c + t} for c, t in requests], params, use_tqdm=False)
            per_doc: dict[int, list[tuple[float, bool, list[int]]]] = defaultdict(list)
            for (ctx, cont), owner, out in zip(requests, owners, outputs, strict=True):
                per_doc[owner].append(continuation_logprob(out.prompt_logprobs, ctx, cont))
            return [ModelResponse(logprobs=[lp for lp, _, _ in per_doc[i]],
                                  argmax_logits_eq_gold=[greedy for _, greedy, _ in per_doc[i]],
                                  output_tokens=[toks for _, _, toks in per_doc[i]]) for i in range(len(docs))]

        def loglikelihood_rolling(self, docs: list) -> list:
            raise EvaluationError("Perplexity tasks are not supported by the vLLM backend.",
                                  hint="Use --backend transformers for them.")

    return VLLMModel


def continuation_logprob(prompt_logprobs: list, context: list[int], continuation: list[int]
                         ) -> tuple[float, bool, list[int]]:
    """(sum of the continuation tokens' log-probs, all of them greedy?, the tokens) from vLLM's
    ``prompt_logprobs``: one ``{token_id: Logprob(logprob, rank, ...)}`` per prompt position (``None`` first)."""
    total, greedy = 0.0, True
    for offset, token in enumerate(continuation):
        entry = prompt_logprobs[len(context) + offset]
        info = entry[token]
        total += float(info.logprob)
        greedy = greedy and getattr(info, "rank", 1) == 1
    return total, greedy, list(continuation)


def load_vllm_model(model: Any, *, tokenizer: Any = None, dtype: str = "bfloat16", **kwargs: Any) -> Any:
    """A lighteval model over vLLM for a folder or Hub id (in-memory models must be saved first)."""
    if not isinstance(model, (str, Path)):
        raise EvaluationError("The vLLM backend loads models from a folder or the Hub, not from memory.",
                              hint="save_pretrained() the model first, or use --backend transformers.")
    if tokenizer is not None and not isinstance(tokenizer, (str, Path)):
        raise EvaluationError("The vLLM backend takes a tokenizer path, not a tokenizer object.")
    dtype = "bfloat16" if dtype == "float32" else dtype  # fp32 is the CPU default, not a GPU one
    return _model_class()(str(model), tokenizer=str(tokenizer) if tokenizer else None, dtype=dtype, **kwargs)
