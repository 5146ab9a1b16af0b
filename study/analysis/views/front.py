"""The Pareto fronts as figures and tables: each front against its cost, the main front as a table, every trial
(and, with repeats, every configuration) as a table with the fronts it sits on; and the scatter with the front
highlighted that pareto.html also shows.

Fronts are drawn over study/analysis/repeats.py `front_candidates`: a study's trials, or its configurations when it
has repeats. Which of them sit on a front is decided in study/analysis/pareto.py, how sure each accuracy is in
study/analysis/uncertainty.py, which front members are not significantly below the best in
study/analysis/recommend.py (passed in as its `Recommendation.front`); this module only draws and tabulates.
"""

from __future__ import annotations

import math

import pandas as pd
import plotly.graph_objects as go

from study.analysis.pareto import INCLUDE_STOPPED, pareto_front
from study.analysis.recommend import BEST, NOT_BELOW
from study.analysis.repeats import front_candidates, repeated, trial_labels, varying_settings
from study.analysis.uncertainty import CONFIDENCE, SIGNIFICANCE, interval_text
from study.analysis.views import View
from study.core.metrics import ACCURACY, FRONT_COSTS, MAIN_COST, METRICS, SUMMARY_MEASURES

# What a trial's hover text shows beside its settings: (column, label, format); a measure with an interval
# (`_low`, `_high`) or a spread over repeats (`_std`) shows them too.
HOVER_MEASURES = (
    (ACCURACY, "val acc", "{:.4f}"),
    ("test_acc", "test acc (not used to choose)", "{:.4f}"),
    (MAIN_COST, "training time alone on a fresh node", "{:.1f} s"),
    ("study_train_time_s", "training time this study spent", "{:.1f} s"),
    ("cache", "feature cache", "{}"),
    ("repeat", "repeat", "{}"),
    ("trainable_params", "trainable params", "{:,.0f}"),
    ("peak_memory_mib", "peak memory", "{:,.0f} MiB"),
    ("efficiency", "efficiency", "{:.4f} acc/s"),
    ("epochs_run", "epochs run", "{:.0f}"),
)
# Shown beside the front's time: what the study actually spent, and whether the trial's features came from a cache.
TIME_COLUMNS = (MAIN_COST, "study_train_time_s", "cache")
# The accuracies the tables show first, each with its interval.
ACCURACIES = (ACCURACY, "test_acc")
INTERVAL = f"{CONFIDENCE:.0%} interval"


def trial_hover(trials: pd.DataFrame, settings: list[str]) -> list[str]:
    """One hover text per trial (or configuration): its settings, status and every measure it has."""
    shown = [m for m in HOVER_MEASURES if m[0] != "repeat" or repeated(trials)]
    texts = []
    for row in trials.to_dict("records"):
        status = row["status"].replace("_", " ")
        if "configuration" in row:
            lines = [
                f"<b>{row['configuration']}</b> ({status}; {row['repeats']} of {row['repeats_run']} repeats "
                f"completed: {row['trial_ids']})"
            ]
        else:
            lines = [f"<b>{row['trial_id']}</b> ({status})"]
        lines += [f"{key} = {row[key]}" for key in settings if key in row]
        lines += [
            f"{label} = {_estimate(row, key, form)}" for key, label, form in shown if key in row and pd.notna(row[key])
        ]
        texts.append("<br>".join(lines))
    return texts


def _estimate(row: dict, measure: str, form: str = "{:.3f}") -> str:
    """A measure as text with what is known of its uncertainty: '0.950 [0.922, 0.968]' for a trial's accuracy,
    '0.950 ± 0.012 [0.921, 0.979]' (mean ± sd [interval of the mean]) for a configuration's."""
    text = form.format(row[measure])
    std = row.get(f"{measure}_std", math.nan)
    if isinstance(std, float) and math.isfinite(std):
        text += f" ± {form.format(std)}"
    return text + interval_text(row, measure, form)


def labels(points: pd.DataFrame, candidates: pd.DataFrame) -> list[str]:
    """Each point's short label (its configuration's varying settings), named over all candidates so that a front's
    labels name what tells it apart from the rest of the study."""
    if "configuration" in candidates:
        by_id = dict(zip(candidates["trial_id"], candidates["configuration"]))
    else:
        by_id = dict(zip(candidates["trial_id"], trial_labels(candidates))) if len(candidates) else {}
    return [by_id.get(trial_id, str(trial_id)) for trial_id in points["trial_id"]]


def _error_bars(points: pd.DataFrame, accuracy: str) -> dict | None:
    """Vertical bars over each point's interval; a point without one (NaN) gets none."""
    if f"{accuracy}_low" not in points or f"{accuracy}_high" not in points:
        return None
    value = points[accuracy].astype(float)
    return dict(
        type="data",
        symmetric=False,
        array=(points[f"{accuracy}_high"].astype(float) - value).tolist(),
        arrayminus=(value - points[f"{accuracy}_low"].astype(float)).tolist(),
        thickness=1.2,
        width=4,
    )


