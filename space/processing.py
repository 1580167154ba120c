"""Pure pandas between :func:`mergebench.eval.leaderboard.table` and what the page shows: filters, search,
column choice, sorting, display names, links, ± standard errors and the rows within noise of the best, the
side-by-side comparison of two rows, column widths, and the redacted tail of a job log. No Gradio here, so
all of it is tested without a browser.
"""

from __future__ import annotations

import math
import os
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pandas as pd
from uncertainty import SCORED, SE, within_noise

from mergebench.domains import DOMAINS
from mergebench.eval.leaderboard import TASK_PREFIX
from mergebench.eval.results import Results
from mergebench.eval.scores import task_stderr

# leaderboard column → header on the page (short: the header row stays one line; LEGEND spells them out)
HEADERS = {
    "label": "Model", "kind": "Kind", "base_model": "Base", "base_type": "Base type", "method": "Method",
    "data": "Data", "normalised": "Normalised", **{d: d.capitalize() for d in DOMAINS},
    "forgetting": "Forgetting", "multitask_gap": "MT gap", "merge_seconds": "Merge s",
    "validation_seconds": "Valid. s", "total_seconds": "Cost s", "eval_seconds": "Eval s",
    "peak_memory_bytes": "Mem GB", "card_url": "Card", "parameters": "Parameters", "experts": "Experts",
    "max_samples": "Max samples", "judge": "Judge", "finished_at": "Evaluated",
}
BEST = "Best"
DEFAULT_COLUMNS = ["Model", BEST, "Kind", "Base", "Method", "Data", "Normalised", *(d.capitalize() for d in DOMAINS),
                   "Forgetting", "MT gap", "Merge s", "Valid. s", "Mem GB", "Card"]
ALWAYS = ["Model", BEST]
SORTABLE = ["Normalised", *(d.capitalize() for d in DOMAINS), "Forgetting", "MT gap", "Cost s", "Merge s", "Mem GB"]
_ASCENDING = {"Cost s", "Merge s", "Mem GB"}
_MARKDOWN = {"Model", "Card"}
_SCORED_HEADERS = {HEADERS[c]: c for c in SCORED}
LEGEND = ("Scores are ratios: 1.0 = the domain's expert (*Normalised*, per domain) or the base (*Forgetting*), "
          "± one standard error propagated from the per-task standard errors. **Best**: ★ the best merge of its "
          "base on the sorted score, ≈ within noise of it (their 95 % intervals, ± 1.96 SE, overlap). "
          "*MT gap*: normalised score − the multi-task model's. *Cost s*: merge + validation seconds (*Valid. s*: "
          "the grid search). *Mem GB*: the merge's peak memory. *Judge*: what judged the safety responses: "
          "`rule-based-v1` is the CPU default (refusal phrases), `classifier:allenai/wildguard@<commit>` the paper's.")


@dataclass(frozen=True)
class Filters:
    """What the filter controls hold. Empty lists mean "no filter"."""

    bases: tuple[str, ...] = ()
    base_types: tuple[str, ...] = ()
    methods: tuple[str, ...] = ()
    data: tuple[str, ...] = ()
    references: bool = True
    search: str = ""


def choices(df: pd.DataFrame, column: str) -> list[str]:
    return sorted(str(v) for v in df[column].dropna().unique()) if column in df else []


def filter_rows(df: pd.DataFrame, f: Filters) -> pd.DataFrame:
    """Rows matching every filter; reference rows (experts, base, multi-task) only when asked for, and then
    regardless of the method/data filters, which describe merges."""
    keep = pd.Series(True, index=df.index)
    if f.bases:
        keep &= df["base_model"].isin(f.bases)
    if f.base_types:
        keep &= df["base_type"].isin(f.base_types)
    merged = df["kind"] == "merged"
    if f.methods:
        keep &= ~merged | df["method"].isin(f.methods)
    if f.data:
        keep &= ~merged | df["data"].isin(f.data)
    if not f.references:
        keep &= merged
    if f.search.strip():
        text = df[["label", "model", "base_model", "method", "parameters"]].fillna("").astype(str).agg(" ".join, axis=1)
        keep &= text.str.contains(re.escape(f.search.strip()), case=False)
    return df[keep]


