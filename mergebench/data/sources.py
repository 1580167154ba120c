"""The named Hub sources of each domain's training data: exact schema, license, citation, and how we use them.

A source is data, not code: one :class:`SourceSpec` per Hub dataset says which repo/config/split to load,
which columns it MUST have (with their types, as the real dataset declares them), its license and
citation, and the project's usage decisions (row cap, language filter). A :class:`DomainSpec` lists the
sources of one domain in priority order (deduplication keeps the first copy, so earlier sources win).

The schemas below are those of the real datasets on the Hub (checked against their dataset cards and
viewers); the offline fixtures in :mod:`mergebench.data.fixture_sources` are written in exactly these
schemas, so the converters cannot tell a fixture from the real thing.

Decisions the paper leaves open (marked **[decide]** in the spec) are recorded in ``decision`` and
rendered into each dataset card.
"""

from __future__ import annotations

import difflib
from dataclasses import dataclass, field
from typing import Literal

from mergebench.domains import DOMAINS
from mergebench.errors import ConfigError

ColumnKind = Literal["string", "bool", "messages", "string_list"]


@dataclass(frozen=True)
class Column:
    """One column a source MUST have. ``nullable`` columns may hold ``None`` in some rows."""

    name: str
    kind: ColumnKind
    description: str
    nullable: bool = False


@dataclass(frozen=True)
class SourceSpec:
    """A Hub dataset used as training data, pinned by revision at build time.

    ``max_rows`` caps the rows drawn (seeded sample of the split, taken *before* cleaning so the cost of a
    build is bounded); ``None`` keeps every row. ``load_kwargs`` are passed to ``datasets.load_dataset``
    exactly as the dataset card tells users to (e.g. WildJailbreak's TSV needs ``delimiter="\\t"``).
    """

    key: str
    repo_id: str
    domain: str
    split: str
    columns: tuple[Column, ...]
    license: str  # Hub license id
    citation: str  # BibTeX
    paper: str
    languages: tuple[str, ...] = ("en",)
    config: str | None = None
    max_rows: int | None = None
    load_kwargs: tuple[tuple[str, object], ...] = ()
    decision: str = ""

    @property
    def required_columns(self) -> tuple[str, ...]:
        return tuple(c.name for c in self.columns)

    def label(self, revision: str | None = None) -> str:
        """``key (org/name[:config]@rev)`` — how errors and logs name this source."""
        cfg = f":{self.config}" if self.config else ""
        rev = f"@{revision}" if revision else ""
        return f"{self.key} ({self.repo_id}{cfg}{rev})"


@dataclass(frozen=True)
class DomainSpec:
    """One MergeBench domain: its sources (in priority order) and the card metadata of its dataset."""

    name: str
    sources: tuple[str, ...]
    pretty_name: str
    description: str
    task_categories: tuple[str, ...] = ("text-generation",)
    validation_rows: int = 1000
    seed: int = 42
    eval_sets: tuple[str, ...] = field(default=())  # informational: what the domain is evaluated on


_MESSAGES = Column("messages", "messages", "chat turns: list of {role, content}")

