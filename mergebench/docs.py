"""Files generated from the code, so they cannot drift: ``docs/methods.md`` from the method registry's declared
metadata, and rendered example cards of every kind in ``model_cards/`` and ``datasets_cards/``.

The examples are rendered from small fixed typed records below (fixed revisions, dates and numbers, no absolute
paths) with the templates shipped inside the package (``mergebench/cards/templates/``), exactly as a merge, a
training run or a dataset build renders its card. ``python -m mergebench.docs`` (run in a checkout) rewrites
every file; a test fails when a committed file differs from what the code renders.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Callable
from pathlib import Path
from typing import Any

from mergebench import methods
from mergebench.data.card import DomainReport, EvalConfig, EvalSetRemoval, SourceRow, domain_card, eval_card
from mergebench.data.evalsets import EVAL_SETS
from mergebench.data.sources import SOURCES, get_domain
from mergebench.merge.card import CardInput, EvalRow, MergeCost, MergedCard, render_merged_card
from mergebench.merge.recipe import MergeRecipe, ModelEntry
from mergebench.methods import MethodSpec, Params
from mergebench.prompt import PROMPT_FORMAT_VERSION
from mergebench.train.card import MANIFEST_VERSION, ExpertManifest, PinnedInput, render_expert_card
from mergebench.train.config import load_train_config

logger = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
DOCS = ROOT / "docs"

STAGE_MEMORY = {
    "gram": "one expert in fp32 + Σ in² fp32 per linear layer of the blocks (Gram matrices)",
    "fisher": "one expert in fp32 + its gradients + one model-size fp32 Fisher diagonal",
    "mask": "base + one expert in fp32 + model-size mask logits and task vector",
}


# ----------------------------------------------------------------------------------------------------------
# docs/methods.md
# ----------------------------------------------------------------------------------------------------------
def _data_needed(spec: MethodSpec) -> str:
    if not spec.data_stats:
        return "none"
    data = f"{spec.data_stats} statistics ({STAGE_MEMORY[spec.data_stats]})"
    return data if spec.make_params().uses_data() else data + ", only when trained (the default needs none)"


def _cell(text: str) -> str:
    """``text`` inside a Markdown table cell (a literal ``|`` would end the cell)."""
    return text.replace("|", "\\|")


def _method_section(spec: MethodSpec) -> list[str]:
    """One method's section: title, formula, declared parameters, grid and how it treats data and weights."""
    grid = " × ".join(f"{k} ∈ {{{', '.join(map(str, v))}}}" for k, v in spec.grid.items()) or "none"
    weights = ("divided by their sum (a zero sum is an error)" if spec.normalises_weights
               else "multiply each expert's task vector")
    lines = ["", f"## {spec.name}", "", f"{spec.title} — version {spec.version}, [paper]({spec.paper})", "",
             "```", *spec.formula.splitlines(), "```", "",
             "| parameter | type | default | range | meaning |", "|---|---|---|---|---|"]
    lines += [f"| `{p.name}` | {_cell(p.type)} | `{p.default}` | {p.range or '–'} | {_cell(p.doc)} |"
              for p in spec.parameters]
    elementwise = "yes" if spec.elementwise else "no"
    if spec.params_cls.elementwise is not Params.elementwise:  # decided per parameter value: say how
        elementwise += f" with the defaults ({(spec.params_cls.elementwise.__doc__ or '').strip().rstrip('.')})"
    return [*lines, "", f"Search grid: {grid}. Inputs: {spec.inputs}. Recipe weights: {weights}. "
                        f"Chunked multi-threaded merge (elementwise): {elementwise}."]


def methods_markdown() -> str:
    """``docs/methods.md``: every registered method with its declared formula, parameters, grid and data needs."""
    lines = [
        "# Merge methods",
        "",
        "Generated from the method registry by `python -m mergebench.docs`; do not edit by hand.",
        "Semantics follow the project's method contract; each section shows what the method declares in its",
        "`register(...)` call and parameter dataclass (formula, ranges, grid), the same text `mergebench methods show`",
        "prints and merged-model cards carry. Measured time and memory per stage on SmolLM2-135M: see",
        "`benchmarks/RESULTS.md`.",
        "",
        "| method | parameters (defaults) | search grid | data needed | merge-stage memory |",
        "|---|---|---|---|---|",
    ]
    for spec in methods.REGISTRY:
        params = ", ".join(f"`{k}={v}`" for k, v in spec.defaults().items()) or "–"
        grid = " × ".join(f"{k} ∈ {{{', '.join(map(str, v))}}}" for k, v in spec.grid.items()) or "none"
        params_ = spec.make_params()  # elementwise methods set aside what one counting pass leaves open
        passes = "" if params_.global_topk() is None else " + 1 top-k pass" if params_.elementwise() else \
            " + 1–2 top-k passes"
        lines.append(f"| [`{spec.name}`](#{spec.name}) | {params} | {grid} | {_data_needed(spec)} | "
                     f"(n+2) × largest tensor fp32{passes} |")
    for spec in methods.REGISTRY:
        lines += _method_section(spec)
    return "\n".join(lines) + "\n"


