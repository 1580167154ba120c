"""Model cards for merged models: the ``merged`` template of :mod:`mergebench.cards`, filled from a typed
:class:`MergedCard` record (built from the finished merge, or by hand for the examples in ``model_cards/``).

The front matter is what the Hub indexes: ``base_model`` lists the merged models (Hub ids only),
``base_model_relation: merge`` puts the model in its parents' model trees, ``tags`` name MergeBench and
the method, ``license`` is inherited from the parents (with a visible warning when they disagree), and
``model-index`` carries evaluation results when there are any.
"""

from __future__ import annotations

import dataclasses
import logging
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml
from huggingface_hub import EvalResult, ModelCard, ModelCardData

from mergebench.cards import template_path
from mergebench.hub.models import ResolvedModel
from mergebench.methods import MethodSpec, Params
from mergebench.stream.format import DTYPES

if TYPE_CHECKING:
    from mergebench.merge.options import MergeResult
    from mergebench.merge.recipe import MergeRecipe

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class EvalRow:
    """One score for ``model-index``: a task (dataset) and a metric."""

    task: str
    metric: str
    value: float
    dataset: str = "mergebench-eval"


def model_index(rows: Sequence[EvalRow]) -> list[EvalResult] | None:
    """``model-index`` results, one per row. Each task is its own dataset config: huggingface_hub groups results
    by (task type, dataset type, config, split, revision), so without it every task's metric lands under the
    first task's name."""
    return [EvalResult(task_type="text-generation", dataset_type=r.dataset, dataset_name=r.task, dataset_config=r.task,
                       metric_type=r.metric, metric_value=r.value) for r in rows] or None


def _is_repo_id(text: str) -> bool:
    return text.count("/") == 1 and not text.startswith((".", "/", "~")) and not text.endswith(".jsonl")


def _dataset_ids(data: dict[str, str]) -> list[str] | None:
    """Hub ids of the recipe's validation datasets (``org/name@sha`` loses its revision; files are left out)."""
    ids = {value.split("@", 1)[0] for value in data.values()}
    return sorted(i for i in ids if _is_repo_id(i)) or None


def _human(n: int) -> str:
    if n < 1000:
        return f"{n} B"
    size = n / 1000
    for unit in ("KB", "MB", "GB", "TB"):
        if size < 1000:
            return f"{size:.1f} {unit}"
        size /= 1000
    return f"{size:.1f} PB"


def inherited_license(models: Sequence[ResolvedModel]) -> tuple[str | None, str | None]:
    """The parents' common license and, when they disagree, a warning to show on the card."""
    licenses: dict[str, str | None] = {}
    for model in models:
        text = model.read_text("README.md")
        licenses[model.label] = ModelCard(text).data.to_dict().get("license") if text else None
    known = {v for v in licenses.values() if v}
    if len(known) == 1 and None not in licenses.values():
        return known.pop(), None
    if not known:
        return None, None
    detail = ", ".join(f"{k}: {v or 'none stated'}" for k, v in licenses.items())
    warning = f"The merged models carry different licenses ({detail}). Check every one before using this model."
    logger.warning(warning)
    return "other", warning


@dataclass(frozen=True)
class CardInput:
    """One pinned input of a merge, as the card lists it."""

    name: str
    """The Hub id, or a local folder's public path (never an absolute path)."""
    revision: str
    """The commit sha that was read, or ``local``."""
    repo_id: str | None = None
    """The Hub id when the input is a Hub model (these go into ``base_model``)."""
    domain: str | None = None
    weight: float | None = None


@dataclass(frozen=True)
class MergeCost:
    """What the merge cost, as the card's *Cost* table shows it."""

    seconds: float
    peak_rss_bytes: int
    bytes_read: int
    output_bytes: int