def _link(text: str, url: str | None) -> str:
    return f"[{text}]({url})" if url else str(text)


def with_se(value: Any, se: Any) -> str | None:
    """``0.912 ± 0.031`` (``0.912`` without a standard error; ``None`` without a value)."""
    if value is None or pd.isna(value):
        return None
    return f"{value:.3f} ± {se:.3f}" if se is not None and not pd.isna(se) else f"{value:.3f}"


def _se(df: pd.DataFrame, column: str) -> pd.Series:
    return df[column + SE] if column + SE in df else pd.Series(math.nan, index=df.index)


def best_marks(df: pd.DataFrame, column: str) -> pd.Series:
    """Per base, among merged rows: ★ the highest ``column``, ≈ the rows within noise of it, else empty."""
    marks = pd.Series("", index=df.index)
    merged = df[(df["kind"] == "merged") & df[column].notna()]
    se = _se(df, column)
    for _, group in merged.groupby("base_model", sort=False):
        leader = group[column].idxmax()
        marks[leader] = "★"
        for i in group.index.drop(leader):
            if within_noise(group.at[leader, column], se[leader], group.at[i, column], se[i]):
                marks[i] = "≈"
    return marks


def display(df: pd.DataFrame, columns: list[str], *, raw: bool = False, sort_by: str | None = None) -> pd.DataFrame:
    """The shown table: chosen columns (``Model`` and ``Best`` always), scores as ``value ± standard error``,
    links as markdown, raw task scores appended when ``raw``, sorted descending by ``sort_by`` (cost and
    memory ascending). ``Best`` marks each base's best merge on ``sort_by`` (a score; else Normalised)."""
    out = pd.DataFrame(index=df.index)
    for column, header in HEADERS.items():
        out[header] = df[column]
    out["Model"] = [_link(lab, url) for lab, url in zip(df["label"], df["model_url"], strict=True)]
    out["Card"] = ["[card](" + u + ")" if isinstance(u, str) else "" for u in df["card_url"]]
    out["Mem GB"] = df["peak_memory_bytes"] / 1e9
    out["Base"] = df["base_model"].str.rsplit("/", n=1).str[-1]
    out[BEST] = best_marks(df, _SCORED_HEADERS.get(sort_by or "", "normalised"))
    wanted = ALWAYS + [c for c in columns if c not in ALWAYS and c in out]
    if raw:
        tasks = [c for c in df.columns if c.startswith(TASK_PREFIX) and not c.endswith(SE)]
        for c in tasks:
            out[c.removeprefix(TASK_PREFIX)] = [with_se(v, e) for v, e in zip(df[c], _se(df, c), strict=True)]
        wanted += [c.removeprefix(TASK_PREFIX) for c in tasks]
    if sort_by in out:  # sorted on every column, shown or not
        out = out.sort_values(sort_by, ascending=sort_by in _ASCENDING, na_position="last", kind="stable")
    for header, column in _SCORED_HEADERS.items():
        out[header] = [with_se(v, e) for v, e in zip(out[header], _se(df, column)[out.index], strict=True)]
    out = out[wanted]
    return out.round(3).astype(object).where(out.notna(), None).reset_index(drop=True)


_MD_LINK = re.compile(r"\[([^\]]*)\]\([^)]*\)")


def column_widths(df: pd.DataFrame, *, char_px: int = 8, padding_px: int = 36, most_px: int = 340) -> list[int]:
    """Pixel widths that fit each header on one line and its longest value (links count their text only;
    long model labels wrap at ``most_px``). Gradio sizes columns from their content otherwise, so a column of
    empty cells shrinks to 32 px and its header wraps letter by letter."""
    widths = []
    for column in df.columns:
        cells = [len(_MD_LINK.sub(r"\1", str(v))) for v in df[column] if v is not None]
        widths.append(min(most_px, max(len(str(column)), *cells, 0) * char_px + padding_px))
    return widths


