"""Intervals, paired tests, per-image outcomes and the recommendation, on constructed outcomes with known answers."""

import math

import numpy as np
import pandas as pd
import pytest

from study.analysis.recommend import BELOW, BEST, NOT_BELOW, recommend
from study.analysis.repeats import trial_labels, varying_settings
from study.analysis.uncertainty import accuracy_interval, compare_paired, proportion_interval, spread
from study.core.outcomes import decode, encode, pack, unpack


def wilson(k: int, n: int, z: float = 1.959963984540054) -> tuple[float, float]:
    """The Wilson score interval written out, as an oracle independent of scipy."""
    p = k / n
    centre = (p + z * z / (2 * n)) / (1 + z * z / n)
    half = z / (1 + z * z / n) * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n))
    return centre - half, centre + half


@pytest.mark.parametrize(("k", "n"), [(0, 1), (1, 1), (0, 10), (10, 10), (342, 360), (5, 17)])
def test_wilson_interval_matches_the_formula_at_the_edges(k, n):
    low, high = proportion_interval(k, n)
    assert (low, high) == pytest.approx(wilson(k, n), abs=1e-9)
    assert 0 <= low <= k / n <= high <= 1


def test_interval_of_the_issues_example_and_of_nothing():
    assert accuracy_interval(342 / 360, 360) == pytest.approx((0.922, 0.968), abs=5e-4)
    assert all(math.isnan(v) for v in accuracy_interval(0.5, 0)) and all(
        math.isnan(v) for v in proportion_interval(0, 0)
    )


def test_exact_mcnemar_is_the_binomial_tail_of_the_discordant_images():
    a = np.array([True] * 3 + [False] * 12 + [True] * 100)
    b = np.array([False] * 3 + [True] * 12 + [True] * 100)
    paired = compare_paired(a, b)
    # two-sided exact: 2 P(X <= 3), X ~ Binomial(15, 1/2)
    expected = 2 * sum(math.comb(15, i) for i in range(4)) / 2**15
    assert paired.p_value == pytest.approx(expected)
    assert (paired.only_a, paired.only_b, paired.images) == (3, 12, 115)
    assert paired.difference == pytest.approx(a.mean() - b.mean())
    assert paired.low < paired.difference < paired.high < 0 and paired.significant


def test_the_paired_interval_counts_the_randomness_of_the_discordant_images():
    """100 of 400 images right only for B: the difference -0.25 sits in the middle of its interval, whose half-width
    is the paired t's (sd of the per-image differences / sqrt(n)), not an interval conditional on 100 discordant."""
    a = np.array([False] * 100 + [True] * 300)
    b = np.ones(400, dtype=bool)
    paired = compare_paired(a, b)
    half = 1.965927 * np.std(a.astype(float) - b, ddof=1) / math.sqrt(400)
    assert (paired.low, paired.high) == pytest.approx((-0.25 - half, -0.25 + half), abs=1e-5)


def test_paired_comparison_of_identical_and_mirrored_outcomes():
    same = np.array([True, False, True])
    assert compare_paired(same, same).p_value == 1 and compare_paired(same, same).difference == 0
    a, b = np.array([True, False] * 10), np.array([False, True] * 10)
    mirrored = compare_paired(a, b)
    assert mirrored.p_value == 1 and mirrored.low == pytest.approx(-mirrored.high)
    with pytest.raises(ValueError, match="same images"):
        compare_paired(a, b[:-1])


def test_spread_over_repeats():
    mean, std, low, high = spread(np.array([0.8, 0.9, 1.0]))
    assert (mean, std) == pytest.approx((0.9, 0.1))
    assert (low, high) == pytest.approx((0.9 - 4.302652729911275 * 0.1 / math.sqrt(3), 0.9 + 0.2484), abs=1e-3)
    assert math.isnan(spread(np.array([0.5])).std) and spread(np.array([0.5, 0.5])).low == 0.5


@pytest.mark.parametrize("images", [0, 1, 7, 8, 9, 1001])
def test_outcomes_round_trip(images):
    correct = np.random.default_rng(images).random(images) < 0.5
    assert (unpack(decode(encode(correct)), images) == correct).all()


def test_fifty_thousand_outcomes_take_kilobytes():
    assert len(pack(np.ones(50_000, dtype=bool))) == 6_250