_TULU_CITE = """@article{lambert2024tulu3,
  title   = {T\\"ulu 3: Pushing Frontiers in Open Language Model Post-Training},
  author  = {Nathan Lambert and Jacob Morrison and Valentina Pyatkin and others},
  journal = {arXiv preprint arXiv:2411.15124},
  year    = {2024}
}"""
_DART_CITE = """@article{tong2024dartmath,
  title   = {DART-Math: Difficulty-Aware Rejection Tuning for Mathematical Problem-Solving},
  author  = {Yuxuan Tong and Xiwen Zhang and Rui Wang and Ruidong Wu and Junxian He},
  journal = {arXiv preprint arXiv:2407.13690},
  year    = {2024}
}"""
_NUMINA_CITE = """@misc{numina_math_datasets,
  author       = {Jia LI and Edward Beeching and Lewis Tunstall and Ben Lipkin and Roman Soletskyi and
                  Shengyi Costa Huang and Kashif Rasul and Longhui Yu and Albert Jiang and Ziju Shen and
                  Zihan Qin and Bin Dong and Li Zhou and Yann Fleureau and Guillaume Lample and Stanislas Polu},
  title        = {NuminaMath TIR},
  year         = {2024},
  publisher    = {Numina},
  howpublished = {\\url{https://huggingface.co/AI-MO/NuminaMath-TIR}}
}"""
_AYA_CITE = """@article{singh2024aya,
  title   = {Aya Dataset: An Open-Access Collection for Multilingual Instruction Tuning},
  author  = {Shivalika Singh and Freddie Vargus and Daniel Dsouza and others},
  journal = {arXiv preprint arXiv:2402.06619},
  year    = {2024}
}"""
_MAGICODER_CITE = """@article{wei2023magicoder,
  title   = {Magicoder: Empowering Code Generation with OSS-Instruct},
  author  = {Yuxiang Wei and Zhe Wang and Jiawei Liu and Yifeng Ding and Lingming Zhang},
  journal = {arXiv preprint arXiv:2312.02120},
  year    = {2023}
}"""
_WILDGUARD_CITE = """@article{han2024wildguard,
  title   = {WildGuard: Open One-Stop Moderation Tools for Safety Risks, Jailbreaks, and Refusals of LLMs},
  author  = {Seungju Han and Kavel Rao and Allyson Ettinger and Liwei Jiang and Bill Yuchen Lin and
             Nathan Lambert and Yejin Choi and Nouha Dziri},
  journal = {arXiv preprint arXiv:2406.18495},
  year    = {2024}
}"""
_WILDJAILBREAK_CITE = """@article{jiang2024wildteaming,
  title   = {WildTeaming at Scale: From In-the-Wild Jailbreaks to (Adversarially) Safer Language Models},
  author  = {Liwei Jiang and Kavel Rao and Seungju Han and Allyson Ettinger and Faeze Brahman and
             Sachin Kumar and Niloofar Mireshghallah and Ximing Lu and Maarten Sap and Yejin Choi and Nouha Dziri},
  journal = {arXiv preprint arXiv:2406.18510},
  year    = {2024}
}"""

#: Aya's ``language_code`` (ISO 639-3) → the ISO 639-1 code the project schema uses.
AYA_LANGUAGES: dict[str, str] = {"fra": "fr", "spa": "es", "deu": "de", "rus": "ru"}

SOURCES: dict[str, SourceSpec] = {s.key: s for s in (
    SourceSpec(
        key="tulu3-personas-if", repo_id="allenai/tulu-3-sft-personas-instruction-following",
        domain="instruction", split="train", license="odc-by", citation=_TULU_CITE,
        paper="https://arxiv.org/abs/2411.15124",
        columns=(Column("id", "string", "persona-prompt id, e.g. 'personas_IF_1k9ugcfnq...'"),
                 Column("prompt", "string", "the user prompt with its verifiable constraints"),
                 _MESSAGES,
                 Column("constraints", "string_list", "the constraint descriptions embedded in the prompt")),
        decision="All ~30k rows. `messages` is used as-is (user → assistant).",
    ),
    SourceSpec(
        key="dart-math-hard", repo_id="hkust-nlp/dart-math-hard", domain="math", split="train",
        license="mit", citation=_DART_CITE, paper="https://arxiv.org/abs/2407.13690",
        columns=(Column("query", "string", "the math problem (MATH/GSM8K train)"),
                 Column("response", "string", "a synthesized chain-of-thought solution")),
        max_rows=100_000,
        decision="[decide] A seeded sample of 100,000 of its ~585k rows: DART-Math-hard repeats hard queries "
                 "with several responses on purpose, so exact deduplication is on the whole conversation and "
                 "the validation split is grouped by prompt.",
    ),
    SourceSpec(
        key="numinamath-tir", repo_id="AI-MO/NuminaMath-TIR", domain="math", split="train",
        license="apache-2.0", citation=_NUMINA_CITE, paper="https://huggingface.co/AI-MO/NuminaMath-TIR",
        columns=(Column("problem", "string", "competition-style problem"),
                 Column("solution", "string", "tool-integrated (Python) reasoning solution"),
                 _MESSAGES),
        decision="[decide] All ~72k train rows, after DART-Math-hard (math = DART sample ∪ NuminaMath-TIR).",
    ),
    SourceSpec(
        key="aya", repo_id="CohereForAI/aya_dataset", domain="multilingual", split="train",
        license="apache-2.0", citation=_AYA_CITE, paper="https://arxiv.org/abs/2402.06619",
        languages=tuple(AYA_LANGUAGES.values()),
        columns=(Column("inputs", "string", "the prompt, in `language`"),
                 Column("targets", "string", "the human-written completion"),
                 Column("language", "string", "language name, e.g. 'French'"),
                 Column("language_code", "string", "ISO 639-3 code, e.g. 'fra'"),
                 Column("annotation_type", "string", "'original-annotations' or 're-annotations'"),
                 Column("user_id", "string", "hashed annotator id")),
        decision="[decide] Languages fr, es, de, ru (Aya `language_code` fra, spa, deu, rus), every row of "
                 "those; other languages are filtered out and counted.",
    ),
    SourceSpec(
        key="magicoder-evol-instruct", repo_id="ise-uiuc/Magicoder-Evol-Instruct-110K", domain="coding",
        split="train", license="apache-2.0", citation=_MAGICODER_CITE, paper="https://arxiv.org/abs/2312.02120",
        columns=(Column("instruction", "string", "the coding task"),
                 Column("response", "string", "the answer, usually with a fenced code block")),
        decision="All ~111k rows.",
    ),
    SourceSpec(
        key="wildguardmix", repo_id="allenai/wildguardmix", domain="safety", config="wildguardtrain",
        split="train", license="odc-by", citation=_WILDGUARD_CITE, paper="https://arxiv.org/abs/2406.18495",
        columns=(Column("prompt", "string", "user request (vanilla or adversarial)"),
                 Column("adversarial", "bool", "whether the prompt is an adversarial (jailbreak) rewrite"),
                 Column("response", "string", "model response; None for prompt-only rows", nullable=True),
                 Column("prompt_harm_label", "string", "'harmful' / 'unharmful'", nullable=True),
                 Column("response_refusal_label", "string", "'refusal' / 'compliance'", nullable=True),
                 Column("response_harm_label", "string", "'harmful' / 'unharmful'", nullable=True),
                 Column("subcategory", "string", "risk taxonomy subcategory, 'benign' for benign prompts")),
        decision="[decide] Only rows whose response is safe to imitate: response_harm_label 'unharmful', "
                 "and a refusal for harmful prompts or a compliance for unharmful ones. Prompt-only rows and "
                 "rows with missing labels are filtered out and counted.",
    ),
    SourceSpec(
        key="wildjailbreak", repo_id="allenai/wildjailbreak", domain="safety", config="train", split="train",
        license="odc-by", citation=_WILDJAILBREAK_CITE, paper="https://arxiv.org/abs/2406.18510",
        load_kwargs=(("delimiter", "\t"), ("keep_default_na", False)),
        columns=(Column("vanilla", "string", "the plain request"),
                 Column("adversarial", "string", "the jailbreak rewrite; empty for vanilla_* rows"),
                 Column("completion", "string", "the safe target response"),
                 Column("data_type", "string",
                        "vanilla_harmful | vanilla_benign | adversarial_harmful | adversarial_benign")),
        max_rows=50_000,
        decision="[decide] A seeded sample of 50,000 of its ~262k train rows (all four data types); the user "
                 "turn is `adversarial` when non-empty, else `vanilla`.",
    ),
)}

