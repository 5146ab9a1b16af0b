"""Non-dominated sorting: which trials no other trial beats on every objective."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import pandas as pd


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


def pareto_front(trials: pd.DataFrame, accuracy: str = "val_acc", cost: str = "train_time_s") -> pd.DataFrame:
    """The trials on the front of maximal `accuracy` against minimal `cost`, cheapest first.

    Trials that errored take no part.
    """
    usable = trials[trials["status"] != "error"]
    mask = non_dominated(usable[[accuracy, cost]].to_numpy(dtype=float), [True, False])
    return usable[mask].sort_values([cost, accuracy], ascending=[True, False])
