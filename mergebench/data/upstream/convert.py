"""Upstream schemas and the converters that turn their rows into the task schemas of ``mergebench-eval``.

The project's task schema of an evaluation set is the column set its prompt function reads
(:mod:`mergebench.eval.prompts`), which is the upstream schema wherever the paper's harness reads one
(IFEval, GSM8K, MATH, MMLU, EvalPlus, ...). A :class:`Schema` names the columns an upstream
(config, split) MUST have; a converter takes the rows of every part of one task and returns the task's
rows plus what it filtered. Most converters keep the schema's columns as they are; the others map a
different upstream schema onto the one the task reads (ARC in AI2's ``choices``/``answerKey`` form onto
the Okapi ``option_*`` form, HarmBench's Hub copy onto HarmBench's CSV columns, DoAnythingNow's
templates × forbidden questions onto prompts).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from mergebench.errors import DataError

LETTERS = "ABCDE"


@dataclass(frozen=True)
class Schema:
    """The columns an upstream (config, split) must have, named after the dataset that defines them."""

    name: str
    columns: tuple[str, ...]


@dataclass(frozen=True)
class PartRows:
    """The rows of one loaded part and where they came from (for error messages and conversions)."""

    repo_id: str
    config: str | None
    split: str
    rows: list[dict[str, Any]]

    @property
    def label(self) -> str:
        """``repo (config 'c', split 's')`` — how errors name a part."""
        return f"{self.repo_id} (config '{self.config or 'default'}', split '{self.split}')"


@dataclass(frozen=True)
class Converted:
    """A task's rows in its task schema and a sentence saying what was filtered (for the card)."""

    rows: list[dict[str, Any]]
    filtered: str


Convert = Callable[[Sequence[PartRows]], Converted]

NOTHING_FILTERED = "nothing: every upstream row is kept"

IFEVAL = Schema("google/IFEval", ("key", "prompt", "instruction_id_list", "kwargs"))
IFBENCH = Schema("allenai/IFBench_test", ("key", "prompt", "instruction_id_list", "kwargs"))
GSM8K = Schema("openai/gsm8k", ("question", "answer"))
HENDRYCKS_MATH = Schema("EleutherAI/hendrycks_math", ("problem", "level", "type", "solution"))
OKAPI_MMLU = Schema("alexandrainst/m_mmlu", ("id", "instruction", "option_a", "option_b", "option_c", "option_d",
                                             "answer"))
AI2_ARC = Schema("jon-tow/okapi_arc_challenge", ("id", "question", "choices", "answerKey"))
OKAPI_HELLASWAG = Schema("jon-tow/okapi_hellaswag", ("ctx_a", "ctx_b", "endings", "label"))
HUMANEVAL_PLUS = Schema("evalplus/humanevalplus", ("task_id", "prompt", "canonical_solution", "entry_point", "test"))
MBPP_PLUS = Schema("evalplus/mbppplus", ("task_id", "code", "prompt", "source_file", "test_imports", "test_list",
                                         "test"))
WILDGUARDTEST = Schema("allenai/wildguardmix", ("prompt", "adversarial", "response", "prompt_harm_label",
                                                "response_refusal_label", "response_harm_label", "subcategory"))
HARMBENCH = Schema("walledai/HarmBench", ("prompt", "category"))
XSTEST = Schema("walledai/XSTest", ("prompt", "focus", "type", "note", "label"))
ITW_JAILBREAK = Schema("TrustAIRLab/in-the-wild-jailbreak-prompts", ("platform", "source", "prompt", "jailbreak"))
FORBIDDEN_QUESTIONS = Schema("TrustAIRLab/forbidden_question_set", ("content_policy_id", "content_policy_name", "q_id",
                                                                    "question"))
MMLU = Schema("cais/mmlu", ("question", "subject", "choices", "answer"))
TRIVIAQA = Schema("mandarjoshi/trivia_qa", ("question", "question_id", "question_source", "answer"))
SQUAD_V2 = Schema("lighteval/squad_v2", ("id", "title", "context", "question", "answers"))
COQA = Schema("stanfordnlp/coqa", ("source", "story", "questions", "answers"))
PUBMEDQA = Schema("qiaojin/PubMedQA", ("pubid", "question", "context", "long_answer", "final_decision"))
WMT14 = Schema("wmt/wmt14", ("translation",))
LAMBADA = Schema("EleutherAI/lambada_openai", ("text",))
CONALA = Schema("neulab/conala", ("question_id", "intent", "rewritten_intent", "snippet"))
WILDJAILBREAK_EVAL = Schema("allenai/wildjailbreak", ("adversarial", "label", "data_type"))

#: MMLU subjects lm-evaluation-harness tags ``mmlu_stem_tasks`` (lm_eval/tasks/mmlu/default/mmlu_*.yaml).
MMLU_STEM_SUBJECTS = (
    "abstract_algebra", "anatomy", "astronomy", "college_biology", "college_chemistry", "college_computer_science",
    "college_mathematics", "college_physics", "computer_security", "conceptual_physics", "electrical_engineering",
    "elementary_mathematics", "high_school_biology", "high_school_chemistry", "high_school_computer_science",
    "high_school_mathematics", "high_school_physics", "high_school_statistics", "machine_learning",
)