@dataclass(frozen=True)
class MergedCard:
    """Everything a merged model's card states, typed: built from a finished merge by :func:`merged_card`, or
    written out by hand (the examples in ``model_cards/``). The method's title, paper and formula come from the
    method's declared metadata (:class:`~mergebench.methods.MethodSpec`), never from its docstring."""

    model_name: str
    method: MethodSpec[Any]
    recipe: MergeRecipe
    """The published recipe (every Hub reference pinned); its parameters, data and options are shown."""
    base: CardInput
    experts: tuple[CardInput, ...]
    cost: MergeCost
    out_dtype: str
    """The output dtype(s) of the merged tensors, e.g. ``bfloat16``."""
    stats_stage: str | None = None
    license: str | None = None
    license_warning: str | None = None
    eval_rows: tuple[EvalRow, ...] = ()


def merged_card(recipe: MergeRecipe, spec: MethodSpec[Any], params: Params, models: Sequence[ResolvedModel],
                result: MergeResult, eval_rows: Sequence[EvalRow] = ()) -> MergedCard:
    """The card record of a finished merge (``models``: experts then base, resolved); reads the parents' licenses."""
    *experts, base = models
    license_id, license_warning = inherited_license(models)
    inputs = [CardInput(name=m.ref.public_name, revision=m.sha or "local", repo_id=m.ref.repo_id)
              for m in [base, *experts]]
    inputs[1:] = [dataclasses.replace(c, domain=item.domain, weight=item.weight)
                  for c, item in zip(inputs[1:], recipe.models, strict=True)]
    out_dtypes = sorted({str(DTYPES[t.out_dtype]).removeprefix("torch.") for t in result.plan.tensors if t.mergeable})
    return MergedCard(
        model_name=result.out_dir.name, method=spec, recipe=recipe, base=inputs[0], experts=tuple(inputs[1:]),
        cost=MergeCost(seconds=result.seconds, peak_rss_bytes=result.peak_rss_bytes, bytes_read=result.bytes_read,
                       output_bytes=result.plan.output_bytes),
        out_dtype=", ".join(out_dtypes) or "the base's dtype", stats_stage=spec.stats_stage(params),
        license=license_id, license_warning=license_warning, eval_rows=tuple(eval_rows))


def render_merged_card(card: MergedCard) -> ModelCard:
    """The model card (front matter and body) of a :class:`MergedCard`, from the ``merged`` template."""
    recipe = card.recipe
    hub_ids = [m.repo_id for m in [card.base, *card.experts] if m.repo_id]
    card_data = ModelCardData(
        base_model=hub_ids or None,
        base_model_relation="merge" if hub_ids else None,
        library_name="transformers",
        license=card.license,
        tags=["mergebench", "merge", card.method.name],
        datasets=_dataset_ids(recipe.data),
        model_name=card.model_name,
        eval_results=model_index(card.eval_rows),
    )
    rendered: ModelCard = ModelCard.from_template(
        card_data,
        template_path=str(template_path("merged")),
        model_name=card.model_name,
        method=card.method,
        parameters=dict(recipe.method_parameters),
        merge_embeddings=recipe.merge_embeddings,
        stats_stage=card.stats_stage,
        out_dtype=card.out_dtype,
        base=card.base,
        experts=list(card.experts),
        recipe_yaml=yaml.safe_dump(recipe.model_dump(exclude_defaults=True), sort_keys=False, allow_unicode=True),
        seconds=card.cost.seconds,
        peak_memory=_human(card.cost.peak_rss_bytes),
        bytes_read=_human(card.cost.bytes_read),
        output_size=_human(card.cost.output_bytes),
        license_warning=card.license_warning,
        eval_rows=list(card.eval_rows),
    )
    return rendered


def render_model_card(recipe: MergeRecipe, spec: MethodSpec[Any], params: Params, models: Sequence[ResolvedModel],
                      result: MergeResult, eval_rows: Sequence[EvalRow] = ()) -> ModelCard:
    """Render the card of a finished merge (``models``: experts then base, resolved)."""
    return render_merged_card(merged_card(recipe, spec, params, models, result, eval_rows))


def write_model_card(folder: Path, recipe: MergeRecipe, spec: MethodSpec[Any], params: Params,
                     models: Sequence[ResolvedModel], result: MergeResult,
                     eval_rows: Sequence[EvalRow] = ()) -> Path:
    card = render_model_card(recipe, spec, params, models, result, eval_rows)
    path = folder / "README.md"
    card.save(path)
    return path
