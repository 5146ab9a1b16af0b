"""Pareto fronts: which trials no other trial beats on accuracy and a cost, and how the front grew.

Fronts maximise validation accuracy against one cost at a time: training time
(the main front), trainable parameters, or peak memory. Test accuracy never
picks a trial. Which trials may sit on a front:

- error trials never (they have no trustworthy final metrics);
- completed trials always;
- trials stopped early by ASHA only with `include_stopped=True`. By default they
  are shown but take no part: a stopped trial's accuracy and time are those of
  fewer epochs than the study's budget, so it would compete as a cheaper but
  truncated run, while the completed trials' own early epochs do not compete.
  The front compares configurations at the study's full budget.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import pandas as pd

from study.core.metrics import ACCURACY, MAIN_COST

INCLUDE_STOPPED = False
# Hypervolume reference: accuracy 0, and a cost a little beyond the costliest eligible trial, so that the
# slowest trial still adds area; the cost axis is divided by the reference cost, so hypervolumes lie in [0, 1].
REFERENCE_MARGIN = 1.1


def non_dominated(objectives: np.ndarray, maximize: Sequence[bool]) -> np.ndarray:
    """Boolean mask of the rows that no other row dominates.

    A row dominates another when it is at least as good on every objective and
    strictly better on one; identical rows do not dominate each other, so ties
    all stay on the front. Rows with a NaN take no part: never on the front,
    never dominating.
    """
    values = np.asarray(objectives, dtype=float)  # rows x objectives
    signed = np.where(np.asarray(maximize), values, -values)  # every objective maximised from here on
    valid = ~np.isnan(signed).any(axis=1)
    candidates = signed[valid]
    mask = np.zeros(len(values), dtype=bool)
    for row in np.flatnonzero(valid):
        beaten = (candidates >= signed[row]).all(axis=1) & (candidates > signed[row]).any(axis=1)
        mask[row] = not beaten.any()
    return mask


def eligible(trials: pd.DataFrame, include_stopped: bool = INCLUDE_STOPPED) -> pd.Series:
    """Which trials may sit on a front (see the module docstring)."""
    statuses = ["completed", "stopped_early"] if include_stopped else ["completed"]
    return trials["status"].isin(statuses)


def pareto_front(
    trials: pd.DataFrame, accuracy: str = ACCURACY, cost: str = MAIN_COST, include_stopped: bool = INCLUDE_STOPPED
) -> pd.DataFrame:
    """The eligible trials on the front of maximal `accuracy` against minimal `cost`, cheapest first."""
    usable = trials[eligible(trials, include_stopped)]
    mask = non_dominated(usable[[accuracy, cost]].to_numpy(dtype=float), [True, False])
    return usable[mask].sort_values([cost, accuracy], ascending=[True, False])


def finishing_order(trials: pd.DataFrame) -> pd.DataFrame:
    """Trials in the order they finished (`finished_at`: their last report); those without one come last."""
    if "finished_at" not in trials:
        return trials
    return trials.sort_values(["finished_at", "trial_id"], na_position="last", kind="stable")


@dataclass(kw_only=True)
class Hypervolume:
    history: pd.DataFrame  # one row per trial in finishing order: finished, trial_id, status, hypervolume, improved
    reference: dict[str, float]  # the reference point, in the objectives' own units


def hypervolume_history(
    trials: pd.DataFrame,
    accuracy: str = ACCURACY,
    cost: str = MAIN_COST,
    include_stopped: bool = INCLUDE_STOPPED,
    reference_cost: float | None = None,
) -> Hypervolume:
    """The hypervolume of the accuracy-cost front after each finished trial (an anytime curve).

    Trials in finishing order; those that may not sit on the front (see `eligible`), lack a value or cost at
    least the reference leave the curve where it was. Reference point: accuracy 0 and REFERENCE_MARGIN times
    the largest cost of an eligible trial; the cost axis is scaled by that reference, so 1.0 would be accuracy 1
    at no cost. `reference_cost` sets the reference cost instead: two studies' hypervolumes compare only against
    the same reference (points beyond it add nothing).
    """
    ordered = finishing_order(trials)
    points = ordered[[accuracy, cost]].to_numpy(dtype=float)
    usable = eligible(ordered, include_stopped).to_numpy() & ~np.isnan(points).any(axis=1)
    if reference_cost is None:
        largest = points[usable, 1].max() if usable.any() else 0.0
        reference_cost = float(REFERENCE_MARGIN * largest) if largest > 0 else 1.0
    usable &= points[:, 1] < reference_cost
    scaled = points / [1.0, reference_cost]
    # Each trial's value is that of every usable trial up to it: a trial that adds nothing repeats the last value.
    hypervolumes = np.array([hypervolume(scaled[: end + 1][usable[: end + 1]]) for end in range(len(ordered))])
    history = pd.DataFrame(
        {
            "finished": np.arange(1, len(ordered) + 1),
            "trial_id": ordered["trial_id"].to_numpy(),
            "status": ordered["status"].to_numpy(),
            "hypervolume": hypervolumes,
            "improved": np.diff(hypervolumes, prepend=0.0) > 0,
        }
    )
    return Hypervolume(history=history, reference={accuracy: 0.0, cost: reference_cost})


def hypervolume(points: np.ndarray) -> float:
    """The area (accuracy, cost) points dominate against the reference point (accuracy 0, cost 1): accuracy
    maximised, cost minimised and already divided by the reference cost, so the area lies in [0, 1].

    In two objectives the dominated region is a staircase: the front's points sorted by cost, each step from one
    point's cost to the next one's at that point's accuracy. Only the front's points are summed, so a trial that
    adds nothing leaves the sum bit for bit as it was (and `improved` false). Points at or beyond the reference
    (accuracy 0 or less, cost 1 or more) add nothing.
    """
    points = np.asarray(points, dtype=float).reshape(-1, 2)
    points = points[(points[:, 0] > 0) & (points[:, 1] < 1)]
    order = np.lexsort((-points[:, 0], points[:, 1]))  # cheapest first, the most accurate first among equal costs
    accuracies, costs = points[order, 0], points[order, 1]
    best_before = np.maximum.accumulate(np.concatenate([[0.0], accuracies]))[:-1]
    on_front = accuracies > best_before  # more accurate than every cheaper point
    accuracies, costs = accuracies[on_front], costs[on_front]
    return float((accuracies * np.diff(costs, append=1.0)).sum())