def keep_columns(schema: Schema) -> Convert:
    """The converter of a schema the task reads as it is: every row of every part, the schema's columns only."""

    def convert(parts: Sequence[PartRows]) -> Converted:
        return Converted([{c: row[c] for c in schema.columns} for part in parts for row in part.rows],
                         NOTHING_FILTERED)

    convert.__name__ = f"keep_{schema.name.replace('/', '_')}"
    return convert


def mmlu_subjects(subjects: tuple[str, ...], what: str) -> Convert:
    """MMLU rows (``cais/mmlu`` ``all``) of the given subjects only; the card says how many were kept."""
    wanted = frozenset(subjects)

    def convert(parts: Sequence[PartRows]) -> Converted:
        rows = [{c: row[c] for c in MMLU.columns} for part in parts for row in part.rows if row["subject"] in wanted]
        total = sum(len(part.rows) for part in parts)
        return Converted(rows, f"kept the {len(rows)} of {total} rows whose subject is one of the {len(wanted)} "
                               f"{what} subjects")

    return convert


def _bad_row(part: PartRows, index: int, problem: str) -> DataError:
    return DataError(f"Upstream {part.label}, row {index}: {problem}", source=part.repo_id, row=index,
                     hint="The upstream schema changed: pin an earlier commit (--pins) or update the converter.")


def ai2_arc_to_okapi(parts: Sequence[PartRows]) -> Converted:
    """ARC in AI2's form (``question``, ``choices{text,label}``, ``answerKey``; labels A–E or 1–5) → the Okapi
    form the task reads (``instruction``, ``option_a``…``option_e``, ``answer`` letter)."""
    out = []
    for part in parts:
        for i, row in enumerate(part.rows):
            texts, labels = list(row["choices"]["text"]), [str(x) for x in row["choices"]["label"]]
            if not 2 <= len(texts) <= len(LETTERS) or len(texts) != len(labels):
                raise _bad_row(part, i, f"{len(texts)} choices with {len(labels)} labels; expected 2–5 of each.")
            if str(row["answerKey"]) not in labels:
                raise _bad_row(part, i, f"answerKey {row['answerKey']!r} is not one of the labels {labels}.")
            options = {f"option_{c.lower()}": (texts[j] if j < len(texts) else None) for j, c in enumerate(LETTERS)}
            out.append({"id": row["id"], "instruction": row["question"], **options,
                        "answer": LETTERS[labels.index(str(row["answerKey"]))]})
    return Converted(out, NOTHING_FILTERED)


def okapi_hellaswag(parts: Sequence[PartRows]) -> Converted:
    """Okapi HellaSwag (``ctx_a``, ``ctx_b``, ``endings``, ``label``; ``ctx`` when present) → ``ctx``, ``endings``,
    ``label`` as text; ``ctx`` is rebuilt from ``ctx_a ctx_b`` when a translation lacks it, as HellaSwag defines it."""
    out = []
    for part in parts:
        for row in part.rows:
            ctx = row.get("ctx") or f"{row['ctx_a']} {row['ctx_b']}".strip()
            out.append({"ctx_a": row["ctx_a"], "ctx_b": row["ctx_b"], "ctx": ctx, "endings": list(row["endings"]),
                        "label": str(row["label"])})
    return Converted(out, NOTHING_FILTERED)


def harmbench_behaviours(parts: Sequence[PartRows]) -> Converted:
    """``walledai/HarmBench`` (one config per functional category: ``prompt``, ``category``, ``context`` in the
    contextual config) → HarmBench's own CSV columns, which the task reads (``Behavior``, ``FunctionalCategory``,
    ``SemanticCategory``, ``ContextString``)."""
    out = [{"Behavior": row["prompt"], "FunctionalCategory": part.config or "standard",
            "SemanticCategory": row["category"], "ContextString": row.get("context") or ""}
           for part in parts for row in part.rows]
    return Converted(out, NOTHING_FILTERED)


DAN_SEED = 0


def dan_prompts(parts: Sequence[PartRows]) -> Converted:
    """DoAnythingNow (Shen et al., 2024): every forbidden question asked inside one in-the-wild jailbreak prompt.

    The paper crosses every jailbreak prompt with every question (1,405 × 390); MergeBench asks each question
    once, inside a jailbreak prompt drawn with ``numpy.random.default_rng(DAN_SEED)`` (with replacement), the
    question appended after the prompt as the paper does. The card records the draw.
    """
    templates, questions = parts  # the table lists the prompts first, then the questions
    jailbreaks = [row for row in templates.rows if row["jailbreak"]]
    if not jailbreaks:
        raise DataError(f"Upstream {templates.label} holds no row with jailbreak = true.", source=templates.repo_id)
    picks = np.random.default_rng(DAN_SEED).integers(0, len(jailbreaks), size=len(questions.rows))
    out = []
    for q, pick in zip(questions.rows, picks.tolist(), strict=True):
        jb = jailbreaks[pick]
        out.append({"id": f"dan-{q['q_id']}", "platform": jb["platform"], "jailbreak_prompt": jb["prompt"],
                    "content_policy_name": q["content_policy_name"], "question": q["question"],
                    "prompt": f"{jb['prompt'].rstrip()}\n{q['question']}"})
    return Converted(out, f"each of the {len(questions.rows)} forbidden questions is asked once, inside one of the "
                          f"{len(jailbreaks)} jailbreak prompts drawn with numpy default_rng({DAN_SEED})")
