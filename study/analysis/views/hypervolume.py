"""How the accuracy-time front grew as trials finished: its hypervolume after each (computed in
study/analysis/pareto.py), as an anytime curve."""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from study.analysis.pareto import INCLUDE_STOPPED, hypervolume_history
from study.analysis.views import View
from study.core.metrics import MAIN_COST


def hypervolume_view(trials: pd.DataFrame, include_stopped: bool = INCLUDE_STOPPED) -> View:
    title = "Hypervolume of the accuracy-time front as trials finished"
    if MAIN_COST not in trials or trials.empty:
        return View(title=title, note="No trial has a training time: no front, no hypervolume.")
    result = hypervolume_history(trials, include_stopped=include_stopped)
    history = result.history
    order = (
        "in finishing order"
        if "finished_at" in trials
        else "in table order (these results do not record when trials finished)"
    )
    note = (
        f"Trials {order}. Reference point: validation accuracy 0 and training time {result.reference[MAIN_COST]:.1f} s "
        f"(1.1 x the slowest eligible trial); time is divided by it, so 1.0 would be accuracy 1 in no time. "
        "Trials that cannot sit on the front leave the curve flat."
    )
    figure = go.Figure(
        go.Scatter(
            x=history["finished"],
            y=history["hypervolume"],
            mode="lines+markers",
            line=dict(shape="hv", color="#2e86ab"),
            marker=dict(size=9, symbol=["circle" if i else "circle-open" for i in history["improved"]]),
            text=[
                f"{r.trial_id} "
                f"({r.status.replace('_', ' ')}){' improved the front' if r.improved else ''}<br>hypervolume = "
                f"{r.hypervolume:.4f}"
                for r in history.itertuples()
            ],
            hoverinfo="text",
            name="hypervolume",
        )
    )
    figure.update_layout(
        title=title,
        xaxis_title="trials finished",
        yaxis_title="hypervolume (fraction of the reference box)",
        template="plotly_white",
        xaxis=dict(dtick=1),
        yaxis=dict(rangemode="tozero"),
    )
    return View(title=title, figure=figure, note=note)
