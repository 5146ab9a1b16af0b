"""Repeats over seeds: one row per configuration, with the spread of its repeats, and short labels for each.

A space's `repeats: N` runs every configuration N times with different trial seeds (TrialConfig.repeat,
study/core/config.py); trials.csv keeps every run. The configurations table (configurations.csv/.parquet) has
one row per configuration: the repeats that completed all epochs (`repeats`) out of those run (`repeats_run`),
and for each measure its mean (under the measure's own name, so that fronts and figures read it as they read a
trial), sample standard deviation (`_std`) and 95% interval of the mean (`_low`, `_high`;
study/analysis/uncertainty.py).
Only completed repeats are averaged: under ASHA a configuration whose weaker repeats were stopped looks better than
it is (docs/scheduler.md). When the study has repeats, its front is drawn over these rows (`front_candidates`).
"""

from __future__ import annotations

import pandas as pd

from study.analysis.uncertainty import spread
from study.core.config import DATA_FINGERPRINT, FIELD_TYPES
from study.core.metrics import ACCURACY, MAIN_COST

REPEAT = "repeat"
# Averaged over a configuration's completed repeats: (measure, with an interval of its mean).
AVERAGED = (
    (ACCURACY, True),
    ("test_acc", True),
    (MAIN_COST, True),
    ("study_train_time_s", False),
    ("trainable_params", False),
    ("peak_memory_mib", False),
)


def varying_settings(trials: pd.DataFrame) -> list[str]:
    """Trial settings that differ between trials: what the study searched (a data fingerprint follows `data`)."""
    searched = [key for key in FIELD_TYPES if key != DATA_FINGERPRINT]
    return [key for key in searched if key in trials and trials[key].astype(str).nunique() > 1]


def repeated(trials: pd.DataFrame) -> bool:
    """Whether the study ran any configuration more than once (a repeat index above 0)."""
    return REPEAT in trials and (pd.to_numeric(trials[REPEAT], errors="coerce").fillna(0) > 0).any()


def labelled_settings(trials: pd.DataFrame) -> list[str]:
    """The settings that tell the study's configurations apart: those that vary, less the repeat index."""
    return [key for key in varying_settings(trials) if key != REPEAT]


def trial_labels(trials: pd.DataFrame) -> pd.Series:
    """A short label per trial naming its configuration by the settings that vary ("unfreeze_depth=4"); the
    backbone's name when nothing varies. Repeats of one configuration share a label."""
    settings = labelled_settings(trials)
    if not settings:
        return trials["backbone"].astype(str) if "backbone" in trials else trials["trial_id"].astype(str)
    return trials.apply(lambda row: ", ".join(f"{key}={row[key]}" for key in settings), axis=1).astype(str)


def configurations(trials: pd.DataFrame) -> pd.DataFrame:
    """One row per configuration (every setting but the repeat index), in the order they first appear."""
    settings = [key for key in FIELD_TYPES if key in trials and key != REPEAT]
    labels = trial_labels(trials)
    keys = trials[settings].map(str).agg("\x1f".join, axis=1)  # map: astype(str) keeps missing values missing
    rows = []
    for key in dict.fromkeys(keys):
        group = trials[keys == key]
        completed = group[group["status"] == "completed"]
        averaged = completed if len(completed) else group[group["status"] != "error"]
        first = group.iloc[0]
        row = {
            "configuration": labels[group.index[0]],
            "trial_id": (completed if len(completed) else group)["trial_id"].iloc[0],
            "status": _status(group),
            "repeats": len(completed),
            "repeats_run": len(group),
            "trial_ids": ",".join(group["trial_id"].astype(str)),
            **{setting: first[setting] for setting in settings},
        }
        for measure, with_interval in AVERAGED:
            if measure not in group:
                continue
            mean, std, low, high = spread(averaged[measure].to_numpy(dtype=float))
            row[measure], row[f"{measure}_std"] = mean, std
            if with_interval:
                row[f"{measure}_low"], row[f"{measure}_high"] = low, high
        row["efficiency"] = row[ACCURACY] / row[MAIN_COST] if row.get(MAIN_COST, 0) > 0 else float("nan")
        rows.append(row)
    return pd.DataFrame(rows)


def _status(group: pd.DataFrame) -> str:
    """completed if any repeat completed; else stopped_early if any was stopped; else error."""
    statuses = set(group["status"])
    return next((status for status in ("completed", "stopped_early") if status in statuses), "error")


def front_candidates(trials: pd.DataFrame) -> pd.DataFrame:
    """What a study's fronts are drawn over: its configurations when it has repeats, else its trials."""
    return configurations(trials) if repeated(trials) else trials
