"""Scores in a model repo, the Hub's way: ``.eval_results/*.yaml`` files and the card's ``model-index``.

The Hub reads a model's scores from two places (https://huggingface.co/docs/hub/eval-results):

* YAML files under ``.eval_results/``, each a list of entries naming a benchmark dataset, its revision, a
  task of that dataset's ``eval.yaml`` and a value; they show on the model page and feed the benchmark
  dataset's leaderboard. ``huggingface_hub`` 2.4 models an entry as :class:`~huggingface_hub.EvalResultEntry`
  and converts with ``eval_result_entries_to_yaml`` / ``parse_eval_result_entries``;
* the card's ``model-index`` (the older format most tools read), as :class:`~huggingface_hub.EvalResult`
  in :class:`~huggingface_hub.ModelCard`.

This module only uses those: it never writes either format by hand. Why it works the way it does:

* **One commit** (:func:`push_scores`) holds every file and the card, so the repo never shows half a
  scoring; a file per task with a stable name means scoring again *replaces* that task's entry, and a
  ``model-index`` result for the same dataset, config, split and metric is replaced, never repeated.
  Publishing scores the repo already holds (a resumed run) makes no commit.
* **Pinned.** Scores belong to the weights that were measured: the commit is made on top of the repo's head
  (``parent_commit``, so a concurrent commit fails it instead of being overwritten) and only if the head
  holds the same model as the revision that was scored (:func:`weights_id`: the files that make the model,
  not the card, the scores or other documentation).
* :func:`read_scores` reads them back at one revision (files at that commit, parsed with the same
  ``huggingface_hub`` functions), which is how a leaderboard is rebuilt from model repos alone.
"""

from __future__ import annotations

import hashlib
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml
from huggingface_hub import (
    CommitOperationAdd,
    EvalResult,
    EvalResultEntry,
    HfApi,
    ModelCard,
    ModelCardData,
    eval_result_entries_to_yaml,
    hf_hub_url,
    parse_eval_result_entries,
)
from huggingface_hub.errors import HfHubHTTPError
from huggingface_hub.hf_api import RepoFile

from mergebench.errors import ScoresError
from mergebench.hub.retry import get_bytes, with_retries

logger = logging.getLogger(__name__)

EVAL_RESULTS_DIR = ".eval_results"
CARD = "README.md"


