"""The MergeBench results file: one versioned JSON document per evaluated model (``RESULTS_SCHEMA.md``).

Why it is written the way it is:

* **Per task, atomically.** :class:`ResultsWriter` rewrites the whole file (temporary file + ``fsync`` +
  ``os.replace``) after *every* task, so a crash, a kill or a failing task never loses the tasks that
  already finished, and a reader never sees half a file. A failed task is recorded (``status:
  "failed"`` with the error) and the run goes on.
* **Versioned.** ``schema_version`` is checked on read; another version is a clear
  :class:`~mergebench.errors.EvaluationError`, never a silent misreading of old numbers.
* **One row per task on the Hub.** :func:`push_results` appends the run's tasks as a new parquet file of
  the results dataset (``data/{run_id}.parquet``: adding a file never rewrites or races with earlier
  rows) with a dataset card whose ``configs`` make ``load_dataset(repo, split="train")`` read them all —
  what the leaderboard Space loads.
"""

from __future__ import annotations

import json
import logging
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from mergebench.errors import EvaluationError
from mergebench.work import write_atomic

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
SCHEMA_FILE = Path(__file__).parent / "results.schema.json"
TaskStatus = Literal["ok", "failed"]
RunStatus = Literal["running", "complete", "failed"]


def now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass(frozen=True)
class TaskResult:
    """One task of one run. ``score`` is ``metrics[main_metric]`` (``None`` when the task failed)."""

    name: str
    status: TaskStatus
    domain: str
    role: str
    version: int
    main_metric: str
    score: float | None
    metrics: dict[str, float] = field(default_factory=dict)
    stderr: dict[str, float] = field(default_factory=dict)
    num_samples: int = 0
    empty_responses: int = 0
    outputs_sha256: str = ""
    seconds: float = 0.0
    data: dict = field(default_factory=dict)
    side_info: dict = field(default_factory=dict)
    error: dict | None = None
    finished_at: str = ""


@dataclass(frozen=True)
class Results:
    """A results file in memory. ``tasks`` keeps the order the tasks ran in."""

    model: dict
    settings: dict
    run: dict
    eval_data: dict = field(default_factory=dict)
    environment: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)
    tasks: dict[str, TaskResult] = field(default_factory=dict)
    schema_version: int = SCHEMA_VERSION

    def score(self, task: str) -> float | None:
        """The main score of ``task`` (``None`` if it failed or did not run)."""
        result = self.tasks.get(task)
        return result.score if result is not None and result.status == "ok" else None

    @property
    def failed(self) -> list[str]:
        return [n for n, t in self.tasks.items() if t.status == "failed"]

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["tasks"] = {name: asdict(t) for name, t in self.tasks.items()}
        return {"schema_version": data.pop("schema_version"), **data}


def new_results(*, model: dict, settings: dict, eval_data: dict, environment: dict, cost: dict | None = None
                ) -> Results:
    run = {"id": uuid.uuid4().hex[:12], "started_at": now(), "finished_at": None, "status": "running"}
    return Results(model=model, settings=settings, run=run, eval_data=eval_data, environment=environment,
                   cost={"merge_seconds": None, "merge_peak_memory_bytes": None, "validation_seconds": None,
                         "eval_seconds": 0.0, **(cost or {})})


def save_results(results: Results, path: Path) -> None:
    write_atomic(path, json.dumps(results.to_dict(), indent=2, ensure_ascii=False, allow_nan=False) + "\n")


class ResultsWriter:
    """Holds the run's :class:`Results` and rewrites ``path`` after each task (``path=None``: memory only)."""

    def __init__(self, results: Results, path: Path | None) -> None:
        self.results = results
        self.path = Path(path) if path is not None else None
        self._flush()

    def _flush(self) -> None:
        if self.path is not None:
            save_results(self.results, self.path)

    def add(self, task: TaskResult) -> None:
        tasks = {**self.results.tasks, task.name: task}
        cost = {**self.results.cost, "eval_seconds": round(sum(t.seconds for t in tasks.values()), 3)}
        self.results = replace(self.results, tasks=tasks, cost=cost)
        self._flush()

    def finish(self, status: RunStatus) -> Results:
        self.results = replace(self.results, run={**self.results.run, "finished_at": now(), "status": status})
        self._flush()
        return self.results


def _check_version(data: dict, source: str) -> None:
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version == SCHEMA_VERSION:
        return
    found = "no schema_version" if version is None else f"schema_version {version!r}"
    raise EvaluationError(f"Results file '{source}' has {found}; this MergeBench reads schema_version "
                          f"{SCHEMA_VERSION} (see mergebench/eval/RESULTS_SCHEMA.md).",
                          hint="Re-run `mergebench eval` to regenerate it with this version.")


def results_from_dict(data: dict, source: str = "<dict>") -> Results:
    """Parse a results document (checked: schema version, required keys)."""
    _check_version(data, source)
    try:
        tasks = {name: TaskResult(**t) for name, t in data["tasks"].items()}
        return Results(model=data["model"], settings=data["settings"], run=data["run"],
                       eval_data=data.get("eval_data", {}), environment=data.get("environment", {}),
                       cost=data.get("cost", {}), tasks=tasks, schema_version=data["schema_version"])
    except (KeyError, TypeError) as e:
        raise EvaluationError(f"Results file '{source}' does not follow schema_version {SCHEMA_VERSION}: {e}.",
                              hint="Validate it against mergebench/eval/results.schema.json.") from e


