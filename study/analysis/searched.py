"""The searched dimensions of a study: which settings were searched, on what scale, in what order of values; and
picking trials by their settings.

Every view that has an axis per dimension (parallel coordinates, accuracy per dimension, importance) and the
notebook's filters read these, so a dimension is scaled and ordered the same way everywhere.
"""

from __future__ import annotations

import pandas as pd

from study.analysis.repeats import varying_settings
from study.core.config import StudyError

# A numeric dimension spanning this ratio or more is shown on a log scale when the space does not say.
LOG_SPAN = 100
# How each kind of dimension in a space is scaled on an axis.
SCALES = {"grid": "categorical", "choice": "categorical", "uniform": "linear", "randint": "linear", "loguniform": "log"}


def searched_dimensions(trials: pd.DataFrame, study: dict) -> dict[str, str]:
    """The searched settings and how to scale them: `categorical`, `linear` or `log`.

    The space in study.json says what was searched; without it, the settings that vary between trials.
    """
    dimensions = (study.get("space") or {}).get("dimensions") or {}
    if dimensions:
        return {
            name: SCALES.get(spec.get("kind"), "categorical") for name, spec in dimensions.items() if name in trials
        }
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
