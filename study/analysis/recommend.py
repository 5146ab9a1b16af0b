"""The study's answer in one sentence: which configuration to pick, by a rule written in docs/results.md.

Policy lives in the small functions here (like big_transfer's hyper-rule); the numbers come from
study/analysis/uncertainty.py. The rule, on the accuracy-time front (validation accuracy, final epoch; time as the
configuration costs alone, study/core/metrics.py MAIN_COST):

- One run per configuration: the cheapest front member whose validation accuracy is not significantly below the
  most accurate member's (the exact McNemar test on the images exactly one of the two got right, 5%).
- Repeats: the one-standard-error rule: the cheapest front configuration whose mean validation accuracy is at least
  the best mean minus the best's standard error (its standard deviation over the square root of its repeats).

It declines to name a winner when the data cannot tell: no completed trial; the best's 95% interval wider than
MAX_INTERVAL_WIDTH (too few validation images); no per-image outcomes to pair (results from before they were
recorded); with repeats, fewer than two completed repeats of the best configuration. Each cheaper front member
also gets a line saying what it costs in accuracy (the answer for a smaller budget).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import pandas as pd

from study.analysis.pareto import INCLUDE_STOPPED, pareto_front
from study.analysis.repeats import front_candidates, repeated, trial_labels
from study.analysis.results import split_outcomes
from study.analysis.uncertainty import SIGNIFICANCE, PairedComparison, compare_paired, with_interval
from study.core.metrics import ACCURACY, MAIN_COST

# An interval wider than this cannot rank configurations whose accuracies differ by a few points: about 350
# validation images at 50% accuracy, 140 at 90%.
MAX_INTERVAL_WIDTH = 0.10
BEST = "best"
NOT_BELOW = "not significantly below the best"
BELOW = "significantly below the best"
# The verdicts' words under the one-standard-error rule (repeats), where no test is made.
ONE_STANDARD_ERROR = {
    NOT_BELOW: "within one standard error of the best mean",
    BELOW: "more than one standard error below the best mean",
}


@dataclass(kw_only=True)
class Recommendation:
    """The pick (None when the data cannot tell), the sentence that says it, one line per smaller budget, and the
    front with each member's label and verdict (`label`, `verdict`; paired: `difference`, `difference_low`,
    `difference_high`, `p_value` against the best)."""

    pick: dict | None
    sentence: str
    budgets: list[str] = field(default_factory=list)
    front: pd.DataFrame = field(default_factory=pd.DataFrame)


def recommend(trials: pd.DataFrame, outcomes: pd.DataFrame, include_stopped: bool = INCLUDE_STOPPED) -> Recommendation:
    """The recommendation for a study's trials and per-image outcomes (study/analysis/results.py)."""
    candidates = front_candidates(trials)
    labels = candidates["configuration"] if "configuration" in candidates else trial_labels(candidates)
    candidates = candidates.assign(label=labels)
    front = pareto_front(candidates, include_stopped=include_stopped).reset_index(drop=True)
    if front.empty:
        return Recommendation(pick=None, sentence="No recommendation: no trial completed all its epochs.")
    best = front.iloc[front[ACCURACY].idxmax()]
    if repeated(trials):
        return _one_standard_error(front, best)
    return _paired(front, best, outcomes)


def _paired(front: pd.DataFrame, best: pd.Series, outcomes: pd.DataFrame) -> Recommendation:
    correct = split_outcomes(outcomes, "val")
    if best["trial_id"] not in correct or f"{ACCURACY}_low" not in best:
        return Recommendation(
            pick=None,
            sentence="No recommendation: these results have no per-image outcomes to compare trials with (written "
            "before they were recorded); run the study again.",
            front=front.assign(verdict=""),
        )
    width = best[f"{ACCURACY}_high"] - best[f"{ACCURACY}_low"]
    if not width <= MAX_INTERVAL_WIDTH:
        return Recommendation(
            pick=None,
            sentence=f"No recommendation: the best validation accuracy ({best['label']}, {best[ACCURACY]:.3f}) has a "
            f"95% interval {_points(width)} points wide, over {_points(MAX_INTERVAL_WIDTH)}: too few validation images "
            "to tell configurations apart; use more (val_fraction, train_fraction) or repeats.",
            front=front.assign(verdict=""),
        )
    comparisons = [
        compare_paired(correct[trial_id], correct[best["trial_id"]]) if trial_id in correct else None
        for trial_id in front["trial_id"]
    ]
    front = front.assign(
        difference=[c.difference if c else math.nan for c in comparisons],
        difference_low=[c.low if c else math.nan for c in comparisons],
        difference_high=[c.high if c else math.nan for c in comparisons],
        p_value=[c.p_value if c else math.nan for c in comparisons],
        verdict=[_verdict(trial_id == best["trial_id"], c) for trial_id, c in zip(front["trial_id"], comparisons)],
    )
    pick = front[front["verdict"].isin([BEST, NOT_BELOW])].iloc[0]  # the cheapest: the front is cheapest first
    if pick["trial_id"] == best["trial_id"]:
        cheaper = front[front[MAIN_COST] < best[MAIN_COST]]
        reason = (
            f"the most accurate; every cheaper configuration on the front is significantly below it (McNemar "
            f"p <= {cheaper['p_value'].max():.2g})"
            if len(cheaper)
            else "the most accurate and the cheapest on the front"
        )
    else:
        reason = (
            f"not significantly below the best ({best['label']}, {best[ACCURACY]:.3f}; McNemar "
            f"p={pick['p_value']:.2g}) at {_share(pick, best)} of its training time"
        )
    sentence = f"Pick {pick['label']}: val {with_interval(pick, ACCURACY)}, {reason}."
    return Recommendation(pick=pick.to_dict(), sentence=sentence, budgets=_budgets(front, pick), front=front)


