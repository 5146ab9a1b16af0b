"""Did the transferability scores predict the study? Each score's ranking of the backbones against the best
validation accuracy the study reached with each, as Kendall's tau.

The scores come from `python -m study.rank --compare` (study.json's `scores`) or from the study's own pre-screen
(study/ranking/scores.py); this module compares numbers, study/analysis/views/provenance.py draws them, and
`python -m study.rank --compare` records the same agreement in study.json.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import pandas as pd

SCORE_NAMES = ("logme", "knn", "probe")  # study/ranking/scores.py's scores, higher is better


class ScoreRecord(NamedTuple):
    """The scores of a study's backbones as recorded (None when there are none), and where they come from."""

    record: dict | None
    source: str


class Agreement(NamedTuple):
    """Per backbone its best validation accuracy, study rank, scores and score ranks; and per score
    {tau, p_value, backbones, top, best, top_is_best} (see score_agreement)."""

    table: pd.DataFrame
    by_score: dict[str, dict]


def candidate_accuracies(trials: pd.DataFrame) -> pd.DataFrame:
    """Per backbone (and weights) the best validation accuracy any finished trial reached with it."""
    finished = trials[(trials["status"] != "error") & trials["best_val_acc"].notna()] if len(trials) else trials
    if "backbone" not in finished or finished.empty:
        return pd.DataFrame(columns=["backbone", "weights", "best_val_acc", "trials"])
    keys = ["backbone", "weights"] if "weights" in finished else ["backbone"]
    grouped = finished.groupby(keys, sort=False)["best_val_acc"]
    return pd.concat([grouped.max(), grouped.size().rename("trials")], axis=1).reset_index()


def score_record(study: dict) -> ScoreRecord:
    """The scores of the study's backbones, and where they come from: `python -m study.rank --compare` (study.json's
    `scores`) or the study's pre-screen."""
    if study.get("scores"):
        return ScoreRecord(record=study["scores"], source="python -m study.rank --compare")
    if study.get("prescreen"):
        return ScoreRecord(record=study["prescreen"], source=f"the pre-screen ({study['prescreen'].get('score')})")
    return ScoreRecord(record=None, source="")


def score_agreement(trials: pd.DataFrame, study: dict) -> Agreement:
    """Each score against the best validation accuracy per backbone, and Kendall's tau (tau-b, scipy) of each score's
    ranking against the study's: {score: {tau, p_value, backbones, top, best, top_is_best}}. Ties count whole, so
    the row order decides nothing: `best` lists every backbone at the best accuracy, `top` every backbone at the
    score's highest value (sorted labels), and `top_is_best` says that every backbone in `top` is in `best`."""
    from scipy.stats import kendalltau

    best = candidate_accuracies(trials)
    record = score_record(study).record
    if record is None or best.empty:
        return Agreement(table=best, by_score={})
    scores = pd.DataFrame(record.get("table", []))
    keys = [key for key in ("backbone", "weights") if key in best and key in scores]
    shown = [name for name in SCORE_NAMES if name in scores]
    table = best.merge(scores[[*keys, *shown]], on=keys, how="inner")
    table.insert(len(keys), "study_rank", table["best_val_acc"].rank(ascending=False, method="min").astype(int))
    labels = candidate_labels(table)
    best_labels = sorted(labels[table["best_val_acc"] == table["best_val_acc"].max()])
    by_score = {}
    for name in shown:
        table[f"rank_{name}"] = table[name].rank(ascending=False, method="min").astype(int)
        tau, p_value = kendalltau(table[name], table["best_val_acc"]) if len(table) >= 2 else (math.nan, math.nan)
        top = sorted(labels[table[name] == table[name].max()])
        by_score[name] = {
            "tau": float(tau),
            "p_value": float(p_value),
            "backbones": len(table),
            "top": top,
            "best": best_labels,
            "top_is_best": bool(top) and set(top) <= set(best_labels),
        }
    return Agreement(table=table, by_score=by_score)


def candidate_labels(table: pd.DataFrame) -> pd.Series:
    """Each row's backbone, with its weights where the backbone appears with several."""
    if "weights" not in table:
        return table["backbone"].astype(str)
    repeated = table["backbone"].duplicated(keep=False)
    backbones = table["backbone"].astype(str)
    return backbones.where(~repeated, backbones + " (" + table["weights"].astype(str) + ")")
