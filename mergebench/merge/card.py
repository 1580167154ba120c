"""Model cards for merged models: the ``merged`` template of :mod:`mergebench.cards`, filled from the merge.

The front matter is what the Hub indexes: ``base_model`` lists the merged models (Hub ids only),
``base_model_relation: merge`` puts the model in its parents' model trees, ``tags`` name MergeBench and
the method, ``license`` is inherited from the parents (with a visible warning when they disagree), and
``model-index`` carries evaluation results when there are any.
"""

from __future__ import annotations

import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from mergebench.cards import template_path
from mergebench.hub.models import ResolvedModel
from mergebench.methods import MethodSpec, Params
from mergebench.stream.format import DTYPES

if TYPE_CHECKING:
    from mergebench.merge.engine import MergeResult
    from mergebench.merge.recipe import MergeRecipe

logger = logging.getLogger(__name__)



@dataclass(frozen=True)
class EvalRow:
    """One score for ``model-index``: a task (dataset) and a metric."""

    task: str
    metric: str
    value: float
    dataset: str = "mergebench-eval"


def _is_repo_id(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and not text.endswith(".jsonl")


def _human(n: int) -> str:
    for unit in ("B", "KB", "MB", "GB", "TB"):
        if n < 1000:
            return f"{n:.1f} {unit}" if unit != "B" else f"{n} B"
        n /= 1000
    return f"{n:.1f} PB"


def inherited_license(models: Sequence[ResolvedModel]) -> tuple[str | None, str | None]:
    """The parents' common license and, when they disagree, a warning to show on the card."""
    licenses: dict[str, str | None] = {}
    for model in models:
        text = model.read_text("README.md")
        licenses[model.label] = ModelCard(text).data.license if text else None
    known = {v for v in licenses.values() if v}
    if len(known) == 1 and None not in licenses.values():
        return known.pop(), None
    if not known:
        return None, None
    detail = ", ".join(f"{k}: {v or 'none stated'}" for k, v in licenses.items())
    warning = f"The merged models carry different licenses ({detail}). Check every one before using this model."
    logger.warning(warning)
    return "other", warning


def render_model_card(recipe: MergeRecipe, spec: MethodSpec, params: Params, models: Sequence[ResolvedModel],
                      result: MergeResult, eval_rows: Sequence[EvalRow] = ()) -> ModelCard:
    """Render the card of a finished merge (``models``: experts then base, resolved)."""
    *experts, base = models
    license_id, license_warning = inherited_license(models)
    hub_ids = [m.ref.repo_id for m in [base, *experts] if m.ref.repo_id]
    card_data = ModelCardData(
        base_model=hub_ids or None,
        base_model_relation="merge" if hub_ids else None,
        library_name="transformers",
        license=license_id,
        tags=["mergebench", "merge", spec.name],
        datasets=sorted(v for v in recipe.data.values() if _is_repo_id(v)) or None,
        model_name=result.out_dir.name,
        eval_results=[
            EvalResult(task_type="text-generation", dataset_type=r.dataset, dataset_name=r.task,
                       metric_type=r.metric, metric_value=r.value)
            for r in eval_rows
        ] or None,
    )
    entries = [{"name": m.ref.public_name, "revision": m.sha or "local"} for m in [base, *experts]]
    for entry, item in zip(entries[1:], recipe.models, strict=True):
        entry.update(domain=item.domain, weight=item.weight)
    paragraphs = spec.doc.split("\n\n")
    formula = paragraphs[1] if len(paragraphs) > 1 else spec.title
    out_dtypes = sorted({str(DTYPES[t.out_dtype]).removeprefix("torch.") for t in result.plan.tensors if t.mergeable})
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path("merged")),
        model_name=result.out_dir.name,
        method={"name": spec.name, "title": spec.title, "version": spec.version, "paper": spec.paper,
                "formula": formula.strip()},
        parameters=dict(recipe.method_parameters),
        merge_embeddings=recipe.merge_embeddings,
        out_dtype=", ".join(out_dtypes) or "the base's dtype",
        base=entries[0],
        experts=entries[1:],
        recipe_yaml=yaml.safe_dump(recipe.model_dump(exclude_defaults=True), sort_keys=False),
        seconds=result.seconds,
        peak_memory=_human(result.peak_rss_bytes),
        bytes_read=_human(result.bytes_read),
        output_size=_human(result.plan.output_bytes),
        license_warning=license_warning,
        eval_rows=list(eval_rows),
    )


def write_model_card(folder: Path, recipe: MergeRecipe, spec: MethodSpec, params: Params,
                     models: Sequence[ResolvedModel], result: MergeResult,
                     eval_rows: Sequence[EvalRow] = ()) -> Path:
    card = render_model_card(recipe, spec, params, models, result, eval_rows)
    path = folder / "README.md"
    card.save(path)
    return path