def load_results(path: str | Path) -> Results:
    """Read a results file.

    Raises:
        EvaluationError: the file is missing, not JSON, of another schema version, or malformed.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as e:
        raise EvaluationError(f"Results file '{path}' does not exist.", hint="Check the path given to --out.") from e
    except json.JSONDecodeError as e:
        raise EvaluationError(f"Results file '{path}' is not valid JSON ({e}).",
                              hint="It may be truncated; results files are written atomically by mergebench eval.",
                              ) from e
    return results_from_dict(data, str(path))


# ---------------------------------------------------------------- the Hub results dataset

ROW_COLUMNS = ("run_id", "schema_version", "model", "model_revision", "model_role", "task", "task_version",
               "domain", "role", "status", "main_metric", "score", "metrics_json", "num_samples",
               "empty_responses", "seconds", "suite", "backend", "max_samples", "eval_data", "eval_data_revision",
               "started_at", "finished_at", "merge_seconds", "validation_seconds", "error",
               # the model block's leaderboard fields (appended: older files simply lack them)
               "base_model", "model_domain", "method", "parameters_json", "experts_json", "label",
               "merge_peak_memory_bytes")


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def result_rows(results: Results) -> list[dict[str, Any]]:
    """One flat row per task: the table the leaderboard reads (columns :data:`ROW_COLUMNS`)."""
    r = results
    return [{
        "run_id": r.run["id"], "schema_version": r.schema_version, "model": r.model.get("id"),
        "model_revision": r.model.get("revision"), "model_role": r.model.get("role"), "task": t.name,
        "task_version": t.version, "domain": t.domain, "role": t.role, "status": t.status,
        "main_metric": t.main_metric, "score": t.score, "metrics_json": json.dumps(t.metrics, sort_keys=True),
        "num_samples": t.num_samples, "empty_responses": t.empty_responses, "seconds": t.seconds,
        "suite": r.settings.get("suite"), "backend": r.settings.get("backend"),
        "max_samples": r.settings.get("max_samples"), "eval_data": r.eval_data.get("location"),
        "eval_data_revision": r.eval_data.get("revision"), "started_at": r.run.get("started_at"),
        "finished_at": r.run.get("finished_at"), "merge_seconds": r.cost.get("merge_seconds"),
        "validation_seconds": r.cost.get("validation_seconds"),
        "error": json.dumps(t.error) if t.error else None,
        "base_model": r.model.get("base_model"), "model_domain": r.model.get("domain"),
        "method": r.model.get("method"), "parameters_json": _json_or_none(r.model.get("parameters")),
        "experts_json": _json_or_none(r.model.get("experts")), "label": r.model.get("label"),
        "merge_peak_memory_bytes": r.cost.get("merge_peak_memory_bytes"),
    } for t in r.tasks.values()]


RESULTS_CARD = """---
{front_matter}---

# MergeBench results

Evaluation results of merged models, their experts, bases and multi-task baselines, written by
`mergebench eval --push-results {repo_id}`. One row per (run, task); each push adds one parquet file
under `data/`, so earlier rows are never rewritten.

Columns: {columns}.

`score` is the task's main metric (`main_metric`); all metrics of the task are in `metrics_json`. Scores
are raw: normalise them (÷ expert, ÷ base) with `mergebench.eval.scores`. The full results files follow
schema_version {schema_version} (`mergebench/eval/RESULTS_SCHEMA.md`).
"""


def _card(repo_id: str) -> str:
    from huggingface_hub import DatasetCardData

    data = DatasetCardData(license="apache-2.0", tags=["mergebench", "model-merging", "evaluation", "leaderboard"],
                           pretty_name="MergeBench results",
                           configs=[{"config_name": "default", "data_files": [{"split": "train",
                                                                                "path": "data/*.parquet"}]}])
    return RESULTS_CARD.format(front_matter=data.to_yaml() + "\n", repo_id=repo_id, columns=", ".join(ROW_COLUMNS),
                               schema_version=SCHEMA_VERSION)


def _parquet_bytes(rows: Iterable[dict]) -> bytes:
    import io

    import pyarrow as pa
    import pyarrow.parquet as pq

    rows = list(rows)
    table = pa.Table.from_pylist(rows, schema=_arrow_schema(pa))
    buffer = io.BytesIO()
    pq.write_table(table, buffer)
    return buffer.getvalue()


def _arrow_schema(pa: Any) -> Any:
    ints = {"schema_version", "task_version", "num_samples", "empty_responses", "max_samples",
            "merge_peak_memory_bytes"}
    floats = {"score", "seconds", "merge_seconds", "validation_seconds"}
    return pa.schema([(c, pa.int64() if c in ints else pa.float64() if c in floats else pa.string())
                      for c in ROW_COLUMNS])


def push_results(repo_id: str, results: Results, *, private: bool = False, api: Any = None) -> str:
    """Append ``results`` (one row per task) to the results dataset ``repo_id``; returns the commit URL.

    Creates the dataset repo if needed; the card is (re)written on every push so its ``configs`` stay right.
    """
    from mergebench.hub.push import push_files

    rows = result_rows(results)
    return push_files(repo_id, {f"data/{results.run['id']}.parquet": _parquet_bytes(rows),
                                "README.md": _card(repo_id).encode()},
                      repo_type="dataset", private=private, api=api,
                      commit_message=f"Results of {results.model.get('id')} ({len(rows)} tasks)")
