"""The MergeBench results file: one versioned JSON document per evaluated model (``RESULTS_SCHEMA.md``).

Why it is written the way it is:

* **Per task, atomically.** :class:`ResultsWriter` rewrites the whole file (temporary file + ``fsync`` +
  ``os.replace``) after *every* task, so a crash, a kill or a failing task never loses the tasks that
  already finished, and a reader never sees half a file. A failed task is recorded (``status:
  "failed"`` with the error) and the run goes on.
* **Versioned.** ``schema_version`` is checked on read; another version is a clear
  :class:`~mergebench.errors.EvaluationError`, never a silent misreading of old numbers.
* **One row per identity on the Hub.** A row of the results dataset is one task of one model as measured
  once: its identity (``row_id``) is the model and its pinned revision, the evaluation data and the commit
  (or content digest) its rows were read at, the task and its version, and the settings that can change a
  score. :func:`push_results` writes the run's rows into ``data/{model, revision and settings digest}.parquet``
  and replaces the rows of that file with the same identity, in one commit made on top of the file it read
  (``parent_commit``), so a resumed run or a re-submission replaces rows instead of adding duplicates, and
  a concurrent push is retried instead of lost. The dataset card's ``configs`` make
  ``load_dataset(repo, split="train")`` read every file — what the leaderboard Space loads.
"""

from __future__ import annotations

import json
import logging
import reprlib
import types
import typing
import uuid
from collections.abc import Iterable
from dataclasses import asdict, dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal, TypedDict

from mergebench.errors import EvaluationError
from mergebench.work import fingerprint_of, write_atomic

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


class _Identified(TypedDict):
    id: str


class _Model(_Identified, total=False):
    revision: str | None
    weights: str | None
    role: str | None
    domain: str | None
    base_model: str | None
    method: str | None
    label: str | None
    parameters: dict | None
    experts: list[str] | dict[str, str] | None


class _Run(_Identified, total=False):
    started_at: str
    finished_at: str | None
    status: RunStatus


class _Settings(TypedDict, total=False):
    suite: str | None
    tasks: list[str]
    backend: str | None
    max_samples: int | None


class _EvalData(TypedDict, total=False):
    kind: str | None
    location: str | None
    revision: str | None


class _Cost(TypedDict, total=False):
    merge_seconds: float | None
    merge_peak_memory_bytes: int | None
    validation_seconds: float | None
    eval_seconds: float | None


class _Environment(TypedDict, total=False):
    """Free-form (versions of the software that ran): only an object."""


BLOCKS: dict[str, type] = {"model": _Model, "settings": _Settings, "run": _Run, "eval_data": _EvalData, "cost": _Cost,
                           "environment": _Environment}
"""The fields of each block that readers (leaderboard, scores, the Space) rely on, typed as
``results.schema.json`` has them; other fields of a block are free."""


