"""The pin table: where every evaluation set of ``mergebench-eval`` comes from on the Hub.

One :class:`UpstreamRepo` per Hub dataset (its license, whether it is gated, and the commit the pinned build
reads) and one :class:`TaskSource` per evaluation set: the (repo, config, split) parts it is built from, the
upstream row count of each part, the converter into the task schema, and the upstream task definition the
ids, configs, splits and schemas were read from (``defined_by``; paths are inside the cited repository).

The safety sets have no definition in lm-evaluation-harness, bigcode-evaluation-harness or lighteval, and
allenai/safety-eval could not be read offline: their repo ids, configs and splits come from the datasets'
own cards and the harness named in ``defined_by`` (HELM for XSTest).

Commit shas are only written here when a public record shows the full sha of a commit whose files are the
dataset the task reads (``sha_evidence`` says where); every other sha is ``None``, and a pinned build refuses
the tasks that need it (run with ``--unpinned`` and keep the ``mergebench_eval.json`` it writes as ``--pins``).
Row counts are the upstream's published split sizes (``None`` where none was found offline: the count is then
recorded, not checked).
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mergebench.data.upstream import convert as cv
from mergebench.data.upstream.convert import Convert, Schema

LANGS = ("fr", "es", "de", "ru")
NO_SHA = "no full commit sha of this repo was found offline"


@dataclass(frozen=True)
class UpstreamRepo:
    """A Hub dataset repo evaluation sets are read from."""

    repo_id: str
    license: str  # Hub license id of the upstream data
    sha: str | None  # the commit the pinned build reads; None: not known offline (the build refuses)
    sha_evidence: str = NO_SHA  # where the sha was read
    gated: bool = False  # the Hub asks users to accept terms before downloading


@dataclass(frozen=True)
class Part:
    """One (repo, config, split) a task is built from.

    ``data_files`` (a path inside the repo) with ``builder`` loads that file directly, for repos whose main branch
    still carries a loading script, which ``datasets`` ≥ 4 no longer runs.
    """

    repo_id: str
    config: str | None
    split: str
    schema: Schema
    rows: int | None  # upstream row count of this split at the pinned commit; None: unknown offline
    data_files: str | None = None
    builder: str | None = None
    load_kwargs: tuple[tuple[str, object], ...] = ()

    @property
    def key(self) -> tuple[str, str | None, str]:
        return self.repo_id, self.config, self.split


@dataclass(frozen=True)
class TaskSource:
    """How one config of ``mergebench-eval`` is built from the Hub."""

    name: str  # the evaluation set (mergebench.data.evalsets.EVAL_SETS key)
    parts: tuple[Part, ...]
    convert: Convert
    defined_by: str  # the upstream task definition the repo, config, split and schema come from
    notes: tuple[str, ...] = field(default=())

    @property
    def repos(self) -> tuple[str, ...]:
        return tuple(dict.fromkeys(p.repo_id for p in self.parts))


_LIGHTEVAL = "huggingface/lighteval src/lighteval/tasks"
_LM_EVAL = "EleutherAI/lm-evaluation-harness lm_eval/tasks"

REPOS: dict[str, UpstreamRepo] = {r.repo_id: r for r in (
    UpstreamRepo("google/IFEval", "apache-2.0", "966cd89545d6b6acfd7638bc708b98261ca58e84",
                 "https://huggingface.co/datasets/google/IFEval/tree/966cd89545d6b6acfd7638bc708b98261ca58e84 "
                 "(main head: ifeval_input_data.jsonl)"),
    UpstreamRepo("allenai/IFBench_test", "apache-2.0", None),
    UpstreamRepo("openai/gsm8k", "mit", "60b4b82b84c2dac2b54f7d7f3056eae01514f12e",
                 "https://huggingface.co/datasets/gsm8k/commit/60b4b82b84c2dac2b54f7d7f3056eae01514f12e (parquet "
                 "configs main and socratic; README: main test num_examples 1319)"),
    UpstreamRepo("EleutherAI/hendrycks_math", "mit", "0bd4da3ba883718272d0e821efdf10b63c2ed3bf",
                 "https://huggingface.co/datasets/EleutherAI/hendrycks_math/tree/"
                 "0bd4da3ba883718272d0e821efdf10b63c2ed3bf ('Delete loading script': the seven subject configs as "
                 "parquet, no script)"),
    UpstreamRepo("alexandrainst/m_mmlu", "cc-by-nc-4.0", "c343b0e0a73391b5c78d87aa409f60e77b1ba0fc",
                 "https://huggingface.co/datasets/alexandrainst/m_mmlu/tree/c343b0e0a73391b5c78d87aa409f60e77b1ba0fc "
                 "(main head, 'feat: Add en, is and nb back')"),
    UpstreamRepo("jon-tow/okapi_arc_challenge", "cc-by-nc-4.0", "823d5d7bfaf8974a3ab52a825b6cf4903b35dbc4",
                 f"{_LIGHTEVAL}/multilingual/tasks/mlmm_arc_challenge.py (hf_revision)"),
    UpstreamRepo("jon-tow/okapi_hellaswag", "cc-by-nc-4.0", "fb6b5f2b48a6348ae2a9467a6714c3a054fa8d85",
                 f"{_LIGHTEVAL}/multilingual/tasks/mlmm_hellaswag.py (hf_revision)"),
    UpstreamRepo("evalplus/humanevalplus", "apache-2.0", None),
    UpstreamRepo("evalplus/mbppplus", "apache-2.0", None),
    UpstreamRepo("allenai/wildguardmix", "odc-by", None, gated=True),
    UpstreamRepo("walledai/HarmBench", "mit", None, gated=True),
    UpstreamRepo("walledai/XSTest", "cc-by-4.0", "f1d713187c61b6ae64e602d74f0b3d812cc2e8e8",
                 "stanford-crfm/helm src/helm/benchmark/scenarios/xstest_scenario.py (revision=...)", gated=True),
    UpstreamRepo("TrustAIRLab/in-the-wild-jailbreak-prompts", "mit", None),
    UpstreamRepo("TrustAIRLab/forbidden_question_set", "mit", None),
    UpstreamRepo("cais/mmlu", "mit", None),
    UpstreamRepo("mandarjoshi/trivia_qa", "apache-2.0", None),
    UpstreamRepo("lighteval/squad_v2", "cc-by-sa-4.0", None),
    UpstreamRepo("stanfordnlp/coqa", "other", None),
    UpstreamRepo("qiaojin/PubMedQA", "mit", None),
    UpstreamRepo("wmt/wmt14", "unknown", None),
    UpstreamRepo("EleutherAI/lambada_openai", "cc-by-4.0", None),
    UpstreamRepo("neulab/conala", "mit", "9121f5ad3aef6da95f5bb9016b083d8ad9c7afbd",
                 "https://huggingface.co/datasets/neulab/conala/tree/9121f5ad3aef6da95f5bb9016b083d8ad9c7afbd "
                 "(data/conala-paired-test.json, unchanged on main since 'add data')"),
    UpstreamRepo("allenai/wildjailbreak", "odc-by", None, gated=True),
)}

#: MATH test sizes per subject (Hendrycks et al., 2021: 5,000 test problems in seven subjects).
_MATH_SUBJECTS = {"algebra": 1187, "counting_and_probability": 474, "geometry": 479, "intermediate_algebra": 903,
                  "number_theory": 540, "prealgebra": 871, "precalculus": 546}


def _one(name: str, repo_id: str, config: str | None, split: str, schema: Schema, rows: int | None,
         defined_by: str, convert: Convert | None = None, *, data_files: str | None = None, builder: str | None = None,
         load_kwargs: tuple[tuple[str, object], ...] = ()) -> TaskSource:
    """A task read from one (repo, config, split); ``convert`` defaults to keeping the schema's columns."""
    part = Part(repo_id, config, split, schema, rows, data_files=data_files, builder=builder, load_kwargs=load_kwargs)
    return TaskSource(name, (part,), convert or cv.keep_columns(schema), defined_by)


