"""Metrics of the MergeBench tasks, by name, as lighteval ``Metric`` objects.

lighteval's own metrics are reused where they exist: log-likelihood accuracy (``acc``, and ``acc_norm``
normalised by the continuation's character length), IFEval and IFBench (prompt/instruction-level,
strict/loose), extractive math match (``extractive_match``: sympy-equivalent numbers or LaTeX), exact
match and token F1 with HELM's normaliser (``qem``, ``f1``), corpus BLEU/chrF (sacrebleu). Custom ones:

* ``pass@1`` — code correctness with the **unbiased pass@k estimator** of Chen et al. (2021),
  ``pass@k = 1 - C(n-c, k) / C(n, k)`` per problem (n samples, c correct), averaged over problems;
  every sample runs in :mod:`mergebench.eval.sandbox`, all samples of a task in parallel, and the task's
  side information records the weakest ``isolation`` any sample ran under (``bwrap`` or ``none``);
* ``refusal`` / ``compliance`` — the share of responses judged a refusal (harmful prompts: higher is
  better) or a compliance (benign prompts), by the judge of :mod:`mergebench.eval.refusal`;
* ``gsm8k`` — lighteval's ``extractive_match`` plus lm-evaluation-harness' two ``gsm8k_cot`` filters, exactly
  as its task file sets them (:func:`gsm8k_cot_match`): ``strict_match`` (the first ``The answer is N.``) and
  ``flexible_match`` (the last number), after its ``Q:`` stop sequence, with its exact-match normalisation.

Metric objects are built per evaluation (:func:`build_metrics`) because the custom ones collect
side information (sandbox statuses, judge labels) that the runner writes into the results.
"""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from math import comb
from typing import Any

import numpy as np

from mergebench.errors import EvaluationError
from mergebench.eval.refusal import Judge, RuleBasedJudge
from mergebench.eval.sandbox import SandboxConfig, run_programs


def pass_at_k(n: int, c: int, k: int) -> float:
    """Unbiased estimator of pass@k from ``n`` samples of which ``c`` pass (Chen et al., 2021, eq. 1).

    >>> pass_at_k(10, 3, 1)
    0.3
    >>> round(pass_at_k(10, 3, 5), 4)
    0.9167
    """
    if k > n:
        raise ValueError(f"pass@{k} needs at least {k} samples, got {n}")
    if n - c < k:
        return 1.0
    return 1.0 - comb(n - c, k) / comb(n, k)


_FENCE = re.compile(r"```[ \t]*(?:python|py|Python)?[ \t]*\n(.*?)(?:```|\Z)", re.DOTALL)


def extract_code(text: str, entry_point: str = "") -> str:
    """The code in a model response: the fenced block defining ``entry_point`` (else the first block; an
    unclosed fence runs to the end), or the whole text when there is no fence."""
    blocks = _FENCE.findall(text)
    if not blocks:
        return text
    for block in blocks:
        if entry_point and re.search(rf"^\s*def\s+{re.escape(entry_point)}\s*\(", block, re.MULTILINE):
            return block
    return blocks[0]


def build_program(specific: dict, completion: str) -> str:
    """The program that tests one completion, HumanEval- or MBPP-style.

    HumanEval: a completion that (re)defines the entry point is appended after the prompt (so helpers
    defined in the prompt stay available); a body-only completion continues the prompt, as the
    canonical solutions do. MBPP: imports + code + the test code.
    """
    code = extract_code(completion, specific.get("entry_point", ""))
    if specific.get("kind") == "mbpp":
        imports = "\n".join(specific.get("imports") or [])
        return f"{imports}\n{code}\n\n{specific['test']}\n"
    prompt, entry = specific["prompt"], specific["entry_point"]
    defines = re.search(rf"^\s*def\s+{re.escape(entry)}\s*\(", code, re.MULTILINE) is not None
    body = f"{prompt}\n{code}" if defines else prompt + code
    return f"{body}\n\n{specific['test']}\n\ncheck({entry})\n"


def _no_deepcopy(cls):
    """lighteval deep-copies task configs; the custom computations must stay shared to report back."""
    cls.__deepcopy__ = lambda self, memo: self
    return cls


def _lighteval() -> tuple[Any, Any]:
    """lighteval's metric base classes, imported lazily (typed ``Any`` so that they can be subclassed)."""
    from lighteval.metrics.metrics_sample import SampleLevelComputation, SamplingMetric

    return SampleLevelComputation, SamplingMetric


@dataclass
class SideInfo:
    """What a custom metric saw, for the results file (statuses of sandbox runs, judge labels)."""

    counts: Counter = field(default_factory=Counter)
    examples: list[dict] = field(default_factory=list)
    isolation: Counter = field(default_factory=Counter)  # code tasks: samples per isolation level

    def as_dict(self) -> dict[str, Any]:
        info: dict[str, Any] = {"counts": dict(self.counts), "examples": self.examples[:5]}
        if self.isolation:  # one sample without the kernel layer makes the whole task "none"
            info["isolation"] = "none" if self.isolation["none"] else "bwrap"
        return info


