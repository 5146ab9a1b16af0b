"""A study's report: `python -m study.report RESULTS_DIR` writes RESULTS_DIR/report.html.

One self-contained page (plotly.js embedded: it opens offline) with the views a
decision needs: the Pareto fronts of validation accuracy against training time,
trainable parameters and peak memory; the hypervolume of the accuracy-time front
as trials finished; the early-stopping rungs (each rung's trials in the
objective plane, which continued and which stopped); parallel coordinates of the
searched dimensions; learning curves; accuracy per value of each dimension; dimension importance (Optuna's
fANOVA); the front and every trial as tables; the study's settings.

Every view is built by a function returning a `View` (a figure and/or a table,
or a note saying why there is none), so notebooks/analysis.ipynb shows the same
views on filtered trials. Whatever part of a results directory exists is shown:
an interrupted study, error trials, a single trial.
"""

from __future__ import annotations

import argparse
import html
import json
import math
import numbers
import sys
import time
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.offline import get_plotlyjs
from plotly.subplots import make_subplots

from study.analysis.pareto import (
    INCLUDE_STOPPED,
    eligible,
    hypervolume_history,
    pareto_front,
    quiet_optuna,
)
from study.analysis.results import Results, load_results, pareto_figure, trial_hover, varying_settings
from study.core.config import StudyError
from study.core.files import atomic_write
from study.core.metrics import (
    ACCURACY,
    FRONT_COSTS,
    MAIN_COST,
    METRICS,
    RUNG_ACCURACY,
    RUNG_COST,
    SUMMARY_MEASURES,
)

REPORT_FILE = "report.html"
# fANOVA fits a random forest to the trials: with fewer, its importances are noise.
MIN_TRIALS_FOR_IMPORTANCE = 5
# A numeric dimension spanning this ratio or more is shown on a log scale when the space does not say.
LOG_SPAN = 100
PLOT_CONFIG = {"displaylogo": False, "responsive": True}
# A running study's report is rewritten at most this often, and its page reloads itself as often.
LIVE_PERIOD_S = 30


@dataclass
class Progress:
    """Where a running study stands, shown on its partial report."""

    finished: int
    total: int | None
    updated: datetime


@dataclass
class View:
    """One part of the report: a figure and/or a table, and a note when something cannot be shown."""

    title: str
    figure: go.Figure | None = None
    table: pd.DataFrame | None = None
    note: str = ""

    def show(self) -> None:
        """Display in a notebook: the note, the figure (interactive), the table."""
        from IPython.display import Markdown, display

        display(Markdown(f"### {self.title}" + (f"\n\n*{self.note}*" if self.note else "")))
        if self.figure is not None:
            self.figure.show()
        if self.table is not None:
            display(self.table)


def searched_dimensions(trials: pd.DataFrame, study: dict) -> dict[str, str]:
    """The searched settings and how to scale them: `categorical`, `linear` or `log`.

    The space in study.json says what was searched; without it, the settings that vary between trials.
    """
    dimensions = (study.get("space") or {}).get("dimensions") or {}
    if dimensions:
        kinds = {
            "grid": "categorical",
            "choice": "categorical",
            "uniform": "linear",
            "randint": "linear",
            "loguniform": "log",
        }
        return {name: kinds.get(spec.get("kind"), "categorical") for name, spec in dimensions.items() if name in trials}
    scales = {}
    for name in varying_settings(trials):
        values = pd.to_numeric(trials[name], errors="coerce")
        if pd.api.types.is_numeric_dtype(trials[name]) and values.notna().all():
            scales[name] = "log" if values.min() > 0 and values.max() / values.min() >= LOG_SPAN else "linear"
        else:
            scales[name] = "categorical"
    return scales


def select(trials: pd.DataFrame, **allowed: list | None) -> pd.DataFrame:
    """Trials whose settings are among the allowed values, e.g. select(trials, backbone=["resnet18"]); empty lists keep
    all."""
    for name, values in allowed.items():
        if not values:
            continue
        if name not in trials:
            raise StudyError(f"cannot filter by '{name}': these results have no such column")
        trials = trials[trials[name].astype(str).isin([str(v) for v in values])]
    return trials