DOMAIN_SPECS: dict[str, DomainSpec] = {d.name: d for d in (
    DomainSpec("instruction", ("tulu3-personas-if",), "MergeBench instruction following",
               "Verifiable instruction following (IFEval-style constraints) from Tülu 3 personas.",
               eval_sets=("ifeval",)),
    DomainSpec("math", ("dart-math-hard", "numinamath-tir"), "MergeBench math",
               "Chain-of-thought and tool-integrated math solutions.", eval_sets=("gsm8k", "math")),
    DomainSpec("multilingual", ("aya",), "MergeBench multilingual",
               "Human-written instructions and answers in French, Spanish, German and Russian from Aya.",
               eval_sets=tuple(f"{t}_{lang}" for t in ("m_mmlu", "arc", "hellaswag")
                               for lang in AYA_LANGUAGES.values())),
    DomainSpec("coding", ("magicoder-evol-instruct",), "MergeBench coding",
               "Evol-Instruct coding tasks with answers, as used by Magicoder.",
               eval_sets=("humaneval_plus", "mbpp_plus")),
    DomainSpec("safety", ("wildguardmix", "wildjailbreak"), "MergeBench safety",
               "Refusals of harmful requests and helpful answers to benign ones, vanilla and adversarial.",
               eval_sets=("wildguardtest", "harmbench", "xstest", "dan")),
)}


def get_domain(name: str) -> DomainSpec:
    """The :class:`DomainSpec` called ``name``; an unknown name suggests the closest one."""
    if name in DOMAIN_SPECS:
        return DOMAIN_SPECS[name]
    close = difflib.get_close_matches(name, DOMAIN_SPECS, n=1)
    raise ConfigError(f"Unknown domain '{name}'.",
                      hint=f"Did you mean '{close[0]}'?" if close else f"Choose one of {', '.join(DOMAINS)}.")


def domain_sources(name: str) -> tuple[SourceSpec, ...]:
    """The sources of a domain, in priority order."""
    return tuple(SOURCES[k] for k in get_domain(name).sources)
