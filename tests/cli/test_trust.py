"""Answers you can trust, end to end through the CLI: the recommendation on the console, paired comparisons,
repeats over seeds, and a front that does not depend on what the feature cache held."""

import numpy as np
import pandas as pd
import pytest

from study.analysis.results import load_results, split_outcomes
from tests.helpers import run_module, write_space


def test_the_study_ends_with_a_recommendation_and_intervals(smoke_study):
    console = smoke_study.result.stdout
    assert "validation accuracy [95% interval]" in console
    assert "Pick unfreeze_depth=" in console or "No recommendation:" in console
    front = pd.read_csv(smoke_study.out / "pareto.csv")
    assert (front["val_acc_low"] <= front["val_acc"]).all() and (front["val_acc"] <= front["val_acc_high"]).all()


def test_the_recorded_bits_reproduce_the_recorded_accuracies(smoke_study):
    results = load_results(smoke_study.out)
    trials = results.trials.set_index("trial_id")
    for split in ("val", "test"):
        outcomes = split_outcomes(results.outcomes, split)
        assert set(outcomes) == set(trials.index[trials["status"] != "error"])
        for trial_id, correct in outcomes.items():
            assert correct.size == trials.loc[trial_id, f"{split}_images"]
            assert correct.sum() / correct.size == trials.loc[trial_id, f"{split}_acc"]


def test_compare_prints_a_paired_comparison(smoke_study):
    trials = pd.read_csv(smoke_study.out / "trials.csv")
    a, b = trials["trial_id"][:2]
    result = run_module("study.report", str(smoke_study.out), "--compare", a, b)
    assert result.returncode == 0, result.stderr
    difference = trials["val_acc"][0] - trials["val_acc"][1]
    assert f"A - B: {difference:+.3f} [" in result.stdout and "exact McNemar p = " in result.stdout
    wrong = run_module("study.report", str(smoke_study.out), "--compare", a, "nope")
    assert wrong.returncode == 2 and wrong.stderr.count("\n") == 1 and "no trial nope" in wrong.stderr


@pytest.mark.slow
def test_the_front_does_not_depend_on_what_the_cache_held(tmp_path):
    """The smoke study twice on one data root: the second reuses the first's features. Same front, same
    accuracies; the front's time (alone on a fresh node) within timing noise, while what the study spent drops.
    One trial at a time, so the rungs see the trials in the same order in both runs: with trials running
    concurrently the arrival order, and so which trial a rung stops, can differ between any two runs."""
    fronts = {}
    for run in ("cold", "warm"):
        out = tmp_path / run
        result = run_module(
            "study.run",
            "--space",
            "smoke",
            "--out",
            str(out),
            "--data-root",
            str(tmp_path / "data"),
            "--max-concurrent",
            "1",
        )
        assert result.returncode == 0, result.stderr[-2000:]
        fronts[run] = pd.read_csv(out / "pareto.csv").set_index("unfreeze_depth")
    cold, warm = fronts["cold"], fronts["warm"]
    assert list(cold.index) == list(warm.index) and (cold["val_acc"] == warm["val_acc"]).all()
    assert (cold["cache"] == "built").all() and (warm["cache"] == "reused").all()
    ratio = warm["train_time_s"] / cold["train_time_s"]
    assert ((ratio > 0.5) & (ratio < 2)).all(), ratio
    assert (warm["study_train_time_s"] < 0.8 * cold["study_train_time_s"]).all()


@pytest.mark.slow
def test_repeats_run_every_configuration_with_its_own_seed_and_aggregate(tmp_path):
    space = write_space(
        tmp_path,
        """
        fixed: {backbone: tf_efficientnet_lite0, data: digits, img_size: 32, lr: 0.003, batch_size: 128}
        dimensions:
          unfreeze_depth: {grid: [0, 1]}
        repeats: 2
        max_epochs: 1
        asha: false
        """,
    )
    out = tmp_path / "out"
    result = run_module("study.run", "--space", space, "--out", str(out), "--data-root", str(tmp_path / "data"))
    assert result.returncode == 0, result.stderr[-2000:]
    trials = pd.read_csv(out / "trials.csv")
    assert sorted(zip(trials["unfreeze_depth"], trials["repeat"])) == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for _, runs in trials.groupby("unfreeze_depth"):
        assert runs["val_acc"].nunique() == 2  # different head initialisation and batch order
    configurations = pd.read_csv(out / "configurations.csv").set_index("unfreeze_depth")
    for depth, runs in trials.groupby("unfreeze_depth"):
        row = configurations.loc[depth]
        assert row["repeats"] == row["repeats_run"] == 2
        assert row["val_acc"] == pytest.approx(runs["val_acc"].mean())
        assert row["val_acc_std"] == pytest.approx(np.std(runs["val_acc"], ddof=1))
        assert row["val_acc_low"] < row["val_acc"] < row["val_acc_high"]
        assert row["train_time_s"] == pytest.approx(runs["train_time_s"].mean())
    front = pd.read_csv(out / "pareto.csv")
    assert "configuration" in front and set(front["repeats"]) == {2}
    assert "Pick unfreeze_depth=" in result.stdout or "No recommendation:" in result.stdout