def category_order(values) -> list[str]:
    """Distinct values as text, numbers first in numeric order (0, 2, 16, all), then the rest alphabetically."""

    def key(text: str):
        try:
            return (0, float(text), "")
        except ValueError:
            return (1, 0.0, text)

    return sorted({str(v) for v in values}, key=key)


def pareto_view(
    trials: pd.DataFrame, cost: str = MAIN_COST, accuracy: str = ACCURACY, include_stopped: bool = INCLUDE_STOPPED
) -> View:
    title = f"Pareto front: {accuracy} vs {FRONT_COSTS.get(cost, cost)}"
    if cost not in trials or trials[cost].isna().all():
        return View(
            title,
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
    return View(title, figure=figure, note=" ".join(notes))


def front_table_view(
    trials: pd.DataFrame,
    dimensions: dict[str, str],
    include_stopped: bool = INCLUDE_STOPPED,
    cost: str = MAIN_COST,
    accuracy: str = ACCURACY,
) -> View:
    title = f"The front ({accuracy} vs {FRONT_COSTS.get(cost, cost)}), cheapest first"
    if cost not in trials or trials[cost].isna().all():
        return View(title, note=f"No trial has '{cost}' in these results.")
    front = pareto_front(trials, accuracy, cost, include_stopped)
    note = "Test accuracy is reported beside the front, never used to pick it."
    if front.empty:
        note = "No trial is on the front (none is eligible). " + note
    columns = ["trial_id", *dimensions, "status", *[m for m in SUMMARY_MEASURES if m in trials]]
    return View(title, table=front[columns].reset_index(drop=True), note=note)


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
    return View("Every trial", table=table[columns].reset_index(drop=True), note=note)


def hypervolume_view(trials: pd.DataFrame, include_stopped: bool = INCLUDE_STOPPED) -> View:
    title = "Hypervolume of the accuracy-time front as trials finished"
    if MAIN_COST not in trials or trials.empty:
        return View(title, note="No trial has a training time: no front, no hypervolume.")
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
        "Computed by Optuna; trials that cannot sit on the front leave the curve flat."
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
    return View(title, figure=figure, note=note)


def parallel_view(trials: pd.DataFrame, dimensions: dict[str, str]) -> View:
    title = "Parallel coordinates: searched dimensions against validation accuracy"
    shown = trials[(trials["status"] != "error") & trials[ACCURACY].notna()]
    if not dimensions:
        return View(title, note="No searched dimension varies in these results: nothing to compare.")
    if shown.empty:
        return View(title, note="No trial has a validation accuracy yet.")
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
        title,
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


def curves_view(epochs: pd.DataFrame, trials: pd.DataFrame, dimensions: dict[str, str]) -> View:
    title = "Learning curves per trial"
    epochs = epochs[epochs["trial_id"].isin(trials["trial_id"])]
    if epochs.empty:
        return View(title, note="No per-epoch results for these trials.")
    figure = make_subplots(rows=1, cols=2, subplot_titles=("validation accuracy", "training loss"))
    labels = trials.set_index("trial_id")
    for index, (trial_id, curve) in enumerate(epochs.sort_values("epoch").groupby("trial_id", sort=True)):
        setting = ", ".join(f"{k}={labels.at[trial_id, k]}" for k in dimensions) if trial_id in labels.index else ""
        name = f"{trial_id} ({setting})" if setting else str(trial_id)
        color = _palette(index)
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
    return View(title, figure=figure)


def rungs_view(epochs: pd.DataFrame, trials: pd.DataFrame, dimensions: dict[str, str]) -> View:
    """One panel per rung: every trial that reached it, at its accuracy and standalone training time there (what
    multi-objective ASHA compares), marked by what the scheduler decided; hover: the decision's words."""
    title = "Early-stopping rungs"
    if "rung_decision" not in epochs:
        return View(title, note="These results record no rung decisions (written before study recorded them).")
    decided = epochs[epochs["trial_id"].isin(trials["trial_id"]) & epochs["rung_decision"].fillna("").ne("")]
    if decided.empty:
        return View(title, note="No trial reached a rung: the study ran without early stopping, or before one.")
    rungs = sorted(decided["epoch"].astype(int).unique())
    figure = make_subplots(
        rows=1, cols=len(rungs), subplot_titles=[f"rung at epoch {epoch}" for epoch in rungs], shared_yaxes=True
    )
    labels = trials.set_index("trial_id")
    for col, epoch in enumerate(rungs, start=1):
        at = decided[decided["epoch"] == epoch]
        for verb, name, symbol, color in (
            ("passed", "continued", "circle", "#2a9d8f"),
            ("stopped", "stopped", "x", "#d1495b"),
        ):
            part = at[at["rung_decision"].str.startswith(verb)]
            texts = [
                "<br>".join(
                    [
                        f"<b>{html.escape(str(row.trial_id))}</b>",
                        *(f"{k} = {labels.at[row.trial_id, k]}" for k in dimensions if row.trial_id in labels.index),
                        html.escape(row.rung_decision),
                    ]
                )
                for row in part.itertuples()
            ]
            figure.add_trace(
                go.Scatter(
                    x=part[RUNG_COST],
                    y=part[RUNG_ACCURACY],
                    mode="markers",
                    name=name,
                    legendgroup=name,
                    showlegend=col == 1,
                    marker=dict(symbol=symbol, size=10, color=color),
                    text=texts,
                    hoverinfo="text",
                ),
                row=1,
                col=col,
            )
    figure.update_xaxes(title_text="standalone training time so far (s)")
    figure.update_yaxes(title_text="validation accuracy at the rung", col=1)
    figure.update_layout(title=title, template="plotly_white", hovermode="closest")
    return View(
        title,
        figure=figure,
        note="Multi-objective ASHA (asha.objectives: pareto) ranks the trials at a rung on both axes; single-metric "
        "ASHA on its metric alone. Each trial's words are in its stop_reason.",
    )


def _palette(index: int) -> str:
    colors = (
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
    return colors[index % len(colors)]


def dimension_views(
    trials: pd.DataFrame, dimensions: dict[str, str], include_stopped: bool = INCLUDE_STOPPED
) -> list[View]:
    """Validation accuracy per value of each searched dimension: boxes with every trial as a point."""
    shown = trials[(trials["status"] != "error") & trials[ACCURACY].notna()]
    if not dimensions:
        return [View("Accuracy per dimension", note="No searched dimension varies in these results.")]
    views = []
    for name, scale in dimensions.items():
        title = f"Validation accuracy per {name}"
        if shown.empty:
            views.append(View(title, note="No trial has a validation accuracy yet."))
            continue
        on_front = eligible(shown, include_stopped)
        candidates, others = shown[on_front], shown[~on_front]
        figure = go.Figure()
        if scale == "categorical":
            order = category_order(shown[name])
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
            figure.update_xaxes(type="category", categoryorder="array", categoryarray=order)
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
            x = others[name].astype(str) if scale == "categorical" else pd.to_numeric(others[name])
            figure.add_trace(
                go.Scatter(
                    x=x,
                    y=others[ACCURACY],
                    mode="markers",
                    name="stopped early (fewer epochs)",
                    marker=dict(symbol="x", size=10, color="#9aa5b1"),
                    text=trial_hover(others, list(dimensions)),
                    hoverinfo="text",
                )
            )
        figure.update_layout(
            title=title, xaxis_title=name, yaxis_title="validation accuracy (final epoch)", template="plotly_white"
        )
        views.append(View(title, figure=figure))
    return views


def dimension_importance(
    trials: pd.DataFrame, dimensions: dict[str, str], include_stopped: bool = INCLUDE_STOPPED
) -> tuple[pd.Series | None, str]:
    """fANOVA importance of each dimension for validation accuracy (Optuna), or None and the reason it cannot be had.

    The trials that may sit on a front are rebuilt as an Optuna study (create_trial); categorical
    dimensions become categorical distributions, numeric ones float distributions over the observed range.
    """
    if len(dimensions) < 2:
        searched = f"one ({next(iter(dimensions))})" if dimensions else "none"
        return (
            None,
            f"Importance compares searched dimensions; this study searched {searched}: see the accuracy per "
            "dimension instead.",
        )
    usable = trials[eligible(trials, include_stopped) & trials[ACCURACY].notna()]
    if len(usable) < MIN_TRIALS_FOR_IMPORTANCE:
        return None, (
            f"Importance needs at least {MIN_TRIALS_FOR_IMPORTANCE} trials that may sit on the front; "
            f"these results have {len(usable)}."
        )
    if usable[ACCURACY].nunique() == 1:
        return None, "Every trial reached the same validation accuracy: no dimension explains any variation."
    categorical = [name for name, scale in dimensions.items() if scale == "categorical"]
    numeric = {name: pd.to_numeric(usable[name], errors="coerce") for name in dimensions if name not in categorical}
    with quiet_optuna() as optuna:
        distributions = {
            name: optuna.distributions.CategoricalDistribution(category_order(usable[name])) for name in categorical
        }
        distributions |= {
            name: optuna.distributions.FloatDistribution(values.min(), values.max(), log=dimensions[name] == "log")
            for name, values in numeric.items()
        }
        study = optuna.create_study(direction="maximize")
        try:
            for position, row in enumerate(usable.to_dict("records")):
                params = {name: str(row[name]) for name in categorical} | {
                    name: float(v.iloc[position]) for name, v in numeric.items()
                }
                study.add_trial(
                    optuna.trial.create_trial(value=float(row[ACCURACY]), params=params, distributions=distributions)
                )
            importances = optuna.importance.get_param_importances(
                study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0)
            )
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            return None, f"Optuna could not compute importances: {error}"
    series = pd.Series(importances, dtype=float).sort_values()
    if not np.isfinite(series).all():
        return None, "fANOVA returned undefined importances for these trials (too little variation)."
    return series, (
        f"fANOVA (Optuna, seed 0) over {len(usable)} trials: the share of the variance in validation accuracy "
        "each dimension explains on its own. With few trials, read it as a hint."
    )


def importance_view(trials: pd.DataFrame, dimensions: dict[str, str], include_stopped: bool = INCLUDE_STOPPED) -> View:
    title = "Dimension importance for validation accuracy"
    importances, note = dimension_importance(trials, dimensions, include_stopped)
    if importances is None:
        return View(title, note=note)
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
    return View(title, figure=figure, note=note)


def settings_view(study: dict) -> View:
    """The study's settings from study.json, one row each; finish fields say 'not recorded' for an unfinished study."""
    title = "Study settings"
    if not study:
        return View(title, note="study.json is missing: the settings are unknown.")
    space = study.get("space") or {}
    rows = {
        "space": f"{space.get('name', '?')} ({space.get('source', '?')})",
        "description": space.get("description", ""),
        "fixed settings": space.get("fixed", {}),
        "dimensions": {
            name: f"{d.get('kind')}: {d.get('values')}" for name, d in (space.get("dimensions") or {}).items()
        },
        "num_samples / max_epochs": f"{space.get('num_samples', '?')} / {space.get('max_epochs', '?')}",
        "ASHA": space.get("asha") or "off",
        "metric": f"{space.get('metric', '?')} ({space.get('mode', '?')})",
        "search": space.get("search", "?"),
        "seed": study.get("seed"),
        "command": " ".join(map(str, study.get("command", []))),
        "resources": study.get("resources"),
        "cluster": study.get("cluster"),
        "resumed": study.get("resumed"),
        "started": study.get("started"),
    }
    for key in ("finished", "wall_time_s", "trials"):
        rows[key.replace("_", " ")] = study.get(key, "not recorded (the study did not finish)")
    rows["versions"] = study.get("versions")
    rows["hardware"] = study.get("hardware")
    table = pd.DataFrame({"setting": list(rows), "value": [_text(v) for v in rows.values()]})
    return View(title, table=table)


SCORE_NAMES = ("logme", "knn", "probe")  # study/ranking/scores.py's scores, higher is better


def candidate_accuracies(trials: pd.DataFrame) -> pd.DataFrame:
    """Per backbone (and weights) the best validation accuracy any finished trial reached with it."""
    finished = trials[(trials["status"] != "error") & trials["best_val_acc"].notna()] if len(trials) else trials
    if "backbone" not in finished or finished.empty:
        return pd.DataFrame(columns=["backbone", "weights", "best_val_acc", "trials"])
    keys = ["backbone", "weights"] if "weights" in finished else ["backbone"]
    grouped = finished.groupby(keys, sort=False)["best_val_acc"]
    return pd.concat([grouped.max(), grouped.size().rename("trials")], axis=1).reset_index()


def score_record(study: dict) -> tuple[dict | None, str]:
    """The scores of the study's backbones, and where they come from: `python -m study.rank --compare` (study.json's
    `scores`) or the study's pre-screen."""
    if study.get("scores"):
        return study["scores"], "python -m study.rank --compare"
    if study.get("prescreen"):
        return study["prescreen"], f"the pre-screen ({study['prescreen'].get('score')})"
    return None, ""


def score_agreement(trials: pd.DataFrame, study: dict) -> tuple[pd.DataFrame, dict]:
    """Each score against the best validation accuracy per backbone, and Kendall's tau (tau-b, scipy) of each score's
    ranking against the study's: {score: {tau, p_value, backbones, top_is_best}}."""
    from scipy.stats import kendalltau

    best = candidate_accuracies(trials)
    record, _ = score_record(study)
    if record is None or best.empty:
        return best, {}
    scores = pd.DataFrame(record.get("table", []))
    keys = [key for key in ("backbone", "weights") if key in best and key in scores]
    shown = [name for name in SCORE_NAMES if name in scores]
    table = best.merge(scores[[*keys, *shown]], on=keys, how="inner")
    table.insert(len(keys), "study_rank", table["best_val_acc"].rank(ascending=False, method="min").astype(int))
    agreement = {}
    for name in shown:
        table[f"rank_{name}"] = table[name].rank(ascending=False, method="min").astype(int)
        tau, p_value = kendalltau(table[name], table["best_val_acc"]) if len(table) >= 2 else (math.nan, math.nan)
        agreement[name] = {
            "tau": float(tau),
            "p_value": float(p_value),
            "backbones": len(table),
            "top_is_best": bool(len(table) and table[name].idxmax() == table["best_val_acc"].idxmax()),
        }
    return table, agreement


def prediction(trials: pd.DataFrame, study: dict) -> View:
    """'Did the scores predict the study?': per backbone each score against the best validation accuracy reached."""
    title = "Did the scores predict the study?"
    table, agreement = score_agreement(trials, study)
    record, source = score_record(study)
    if record is None:
        note = (
            "No transferability scores for these backbones yet: python -m study.rank --compare RESULTS_DIR computes "
            "LogME, k-NN and linear-probe scores on the study's data and adds them here."
        )
        return View(title, table=table, note=note)
    if table.empty:
        return View(title, note=f"The scores from {source} name none of the backbones these trials trained.")
    figure = make_subplots(rows=1, cols=len(agreement), subplot_titles=list(agreement))
    labels = [" ".join(str(v) for v in row) for row in table[[c for c in ("backbone", "weights") if c in table]].values]
    for col, name in enumerate(agreement, 1):
        figure.add_trace(
            go.Scatter(
                x=table[name],
                y=table["best_val_acc"],
                mode="markers+text",
                text=labels,
                textposition="top center",
                marker=dict(size=10, color="#2e86ab"),
                showlegend=False,
                hovertemplate="%{text}<br>score %{x:.4f}<br>best val acc %{y:.4f}<extra></extra>",
            ),
            row=1,
            col=col,
        )
        figure.update_xaxes(title_text=name, row=1, col=col)
    figure.update_yaxes(title_text="best validation accuracy", row=1, col=1)
    figure.update_layout(title=title, template="plotly_white")
    taus = "; ".join(
        f"{name} {a['tau']:.2f} (p={a['p_value']:.2g}{', picks the best' if a['top_is_best'] else ''})"
        for name, a in agreement.items()
    )
    note = (
        f"Scores from {source}; accuracy: the best validation accuracy any trial reached with each backbone. Kendall "
        f"tau (tau-b) of each score's ranking against the study's over {len(table)} backbones: {taus}. With few "
        "backbones tau moves in large steps and its p-value stays high: read it as this study's evidence, not a "
        "general verdict."
    )
    return View(title, figure=figure, table=table, note=note)


def prescreen_view(study: dict) -> View:
    record = study["prescreen"]
    summary = record.get("summary", {})
    table = pd.DataFrame(record.get("table", []))
    columns = [
        c
        for c in (
            "backbone",
            "kept",
            *SCORE_NAMES,
            *(f"rank_{s}" for s in SCORE_NAMES),
            "feature_dim",
            "train_images",
            "feature_status",
            "feature_s",
            "scoring_s",
        )
        if c in table
    ]
    note = (
        f"Before the search, the {len(record.get('backbones', []))} backbones of the space were ranked by "
        f"{record.get('score')} and the top {record.get('keep')} searched: {', '.join(record.get('kept', []))}. "
        f"Features {summary.get('feature_s', math.nan):.1f} s (from the feature cache a linear probe shares), scoring "
        f"{summary.get('scoring_s', math.nan):.1f} s, {summary.get('total_s', math.nan):.1f} s in all."
    )
    return View("Pre-screen of the backbones", table=table[columns], note=note)


def _text(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)


def planned_trials(study: dict) -> int | None:
    """How many trials the space asks for, when every dimension is a grid (sampled ones repeat num_samples times)."""
    space = study.get("space") or {}
    if "num_samples" not in space:
        return None
    grids = [len(d.get("values", [])) for d in (space.get("dimensions") or {}).values() if d.get("kind") == "grid"]
    return int(space["num_samples"] * math.prod(grids))


def summary(results: Results, trials: pd.DataFrame, running: bool = False) -> str:
    counts = ", ".join(f"{n} {status.replace('_', ' ')}" for status, n in trials["status"].value_counts().items())
    text = f"{len(trials)} trial{'s' if len(trials) > 1 else ''} ({counts})." if len(trials) else "No trials."
    planned = planned_trials(results.study)
    if planned is not None and planned != len(trials):
        text += f" The space plans {planned}."
    if results.study and "finished" not in results.study and not running:
        text += " The study did not record a finish: these are partial results of an interrupted or running study."
    return text


def views(results: Results, include_stopped: bool = INCLUDE_STOPPED) -> list[View]:
    """Every view of the report, in order."""
    trials, study = results.trials, results.study
    dimensions = searched_dimensions(trials, study)
    return [
        *(pareto_view(trials, cost, include_stopped=include_stopped) for cost in FRONT_COSTS),
        front_table_view(trials, dimensions, include_stopped),
        hypervolume_view(trials, include_stopped),
        rungs_view(results.epochs, trials, dimensions),
        parallel_view(trials, dimensions),
        curves_view(results.epochs, trials, dimensions),
        *dimension_views(trials, dimensions, include_stopped),
        importance_view(trials, dimensions, include_stopped),
        *([prescreen_view(study)] if study.get("prescreen") else []),
        *([prediction(trials, study)] if len(candidate_accuracies(trials)) >= 2 else []),
        trials_table_view(trials, dimensions, include_stopped),
        settings_view(study),
    ]


def render(results: Results, include_stopped: bool = INCLUDE_STOPPED, progress: Progress | None = None) -> str:
    """The report as one HTML page, plotly.js inlined. With `progress` (a running study): a partial page that says
    so and reloads itself every LIVE_PERIOD_S seconds."""
    name = (results.study.get("space") or {}).get("name") or results.path.name
    sections = []
    for number, view in enumerate(views(results, include_stopped)):
        parts = [f"<h2>{html.escape(view.title)}</h2>"]
        if view.note:
            parts.append(f'<p class="note">{html.escape(view.note)}</p>')
        if view.figure is not None:
            figure = go.Figure(view.figure).update_layout(title_text="")  # the section heading names it
            parts.append(
                figure.to_html(full_html=False, include_plotlyjs=False, div_id=f"figure-{number}", config=PLOT_CONFIG)
            )
        if view.table is not None:
            table = view.table.map(
                lambda v: _number(v) if isinstance(v, numbers.Real) and not isinstance(v, (bool, np.bool_)) else v
            )
            parts.append(
                f'<div class="scroll">{table.to_html(index=False, na_rep="–", classes="table", border=0)}</div>'
            )
        sections.append(f"<section>{''.join(parts)}</section>")
    notes = "".join(f'<p class="note">{html.escape(note)}</p>' for note in results.notes)
    policy = "take part in" if include_stopped else "are shown but take no part in"
    reload, partial = "", ""
    if progress is not None:
        reload = f'<meta http-equiv="refresh" content="{LIVE_PERIOD_S}">\n'
        to_come = f", {max(0, progress.total - progress.finished)} still to come" if progress.total is not None else ""
        partial = (
            f'<p class="partial" id="partial">Partial report: the study is still running. Last updated '
            f"{progress.updated:%Y-%m-%d %H:%M:%S}; {progress.finished} trial(s) finished{to_come}. This page "
            f"reloads itself every {LIVE_PERIOD_S} s.</p>\n"
        )
    opening = summary(results, results.trials, running=progress is not None)
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
{reload}<title>Study report: {html.escape(name)}</title>
<script type="text/javascript">{get_plotlyjs()}</script>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
section {{ margin: 2.5em 0; }}
.note {{ background: #fff4e5; border-left: 4px solid #f0a202; padding: 0.5em 1em; }}
table.table {{ border-collapse: collapse; font-size: 0.9em; }}
table.table th, table.table td {{
  border-bottom: 1px solid #ddd; padding: 0.3em 0.7em; text-align: left; vertical-align: top;
}}
.scroll {{ overflow-x: auto; }}
.partial {{ background: #e8f1fb; border-left: 4px solid #2b6cb0; padding: 0.5em 1em; font-weight: bold; }}
</style>
</head>
<body>
<h1>Study report: {html.escape(name)}</h1>
{partial}<p>{html.escape(opening)} Results: <code>{html.escape(str(results.path.resolve()))}</code>.</p>
<p>Fronts maximise validation accuracy (final epoch) against one cost each; error trials never take part, trials stopped
early by ASHA {policy} them. Test accuracy is shown beside, never used to choose.</p>
{notes}
{"".join(sections)}
</body>
</html>
"""


def partial_note(progress: Progress) -> str:
    to_come = f", {max(0, progress.total - progress.finished)} still to come" if progress.total is not None else ""
    return (
        f'<p class="partial" id="partial">Partial report: the study is still running. Last updated '
        f"{progress.updated:%Y-%m-%d %H:%M:%S}; {progress.finished} trial(s) finished{to_come}. This page "
        f"reloads itself every {LIVE_PERIOD_S} s.</p>\n"
    )


def waiting_page(results_dir: Path, progress: Progress) -> str:
    """A running study's page before its first trial finishes: what runs, and a reload."""
    try:
        name = json.loads((results_dir / "study.json").read_text())["space"]["name"]
    except (OSError, ValueError, KeyError, TypeError):
        name = results_dir.name
    return f"""<!DOCTYPE html>
<html lang="en">
<head>
<meta charset="utf-8">
<meta http-equiv="refresh" content="{LIVE_PERIOD_S}">
<title>Study report: {html.escape(name)}</title>
<style>
body {{ font-family: system-ui, sans-serif; margin: 2em auto; max-width: 1200px; color: #222; }}
.partial {{ background: #e8f1fb; border-left: 4px solid #2b6cb0; padding: 0.5em 1em; font-weight: bold; }}
</style>
</head>
<body>
<h1>Study report: {html.escape(name)}</h1>
{partial_note(progress)}<p>No trial has finished yet. Results: <code>{html.escape(str(results_dir.resolve()))}</code>.
</p>
</body>
</html>
"""


def _number(value: float) -> str:
    if not math.isfinite(value):
        return "–"
    return f"{value:,.0f}" if abs(value) >= 1000 else f"{value:.4g}"  # counts and seconds in full, measures to 4 digits


def write_report(
    results_dir: str | Path,
    include_stopped: bool = INCLUDE_STOPPED,
    out: str | Path | None = None,
    progress: Progress | None = None,
) -> Path:
    """Read a results directory and write its report (default RESULTS_DIR/report.html); returns the path.
    `progress`: the study is running (a partial page, rendered by `LiveReport`)."""
    results = load_results(results_dir)
    path = Path(out) if out else results.path / REPORT_FILE
    page = render(results, include_stopped, progress)
    atomic_write(path, lambda p: Path(p).write_text(page, encoding="utf-8"))
    return path


class LiveReport:
    """Rewrites a running study's report.html (atomically) as trials finish, at most every `period_s` seconds:
    the first finished trial is shown at once, later ones within `period_s`. The final page, written once the
    study ends (study/cli/run.py), has no `progress` and does not reload."""

    def __init__(self, results_dir: Path, total: int | None, period_s: float = LIVE_PERIOD_S, clock=time.monotonic):
        self.results_dir = results_dir
        self.total = total
        self.period_s = period_s
        self.clock = clock
        self.finished = 0
        self.written_at = -math.inf
        self.due = False
        self.broken = False

    def start(self, finished: int = 0) -> None:
        """The page at once: a waiting page until a trial finishes (or the partial report of a resumed study)."""
        self.finished, self.due = finished, True
        self.update()

    def trial_finished(self, finished: int) -> None:
        self.finished, self.due = finished, True
        self.update()

    def update(self) -> None:
        if self.due and not self.broken and self.clock() - self.written_at >= self.period_s:
            self.write()

    def write(self) -> None:
        self.written_at, self.due = self.clock(), False
        progress = Progress(self.finished, self.total, datetime.now())
        try:
            if self.finished:
                write_report(self.results_dir, progress=progress)
            else:
                page = waiting_page(self.results_dir, progress)
                atomic_write(self.results_dir / REPORT_FILE, lambda p: Path(p).write_text(page, encoding="utf-8"))
        except Exception as error:  # a view that cannot be drawn yet must not stop the study; the tables are safe
            self.broken = True
            print(
                f"warning: the live report could not be written ({type(error).__name__}: {error}); it is written "
                "again when the study ends",
                file=sys.stderr,
            )


def latest_results_dir(root: str | Path = "results") -> Path:
    """The most recently written results directory under `root` (the default --out of study.run)."""
    candidates = [p.parent for p in Path(root).glob("*/trials.*")]
    if not candidates:
        raise StudyError(f"no results under {root}: run python -m study.run first, or name a results directory")
    return max(candidates, key=lambda p: p.stat().st_mtime)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m study.report", description=__doc__.splitlines()[0])
    parser.add_argument("results_dir", type=Path, help="a study's results directory (the --out of python -m study.run)")
    parser.add_argument(
        "--include-stopped",
        action="store_true",
        help="let trials stopped early by ASHA take part in the fronts (default: shown, not eligible)",
    )
    parser.add_argument("--out", type=Path, help="where to write the page (default: RESULTS_DIR/report.html)")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        path = write_report(args.results_dir, args.include_stopped, args.out)
    except StudyError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"Report: {path.resolve()}")
    return 0
