import math

import numpy as np
import pandas as pd
import pytest

from study.analysis.importance import quiet_optuna
from study.analysis.pareto import hypervolume, hypervolume_history, non_dominated, pareto_front


def test_simple_front_maximise_first_minimise_second():
    points = np.array([[0.9, 10.0], [0.8, 5.0], [0.85, 20.0], [0.95, 30.0], [0.7, 5.0]])
    assert non_dominated(points, [True, False]).tolist() == [True, True, False, True, False]


def test_identical_points_both_stay_and_ties_on_one_objective_are_broken_by_the_other():
    points = np.array([[0.9, 10.0], [0.9, 10.0], [0.9, 12.0], [0.8, 10.0]])
    assert non_dominated(points, [True, False]).tolist() == [True, True, False, False]


def test_nan_rows_are_never_on_the_front_and_never_dominate():
    points = np.array([[math.nan, 1.0], [0.5, 10.0], [1.0, math.nan]])
    assert non_dominated(points, [True, False]).tolist() == [False, True, False]


def test_single_and_empty_inputs():
    assert non_dominated(np.array([[0.1, 100.0]]), [True, False]).tolist() == [True]
    assert non_dominated(np.empty((0, 2)), [True, False]).tolist() == []


def test_three_objectives():
    points = np.array([[1.0, 1.0, 1.0], [1.0, 1.0, 2.0], [2.0, 0.0, 0.0]])
    assert non_dominated(points, [True, True, False]).tolist() == [True, False, True]


def trials(**columns) -> pd.DataFrame:
    table = pd.DataFrame(columns)
    table.insert(0, "trial_id", [f"t{i}" for i in range(len(table))])
    return table


def test_front_ignores_error_trials_and_excludes_stopped_ones_unless_asked():
    table = trials(
        status=["completed", "error", "stopped_early", "completed"],
        val_acc=[0.9, 0.99, 0.5, 0.95],
        train_time_s=[10.0, 1.0, 2.0, 20.0],
    )
    assert pareto_front(table)["trial_id"].tolist() == ["t0", "t3"]
    assert pareto_front(table, include_stopped=True)["trial_id"].tolist() == ["t2", "t0", "t3"]  # cheapest first


def test_front_of_error_trials_with_nan_metrics_ties_and_a_single_trial():
    table = trials(
        status=["error", "error", "completed", "completed", "completed"],
        val_acc=[math.nan, 0.99, 0.8, 0.8, 0.7],
        train_time_s=[math.nan, 0.1, 5.0, 5.0, 6.0],
    )
    assert pareto_front(table)["trial_id"].tolist() == ["t2", "t3"]  # identical trials both stay; errors never count
    assert pareto_front(table.iloc[[4]])["trial_id"].tolist() == ["t4"]
    assert pareto_front(table.iloc[:2]).empty
    nan_time = table.assign(train_time_s=[1.0, 1.0, math.nan, 5.0, 6.0])
    assert pareto_front(nan_time)["trial_id"].tolist() == ["t3"]  # a completed trial without a time takes no part


def test_fronts_against_each_cost_pick_different_trials():
    table = trials(
        status=["completed"] * 3,
        val_acc=[0.9, 0.8, 0.85],
        train_time_s=[10.0, 5.0, 20.0],
        trainable_params=[1000, 500, 100],
        peak_memory_mib=[900.0, 1000.0, 950.0],
    )
    assert pareto_front(table, cost="train_time_s")["trial_id"].tolist() == ["t1", "t0"]
    assert pareto_front(table, cost="trainable_params")["trial_id"].tolist() == ["t2", "t0"]
    assert pareto_front(table, cost="peak_memory_mib")["trial_id"].tolist() == ["t0"]