# ----------------------------------------------------------------------------------------------------------
# Example cards: fixed typed records → the package's templates
# ----------------------------------------------------------------------------------------------------------
BASE = "HuggingFaceTB/SmolLM2-135M"
ORG = "mergebench-examples"
EXPERTS = {"math": f"{ORG}/smollm2-135m-math", "coding": f"{ORG}/smollm2-135m-coding"}
DATASETS = {"math": f"{ORG}/mergebench-math", "coding": f"{ORG}/mergebench-coding"}
EXAMPLE_PARAMETERS: dict[str, dict[str, Any]] = {"ties": {"top_k": 0.2, "scaling": 0.6}, "regmean": {"alpha": 0.5}}
"""The merge methods with an example card, and the parameters their example recipe gives."""


def _sha(name: str) -> str:
    """A fixed placeholder commit sha for an example input: the same on every machine and run."""
    return hashlib.sha1(f"mergebench-example:{name}".encode()).hexdigest()


def _pinned(repo_id: str) -> str:
    return f"{repo_id}@{_sha(repo_id)}"


def example_merged_card(method: str) -> MergedCard:
    """A merge of the math and coding experts of SmolLM2-135M with ``method`` (numbers are placeholders)."""
    spec = methods.get(method)
    parameters = EXAMPLE_PARAMETERS[method]
    recipe = MergeRecipe(
        method=method, base_model=_pinned(BASE), parameters=parameters, dtype="bfloat16",
        models=[ModelEntry(model=_pinned(repo), domain=domain) for domain, repo in EXPERTS.items()],
        data={d: _pinned(repo) for d, repo in DATASETS.items()} if spec.data_dependent else {})
    experts = tuple(CardInput(name=repo, revision=_sha(repo), repo_id=repo, domain=domain)
                    for domain, repo in EXPERTS.items())
    return MergedCard(
        model_name=f"smollm2-135m-math-coding-{method.replace('_', '-')}", method=spec, recipe=recipe,
        base=CardInput(name=BASE, revision=_sha(BASE), repo_id=BASE), experts=experts,
        cost=MergeCost(seconds=14.2, peak_rss_bytes=1_480_000_000, bytes_read=807_000_000, output_bytes=269_000_000),
        out_dtype="bfloat16", stats_stage=spec.stats_stage(spec.make_params(parameters)), license="apache-2.0",
        eval_rows=(EvalRow(task="mb_gsm8k", metric="exact_match", value=0.0625),
                   EvalRow(task="mb_humaneval_plus", metric="pass@1", value=0.0312)))


def example_expert_manifest() -> ExpertManifest:
    """The manifest of a math expert of SmolLM2-135M trained with the paper's recipe (numbers are placeholders)."""
    data = DATASETS["math"]
    return ExpertManifest(
        mergebench_train_version=MANIFEST_VERSION, model_name="smollm2-135m-math", domain="math",
        base=PinnedInput(source=BASE, repo_id=BASE, revision=_sha(BASE)),
        data={"math": PinnedInput(source=data, repo_id=data, revision=_sha(data))},
        stats={"rows": 98_000, "tokens": 41_200_000, "response_tokens": 30_900_000, "rows_dropped": 12, "steps": 250,
               "train_tokens": 81_900_000, "final_loss": 0.6124, "train_seconds": 5_410.0, "seconds": 5_530.0,
               "devices": 8, "gradient_accumulation": 5, "per_domain": {}},
        losses=[[1, 1.4321], [125, 0.7342], [250, 0.6124]], prompt_format_version=PROMPT_FORMAT_VERSION,
        config=load_train_config("paper").model_dump(),
        eval_results=[{"task": "mb_gsm8k", "metric": "exact_match", "value": 0.0938, "dataset": "mergebench-eval"}],
        license="apache-2.0", license_warning=None)