def synthetic_study(accuracies: dict[int, tuple[float, list[bool]]], images: int) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Trials named by unfreeze_depth, costing depth + 1 seconds, with the given per-image outcomes."""
    trials, outcomes = [], []
    for depth, (_, correct) in accuracies.items():
        correct = np.asarray(correct, dtype=bool)
        accuracy = correct.mean()
        low, high = accuracy_interval(accuracy, images)
        trials.append(
            {
                "trial_id": f"t{depth}",
                "status": "completed",
                "unfreeze_depth": depth,
                "val_acc": accuracy,
                "val_acc_low": low,
                "val_acc_high": high,
                "train_time_s": depth + 1.0,
            }
        )
        outcomes.append({"trial_id": f"t{depth}", "split": "val", "images": images, "correct": pack(correct)})
    return pd.DataFrame(trials), pd.DataFrame(outcomes)


def outcomes_with(right: int, images: int, shift: int = 0) -> list[bool]:
    """`right` correct images out of `images`, starting at `shift` (so that two trials' mistakes can differ)."""
    return [(i - shift) % images < right for i in range(images)]


def test_a_clear_winner_is_picked():
    trials, outcomes = synthetic_study(
        {0: (0, outcomes_with(280, 400)), 4: (0, outcomes_with(320, 400)), 8: (0, outcomes_with(360, 400))}, 400
    )
    answer = recommend(trials, outcomes)
    assert answer.pick["trial_id"] == "t8" and answer.sentence.startswith("Pick unfreeze_depth=8")
    assert list(answer.front["verdict"]) == [BELOW, BELOW, BEST]
    # each smaller budget affords the next cheaper front member
    assert answer.budgets[0].startswith("Under 9 s of training: unfreeze_depth=4 (5 s), val 0.800 [")
    assert answer.budgets[1].startswith("Under 5 s of training: unfreeze_depth=0 (1 s), val 0.700 [")
    assert all("significantly below the best: McNemar p=" in line for line in answer.budgets)


def test_a_tie_within_noise_picks_the_cheaper():
    trials, outcomes = synthetic_study(
        {0: (0, outcomes_with(355, 400)), 4: (0, outcomes_with(358, 400, shift=5)), 8: (0, outcomes_with(360, 400))},
        400,
    )
    answer = recommend(trials, outcomes)
    assert answer.pick["trial_id"] == "t0", answer.sentence
    assert "not significantly below the best (unfreeze_depth=8" in answer.sentence and "McNemar p=" in answer.sentence
    assert list(answer.front["verdict"]) == [NOT_BELOW, NOT_BELOW, BEST]


def test_too_little_data_declines():
    trials, outcomes = synthetic_study({0: (0, outcomes_with(10, 20)), 8: (0, outcomes_with(19, 20))}, 20)
    answer = recommend(trials, outcomes)
    assert answer.pick is None and answer.sentence.startswith("No recommendation") and "too few" in answer.sentence


def test_results_without_outcomes_decline():
    trials, _ = synthetic_study({0: (0, outcomes_with(355, 400)), 8: (0, outcomes_with(360, 400))}, 400)
    answer = recommend(trials, pd.DataFrame(columns=["trial_id", "split", "images", "correct"]))
    assert answer.pick is None and "per-image outcomes" in answer.sentence


def repeated_study(means: dict[int, list[float]]) -> pd.DataFrame:
    rows = []
    for depth, accuracies in means.items():
        for repeat, accuracy in enumerate(accuracies):
            rows.append(
                {
                    "trial_id": f"t{depth}_{repeat}",
                    "status": "completed",
                    "unfreeze_depth": depth,
                    "repeat": repeat,
                    "backbone": "b",
                    "val_acc": accuracy,
                    "test_acc": accuracy,
                    "train_time_s": depth + 1.0 + repeat * 0.01,
                }
            )
    return pd.DataFrame(rows)


def test_one_standard_error_rule_over_repeats():
    trials = repeated_study({0: [0.80, 0.81, 0.79], 4: [0.895, 0.905, 0.90], 8: [0.90, 0.92, 0.91]})
    answer = recommend(trials, pd.DataFrame())
    # best 0.91 +- 0.01 over 3: threshold 0.91 - 0.01 / sqrt(3) = 0.9042; depth 4's mean 0.90 is below it
    assert answer.pick["configuration"] == "unfreeze_depth=8", answer.sentence
    trials = repeated_study({0: [0.80, 0.81, 0.79], 4: [0.905, 0.91, 0.905], 8: [0.90, 0.92, 0.91]})
    answer = recommend(trials, pd.DataFrame())
    assert answer.pick["configuration"] == "unfreeze_depth=4" and "within one standard error" in answer.sentence


def test_one_standard_error_rule_declines_with_one_repeat_of_the_best():
    trials = repeated_study({0: [0.80, 0.81], 8: [0.95]})
    trials.loc[trials["unfreeze_depth"] == 0, "repeat"] = [0, 1]
    answer = recommend(trials, pd.DataFrame())
    assert answer.pick is None and "at least two" in answer.sentence


def test_a_data_fingerprint_follows_its_data_and_names_no_configuration():
    """Where `data` is a dimension its trials' fingerprints differ too: what the study searched is `data` alone."""
    trials = pd.DataFrame(
        {
            "trial_id": ["a", "b"],
            "backbone": ["resnet18", "resnet18"],
            "data": ["folder:/x", "folder:/y"],
            "data_fingerprint": ["0123", "4567"],
        }
    )
    assert varying_settings(trials) == ["data"]
    assert trial_labels(trials).tolist() == ["data=folder:/x", "data=folder:/y"]
