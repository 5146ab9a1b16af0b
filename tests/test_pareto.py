import math

import numpy as np
import pandas as pd

from study.pareto import non_dominated, pareto_front


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


def test_front_ignores_error_trials_and_sorts_by_cost():
    trials = pd.DataFrame(
        {
            "trial_id": ["a", "b", "c", "d"],
            "status": ["completed", "error", "stopped_early", "completed"],
            "val_acc": [0.9, 0.99, 0.5, 0.95],
            "train_time_s": [10.0, 1.0, 2.0, 20.0],
        }
    )
    front = pareto_front(trials)
    assert front["trial_id"].tolist() == ["c", "a", "d"]