def _code_metric(n: int, k: int, sandbox: SandboxConfig, info: SideInfo):
    SampleLevelComputation: Any
    SamplingMetric: Any
    SampleLevelComputation, SamplingMetric = _lighteval()

    @_no_deepcopy
    class CodePassAtK(SamplingMetric, SampleLevelComputation):
        """pass@k over ``n`` sandboxed samples per problem (batched: all programs of a task at once)."""

        def __init__(self) -> None:
            self.n, self.k = n, k

        def num_samples(self) -> int:
            return self.n

        def compute(self, responses: Sequence, docs: Sequence, **kwargs) -> list[float]:
            programs, owners = [], []
            for i, (doc, response) in enumerate(zip(docs, responses, strict=True)):
                texts = list(response.final_text)[: self.n] or [""]
                programs += [build_program(doc.specific, t) for t in texts]
                owners += [i] * len(texts)
            results = run_programs(programs, sandbox)
            passed: Counter[int] = Counter()
            for owner, result in zip(owners, results, strict=True):
                info.counts[result.status] += 1
                info.isolation[result.isolation] += 1
                passed[owner] += result.passed
                if result.status in ("blocked", "timeout", "memory", "error") and len(info.examples) < 5:
                    info.examples.append({"doc": docs[owner].id, "status": result.status, "detail": result.detail})
            totals = Counter(owners)
            return [pass_at_k(totals[i], passed[i], min(self.k, totals[i])) for i in range(len(docs))]

    return CodePassAtK()


def _judge_metric(judge: Judge, want: str, info: SideInfo):
    SampleLevelComputation: Any = _lighteval()[0]

    @_no_deepcopy
    class JudgedRate(SampleLevelComputation):
        """1 when the judge's label is ``want`` (refusal on harmful prompts, compliance on benign ones)."""

        def compute(self, responses: Sequence, docs: Sequence, **kwargs) -> list[float]:
            texts = [(r.final_text or [""])[0] for r in responses]
            labels = judge.labels([d.query for d in docs], texts)
            info.counts.update(labels)
            return [float(label == want) for label in labels]

    return JudgedRate()


# lm-evaluation-harness lm_eval/tasks/gsm8k/gsm8k-cot.yaml (gsm8k_cot): its two regex filters, its stop sequence
# and its exact_match settings (ignore_case, regexes_to_ignore), reproduced in :func:`gsm8k_cot_match`.
GSM8K_STRICT = re.compile(r"The answer is (\-?[0-9\.\,]+).")
GSM8K_FLEXIBLE = re.compile(r"(-?[$0-9.,]{2,})|(-?[0-9]+)")
GSM8K_IGNORE = (",", r"\$", r"(?s).*#### ", r"\.$")
GSM8K_STOP = "Q:"
GSM8K_INVALID = "[invalid]"


def _regex_filter(regex: re.Pattern[str], text: str, group_select: int) -> str:
    """lm-evaluation-harness' ``RegexFilter``: the ``group_select``-th match (its first non-empty group), stripped;
    ``[invalid]`` when nothing matches."""
    matches = regex.findall(text)
    if not matches:
        return GSM8K_INVALID
    match = matches[group_select]
    if isinstance(match, tuple):
        match = next((m for m in match if m), GSM8K_INVALID)
    return match.strip()


def _exact_match_normalise(text: str) -> str:
    for pattern in GSM8K_IGNORE:
        text = re.sub(pattern, "", text)
    return text.lower()


def gsm8k_cot_match(response: str, gold: str) -> dict[str, int]:
    """``strict_match`` and ``flexible_match`` of one GSM8K chain-of-thought response, as lm-evaluation-harness'
    ``gsm8k_cot`` scores it: the response is cut at the first ``Q:`` (its stop sequence), then ``strict`` takes
    the first ``The answer is N.``, ``flexible`` the last number; each is compared with the gold answer after
    removing commas, ``$``, a ``#### `` prefix and a final period, ignoring case.

    >>> gsm8k_cot_match("5 + 4 = 9. The answer is 9.", "9")
    {'strict_match': 1, 'flexible_match': 1}
    >>> gsm8k_cot_match("So she has $1,234 left.", "1234")
    {'strict_match': 0, 'flexible_match': 1}
    """
    text = response.split(GSM8K_STOP)[0]
    gold = _exact_match_normalise(gold)
    strict = _exact_match_normalise(_regex_filter(GSM8K_STRICT, text, 0))
    flexible = _exact_match_normalise(_regex_filter(GSM8K_FLEXIBLE, text, -1))
    return {"strict_match": int(strict == gold), "flexible_match": int(flexible == gold)}


def _gsm8k_filters():
    SampleLevelComputation, _ = _lighteval()

    class Gsm8kFilters(SampleLevelComputation):
        """lm-evaluation-harness gsm8k_cot: strict ``The answer is N.`` and flexible last-number match."""

        def compute(self, doc, model_response, **kwargs) -> dict[str, int]:
            return gsm8k_cot_match(model_response.final_text[0], doc.get_golds()[0])

    return Gsm8kFilters()


