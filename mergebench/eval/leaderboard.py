"""The leaderboard: results files in, one table out (pure pandas; no Gradio, no model).

Why a module of its own: the benchmark runner prints it at the end of a run, the Space shows it, and
both must agree on what a row means. Rows come from :class:`~mergebench.eval.results.Results`, grouped by
the ``model`` block every results file carries (``role``, ``base_model``, ``domain``, ``method``,
``parameters``, ``experts``, ``label``; see ``RESULTS_SCHEMA.md``):

* one row per **merged** model, i.e. per (base, method, configuration), scored with
  :func:`mergebench.eval.scores.compute_scores` against the experts, the base and the multi-task
  baseline *of the same base*;
* one **reference** row per base, expert and multi-task model (``kind`` says which), scored the same
  way, so "expert 1.0 in its own domain" and "multi-task" sit next to the merges.

Re-runs of the same model keep the latest complete run. Raw task scores are columns ``task:<name>``.
Results come from files, from a Hub results dataset pinned to one commit (:func:`read_results`), or from the
scores published in model repos (:func:`read_model_repos`), so the table can be rebuilt from the Hub alone.

>>> from mergebench.eval.leaderboard import read_results, table, format_table     # doctest: +SKIP
>>> print(format_table(table(read_results("runs/tiny/results"))))             # doctest: +SKIP
"""

from __future__ import annotations

import io
import json
import logging
import re
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from mergebench.domains import DOMAINS
from mergebench.errors import EvaluationError
from mergebench.eval.results import Results, TaskResult, load_results
from mergebench.eval.scores import compute_scores, forgetting, normalised, normalised_stderr, within_noise

KINDS = ("merged", "multitask", "expert", "base")
TASK_PREFIX = "task:"
COLUMNS = ("kind", "base_model", "base_type", "method", "data", "label", "model", "normalised", *DOMAINS,
           "forgetting", "multitask_gap", "merge_seconds", "validation_seconds", "total_seconds", "eval_seconds",
           "jobs_usd", "peak_memory_bytes", "model_url", "card_url", "parameters", "experts", "suite", "max_samples",
           "judge", "run_id", "finished_at", "isolation", "normalised_stderr", *(f"{d}_stderr" for d in DOMAINS),
           "forgetting_stderr", "multitask_gap_stderr", "vs_leader")
"""Fixed columns of :func:`table`, in order; ``task:<name>`` raw-score columns follow."""
VS_LEADER = ("leader", "within noise", "behind")
"""Values of the ``vs_leader`` column of a merged row (:func:`mark_leaders`); missing when a standard error is."""

logger = logging.getLogger(__name__)
_HUB_ID = re.compile(r"^[A-Za-z0-9][\w.-]*/[\w.-]+$")
_INSTRUCT = re.compile(r"(instruct|chat|-it)(\b|$|-|_)", re.IGNORECASE)


def base_type(base_id: str | None) -> str | None:
    """``"instruct"`` for chat-tuned bases (``…-Instruct``, ``…-it``, ``…-chat``), else ``"base"``."""
    if not base_id:
        return None
    return "instruct" if _INSTRUCT.search(base_id.rsplit("/", 1)[-1]) else "base"


def method_data(method: str | None, parameters: Mapping[str, Any] | None) -> str | None:
    """``"data-dependent"`` when the method needs validation data with these parameters, else ``"data-free"``."""
    if not method:
        return None
    from mergebench import methods  # imports torch: only when there are merges to describe
    from mergebench.errors import ConfigError

    try:
        spec = methods.get(method)
        return "data-dependent" if spec.stats_stage(spec.make_params(parameters or {})) else "data-free"
    except ConfigError:  # results of a method this version does not know
        return None


def default_label(model: Mapping[str, Any]) -> str:
    """``ties (top_k=0.2, scaling=1.0)`` for a merge, ``expert: math``, ``base``, ``multi-task`` otherwise."""
    if model.get("label"):
        return str(model["label"])
    role = model.get("role")
    if role == "merged" or model.get("method"):
        params = ", ".join(f"{k}={v}" for k, v in (model.get("parameters") or {}).items())
        return f"{model.get('method')} ({params})" if params else str(model.get("method"))
    if role == "expert":
        return f"expert: {model.get('domain')}"
    return {"multitask": "multi-task", "base": "base"}.get(role or "", str(model.get("id")))


