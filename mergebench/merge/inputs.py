"""What a merge is computed from: the validated recipe, its inputs pinned and resolved, and the plan.

:func:`prepare` reads headers only (no weights): a bad recipe, a missing repo or an incompatible expert fails
here, before any output exists. :func:`inputs_fingerprint` is the identity a resumed merge must match;
:func:`published_recipe` is how the merged folder (and so a push) names its inputs.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergebench import methods
from mergebench.errors import StatisticsError
from mergebench.hub.models import ResolvedModel, resolve
from mergebench.hub.refs import Pin, Ref, public_path
from mergebench.merge.plan import DEFAULT_SHARD_SIZE, MergePlan, build_plan
from mergebench.merge.recipe import MergeRecipe
from mergebench.merge.validation import load_validation_rows, pin_validation_source
from mergebench.methods import MethodSpec, Params
from mergebench.work import fingerprint_of, folder_fingerprint


@dataclass
class MergeInputs:
    """Everything a merge reads, pinned and planned (see :func:`prepare`)."""

    recipe: MergeRecipe
    spec: MethodSpec[Any]
    params: Params
    base: ResolvedModel
    experts: list[ResolvedModel]
    plan: MergePlan
    pinned: MergeRecipe
    tokenizer_source: ResolvedModel
    stage: str | None
    """The statistics stage the method needs with these parameters, or ``None``."""
    rows: dict[str, list[dict[str, Any]]] = field(default_factory=dict)


def load_recipe(config: MergeRecipe | Path | str | dict[str, Any]) -> tuple[MergeRecipe, Path | None]:
    """A recipe from an object, a dict or a YAML path; also returns the folder relative paths start from."""
    if isinstance(config, MergeRecipe):
        return config, None
    if isinstance(config, dict):
        return MergeRecipe.from_dict(config), None
    path = Path(config)
    return MergeRecipe.from_yaml(path), path.parent


def prepare(config: MergeRecipe | Path | str | dict[str, Any], *, shard_size: int = DEFAULT_SHARD_SIZE,
            read_ahead_bytes: int = 512 << 20) -> MergeInputs:
    """Validate the recipe, resolve every model to a commit and plan the merge, reading headers only."""
    recipe, base_dir = load_recipe(config)
    spec = methods.get(recipe.method)
    params = spec.make_params(recipe.method_parameters, weights=recipe.weights)
    stage = spec.stats_stage(params)
    data = _pin_data(recipe, stage, base_dir) if stage else {}
    rows = {domain: load_validation_rows(source) for domain, source in data.items()}
    refs = [Ref.parse(m.model, base_dir=base_dir) for m in recipe.models]
    base_ref = Ref.parse(recipe.base_model, base_dir=base_dir)
    base = resolve(base_ref)
    experts = [resolve(r) for r in refs]
    tok = recipe.tokenizer_source
    tokenizer_source = resolve(Ref.parse(tok, base_dir=base_dir)) if tok else base
    plan = build_plan(base, experts, dtype=recipe.dtype, merge_embeddings=recipe.merge_embeddings,
                      shard_size=shard_size, read_ahead_bytes=read_ahead_bytes)
    pinned = recipe.model_copy(update={
        "base_model": pinned_name(base),
        "models": [m.model_copy(update={"model": pinned_name(e)}) for m, e in zip(recipe.models, experts, strict=True)],
        "tokenizer_source": pinned_name(tokenizer_source) if tok else None,
        "data": {**recipe.data, **{d: p.identity for d, p in data.items() if p.ref.repo_id}},
    })
    return MergeInputs(recipe, spec, params, base, experts, plan, pinned, tokenizer_source, stage, rows)


def _pin_data(recipe: MergeRecipe, stage: str, base_dir: Path | None) -> dict[str, Pin]:
    """Each domain's validation source for a statistics stage, pinned and checked before any model is read."""
    missing = [m.model for m in recipe.models if not m.domain]
    if missing:
        raise StatisticsError(
            f"Method '{recipe.method}' pairs each expert with its own domain's data, but {missing} "
            "have no 'domain:'.", hint="Add 'domain: <key>' to every entry of 'models:'.")
    domains = sorted({m.domain for m in recipe.models if m.domain})
    absent = [d for d in domains if d not in recipe.data]
    if absent:
        raise StatisticsError(
            f"Method '{recipe.method}' ({stage} statistics) needs validation data for domain(s) {absent}.",
            hint="Map each domain to a .jsonl file or a dataset repo in the recipe's 'data:' section.")
    return {d: pin_validation_source(recipe.data[d], base_dir=base_dir) for d in domains}


def published_recipe(inputs: MergeInputs) -> MergeRecipe:
    """The pinned recipe as the merged folder (and so a push) shows it: Hub inputs at their commit, local
    models and data files by :func:`~mergebench.hub.refs.public_path`, never by this machine's absolute paths."""
    pinned = inputs.pinned

    def name(model: ResolvedModel) -> str:
        return pinned_name(model) if model.ref.repo_id else model.ref.public_name

    return pinned.model_copy(update={
        "base_model": name(inputs.base),
        "models": [m.model_copy(update={"model": name(e)}) for m, e in zip(pinned.models, inputs.experts, strict=True)],
        "tokenizer_source": name(inputs.tokenizer_source) if pinned.tokenizer_source else None,
        "data": {domain: public_path(ref) for domain, ref in pinned.data.items()},
    })


def pinned_name(model: ResolvedModel) -> str:
    if model.ref.repo_id:
        return f"{model.ref.repo_id}@{model.sha}"
    return str(model.ref.local_path)


def inputs_fingerprint(inputs: MergeInputs) -> str:
    """What the merge is computed from: the pinned recipe (Hub inputs by commit sha), the plan, the method's
    version and the contents of local inputs (:mod:`mergebench.work`), so ``--resume`` never
    continues from shards or thresholds computed from a file that has changed since."""
    local = [(m.ref.text, folder_fingerprint(m.ref.local_path, m.files))
             for m in (inputs.base, *inputs.experts, inputs.tokenizer_source) if m.ref.local_path is not None]
    doc = {"recipe": inputs.pinned.model_dump(), "shards": [(s.filename, s.tensors) for s in inputs.plan.shards],
           "dtypes": [(t.name, t.out_dtype) for t in inputs.plan.tensors], "version": inputs.spec.version,
           "local_inputs": local}
    return fingerprint_of(doc)