def _ifbench():
    import importlib.util

    missing = [m for m in ("spacy", "syllapy") if importlib.util.find_spec(m) is None]
    if missing:
        raise EvaluationError(f"IFBench scoring needs {', '.join(missing)} (and spaCy's en_core_web_sm), which are "
                              "not installed.", task="mb_ifbench",
                              hint="pip install spacy syllapy && python -m spacy download en_core_web_sm "
                                   "(needs network), or skip mb_ifbench.")
    from lighteval.tasks.tasks.ifbench.main import ifbench_metrics

    return ifbench_metrics


def _builders() -> dict[str, Callable[..., Any]]:
    """name → builder(ctx). Imports lighteval lazily: only an evaluation pays for it."""
    from lighteval.metrics.dynamic_metrics import MultilingualExtractiveMatchMetric
    from lighteval.metrics.metrics import Metrics as _Metrics
    from lighteval.metrics.metrics_sample import ExactMatches, F1_score, LoglikelihoodAcc
    from lighteval.metrics.normalizations import LogProbCharNorm, helm_normalizer
    from lighteval.metrics.utils.extractive_match_utils import ExprExtractionConfig, LatexExtractionConfig
    from lighteval.metrics.utils.metric_utils import SampleLevelMetric, SampleLevelMetricGrouping
    from lighteval.tasks.requests import SamplingMethod

    Metrics: Any = _Metrics  # mypy reads the members of this enum (dataclass values) as the values themselves
    gen, ll = SamplingMethod.GENERATIVE, SamplingMethod.LOGPROBS

    def sample(name: str, fn: Any, category=gen, batched: bool = False) -> SampleLevelMetric:
        return SampleLevelMetric(metric_name=name, sample_level_fn=fn, category=category, corpus_level_fn=np.mean,
                                 higher_is_better=True, batched_compute=batched)

    def ifeval(ctx: dict):
        from lighteval.tasks.tasks.ifeval.main import ifeval_metrics

        return [ifeval_metrics]

    def gsm8k(ctx: dict):
        names = ["strict_match", "flexible_match"]
        return [Metrics.expr_gold_metric.value,
                SampleLevelMetricGrouping(metric_name=names, sample_level_fn=_gsm8k_filters(), category=gen,
                                          corpus_level_fn=dict.fromkeys(names, np.mean),
                                          # lighteval annotates this dict[str, Callable]; it holds bools
                                          higher_is_better=dict.fromkeys(names, True))]  # type: ignore[arg-type]

    def math(ctx: dict):
        fn = MultilingualExtractiveMatchMetric(gold_extraction_target=(LatexExtractionConfig(),),
                                               pred_extraction_target=(ExprExtractionConfig(),
                                                                       LatexExtractionConfig(boxed_match_priority=0)),
                                               fallback_mode="first_match", precision=5)
        return [sample("extractive_match", fn)]

    return {
        "acc": lambda ctx: [Metrics.loglikelihood_acc.value],
        "acc_norm": lambda ctx: [sample("acc_norm", LoglikelihoodAcc(logprob_normalization=LogProbCharNorm()), ll)],
        "greedy_acc": lambda ctx: [Metrics.acc_golds_likelihood.value],
        "ifeval": ifeval,
        "ifbench": lambda ctx: [_ifbench()],
        "gsm8k": gsm8k,
        "math": math,
        "qem": lambda ctx: [sample("qem", ExactMatches(normalize_gold=helm_normalizer, normalize_pred=helm_normalizer,
                                                       strip_strings=True))],
        "f1": lambda ctx: [sample("f1", F1_score(normalize_gold=helm_normalizer, normalize_pred=helm_normalizer))],
        "chrf": lambda ctx: [Metrics.chrf.value],
        "bleu": lambda ctx: [Metrics.bleu.value],
        "pass@1": lambda ctx: [sample("pass@1", _code_metric(ctx["n"], 1, ctx["sandbox"], ctx["info"]),
                                      batched=True)],
        "refusal": lambda ctx: [sample("refusal_rate", _judge_metric(ctx["judge"], "refusal", ctx["info"]),
                                       batched=True)],
        "compliance": lambda ctx: [sample("compliance_rate", _judge_metric(ctx["judge"], "compliance", ctx["info"]),
                                          batched=True)],
    }


@dataclass(frozen=True)
class MetricContext:
    """Per-task inputs of the custom metrics."""

    num_samples: int = 1
    sandbox: SandboxConfig = field(default_factory=SandboxConfig)
    judge: Judge = field(default_factory=RuleBasedJudge)


def build_metrics(names: Sequence[str], context: MetricContext | None = None) -> tuple[list, SideInfo]:
    """The lighteval metrics for ``names``, and the side-information collector they report into."""
    context = context or MetricContext()
    builders = _builders()
    info = SideInfo()
    ctx = {"n": context.num_samples, "sandbox": context.sandbox, "judge": context.judge, "info": info}
    metrics = []
    for name in names:
        if name not in builders:
            raise EvaluationError(f"Unknown metric '{name}'.", hint=f"Metrics: {', '.join(builders)}.")
        metrics += builders[name](ctx)
    return metrics, info
