"""A grid point: one merge of one base's experts with one parameter set, scored on the validation tasks.

A point is a self-contained, resumable unit of work: :class:`GridPoint` holds everything it needs (the
recipe with absolute or pinned model references, the validation settings and the experts' validation
results to normalise by), its ``id`` is a digest of all of that plus the inputs' fingerprints, and its
record is written atomically to ``grid/<method>/<id>.json`` only when it is finished. A killed run leaves
either no record (the point runs again; an interrupted merge resumes from its verified shards) or a
complete one (the point is skipped). Points are independent, so they can also run elsewhere — e.g. one
Hugging Face Job per point — and be collected by copying their records into the run folder.
"""

from __future__ import annotations

import json
import logging
import shutil
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mergebench.domains import Domain
from mergebench.eval.results import Results, results_from_dict
from mergebench.methods import get
from mergebench.work import Stage, fingerprint_of, is_current, read_record, write_atomic, write_record

logger = logging.getLogger(__name__)

RECORD_VERSION = 1


@dataclass(frozen=True)
class GridPoint:
    base: str
    """The base's label."""
    method_key: str
    """The method row's file-system name (label or method)."""
    recipe: dict[str, Any]
    """A complete merge recipe (``mergebench.merge.recipe.MergeRecipe`` fields)."""
    validation_tasks: tuple[str, ...]
    """Empty: the point is the method's only one and needs no validation score."""
    eval_settings: dict[str, Any] = field(default_factory=dict)
    fingerprints: dict[str, str] = field(default_factory=dict)
    """Model reference → content fingerprint (commit sha, or a digest of a local folder's files)."""

    @property
    def parameters(self) -> dict[str, Any]:
        return dict(self.recipe.get("parameters") or {})

    @property
    def fingerprint(self) -> str:
        """Everything the point is built from (:func:`mergebench.work.fingerprint_of`): its record is reused
        only when the record carries this fingerprint. The method's ``version`` (bumped when a fix changes its
        numbers) is part of it, so a resumed run never keeps a merge made by the method's older code."""
        return fingerprint_of({"recipe": self.recipe, "validation": self.validation_tasks,
                               "settings": self.eval_settings, "inputs": self.fingerprints,
                               "method_version": get(self.recipe["method"]).version, "version": RECORD_VERSION})

    @property
    def id(self) -> str:
        """The point's file-system name: the first 16 hex digits of its :attr:`fingerprint`."""
        return self.fingerprint[:16]


@dataclass(frozen=True)
class PointRecord:
    """What a finished point leaves behind (``grid/<method>/<id>.json``)."""

    id: str
    fingerprint: str
    """The :attr:`GridPoint.fingerprint` the record was made from (the resume decision compares it)."""
    method_key: str
    parameters: dict[str, Any]
    recipe: dict[str, Any]
    """The pinned recipe the engine wrote (Hub references resolved to commit shas)."""
    merge_seconds: float
    stats_seconds: float
    peak_memory_bytes: int
    validation_seconds: float
    score: float | None
    validation: dict[str, Any] | None
    """The validation results document, or ``None`` for a single-point grid."""

    @property
    def validation_results(self) -> Results | None:
        return results_from_dict(self.validation, "grid point") if self.validation else None

    def to_dict(self) -> dict[str, Any]:
        return {"record_version": RECORD_VERSION, **self.__dict__}

    @classmethod
    def load(cls, path: Path, point: GridPoint) -> PointRecord | None:
        """The record of ``point`` at ``path``, or ``None`` unless it was finished from exactly ``point``
        (:func:`mergebench.work.is_current`: missing, unreadable, other fingerprint or record version)."""
        data = read_record(path) if is_current(path, point.fingerprint) else None
        if data is None or data.pop("record_version", None) != RECORD_VERSION:
            return None
        return cls(**data)


def run_point(point: GridPoint, *, model_dir: Path, record_path: Path, experts_validation: dict[Domain, Results],
              merge_options: Any, eval_options: Any, eval_data: str | None, refusal_judge: str | None,
              progress: bool) -> PointRecord:
    """Merge (or reuse the merged folder of) ``point``, score it on its validation tasks (safety surrogates judged
    by ``refusal_judge``, :func:`mergebench.eval.evaluate`), write its record."""
    from mergebench.eval import evaluate
    from mergebench.eval.scores import normalised
    from mergebench.merge.engine import RECIPE_FILE
    from mergebench.merge.recipe import MergeRecipe
    from mergebench.runner.isolated import merge_in_child

    started = time.perf_counter()
    merged = Stage("merge", {"point": point.fingerprint})
    merge_record = model_dir.with_name(f"{model_dir.name}.merge.json")
    if (model_dir / RECIPE_FILE).is_file() and is_current(merge_record, merged.fingerprint):
        logger.info("Reusing the merged model in %s", model_dir)
        stats = (read_record(merge_record) or {})["outputs"]
    else:
        shutil.rmtree(model_dir, ignore_errors=True)  # finished but unrecorded: its timings are lost, merge again
        result = merge_in_child(point.recipe, model_dir, options=merge_options)  # its own peak memory
        stats = {"merge_seconds": result.seconds, "stats_seconds": result.stats_seconds,
                 "peak_memory_bytes": result.peak_rss_bytes}
        write_record(merge_record, merged, outputs=stats)
    pinned = MergeRecipe.from_yaml(model_dir / RECIPE_FILE).model_dump(exclude_defaults=True)
    validation, score, validation_seconds = None, None, 0.0
    if point.validation_tasks:
        eval_started = time.perf_counter()
        results = evaluate(str(model_dir), tasks=list(point.validation_tasks), eval_data=eval_data,
                           refusal_judge=refusal_judge, options=eval_options, progress=progress,
                           model_info={"role": "merged", "method": point.recipe["method"], "base_model": point.base,
                                       "parameters": point.parameters, "grid_point": point.id})
        validation_seconds = time.perf_counter() - eval_started
        validation, score = results.to_dict(), normalised(results, experts_validation, validation=True)[0]
    record = PointRecord(id=point.id, fingerprint=point.fingerprint, method_key=point.method_key,
                         parameters=point.parameters, recipe=pinned,
                         merge_seconds=stats["merge_seconds"], stats_seconds=stats["stats_seconds"],
                         peak_memory_bytes=stats["peak_memory_bytes"], validation_seconds=validation_seconds,
                         score=score, validation=validation)
    write_atomic(record_path, json.dumps(record.to_dict(), indent=1, default=str))
    logger.info("Grid point %s %s: score %s (%.1fs)", point.method_key, point.parameters, score,
                time.perf_counter() - started)
    return record
