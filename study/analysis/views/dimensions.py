"""The searched dimensions against validation accuracy: parallel coordinates, accuracy per value of each
dimension, and each dimension's importance (computed in study/analysis/importance.py)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from study.analysis.importance import dimension_importance
from study.analysis.pareto import INCLUDE_STOPPED, eligible
from study.analysis.searched import category_order
from study.analysis.views import View
from study.analysis.views.front import trial_hover
from study.core.metrics import ACCURACY


def parallel_view(trials: pd.DataFrame, dimensions: dict[str, str]) -> View:
    title = "Parallel coordinates: searched dimensions against validation accuracy"
    shown = trials[(trials["status"] != "error") & trials[ACCURACY].notna()]
    if not dimensions:
        return View(title=title, note="No searched dimension varies in these results: nothing to compare.")
    if shown.empty:
        return View(title=title, note="No trial has a validation accuracy yet.")
    axes = [_axis(shown[name], name, scale) for name, scale in dimensions.items()]
    if "epochs_run" in shown:
        axes.append(dict(label="epochs run", values=shown["epochs_run"]))
    axes.append(dict(label="val acc", values=shown[ACCURACY]))
    figure = go.Figure(
        go.Parcoords(
            line=dict(color=shown[ACCURACY], colorscale="Viridis", showscale=True, colorbar=dict(title="val acc")),
            dimensions=axes,
        )
    )
    figure.update_layout(title=title, template="plotly_white", margin=dict(l=80, r=80))
    return View(
        title=title,
        figure=figure,
        note="Trials stopped early appear with the accuracy of their last epoch (see 'epochs run').",
    )


def _axis(values: pd.Series, name: str, scale: str) -> dict:
    if scale == "categorical":
        order = category_order(values)
        codes = values.astype(str).map({v: i for i, v in enumerate(order)})
        return dict(label=name, values=codes, tickvals=list(range(len(order))), ticktext=order)
    numbers = pd.to_numeric(values, errors="coerce")
    if scale == "log":
        return dict(label=f"log10({name})", values=np.log10(numbers))
    return dict(label=name, values=numbers)


def dimension_views(
    trials: pd.DataFrame, dimensions: dict[str, str], include_stopped: bool = INCLUDE_STOPPED
) -> list[View]:
    """Validation accuracy per value of each searched dimension: boxes with every trial as a point."""
    shown = trials[(trials["status"] != "error") & trials[ACCURACY].notna()]
    if not dimensions:
        return [View(title="Accuracy per dimension", note="No searched dimension varies in these results.")]
    views = []
    for name, scale in dimensions.items():
        title = f"Validation accuracy per {name}"
        if shown.empty:
            views.append(View(title=title, note="No trial has a validation accuracy yet."))
            continue
        figure = _accuracy_per_value(shown, name, scale, dimensions, include_stopped)
        figure.update_layout(
            title=title, xaxis_title=name, yaxis_title="validation accuracy (final epoch)", template="plotly_white"
        )
        views.append(View(title=title, figure=figure))
    return views


def _accuracy_per_value(
    shown: pd.DataFrame, name: str, scale: str, dimensions: dict[str, str], include_stopped: bool
) -> go.Figure:
    """The trials that may sit on a front as a box per value (a scatter for a numeric dimension), the others as
    grey crosses."""
    on_front = eligible(shown, include_stopped)
    candidates, others = shown[on_front], shown[~on_front]
    figure = go.Figure()
    if scale == "categorical":
        figure.add_trace(
            go.Box(
                x=candidates[name].astype(str),
                y=candidates[ACCURACY],
                boxpoints="all",
                jitter=0.3,
                pointpos=0,
                name="completed" if not include_stopped else "completed or stopped early",
                marker=dict(color="#2e86ab"),
                text=trial_hover(candidates, list(dimensions)),
                hoverinfo="text",
            )
        )
        figure.update_xaxes(type="category", categoryorder="array", categoryarray=category_order(shown[name]))
    else:
        figure.add_trace(
            go.Scatter(
                x=pd.to_numeric(candidates[name]),
                y=candidates[ACCURACY],
                mode="markers",
                name="completed",
                marker=dict(size=10, color="#2e86ab"),
                text=trial_hover(candidates, list(dimensions)),
                hoverinfo="text",
            )
        )
        figure.update_xaxes(type="log" if scale == "log" else "linear")
    if not others.empty:
        figure.add_trace(
            go.Scatter(
                x=others[name].astype(str) if scale == "categorical" else pd.to_numeric(others[name]),
                y=others[ACCURACY],
                mode="markers",
                name="stopped early (fewer epochs)",
                marker=dict(symbol="x", size=10, color="#9aa5b1"),
                text=trial_hover(others, list(dimensions)),
                hoverinfo="text",
            )
        )
    return figure


def importance_view(trials: pd.DataFrame, dimensions: dict[str, str], include_stopped: bool = INCLUDE_STOPPED) -> View:
    title = "Dimension importance for validation accuracy"
    importances, note = dimension_importance(trials, dimensions, include_stopped)
    if importances is None:
        return View(title=title, note=note)
    figure = go.Figure(
        go.Bar(
            x=importances.to_numpy(),
            y=importances.index,
            orientation="h",
            marker=dict(color="#2e86ab"),
            text=[f"{v:.2f}" for v in importances],
            textposition="auto",
        )
    )
    figure.update_layout(
        title=title, xaxis_title="importance (fANOVA)", template="plotly_white", xaxis=dict(range=[0, 1])
    )
    return View(title=title, figure=figure, note=note)
