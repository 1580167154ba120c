"""The three plots (plotly), from the leaderboard table: what each method keeps per domain, what it costs,
and what it forgets. Merged rows only; the best configuration of each method per base stands for it in
the per-domain bars, averaged over the selected bases, with ± one standard error (all configurations
appear as points in the scatter plots)."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import plotly.express as px
import plotly.graph_objects as go
from uncertainty import SE

from mergebench.domains import DOMAINS

_LAYOUT = {"template": "plotly_white", "height": 420, "margin": {"l": 40, "r": 20, "t": 50, "b": 40},
           "legend_title_text": "method"}


def _merged(df: pd.DataFrame) -> pd.DataFrame:
    return df[df["kind"] == "merged"]


def _empty(title: str) -> go.Figure:
    fig = go.Figure()
    fig.update_layout(title=f"{title} (no merged models match the filters)", **_LAYOUT)
    return fig


def _mean_se(errors: pd.Series) -> float:
    """SE of a mean over bases (independent runs); unknown if one is."""
    return math.sqrt(float((errors**2).sum())) / len(errors) if errors.notna().all() else math.nan


def per_domain(df: pd.DataFrame) -> go.Figure:
    """Normalised score per domain (1.0 = the domain's expert), one bar per method (its best configuration),
    with ± one standard error where the results carry them."""
    title = "Per-domain normalised score of each method's best configuration"
    merged = _merged(df).dropna(subset=["normalised"])
    if merged.empty:
        return _empty(title)
    best = merged.sort_values("normalised", ascending=False).groupby(["base_model", "method"], sort=False).head(1)
    best = best.assign(**{d + SE: best.get(d + SE, math.nan) for d in DOMAINS})
    keys = ["method", "base_model"]
    long = best.melt(id_vars=keys, value_vars=list(DOMAINS), var_name="domain", value_name="score")
    errors = best.melt(id_vars=keys, value_vars=[d + SE for d in DOMAINS], var_name="domain", value_name="se")
    long = long.assign(se=errors["se"].to_numpy()).dropna(subset=["score"])
    # several bases selected: each method's bar is the mean over them (n_bases says how many)
    bars = long.groupby(["method", "domain"], sort=False).agg(score=("score", "mean"), se=("se", _mean_se),
                                                              n_bases=("base_model", "nunique"))
    fig = px.bar(bars.reset_index(), x="domain", y="score", color="method", barmode="group", error_y="se",
                 hover_data=["n_bases", "se"], category_orders={"domain": list(DOMAINS)})
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="expert")
    fig.update_layout(title=title, yaxis_title="merged ÷ expert (± 1 SE)", **_LAYOUT)
    return fig


def score_vs_cost(df: pd.DataFrame) -> go.Figure:
    """Normalised score against total cost (merge + validation seconds, log scale)."""
    title = "Normalised score vs total cost (merge + validation)"
    merged = _merged(df).dropna(subset=["normalised", "total_seconds"])
    if merged.empty:
        return _empty(title)
    fig = px.scatter(merged, x="total_seconds", y="normalised", color="method", hover_name="label",
                     hover_data=["base_model", "merge_seconds", "validation_seconds"],
                     log_x=bool((merged["total_seconds"] > 0).all()))
    fig.update_traces(marker={"size": 11})
    fig.update_layout(title=title, xaxis_title="seconds", yaxis_title="normalised score", **_LAYOUT)
    return fig


def forgetting_vs_score(df: pd.DataFrame) -> go.Figure:
    """Forgetting (general tasks ÷ base) against the in-domain normalised score; when every shown merge
    forgets nothing (all exactly 1.0, as on MergeBench-Tiny, whose general task the base already aces), the
    plot says so instead of drawing a flat line."""
    title = "Forgetting vs in-domain score"
    merged = _merged(df).dropna(subset=["normalised", "forgetting"])
    if merged.empty:
        return _empty(title)
    if np.allclose(merged["forgetting"].to_numpy(dtype=float), 1.0, rtol=0, atol=1e-9):
        fig = go.Figure()
        fig.add_annotation(text=FLAT_FORGETTING, showarrow=False, xref="paper", yref="paper", x=0.5, y=0.5)
        fig.update_layout(title=f"{title}: nothing forgotten", xaxis_visible=False, yaxis_visible=False, **_LAYOUT)
        return fig
    fig = px.scatter(merged, x="normalised", y="forgetting", color="method", hover_name="label",
                     hover_data=["base_model"])
    fig.add_hline(y=1.0, line_dash="dot", annotation_text="base")
    fig.update_traces(marker={"size": 11})
    fig.update_layout(title=title, xaxis_title="in-domain normalised score",
                      yaxis_title="general tasks ÷ base (1 = nothing forgotten)", **_LAYOUT)
    return fig


FLAT_FORGETTING = ("Every merge shown scores exactly as the base on every general task (forgetting = 1.000),<br>"
                   "so there is nothing to plot: these general tasks do not separate the methods.")

PLOTS = {"Per-domain scores": per_domain, "Score vs cost": score_vs_cost, "Forgetting vs score": forgetting_vs_score}
