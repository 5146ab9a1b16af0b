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

import contextlib
import types
import warnings
from collections.abc import Iterator, Sequence
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


@dataclass
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

    Computed by Optuna (`plot_hypervolume_history`) on a two-objective study
    holding the trials in finishing order;
    trials that may not sit on the front (see `eligible`) or lack a value
    leave the curve where it was. Reference point: accuracy 0 and
    REFERENCE_MARGIN times the largest cost of an eligible trial; the cost axis
    is scaled by that reference, so 1.0 would be accuracy 1 at no cost.
    `reference_cost` sets the reference cost instead: two studies' hypervolumes
    compare only against the same reference (points beyond it add nothing).
    """
    ordered = finishing_order(trials)
    points = ordered[[accuracy, cost]].to_numpy(dtype=float)
    usable = eligible(ordered, include_stopped).to_numpy() & ~np.isnan(points).any(axis=1)
    if reference_cost is None:
        largest = points[usable, 1].max() if usable.any() else 0.0
        reference_cost = float(REFERENCE_MARGIN * largest) if largest > 0 else 1.0
    usable &= points[:, 1] < reference_cost
    hypervolumes = np.zeros(len(ordered))
    if usable.any():
        by_number = _optuna_hypervolumes(points, usable, reference_cost)
        hypervolumes = pd.Series([by_number.get(i, np.nan) for i in range(len(ordered))]).ffill().fillna(0.0).to_numpy()
    history = pd.DataFrame(
        {
            "finished": np.arange(1, len(ordered) + 1),
            "trial_id": ordered["trial_id"].to_numpy(),
            "status": ordered["status"].to_numpy(),
            "hypervolume": hypervolumes,
            "improved": np.diff(hypervolumes, prepend=0.0) > 0,
        }
    )
    return Hypervolume(history, {accuracy: 0.0, cost: reference_cost})


def _optuna_hypervolumes(points: np.ndarray, usable: np.ndarray, reference_cost: float) -> dict[int, float]:
    """Hypervolume after each usable point, keyed by the point's position.

    Optuna's public hypervolume API is its hypervolume-history plot (the computation itself lives in
    the private optuna._hypervolume), so the curve is read from the figure it returns.
    """
    with quiet_optuna() as optuna:
        study = optuna.create_study(directions=["maximize", "minimize"])
        for (accuracy, cost), use in zip(points, usable):
            if use:
                study.add_trial(optuna.trial.create_trial(values=[accuracy, cost / reference_cost]))
            else:
                study.add_trial(optuna.trial.create_trial(state=optuna.trial.TrialState.FAIL))
        curve = optuna.visualization.plot_hypervolume_history(study, reference_point=[0.0, 1.0]).data[0]
    return dict(zip(curve.x, curve.y))


@contextlib.contextmanager
def quiet_optuna() -> Iterator[types.ModuleType]:
    """Optuna, imported on first use (Ray workers import this module and never need it), without its chatter.

    It logs every study it creates, warns about experimental functions, and its tqdm import warns in
    notebooks without ipywidgets: none of it concerns the reader of a report.
    """
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="IProgress not found")
        import optuna

        warnings.simplefilter("ignore", optuna.exceptions.ExperimentalWarning)
        verbosity = optuna.logging.get_verbosity()
        optuna.logging.set_verbosity(optuna.logging.ERROR)
        try:
            yield optuna
        finally:
            optuna.logging.set_verbosity(verbosity)