def _verdict(is_best: bool, comparison: PairedComparison | None) -> str:
    if is_best:
        return BEST
    if comparison is None:
        return ""
    return BELOW if comparison.p_value < SIGNIFICANCE else NOT_BELOW


def _one_standard_error(front: pd.DataFrame, best: pd.Series) -> Recommendation:
    if best["repeats"] < 2:
        return Recommendation(
            pick=None,
            sentence=f"No recommendation: the most accurate configuration ({best['label']}) has {best['repeats']} "
            "completed repeat(s); the one-standard-error rule needs at least two (repeats: 3 or more).",
            front=front.assign(verdict=""),
        )
    threshold = best[ACCURACY] - best[f"{ACCURACY}_std"] / math.sqrt(best["repeats"])
    front = front.assign(
        verdict=[
            BEST if trial_id == best["trial_id"] else NOT_BELOW if accuracy >= threshold else BELOW
            for trial_id, accuracy in zip(front["trial_id"], front[ACCURACY])
        ]
    )
    pick = front[front["verdict"].isin([BEST, NOT_BELOW])].iloc[0]
    if pick["trial_id"] == best["trial_id"]:
        reason = "the most accurate; every cheaper configuration on the front is more than one standard error below it"
    else:
        reason = (
            f"within one standard error of the best ({best['label']}, {best[ACCURACY]:.3f} over {best['repeats']} "
            f"repeats, threshold {threshold:.3f}) at {_share(pick, best)} of its training time"
        )
    sentence = (
        f"Pick {pick['label']}: val {pick[ACCURACY]:.3f} ± {pick[f'{ACCURACY}_std']:.3f} (mean ± sd over "
        f"{pick['repeats']} repeats), {reason}."
    )
    return Recommendation(pick=pick.to_dict(), sentence=sentence, budgets=_budgets(front, pick), front=front)


def _budgets(front: pd.DataFrame, pick: pd.Series) -> list[str]:
    """For each budget below the pick's time: the best configuration it affords, and what that costs in accuracy.
    A budget under one front member's time affords the next cheaper member."""
    lines = []
    cheaper = front[front[MAIN_COST] < pick[MAIN_COST]].iloc[::-1]
    budgets = [pick[MAIN_COST], *cheaper[MAIN_COST].iloc[:-1]]
    for budget, (_, member) in zip(budgets, cheaper.iterrows()):
        lost = f"{_points(pick[ACCURACY] - member[ACCURACY])} points below the pick"
        if "p_value" in member and math.isfinite(member["p_value"]):
            lost += f" ({member['verdict']}: McNemar p={member['p_value']:.2g})"
        elif member["verdict"]:
            lost += f" ({ONE_STANDARD_ERROR.get(member['verdict'], member['verdict'])})"
        lines.append(
            f"Under {budget:.3g} s of training: {member['label']} ({member[MAIN_COST]:.3g} s), val "
            f"{with_interval(member, ACCURACY)}, {lost}."
        )
    return lines


def _share(row: pd.Series, best: pd.Series) -> str:
    return f"{row[MAIN_COST] / best[MAIN_COST]:.0%}" if best[MAIN_COST] > 0 else "an unknown share"


def _points(fraction: float) -> str:
    """An accuracy difference in percentage points."""
    return f"{100 * fraction:.1f}"
