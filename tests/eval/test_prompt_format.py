"""Evaluation prompts are the prompt half of what training encodes (``mergebench.prompt.encode_chat``)."""

from __future__ import annotations

from transformers import AutoTokenizer

from mergebench.eval import prompts
from mergebench.eval.lighteval_wrapper import load_model
from mergebench.eval.tasks import TASKS
from mergebench.prompt import encode_chat


def test_generation_prompt_tokens_equal_the_training_prefix(tiny_llama, tmp_path):
    model = load_model(str(tiny_llama.base), cache_dir=tmp_path / "cache")
    model.configure(TASKS["mb_tiny_ifeval"])
    doc = prompts.ifeval({"prompt": "Write a haiku.", "instruction_id_list": [], "kwargs": []}, "mb_tiny_ifeval")
    rendered = model.prompt_manager.prepare_prompt(doc)
    eval_ids = model.tokenizer(rendered, add_special_tokens=model.add_special_tokens)["input_ids"]
    tokenizer = AutoTokenizer.from_pretrained(tiny_llama.base)
    train_ids, labels = encode_chat(tokenizer, [{"role": "user", "content": "Write a haiku."},
                                                {"role": "assistant", "content": "Leaves fall."}], max_length=512)
    first_label = next(i for i, label in enumerate(labels) if label != -100)
    assert eval_ids == train_ids[:first_label]
    assert model.add_special_tokens is False


def test_loglikelihood_tasks_use_plain_text(tiny_llama, tmp_path):
    model = load_model(str(tiny_llama.base), cache_dir=tmp_path / "cache")
    model.configure(TASKS["mb_tiny_mmlu_stem"])
    doc = prompts.mmlu({"question": "2 + 2?", "choices": ["3", "4"], "answer": 1}, "mb_tiny_mmlu_stem")
    assert model.prompt_manager.prepare_prompt(doc) == "2 + 2?\nA. 3\nB. 4\nAnswer:"
    assert model.add_special_tokens is True
