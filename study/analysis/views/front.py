"""The Pareto fronts as figures and tables: each front against its cost, the main front as a table, every trial
as a table with the fronts it sits on; and the scatter with the front highlighted that pareto.html also shows.

Which trials sit on a front is decided in study/analysis/pareto.py; this module only draws and tabulates.
"""

from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

from study.analysis.pareto import INCLUDE_STOPPED, pareto_front
from study.analysis.results import varying_settings
from study.analysis.views import View
from study.core.metrics import ACCURACY, FRONT_COSTS, MAIN_COST, METRICS, SUMMARY_MEASURES

# What a trial's hover text shows beside its settings: (column, label, format).
HOVER_MEASURES = (
    (ACCURACY, "val acc", "{:.4f}"),
    ("test_acc", "test acc (not used to choose)", "{:.4f}"),
    (MAIN_COST, "training time", "{:.1f} s"),
    ("trainable_params", "trainable params", "{:,.0f}"),
    ("peak_memory_mib", "peak memory", "{:,.0f} MiB"),
    ("efficiency", "efficiency", "{:.4f} acc/s"),
    ("epochs_run", "epochs run", "{:.0f}"),
)


def trial_hover(trials: pd.DataFrame, settings: list[str]) -> list[str]:
    """One hover text per trial: its settings, status and every measure it has."""
    texts = []
    for row in trials.to_dict("records"):
        lines = [f"<b>{row['trial_id']}</b> ({row['status'].replace('_', ' ')})"]
        lines += [f"{key} = {row[key]}" for key in settings if key in row]
        lines += [
            f"{label} = {form.format(row[key])}"
            for key, label, form in HOVER_MEASURES
            if key in row and pd.notna(row[key])
        ]
        texts.append("<br>".join(lines))
    return texts


def pareto_figure(
    trials: pd.DataFrame,
    front: pd.DataFrame,
    title: str,
    cost: str = MAIN_COST,
    include_stopped: bool = INCLUDE_STOPPED,
    accuracy: str = ACCURACY,
) -> go.Figure:
    """Every trial with values, the front highlighted; stopped trials marked (and named ineligible when they are)."""
    shown = trials[(trials["status"] != "error") & trials[accuracy].notna() & trials[cost].notna()]
    settings = ["backbone", *[k for k in varying_settings(trials) if k != "backbone"]]
    stopped = "stopped early by ASHA" + ("" if include_stopped else " (not eligible for the front)")
    figure = go.Figure()
    for status, name, symbol in (("completed", "completed", "circle"), ("stopped_early", stopped, "x")):
        part = shown[shown["status"] == status]
        figure.add_trace(
            go.Scatter(
                x=part[cost],
                y=part[accuracy],
                mode="markers",
                name=name,
                marker=dict(symbol=symbol, size=9, color="#9aa5b1"),
                text=trial_hover(part, settings),
                hoverinfo="text",
            )
        )
    figure.add_trace(
        go.Scatter(
            x=front[cost],
            y=front[accuracy],
            mode="lines+markers",
            name="Pareto front",
            line=dict(shape="hv", color="#d1495b"),
            marker=dict(size=12, color="#d1495b"),
            text=trial_hover(front, settings),
            hoverinfo="text",
        )
    )
    figure.update_layout(
        title=title,
        xaxis_title=FRONT_COSTS.get(cost, cost),
        yaxis_title=f"{accuracy} (final epoch)" if accuracy != ACCURACY else "validation accuracy (final epoch)",
        xaxis_type="log" if cost == "trainable_params" else None,  # counts span orders of magnitude
        template="plotly_white",
        hovermode="closest",
    )
    return figure


def pareto_view(
    trials: pd.DataFrame, cost: str = MAIN_COST, accuracy: str = ACCURACY, include_stopped: bool = INCLUDE_STOPPED
) -> View:
    title = f"Pareto front: {accuracy} vs {FRONT_COSTS.get(cost, cost)}"
    if cost not in trials or trials[cost].isna().all():
        return View(
            title=title,
            note=f"No trial has a value for '{cost}': results from before it was measured, a platform that cannot "
            "measure it (peak memory off Linux), or no trial finished an epoch.",
        )
    front = pareto_front(trials, accuracy, cost, include_stopped)
    figure = pareto_figure(trials, front, title, cost=cost, include_stopped=include_stopped, accuracy=accuracy)
    notes = []
    stopped = (trials["status"] == "stopped_early").sum()
    if front.empty and stopped and not include_stopped:
        notes.append(
            f"No trial is eligible for the front: none completed, {stopped} stopped early "
            "(python -m study.report --include-stopped lets them take part)."
        )
    elif front.empty:
        notes.append("No trial is eligible for the front: none has both values.")
    if cost == "peak_memory_mib" and "memory_measure" in trials and trials["memory_measure"].nunique() > 1:
        notes.append(
            f"Peak memory mixes measures ({', '.join(sorted(trials['memory_measure'].dropna().unique()))}): compare "
            "trials of one device only."
        )
    return View(title=title, figure=figure, note=" ".join(notes))


def front_table_view(
    trials: pd.DataFrame,
    dimensions: dict[str, str],
    include_stopped: bool = INCLUDE_STOPPED,
    cost: str = MAIN_COST,
    accuracy: str = ACCURACY,
) -> View:
    title = f"The front ({accuracy} vs {FRONT_COSTS.get(cost, cost)}), cheapest first"
    if cost not in trials or trials[cost].isna().all():
        return View(title=title, note=f"No trial has '{cost}' in these results.")
    front = pareto_front(trials, accuracy, cost, include_stopped)
    note = "Test accuracy is reported beside the front, never used to pick it."
    if front.empty:
        note = "No trial is on the front (none is eligible). " + note
    columns = ["trial_id", *dimensions, "status", *[m for m in SUMMARY_MEASURES if m in trials]]
    return View(title=title, table=front[columns].reset_index(drop=True), note=note)


def trials_table_view(
    trials: pd.DataFrame, dimensions: dict[str, str], include_stopped: bool = INCLUDE_STOPPED
) -> View:
    table = trials.copy()
    memberships = []
    for cost in FRONT_COSTS:
        if cost in trials and trials[cost].notna().any():
            on_front = set(pareto_front(trials, cost=cost, include_stopped=include_stopped)["trial_id"])
            memberships.append((cost, on_front))
    table["on fronts"] = [
        ", ".join(METRICS[cost].front_cost for cost, ids in memberships if t in ids) for t in table["trial_id"]
    ]
    columns = [
        "trial_id",
        *dimensions,
        "status",
        *[m for m in SUMMARY_MEASURES if m in table],
        "on fronts",
        *(["stop_reason"] if "stop_reason" in table else []),
        *(["error"] if "error" in table else []),
    ]
    note = (
        "Trials stopped early by ASHA take part in the fronts (--include-stopped)."
        if include_stopped
        else "Trials stopped early by ASHA are shown but take no part in the fronts: their numbers are those of "
        "fewer epochs."
    )
    return View(title="Every trial", table=table[columns].reset_index(drop=True), note=note)