def row_choices(df: pd.DataFrame) -> list[tuple[str, str]]:
    """Dropdown choices for the comparison: (``label · base · kind``, run id), in table order."""
    return [(f"{lab} · {str(base).rsplit('/', 1)[-1]} · {kind}", run) for lab, base, kind, run
            in zip(df["label"], df["base_model"], df["kind"], df["run_id"], strict=True) if isinstance(run, str)]


def _pair(what: str, a: Any, se_a: Any, b: Any, se_b: Any) -> list[Any]:
    both = a is not None and b is not None and not pd.isna(a) and not pd.isna(b)
    noise = both and within_noise(float(a), _float(se_a), float(b), _float(se_b))
    return [what, with_se(a, se_a), with_se(b, se_b), round(float(a) - float(b), 3) if both else None,
            "≈" if noise else ""]


def _float(value: Any) -> float | None:
    return None if value is None or pd.isna(value) else float(value)


COMPARE_COLUMNS = ["Score", "A", "B", "A − B", "Within noise"]


def compare(df: pd.DataFrame, runs: Mapping[str, Results], a: str, b: str) -> pd.DataFrame:
    """Two leaderboard rows (by run id) side by side: the headline scores, then every task either was scored
    on (the five domains in order, then the general tasks, then validation surrogates), each ``± SE``, their
    difference, and ``≈`` when the difference is within noise."""
    rows = df.set_index("run_id")
    ra, rb = rows.loc[a], rows.loc[b]
    out = [_pair(HEADERS[c], ra[c], ra.get(c + SE), rb[c], rb.get(c + SE)) for c in SCORED]
    x, y = runs[a], runs[b]
    tasks = dict(x.tasks) | {n: t for n, t in y.tasks.items() if n not in x.tasks}
    order = {d: i for i, d in enumerate((*DOMAINS, "general"))}
    for name in sorted(tasks, key=lambda n: (tasks[n].role == "validation", order.get(tasks[n].domain, len(order)))):
        role = " · validation" if tasks[name].role == "validation" else ""
        out.append(_pair(f"{name} ({tasks[name].domain}{role})", x.score(name), task_stderr(x, name), y.score(name),
                         task_stderr(y, name)))
    return pd.DataFrame(out, columns=COMPARE_COLUMNS, dtype=object)


def compare_links(df: pd.DataFrame, a: str, b: str) -> str:
    """``**A**: label (kind, base) · [model](…) · [card](…) — **B**: …`` for the compared rows (by run id);
    rows that are not Hub models have no links."""
    rows = df.set_index("run_id")
    parts = []
    for name, run in (("A", a), ("B", b)):
        row = rows.loc[run]
        links = [f"[{what}]({url})" for what, url in (("model", row["model_url"]), ("card", row["card_url"]))
                 if isinstance(url, str)]
        parts.append(f"**{name}**: {row['label']} ({row['kind']}, {row['base_model']})"
                     + "".join(f" · {link}" for link in links))
    return " — ".join(parts)


def datatypes(df: pd.DataFrame) -> list[str]:
    """``gr.Dataframe`` datatypes: markdown for links, numbers for numeric columns, str otherwise."""
    return ["markdown" if c in _MARKDOWN else "number" if pd.api.types.is_numeric_dtype(df[c].dropna().infer_objects())
            and df[c].notna().any() else "str" for c in df.columns]


_TOKEN = re.compile(r"hf_[A-Za-z0-9]{8,}")
_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")


def redact(text: str, secrets: tuple[str, ...] = ()) -> str:
    """Remove anything token-shaped (and the given secrets, e.g. the Space's own ``HF_TOKEN``)."""
    for secret in (*secrets, os.environ.get("HF_TOKEN") or ""):
        if len(secret) >= 8:
            text = text.replace(secret, "***")
    return _TOKEN.sub("hf_***", text)


def log_tail(text: str, lines: int = 60) -> str:
    """The last ``lines`` lines of a log as a terminal would show them (a ``\\r`` progress bar keeps only
    its last state, terminal escapes and blank lines go), with tokens redacted."""
    text = _ANSI.sub("", text)
    shown = [line.rsplit("\r", 1)[-1] for line in text.rstrip("\n").split("\n")]  # splitlines() splits at \r
    return redact("\n".join([line for line in shown if line.strip()][-lines:]))