def _hub_links(model_id: str, hub_url: str) -> tuple[str | None, str | None]:
    if not _HUB_ID.match(model_id) or Path(model_id).exists():
        return None, None
    url = f"{hub_url.rstrip('/')}/{model_id}"
    return url, f"{url}/blob/main/README.md"


def isolation_of(r: Results) -> str | None:
    """How the run's generated code was contained (``side_info.isolation`` of its code tasks, RESULTS_SCHEMA.md):
    ``"none"`` if any code task ran without kernel isolation, ``"bwrap"`` if all had it, ``None`` if unknown."""
    levels = {t.side_info.get("isolation") for t in r.tasks.values()} - {None}
    return "none" if "none" in levels else ("bwrap" if levels else None)


def _base_of(r: Results) -> str | None:
    return r.model.get("base_model") or (r.model.get("id") if r.model.get("role") == "base" else None)


def _identity(r: Results) -> tuple:
    """Runs with the same identity are re-runs of one leaderboard entry: the latest complete one wins."""
    m = r.model
    if m.get("role") == "merged":
        return ("merged", _base_of(r), m.get("method"), json.dumps(m.get("parameters"), sort_keys=True),
                json.dumps(sorted(m.get("experts") or [])))
    return (m.get("role"), _base_of(r), m.get("domain"), m.get("id"))


def latest(results: Iterable[Results]) -> list[Results]:
    """One run per identity: the latest complete run, else the latest run."""
    chosen: dict[tuple, Results] = {}
    for r in results:
        key = _identity(r)
        rank = (r.run.get("status") == "complete", r.run.get("finished_at") or r.run.get("started_at") or "")
        old = chosen.get(key)
        if old is None or rank >= (old.run.get("status") == "complete",
                                   old.run.get("finished_at") or old.run.get("started_at") or ""):
            chosen[key] = r
    return list(chosen.values())


def _row(r: Results, experts: dict[str, Results], base: Results | None, multitask: Results | None,
         hub_url: str) -> dict[str, Any]:
    m = r.model
    kind = m.get("role") or "merged"
    if kind == "merged":
        s = compute_scores(r, experts=experts, base=base, multitask=multitask)
        norm, domains, forget = s.normalised, s.domains, s.forgetting
        gap, gap_stderr = s.multitask_gap.get("normalised"), s.multitask_gap_stderr.get("normalised")
    else:
        norm, domains = normalised(r, experts)
        forget, gap, gap_stderr = forgetting(r, base), None, None
    cost = r.cost
    merge_s, validation_s = cost.get("merge_seconds"), cost.get("validation_seconds")
    parts = [v for v in (merge_s, validation_s) if v is not None]
    model_url, card_url = _hub_links(str(m.get("id")), hub_url)
    row: dict[str, Any] = {
        "kind": kind, "base_model": _base_of(r), "base_type": base_type(_base_of(r)), "method": m.get("method"),
        "data": method_data(m.get("method"), m.get("parameters")), "label": default_label(m), "model": m.get("id"),
        "normalised": norm, **{d: domains[d].mean if d in domains else None for d in DOMAINS},
        "forgetting": forget.mean, "multitask_gap": gap, "merge_seconds": merge_s, "validation_seconds": validation_s,
        "total_seconds": sum(parts) if parts else None, "eval_seconds": cost.get("eval_seconds"),
        "jobs_usd": cost.get("jobs_usd"),  # the grid search on Hugging Face Jobs (runner/executors/hf_jobs.py)
        "peak_memory_bytes": cost.get("merge_peak_memory_bytes"), "model_url": model_url, "card_url": card_url,
        "parameters": json.dumps(m["parameters"], sort_keys=True) if m.get("parameters") is not None else None,
        "experts": ", ".join(m.get("experts") or []) or None, "suite": r.settings.get("suite"),
        "max_samples": r.settings.get("max_samples"), "judge": r.settings.get("judge"), "run_id": r.run.get("id"),
        "isolation": isolation_of(r),
        "finished_at": r.run.get("finished_at"), "normalised_stderr": normalised_stderr(domains),
        **{f"{d}_stderr": domains[d].stderr if d in domains else None for d in DOMAINS},
        "forgetting_stderr": forget.stderr, "multitask_gap_stderr": gap_stderr,
    }
    row.update({f"{TASK_PREFIX}{name}": r.score(name) for name in r.tasks})
    return row