def example_domain_report() -> DomainReport:
    """The build report of the math domain dataset, from its two pinned sources (numbers are placeholders that
    add up: read − filtered − duplicates − contaminated = train + validation)."""
    domain = get_domain("math")
    counts = {"dart-math-hard": (585_392, 100_000, 28_000, 170, 71_824),  # loaded, read, filtered, dups, kept
              "numinamath-tir": (72_441, 72_441, 2_000, 111, 70_326)}
    sources = [SourceRow(key=key, repo_id=SOURCES[key].repo_id, config=SOURCES[key].config,
                         split=SOURCES[key].split, requested_revision=None, sha=_sha(SOURCES[key].repo_id),
                         license=SOURCES[key].license, rows_loaded=counts[key][0], rows_read=counts[key][1],
                         rows_filtered=counts[key][2], rows_kept=counts[key][4]) for key in domain.sources]
    removed = {"gsm8k": 3, "math": 7}
    eval_sets = {name: EvalSetRemoval(texts=100, indexed=100, too_short=0, removed=removed[name])
                 for name in domain.eval_sets}
    return DomainReport(
        format_version=1, domain="math", mergebench_version="0.1.0", sources=sources,
        dedup={"rows_in": 142_441, "exact_removed": 201, "near_removed": 80, "ngram": 5, "num_perm": 128,
               "bands": 32, "threshold": 0.8, "duplicates": [],
               "removed_by_source": {key: c[3] for key, c in counts.items()}},
        decontamination={"ngram": 13, "min_words": 8, "rows_in": 142_160, "removed": 10,
                         "eval_origin": "mergebench.data.evalsets (packaged data + fixtures)", "eval_sets": eval_sets,
                         "removed_ids": {}},
        split={"seed": domain.seed, "requested": domain.validation_rows, "train_rows": 141_150,
               "validation_rows": 1_000, "rule": f"min({domain.validation_rows}, n // 5) rows, whole prompt groups, "
                                                 f"numpy PCG64 seed {domain.seed}"},
        languages={"en": 142_150})


def example_eval_configs() -> list[EvalConfig]:
    """Four configs of ``mergebench-eval`` (two test sets, a validation surrogate, a forgetting task)."""
    rows = {"gsm8k": 100, "math": 4, "mmlu_stem": 3, "mmlu": 3}  # the shipped package data and fixtures
    return [EvalConfig(name=s.name, domain=s.domain, role=s.role, origin=s.origin, upstream=s.upstream,
                       license=s.license, shipped_license=s.shipped_license, citation=s.citation, package=s.package,
                       note=s.note, languages=list(s.languages), text_fields=list(s.text_fields),
                       rows=dict.fromkeys(s.splits, rows[s.name]))
            for s in (EVAL_SETS[name] for name in rows)]


def _folder_readme(title: str, rows: list[tuple[str, str, str]]) -> str:
    table = "\n".join(f"| [`{file}`]({file}) | {what} | `{template}` |" for file, what, template in rows)
    return (f"# {title}\n\n"
            "Generated examples, not real cards: `python -m mergebench.docs` renders them from fixed records in\n"
            "`mergebench/docs.py` with the templates shipped inside the package (`mergebench/cards/templates/`),\n"
            "exactly as MergeBench renders the card of a merge, a trained expert or a dataset build. Inputs,\n"
            "revisions and numbers are fixed placeholders, not measurements. A test fails when these files differ\n"
            "from what the code renders: after changing a template or a renderer, run `python -m mergebench.docs`.\n\n"
            f"| file | card of | template |\n|---|---|---|\n{table}\n")


def example_cards() -> dict[str, str]:
    """Path (relative to the repository) → text of every example card and of the two folders' README.md."""
    merged = {f"model_cards/merged-{m.replace('_', '-')}.md": str(render_merged_card(example_merged_card(m)))
              for m in EXAMPLE_PARAMETERS}
    math = get_domain("math")
    return {
        **merged,
        "model_cards/expert.md": str(render_expert_card(example_expert_manifest())),
        "datasets_cards/domain-math.md": str(domain_card(
            example_domain_report(), math, [SOURCES[k] for k in math.sources], repo_id=DATASETS["math"])),
        "datasets_cards/eval.md": str(eval_card(example_eval_configs(), repo_id=f"{ORG}/mergebench-eval")),
        "model_cards/README.md": _folder_readme("Example model cards", [
            *[(path.removeprefix("model_cards/"), f"a `{m}` merge of two experts", "merged.md")
              for path, m in zip(merged, EXAMPLE_PARAMETERS, strict=True)],
            ("expert.md", "a math expert fine-tuned from the base", "expert.md")]),
        "datasets_cards/README.md": _folder_readme("Example dataset cards", [
            ("domain-math.md", "the math domain's training dataset", "domain.md"),
            ("eval.md", "the evaluation sets (`mergebench-eval`)", "eval.md")]),
    }


PAGES: dict[str, Callable[[], str]] = {"methods.md": methods_markdown}
"""Pages of ``docs/``."""


def generated_files() -> dict[str, str]:
    """Path (relative to the repository) → contents of every generated file."""
    return {**{f"docs/{name}": render() for name, render in PAGES.items()}, **example_cards()}


def main() -> None:
    for relative, text in generated_files().items():
        path = ROOT / relative
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
        logger.info("wrote %s", path)


if __name__ == "__main__":
    main()