def _judged(judged: pd.DataFrame | None, cost: str, accuracy: str) -> pd.DataFrame | None:
    """The recommendation's verdicts apply to the front they were made on: accuracy against the main cost."""
    if judged is None or "verdict" not in judged or cost != MAIN_COST or accuracy != ACCURACY:
        return None
    return judged


def close_to_best_name(judged: pd.DataFrame) -> str:
    """The legend entry of the front members not significantly below the best, naming the rule that said so."""
    rule = f"McNemar, {SIGNIFICANCE:.0%}" if "p_value" in judged else "within one standard error"
    return f"{NOT_BELOW} ({rule})"


def pareto_figure(
    trials: pd.DataFrame,
    front: pd.DataFrame,
    title: str,
    cost: str = MAIN_COST,
    include_stopped: bool = INCLUDE_STOPPED,
    accuracy: str = ACCURACY,
    judged: pd.DataFrame | None = None,
) -> go.Figure:
    """Every candidate (trial, or configuration with repeats) with values, each with its accuracy's interval as an
    error bar; the front highlighted and labelled; stopped trials marked (and named ineligible when they are).
    `judged`: study/analysis/recommend.py `Recommendation.front`, whose members not significantly below the best are
    ringed on the accuracy-time front."""
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
                error_y=_error_bars(part, accuracy),
                text=trial_hover(part, settings),
                hoverinfo="text",
            )
        )
    figure.add_trace(
        go.Scatter(
            x=front[cost],
            y=front[accuracy],
            mode="lines+markers+text",
            name="Pareto front",
            line=dict(shape="hv", color="#d1495b"),
            marker=dict(size=12, color="#d1495b"),
            error_y=_error_bars(front, accuracy),
            text=labels(front, trials),
            # below the staircase's step to the right (which runs at the point's height), clear of the error bar and
            # of the axis: a label to the left of a cheap point is clipped by the plot's edge
            textposition="bottom right",
            hovertext=trial_hover(front, settings),
            hoverinfo="text",
        )
    )
    judged = _judged(judged, cost, accuracy)
    if judged is not None:
        close = front[front["trial_id"].isin(judged.loc[judged["verdict"] == NOT_BELOW, "trial_id"])]
        if len(close):
            figure.add_trace(
                go.Scatter(
                    x=close[cost],
                    y=close[accuracy],
                    mode="markers",
                    name=close_to_best_name(judged),
                    marker=dict(symbol="circle-open", size=22, line=dict(width=2.5), color="#2a9d8f"),
                    hoverinfo="skip",
                )
            )
    figure.update_layout(
        title=title,
        xaxis_title=FRONT_COSTS.get(cost, cost),
        yaxis_title=f"{'validation accuracy' if accuracy == ACCURACY else accuracy} (final epoch; bars: {INTERVAL})",
        xaxis_type="log" if cost == "trainable_params" else None,  # counts span orders of magnitude
        template="plotly_white",
        hovermode="closest",
    )
    return figure


def pareto_view(
    trials: pd.DataFrame,
    cost: str = MAIN_COST,
    accuracy: str = ACCURACY,
    include_stopped: bool = INCLUDE_STOPPED,
    judged: pd.DataFrame | None = None,
) -> View:
    title = f"Pareto front: {accuracy} vs {FRONT_COSTS.get(cost, cost)}"
    if cost not in trials or trials[cost].isna().all():
        return View(
            title=title,
            note=f"No trial has a value for '{cost}': results from before it was measured, a platform that cannot "
            "measure it (peak memory off Linux), or no trial finished an epoch.",
        )
    candidates = front_candidates(trials)
    front = pareto_front(candidates, accuracy, cost, include_stopped)
    figure = pareto_figure(
        candidates, front, title, cost=cost, include_stopped=include_stopped, accuracy=accuracy, judged=judged
    )
    notes = []
    if candidates is not trials:
        notes.append(
            "Each point is a configuration: the mean over its completed repeats, the bar the "
            f"{INTERVAL} of that mean (none with a single completed repeat)."
        )
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


def with_uncertainty(table: pd.DataFrame, measures: tuple[str, ...], form: str = "{:.3f}") -> pd.DataFrame:
    """`table` with each measure that has an interval or a spread written as text beside them ('0.950 [0.922,
    0.968]'), under the measure's own name as the console's front does."""
    records = table.to_dict("records")
    return table.assign(
        **{
            measure: [_estimate(row, measure, form) if pd.notna(row[measure]) else "" for row in records]
            for measure in measures
            if measure in table and any(f"{measure}{end}" in table for end in ("_low", "_std"))
        }
    )


def _difference(row: dict) -> str:
    """A front member's paired difference from the best, with its interval; empty for the best itself and where
    none was computed."""
    if row["verdict"] == BEST or not math.isfinite(row.get("difference", math.nan)):
        return ""
    return f"{row['difference']:+.3f} [{row['difference_low']:+.3f}, {row['difference_high']:+.3f}]"


