"""A study's results as tables and figures: trials, per-epoch curves, the Pareto front.

Everything here works on plain records and DataFrames (no Ray), so results can
be rebuilt, tested and analysed without a cluster. Files are written atomically
(temporary file, then rename): an interrupted export never leaves half a file.
"""

from __future__ import annotations

import math
import os
import tempfile
from pathlib import Path
from typing import Callable

import pandas as pd
import plotly.graph_objects as go

from study.config import FIELD_TYPES, TrialConfig
from study.pareto import pareto_front

# What a trial reports every epoch (study/train.py); the rest of a report is static trial information.
EPOCH_METRICS = (
    "epoch", "train_loss", "train_acc", "val_loss", "val_acc", "test_loss", "test_acc",
    "epoch_time_s", "train_time_s", "eval_time_s", "images_per_s",
)  # fmt: skip
TRIAL_INFO = ("weights_used", "num_layers", "unfrozen_layers", "trainable_params", "total_params", "img_size", "device")
FINAL_METRICS = ("val_acc", "val_loss", "train_acc", "train_loss", "test_acc", "test_loss", "train_time_s")
_UMASK = os.umask(0)
os.umask(_UMASK)


def trials_table(records: list[dict]) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Build (trials, epochs) from records of {trial_id, config, history, error, max_epochs}.

    `history` is the list of epoch reports. Status: `error` if the trial raised,
    `completed` if it ran all `max_epochs`, else `stopped_early` (by ASHA).
    Final metrics are those of the last epoch run; `best_val_acc` is reported beside.
    """
    rows, epochs = [], []
    for record in records:
        history = record["history"]
        row = {"trial_id": record["trial_id"]}
        row["status"] = "error" if record["error"] else "completed" if len(history) >= record["max_epochs"] else "stopped_early"
        row["error"] = record["error"] or ""
        row.update(TrialConfig.from_dict(record["config"]).to_dict())  # every setting, defaults included
        row["epochs_run"] = len(history)
        last = history[-1] if history else {}
        row.update({key: last.get(key, math.nan) for key in FINAL_METRICS})
        best = max(history, key=lambda h: h["val_acc"]) if history else {}
        row["best_val_acc"] = best.get("val_acc", math.nan)
        row["best_epoch"] = best.get("epoch", math.nan)
        row["eval_time_s"] = sum(h["eval_time_s"] for h in history) if history else math.nan
        row["images_per_s"] = sum(h["images_per_s"] for h in history) / len(history) if history else math.nan
        row.update({key: last.get(key) for key in TRIAL_INFO})
        row["checkpoint"] = record.get("checkpoint") or ""  # the saved final model (save_checkpoint), for study.merge
        rows.append(row)
        epochs += [{"trial_id": record["trial_id"], **{k: h.get(k) for k in EPOCH_METRICS}} for h in history]
    trials = pd.DataFrame(rows)
    epoch_table = pd.DataFrame(epochs, columns=["trial_id", *EPOCH_METRICS])
    return _uniform_types(trials), epoch_table


def _uniform_types(table: pd.DataFrame) -> pd.DataFrame:
    """Columns mixing types (unfreeze_depth: 3 and 'all') become text so Parquet can store them."""
    for column in table.columns:
        kinds = {type(v) for v in table[column] if v is not None and not (isinstance(v, float) and math.isnan(v))}
        if len(kinds) > 1 and not kinds <= {int, float}:
            table[column] = table[column].map(lambda v: None if v is None else str(v))
    return table


def varying_settings(trials: pd.DataFrame) -> list[str]:
    """Trial settings that differ between trials: what the study searched."""
    return [key for key in FIELD_TYPES if key in trials and trials[key].astype(str).nunique() > 1]


def export(out: Path, trials: pd.DataFrame, epochs: pd.DataFrame, title: str) -> pd.DataFrame:
    """Write trials.csv/.parquet, epochs.parquet, pareto.csv/.html into `out`; return the front."""
    front = pareto_front(trials)
    atomic_write(out / "trials.csv", lambda p: trials.to_csv(p, index=False))
    atomic_write(out / "trials.parquet", lambda p: trials.to_parquet(p, index=False))
    atomic_write(out / "epochs.parquet", lambda p: epochs.to_parquet(p, index=False))
    atomic_write(out / "pareto.csv", lambda p: front.to_csv(p, index=False))
    figure = pareto_figure(trials, front, title)
    atomic_write(out / "pareto.html", lambda p: figure.write_html(p, include_plotlyjs=True, full_html=True))
    return front


def atomic_write(path: Path, write: Callable[[str], None]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    os.close(handle)
    try:
        write(temporary)
        os.chmod(temporary, 0o666 & ~_UMASK)  # mkstemp's 0600 would hide results from the user's group
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def pareto_figure(trials: pd.DataFrame, front: pd.DataFrame, title: str) -> go.Figure:
    shown = trials[trials["status"] != "error"]
    settings = ["backbone", *[k for k in varying_settings(trials) if k != "backbone"]]
    hover = lambda table: [
        "<br>".join([f"<b>{row.trial_id}</b> ({row.status})", *(f"{k} = {getattr(row, k)}" for k in settings),
                     f"trainable params = {row.trainable_params:,}", f"val acc = {row.val_acc:.4f}",
                     f"training time = {row.train_time_s:.1f} s"])
        for row in table.itertuples()
    ]  # fmt: skip
    figure = go.Figure()
    for status, symbol in (("completed", "circle"), ("stopped_early", "x")):
        part = shown[shown["status"] == status]
        figure.add_trace(go.Scatter(
            x=part["train_time_s"], y=part["val_acc"], mode="markers", name=status.replace("_", " "),
            marker=dict(symbol=symbol, size=9, color="#9aa5b1"), text=hover(part), hoverinfo="text",
        ))  # fmt: skip
    figure.add_trace(go.Scatter(
        x=front["train_time_s"], y=front["val_acc"], mode="lines+markers", name="Pareto front",
        line=dict(shape="hv", color="#d1495b"), marker=dict(size=12, color="#d1495b"), text=hover(front), hoverinfo="text",
    ))  # fmt: skip
    figure.update_layout(
        title=title, xaxis_title="training time (s, evaluation excluded)", yaxis_title="validation accuracy (final epoch)",
        template="plotly_white", hovermode="closest",
    )  # fmt: skip
    return figure