def _conforms(value: Any, hint: Any) -> bool:
    """Whether a JSON value has the declared type, without coercion: ``"1"`` is not a number, ``true`` not an int."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin is Literal:
        return value in args
    if origin in (types.UnionType, typing.Union):
        return any(_conforms(value, arg) for arg in args)
    if hint is type(None):
        return value is None
    if isinstance(value, bool):
        return hint is bool
    if origin is list and args:
        return isinstance(value, list) and all(_conforms(v, args[0]) for v in value)
    if origin is dict and args:
        return isinstance(value, dict) and all(_conforms(v, args[1]) for v in value.values())
    return isinstance(value, (int, float) if hint is float else origin or hint)


def _typing_problems(fields: dict[str, Any], hints: dict[str, Any], where: str) -> list[str]:
    return [f"{where}.{key} = {reprlib.repr(value)}" for key, value in fields.items()
            if key in hints and not _conforms(value, hints[key])]


def _shape_problems(data: dict) -> list[str]:
    """Where ``data`` breaks the types readers rely on: the :data:`BLOCKS` fields and every task field as
    :class:`TaskResult` declares it (none: an empty list)."""
    problems = []
    for block, declared in BLOCKS.items():
        fields = data.get(block, {})
        if not isinstance(fields, dict):
            problems.append(f"'{block}' is not an object")
            continue
        required = sorted(declared.__required_keys__)  # type: ignore[attr-defined]
        problems += [f"'{block}' has no '{key}'" for key in required if key not in fields]
        problems += _typing_problems(fields, typing.get_type_hints(declared), block)
    tasks = data.get("tasks")
    if not isinstance(tasks, dict) or not all(isinstance(t, dict) for t in tasks.values()):
        return [*problems, "'tasks' is not an object of task objects"]
    hints = typing.get_type_hints(TaskResult)
    for name, task in tasks.items():
        problems += _typing_problems(task, hints, f"tasks.{name}")
    return problems


def results_from_dict(data: dict, source: str = "<dict>") -> Results:
    """Parse a results document (checked: schema version, required keys, the types readers rely on)."""
    _check_version(data, source)
    hint = "Validate it against mergebench/eval/results.schema.json."
    problems = _shape_problems(data)
    if problems:
        more = f" (and {len(problems) - 3} more)" if len(problems) > 3 else ""
        raise EvaluationError(f"Results file '{source}' does not follow schema_version {SCHEMA_VERSION}: "
                              f"{'; '.join(problems[:3])}{more}.", hint=hint)
    try:
        tasks = {name: TaskResult(**t) for name, t in data["tasks"].items()}
        return Results(model=data["model"], settings=data["settings"], run=data["run"],
                       eval_data=data.get("eval_data", {}), environment=data.get("environment", {}),
                       cost=data.get("cost", {}), tasks=tasks, schema_version=data["schema_version"])
    except (KeyError, TypeError) as e:
        raise EvaluationError(f"Results file '{source}' does not follow schema_version {SCHEMA_VERSION}: {e}.",
                              hint=hint) from e


def _no_constant(token: str) -> float:
    raise ValueError(f"{token} is not JSON")


def load_results(path: str | Path) -> Results:
    """Read a results file.

    Raises:
        EvaluationError: the file is missing, not JSON, of another schema version, or malformed.
    """
    path = Path(path)
    try:
        data = json.loads(path.read_text(encoding="utf-8"), parse_constant=_no_constant)
    except FileNotFoundError as e:
        raise EvaluationError(f"Results file '{path}' does not exist.", hint="Check the path given to --out.") from e
    except IsADirectoryError as e:
        raise EvaluationError(f"Results file '{path}' is a folder.",
                              hint="Give one results JSON file here (readers of whole folders take the folder).") from e
    except OSError as e:
        raise EvaluationError(f"Results file '{path}' cannot be read: {e.strerror or e}.",
                              hint="Check the path and the file's permissions.") from e
    except (ValueError, RecursionError) as e:  # not UTF-8, not JSON, NaN, a 5,000-digit number, too deeply nested
        why = "it nests too deeply" if isinstance(e, RecursionError) else str(e)
        raise EvaluationError(f"Results file '{path}' is not valid JSON ({why}).",
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
               "merge_peak_memory_bytes",
               # the row's identity and the main metric's standard error (appended later still)
               "row_id", "model_weights", "data_sha", "settings_json", "stderr_json")
NOT_IDENTITY_SETTINGS = ("suite", "tasks")
"""Settings that only say which tasks ran: every other setting (backend, max_samples, seed, judge, sandbox,
batch_size, dtype, device, max_length) can change a score and belongs to a row's identity."""
PUSH_ATTEMPTS = 4


def _json_or_none(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True)


def identity_settings(results: Results) -> dict[str, Any]:
    """The settings that are part of a row's identity (all but :data:`NOT_IDENTITY_SETTINGS`)."""
    return {k: v for k, v in results.settings.items() if k not in NOT_IDENTITY_SETTINGS}


def _model_identity(results: Results) -> list[Any]:
    """The model as measured: its id and weights — a Hub model's ``weights`` id (unchanged by commits that only
    add scores or edit the card), else its pinned revision (an in-memory model has none: its run stands in)."""
    weights = results.model.get("weights") or results.model.get("revision")
    return [results.model.get("id"), weights if weights is not None else f"run:{results.run.get('id')}"]


def data_sha(results: Results, task: TaskResult) -> str | None:
    """The version of the rows ``task`` read: a Hub commit sha, or the sha-256 of local or packaged rows."""
    return task.data.get("revision") or task.data.get("sha256") or results.eval_data.get("revision")


def row_id(results: Results, task: TaskResult) -> str:
    """A row's identity: (model, revision, evaluation data and its sha, task and version, settings)."""
    data = results.eval_data
    source = data.get("location") if data.get("kind") == "hub" else data.get("kind")
    return fingerprint_of([*_model_identity(results), source, data_sha(results, task), task.name, task.version,
                           identity_settings(results)])[:32]