def front_table_view(
    trials: pd.DataFrame,
    dimensions: dict[str, str],
    include_stopped: bool = INCLUDE_STOPPED,
    cost: str = MAIN_COST,
    accuracy: str = ACCURACY,
    judged: pd.DataFrame | None = None,
) -> View:
    title = f"The front ({accuracy} vs {FRONT_COSTS.get(cost, cost)}), cheapest first"
    if cost not in trials or trials[cost].isna().all():
        return View(title=title, note=f"No trial has '{cost}' in these results.")
    candidates = front_candidates(trials)
    front = pareto_front(candidates, accuracy, cost, include_stopped)
    table = with_uncertainty(front.assign(label=labels(front, candidates)), ACCURACIES)
    notes = [f"Accuracies with their {INTERVAL}. Test accuracy is reported beside the front, never used to pick it."]
    if candidates is not trials:
        notes.insert(0, "Each row is a configuration: mean ± standard deviation over its completed repeats.")
    judged = _judged(judged, cost, accuracy)
    verdicts = []
    if judged is not None:
        table = table.merge(judged[["trial_id", "verdict"]], on="trial_id", how="left")
        verdicts = ["verdict"]
        if "p_value" in judged:
            paired = judged.assign(
                **{"difference from the best": [_difference(r) for r in judged.to_dict("records")]},
                p_value=judged["p_value"].where(judged["verdict"] != BEST),  # the best against itself says nothing
            )
            table = table.merge(paired[["trial_id", "difference from the best", "p_value"]], on="trial_id", how="left")
            verdicts += ["difference from the best", "p_value"]
            notes.append(
                f"Verdict: the exact McNemar test of each member against the best on the images exactly one of the two "
                f"got right ({SIGNIFICANCE:.0%}), with the paired {INTERVAL} of the difference."
            )
        else:
            notes.append("Verdict: the one-standard-error rule against the best configuration.")
    if front.empty:
        notes.insert(0, "No trial is on the front (none is eligible).")
    identity = ["configuration", "repeats", "repeats_run"] if candidates is not trials else ["trial_id"]
    columns = [
        "label",
        *identity,
        *[d for d in dimensions if d in table],
        "status",
        *[m for m in ACCURACIES if m in table],
        *verdicts,
        *[c for c in TIME_COLUMNS if c in table],
        *[m for m in SUMMARY_MEASURES if m in table],
    ]
    return View(title=title, table=table[list(dict.fromkeys(columns))].reset_index(drop=True), note=" ".join(notes))


def configurations_view(trials: pd.DataFrame, dimensions: dict[str, str]) -> View:
    """With repeats: one row per configuration, its repeats and the spread of accuracy and time over them."""
    table = with_uncertainty(front_candidates(trials), ACCURACIES)
    table = with_uncertainty(table, (MAIN_COST, "study_train_time_s"), form="{:.3g}")
    columns = [
        "configuration",
        *[d for d in dimensions if d in table],
        "status",
        "repeats",
        "repeats_run",
        ACCURACY,
        "test_acc",
        MAIN_COST,
        "study_train_time_s",
        "trial_ids",
    ]
    return View(
        title="Configurations over repeats",
        table=table[[c for c in dict.fromkeys(columns) if c in table]].reset_index(drop=True),
        note=f"Mean ± standard deviation [{INTERVAL} of the mean] over each configuration's repeats that completed "
        "all epochs (repeats, of repeats_run run): stopped repeats are left out, so a configuration whose weaker "
        "repeats were stopped early looks better than it is.",
    )


def trials_table_view(
    trials: pd.DataFrame, dimensions: dict[str, str], include_stopped: bool = INCLUDE_STOPPED
) -> View:
    table = with_uncertainty(trials, ACCURACIES)
    candidates = front_candidates(trials)
    memberships = []
    for cost in FRONT_COSTS:
        if cost in trials and trials[cost].notna().any():
            front = pareto_front(candidates, cost=cost, include_stopped=include_stopped)
            members = front["trial_ids"] if "trial_ids" in front else front["trial_id"]
            memberships.append((cost, {t for ids in members for t in str(ids).split(",")}))
    table["on fronts"] = [
        ", ".join(METRICS[cost].front_cost for cost, ids in memberships if t in ids) for t in table["trial_id"]
    ]
    columns = [
        "trial_id",
        *(["repeat"] if repeated(trials) else []),
        *dimensions,
        "status",
        *[m for m in ACCURACIES if m in table],
        *[c for c in TIME_COLUMNS if c in table],
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
    if candidates is not trials:
        note += " With repeats the fronts are over configurations: a trial is on a front when its configuration is."
    return View(title="Every trial", table=table[list(dict.fromkeys(columns))].reset_index(drop=True), note=note)
