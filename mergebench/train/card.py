"""The expert model card, rendered from the ``expert`` template (:mod:`mergebench.cards`) with ``huggingface_hub``.

Front matter: ``base_model`` (the base's Hub id) with ``base_model_relation: finetune`` puts the expert in
its parent's model tree; ``datasets`` lists the training datasets' Hub ids; ``license`` is inherited from the
base; ``tags`` name MergeBench and the domain; ``model-index`` carries evaluation results once there are some
(:func:`add_eval_results`, called by the runner after evaluating and before pushing). The card is rendered
from the folder's ``mergebench_train.yaml`` alone, so it can be re-rendered at any time without the run.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypedDict

import yaml
from huggingface_hub import ModelCard, ModelCardData

from mergebench.cards import template_path
from mergebench.errors import ConfigError
from mergebench.eval.hub_results import eval_rows as eval_rows_from_results
from mergebench.merge.card import EvalRow, model_index
from mergebench.prompt import PROMPT_FORMAT_VERSION
from mergebench.work import write_atomic

if TYPE_CHECKING:
    from mergebench.eval.results import Results

MANIFEST = "mergebench_train.yaml"
MANIFEST_VERSION = 1


class PinnedInput(TypedDict):
    """The base or a training dataset as the run read it."""

    source: str
    """What the user passed (a Hub id, ``id@rev`` or a folder's public path)."""
    repo_id: str | None
    revision: str | None
    """The commit sha that was read (``None`` for a local folder)."""


class ExpertManifest(TypedDict, total=False):
    """The contents of ``mergebench_train.yaml``: everything the expert card is rendered from.

    ``stats`` holds ``rows tokens response_tokens rows_dropped steps train_tokens final_loss train_seconds seconds
    devices gradient_accumulation per_domain``; ``config`` is the :class:`~mergebench.train.config.TrainConfig`
    dump; ``eval_results`` are :class:`~mergebench.merge.card.EvalRow` fields.
    """

    mergebench_train_version: int
    model_name: str
    domain: str
    base: PinnedInput
    data: dict[str, PinnedInput]
    stats: dict[str, Any]
    losses: list[list[float]]
    prompt_format_version: int
    config: dict[str, Any]
    eval_results: list[dict[str, Any]]
    license: str | None
    license_warning: str | None


def render_expert_card(manifest: ExpertManifest | Mapping[str, Any]) -> ModelCard:
    """The card of a trained expert from its manifest (the contents of ``mergebench_train.yaml``)."""
    base, domain = manifest["base"], manifest["domain"]
    eval_rows = [EvalRow(**row) for row in manifest.get("eval_results") or []]
    datasets = sorted({d["repo_id"] for d in manifest["data"].values() if d["repo_id"]})
    card_data = ModelCardData(
        base_model=base["repo_id"],
        base_model_relation="finetune" if base["repo_id"] else None,
        library_name="transformers",
        pipeline_tag="text-generation",
        license=manifest.get("license"),
        tags=["mergebench", "mergebench-expert", "multitask" if domain == "all" else domain, "trl", "sft"],
        datasets=datasets or None,
        model_name=manifest["model_name"],
        eval_results=model_index(eval_rows),
    )
    data = [{"domain": d, "name": v["repo_id"] or v["source"], "revision": v["revision"]}
            for d, v in manifest["data"].items()]
    return ModelCard.from_template(
        card_data,
        template_path=str(template_path("expert")),
        model_name=manifest["model_name"],
        domain=domain,
        base={"name": base["repo_id"] or base["source"], "revision": base["revision"] or "local"},
        data=data,
        config=manifest["config"],
        config_yaml=yaml.safe_dump(manifest["config"], sort_keys=False, allow_unicode=True),
        stats=manifest["stats"],
        license_warning=manifest.get("license_warning"),
        prompt_format_version=manifest.get("prompt_format_version", PROMPT_FORMAT_VERSION),
        eval_rows=eval_rows,
    )


def write_manifest_and_card(folder: Path, manifest: Mapping[str, Any]) -> ModelCard:
    """Write ``mergebench_train.yaml`` and ``README.md`` (each replaced atomically); returns the card."""
    card = render_expert_card(manifest)
    write_atomic(folder / MANIFEST, yaml.safe_dump(dict(manifest), sort_keys=False, allow_unicode=True))
    write_atomic(folder / "README.md", str(card))
    return card


def read_manifest(folder: Path) -> dict[str, Any]:
    """The ``mergebench_train.yaml`` of an expert folder.

    Raises:
        ConfigError: the folder has no manifest (it was not written by ``mergebench train``).
    """
    path = Path(folder) / MANIFEST
    if not path.is_file():
        raise ConfigError(f"'{folder}' has no {MANIFEST}; it is not an expert trained by MergeBench.",
                          hint="Pass the output folder of `mergebench train`.")
    return yaml.safe_load(path.read_text(encoding="utf-8"))


def add_eval_results(folder: Path, results: Results) -> None:
    """Add ``results`` to the expert card's ``model-index`` (rows of the same task and metric are replaced).

    Rewrites ``README.md`` and ``mergebench_train.yaml`` in ``folder``; call it after evaluating the expert and
    before pushing it.
    """
    manifest = read_manifest(folder)
    rows = {(r["task"], r["metric"]): r for r in manifest.get("eval_results") or []}
    rows |= {(r.task, r.metric): vars(r) for r in eval_rows_from_results(results)}
    manifest["eval_results"] = list(rows.values())
    write_manifest_and_card(Path(folder), manifest)


def validate_expert_card(card: ModelCard | str) -> None:
    """Check the card's front matter with the Hub (``POST /api/validate-yaml``); raises ``ValueError``."""
    (card if isinstance(card, ModelCard) else ModelCard(card)).validate()


__all__ = ["MANIFEST", "MANIFEST_VERSION", "ExpertManifest", "PinnedInput", "add_eval_results",
           "eval_rows_from_results", "read_manifest", "render_expert_card", "validate_expert_card",
           "write_manifest_and_card"]
