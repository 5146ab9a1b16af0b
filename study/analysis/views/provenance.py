"""Where a study's numbers come from: its settings (study.json), the pre-screen that chose its backbones, and
whether the transferability scores predicted what the study found (computed in study/analysis/agreement.py)."""

from __future__ import annotations

import json
import math

import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from study.analysis.agreement import SCORE_NAMES, score_agreement, score_record
from study.analysis.views import View


def settings_view(study: dict) -> View:
    """The study's settings from study.json, one row each; finish fields say 'not recorded' for an unfinished study."""
    title = "Study settings"
    if not study:
        return View(title=title, note="study.json is missing: the settings are unknown.")
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
    table = pd.DataFrame({"setting": list(rows), "value": [_setting_text(v) for v in rows.values()]})
    return View(title=title, table=table)


def _setting_text(value) -> str:
    if isinstance(value, (dict, list)):
        return json.dumps(value, default=str)
    return "" if value is None else str(value)


def prediction_view(trials: pd.DataFrame, study: dict) -> View:
    """'Did the scores predict the study?': per backbone each score against the best validation accuracy reached."""
    title = "Did the scores predict the study?"
    table, agreement = score_agreement(trials, study)
    record, source = score_record(study)
    if record is None:
        note = (
            "No transferability scores for these backbones yet: python -m study.rank --compare RESULTS_DIR computes "
            "LogME, k-NN and linear-probe scores on the study's data and adds them here."
        )
        return View(title=title, table=table, note=note)
    if table.empty:
        return View(title=title, note=f"The scores from {source} name none of the backbones these trials trained.")
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
    return View(title=title, figure=figure, table=table, note=note)


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
    return View(title="Pre-screen of the backbones", table=table[columns], note=note)