@dataclass(frozen=True)
class ScoreCommit:
    """What one scoring adds to a model repo.

    Args:
        files: ``.eval_results`` file stem (e.g. the task name) → its entries; a stem already in the repo is
            replaced.
        model_index: ``model-index`` results; each replaces the card's result for the same task type,
            dataset, config, split and metric.
        metadata: more card front-matter keys to set (replaced whole), e.g. what a leaderboard needs to know
            about the model that the scores do not say.
    """

    files: Mapping[str, Sequence[EvalResultEntry]]
    model_index: Sequence[EvalResult] = ()
    metadata: Mapping[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class RepoScores:
    """A model repo's scores at one commit: its ``.eval_results`` entries by file, and its card."""

    repo_id: str
    revision: str
    weights: str
    """The :func:`weights_id` at ``revision``."""
    files: dict[str, list[EvalResultEntry]]
    card: ModelCard

    @property
    def entries(self) -> list[EvalResultEntry]:
        return [entry for entries in self.files.values() for entry in entries]


def eval_results_path(stem: str) -> str:
    """Where the entries of ``stem`` live in a model repo: ``.eval_results/{stem}.yaml``."""
    return f"{EVAL_RESULTS_DIR}/{stem}.yaml"


def entries_yaml(entries: Sequence[EvalResultEntry]) -> str:
    """The text of one ``.eval_results`` file (huggingface_hub's serialisation, dumped as YAML)."""
    text: str = yaml.safe_dump(eval_result_entries_to_yaml(list(entries)), sort_keys=False, allow_unicode=True)
    return text


def parse_entries_yaml(text: str, *, repo_id: str, path: str) -> list[EvalResultEntry]:
    """The entries of one ``.eval_results`` file, parsed by huggingface_hub.

    Raises:
        ScoresError: the file is not YAML, not a list of entries, or an entry lacks a required field.
    """
    try:
        data = yaml.safe_load(text)
        if not isinstance(data, list) or not all(isinstance(item, dict) for item in data):
            raise TypeError(f"expected a list of entries, got {type(data).__name__}")
        return parse_eval_result_entries(data)
    except (yaml.YAMLError, TypeError, KeyError, ValueError) as e:
        raise ScoresError(f"'{path}' in model repo '{repo_id}' is not a valid eval results file ({e}).",
                          repo_id=repo_id, hint="See https://huggingface.co/docs/hub/eval-results for the format."
                          ) from e


def _result_key(result: EvalResult) -> tuple[str | None, ...]:
    """Which card results one result replaces: same task type, dataset, config, split and metric."""
    return (result.task_type, result.dataset_type, result.dataset_config, result.dataset_split, result.metric_type)


def scored_card(card: ModelCard, scores: ScoreCommit, *, model_name: str) -> ModelCard:
    """``card`` with ``scores.model_index`` merged into its ``model-index`` and ``scores.metadata`` set."""
    data = card.data
    assert isinstance(data, ModelCardData)
    new = {_result_key(r): r for r in scores.model_index}
    kept = [r for r in data.eval_results or [] if _result_key(r) not in new]
    if new:
        data.model_name = data.model_name or model_name
        data.eval_results = [*kept, *new.values()]
    for key, value in scores.metadata.items():
        setattr(data, key, value)
    return card


def _repo_files(api: HfApi, repo_id: str, revision: str) -> dict[str, str]:
    """``{path: blob id}`` of every file of the model repo at ``revision``."""
    tree = with_retries(lambda: list(api.list_repo_tree(repo_id, revision=revision, recursive=True)))
    return {f.path: f.blob_id for f in tree if isinstance(f, RepoFile)}


def _beside_weights(path: str) -> bool:
    """Files that document a model rather than make it: the card and other Markdown, YAML (scores, provenance
    such as a merge's published recipe), ``.gitattributes``. Weights, JSON configs and tokenizer files remain."""
    return path == ".gitattributes" or path.startswith(f"{EVAL_RESULTS_DIR}/") or path.endswith((".md", ".yaml",
                                                                                                 ".yml"))


def _weights_of(files: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for path, blob in sorted(files.items()):
        if not _beside_weights(path):
            digest.update(f"{path}\0{blob}\n".encode())
    return f"files:{digest.hexdigest()[:32]}"


def weights_id(repo_id: str, revision: str, *, api: HfApi | None = None) -> str:
    """A digest of the model repo's files at ``revision`` that make the model — weights, JSON configs, tokenizer
    — but not those that document it (the card, scores, provenance YAML): ``files:<hex>``, what was measured.
    Publishing scores makes a new commit but keeps the weights id, and so does re-pushing the same merge with a
    new recipe record, so results keyed by it are not duplicated when the same weights are scored again."""
    return _weights_of(_repo_files(api or HfApi(), repo_id, revision))


def _weights_unchanged(api: HfApi, repo_id: str, head: str, *, scored: str, weights: str | None) -> bool:
    """Whether ``head`` holds the weights that were scored: the known ``weights`` id, else the files of commit
    ``scored`` (card and scores aside); ``False`` if that cannot be known."""
    try:
        return weights_id(repo_id, head, api=api) == (weights or weights_id(repo_id, scored, api=api))
    except HfHubHTTPError as e:  # e.g. a Hub that no longer serves the scored revision
        logger.info("cannot compare %s@%s with its head %s: %s", repo_id, scored, head, e)
        return False


def _read_text(api: HfApi, repo_id: str, path: str, revision: str) -> str:
    url = hf_hub_url(repo_id, path, revision=revision, endpoint=api.endpoint)
    return get_bytes(url).decode("utf-8")


def _card_at(api: HfApi, repo_id: str, revision: str, files: Mapping[str, str]) -> ModelCard:
    return ModelCard(_read_text(api, repo_id, CARD, revision) if CARD in files else "", ignore_metadata_errors=True)


def push_scores(repo_id: str, scores: ScoreCommit, *, revision: str, commit_message: str,
                weights: str | None = None, api: HfApi | None = None) -> str:
    """Add ``scores`` to the model repo ``repo_id`` in one commit; returns the commit URL.

    Args:
        revision: the commit sha whose weights were scored. The commit goes on top of the head, whose card
            it updates, if the head still holds the same weights.
        weights: the scored weights' :func:`weights_id`, when known: then the head is compared with it, and the
            scored commit need not be readable any more.

    Raises:
        ScoresError: the repo's weights changed since ``revision`` (or that revision cannot be compared).
    """
    api = api or HfApi()
    head = with_retries(lambda: api.repo_info(repo_id, repo_type="model")).sha
    assert head is not None
    files = _repo_files(api, repo_id, head)
    card = scored_card(_card_at(api, repo_id, head, files), scores, model_name=repo_id.split("/")[-1])
    wanted = {eval_results_path(stem): entries_yaml(entries) for stem, entries in scores.files.items()}
    wanted[CARD] = str(card)
    changed = {path: text for path, text in wanted.items()
               if path not in files or _read_text(api, repo_id, path, head) != text}
    if not changed:  # published before (a resumed run): no empty commit, and no need to compare weights
        logger.info("%s already holds these scores at %s", repo_id, head)
        return f"{api.endpoint}/{repo_id}/commit/{head}"
    if head != revision and not _weights_unchanged(api, repo_id, head, scored=revision, weights=weights):
        raise ScoresError(
            f"Model repo '{repo_id}' moved from the scored revision {revision} to {head} and its files are not "
            "the same: the scores would be attached to weights that were not measured.", repo_id=repo_id,
            hint=f"Evaluate '{repo_id}' again (its head is {head}), then publish those scores.")
    operations = [CommitOperationAdd(path, text.encode()) for path, text in changed.items()]
    info = with_retries(lambda: api.create_commit(repo_id, operations, commit_message=commit_message,
                                                  parent_commit=head))
    logger.info("Pushed %d scores file(s) to %s", len(operations), info.commit_url)
    url: str = info.commit_url
    return url


def read_scores(repo_id: str, *, revision: str | None = None, api: HfApi | None = None) -> RepoScores:
    """The ``.eval_results`` entries and card of ``repo_id`` at ``revision`` (default: its head, pinned once).

    Raises:
        ScoresError: an eval results file does not parse.
    """
    api = api or HfApi()
    sha = with_retries(lambda: api.repo_info(repo_id, repo_type="model", revision=revision)).sha
    assert sha is not None
    files = _repo_files(api, repo_id, sha)
    found = {path: parse_entries_yaml(_read_text(api, repo_id, path, sha), repo_id=repo_id, path=path)
             for path in sorted(files) if path.startswith(f"{EVAL_RESULTS_DIR}/") and path.endswith(".yaml")}
    return RepoScores(repo_id, sha, _weights_of(files), found, _card_at(api, repo_id, sha, files))


__all__ = ["CARD", "EVAL_RESULTS_DIR", "RepoScores", "ScoreCommit", "entries_yaml", "eval_results_path",
           "parse_entries_yaml", "push_scores", "read_scores", "scored_card", "weights_id"]