def test_hypervolume_grows_in_finishing_order_by_the_area_each_trial_adds():
    table = trials(
        status=["completed", "error", "completed", "stopped_early", "completed"],
        val_acc=[0.5, 0.99, 0.8, 0.9, 0.4],
        train_time_s=[10.0, 1.0, 20.0, 2.0, 5.0],
        finished_at=[3.0, 1.0, 2.0, 4.0, 5.0],
    )
    result = hypervolume_history(table)
    assert result.reference == {"val_acc": 0.0, "train_time_s": pytest.approx(22.0)}  # 1.1 x the slowest eligible trial
    history = result.history
    assert history["trial_id"].tolist() == ["t1", "t2", "t0", "t3", "t4"]
    # Rectangles from each front point to the reference (accuracy 0, 22 s), time divided by 22 s:
    after_t2 = 0.8 * 2 / 22
    after_t0 = after_t2 + 0.5 * (20 - 10) / 22
    after_t4 = after_t0 + 0.4 * (10 - 5) / 22
    expected = [0.0, after_t2, after_t0, after_t0, after_t4]  # the error and the stopped trial add nothing
    assert history["hypervolume"].tolist() == pytest.approx(expected)
    assert history["improved"].tolist() == [False, True, True, False, True]

    with_stopped = hypervolume_history(table, include_stopped=True).history
    assert with_stopped["hypervolume"].iloc[3] > with_stopped["hypervolume"].iloc[2]


def test_hypervolume_without_eligible_trials_or_finishing_times():
    errors = trials(status=["error", "stopped_early"], val_acc=[math.nan, 0.5], train_time_s=[math.nan, 3.0])
    assert hypervolume_history(errors).history["hypervolume"].tolist() == [0.0, 0.0]
    single = trials(status=["completed"], val_acc=[0.5], train_time_s=[10.0])  # no finished_at: table order
    assert hypervolume_history(single).history["hypervolume"].tolist() == pytest.approx([0.5 * 1 / 11])


def test_hypervolumes_of_two_studies_compare_against_one_given_reference():
    table = trials(
        status=["completed", "completed"], val_acc=[0.5, 0.8], train_time_s=[10.0, 40.0], finished_at=[1.0, 2.0]
    )
    result = hypervolume_history(table, reference_cost=30.0)
    assert result.reference == {"val_acc": 0.0, "train_time_s": 30.0}
    assert result.history["hypervolume"].tolist() == pytest.approx(
        [0.5 * 20 / 30] * 2
    )  # beyond the reference: adds nothing


def brute_force_area(points: np.ndarray) -> float:
    """The area the (accuracy, cost) points dominate in the box [accuracy 0..] x [cost ..1], counted cell by cell on
    the grid their coordinates make: a cell counts when one point is at most as costly as its left edge and at least
    as accurate as its top. No sorting, no staircase: an independent check of `hypervolume`."""
    points = [(a, c) for a, c in points if a > 0 and c < 1]
    costs = sorted({c for _, c in points} | {1.0})
    accuracies = sorted({a for a, _ in points} | {0.0})
    area = 0.0
    for left, right in zip(costs, costs[1:]):
        for bottom, top in zip(accuracies, accuracies[1:]):
            if any(c <= left and a >= top for a, c in points):
                area += (right - left) * (top - bottom)
    return area


def optuna_hypervolumes(points: np.ndarray) -> list[float]:
    """The hypervolume after each point by Optuna's public API, which computes it for its history plot (Optuna
    5 exposes no hypervolume function of its own): a two-objective study of the points, reference (0, 1)."""
    with quiet_optuna() as optuna:
        study = optuna.create_study(directions=["maximize", "minimize"])
        for accuracy, cost in points:
            study.add_trial(optuna.trial.create_trial(values=[accuracy, cost]))
        return list(optuna.visualization.plot_hypervolume_history(study, reference_point=[0.0, 1.0]).data[0].y)


@pytest.mark.parametrize("seed", range(20))
def test_hypervolume_is_the_area_a_brute_force_count_and_optuna_find(seed):
    rng = np.random.default_rng(seed)
    count = int(rng.integers(1, 30))
    # some points beyond the reference (accuracy below 0, cost above 1); rounding makes ties on either axis
    points = np.column_stack([rng.uniform(-0.1, 1.0, count), rng.uniform(0.0, 1.2, count)])
    points = points.round(int(rng.integers(1, 4)))
    assert hypervolume(points) == pytest.approx(brute_force_area(points), abs=1e-12)
    after_each = [hypervolume(points[: end + 1]) for end in range(count)]
    assert after_each == pytest.approx(optuna_hypervolumes(points), abs=1e-12)


def test_hypervolume_of_no_point_and_of_points_beyond_the_reference_is_zero():
    assert hypervolume(np.empty((0, 2))) == 0.0
    assert hypervolume(np.array([[0.9, 1.0], [0.0, 0.5], [-0.2, 0.1]])) == 0.0
