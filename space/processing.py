"""Pure pandas between :func:`mergebench.eval.leaderboard.table` and what the page shows: filters, search,
column choice, sorting, display names, links, and the redacted tail of a job log. No Gradio here, so
all of it is tested without a browser.
"""

from __future__ import annotations

import os
import re
from dataclasses import dataclass

import pandas as pd

from mergebench.domains import DOMAINS
from mergebench.eval.leaderboard import TASK_PREFIX

# leaderboard column → header on the page
HEADERS = {
    "label": "Model", "kind": "Kind", "base_model": "Base", "base_type": "Base type", "method": "Method",
    "data": "Data", "normalised": "Normalised", **{d: d.capitalize() for d in DOMAINS},
    "forgetting": "Forgetting", "multitask_gap": "Multi-task gap", "merge_seconds": "Merge s",
    "validation_seconds": "Validation s", "total_seconds": "Total cost s", "eval_seconds": "Eval s",
    "peak_memory_bytes": "Peak memory GB", "card_url": "Card", "parameters": "Parameters", "experts": "Experts",
    "max_samples": "Max samples", "finished_at": "Evaluated",
}
DEFAULT_COLUMNS = ["Model", "Kind", "Base", "Method", "Data", "Normalised", *(d.capitalize() for d in DOMAINS),
                   "Forgetting", "Multi-task gap", "Merge s", "Validation s", "Peak memory GB", "Card"]
ALWAYS = ["Model"]
SORTABLE = ["Normalised", *(d.capitalize() for d in DOMAINS), "Forgetting", "Multi-task gap", "Total cost s",
            "Merge s", "Peak memory GB"]
_MARKDOWN = {"Model", "Card"}


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


def display(df: pd.DataFrame, columns: list[str], *, raw: bool = False, sort_by: str | None = None) -> pd.DataFrame:
    """The shown table: chosen columns (``Model`` always), numbers rounded, links as markdown, raw task
    scores appended when ``raw``, sorted descending by ``sort_by`` (cost and memory ascending)."""
    out = pd.DataFrame(index=df.index)
    for column, header in HEADERS.items():
        out[header] = df[column]
    out["Model"] = [_link(lab, url) for lab, url in zip(df["label"], df["model_url"], strict=True)]
    out["Card"] = ["[card](" + u + ")" if isinstance(u, str) else "" for u in df["card_url"]]
    out["Peak memory GB"] = df["peak_memory_bytes"] / 1e9
    out["Base"] = df["base_model"].str.rsplit("/", n=1).str[-1]
    wanted = ALWAYS + [c for c in columns if c not in ALWAYS and c in out]
    if raw:
        tasks = [c for c in df.columns if c.startswith(TASK_PREFIX)]
        for c in tasks:
            out[c.removeprefix(TASK_PREFIX)] = df[c]
        wanted += [c.removeprefix(TASK_PREFIX) for c in tasks]
    if sort_by in out:  # sorted on every column, shown or not
        out = out.sort_values(sort_by, ascending=sort_by in ("Total cost s", "Merge s", "Peak memory GB"),
                              na_position="last", kind="stable")
    out = out[wanted]
    return out.round(3).astype(object).where(out.notna(), None).reset_index(drop=True)


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
