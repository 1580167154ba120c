"""A results file's scores in the scored model's own Hub repo, and results rebuilt from model repos alone.

:func:`publish_scores` turns :class:`~mergebench.eval.results.Results` into one commit to the model repo
(:func:`mergebench.hub.eval_results.push_scores`):

* ``.eval_results/{task}.yaml`` per scored task: the Hub's own format (an
  :class:`~huggingface_hub.EvalResultEntry`: the evaluation dataset and the commit it was read at, the task
  id of that dataset's ``eval.yaml``, the raw score, when it was measured and, with a results dataset, a link
  to it), so the score shows on the model page and on the benchmark's leaderboard. One file per task, named
  after it: scoring again replaces it;
* the card's ``model-index`` (the same scores, one result per task and main metric);
* a ``mergebench`` block in the card's front matter with what the scores alone do not say and a
  leaderboard needs: the model's role (merged, expert, base, multi-task), its base, method, parameters and
  experts, the evaluation settings (the refusal judge among them: a safety score means little without it), the
  run and its cost, and each task's domain, version and standard error.

Only scores measured on a **Hub** evaluation dataset can be published: an entry must name the benchmark
dataset and the revision it was read at (packaged or local data has neither).

:func:`results_from_model_repo` is the way back: the entries (values) and the card (everything else) of one
model repo at one revision become a ``Results`` the leaderboard reads like any results file.
"""

from __future__ import annotations

import logging
import re
from collections.abc import Mapping
from dataclasses import dataclass, replace
from typing import Any

from huggingface_hub import EvalResultEntry, HfApi

from mergebench.errors import ScoresError
from mergebench.eval.results import SCHEMA_VERSION, Results, TaskResult
from mergebench.hub.eval_results import RepoScores, ScoreCommit, push_scores, read_scores, weights_id
from mergebench.hub.refs import Ref
from mergebench.merge.card import EvalRow, model_index

logger = logging.getLogger(__name__)

CARD_KEY = "mergebench"
"""The card front-matter key of the block :func:`publish_scores` writes."""
CARD_BLOCK_VERSION = 1
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]{0,95}/[\w.-]{1,96}$")
MODEL_FIELDS = ("role", "base_model", "domain", "method", "parameters", "experts", "label")
"""The ``model`` fields of a results file the leaderboard groups and labels rows by."""


@dataclass(frozen=True)
class Target:
    """Where scores go and what they were measured on: a model repo at the scored commit, and the Hub
    evaluation dataset at the commit its rows were read at."""

    repo_id: str
    revision: str
    dataset_id: str
    dataset_revision: str


def publish_target(repo_id: str | None, revision: str | None, eval_data: Mapping[str, Any]) -> Target:
    """Check that scores of ``repo_id``@``revision`` measured on ``eval_data`` (a results file's ``eval_data``
    block, or an :meth:`~mergebench.eval.data_source.EvalSource.describe`) can be published.

    Raises:
        ScoresError: the model is not a Hub repo pinned to a commit, or the data is not a pinned Hub dataset.
    """
    name = str(repo_id)
    if repo_id is None or not _HUB_ID.match(repo_id) or not revision or revision.startswith("local:"):
        raise ScoresError(f"'{name}' is not a Hub model repo pinned to a commit: there is nowhere to write its "
                          "scores.", repo_id=name,
                          hint="Push the model first (e.g. `mergebench merge ... --push-to org/name`), then "
                               "evaluate org/name, or pass the repo and the commit its weights were pushed in.")
    if eval_data.get("kind") != "hub" or not eval_data.get("location") or not eval_data.get("revision"):
        raise ScoresError(
            f"The scores of '{name}' come from {eval_data.get('kind') or 'unknown'} evaluation data, not from a Hub "
            "evaluation dataset: eval results must name the benchmark dataset and its revision.", repo_id=name,
            hint="Evaluate with --eval-data org/mergebench-eval (a dataset pushed with "
                 "`mergebench data eval-sets --push-to org/mergebench-eval`).")
    return Target(repo_id, revision, str(eval_data["location"]), str(eval_data["revision"]))