def mark_leaders(df: pd.DataFrame) -> pd.Series:
    """The ``vs_leader`` column: per base, the merged row with the best normalised score is ``"leader"``; another
    merged row is ``"within noise"`` when its 95 % interval overlaps the leader's
    (:func:`mergebench.eval.scores.within_noise`), else ``"behind"``. Missing for reference rows and when a
    standard error is unknown."""
    marks = pd.Series([None] * len(df), index=df.index, dtype=object)
    merged = df[(df["kind"] == "merged") & df["normalised"].notna()]
    for _, rows in merged.groupby("base_model", dropna=False, sort=False):
        best = rows["normalised"].idxmax()
        leader = rows.loc[best]
        marks[best] = VS_LEADER[0]
        for index, row in rows.drop(index=best).iterrows():
            close = within_noise(row["normalised"], _stderr(row["normalised_stderr"]), leader["normalised"],
                                 _stderr(leader["normalised_stderr"]))
            marks[index] = None if close is None else VS_LEADER[1] if close else VS_LEADER[2]
    return marks


def _stderr(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


def table(results: Iterable[Results | str | Path], *, references: bool = True,
          hub_url: str = "https://huggingface.co") -> pd.DataFrame:
    """The leaderboard: one row per merged model (per base, method, configuration), best first per base.

    Args:
        results: results objects or results-file paths: merges, and the experts, bases and multi-task
            baselines they are normalised by (matched through ``model.base_model``).
        references: also add one row per base, expert and multi-task model (``kind`` says which).
        hub_url: where Hub ids link to (``model_url``, ``card_url``); local folders get no link.

    Returns:
        A DataFrame with :data:`COLUMNS` then ``task:<name>`` raw scores. ``normalised`` and the domain
        columns are ratios to the experts (1.0 = expert level), ``forgetting`` the ratio to the base on
        general tasks (1.0 = nothing forgotten), ``multitask_gap`` merged − multi-task normalised score;
        ``<column>_stderr`` their standard errors (:mod:`mergebench.eval.scores`), ``vs_leader`` whether a merge
        is the best of its base, within noise of it or behind (:func:`mark_leaders`). Missing numbers (no
        reference, failed task, no recorded standard error) are NaN, never 0.
    """
    runs = latest(r if isinstance(r, Results) else load_results(r) for r in results)
    groups: dict[str | None, list[Results]] = {}
    for r in runs:
        groups.setdefault(_base_of(r), []).append(r)
    rows = []
    for members in groups.values():
        experts = {r.model["domain"]: r for r in members if r.model.get("role") == "expert" and r.model.get("domain")}
        base = next((r for r in members if r.model.get("role") == "base"), None)
        multitask = next((r for r in members if r.model.get("role") == "multitask"), None)
        for r in members:
            if references or (r.model.get("role") or "merged") == "merged":
                rows.append(_row(r, experts, base, multitask, hub_url))
    df = pd.DataFrame(rows)
    tasks = sorted(c for c in df.columns if c.startswith(TASK_PREFIX))
    df = df.reindex(columns=[*COLUMNS, *tasks])
    if df.empty:
        return df
    order = df["kind"].map({k: i for i, k in enumerate(KINDS)}).fillna(len(KINDS))
    df = df.assign(_order=order).sort_values(["base_model", "_order", "normalised"], ascending=[True, True, False],
                                             na_position="last", kind="stable")
    df = df.drop(columns="_order").reset_index(drop=True)
    df["vs_leader"] = mark_leaders(df)
    return df


def _number(value: Any, spec: str) -> str:
    return "–" if value is None or pd.isna(value) else format(value, spec)


def _with_stderr(value: Any, stderr: Any, spec: str) -> str:
    """``0.912±0.035`` (one standard error), or the number alone when its standard error is unknown."""
    text = _number(value, spec)
    return text if text == "–" or stderr is None or pd.isna(stderr) else f"{text}±{format(stderr, spec.lstrip('+'))}"


_MARKS = {"leader": "lead", "within noise": "≈", "behind": ""}
CAPTION = ("± one standard error (propagated from each task's). vs lead: ≈ = the 95 % interval (± 1.96 SE) "
           "overlaps the leader's: the difference is within noise.")


def format_table(df: pd.DataFrame, *, width: int = 160) -> str:
    """The leaderboard as text for a terminal: label, scores ± standard errors, cost (rich, no colours).

    The ``vs lead`` column marks, per base, the best merge (``lead``) and the merges within noise of it (``≈``);
    the base column is left out (and named in the title) when every row has the same base.
    """
    from rich.console import Console
    from rich.markup import escape
    from rich.table import Table

    bases = df["base_model"].dropna().unique()
    one_base = len(bases) <= 1
    title = f"MergeBench leaderboard — {str(bases[0]).rsplit('/', 1)[-1]}" if len(bases) == 1 else \
        "MergeBench leaderboard"
    headers = ["model", "normalised", "vs lead", *(d[:5] for d in DOMAINS), "forget", "MT gap", "cost s", "peak GB"]
    t = Table(*(headers if one_base else ["base", *headers]), title=title, caption=CAPTION)
    for _, r in df.iterrows():
        flag = escape(" [no isolation]") if r["isolation"] == "none" else ""  # code scored without the kernel sandbox
        cells = [str(r["label"]) + flag, _with_stderr(r["normalised"], r["normalised_stderr"], ".3f"),
                 _MARKS.get(r["vs_leader"], "") if isinstance(r["vs_leader"], str) else "",
                 *(_with_stderr(r[d], r[f"{d}_stderr"], ".2f") for d in DOMAINS),
                 _with_stderr(r["forgetting"], r["forgetting_stderr"], ".2f"),
                 _with_stderr(r["multitask_gap"], r["multitask_gap_stderr"], "+.2f"),
                 _number(r["total_seconds"], ".1f"),
                 _number(r["peak_memory_bytes"] / 1e9 if pd.notna(r["peak_memory_bytes"]) else None, ".2f")]
        t.add_row(*(cells if one_base else [str(r["base_model"]).rsplit("/", 1)[-1], *cells]))
    buffer = io.StringIO()
    console = Console(file=buffer, width=width, color_system=None, force_terminal=False)
    console.print(t)
    return buffer.getvalue()


# ------------------------------------------------------------------ reading results from anywhere


def results_from_rows(rows: Iterable[Mapping[str, Any]] | pd.DataFrame) -> list[Results]:
    """Rebuild one :class:`Results` per ``run_id`` from results-dataset rows (``ROW_COLUMNS``).

    Only what the leaderboard reads comes back (model block, settings, run, cost, task scores and standard
    errors); columns added after a file was pushed are absent from it and read as null. Rows of the same
    identity (``row_id``: model weights, data, task, settings) count once: the latest finished wins.
    """
    records = rows.to_dict("records") if isinstance(rows, pd.DataFrame) else list(rows)
    runs: dict[str, list[Mapping[str, Any]]] = {}
    for row in _unique_rows([{k: (None if _missing(v) else v) for k, v in row.items()} for row in records]):
        runs.setdefault(row["run_id"], []).append(row)
    out = []
    for run_id, task_rows in runs.items():
        first = task_rows[0]
        model = {"id": first["model"], "revision": first.get("model_revision"), "weights": first.get("model_weights"),
                 "role": first.get("model_role"), "base_model": first.get("base_model"),
                 "domain": first.get("model_domain"),
                 "method": first.get("method"), "parameters": _loads(first.get("parameters_json")),
                 "experts": _loads(first.get("experts_json")), "label": first.get("label")}
        tasks = {row["task"]: TaskResult(
            name=row["task"], status=row["status"], domain=row["domain"], role=row["role"],
            version=int(row["task_version"]), main_metric=row["main_metric"], score=row["score"],
            metrics=_loads(row.get("metrics_json")) or {}, stderr=_loads(row.get("stderr_json")) or {},
            num_samples=int(row.get("num_samples") or 0),
            empty_responses=int(row.get("empty_responses") or 0), seconds=float(row.get("seconds") or 0.0),
            error=_loads(row.get("error"))) for row in task_rows}
        out.append(Results(
            model=model, settings={"suite": first.get("suite"), "backend": first.get("backend"),
                                   "max_samples": _int(first.get("max_samples")),
                                   "judge": (_loads(first.get("settings_json")) or {}).get("judge")},
            run={"id": run_id, "started_at": first.get("started_at"), "finished_at": first.get("finished_at"),
                 "status": "complete" if first.get("finished_at") else "running"},
            eval_data={"location": first.get("eval_data"), "revision": first.get("eval_data_revision")},
            cost={"merge_seconds": first.get("merge_seconds"), "validation_seconds": first.get("validation_seconds"),
                  "merge_peak_memory_bytes": _int(first.get("merge_peak_memory_bytes")),
                  "eval_seconds": round(sum(t.seconds for t in tasks.values()), 3)},
            tasks=tasks, schema_version=int(first["schema_version"])))
    return out


def _unique_rows(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """One row per ``row_id`` (the latest finished); rows pushed before identities existed are all kept."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        old = latest.get(row.get("row_id") or "")
        if row.get("row_id") and (old is None or (row.get("finished_at") or "") >= (old.get("finished_at") or "")):
            latest[row["row_id"]] = row
    return [row for row in rows if not row.get("row_id") or latest[row["row_id"]] is row]


def _missing(value: Any) -> bool:
    return value is None or (isinstance(value, float) and value != value)


def _loads(value: str | None) -> Any:
    return json.loads(value) if value else None


def _int(value: Any) -> int | None:
    return None if value is None else int(value)


def read_results(source: str | Path, *, revision: str | None = None) -> list[Results]:
    """Every results document in ``source``: a results JSON file, a folder of them (searched recursively,
    e.g. a benchmark run folder), or a Hub results dataset id (``org/mergebench-results``, read at
    ``revision``: a branch, tag or commit, pinned to one commit before anything is read).

    Raises:
        EvaluationError: the source is none of those, or holds no results.
    """
    path = Path(source)
    if path.is_file():
        return [load_results(path)]
    if path.is_dir():
        files = sorted(p for p in path.rglob("*.json") if not p.name.startswith("."))
        found = [load_results(p) for p in files if _is_results_file(p)]
        if not found:
            raise EvaluationError(f"No results files (schema_version JSON) under '{path}'.",
                                  hint="Point at a run's results/ folder or a file written by mergebench eval.")
        return found
    if _HUB_ID.match(str(source)):
        return results_from_rows(_hub_rows(str(source), revision))
    raise EvaluationError(f"Results source '{source}' is neither a file, a folder nor a Hub dataset id.",
                          hint="Give a results JSON, a folder of them, or org/mergebench-results.")


def _is_results_file(path: Path) -> bool:
    try:
        return "schema_version" in json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError, TypeError):
        return False


def _hub_rows(repo_id: str, revision: str | None) -> pd.DataFrame:
    """All parquet files of the results dataset, concatenated; files pushed before new columns lack them."""
    from huggingface_hub import snapshot_download

    from mergebench.hub.refs import Ref, pin

    sha = pin(Ref(text=repo_id, repo_type="dataset", repo_id=repo_id, revision=revision)).sha
    logger.info("reading results dataset %s@%s", repo_id, sha)
    folder = Path(snapshot_download(repo_id, repo_type="dataset", revision=sha, allow_patterns=["data/*.parquet"]))
    frames = [pd.read_parquet(p) for p in sorted(folder.glob("data/*.parquet"))]
    if not frames:
        raise EvaluationError(f"The results dataset '{repo_id}' has no data/*.parquet files yet.",
                              hint="Push results with `mergebench eval ... --push-results` first.")
    return pd.concat(frames, ignore_index=True)


def read_model_repos(models: Iterable[str]) -> list[Results]:
    """The MergeBench results published in model repos (``org/name[@revision]``, each pinned to one commit): the
    scores from their ``.eval_results/*.yaml``, the rest from their cards
    (:func:`mergebench.eval.hub_results.results_from_model_repo`)."""
    from mergebench.eval.hub_results import results_from_model_repo

    return [results_from_model_repo(ref) for ref in models]
