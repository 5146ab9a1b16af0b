"""Dimension importance: how much of the variation in validation accuracy each searched dimension explains.

Computed by Optuna's fANOVA (`FanovaImportanceEvaluator`) on the study's trials rebuilt as an Optuna study; this
module returns numbers and the reason when there are none, and study/analysis/views/dimensions.py draws them
(the split of optuna/importance/ and optuna/visualization/_param_importances.py). Optuna is imported on first
use: a study's driver and its Ray workers import the analysis package and never need it.
"""

from __future__ import annotations

import contextlib
import types
import warnings
from collections.abc import Iterator
from typing import NamedTuple

import numpy as np
import pandas as pd

from study.analysis.pareto import INCLUDE_STOPPED, eligible
from study.analysis.searched import category_order
from study.core.metrics import ACCURACY

# fANOVA fits a random forest to the trials: with fewer, its importances are noise.
MIN_TRIALS_FOR_IMPORTANCE = 5


class Importance(NamedTuple):
    """Each dimension's importance (ascending), or None and in `note` why there is none; else what they mean."""

    importances: pd.Series | None
    note: str


def dimension_importance(
    trials: pd.DataFrame, dimensions: dict[str, str], include_stopped: bool = INCLUDE_STOPPED
) -> Importance:
    """fANOVA importance of each dimension for validation accuracy (Optuna), or None and the reason it cannot be had.

    The trials that may sit on a front are rebuilt as an Optuna study (create_trial); categorical
    dimensions become categorical distributions, numeric ones float distributions over the observed range.
    """
    if len(dimensions) < 2:
        searched = f"one ({next(iter(dimensions))})" if dimensions else "none"
        return Importance(
            importances=None,
            note=f"Importance compares searched dimensions; this study searched {searched}: see the accuracy per "
            "dimension instead.",
        )
    usable = trials[eligible(trials, include_stopped) & trials[ACCURACY].notna()]
    if len(usable) < MIN_TRIALS_FOR_IMPORTANCE:
        return Importance(
            importances=None,
            note=f"Importance needs at least {MIN_TRIALS_FOR_IMPORTANCE} trials that may sit on the front; "
            f"these results have {len(usable)}.",
        )
    if usable[ACCURACY].nunique() == 1:
        return Importance(
            importances=None,
            note="Every trial reached the same validation accuracy: no dimension explains any variation.",
        )
    with quiet_optuna() as optuna:
        distributions = _distributions(optuna, usable, dimensions)
        try:
            importances = _fanova(optuna, usable, distributions)
        except (ValueError, RuntimeError, ZeroDivisionError) as error:
            return Importance(importances=None, note=f"Optuna could not compute importances: {error}")
    series = pd.Series(importances, dtype=float).sort_values()
    if not np.isfinite(series).all():
        return Importance(
            importances=None, note="fANOVA returned undefined importances for these trials (too little variation)."
        )
    return Importance(
        importances=series,
        note=f"fANOVA (Optuna, seed 0) over {len(usable)} trials: the share of the variance in validation accuracy "
        "each dimension explains on its own. With few trials, read it as a hint.",
    )


def _distributions(optuna: types.ModuleType, usable: pd.DataFrame, dimensions: dict[str, str]) -> dict:
    """Each dimension as Optuna sees it: categorical ones by their values, numeric ones over the observed range."""
    categorical = [name for name, scale in dimensions.items() if scale == "categorical"]
    distributions = {
        name: optuna.distributions.CategoricalDistribution(category_order(usable[name])) for name in categorical
    }
    for name in dimensions:
        if name not in categorical:
            values = pd.to_numeric(usable[name], errors="coerce")
            log = dimensions[name] == "log"
            distributions[name] = optuna.distributions.FloatDistribution(values.min(), values.max(), log=log)
    return distributions


def _fanova(optuna: types.ModuleType, usable: pd.DataFrame, distributions: dict) -> dict[str, float]:
    """fANOVA importances (seed 0) of the `usable` trials, rebuilt as an Optuna study over `distributions`."""
    categorical = [
        name for name, d in distributions.items() if isinstance(d, optuna.distributions.CategoricalDistribution)
    ]
    numeric = {name: pd.to_numeric(usable[name], errors="coerce") for name in distributions if name not in categorical}
    study = optuna.create_study(direction="maximize")
    for position, row in enumerate(usable.to_dict("records")):
        params = {name: str(row[name]) for name in categorical} | {
            name: float(values.iloc[position]) for name, values in numeric.items()
        }
        study.add_trial(
            optuna.trial.create_trial(value=float(row[ACCURACY]), params=params, distributions=distributions)
        )
    return optuna.importance.get_param_importances(study, evaluator=optuna.importance.FanovaImportanceEvaluator(seed=0))


@contextlib.contextmanager
def quiet_optuna() -> Iterator[types.ModuleType]:
    """Optuna, imported on first use (Ray workers import this package and never need it), without its chatter.

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