def _sources() -> list[TaskSource]:
    tasks = [
        # google/IFEval, split train: lm_eval/tasks/ifeval/ifeval.yaml (dataset_path, test_split: train);
        # lighteval src/lighteval/tasks/tasks/ifeval/main.py. 541 prompts (Zhou et al., 2023).
        _one("ifeval", "google/IFEval", None, "train", cv.IFEVAL, 541, f"{_LM_EVAL}/ifeval/ifeval.yaml"),
        # IFBench (verifiable instructions that are not IFEval): lighteval tasks/ifbench/main.py, ifbench_test
        # (hf_repo allenai/IFBench_test, subset default, evaluation_splits train).
        _one("ifbench", "allenai/IFBench_test", None, "train", cv.IFBENCH, None,
             f"{_LIGHTEVAL}/tasks/ifbench/main.py"),
        # openai/gsm8k main, test: lm_eval/tasks/gsm8k/gsm8k-cot.yaml (8-shot CoT; its fewshot_config samples are
        # the Wei et al. exemplars of mergebench.eval.prompts.GSM8K_EXEMPLARS, first_n); lighteval tasks/gsm8k.py.
        TaskSource("gsm8k", (Part("openai/gsm8k", "main", "test", cv.GSM8K, 1319),), cv.keep_columns(cv.GSM8K),
                   f"{_LM_EVAL}/gsm8k/gsm8k-cot.yaml",
                   ("Few-shot source: the 8 chain-of-thought exemplars of Wei et al. (2022), as listed in "
                    "gsm8k-cot.yaml fewshot_config (sampler first_n); they are not drawn from the train split.",)),
        # EleutherAI/hendrycks_math, the seven subject configs, test: lm_eval/tasks/hendrycks_math/hendrycks_math.yaml
        # (group of hendrycks_math_<subject>.yaml: dataset_name <subject>, test_split test).
        TaskSource("math", tuple(Part("EleutherAI/hendrycks_math", s, "test", cv.HENDRYCKS_MATH, n)
                                 for s, n in _MATH_SUBJECTS.items()),
                   cv.keep_columns(cv.HENDRYCKS_MATH), f"{_LM_EVAL}/hendrycks_math/hendrycks_math.yaml"),
        # evalplus/humanevalplus, test (the plus tests are in `test`): bigcode-project/bigcode-evaluation-harness
        # bigcode_eval/tasks/humanevalplus.py (DATASET_PATH); lm_eval/tasks/humaneval/humaneval_plus.yaml. 164.
        _one("humaneval_plus", "evalplus/humanevalplus", None, "test", cv.HUMANEVAL_PLUS, 164,
             "bigcode-project/bigcode-evaluation-harness bigcode_eval/tasks/humanevalplus.py"),
        # evalplus/mbppplus, test: bigcode_eval/tasks/mbppplus.py (get_dataset: self.dataset["test"]);
        # lm_eval/tasks/mbpp/mbpp_plus.yaml. 378 problems since MBPP+ v0.2.0 (399 before).
        _one("mbpp_plus", "evalplus/mbppplus", None, "test", cv.MBPP_PLUS, 378,
             "bigcode-project/bigcode-evaluation-harness bigcode_eval/tasks/mbppplus.py"),
        # allenai/wildguardmix wildguardtest, test (gated): the dataset card's configs (WildGuard, Han et al.,
        # 2024); 1,725 items. mb_wildguardtest scores the prompt_harm_label == harmful rows.
        _one("wildguardtest", "allenai/wildguardmix", "wildguardtest", "test", cv.WILDGUARDTEST, 1725,
             "the allenai/wildguardmix card (config wildguardtest, split test; Han et al., 2024)"),
        # walledai/HarmBench standard, contextual, copyright, train (gated): the 400 text behaviours of HarmBench
        # (Mazeika et al., 2024: 200 standard, 100 contextual, 100 copyright); mb_harmbench scores standard and
        # contextual behaviours (copyright ones are judged by hashing in HarmBench, not by refusal).
        TaskSource("harmbench", tuple(Part("walledai/HarmBench", c, "train", cv.HARMBENCH, n)
                                      for c, n in (("standard", 200), ("contextual", 100), ("copyright", 100))),
                   cv.harmbench_behaviours, "centerforaisafety/HarmBench data/behavior_datasets/"
                   "harmbench_behaviors_text_all.csv, as its Hub copy walledai/HarmBench splits it by category"),
        # walledai/XSTest, test (gated): stanford-crfm/helm src/helm/benchmark/scenarios/xstest_scenario.py
        # (load_dataset("walledai/XSTest", split="test", revision=...)). 250 safe + 200 unsafe prompts.
        _one("xstest", "walledai/XSTest", None, "test", cv.XSTEST, 450,
             "stanford-crfm/helm src/helm/benchmark/scenarios/xstest_scenario.py"),
        # DoAnythingNow (Shen et al., 2024): the in-the-wild jailbreak prompts of 2023-12-25 (1,405) and the
        # forbidden question set (13 policies × 30 = 390), both TrustAIRLab repos, split train.
        TaskSource("dan", (Part("TrustAIRLab/in-the-wild-jailbreak-prompts", "jailbreak_2023_12_25", "train",
                                cv.ITW_JAILBREAK, 1405),
                           Part("TrustAIRLab/forbidden_question_set", None, "train", cv.FORBIDDEN_QUESTIONS, 390)),
                   cv.dan_prompts, "verazuo/jailbreak_llms (Shen et al., 2024): in-the-wild jailbreak prompts × the "
                   "forbidden question set"),
        # cais/mmlu all, validation, STEM subjects: the validation surrogate of the math domain. Subjects tagged
        # mmlu_stem_tasks in lm_eval/tasks/mmlu/default/mmlu_<subject>.yaml (dataset_path cais/mmlu); the
        # validation split keeps the surrogate disjoint from the forgetting suite's MMLU test split.
        TaskSource("mmlu_stem", (Part("cais/mmlu", "all", "validation", cv.MMLU, 1531),),
                   cv.mmlu_subjects(cv.MMLU_STEM_SUBJECTS, "STEM (lm-evaluation-harness mmlu_stem)"),
                   f"{_LM_EVAL}/mmlu/default/_default_template_yaml"),
        # EleutherAI/lambada_openai default, test: lm_eval/tasks/lambada/lambada_openai.yaml. 5,153 passages.
        _one("lambada", "EleutherAI/lambada_openai", "default", "test", cv.LAMBADA, 5153,
             f"{_LM_EVAL}/lambada/lambada_openai.yaml"),
        # neulab/conala curated, test: bigcode_eval/tasks/conala.py (DATASET_PATH neulab/conala, dataset["test"];
        # "500 test examples"). Main still holds conala.py, so the test file is read directly.
        _one("conala", "neulab/conala", None, "test", cv.CONALA, 500,
             "bigcode-project/bigcode-evaluation-harness bigcode_eval/tasks/conala.py",
             data_files="data/conala-paired-test.json", builder="json"),
        # allenai/wildjailbreak eval (gated; TSV read with delimiter "\t" as its card says), the config's only split
        # (train): 2,000 adversarial_harmful + 210 adversarial_benign; mb_wildjailbreak scores the harmful ones.
        _one("wildjailbreak_eval", "allenai/wildjailbreak", "eval", "train", cv.WILDJAILBREAK_EVAL, 2210,
             "the allenai/wildjailbreak card (config eval: eval/eval.tsv, read with delimiter '\\t')",
             load_kwargs=(("delimiter", "\t"), ("keep_default_na", False))),
        # cais/mmlu all, test: lm_eval/tasks/mmlu/default/_default_template_yaml (per-subject configs of cais/mmlu,
        # test_split test; `all` is their union). 14,042 questions.
        _one("mmlu", "cais/mmlu", "all", "test", cv.MMLU, 14042, f"{_LM_EVAL}/mmlu/default/_default_template_yaml"),
        # mandarjoshi/trivia_qa rc.nocontext, validation: lm_eval/tasks/triviaqa/default.yaml. 17,944 questions.
        _one("triviaqa", "mandarjoshi/trivia_qa", "rc.nocontext", "validation", cv.TRIVIAQA, 17944,
             f"{_LM_EVAL}/triviaqa/default.yaml"),
        # lighteval/squad_v2, validation: lm_eval/tasks/squadv2/task.py (DATASET_PATH, validation_docs). 11,873.
        _one("squad_v2", "lighteval/squad_v2", None, "validation", cv.SQUAD_V2, 11873, f"{_LM_EVAL}/squadv2/task.py"),
        # stanfordnlp/coqa, validation: lighteval src/lighteval/tasks/tasks/coqa.py (hf_repo, evaluation_splits).
        _one("coqa", "stanfordnlp/coqa", None, "validation", cv.COQA, 500, f"{_LIGHTEVAL}/tasks/coqa.py"),
        # PubMedQA pqa_labeled, train: lighteval tasks/pubmedqa.py (hf_repo "pubmed_qa", now qiaojin/PubMedQA;
        # evaluation_splits train). 1,000 expert-labelled questions.
        _one("pubmedqa", "qiaojin/PubMedQA", "pqa_labeled", "train", cv.PUBMEDQA, 1000,
             f"{_LIGHTEVAL}/tasks/pubmedqa.py"),
        # wmt/wmt14 fr-en, test: lm_eval/tasks/translation/wmt14_fr-en.yaml (+ wmt_common_yaml test_split).
        _one("wmt14_fr_en", "wmt/wmt14", "fr-en", "test", cv.WMT14, 3003, f"{_LM_EVAL}/translation/wmt14_fr-en.yaml"),
    ]
    for lang in LANGS:
        tasks += [
            # alexandrainst/m_mmlu <lang>, test: lm_eval/tasks/okapi/mmlu_multilingual/m_mmlu_<lang>.yaml.
            _one(f"m_mmlu_{lang}", "alexandrainst/m_mmlu", lang, "test", cv.OKAPI_MMLU, None,
                 f"{_LM_EVAL}/okapi/mmlu_multilingual/m_mmlu_{lang}.yaml"),
            # jon-tow/okapi_arc_challenge <lang>, test, pinned by lighteval's mlmm_arc_challenge.py (same Okapi
            # translations as lm_eval/tasks/okapi/arc_multilingual/arc_<lang>.yaml).
            _one(f"arc_{lang}", "jon-tow/okapi_arc_challenge", lang, "test", cv.AI2_ARC, None,
                 f"{_LIGHTEVAL}/multilingual/tasks/mlmm_arc_challenge.py", cv.ai2_arc_to_okapi),
            # jon-tow/okapi_hellaswag <lang>, validation, pinned by lighteval's mlmm_hellaswag.py (the Okapi
            # translations lm_eval/tasks/okapi/hellaswag_multilingual/hellaswag_<lang>.yaml reads, split val).
            _one(f"hellaswag_{lang}", "jon-tow/okapi_hellaswag", lang, "validation", cv.OKAPI_HELLASWAG, None,
                 f"{_LIGHTEVAL}/multilingual/tasks/mlmm_hellaswag.py", cv.okapi_hellaswag),
        ]
    return tasks


TASK_SOURCES: dict[str, TaskSource] = {t.name: t for t in _sources()}