def _scored(results: Results) -> dict[str, TaskResult]:
    return {name: t for name, t in results.tasks.items() if t.status == "ok" and t.score is not None}


def _notes(results: Results, task: TaskResult) -> str:
    """The evaluation setup in a few words, shown next to the score on the Hub: a safety task's judge among them,
    since the same responses score differently under the rule-based judge and a classifier."""
    notes = f"{task.main_metric}, {task.num_samples} samples, MergeBench task version {task.version}"
    if results.settings.get("max_samples") is not None:
        notes += f" (partial: at most {results.settings['max_samples']} per task)"
    judge = task.side_info.get("judge")
    if judge:
        notes += f", judged by {judge['name']}"
    return notes


def eval_result_entries(results: Results, target: Target, *, source_url: str | None = None
                        ) -> dict[str, list[EvalResultEntry]]:
    """``{task name: [entry]}``: one ``.eval_results`` file per scored task (failed tasks have no score).

    Args:
        source_url: where the full results are (a results dataset), shown as the entries' source.
    """
    source = {"source_url": source_url, "source_name": "MergeBench results"} if source_url else {}
    return {name: [EvalResultEntry(dataset_id=target.dataset_id, task_id=name, value=float(task.score or 0.0),
                                   dataset_revision=target.dataset_revision,
                                   date=task.finished_at or results.run.get("finished_at") or None,
                                   notes=_notes(results, task), **source)]
            for name, task in _scored(results).items()}


def eval_rows(results: Results, *, dataset: str | None = None) -> list[EvalRow]:
    """One ``model-index`` row per scored task; ``dataset`` defaults to the Hub evaluation dataset, if any."""
    hub = results.eval_data.get("location") if results.eval_data.get("kind") == "hub" else None
    return [EvalRow(task=name, metric=t.main_metric, value=float(t.score or 0.0),
                    dataset=dataset or hub or "mergebench-eval") for name, t in _scored(results).items()]


def card_block(results: Results) -> dict[str, Any]:
    """The ``mergebench`` card block: what a leaderboard needs that ``.eval_results`` entries do not hold."""
    tasks = _scored(results)
    return {
        "version": CARD_BLOCK_VERSION,
        "model": {k: results.model.get(k) for k in MODEL_FIELDS if results.model.get(k) is not None},
        "settings": {k: results.settings.get(k) for k in ("suite", "backend", "max_samples", "judge")},
        "run": {k: results.run.get(k) for k in ("id", "started_at", "finished_at", "status")},
        "cost": dict(results.cost),
        "eval_data": {k: results.eval_data.get(k) for k in ("location", "revision")},
        "tasks": {name: {"domain": t.domain, "role": t.role, "version": t.version, "main_metric": t.main_metric,
                         "stderr": t.stderr.get(t.main_metric)} for name, t in tasks.items()},
    }


def publish_scores(results: Results, *, repo_id: str | None = None, revision: str | None = None,
                   results_repo: str | None = None, api: HfApi | None = None) -> str:
    """Write ``results`` into the scored model's repo: ``.eval_results/*.yaml``, ``model-index`` and the
    ``mergebench`` card block, in one commit. Returns the commit URL.

    Args:
        repo_id: the model repo; default: the results' model, when it is a Hub repo.
        revision: the commit whose weights were scored; default: the results' pinned revision.
        results_repo: the results dataset the full results went to, linked from every entry.

    Raises:
        ScoresError: no model repo to write to, results not scored on a Hub evaluation dataset, or the repo's
            weights changed since ``revision``.
    """
    api = api or HfApi()
    target = publish_target(repo_id or results.model.get("id"), revision or results.model.get("revision"),
                            results.eval_data)
    source_url = f"{api.endpoint}/datasets/{results_repo}" if results_repo else None
    entries = eval_result_entries(results, target, source_url=source_url)
    commit = ScoreCommit(files=entries, model_index=model_index(eval_rows(results)) or (),
                         metadata={CARD_KEY: card_block(results)})
    return push_scores(target.repo_id, commit, revision=target.revision, weights=results.model.get("weights"),
                       api=api, commit_message=f"MergeBench scores: {len(entries)} task(s)")


