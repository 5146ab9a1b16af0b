"""How sure a number is: intervals on accuracies, paired tests between trials, spreads over repeats.

Every formula is scipy's; this module only chooses and documents (docs/results.md, "Uncertainty"):

- An accuracy of k correct out of n images: the 95% Wilson score interval (`binomtest(k, n).proportion_ci`),
  which stays inside [0, 1] and keeps a sensible width at 0 or n correct and at small n, where the normal
  approximation collapses to a point.
- Two trials of one study are evaluated on the same images, so they compare paired, image by image: the exact
  McNemar test is the two-sided binomial test of the images only A got right (b) among the images exactly one of the
  two got right (b + c), against one half: every verdict ("significantly below") is this test's. The interval of
  the accuracy difference (b - c) / n is the paired t interval of the per-image differences (`scipy.stats.ttest_rel`),
  which counts the randomness of b + c too (an interval conditional on b + c is far too narrow when the two
  disagree on many images, all one way). It is approximate: with a handful of discordant images it can exclude 0
  where the exact test does not reject. With no discordant image the difference is exactly 0, p = 1, and the
  interval is the point 0: the images cannot tell the two apart.
- Repeats of one configuration over seeds: the mean, the sample standard deviation and the 95% Student t interval
  of the mean (`scipy.stats.t.interval`); undefined (NaN) with fewer than two repeats.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import numpy as np
from scipy import stats

CONFIDENCE = 0.95
SIGNIFICANCE = 1 - CONFIDENCE  # what "significantly below" means in the report and the recommendation


def interval_text(row, measure: str, form: str = "{:.3f}") -> str:
    """' [low, high]' of a measure's interval columns (`MEASURE_low`, `MEASURE_high`) in a table row; '' where it
    has none."""
    low, high = row.get(f"{measure}_low", math.nan), row.get(f"{measure}_high", math.nan)
    if all(isinstance(bound, float) and math.isfinite(bound) for bound in (low, high)):
        return f" [{form.format(low)}, {form.format(high)}]"
    return ""


def with_interval(row, measure: str, form: str = "{:.3f}") -> str:
    """A measure and its interval as text: '0.950 [0.922, 0.968]'."""
    return form.format(row[measure]) + interval_text(row, measure, form)


class Interval(NamedTuple):
    low: float
    high: float


NO_INTERVAL = Interval(low=math.nan, high=math.nan)


def proportion_interval(correct: int, images: int) -> Interval:
    """The Wilson score interval of `correct` out of `images`; NaN bounds for no images."""
    if images <= 0:
        return NO_INTERVAL
    ci = stats.binomtest(int(correct), int(images)).proportion_ci(confidence_level=CONFIDENCE, method="wilson")
    return Interval(low=float(ci.low), high=float(ci.high))


def accuracy_interval(accuracy: float, images: float) -> Interval:
    """The interval of an accuracy measured on `images` images (the count correct is accuracy x images)."""
    if not (math.isfinite(accuracy) and math.isfinite(images)) or images <= 0:
        return NO_INTERVAL
    return proportion_interval(round(accuracy * images), int(images))


@dataclass(frozen=True, kw_only=True)
class PairedComparison:
    """A against B on the same images: A's accuracy minus B's, its interval, and the exact McNemar p-value."""

    images: int
    only_a: int  # images A classified correctly and B did not
    only_b: int
    difference: float  # accuracy of A minus accuracy of B
    low: float
    high: float
    p_value: float

    @property
    def significant(self) -> bool:
        return self.p_value < SIGNIFICANCE


def compare_paired(correct_a: np.ndarray, correct_b: np.ndarray) -> PairedComparison:
    """The paired comparison of two trials' per-image outcomes on the same images (module docstring)."""
    a, b = np.asarray(correct_a, dtype=bool), np.asarray(correct_b, dtype=bool)
    if a.shape != b.shape:
        raise ValueError(f"outcomes of {a.size} and {b.size} images: the trials were not evaluated on the same images")
    images, only_a, only_b = a.size, int((a & ~b).sum()), int((b & ~a).sum())
    discordant = only_a + only_b
    if discordant == 0:
        return PairedComparison(
            images=images, only_a=0, only_b=0, difference=0.0, low=0.0, high=0.0, p_value=1.0 if images else math.nan
        )
    interval = stats.ttest_rel(a.astype(float), b.astype(float)).confidence_interval(CONFIDENCE)
    return PairedComparison(
        images=images,
        only_a=only_a,
        only_b=only_b,
        difference=(only_a - only_b) / images,
        low=float(interval.low),
        high=float(interval.high),
        p_value=float(stats.binomtest(only_a, discordant, 0.5).pvalue),
    )


class Spread(NamedTuple):
    """Repeats of one measure: their mean, sample standard deviation and the interval of the mean."""

    mean: float
    std: float
    low: float
    high: float


def spread(values: np.ndarray) -> Spread:
    """The mean of the finite values, their standard deviation and the Student t interval of the mean."""
    values = np.asarray(values, dtype=float)
    values = values[np.isfinite(values)]
    if values.size == 0:
        return Spread(mean=math.nan, std=math.nan, low=math.nan, high=math.nan)
    mean = float(values.mean())
    if values.size < 2:
        return Spread(mean=mean, std=math.nan, low=math.nan, high=math.nan)
    std = float(values.std(ddof=1))
    if std == 0:
        return Spread(mean=mean, std=0.0, low=mean, high=mean)
    low, high = stats.t.interval(CONFIDENCE, values.size - 1, loc=mean, scale=std / math.sqrt(values.size))
    return Spread(mean=mean, std=std, low=float(low), high=float(high))
