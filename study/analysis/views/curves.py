"""The views per epoch: every trial's learning curves, and what early stopping decided at each rung."""

from __future__ import annotations

import html

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from study.analysis.views import View
from study.core.metrics import ACCURACY, RUNG_ACCURACY, RUNG_COST

# Plotly's default colours, one per trial in turn: a trial keeps its colour in both panels of the curves.
PALETTE = (
    "#1f77b4",
    "#ff7f0e",
    "#2ca02c",
    "#d62728",
    "#9467bd",
    "#8c564b",
    "#e377c2",
    "#7f7f7f",
    "#bcbd22",
    "#17becf",
)
# How each rung decision is drawn: (the decision's first word, legend name, marker symbol, colour).
DECISIONS = (("passed", "continued", "circle", "#2a9d8f"), ("stopped", "stopped", "x", "#d1495b"))


def curves_view(epochs: pd.DataFrame, trials: pd.DataFrame, dimensions: dict[str, str]) -> View:
    title = "Learning curves per trial"
    epochs = epochs[epochs["trial_id"].isin(trials["trial_id"])]
    if epochs.empty:
        return View(title=title, note="No per-epoch results for these trials.")
    figure = make_subplots(rows=1, cols=2, subplot_titles=("validation accuracy", "training loss"))
    labels = trials.set_index("trial_id")
    for index, (trial_id, curve) in enumerate(epochs.sort_values("epoch").groupby("trial_id", sort=True)):
        setting = ", ".join(f"{k}={labels.at[trial_id, k]}" for k in dimensions) if trial_id in labels.index else ""
        name = f"{trial_id} ({setting})" if setting else str(trial_id)
        color = PALETTE[index % len(PALETTE)]
        for column, col in ((ACCURACY, 1), ("train_loss", 2)):
            figure.add_trace(
                go.Scatter(
                    x=curve["epoch"],
                    y=curve[column],
                    mode="lines+markers",
                    name=name,
                    legendgroup=str(trial_id),
                    showlegend=col == 1,
                    line=dict(color=color),
                    hovertemplate=f"{html.escape(name)}<br>epoch %{{x}}: %{{y:.4f}}<extra></extra>",
                ),
                row=1,
                col=col,
            )
    figure.update_xaxes(title_text="epoch", dtick=1)
    figure.update_layout(title=title, template="plotly_white", legend=dict(title="trial (click to hide)"))
    return View(title=title, figure=figure)


def rungs_view(epochs: pd.DataFrame, trials: pd.DataFrame, dimensions: dict[str, str]) -> View:
    """One panel per rung: every trial that reached it, at its accuracy and training time there as the configuration
    costs alone on a fresh node (what multi-objective ASHA compares, the front's own axes), marked by what the
    scheduler decided; hover: the decision's words."""
    title = "Early-stopping rungs"
    if "rung_decision" not in epochs:
        return View(title=title, note="These results record no rung decisions (written before study recorded them).")
    decided = epochs[epochs["trial_id"].isin(trials["trial_id"]) & epochs["rung_decision"].fillna("").ne("")]
    if decided.empty:
        return View(title=title, note="No trial reached a rung: the study ran without early stopping, or before one.")
    rungs = sorted(decided["epoch"].astype(int).unique())
    figure = make_subplots(
        rows=1, cols=len(rungs), subplot_titles=[f"rung at epoch {epoch}" for epoch in rungs], shared_yaxes=True
    )
    labels = trials.set_index("trial_id")
    for col, epoch in enumerate(rungs, start=1):
        at = decided[decided["epoch"] == epoch]
        for verb, name, symbol, color in DECISIONS:
            part = at[at["rung_decision"].str.startswith(verb)]
            figure.add_trace(
                go.Scatter(
                    x=part[RUNG_COST],
                    y=part[RUNG_ACCURACY],
                    mode="markers",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    marker=dict(symbol=symbol, size=10, color=color),
                    text=_decision_hover(part, labels, dimensions),
                    hoverinfo="text",
                ),
                row=1,
                col=col,
            )
    figure.update_xaxes(title_text="training time so far (s, alone on a fresh node)")
    figure.update_yaxes(title_text="validation accuracy at the rung", col=1)
    figure.update_layout(title=title, template="plotly_white", hovermode="closest")
    return View(
        title=title,
        figure=figure,
        note="Multi-objective ASHA (asha.objectives: pareto) ranks the trials at a rung on both axes; single-metric "
        "ASHA on its metric alone. Each trial's words are in its stop_reason.",
    )


def _decision_hover(decisions: pd.DataFrame, labels: pd.DataFrame, dimensions: dict[str, str]) -> list[str]:
    """Per decision: the trial, its searched settings and the scheduler's words."""
    return [
        "<br>".join(
            [
                f"<b>{html.escape(str(row.trial_id))}</b>",
                *(f"{k} = {labels.at[row.trial_id, k]}" for k in dimensions if row.trial_id in labels.index),
                html.escape(row.rung_decision),
            ]
        )
        for row in decisions.itertuples()
    ]