def results_path(results: Results) -> str:
    """The results-dataset file of ``results``: one per (model, revision, settings), rows replaced by identity."""
    return f"data/{fingerprint_of([*_model_identity(results), identity_settings(results)])[:32]}.parquet"


def result_rows(results: Results) -> list[dict[str, Any]]:
    """One flat row per task: the table the leaderboard reads (columns :data:`ROW_COLUMNS`)."""
    r = results
    settings_json = json.dumps(identity_settings(r), sort_keys=True, default=str)
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
        "row_id": row_id(r, t), "model_weights": r.model.get("weights"), "data_sha": data_sha(r, t),
        "settings_json": settings_json,
        "stderr_json": json.dumps(t.stderr, sort_keys=True),
    } for t in r.tasks.values()]


RESULTS_CARD = """---
{front_matter}---

# MergeBench results

Evaluation results of merged models, their experts, bases and multi-task baselines, written by
`mergebench eval --push-results {repo_id}` and `mergebench run`. One row per task of a model as measured
once: `row_id` digests the model and its revision, the evaluation data and its revision (`data_sha`), the task
and its version and the settings that can change a score (`settings_json`). Each file `data/*.parquet` holds
one model revision under one set of settings; pushing the same rows again replaces them, never adds copies.

Columns: {columns}.

`score` is the task's main metric (`main_metric`); all metrics of the task are in `metrics_json`, standard
errors in `stderr_json`. Scores are raw: normalise them (÷ expert, ÷ base) with `mergebench.eval.scores`. The
full results files follow schema_version {schema_version} (`mergebench/eval/RESULTS_SCHEMA.md`).
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

    rows = [{c: row.get(c) for c in ROW_COLUMNS} for row in rows]  # files pushed before lack the newer columns
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


def _rows_of(data: bytes) -> list[dict[str, Any]]:
    import io

    import pyarrow.parquet as pq

    return list(pq.read_table(io.BytesIO(data)).to_pylist())


def _existing_rows(api: Any, repo_id: str, path: str, revision: str) -> list[dict[str, Any]]:
    """The rows of ``path`` at ``revision`` of the results dataset (none if the file does not exist yet)."""
    from huggingface_hub import hf_hub_url

    from mergebench.hub.retry import get_bytes, with_retries

    if not with_retries(lambda: api.file_exists(repo_id, path, repo_type="dataset", revision=revision)):
        return []
    return _rows_of(get_bytes(hf_hub_url(repo_id, path, repo_type="dataset", revision=revision,
                                         endpoint=api.endpoint)))


def push_results(repo_id: str, results: Results, *, private: bool = False, api: Any = None) -> str:
    """Add ``results`` (one row per task) to the results dataset ``repo_id``; returns the commit URL.

    Rows of the same identity (:func:`row_id`) already in the dataset are replaced, so pushing a run again
    (a resumed run, a re-submission) never duplicates rows. Creates the dataset repo if needed; the card is
    (re)written on every push so its ``configs`` stay right.
    """
    from huggingface_hub import HfApi
    from huggingface_hub.errors import HfHubHTTPError

    from mergebench.hub.push import push_files
    from mergebench.hub.retry import with_retries

    api = api or HfApi()
    with_retries(lambda: api.create_repo(repo_id, repo_type="dataset", private=private, exist_ok=True))
    rows, path = result_rows(results), results_path(results)
    for attempt in range(PUSH_ATTEMPTS):
        head = with_retries(lambda: api.repo_info(repo_id, repo_type="dataset")).sha
        new = {row["row_id"] for row in rows}
        kept = [row for row in _existing_rows(api, repo_id, path, head) if row.get("row_id") not in new]
        try:
            return push_files(repo_id, {path: _parquet_bytes([*kept, *rows]), "README.md": _card(repo_id).encode()},
                              repo_type="dataset", private=private, api=api, parent_commit=head,
                              commit_message=f"Results of {results.model.get('id')} ({len(rows)} tasks)")
        except HfHubHTTPError as e:  # 412: another push landed since we read the file: read it again
            if getattr(e.response, "status_code", None) != 412 or attempt == PUSH_ATTEMPTS - 1:
                raise
            logger.info("results dataset %s moved during the push; retrying", repo_id)
    raise AssertionError("unreachable")