def pushed(results: Results, repo_id: str, revision: str, *, api: HfApi | None = None) -> Results:
    """``results`` of a local folder that was then pushed unchanged to ``repo_id`` at ``revision``: the model is
    named by the repo and its weights (so links, results rows and scores point at it); ``pushed_from`` keeps
    the folder."""
    model = results.model
    origin = {"id": model.get("id"), "revision": model.get("revision")}
    return replace(results, model={**model, "id": repo_id, "revision": revision, "pushed_from": origin,
                                   "weights": weights_id(repo_id, revision, api=api)})


def _task(name: str, entry: EvalResultEntry, info: Mapping[str, Any]) -> TaskResult:
    stderr = info.get("stderr")
    return TaskResult(name=name, status="ok", domain=info["domain"], role=info["role"], version=int(info["version"]),
                      main_metric=info["main_metric"], score=float(entry.value),
                      metrics={info["main_metric"]: float(entry.value)},
                      stderr={info["main_metric"]: float(stderr)} if stderr is not None else {},
                      finished_at=str(entry.date or ""))


def results_from_scores(scores: RepoScores) -> Results:
    """A ``Results`` from a model repo's ``.eval_results`` entries (the scores) and card block (the rest).

    Only entries of the evaluation dataset and tasks the card block names are read: other benchmarks' scores
    in the same repo are left alone.

    Raises:
        ScoresError: the card has no ``mergebench`` block, or it names no task the repo has an entry for.
    """
    block = scores.card.data.to_dict().get(CARD_KEY)
    if not isinstance(block, dict) or block.get("version") != CARD_BLOCK_VERSION:
        raise ScoresError(f"Model repo '{scores.repo_id}'@{scores.revision} has no MergeBench scores (no "
                          f"'{CARD_KEY}' block of version {CARD_BLOCK_VERSION} in its card).", repo_id=scores.repo_id,
                          hint="Publish them with `mergebench eval MODEL --eval-data ORG/EVAL --push-eval-results`.")
    dataset = block["eval_data"]["location"]
    tasks = {e.task_id: _task(e.task_id, e, block["tasks"][e.task_id]) for e in scores.entries
             if e.dataset_id == dataset and e.task_id in block["tasks"]}
    if not tasks:
        raise ScoresError(f"Model repo '{scores.repo_id}'@{scores.revision} has no .eval_results entries for "
                          f"'{dataset}' although its card names MergeBench tasks.", repo_id=scores.repo_id,
                          hint="Publish the scores again with `mergebench eval ... --push-eval-results`.")
    return Results(model={"id": scores.repo_id, "revision": scores.revision, "weights": scores.weights,
                          **block["model"]},
                   settings=dict(block["settings"]), run=dict(block["run"]),
                   eval_data={"kind": "hub", **block["eval_data"]}, cost=dict(block["cost"]), tasks=tasks,
                   schema_version=SCHEMA_VERSION)


def results_from_model_repo(ref: str, *, api: HfApi | None = None) -> Results:
    """The MergeBench results held by model repo ``ref`` (``org/name[@revision]``; pinned to one commit)."""
    parsed = Ref.parse(ref, repo_type="model")
    if parsed.repo_id is None:
        raise ScoresError(f"'{ref}' is a local path, not a Hub model repo.", repo_id=ref,
                          hint="Give org/name or org/name@revision.")
    return results_from_scores(read_scores(parsed.repo_id, revision=parsed.revision, api=api))


__all__ = ["CARD_KEY", "Target", "card_block", "eval_result_entries", "eval_rows", "publish_scores", "publish_target",
           "pushed",
           "results_from_model_repo", "results_from_scores"]
